//! Build checks: BuildKit's Dockerfile lint rules, reported as warnings that point into the
//! Dockerfile like a compiler's. `# check=skip=Rule1,Rule2;error=true` (or `skip=all`)
//! configures them.

use crate::error::Location;
use crate::instructions::{CommandForm, Instruction, Located};
use crate::parser::{Args, Dockerfile, RawInstruction};
use crate::request::{BuildOptions, ImageResolver, builtin_args};
use rdock_imagespec::ImageRef;
use rdock_llb::patterns::PatternMatcher;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// One rule violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's rule name (`JSONArgsRecommended`).
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// Where.
    pub location: Location,
}

impl Warning {
    /// The rule's documentation page.
    pub fn url(&self) -> String {
        // Words start at an upper-case letter after a lower-case one, or at the last
        // letter of an acronym (`JSONArgs` → `json-args`).
        let chars: Vec<char> = self.rule.chars().collect();
        let mut kebab = String::new();
        for (i, c) in chars.iter().enumerate() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let acronym_end = i > 0 && chars[i - 1].is_ascii_uppercase() && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if c.is_ascii_uppercase() && (prev_lower || acronym_end) {
                kebab.push('-');
            }
            kebab.push(c.to_ascii_lowercase());
        }
        format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.location;
        let num = l.start_line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "warning: {}: {}", self.rule, self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", l.file, l.start_line, l.column)?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{num} | {}", l.source_line.trim_end())?;
        let lead: String = l.source_line.chars().take(l.column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        writeln!(f, "{pad} | {lead}{}", "^".repeat(l.width.max(1)))?;
        write!(f, "{pad} = help: {}", self.url())
    }
}

/// The `# check=` directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// Rules not to run (`all` skips every one).
    pub skip: BTreeSet<String>,
    /// Fail the build when any rule reports.
    pub error: bool,
    /// Experimental rules turned on (`experimental=Rule` or `all`).
    pub experimental: BTreeSet<String>,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true`.
    pub fn parse(directive: Option<&str>) -> CheckConfig {
        let mut c = CheckConfig::default();
        for part in directive.unwrap_or("").split(';') {
            let Some((k, v)) = part.split_once('=') else { continue };
            match k.trim() {
                "skip" => c.skip.extend(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty())),
                "error" => c.error = v.trim().eq_ignore_ascii_case("true"),
                "experimental" => c.experimental.extend(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty())),
                _ => {}
            }
        }
        c
    }

    fn enabled(&self, rule: &str) -> bool {
        let experimental_on = !EXPERIMENTAL.contains(&rule) || self.experimental.contains("all") || self.experimental.contains(rule);
        experimental_on && !self.skip.contains("all") && !self.skip.contains(rule)
    }
}

/// Rules BuildKit runs only when `# check=experimental=…` asks for them.
const EXPERIMENTAL: &[&str] = &["InvalidDefinitionDescription"];

/// BuildKit's validateDefinitionDescription: the comment right above a named stage or an
/// ARG, if any, should start with the name it describes.
fn description_ok(comments: &[String], keys: &[String]) -> bool {
    match comments.last() {
        None => true,
        Some(c) => keys.is_empty() || keys.iter().any(|k| c.split(' ').next() == Some(k.as_str())),
    }
}

const BUILTIN_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

