//! Instruction semantics: raw instructions to typed ones, with flag validation. Words
//! stay unexpanded here; lowering expands them with the environment in scope.

use crate::error::{DockerfileError, Location};
use crate::parser::RawInstruction;

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
                    format!(
                        "one of {}",
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(DockerfileError::new(
                    raw.location.at(f),
                    format!("unknown flag: --{name}"),
                )
                .expected(expected));
            }
            values.push((name, value));
        }
        Ok(Flags { raw, values })
    }

    fn string(&self, name: &str) -> Result<Option<String>, DockerfileError> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.clone())),
            Some((_, None)) => Err(DockerfileError::new(
                self.raw.location.at(&format!("--{name}")),
                format!("missing a value on flag: --{name}"),
            )
            .expected(format!("--{name}=VALUE"))),
        }
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
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
fn json_array(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command_form(rest: &str) -> CommandForm {
    match json_array(rest) {
        Some(v) => CommandForm::Exec(v),
        None => CommandForm::Shell(rest.to_string()),
    }
}

/// Splits on unquoted white space, keeping quotes and escapes in the words (they are
/// removed later by expansion), as BuildKit's parser does for ENV and LABEL.
pub(crate) fn split_keep_quotes(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn name_values(
    raw: &RawInstruction,
    escape: char,
    what: &str,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let rest = raw.rest.trim();
    if rest.is_empty() {
        return Err(DockerfileError::new(
            raw.location.clone(),
            format!("{what} requires at least one argument"),
        )
        .expected("KEY=VALUE"));
    }
    let words = split_keep_quotes(rest, escape);
    if !words[0].contains('=') {
        // Legacy `ENV key value` form: the rest of the line is the value.
        let key = words[0].clone();
        let value = rest[key.len()..].trim_start().to_string();
        if value.is_empty() && what == "ENV" {
            return Err(DockerfileError::new(
                raw.location.at(&key),
                format!("{what} must have two arguments"),
            )
            .expected("KEY=VALUE or KEY VALUE"));
        }
        return Ok(vec![(key, value)]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(DockerfileError::new(
                raw.location.at(&w),
                format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
            )
            .expected("name=value"));
        };
        if k.is_empty() {
            return Err(DockerfileError::new(
                raw.location.at(&w),
                format!("{what} names can not be blank"),
            )
            .expected("name=value"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn need_args(raw: &RawInstruction, n: usize, what: &str) -> Result<(), DockerfileError> {
    if raw.rest.split_whitespace().count() < n {
        let msg = if n == 1 {
            format!("{what} requires at least one argument")
        } else {
            format!("{what} requires at least {n} arguments")
        };
        return Err(DockerfileError::new(raw.location.clone(), msg));
    }
    Ok(())
}

fn parse_duration(raw: &RawInstruction, flag: &str, v: &str) -> Result<i64, DockerfileError> {
    // Go's time.ParseDuration for the units a HEALTHCHECK uses.
    let units: [(&str, f64); 6] = [
        ("ns", 1.0),
        ("us", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
        ("m", 60e9),
        ("h", 3600e9),
    ];
    let mut total = 0f64;
    let mut rest = v;
    if rest == "0" {
        return Ok(0);
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end]
            .parse()
            .map_err(|_| bad_duration(raw, flag, v))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let mult = units
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| bad_duration(raw, flag, v))?;
        total += num * mult;
        rest = &rest[unit_end..];
    }
    Ok(total as i64)
}

fn bad_duration(raw: &RawInstruction, flag: &str, v: &str) -> DockerfileError {
    DockerfileError::new(
        raw.location.at(v),
        format!("invalid duration {v:?} for --{flag}"),
    )
    .expected("a duration such as 30s or 1m30s")
}

/// Types one raw instruction.
pub fn parse_instruction(raw: &RawInstruction, escape: char) -> Result<Located, DockerfileError> {
    let none: &[&str] = &[];
    let instruction = match raw.keyword.as_str() {
        "from" => {
            let f = Flags::new(raw, &["platform"])?;
            let words: Vec<&str> = raw.rest.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [img] => (img.to_string(), None),
                [img, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (img.to_string(), Some(name.to_ascii_lowercase()))
                }
                _ => {
                    return Err(DockerfileError::new(
                        raw.location.clone(),
                        "FROM requires either one or three arguments",
                    )
                    .expected("FROM IMAGE [AS NAME]"));
                }
            };
            if let Some(n) = &name
                && !valid_stage_name(n)
            {
                return Err(DockerfileError::new(raw.location.at(words[2]), format!("invalid name for build stage: {n:?}, name can't start with a number or contain symbols"))
                    .expected("a name of letters, digits, '-', '_' and '.' starting with a letter"));
            }
            Instruction::From {
                image,
                name,
                platform: f.string("platform")?,
            }
        }
        "run" => {
            let f = Flags::new(raw, &["network", "security", "mount", "device"])?;
            if !f.strings("mount").is_empty() {
                return Err(DockerfileError::new(
                    raw.location.at("--mount"),
                    "RUN --mount is not supported yet",
                )
                .expected("RUN without --mount"));
            }
            need_args(raw, 1, "RUN")?;
            Instruction::Run {
                cmd: command_form(&raw.rest),
                network: f.string("network")?,
                security: f.string("security")?,
            }
        }
        "copy" | "add" => {
            let allowed: &[&str] = if raw.keyword == "copy" {
                &["from", "chown", "chmod", "link", "exclude", "parents"]
            } else {
                &[
                    "chown",
                    "chmod",
                    "link",
                    "exclude",
                    "keep-git-dir",
                    "checksum",
                    "unpack",
                    "parents",
                ]
            };
            let f = Flags::new(raw, allowed)?;
            let (words, json) = match json_array(&raw.rest) {
                Some(v) => (v, true),
                None => (
                    raw.rest.split_whitespace().map(str::to_string).collect(),
                    false,
                ),
            };
            let what = raw.keyword.to_ascii_uppercase();
            if words.len() < 2 {
                return Err(DockerfileError::new(
                    raw.location.clone(),
                    format!(
                        "{what} requires at least two arguments, but only {} provided",
                        words.len()
                    ),
                )
                .expected(format!("{what} SRC... DEST")));
            }
            let (srcs, dest) = words.split_at(words.len() - 1);
            let args = CopyArgs {
                srcs: srcs.to_vec(),
                dest: dest[0].clone(),
                from: f.string("from")?,
                chown: f.string("chown")?,
                chmod: f.string("chmod")?,
                link: f.bool("link")?,
                exclude: f.strings("exclude"),
                json,
            };
            if raw.keyword == "copy" {
                Instruction::Copy(args)
            } else {
                Instruction::Add(args)
            }
        }
        "env" => {
            Flags::new(raw, none)?;
            Instruction::Env(name_values(raw, escape, "ENV")?)
        }
        "label" => {
            Flags::new(raw, none)?;
            Instruction::Label(name_values(raw, escape, "LABEL")?)
        }
        "arg" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "ARG")?;
            let mut out = Vec::new();
            for w in split_keep_quotes(&raw.rest, escape) {
                match w.split_once('=') {
                    Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                    None => out.push((w.clone(), None)),
                }
            }
            Instruction::Arg(out)
        }
        "workdir" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "WORKDIR")?;
            Instruction::Workdir(raw.rest.clone())
        }
        "user" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "USER")?;
            Instruction::User(raw.rest.clone())
        }
        "expose" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "EXPOSE")?;
            Instruction::Expose(raw.rest.split_whitespace().map(str::to_string).collect())
        }
        "cmd" => {
            Flags::new(raw, none)?;
            Instruction::Cmd(command_form(&raw.rest))
        }
        "entrypoint" => {
            Flags::new(raw, none)?;
            Instruction::Entrypoint(command_form(&raw.rest))
        }
        "volume" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "VOLUME")?;
            let v = json_array(&raw.rest)
                .unwrap_or_else(|| raw.rest.split_whitespace().map(str::to_string).collect());
            Instruction::Volume(v)
        }
        "stopsignal" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "STOPSIGNAL")?;
            Instruction::StopSignal(raw.rest.trim().to_string())
        }
        "shell" => {
            Flags::new(raw, none)?;
            match json_array(&raw.rest) {
                Some(v) if !v.is_empty() => Instruction::Shell(v),
                _ => {
                    return Err(DockerfileError::new(
                        raw.location.clone(),
                        "SHELL requires the arguments to be in JSON form",
                    )
                    .expected("SHELL [\"executable\", \"parameters\"]"));
                }
            }
        }
        "maintainer" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "MAINTAINER")?;
            Instruction::Maintainer(raw.rest.clone())
        }
        "onbuild" => {
            Flags::new(raw, none)?;
            need_args(raw, 1, "ONBUILD")?;
            let first = raw
                .rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if first == "onbuild" || first == "from" || first == "maintainer" {
                return Err(DockerfileError::new(
                    raw.location
                        .at(raw.rest.split_whitespace().next().unwrap_or("")),
                    format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        first.to_uppercase()
                    ),
                ));
            }
            Instruction::Onbuild(raw.rest.clone())
        }
        "healthcheck" => {
            let f = Flags::new(
                raw,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            let mut words = raw.rest.splitn(2, char::is_whitespace);
            let kind = words.next().unwrap_or("").to_ascii_uppercase();
            let rest = words.next().unwrap_or("").trim();
            match kind.as_str() {
                "NONE" => {
                    if !rest.is_empty() || !raw.flags.is_empty() {
                        return Err(DockerfileError::new(
                            raw.location.clone(),
                            "HEALTHCHECK NONE takes no arguments",
                        )
                        .expected("HEALTHCHECK NONE"));
                    }
                    Instruction::Healthcheck(Healthcheck::None)
                }
                "CMD" => {
                    let dur = |name: &str| -> Result<Option<i64>, DockerfileError> {
                        f.string(name)?
                            .map(|v| parse_duration(raw, name, &v))
                            .transpose()
                    };
                    let retries = match f.string("retries")? {
                        None => None,
                        Some(v) => Some(v.parse::<i64>().map_err(|_| {
                            DockerfileError::new(
                                raw.location.at(&v),
                                format!("invalid --retries value {v:?}"),
                            )
                            .expected("a whole number")
                        })?),
                    };
                    if rest.is_empty() {
                        return Err(DockerfileError::new(
                            raw.location.clone(),
                            "missing command after HEALTHCHECK CMD",
                        )
                        .expected("HEALTHCHECK CMD command"));
                    }
                    Instruction::Healthcheck(Healthcheck::Cmd {
                        cmd: command_form(rest),
                        interval: dur("interval")?,
                        timeout: dur("timeout")?,
                        start_period: dur("start-period")?,
                        start_interval: dur("start-interval")?,
                        retries,
                    })
                }
                _ => {
                    return Err(DockerfileError::new(
                        raw.location.clone(),
                        format!("unknown type {kind:?} in HEALTHCHECK"),
                    )
                    .expected("CMD or NONE"));
                }
            }
        }
        _ => {
            return Err(DockerfileError::new(
                raw.location.clone(),
                format!("unknown instruction: {}", raw.keyword_as_written),
            )
            .expected(format!(
                "one of {}",
                KEYWORDS
                    .iter()
                    .map(|k| k.to_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    Ok(Located {
        instruction,
        original: raw.original.clone(),
        location: raw.location.clone(),
    })
}

fn valid_stage_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn one(s: &str) -> Result<Instruction, DockerfileError> {
        let d = parse("Dockerfile", s).unwrap();
        parse_instruction(&d.instructions[0], '\\').map(|l| l.instruction)
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            one("ENV a=1 b=\"two words\"").unwrap(),
            Instruction::Env(vec![
                ("a".into(), "1".into()),
                ("b".into(), "\"two words\"".into())
            ])
        );
        assert_eq!(
            one("ENV a one two").unwrap(),
            Instruction::Env(vec![("a".into(), "one two".into())])
        );
        assert!(one("ENV a=1 b").is_err());
    }

    #[test]
    fn unknown_flag_points_at_it() {
        let e = one("COPY --form=x a b").unwrap_err();
        assert_eq!(e.location.column, 6);
        assert!(e.to_string().contains("unknown flag: --form"));
    }

    #[test]
    fn exec_and_shell_forms() {
        assert_eq!(
            one("CMD [\"a\", \"b\"]").unwrap(),
            Instruction::Cmd(CommandForm::Exec(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            one("CMD [\"a\", b]").unwrap(),
            Instruction::Cmd(CommandForm::Shell("[\"a\", b]".into()))
        );
    }

    #[test]
    fn healthcheck_durations() {
        match one("HEALTHCHECK --interval=1m30s --retries=3 CMD true").unwrap() {
            Instruction::Healthcheck(Healthcheck::Cmd {
                interval, retries, ..
            }) => {
                assert_eq!(interval, Some(90_000_000_000));
                assert_eq!(retries, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }
}
