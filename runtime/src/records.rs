//! Container records in the store's metadata database: what `rdock ps -a` lists and what
//! `rdock rm` and `rdock commit` find. A record names the container's snapshot (its
//! read-write layer) and the process that runs it, so a record whose runner died (rdock
//! killed) is shown as exited, and a `--rm` one is swept away.

use crate::RuntimeError;
use rdock_imagespec::Digest;
use rdock_imagespec::time::unix_now as now;
use rdock_snapshotter::Db;
use rusqlite::params;
use serde::Serialize;
use std::sync::Arc;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Made, never started (or its command could not be executed).
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Exited,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "exited" => State::Exited,
            _ => State::Created,
        }
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// 64 hex digits.
    pub id: String,
    /// Unique name (`--name`, or generated).
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// Its manifest.
    pub manifest: Digest,
    /// Its config digest (the image ID).
    pub image_id: Digest,
    /// The read-write layer's snapshot key.
    pub snapshot: String,
    /// The committed snapshot it sits on (the image's top layer), if any.
    pub parent: Option<String>,
    /// argv.
    pub command: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// State.
    pub state: State,
    /// Exit status once exited.
    pub exit_code: Option<i32>,
    /// Unix seconds it ended.
    pub finished: Option<i64>,
    /// The rdock process running it, and that process's start time (so a reused pid is
    /// not mistaken for it).
    pub runner: Option<(i32, u64)>,
    /// `--rm`.
    pub auto_remove: bool,
    /// The effective run settings, as JSON, for `inspect`.
    pub settings: serde_json::Value,
}

/// The start time of process `pid` in clock ticks since boot (field 22 of its stat).
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// This process as a record's runner: its pid and start time.
pub fn this_runner() -> (i32, u64) {
    let pid = std::process::id() as i32;
    (pid, process_start(pid).unwrap_or(0))
}

fn alive(runner: Option<(i32, u64)>) -> bool {
    runner.is_some_and(|(pid, start)| process_start(pid) == Some(start))
}

/// The container table.
#[derive(Clone)]
pub struct Records {
    db: Arc<Db>,
}

const COLUMNS: &str = "id, name, image, manifest, image_id, snapshot, parent, command, created, state, exit_code, finished, pid, pid_start, auto_remove, settings";

impl Records {
    /// The records of `db` (their table is in the store's schema).
    pub fn new(db: Arc<Db>) -> Result<Records, RuntimeError> {
        Ok(Records { db })
    }