/// Names `$NAME` / `${NAME…}` refers to in `word`, except those with a default operator.
fn referenced_vars(word: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_single = false;
    while i < chars.len() {
        let c = chars[i];
        if c == escape {
            i += 2;
            continue;
        }
        if c == '\'' {
            in_single = !in_single;
        }
        if c == '$' && !in_single {
            let braced = chars.get(i + 1) == Some(&'{');
            let start = if braced { i + 2 } else { i + 1 };
            let mut j = start;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j > start && !chars[start].is_ascii_digit() {
                let name: String = chars[start..j].iter().collect();
                let has_default = braced && matches!(chars.get(j), Some(':') | Some('-') | Some('+') | Some('?'));
                if !has_default {
                    out.push(name);
                }
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// BuildKit's `(?i)(?:_|^)(?:token|…)(?:_|$)`: an underscore-delimited word of the name is
/// a secret-sounding token, and none is an allowed one (`TOKEN_FILE` is fine).
fn secret_like(key: &str) -> bool {
    let deny = ["apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token"];
    let allow = ["public", "file", "version"];
    let words: Vec<String> = key.split('_').map(|w| w.to_ascii_lowercase()).collect();
    words.iter().any(|w| deny.contains(&w.as_str())) && !words.iter().any(|w| allow.contains(&w.as_str()))
}

/// The checks every ARG gets, global or in a stage: its description comment and whether
/// its names sound like secrets.
fn arg_checks(
    raw: &RawInstruction,
    loc: &Location,
    args: &[(String, Option<String>)],
    push: &mut dyn FnMut(&'static str, String, Location),
) {
    let keys: Vec<String> = args.iter().map(|(k, _)| k.clone()).collect();
    if !keys.is_empty() && !description_ok(&raw.comments, &keys) {
        let example = if keys.len() > 1 { "<arg_key>".to_string() } else { keys[0].clone() };
        push("InvalidDefinitionDescription", format!("Comment for ARG should follow the format: `# {example} <description>`"), loc.clone());
    }
    for k in keys.iter().filter(|k| secret_like(k)) {
        push("SecretsUsedInArgOrEnv", format!("Do not use ARG or ENV instructions for sensitive data (ARG {k:?})"), raw.location.at(k));
    }
}

fn keyword_location(raw: &RawInstruction) -> Location {
    raw.location.at(&raw.keyword_as_written)
}

/// Runs every enabled rule over a parsed Dockerfile and its typed instructions.
pub fn lint(
    df: &Dockerfile,
    typed: &[Located],
    excludes: &[String],
    resolver: &dyn ImageResolver,
    opts: &BuildOptions,
    config: &CheckConfig,
) -> Vec<Warning> {
    let mut w: Vec<Warning> = Vec::new();
    let mut push = |rule: &'static str, message: String, location: Location| {
        if config.enabled(rule) {
            w.push(Warning { rule, message, location });
        }
    };
    let escape = df.directives.escape;

    // ConsistentInstructionCasing: the majority casing wins.
    let (upper, lower) = df.instructions.iter().fold((0, 0), |(u, l), r| {
        (
            u + usize::from(r.keyword_as_written == r.keyword_as_written.to_ascii_uppercase()),
            l + usize::from(r.keyword_as_written == r.keyword_as_written.to_ascii_lowercase()),
        )
    });
    let majority_upper = upper >= lower;
    for r in &df.instructions {
        let ok = if majority_upper {
            r.keyword_as_written == r.keyword_as_written.to_ascii_uppercase()
        } else {
            r.keyword_as_written == r.keyword_as_written.to_ascii_lowercase()
        };
        if !ok {
            push(
                "ConsistentInstructionCasing",
                format!(
                    "Command '{}' should match the case of the command majority ({})",
                    r.keyword_as_written,
                    if majority_upper { "uppercase" } else { "lowercase" }
                ),
                keyword_location(r),
            );
        }
    }
    for line in &df.empty_continuations {
        if let Some(r) = df.instructions.iter().find(|r| r.location.start_line == *line) {
            push("NoEmptyContinuation", "Empty continuation line".into(), keyword_location(r));
        }
    }

    let matcher = PatternMatcher::new(excludes).ok();
    let mut global_args: Vec<(String, Option<String>)> = Vec::new();
    let mut stage_names: Vec<String> = Vec::new();
    let mut stage_env: HashMap<String, BTreeSet<String>> = HashMap::new();
    type StageLint = (BTreeSet<String>, bool, Vec<(&'static str, Location)>);
    let mut current: Option<StageLint> = None;
    let mut current_name: Option<String> = None;
    let finish_stage = |cur: &mut Option<StageLint>,
                        name: Option<String>,
                        stage_env: &mut HashMap<String, BTreeSet<String>>,
                        push: &mut dyn FnMut(&'static str, String, Location)| {
        if let Some((defined, _, singles)) = cur.take() {
            if let Some(n) = name {
                stage_env.insert(n, defined);
            }
            for kind in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
                let locs: Vec<&Location> = singles.iter().filter(|(k, _)| *k == kind).map(|(_, l)| l).collect();
                for l in locs.iter().take(locs.len().saturating_sub(1)) {
                    push(
                        "MultipleInstructionsDisallowed",
                        format!("Multiple {kind} instructions should not be used in the same stage because only the last one will be used"),
                        (*l).clone(),
                    );
                }
            }
        }
    };

    for (raw, l) in df.instructions.iter().zip(typed) {
        let loc = keyword_location(raw);
        // Names defined so far in this stage, for UndefinedVar.
        let check_vars = |word: &str, defined: &BTreeSet<String>, push: &mut dyn FnMut(&'static str, String, Location)| {
            for v in referenced_vars(word, escape) {
                if !defined.contains(&v) && !BUILTIN_ARGS.contains(&v.as_str()) {
                    push("UndefinedVar", format!("Usage of undefined variable '${v}'"), raw.location.at(&format!("${v}")).clone());
                }
            }
        };
        match &l.instruction {
            Instruction::From { image, name, platform } => {
                finish_stage(&mut current, current_name.take(), &mut stage_env, &mut push);
                current_name = name.clone();
                let words = match &raw.args {
                    Args::Words(w) => w.clone(),
                    _ => Vec::new(),
                };
                if let (Some(n), Some(written)) = (name, words.get(2))
                    && !description_ok(&raw.comments, std::slice::from_ref(written))
                {
                    let _ = n;
                    push(
                        "InvalidDefinitionDescription",
                        format!("Comment for FROM should follow the format: `# {written} <description>`"),
                        loc.clone(),
                    );
                }
                if let Some(as_kw) = words.get(1) {
                    let from_kw = &raw.keyword_as_written;
                    let from_upper = *from_kw == from_kw.to_ascii_uppercase();
                    let from_lower = *from_kw == from_kw.to_ascii_lowercase();
                    let as_ok = if from_upper { *as_kw == as_kw.to_ascii_uppercase() } else { *as_kw == as_kw.to_ascii_lowercase() };
                    // A mixed-case FROM is ConsistentInstructionCasing's business, not this rule's.
                    if (from_upper || from_lower) && !as_ok {
                        push("FromAsCasing", format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"), raw.location.at(as_kw));
                    }
                }
                if let (Some(n), Some(written)) = (name, words.get(2)) {
                    if written != &written.to_ascii_lowercase() {
                        push("StageNameCasing", format!("Stage name '{written}' should be lowercase"), raw.location.at(written));
                    }
                    if n == "scratch" || n == "context" {
                        push(
                            "ReservedStageName",
                            format!("Stage name should not use the same name as reserved stage {n:?}"),
                            raw.location.at(written),
                        );
                    }
                    if stage_names.contains(n) {
                        push(
                            "DuplicateStageName",
                            format!("Duplicate stage name {n:?}, stage names should be unique"),
                            raw.location.at(written),
                        );
                    }
                }
                if let Some(p) = platform {
                    if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
                        push(
                            "RedundantTargetPlatform",
                            format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"),
                            raw.location.at(p),
                        );
                    } else if !p.contains('$') {
                        push(
                            "FromPlatformFlagConstDisallowed",
                            format!("FROM --platform flag should not use constant value {p:?}"),
                            raw.location.at(p),
                        );
                    }
                }
                let globals: BTreeSet<String> = global_args.iter().map(|(k, _)| k.clone()).collect();
                for v in referenced_vars(image, escape) {
                    if !globals.contains(&v) && !BUILTIN_ARGS.contains(&v.as_str()) {
                        push("UndefinedArgInFrom", format!("FROM argument '{v}' is not declared"), raw.location.at(&format!("${v}")));
                    }
                }
                // With only defaults, does the base still name a valid image?
                let mut defaults = builtin_args(&opts.build_platform, &opts.target());
                defaults.extend(global_args.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())));
                // The platform this stage asks its base image for.
                let target = platform
                    .as_ref()
                    .and_then(|p| (crate::shell::Lexer { escape }).process_word(p, &defaults).ok())
                    .and_then(|p| rdock_imagespec::Platform::parse(&p).ok())
                    .unwrap_or_else(|| opts.target());
                let mut inherited: BTreeSet<String> = BTreeSet::from(["PATH".to_string()]);
                if let Ok(base) = (crate::shell::Lexer { escape }).process_word(image, &defaults) {
                    let lname = base.to_ascii_lowercase();
                    if image.contains('$') && base != "scratch" && !stage_names.contains(&lname) && ImageRef::parse(&base).is_err() {
                        push(
                            "InvalidDefaultArgInFrom",
                            format!("Default value for ARG {image} results in empty or invalid base image name"),
                            raw.location.at(image),
                        );
                    }
                    if let Some(env) = stage_env.get(&lname) {
                        inherited.extend(env.iter().cloned());
                    } else if base != "scratch"
                        && let Ok(r) = ImageRef::parse(&base)
                        && let Ok(img) = resolver.resolve(&r, &target)
                    {
                        inherited.extend(img.config.config.env.iter().map(|e| e.split_once('=').map(|x| x.0).unwrap_or(e).to_string()));
                        let got = rdock_imagespec::Platform {
                            os: img.config.os.clone(),
                            architecture: img.config.architecture.clone(),
                            variant: img.config.variant.clone(),
                        };
                        if !got.architecture.is_empty() && !got.satisfies(&target) {
                            push(
                                "InvalidBaseImagePlatform",
                                format!(
                                    "Base image {} was pulled with platform \"{got}\", expected \"{target}\" for current build",
                                    r.familiar()
                                ),
                                raw.location.at(image),
                            );
                        }
                    }
                }
                if let Some(n) = name {
                    stage_names.push(n.clone());
                }
                current = Some((inherited, false, Vec::new()));
            }
            Instruction::Arg(args) if current.is_none() => {
                arg_checks(raw, &loc, args, &mut push);
                global_args.extend(args.iter().cloned());
            }
            _ => {}
        }
        let Some((defined, workdir_set, singles)) = current.as_mut() else { continue };
        match &l.instruction {
            Instruction::Arg(args) => {
                arg_checks(raw, &loc, args, &mut push);
                for (k, v) in args {
                    if let Some(v) = v {
                        check_vars(v, defined, &mut push);
                    }
                    defined.insert(k.clone());
                }
            }
            Instruction::Env(kvs) | Instruction::Label(kvs) => {
                let is_env = matches!(l.instruction, Instruction::Env(_));
                let what = if is_env { "ENV" } else { "LABEL" };
                if let Args::KeyValues(kv) = &raw.args
                    && kv.iter().any(|k| k.sep.is_empty())
                {
                    push(
                        "LegacyKeyValueFormat",
                        format!("\"{what} key=value\" should be used instead of legacy \"{what} key value\" format"),
                        loc.clone(),
                    );
                }
                for (k, v) in kvs {
                    check_vars(v, defined, &mut push);
                    if is_env {
                        if secret_like(k) {
                            push(
                                "SecretsUsedInArgOrEnv",
                                format!("Do not use ARG or ENV instructions for sensitive data (ENV {k:?})"),
                                raw.location.at(k),
                            );
                        }
                        defined.insert(k.clone());
                    }
                }
            }
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let what = if matches!(l.instruction, Instruction::Cmd(_)) { "CMD" } else { "ENTRYPOINT" };
                if matches!(c, CommandForm::Shell(s) if !s.is_empty()) {
                    push(
                        "JSONArgsRecommended",
                        format!("JSON arguments recommended for {what} to prevent unintended behavior related to OS signals"),
                        loc.clone(),
                    );
                }
                singles.push((what, loc.clone()));
            }
            Instruction::Healthcheck(_) => singles.push(("HEALTHCHECK", loc.clone())),
            Instruction::Maintainer(_) => {
                push("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label".into(), loc.clone())
            }
            Instruction::Workdir(p) => {
                check_vars(p, defined, &mut push);
                if !*workdir_set && !p.starts_with('/') && !p.starts_with('$') {
                    push(
                        "WorkdirRelativePath",
                        format!("Relative workdir {p:?} can have unexpected results if the base image changes"),
                        raw.location.at(p),
                    );
                }
                *workdir_set = true;
            }
            Instruction::Expose(ports) => {
                for p in ports {
                    check_vars(p, defined, &mut push);
                    if p.contains(':') {
                        push(
                            "ExposeInvalidFormat",
                            format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'"),
                            raw.location.at(p),
                        );
                    }
                    if let Some((_, proto)) = p.split_once('/')
                        && proto != proto.to_ascii_lowercase()
                    {
                        push(
                            "ExposeProtoCasing",
                            format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase"),
                            raw.location.at(p),
                        );
                    }
                }
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let what = if matches!(l.instruction, Instruction::Copy(_)) { "Copy" } else { "Add" };
                for s in c.srcs.iter().chain(std::iter::once(&c.dest)) {
                    check_vars(s, defined, &mut push);
                }
                if c.from.is_none()
                    && let Some(m) = &matcher
                {
                    for s in &c.srcs {
                        let clean = rdock_llb::patterns::clean_path(s);
                        if !s.contains('$') && !s.starts_with("<<") && clean != "." && m.matches(&clean) {
                            push(
                                "CopyIgnoredFile",
                                format!("Attempting to {what} file {clean:?} that is excluded by .dockerignore"),
                                raw.location.at(s),
                            );
                        }
                    }
                }
            }
            Instruction::User(u) | Instruction::StopSignal(u) => check_vars(u, defined, &mut push),
            Instruction::Volume(vs) => vs.iter().for_each(|v| check_vars(v, defined, &mut push)),
            _ => {}
        }
    }
    finish_stage(&mut current, current_name.take(), &mut stage_env, &mut push);
    w.sort_by_key(|w| (w.location.start_line, w.location.column));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_secret_names() {
        assert_eq!(referenced_vars("a$B ${C} ${D:-x} '$E' \\$F $1", '\\'), vec!["B", "C"]);
        assert!(secret_like("GITHUB_TOKEN") && secret_like("password") && secret_like("AWS_SECRET_ACCESS_KEY"));
        assert!(!secret_like("MONKEY"));
        assert!(!secret_like("PUBLIC_KEY") && !secret_like("TOKEN_FILE") && !secret_like("KEYBOARD"));
    }

    #[test]
    fn rule_urls() {
        let w = |rule| Warning { rule, message: String::new(), location: Location::default() };
        assert_eq!(w("JSONArgsRecommended").url(), "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/");
        assert_eq!(w("FromAsCasing").url(), "https://docs.docker.com/go/dockerfile/rule/from-as-casing/");
    }

    #[test]
    fn check_directive() {
        let c = CheckConfig::parse(Some("skip=JSONArgsRecommended,StageNameCasing;error=true"));
        assert!(c.error && !c.enabled("StageNameCasing") && c.enabled("UndefinedVar"));
        assert!(!CheckConfig::parse(Some("skip=all")).enabled("UndefinedVar"));
        assert!(!CheckConfig::default().enabled("InvalidDefinitionDescription"), "experimental rules are off by default");
        assert!(CheckConfig::parse(Some("experimental=InvalidDefinitionDescription")).enabled("InvalidDefinitionDescription"));
    }
}
