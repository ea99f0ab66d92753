//! Instruction semantics: raw instructions to typed ones, with flag validation. Words
//! stay unexpanded here; lowering expands them with the environment in scope.

use crate::error::{DockerfileError, Location};
use crate::parser::{Args, Heredoc, RawInstruction};

/// Shell form (run through SHELL) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// `RUN echo hi`.
    Shell(String),
    /// `RUN ["echo", "hi"]`.
    Exec(Vec<String>),
}

/// COPY and ADD arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Sources, unexpanded.
    pub srcs: Vec<String>,
    /// Destination, unexpanded.
    pub dest: String,
    /// `--from=`.
    pub from: Option<String>,
    /// `--chown=`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude=`, repeatable.
    pub exclude: Vec<String>,
    /// True if the sources were written in JSON form.
    pub json: bool,
    /// Heredocs named by `<<NAME` sources.
    pub heredocs: Vec<Heredoc>,
    /// ADD `--checksum=sha256:…` for URL sources.
    pub checksum: Option<String>,
    /// `--parents`.
    pub parents: bool,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// ADD `--unpack`: None is the default (local archives unpack, remote ones do not).
    pub unpack: Option<bool>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [opts] CMD …`.
    Cmd {
        /// The command.
        cmd: CommandForm,
        /// Durations in nanoseconds and retries.
        interval: Option<i64>,
        /// Timeout.
        timeout: Option<i64>,
        /// Start period.
        start_period: Option<i64>,
        /// Start interval.
        start_interval: Option<i64>,
        /// Retries.
        retries: Option<i64>,
    },
}

/// One typed instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// FROM image [AS name].
    From {
        /// Image, stage name or `scratch`, unexpanded.
        image: String,
        /// `AS name`, lower-cased.
        name: Option<String>,
        /// `--platform=`.
        platform: Option<String>,
    },
    /// RUN.
    Run {
        /// The command.
        cmd: CommandForm,
        /// `--network=`.
        network: Option<String>,
        /// `--security=`.
        security: Option<String>,
        /// Heredocs the command reads.
        heredocs: Vec<Heredoc>,
        /// `--mount=` specs, unexpanded.
        mounts: Vec<String>,
    },
    /// COPY.
    Copy(CopyArgs),
    /// ADD.
    Add(CopyArgs),
    /// ENV k=v…, unexpanded.
    Env(Vec<(String, String)>),
    /// ARG k[=v]…, unexpanded defaults.
    Arg(Vec<(String, Option<String>)>),
    /// WORKDIR.
    Workdir(String),
    /// USER.
    User(String),
    /// LABEL k=v….
    Label(Vec<(String, String)>),
    /// EXPOSE.
    Expose(Vec<String>),
    /// CMD.
    Cmd(CommandForm),
    /// ENTRYPOINT.
    Entrypoint(CommandForm),
    /// VOLUME.
    Volume(Vec<String>),
    /// STOPSIGNAL.
    StopSignal(String),
    /// SHELL (exec form only).
    Shell(Vec<String>),
    /// HEALTHCHECK.
    Healthcheck(Healthcheck),
    /// MAINTAINER.
    Maintainer(String),
    /// ONBUILD, the trigger text.
    Onbuild(String),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// What.
    pub instruction: Instruction,
    /// The original text (for progress names and history).
    pub original: String,
    /// Where.
    pub location: Location,
}

const KEYWORDS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

struct Flags<'a> {
    raw: &'a RawInstruction,
    values: Vec<(String, Option<String>)>,
}

impl<'a> Flags<'a> {
    fn new(raw: &'a RawInstruction, allowed: &[&str]) -> Result<Flags<'a>, DockerfileError> {
        let mut values = Vec::new();
        for f in &raw.flags {
            let body = &f[2..];
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if !allowed.contains(&name.as_str()) {
                let expected = if allowed.is_empty() {
                    "no flags on this instruction".to_string()
                } else {
                    format!("one of {}", allowed.iter().map(|a| format!("--{a}")).collect::<Vec<_>>().join(", "))
                };
                return Err(DockerfileError::new(raw.location.at(f), format!("unknown flag: --{name}")).expected(expected));
            }
            values.push((name, value));
        }
        Ok(Flags { raw, values })
    }

    fn string(&self, name: &str) -> Result<Option<String>, DockerfileError> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.clone())),
            Some((_, None)) => {
                Err(DockerfileError::new(self.raw.location.at(&format!("--{name}")), format!("missing a value on flag: --{name}"))
                    .expected(format!("--{name}=VALUE")))
            }
        }
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values.iter().filter(|(n, _)| n == name).filter_map(|(_, v)| v.clone()).collect()
    }

    fn bool(&self, name: &str) -> Result<bool, DockerfileError> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.as_str() {
                "true" | "" => Ok(true),
                "false" => Ok(false),
                _ => Err(DockerfileError::new(
                    self.raw.location.at(&format!("--{name}")),
                    format!("expecting boolean value for flag {name}, not: {v}"),
                )
                .expected("true or false")),
            },
        }
    }
}

/// Parses a JSON array of strings, if the text is one.
fn command_form(args: &Args) -> Option<CommandForm> {
    match args {
        Args::Json(v) => Some(CommandForm::Exec(v.clone())),
        Args::Words(v) => Some(CommandForm::Shell(v.join(" "))),
        _ => None,
    }
}

fn words(args: &Args) -> Vec<String> {
    match args {
        Args::Words(v) | Args::Json(v) => v.clone(),
        _ => Vec::new(),
    }
}

fn need_args(raw: &RawInstruction, what: &str) -> Result<(), DockerfileError> {
    if words(&raw.args).is_empty() {
        return Err(DockerfileError::new(raw.location.clone(), format!("{what} requires at least one argument"))
            .expected(format!("{what} followed by its arguments")));
    }
    Ok(())
}

fn parse_duration(raw: &RawInstruction, flag: &str, v: &str) -> Result<i64, DockerfileError> {
    // Go's time.ParseDuration for the units a HEALTHCHECK uses.
    let units: [(&str, f64); 6] = [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];
    let mut total = 0f64;
    let mut rest = v;
    if rest == "0" {
        return Ok(0);
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().map_err(|_| bad_duration(raw, flag, v))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let mult = units.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(|| bad_duration(raw, flag, v))?;
        total += num * mult;
        rest = &rest[unit_end..];
    }
    Ok(total as i64)
}

fn bad_duration(raw: &RawInstruction, flag: &str, v: &str) -> DockerfileError {
    DockerfileError::new(raw.location.at(v), format!("invalid duration {v:?} for --{flag}")).expected("a duration such as 30s or 1m30s")
}

/// Types one raw instruction: one parser per keyword.
pub fn parse_instruction(raw: &RawInstruction) -> Result<Located, DockerfileError> {
    let instruction = match raw.keyword.as_str() {
        "from" => parse_from(raw)?,
        "run" => parse_run(raw)?,
        "copy" | "add" => parse_copy(raw)?,
        "env" | "label" => parse_key_values(raw)?,
        "arg" => parse_arg(raw)?,
        "workdir" | "user" | "maintainer" | "stopsignal" => parse_one_word(raw)?,
        "expose" | "volume" => {
            no_flags(raw)?;
            need_args(raw, &raw.keyword.to_ascii_uppercase())?;
            if raw.keyword == "expose" { Instruction::Expose(words(&raw.args)) } else { Instruction::Volume(words(&raw.args)) }
        }
        "cmd" | "entrypoint" => {
            no_flags(raw)?;
            let cmd = command_form(&raw.args).unwrap_or(CommandForm::Exec(Vec::new()));
            if raw.keyword == "cmd" { Instruction::Cmd(cmd) } else { Instruction::Entrypoint(cmd) }
        }
        "shell" => parse_shell(raw)?,
        "onbuild" => parse_onbuild(raw)?,
        "healthcheck" => parse_healthcheck(raw)?,
        _ => {
            return Err(DockerfileError::new(raw.location.clone(), format!("unknown instruction: {}", raw.keyword_as_written))
                .expected(format!("one of {}", KEYWORDS.iter().map(|k| k.to_uppercase()).collect::<Vec<_>>().join(", "))));
        }
    };
    Ok(Located { instruction, original: raw.original.clone(), location: raw.location.clone() })
}

/// Refuses any flag: the instruction takes none.
fn no_flags(raw: &RawInstruction) -> Result<(), DockerfileError> {
    Flags::new(raw, &[]).map(|_| ())
}

fn parse_from(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    let f = Flags::new(raw, &["platform"])?;
    let ws = words(&raw.args);
    let (image, name) = match ws.as_slice() {
        [img] => (img.clone(), None),
        [img, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => (img.clone(), Some(name.to_ascii_lowercase())),
        _ => {
            return Err(
                DockerfileError::new(raw.location.clone(), "FROM requires either one or three arguments").expected("FROM IMAGE [AS NAME]")
            );
        }
    };
    if let Some(n) = &name
        && !valid_stage_name(n)
    {
        return Err(DockerfileError::new(
            raw.location.at(&ws[2]),
            format!("invalid name for build stage: {n:?}, name can't start with a number or contain symbols"),
        )
        .expected("a name of letters, digits, '-', '_' and '.' starting with a letter"));
    }
    Ok(Instruction::From { image, name, platform: f.string("platform")? })
}

fn parse_run(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    let f = Flags::new(raw, &["network", "security", "mount", "device"])?;
    let cmd = command_form(&raw.args)
        .ok_or_else(|| DockerfileError::new(raw.location.clone(), "RUN requires at least one argument").expected("a command"))?;
    Ok(Instruction::Run {
        cmd,
        network: f.string("network")?,
        security: f.string("security")?,
        heredocs: raw.heredocs.clone(),
        mounts: f.strings("mount"),
    })
}

fn parse_copy(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    let add = raw.keyword == "add";
    let allowed: &[&str] = if add {
        &["chown", "chmod", "link", "exclude", "keep-git-dir", "checksum", "unpack", "parents"]
    } else {
        &["from", "chown", "chmod", "link", "exclude", "parents"]
    };
    let f = Flags::new(raw, allowed)?;
    let ws = words(&raw.args);
    if ws.len() < 2 {
        let upper = raw.keyword.to_ascii_uppercase();
        return Err(DockerfileError::new(
            raw.location.clone(),
            format!("{upper} requires at least two arguments, but only {} provided", ws.len()),
        )
        .expected(format!("{upper} SRC... DEST")));
    }
    let (srcs, dest) = ws.split_at(ws.len() - 1);
    let unpack_given = raw.flags.iter().any(|x| x == "--unpack" || x.starts_with("--unpack="));
    let args = CopyArgs {
        srcs: srcs.to_vec(),
        dest: dest[0].clone(),
        from: f.string("from")?,
        chown: f.string("chown")?,
        chmod: f.string("chmod")?,
        link: f.bool("link")?,
        exclude: f.strings("exclude"),
        json: matches!(raw.args, Args::Json(_)),
        heredocs: raw.heredocs.clone(),
        checksum: if add { f.string("checksum")? } else { None },
        parents: f.bool("parents")?,
        keep_git_dir: add && f.bool("keep-git-dir")?,
        unpack: if add && unpack_given { Some(f.bool("unpack")?) } else { None },
    };
    Ok(if add { Instruction::Add(args) } else { Instruction::Copy(args) })
}

fn parse_key_values(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    no_flags(raw)?;
    let Args::KeyValues(kvs) = &raw.args else {
        let upper = raw.keyword.to_ascii_uppercase();
        return Err(DockerfileError::new(raw.location.clone(), format!("{upper} requires at least one argument")).expected("KEY=VALUE"));
    };
    let upper = raw.keyword.to_ascii_uppercase();
    if kvs.iter().any(|kv| kv.key.is_empty()) {
        return Err(blank_names(raw, &upper));
    }
    let pairs = kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    Ok(if raw.keyword == "env" { Instruction::Env(pairs) } else { Instruction::Label(pairs) })
}

/// BuildKit's words for `ENV =x`, `LABEL =x`, `ARG =x`.
fn blank_names(raw: &RawInstruction, upper: &str) -> DockerfileError {
    DockerfileError::new(raw.location.at("="), format!("{upper} names can not be blank")).expected("NAME=VALUE")
}

fn parse_arg(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    no_flags(raw)?;
    need_args(raw, "ARG")?;
    let pairs = words(&raw.args)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect::<Vec<_>>();
    if pairs.iter().any(|(k, _)| k.is_empty()) {
        return Err(blank_names(raw, "ARG"));
    }
    Ok(Instruction::Arg(pairs))
}

/// WORKDIR, USER, MAINTAINER and STOPSIGNAL: their words joined into one value.
fn parse_one_word(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    no_flags(raw)?;
    need_args(raw, &raw.keyword.to_ascii_uppercase())?;
    let v = words(&raw.args).join(" ");
    Ok(match raw.keyword.as_str() {
        "workdir" => Instruction::Workdir(v),
        "user" => Instruction::User(v),
        "maintainer" => Instruction::Maintainer(v),
        _ => Instruction::StopSignal(v),
    })
}

fn parse_shell(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    no_flags(raw)?;
    match &raw.args {
        Args::Json(v) if !v.is_empty() => Ok(Instruction::Shell(v.clone())),
        _ => Err(DockerfileError::new(raw.location.clone(), "SHELL requires the arguments to be in JSON form")
            .expected("SHELL [\"executable\", \"parameters\"]")),
    }
}

fn parse_onbuild(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    no_flags(raw)?;
    let Args::Sub(child) = &raw.args else {
        return Err(DockerfileError::new(raw.location.clone(), "ONBUILD requires at least one argument").expected("ONBUILD INSTRUCTION"));
    };
    if matches!(child.keyword.as_str(), "onbuild" | "from" | "maintainer") {
        return Err(DockerfileError::new(
            raw.location.at(&child.keyword_as_written),
            format!("{} isn't allowed as an ONBUILD trigger", child.keyword.to_uppercase()),
        )
        .expected("an instruction other than ONBUILD, FROM or MAINTAINER"));
    }
    // A heredoc trigger keeps its bodies, each followed by its delimiter line, so that the
    // trigger parses whole when an image built on this one runs it (BuildKit's
    // testOnBuildHeredoc).
    let mut trigger = raw.rest.clone();
    for h in &raw.heredocs {
        trigger.push('\n');
        trigger.push_str(&h.content);
        trigger.push_str(&h.name);
    }
    Ok(Instruction::Onbuild(trigger))
}

fn parse_healthcheck(raw: &RawInstruction) -> Result<Instruction, DockerfileError> {
    let f = Flags::new(raw, &["interval", "timeout", "start-period", "start-interval", "retries"])?;
    let Args::Health { kind, cmd } = &raw.args else {
        return Err(DockerfileError::new(raw.location.clone(), "HEALTHCHECK requires at least one argument")
            .expected("HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE"));
    };
    match kind.to_ascii_uppercase().as_str() {
        "NONE" if **cmd != Args::Empty || !raw.flags.is_empty() => {
            Err(DockerfileError::new(raw.location.clone(), "HEALTHCHECK NONE takes no arguments").expected("HEALTHCHECK NONE"))
        }
        "NONE" => Ok(Instruction::Healthcheck(Healthcheck::None)),
        "CMD" => {
            let dur =
                |name: &str| -> Result<Option<i64>, DockerfileError> { f.string(name)?.map(|v| parse_duration(raw, name, &v)).transpose() };
            let retries = match f.string("retries")? {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    DockerfileError::new(raw.location.at(&v), format!("invalid --retries value {v:?}")).expected("a whole number")
                })?),
            };
            let Some(cmd) = command_form(cmd) else {
                return Err(
                    DockerfileError::new(raw.location.clone(), "missing command after HEALTHCHECK CMD").expected("HEALTHCHECK CMD command")
                );
            };
            Ok(Instruction::Healthcheck(Healthcheck::Cmd {
                cmd,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            }))
        }
        other => Err(DockerfileError::new(raw.location.at(kind), format!("unknown type {other:?} in HEALTHCHECK")).expected("CMD or NONE")),
    }
}

fn valid_stage_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic()) && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn one(s: &str) -> Result<Instruction, DockerfileError> {
        let d = parse("Dockerfile", s)?;
        parse_instruction(&d.instructions[0]).map(|l| l.instruction)
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            one("ENV a=1 b=\"two words\"").unwrap(),
            Instruction::Env(vec![("a".into(), "1".into()), ("b".into(), "\"two words\"".into())])
        );
        assert_eq!(one("ENV a one two").unwrap(), Instruction::Env(vec![("a".into(), "one two".into())]));
        assert!(one("ENV a=1 b").is_err());
    }

    /// BuildKit's errBlankCommandNames.
    #[test]
    fn blank_names_are_refused_in_buildkits_words() {
        for (line, words) in [
            ("ENV =x", "ENV names can not be blank"),
            ("LABEL =x", "LABEL names can not be blank"),
            ("ARG =x", "ARG names can not be blank"),
        ] {
            let e = one(line).unwrap_err().to_string();
            assert!(e.contains(words), "{line}: {e}");
        }
    }

    #[test]
    fn unknown_flag_points_at_it() {
        let e = one("COPY --form=x a b").unwrap_err();
        assert_eq!(e.location.column, 6);
        assert!(e.to_string().contains("unknown flag: --form"));
    }

    #[test]
    fn exec_and_shell_forms() {
        assert_eq!(one("CMD [\"a\", \"b\"]").unwrap(), Instruction::Cmd(CommandForm::Exec(vec!["a".into(), "b".into()])));
        assert_eq!(one("CMD [\"a\", b]").unwrap(), Instruction::Cmd(CommandForm::Shell("[\"a\", b]".into())));
    }

    #[test]
    fn healthcheck_durations() {
        match one("HEALTHCHECK --interval=1m30s --retries=3 CMD true").unwrap() {
            Instruction::Healthcheck(Healthcheck::Cmd { interval, retries, .. }) => {
                assert_eq!(interval, Some(90_000_000_000));
                assert_eq!(retries, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }
}
