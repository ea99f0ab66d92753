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

    fn enabled(&self, rule: &Rule) -> bool {
        let experimental_on = !rule.experimental || self.experimental.contains("all") || self.experimental.contains(rule.name);
        experimental_on && !self.skip.contains("all") && !self.skip.contains(rule.name)
    }
}

/// A build-check rule, as BuildKit's `linter.LinterRule`: its name (what `# check=skip=`
/// and the documentation URL use), what it asks for, and whether it runs only when
/// `# check=experimental=` turns it on.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// BuildKit's name (`JSONArgsRecommended`).
    pub name: &'static str,
    /// What it asks for, as BuildKit describes it.
    pub description: &'static str,
    /// Off unless `# check=experimental=NAME|all`.
    pub experimental: bool,
}

macro_rules! rules {
    ($table:ident; $($id:ident = $name:literal $(experimental $exp:literal)?: $desc:literal;)*) => {
        $(
            #[doc = $desc]
            pub const $id: Rule = Rule { name: $name, description: $desc, experimental: false $(|| $exp)? };
        )*
        /// Every rule, in BuildKit's order.
        pub const $table: &[&Rule] = &[$(&$id),*];
    };
}

rules! {
    RULES;
    STAGE_NAME_CASING = "StageNameCasing": "Stage names should be lowercase";
    FROM_AS_CASING = "FromAsCasing": "The 'as' keyword should match the case of the 'from' keyword";
    NO_EMPTY_CONTINUATION = "NoEmptyContinuation": "Empty continuation lines will become errors in a future release";
    CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing":
        "All commands within the Dockerfile should use the same casing (either upper or lower)";
    DUPLICATE_STAGE_NAME = "DuplicateStageName": "Stage names should be unique";
    RESERVED_STAGE_NAME = "ReservedStageName": "Reserved words should not be used as stage names";
    JSON_ARGS_RECOMMENDED = "JSONArgsRecommended":
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals";
    MAINTAINER_DEPRECATED = "MaintainerDeprecated":
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author";
    UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom": "FROM command must use declared ARGs";
    WORKDIR_RELATIVE_PATH = "WorkdirRelativePath":
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes";
    UNDEFINED_VAR = "UndefinedVar": "Variables should be defined before their use";
    MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed":
        "Multiple instructions of the same type should not be used in the same stage";
    LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat": "Legacy key/value format with whitespace separator should not be used";
    REDUNDANT_TARGET_PLATFORM = "RedundantTargetPlatform":
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior";
    SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv": "Sensitive data should not be used in the ARG or ENV commands";
    INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom":
        "Default value for global ARG results in an empty or invalid base image name";
    FROM_PLATFORM_FLAG_CONST_DISALLOWED = "FromPlatformFlagConstDisallowed": "FROM --platform flag should not use a constant value";
    COPY_IGNORED_FILE = "CopyIgnoredFile": "Attempting to Copy file that is excluded by .dockerignore";
    INVALID_BASE_IMAGE_PLATFORM = "InvalidBaseImagePlatform": "Base image platform does not match expected target platform";
    INVALID_DEFINITION_DESCRIPTION = "InvalidDefinitionDescription" experimental true:
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`";
    EXPOSE_PROTO_CASING = "ExposeProtoCasing": "Protocol in EXPOSE instruction should be lowercase";
    EXPOSE_INVALID_FORMAT = "ExposeInvalidFormat": "IP address and host-port mapping should not be used in EXPOSE instruction";
}

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
    let mut l = Linter {
        config,
        resolver,
        opts,
        escape: df.directives.escape,
        excludes: PatternMatcher::new(excludes).ok(),
        warnings: Vec::new(),
        global_args: Vec::new(),
        stage_names: Vec::new(),
        stage_env: HashMap::new(),
        stage: None,
    };
    l.casing(df);
    l.empty_continuations(df);
    for (raw, typed) in df.instructions.iter().zip(typed) {
        l.instruction(raw, &typed.instruction);
    }
    l.finish_stage();
    let mut w = l.warnings;
    w.sort_by_key(|w| (w.location.start_line, w.location.column));
    w
}

/// What the rules remember about the stage being read.
struct StageState {
    name: Option<String>,
    /// Variables defined so far (ENV and ARG, and the base image's ENV), for UndefinedVar.
    defined: BTreeSet<String>,
    workdir_set: bool,
    /// CMD, ENTRYPOINT and HEALTHCHECK seen, for MultipleInstructionsDisallowed.
    singles: Vec<(&'static str, Location)>,
}

/// The rules' walk over one Dockerfile: one method per instruction that has rules.
struct Linter<'a> {
    config: &'a CheckConfig,
    resolver: &'a dyn ImageResolver,
    opts: &'a BuildOptions,
    escape: char,
    excludes: Option<PatternMatcher>,
    warnings: Vec<Warning>,
    global_args: Vec<(String, Option<String>)>,
    stage_names: Vec<String>,
    /// Each finished named stage's variables, for stages built on it.
    stage_env: HashMap<String, BTreeSet<String>>,
    stage: Option<StageState>,
}

impl Linter<'_> {
    fn push(&mut self, rule: &'static Rule, message: String, location: Location) {
        if self.config.enabled(rule) {
            self.warnings.push(Warning { rule: rule.name, message, location });
        }
    }

    /// ConsistentInstructionCasing: the majority casing wins.
    fn casing(&mut self, df: &Dockerfile) {
        let is_upper = |r: &RawInstruction| r.keyword_as_written == r.keyword_as_written.to_ascii_uppercase();
        let is_lower = |r: &RawInstruction| r.keyword_as_written == r.keyword_as_written.to_ascii_lowercase();
        let upper = df.instructions.iter().filter(|r| is_upper(r)).count();
        let lower = df.instructions.iter().filter(|r| is_lower(r)).count();
        let majority_upper = upper >= lower;
        for r in &df.instructions {
            if (majority_upper && is_upper(r)) || (!majority_upper && is_lower(r)) {
                continue;
            }
            let case = if majority_upper { "uppercase" } else { "lowercase" };
            let message = format!("Command '{}' should match the case of the command majority ({case})", r.keyword_as_written);
            self.push(&CONSISTENT_INSTRUCTION_CASING, message, keyword_location(r));
        }
    }

    fn empty_continuations(&mut self, df: &Dockerfile) {
        for line in &df.empty_continuations {
            if let Some(r) = df.instructions.iter().find(|r| r.location.start_line == *line) {
                self.push(&NO_EMPTY_CONTINUATION, "Empty continuation line".into(), keyword_location(r));
            }
        }
    }

    fn instruction(&mut self, raw: &RawInstruction, ins: &Instruction) {
        let loc = keyword_location(raw);
        match ins {
            Instruction::From { image, name, platform } => return self.from(raw, image, name.as_deref(), platform.as_deref()),
            Instruction::Arg(args) if self.stage.is_none() => {
                self.arg_checks(raw, &loc, args);
                return self.global_args.extend(args.iter().cloned());
            }
            _ if self.stage.is_none() => return,
            _ => {}
        }
        match ins {
            Instruction::Arg(args) => self.arg(raw, &loc, args),
            Instruction::Env(kvs) => self.env_or_label(raw, &loc, "ENV", kvs),
            Instruction::Label(kvs) => self.env_or_label(raw, &loc, "LABEL", kvs),
            Instruction::Cmd(c) => self.command(&loc, "CMD", c),
            Instruction::Entrypoint(c) => self.command(&loc, "ENTRYPOINT", c),
            Instruction::Healthcheck(_) => self.single("HEALTHCHECK", &loc),
            Instruction::Maintainer(_) => {
                self.push(&MAINTAINER_DEPRECATED, "Maintainer instruction is deprecated in favor of using label".into(), loc)
            }
            Instruction::Workdir(p) => self.workdir(raw, p),
            Instruction::Expose(ports) => self.expose(raw, ports),
            Instruction::Copy(c) => self.copy(raw, "Copy", c),
            Instruction::Add(c) => self.copy(raw, "Add", c),
            Instruction::User(u) | Instruction::StopSignal(u) => self.check_vars(raw, u),
            Instruction::Volume(vs) => vs.iter().for_each(|v| self.check_vars(raw, v)),
            _ => {}
        }
    }

    /// UndefinedVar: the variables `word` uses must be defined in the stage so far.
    fn check_vars(&mut self, raw: &RawInstruction, word: &str) {
        let Some(stage) = &self.stage else { return };
        let undefined: Vec<String> = referenced_vars(word, self.escape)
            .into_iter()
            .filter(|v| !stage.defined.contains(v) && !BUILTIN_ARGS.contains(&v.as_str()))
            .collect();
        for v in undefined {
            self.push(&UNDEFINED_VAR, format!("Usage of undefined variable '${v}'"), raw.location.at(&format!("${v}")));
        }
    }

    fn define(&mut self, name: &str) {
        if let Some(stage) = &mut self.stage {
            stage.defined.insert(name.to_string());
        }
    }

    /// The checks every ARG gets, global or in a stage: its description comment and
    /// whether its names sound like secrets.
    fn arg_checks(&mut self, raw: &RawInstruction, loc: &Location, args: &[(String, Option<String>)]) {
        let keys: Vec<String> = args.iter().map(|(k, _)| k.clone()).collect();
        if !keys.is_empty() && !description_ok(&raw.comments, &keys) {
            let example = if keys.len() > 1 { "<arg_key>".to_string() } else { keys[0].clone() };
            let message = format!("Comment for ARG should follow the format: `# {example} <description>`");
            self.push(&INVALID_DEFINITION_DESCRIPTION, message, loc.clone());
        }
        for k in keys.iter().filter(|k| secret_like(k)) {
            let message = format!("Do not use ARG or ENV instructions for sensitive data (ARG {k:?})");
            self.push(&SECRETS_USED_IN_ARG_OR_ENV, message, raw.location.at(k));
        }
    }

    fn arg(&mut self, raw: &RawInstruction, loc: &Location, args: &[(String, Option<String>)]) {
        self.arg_checks(raw, loc, args);
        for (k, v) in args {
            if let Some(v) = v {
                self.check_vars(raw, v);
            }
            self.define(k);
        }
    }

    fn env_or_label(&mut self, raw: &RawInstruction, loc: &Location, what: &str, kvs: &[(String, String)]) {
        if let Args::KeyValues(kv) = &raw.args
            && kv.iter().any(|k| k.sep.is_empty())
        {
            let message = format!("\"{what} key=value\" should be used instead of legacy \"{what} key value\" format");
            self.push(&LEGACY_KEY_VALUE_FORMAT, message, loc.clone());
        }
        for (k, v) in kvs {
            self.check_vars(raw, v);
            if what != "ENV" {
                continue;
            }
            if secret_like(k) {
                let message = format!("Do not use ARG or ENV instructions for sensitive data (ENV {k:?})");
                self.push(&SECRETS_USED_IN_ARG_OR_ENV, message, raw.location.at(k));
            }
            self.define(k);
        }
    }

    fn command(&mut self, loc: &Location, what: &'static str, c: &CommandForm) {
        if matches!(c, CommandForm::Shell(s) if !s.is_empty()) {
            let message = format!("JSON arguments recommended for {what} to prevent unintended behavior related to OS signals");
            self.push(&JSON_ARGS_RECOMMENDED, message, loc.clone());
        }
        self.single(what, loc);
    }

    fn single(&mut self, what: &'static str, loc: &Location) {
        if let Some(stage) = &mut self.stage {
            stage.singles.push((what, loc.clone()));
        }
    }

    fn workdir(&mut self, raw: &RawInstruction, p: &str) {
        self.check_vars(raw, p);
        let Some(stage) = &mut self.stage else { return };
        let first_relative = !stage.workdir_set && !p.starts_with('/') && !p.starts_with('$');
        stage.workdir_set = true;
        if first_relative {
            let message = format!("Relative workdir {p:?} can have unexpected results if the base image changes");
            self.push(&WORKDIR_RELATIVE_PATH, message, raw.location.at(p));
        }
    }

    fn expose(&mut self, raw: &RawInstruction, ports: &[String]) {
        for p in ports {
            self.check_vars(raw, p);
            if p.contains(':') {
                let message = format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'");
                self.push(&EXPOSE_INVALID_FORMAT, message, raw.location.at(p));
            }
            if let Some((_, proto)) = p.split_once('/')
                && proto != proto.to_ascii_lowercase()
            {
                let message = format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase");
                self.push(&EXPOSE_PROTO_CASING, message, raw.location.at(p));
            }
        }
    }

    fn copy(&mut self, raw: &RawInstruction, what: &str, c: &crate::instructions::CopyArgs) {
        for s in c.srcs.iter().chain(std::iter::once(&c.dest)) {
            self.check_vars(raw, s);
        }
        if c.from.is_some() {
            return;
        }
        let Some(m) = &self.excludes else { return };
        let ignored: Vec<(String, &String)> = c
            .srcs
            .iter()
            .map(|s| (rdock_llb::patterns::clean_path(s), s))
            .filter(|(clean, s)| !s.contains('$') && !s.starts_with("<<") && clean != "." && m.matches(clean))
            .collect();
        for (clean, s) in ignored {
            let message = format!("Attempting to {what} file {clean:?} that is excluded by .dockerignore");
            self.push(&COPY_IGNORED_FILE, message, raw.location.at(s));
        }
    }

    /// Ends the stage being read: its variables are remembered by name, and repeated
    /// CMD, ENTRYPOINT or HEALTHCHECK instructions reported.
    fn finish_stage(&mut self) {
        let Some(stage) = self.stage.take() else { return };
        if let Some(n) = stage.name {
            self.stage_env.insert(n, stage.defined);
        }
        for kind in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
            let locs: Vec<&Location> = stage.singles.iter().filter(|(k, _)| *k == kind).map(|(_, l)| l).collect();
            for l in locs.iter().take(locs.len().saturating_sub(1)) {
                let message =
                    format!("Multiple {kind} instructions should not be used in the same stage because only the last one will be used");
                self.push(&MULTIPLE_INSTRUCTIONS_DISALLOWED, message, (*l).clone());
            }
        }
    }

    fn from(&mut self, raw: &RawInstruction, image: &str, name: Option<&str>, platform: Option<&str>) {
        self.finish_stage();
        let words = match &raw.args {
            Args::Words(w) => w.clone(),
            _ => Vec::new(),
        };
        self.stage_keywords(raw, &words);
        if let (Some(n), Some(written)) = (name, words.get(2)) {
            self.stage_name(raw, n, written);
        }
        if let Some(p) = platform {
            self.stage_platform(raw, p);
        }
        let inherited = self.stage_base(raw, image, platform);
        if let Some(n) = name {
            self.stage_names.push(n.to_string());
        }
        self.stage = Some(StageState { name: name.map(str::to_string), defined: inherited, workdir_set: false, singles: Vec::new() });
    }

    /// FromAsCasing, and the stage's description comment.
    fn stage_keywords(&mut self, raw: &RawInstruction, words: &[String]) {
        if let Some(written) = words.get(2)
            && !description_ok(&raw.comments, std::slice::from_ref(written))
        {
            let message = format!("Comment for FROM should follow the format: `# {written} <description>`");
            self.push(&INVALID_DEFINITION_DESCRIPTION, message, keyword_location(raw));
        }
        let Some(as_kw) = words.get(1) else { return };
        let from_kw = &raw.keyword_as_written;
        let from_upper = *from_kw == from_kw.to_ascii_uppercase();
        let from_lower = *from_kw == from_kw.to_ascii_lowercase();
        let as_ok = if from_upper { *as_kw == as_kw.to_ascii_uppercase() } else { *as_kw == as_kw.to_ascii_lowercase() };
        // A mixed-case FROM is ConsistentInstructionCasing's business, not this rule's.
        if (from_upper || from_lower) && !as_ok {
            self.push(&FROM_AS_CASING, format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"), raw.location.at(as_kw));
        }
    }

    fn stage_name(&mut self, raw: &RawInstruction, n: &str, written: &str) {
        if written != written.to_ascii_lowercase() {
            self.push(&STAGE_NAME_CASING, format!("Stage name '{written}' should be lowercase"), raw.location.at(written));
        }
        if n == "scratch" || n == "context" {
            let message = format!("Stage name should not use the same name as reserved stage {n:?}");
            self.push(&RESERVED_STAGE_NAME, message, raw.location.at(written));
        }
        if self.stage_names.iter().any(|s| s == n) {
            let message = format!("Duplicate stage name {n:?}, stage names should be unique");
            self.push(&DUPLICATE_STAGE_NAME, message, raw.location.at(written));
        }
    }

    fn stage_platform(&mut self, raw: &RawInstruction, p: &str) {
        if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
            let message = format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior");
            self.push(&REDUNDANT_TARGET_PLATFORM, message, raw.location.at(p));
        } else if !p.contains('$') {
            let message = format!("FROM --platform flag should not use constant value {p:?}");
            self.push(&FROM_PLATFORM_FLAG_CONST_DISALLOWED, message, raw.location.at(p));
        }
    }

    /// The base image's rules (undeclared or invalid default ARGs, its platform), and the
    /// variables the stage starts with: `PATH`, and the base stage's or image's ENV.
    fn stage_base(&mut self, raw: &RawInstruction, image: &str, platform: Option<&str>) -> BTreeSet<String> {
        let globals: BTreeSet<String> = self.global_args.iter().map(|(k, _)| k.clone()).collect();
        for v in referenced_vars(image, self.escape) {
            if !globals.contains(&v) && !BUILTIN_ARGS.contains(&v.as_str()) {
                self.push(&UNDEFINED_ARG_IN_FROM, format!("FROM argument '{v}' is not declared"), raw.location.at(&format!("${v}")));
            }
        }
        // With only defaults, does the base still name a valid image?
        let mut defaults = builtin_args(&self.opts.build_platform, &self.opts.target());
        defaults.extend(self.global_args.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())));
        let lexer = crate::shell::Lexer { escape: self.escape };
        // The platform this stage asks its base image for.
        let target = platform
            .and_then(|p| lexer.process_word(p, &defaults).ok())
            .and_then(|p| rdock_imagespec::Platform::parse(&p).ok())
            .unwrap_or_else(|| self.opts.target());
        let mut inherited: BTreeSet<String> = BTreeSet::from(["PATH".to_string()]);
        let Ok(base) = lexer.process_word(image, &defaults) else { return inherited };
        let lname = base.to_ascii_lowercase();
        if image.contains('$') && base != "scratch" && !self.stage_names.contains(&lname) && ImageRef::parse(&base).is_err() {
            let message = format!("Default value for ARG {image} results in empty or invalid base image name");
            self.push(&INVALID_DEFAULT_ARG_IN_FROM, message, raw.location.at(image));
        }
        if let Some(env) = self.stage_env.get(&lname) {
            inherited.extend(env.iter().cloned());
        } else if base != "scratch"
            && self.opts.named_context(&base).is_none()
            && let Ok(r) = ImageRef::parse(&base)
            && let Ok(img) = self.resolver.resolve(&r, &target)
        {
            inherited.extend(img.config.config.env.iter().map(|e| e.split_once('=').map(|x| x.0).unwrap_or(e).to_string()));
            let got = rdock_imagespec::Platform {
                os: img.config.os.clone(),
                architecture: img.config.architecture.clone(),
                variant: img.config.variant.clone(),
            };
            if !got.architecture.is_empty() && !got.satisfies(&target) {
                let message =
                    format!("Base image {} was pulled with platform \"{got}\", expected \"{target}\" for current build", r.familiar());
                self.push(&INVALID_BASE_IMAGE_PLATFORM, message, raw.location.at(image));
            }
        }
        inherited
    }
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
        assert!(c.error && !c.enabled(&STAGE_NAME_CASING) && c.enabled(&UNDEFINED_VAR));
        assert!(!CheckConfig::parse(Some("skip=all")).enabled(&UNDEFINED_VAR));
        assert!(!CheckConfig::default().enabled(&INVALID_DEFINITION_DESCRIPTION), "experimental rules are off by default");
        assert!(CheckConfig::parse(Some("experimental=InvalidDefinitionDescription")).enabled(&INVALID_DEFINITION_DESCRIPTION));
    }

    #[test]
    fn the_rule_table_names_each_rule_once() {
        let names: BTreeSet<&str> = RULES.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), RULES.len());
        assert_eq!(RULES.iter().filter(|r| r.experimental).map(|r| r.name).collect::<Vec<_>>(), vec!["InvalidDefinitionDescription"]);
    }
}