    /// Adds a record; a taken name is an error that says so.
    pub fn insert(&self, r: &Record) -> Result<(), RuntimeError> {
        let res = self.db.conn().execute(
            &format!("INSERT INTO containers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                r.id,
                r.name,
                r.image,
                r.manifest.as_str(),
                r.image_id.as_str(),
                r.snapshot,
                r.parent,
                serde_json::to_string(&r.command).unwrap_or_default(),
                r.created,
                r.state.as_str(),
                r.exit_code,
                r.finished,
                r.runner.map(|(p, _)| p),
                r.runner.map(|(_, s)| s as i64),
                r.auto_remove,
                r.settings.to_string(),
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(RuntimeError::Invalid(format!("the container name {:?} is already in use", r.name)))
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Marks a container running, run by this process.
    pub fn set_running(&self, id: &str) -> Result<(), RuntimeError> {
        let (pid, start) = this_runner();
        self.db
            .conn()
            .execute("UPDATE containers SET state = 'running', pid = ?2, pid_start = ?3 WHERE id = ?1", params![id, pid, start as i64])?;
        Ok(())
    }

    /// Marks a container ended with `code` (`state` Exited, or Created if it never ran).
    pub fn set_ended(&self, id: &str, state: State, code: i32) -> Result<(), RuntimeError> {
        self.db.conn().execute(
            "UPDATE containers SET state = ?2, exit_code = ?3, finished = ?4, pid = NULL, pid_start = NULL WHERE id = ?1",
            params![id, state.as_str(), code, now()],
        )?;
        Ok(())
    }

    /// Removes a record.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.db.conn().execute("DELETE FROM containers WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every record, newest first, after settling those whose runner is gone: `--rm` ones
    /// are returned in `gone` for their snapshots to be removed, others become exited. A
    /// created container's runner counts too: its command may run before the record says
    /// running, and a runner killed in between left it behind.
    pub fn list(&self) -> Result<(Vec<Record>, Vec<Record>), RuntimeError> {
        let all = self.query("", params![])?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for mut r in all {
            let abandoned = match r.state {
                State::Running => !alive(r.runner),
                State::Created => r.runner.is_some() && !alive(r.runner),
                _ => false,
            };
            if abandoned {
                if r.auto_remove {
                    self.delete(&r.id)?;
                    gone.push(r);
                    continue;
                }
                // Killed with its runner: Docker reports a SIGKILLed container as 137.
                self.set_ended(&r.id, State::Exited, 137)?;
                r.state = State::Exited;
                r.exit_code = Some(137);
                r.runner = None;
            }
            out.push(r);
        }
        Ok((out, gone))
    }

    /// The container named `what`, or whose id starts with it (unambiguously).
    pub fn find(&self, what: &str) -> Result<Record, RuntimeError> {
        if let Some(r) = self.query("WHERE name = ?1 OR id = ?1", params![what])?.pop() {
            return Ok(r);
        }
        if what.len() >= 3 && what.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut found = self.query("WHERE id LIKE ?1 || '%'", params![what.to_ascii_lowercase()])?;
            return match found.len() {
                1 => Ok(found.remove(0)),
                0 => Err(RuntimeError::NoSuchContainer(what.to_string())),
                _ => Err(RuntimeError::Invalid(format!("multiple containers match the prefix {what:?}"))),
            };
        }
        Err(RuntimeError::NoSuchContainer(what.to_string()))
    }

    /// The ids of containers made from the image with manifest `manifest`.
    pub fn using(&self, manifest: &Digest) -> Result<Vec<String>, RuntimeError> {
        Ok(self.query("WHERE manifest = ?1", params![manifest.as_str()])?.into_iter().map(|r| r.id).collect())
    }

    /// True if the record's runner is alive (its container runs).
    pub fn is_running(r: &Record) -> bool {
        r.state == State::Running && alive(r.runner)
    }

    fn query(&self, filter: &str, p: impl rusqlite::Params) -> Result<Vec<Record>, RuntimeError> {
        let conn = self.db.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM containers {filter} ORDER BY created DESC, rowid DESC"))?;
        let rows = stmt.query_map(p, |r| {
            let digest = |i: usize| -> rusqlite::Result<Digest> {
                let s: String = r.get(i)?;
                Digest::parse(&s).map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
            };
            let pid: Option<i32> = r.get(12)?;
            let start: Option<i64> = r.get(13)?;
            Ok(Record {
                id: r.get(0)?,
                name: r.get(1)?,
                image: r.get(2)?,
                manifest: digest(3)?,
                image_id: digest(4)?,
                snapshot: r.get(5)?,
                parent: r.get(6)?,
                command: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
                created: r.get(8)?,
                state: State::parse(&r.get::<_, String>(9)?),
                exit_code: r.get(10)?,
                finished: r.get(11)?,
                runner: pid.zip(start.map(|s| s as u64)),
                auto_remove: r.get(14)?,
                settings: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, auto_remove: bool, runner: Option<(i32, u64)>) -> Record {
        Record {
            id: id.to_string(),
            name: id.to_string(),
            image: "busybox".into(),
            manifest: Digest::of(b"m"),
            image_id: Digest::of(b"c"),
            snapshot: format!("ctr-{id}"),
            parent: None,
            command: vec!["true".into()],
            created: 0,
            state: State::Created,
            exit_code: None,
            finished: None,
            runner,
            auto_remove,
            settings: serde_json::Value::Null,
        }
    }

    /// A runner killed after its container's command started but before the record said
    /// running left a created record behind, listed by `ps -a` even with `--rm`.
    #[test]
    fn a_created_container_whose_runner_died_is_settled_like_a_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(Db::open(&dir.path().join("metadata.db")).unwrap())).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = (child.id() as i32, process_start(child.id() as i32).unwrap_or(1));
        child.wait().unwrap();
        records.insert(&record("rm", true, Some(dead))).unwrap();
        records.insert(&record("kept", false, Some(dead))).unwrap();
        records.insert(&record("starting", true, Some(this_runner()))).unwrap();
        records.insert(&record("never-started", false, None)).unwrap();
        let (out, gone) = records.list().unwrap();
        assert_eq!(gone.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["rm"]);
        let state = |id: &str| out.iter().find(|r| r.id == id).map(|r| (r.state, r.exit_code));
        assert_eq!(state("kept"), Some((State::Exited, Some(137))));
        assert_eq!(state("starting"), Some((State::Created, None)), "its runner is alive");
        assert_eq!(state("never-started"), Some((State::Created, None)));
    }
}
