//! `user[:group]` resolved against the image's /etc/passwd and /etc/group, with Docker's
//! rules: numeric ids need no entry; a name must have one; the primary group comes from
//! passwd unless a group is given; supplementary groups from /etc/group.

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// Home directory (for HOME when unset).
    pub home: String,
}

/// Why a user could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Name not in /etc/passwd.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// Name not in /etc/group.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f.get(5).copied().unwrap_or("/") })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (empty means root) given the files' contents (None when absent).
pub fn resolve_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ResolvedUser, UserError> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = if let Ok(uid) = u.parse::<u32>() {
        passwd_entries(passwd).find(|e| e.uid == uid).map(|e| (e.name.to_string(), e.uid, e.gid, e.home.to_string())).unwrap_or((
            String::new(),
            uid,
            0,
            "/".into(),
        ))
    } else {
        passwd_entries(passwd)
            .find(|e| e.name == u)
            .map(|e| (e.name.to_string(), e.uid, e.gid, e.home.to_string()))
            .ok_or_else(|| UserError::NoUser(u.to_string()))?
    };
    let (name, uid, mut gid, home) = entry;
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                group_entries(group).find(|(n, _, _)| *n == g).map(|(_, id, _)| id).ok_or_else(|| UserError::NoGroup(g.to_string()))?
            }
        };
    }
    // The primary group first, as containerd sets them since CVE-2023-25173 (BuildKit's
    // testUserAdditionalGids): then, for a user named in /etc/passwd and without a group
    // of its own asked for, the groups /etc/group lists it in.
    let mut additional_gids = vec![gid];
    if g.is_none() && !name.is_empty() {
        additional_gids
            .extend(group_entries(group).filter(|(_, id, members)| *id != gid && members.contains(&name.as_str())).map(|(_, id, _)| id));
    }
    let home = if home.is_empty() { "/".into() } else { home };
    Ok(ResolvedUser { uid, gid, additional_gids, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\n";

    #[test]
    fn names_ids_and_groups() {
        assert_eq!(resolve_user("", Some(PASSWD), Some(GROUP)).unwrap().home, "/root");
        let app = resolve_user("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((app.uid, app.gid, app.additional_gids.clone()), (1000, 1000, vec![1000, 10]));
        let wheel = resolve_user("app:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((wheel.gid, wheel.additional_gids), (10, vec![10]), "a group asked for is the only one");
        let anon = resolve_user("4242:4343", None, None).unwrap();
        assert_eq!((anon.uid, anon.additional_gids), (4242, vec![4343]));
        assert_eq!(resolve_user("1234", Some(PASSWD), Some(GROUP)).unwrap().additional_gids, vec![0], "no passwd entry: root's group");
        assert_eq!(resolve_user("nobody", Some(PASSWD), Some(GROUP)).unwrap_err(), UserError::NoUser("nobody".into()));
    }
}
