//! Lowering: typed instructions to an LLB definition plus the image config, the way
//! BuildKit's dockerfile2llb does it (ARG scoping, stage resolution, history wording).

use crate::error::{DockerfileError, Location};
use crate::instructions::{CommandForm, Instruction, Located, parse_instruction};
use crate::parser::parse;
use crate::request::builtin_args;
use crate::request::{BuildOptions, ImageResolver};
use crate::shell::Lexer;
use rdock_imagespec::{History, ImageConfig, ImageRef, Platform};
use rdock_llb::{ChownOpt, Definition, DefinitionBuilder, FileAction, FileOp, Input, Network, Op, OpMetadata, SourceOp};
use std::collections::HashMap;

mod config;
mod context;
mod copy;
mod run;

use config::{dispatch_healthcheck, dispatch_maintainer, dispatch_onbuild, dispatch_shell};

/// BuildKit's comment on history entries it writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// PATH set when the base image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A network mode as the Dockerfile and the command line spell it.
pub fn network_name(n: Network) -> &'static str {
    match n {
        Network::Sandbox => "default",
        Network::None => "none",
        Network::Host => "host",
    }
}

/// Parses `default|none|host` (`sandbox` too, as BuildKit), for `--network` and
/// `force-network-mode`.
pub fn parse_network(s: &str) -> Option<Network> {
    match s {
        "default" | "sandbox" | "" => Some(Network::Sandbox),
        "none" => Some(Network::None),
        "host" => Some(Network::Host),
        _ => None,
    }
}

/// Why lowering failed.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Something in the Dockerfile.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// `--opt target=` names no stage.
    #[error("target stage {name:?} could not be found (stages: {available})")]
    UnknownTarget {
        /// Requested.
        name: String,
        /// What there is.
        available: String,
    },
    /// `--no-cache-filter` names no stage (it would otherwise silently leave the cache on).
    #[error("--no-cache-filter: stage {name:?} could not be found (stages: {available})")]
    UnknownNoCacheStage {
        /// Requested.
        name: String,
        /// What there is.
        available: String,
    },
    /// `BUILDKIT_SANDBOX_HOSTNAME` is no hostname (it goes to sethostname and /etc/hosts).
    #[error("build arg BUILDKIT_SANDBOX_HOSTNAME={value:?} is not a hostname: letters, digits, '-' and '.', at most 64 characters")]
    BadHostname {
        /// The value given.
        value: String,
    },
    /// No FROM at all.
    #[error("{file}: the Dockerfile has no FROM instruction, so there is no stage to build")]
    NoStages {
        /// The file.
        file: String,
    },
}

/// The result of lowering.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The graph.
    pub definition: Definition,
    /// The image config of the target stage (rootfs and times are filled in by the exporter).
    pub image: ImageConfig,
    /// The diff IDs of the target stage's base image, bottom first (empty for scratch):
    /// the layers `rewrite-timestamp` leaves alone.
    pub base_diff_ids: Vec<rdock_imagespec::Digest>,
    /// The syntax directive, if any (recorded, not fetched).
    pub syntax: Option<String>,
    /// Build-check warnings.
    pub warnings: Vec<crate::lint::Warning>,
    /// The `# check=` configuration.
    pub check: crate::lint::CheckConfig,
    /// The Dockerfile's name and text, to show the lines of a step that fails.
    pub source: (String, String),
}

struct Stage {
    name: Option<String>,
    base: String,
    platform: Option<String>,
    location: Location,
    commands: Vec<Located>,
}

#[derive(Clone)]
struct StageResult {
    state: Option<Input>,
    image: ImageConfig,
    /// What the stage's binaries are built for: `FROM --platform`, its base stage's, or the
    /// target platform.
    platform: Platform,
}

struct Ctx<'a> {
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    lexer: Lexer,
    builder: DefinitionBuilder,
    stages: Vec<Stage>,
    results: HashMap<usize, StageResult>,
    /// Stages being lowered, each waiting on the next: the chain of references so far.
    depth: usize,
    meta_args: Vec<(String, String)>,
    context: Option<Input>,
}

/// The longest chain of stages built from (or copying from) one another.
pub const MAX_STAGE_CHAIN: usize = 200;

/// Parses and lowers a Dockerfile.
pub fn lower(source: &str, opts: &BuildOptions, resolver: &dyn ImageResolver) -> Result<Lowered, FrontendError> {
    let df = parse(&opts.filename, source)?;
    let located = df.instructions.iter().map(parse_instruction).collect::<Result<Vec<_>, _>>()?;
    let check = crate::lint::CheckConfig::parse(df.directives.check.as_deref());
    let warnings = crate::lint::lint(&df, &located, &opts.excludes, resolver, opts, &check);
    let (globals, stages) = split_stages(located)?;
    if stages.is_empty() {
        return Err(FrontendError::NoStages { file: opts.filename.clone() });
    }
    let lexer = Lexer { escape: df.directives.escape };
    let mut meta_args = global_args(&lexer, opts, &globals)?;
    let target = target_stage(opts, &stages)?;
    check_no_cache_stages(opts, &stages)?;
    check_sandbox_hostname(opts)?;
    // TARGETSTAGE names the stage being built, for FROM and ARG: the target as asked, else
    // the last stage's name, else `default`, as BuildKit's `defaultArgs`.
    let target_name = opts.target.clone().or_else(|| stages[target].name.clone()).unwrap_or_else(|| "default".into());
    meta_args.retain(|(k, _)| k != "TARGETSTAGE");
    meta_args.push(("TARGETSTAGE".to_string(), target_name));
    let mut ctx = Ctx {
        opts,
        resolver,
        lexer,
        builder: DefinitionBuilder::default(),
        stages,
        results: HashMap::new(),
        meta_args,
        context: None,
        depth: 0,
    };
    let result = ctx.lower_stage(target)?;
    let mut image = result.image;
    let base_diff_ids = std::mem::take(&mut image.rootfs).diff_ids;
    image.created = None;
    image.config.labels.extend(opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    set_image_platform(&mut image, opts.target_platform.clone().unwrap_or(result.platform), opts.target_platform.is_some());
    Ok(Lowered {
        definition: ctx.builder.finish(result.state),
        image,
        base_diff_ids,
        syntax: df.directives.syntax,
        warnings,
        check,
        source: (opts.filename.clone(), source.to_string()),
    })
}

/// The global ARGs before the first FROM, and the stages (each FROM with what follows).
fn split_stages(located: Vec<Located>) -> Result<(Vec<Located>, Vec<Stage>), FrontendError> {
    let mut globals = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for l in located {
        match (&l.instruction, stages.last_mut()) {
            (Instruction::From { image, name, platform }, _) => {
                if let Some(n) = name
                    && stages.iter().any(|s| s.name.as_deref() == Some(n.as_str()))
                {
                    return Err(DockerfileError::new(l.location.at(n), format!("duplicate stage name {n:?}"))
                        .expected("a stage name not used before")
                        .into());
                }
                let (name, base, platform, location) = (name.clone(), image.clone(), platform.clone(), l.location.clone());
                stages.push(Stage { name, base, platform, location, commands: Vec::new() });
            }
            (Instruction::Arg(_), None) => globals.push(l),
            (_, None) => {
                return Err(DockerfileError::new(
                    l.location.clone(),
                    "no build stage in current context: only ARG may come before the first FROM",
                )
                .expected("FROM")
                .into());
            }
            (_, Some(stage)) => stage.commands.push(l),
        }
    }
    Ok((globals, stages))
}

/// What FROM lines expand with: the built-in platform args, then the global ARGs (a
/// build arg's value, else the default; declared without either, empty).
fn global_args(lexer: &Lexer, opts: &BuildOptions, globals: &[Located]) -> Result<Vec<(String, String)>, FrontendError> {
    let mut meta_args = builtin_args(&opts.build_platform, &opts.target());
    for g in globals {
        let Instruction::Arg(args) = &g.instruction else { continue };
        for (k, default) in args {
            let value = match (opts.build_args.get(k), default) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => lexer.process_word(d, &meta_args).map_err(|e| expand_error(g, e))?,
                (None, None) => String::new(),
            };
            meta_args.retain(|(mk, _)| mk != k);
            meta_args.push((k.clone(), value));
        }
    }
    Ok(meta_args)
}

/// The stage `--target` names, else the last.
fn target_stage(opts: &BuildOptions, stages: &[Stage]) -> Result<usize, FrontendError> {
    let Some(t) = &opts.target else { return Ok(stages.len() - 1) };
    let t = t.to_ascii_lowercase();
    stages
        .iter()
        .position(|s| s.name.as_deref() == Some(t.as_str()))
        .ok_or_else(|| FrontendError::UnknownTarget { name: t.clone(), available: stage_names(stages) })
}

/// Every stage `--no-cache-filter` names exists.
fn check_no_cache_stages(opts: &BuildOptions, stages: &[Stage]) -> Result<(), FrontendError> {
    let known = |n: &str| stages.iter().any(|s| s.name.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(n)));
    match opts.no_cache_stages.iter().find(|n| !known(n)) {
        Some(n) => Err(FrontendError::UnknownNoCacheStage { name: n.clone(), available: stage_names(stages) }),
        None => Ok(()),
    }
}

/// The `BUILDKIT_SANDBOX_HOSTNAME` build arg, if given, can be a hostname.
fn check_sandbox_hostname(opts: &BuildOptions) -> Result<(), FrontendError> {
    let Some(h) = opts.build_args.get("BUILDKIT_SANDBOX_HOSTNAME").filter(|h| !h.is_empty()) else { return Ok(()) };
    let ok = h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok { Ok(()) } else { Err(FrontendError::BadHostname { value: h.clone() }) }
}

/// The stages as errors list them: by name, or by index when unnamed.
fn stage_names(stages: &[Stage]) -> String {
    stages.iter().enumerate().map(|(i, s)| s.name.clone().unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(", ")
}

/// An explicit target platform is what the image says it is for (BuildKit forces it);
/// otherwise the target stage's platform stands, filled in from `target` where missing.
fn set_image_platform(image: &mut ImageConfig, target: Platform, forced: bool) {
    if !forced && !image.architecture.is_empty() && !image.os.is_empty() {
        return;
    }
    let same = image.os == target.os && image.architecture == target.architecture;
    image.os = target.os.clone();
    image.architecture = target.architecture.clone();
    if target.variant.is_some() || !same {
        image.variant = target.variant;
    }
}

fn expand_error(l: &Located, e: crate::shell::ExpandError) -> DockerfileError {
    use crate::shell::{ExpandError, MAX_EXPANSION, MAX_NESTING};
    let expected = match e {
        ExpandError::TooLong => format!("a word of at most {} MiB once variables are substituted", MAX_EXPANSION >> 20),
        ExpandError::TooDeep => format!("at most {MAX_NESTING} substitutions nested in one another"),
        _ => "a well-formed word (closed quotes, ${name} with a known operator)".to_string(),
    };
    DockerfileError::new(l.location.clone(), e.to_string()).expected(expected)
}

/// Go's strconv.Quote for the strings we print (JSON escaping agrees for printable text).
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Go's `%q` of a []string: `["a" "b"]`.
fn go_quote_list(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| go_quote(s)).collect::<Vec<_>>().join(" "))
}

/// Go's time.Duration String().
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let total_s = ns as f64 / 1e9;
    if total_s < 1.0 {
        return if ns % 1_000_000 == 0 { format!("{}ms", ns / 1_000_000) } else { format!("{}µs", ns / 1000) };
    }
    let h = (total_s / 3600.0).floor() as i64;
    let m = ((total_s - h as f64 * 3600.0) / 60.0).floor() as i64;
    let s = total_s - h as f64 * 3600.0 - m as f64 * 60.0;
    let s_str = if s.fract() == 0.0 { format!("{}s", s as i64) } else { format!("{s}s") };
    if h > 0 {
        format!("{h}h{m}m{s_str}")
    } else if m > 0 {
        format!("{m}m{s_str}")
    } else {
        s_str
    }
}

fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

fn env_from_config(cfg: &ImageConfig) -> Vec<(String, String)> {
    cfg.config
        .env
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn history(image: &mut ImageConfig, created_by: String, layer: bool) {
    let created_by = if layer { format!("{created_by} # buildkit") } else { created_by };
    image.history.push(History {
        created_by: Some(created_by),
        comment: Some(HISTORY_COMMENT.into()),
        empty_layer: !layer,
        ..Default::default()
    });
}

/// Cleans an absolute container path, keeping a trailing slash.
fn clean_abs(p: &str) -> String {
    let trailing = p.ends_with('/') && p != "/";
    let cleaned = rdock_llb::patterns::clean_path(p);
    let mut out = if cleaned == "." { "/".to_string() } else { format!("/{cleaned}") };
    if trailing && out != "/" {
        out.push('/');
    }
    out
}

/// WORKDIR-relative path resolution as BuildKit's pathRelativeToWorkingDir.
fn relative_to(workdir: &str, p: &str) -> String {
    if p.starts_with('/') {
        return clean_abs(p);
    }
    let p = if p.is_empty() || p == "." { "./" } else { p };
    let joined = format!("{}/{}", workdir.trim_end_matches('/'), p);
    let mut out = clean_abs(&joined);
    if (p.ends_with('/') || p.ends_with("/.") || p == "./") && !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn parse_chown(s: &str) -> ChownOpt {
    match s.split_once(':') {
        Some((u, g)) => ChownOpt { user: u.to_string(), group: Some(g.to_string()) },
        None => ChownOpt { user: s.to_string(), group: None },
    }
}

struct StageRun {
    idx: usize,
    state: Option<Input>,
    image: ImageConfig,
    env: Vec<(String, String)>,
    build_args: Vec<(String, Option<String>)>,
    workdir: String,
    shell: Vec<String>,
    cmd_set: bool,
    step: usize,
    steps: usize,
    prefix: String,
    /// The stage's platform, which every RUN in it carries.
    platform: Platform,
}

impl Ctx<'_> {
    fn meta(&self, run: &StageRun, description: String, l: &Located) -> OpMetadata {
        let stage = self.stages[run.idx].name.as_deref();
        let filtered = stage.is_some_and(|n| self.opts.no_cache_stages.iter().any(|s| s.eq_ignore_ascii_case(n)));
        OpMetadata {
            description,
            ignore_cache: self.opts.no_cache || filtered,
            source_lines: Some((l.location.start_line, l.location.end_line)),
            proxy_env: Vec::new(),
            network_origin: None,
            copy_from: None,
        }
    }

    /// `--build-arg` proxy variables, which every RUN gets without an ARG, under both
    /// spellings whichever one was given (BuildKit's proxyEnvFromBuildArgs, then its
    /// executor's `HTTP_PROXY=v`, `http_proxy=v`, …), unless the stage declared that name
    /// (then it is ordinary env). Given in both spellings, the lowercase one wins.
    fn proxy_env(&self, run: &StageRun) -> Vec<String> {
        const PROXIES: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"];
        let declared = |name: &str| run.env.iter().any(|(e, _)| e == name);
        let mut env = Vec::new();
        for upper in PROXIES {
            let Some(v) = self.opts.build_args.iter().filter(|(k, _)| k.eq_ignore_ascii_case(upper)).map(|(_, v)| v).next_back() else {
                continue;
            };
            for name in [upper.to_string(), upper.to_ascii_lowercase()] {
                if !declared(&name) {
                    env.push(format!("{name}={v}"));
                }
            }
        }
        env
    }

    fn context_source(&mut self) -> Input {
        if let Some(c) = &self.context {
            return c.clone();
        }
        let op = Op::Source(SourceOp::local("context", &[], &self.opts.excludes));
        let input = self.builder.add(op, vec![], OpMetadata { description: "[internal] load build context".into(), ..Default::default() });
        self.context = Some(input.clone());
        input
    }

    fn stage_by_name(&self, name: &str, before: usize) -> Option<usize> {
        let lname = name.to_ascii_lowercase();
        if let Some(i) = self.stages[..before].iter().position(|s| s.name.as_deref() == Some(lname.as_str())) {
            return Some(i);
        }
        None
    }

    fn image_source(&mut self, image: &str, l: &Location, platform: &Platform) -> Result<(Input, ImageConfig), FrontendError> {
        let r = ImageRef::parse(image)
            .map_err(|e| DockerfileError::new(l.at(image), e.to_string()).expected("an image reference such as busybox:1.36"))?;
        let resolved = self.resolver.resolve(&r, platform).map_err(|e| {
            DockerfileError::new(l.at(image), format!("failed to resolve image {}: {e}", r.familiar()))
                .expected("an image in the local store (rdock load / rdock pull)")
        })?;
        self.check_base_platform(&r, &resolved.config, l.at(image), platform)?;
        let op = Op::Source(SourceOp::image(&resolved.pinned));
        let input =
            self.builder.add(op, vec![], OpMetadata { description: format!("[internal] load metadata for {}", r), ..Default::default() });
        Ok((input, resolved.config))
    }

    /// A base image of one platform, asked for another: an error when the platform was
    /// asked for (`--platform`, or `FROM --platform` other than the build's own), since
    /// the image would be labelled with a platform its binaries are not for. Otherwise (the
    /// default platform) a build check warns, as in BuildKit.
    fn check_base_platform(&self, r: &ImageRef, config: &ImageConfig, at: Location, want: &Platform) -> Result<(), FrontendError> {
        let got = Platform { os: config.os.clone(), architecture: config.architecture.clone(), variant: config.variant.clone() };
        let asked = self.opts.target_platform.is_some() || *want != self.opts.build_platform;
        if !asked || got.architecture.is_empty() || got.satisfies(want) {
            return Ok(());
        }
        Err(DockerfileError::new(at, format!("base image {} is for {got} only, not {want}", r.familiar()))
            .expected(format!("an image with a {want} manifest (a multi-platform index), or the platform {got}"))
            .into())
    }

    fn lower_stage(&mut self, idx: usize) -> Result<StageResult, FrontendError> {
        if let Some(r) = self.results.get(&idx) {
            return Ok(r.clone());
        }
        // Each stage built on another lowers that one first, recursively: a bound on the
        // chain keeps a Dockerfile of thousands of chained stages from overflowing the stack.
        if self.depth >= MAX_STAGE_CHAIN {
            return Err(DockerfileError::new(self.stages[idx].location.clone(), format!("stages refer to stages {MAX_STAGE_CHAIN} deep"))
                .expected(format!("at most {MAX_STAGE_CHAIN} stages each built from (or copying from) the next"))
                .into());
        }
        self.depth += 1;
        // Lowering a stage takes tens of kB of stack in a debug build: grow it on the heap
        // when under 256 kB remain, whatever thread this is.
        let r = stacker::maybe_grow(256 << 10, 4 << 20, || self.lower_stage_inner(idx));
        self.depth -= 1;
        r
    }

    fn lower_stage_inner(&mut self, idx: usize) -> Result<StageResult, FrontendError> {
        let loc = self.stages[idx].location.clone();
        // A named context of a stage's name replaces the whole stage, as in BuildKit.
        if let Some(name) = self.stages[idx].name.clone() {
            let platform = self.platform_flag(idx)?.unwrap_or_else(|| self.opts.target());
            if let Some(r) = self.named_context_state(&name, &loc, &platform)? {
                self.results.insert(idx, r.clone());
                return Ok(r);
            }
        }
        let (state, mut image, platform) = self.stage_base(idx)?;
        let triggers = self.onbuild_triggers(&loc, &mut image)?;
        if image.env_value("PATH").is_none() {
            image.config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let mut prefix = match &self.stages[idx].name {
            Some(n) => format!("{n} "),
            None if self.stages.len() > 1 => format!("stage-{idx} "),
            None => String::new(),
        };
        if self.opts.platform_in_names {
            prefix.insert_str(0, &format!("{} ", self.opts.target()));
        }
        if let Some(p) = &self.opts.name_prefix {
            prefix.insert_str(0, &format!("{p} "));
        }
        let shell = if image.config.shell.is_empty() { vec!["/bin/sh".into(), "-c".into()] } else { image.config.shell.clone() };
        let mut run = StageRun {
            idx,
            state,
            env: env_from_config(&image),
            workdir: image.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
            image,
            build_args: Vec::new(),
            shell,
            cmd_set: false,
            step: 1,
            steps: triggers.len() + self.stages[idx].commands.len() + 1,
            prefix,
            platform,
        };
        let commands = std::mem::take(&mut self.stages[idx].commands);
        let outcome = triggers.iter().chain(commands.iter()).try_for_each(|c| {
            run.step += 1;
            self.dispatch(&mut run, c)
        });
        self.stages[idx].commands = commands;
        outcome?;
        let r = StageResult { state: run.state, image: run.image, platform: run.platform };
        self.results.insert(idx, r.clone());
        Ok(r)
    }

    /// The platform `FROM --platform` asks for, expanded with the global args
    /// (BUILDPLATFORM, TARGETPLATFORM …); None without the flag.
    fn platform_flag(&self, idx: usize) -> Result<Option<Platform>, FrontendError> {
        let loc = &self.stages[idx].location;
        let Some(p) = self.stages[idx].platform.clone() else { return Ok(None) };
        let want = self.lexer.process_word(&p, &self.meta_args).map_err(|e| DockerfileError::new(loc.clone(), e.to_string()))?;
        if want.is_empty() {
            return Err(DockerfileError::new(loc.at(&p), format!("empty platform value from expression {p}"))
                .expected("os/arch[/variant], such as linux/arm64")
                .into());
        }
        Ok(Some(Platform::parse(&want).map_err(|e| {
            DockerfileError::new(loc.at(&p), format!("failed to parse platform {p}: {e}"))
                .expected("os/arch[/variant], such as linux/amd64, linux/arm64 or linux/arm/v7")
        })?))
    }

    /// What a stage starts from (scratch, an earlier stage, or an image): its state, its
    /// image config and its platform.
    fn stage_base(&mut self, idx: usize) -> Result<(Option<Input>, ImageConfig, Platform), FrontendError> {
        let loc = self.stages[idx].location.clone();
        let base_word = self.stages[idx].base.clone();
        let base = self.lexer.process_word(&base_word, &self.meta_args).map_err(|e| DockerfileError::new(loc.clone(), e.to_string()))?;
        // Without `--platform` a stage is for the target platform.
        let stage_platform = self.platform_flag(idx)?.unwrap_or_else(|| self.opts.target());
        if base.is_empty() {
            return Err(DockerfileError::new(loc.at(&base_word), format!("base name ({base_word}) should not be blank"))
                .expected("an image or stage name")
                .into());
        }
        if base == "scratch" {
            return Ok((None, context::scratch_config(&stage_platform), stage_platform));
        }
        if let Some(s) = self.stage_by_name(&base, idx) {
            // A stage built on another keeps that stage's platform, as in BuildKit.
            let r = self.lower_stage(s)?;
            return Ok((r.state, r.image, r.platform));
        }
        if let Some(r) = self.named_context_state(&base, &loc, &stage_platform)? {
            return Ok((r.state, r.image, r.platform));
        }
        let (input, cfg) = self.image_source(&base, &loc, &stage_platform)?;
        Ok((Some(input), cfg, stage_platform))
    }

    /// The base's ONBUILD triggers, taken out of its config: they run first, as if
    /// written right after FROM, and are not passed on to this stage's image.
    fn onbuild_triggers(&self, loc: &Location, image: &mut ImageConfig) -> Result<Vec<Located>, FrontendError> {
        let mut triggers = Vec::new();
        for t in std::mem::take(&mut image.config.on_build) {
            let bad = |m: String| DockerfileError::new(loc.clone(), format!("ONBUILD trigger {t:?} of the base image: {m}"));
            let df = parse(&self.opts.filename, &t).map_err(|e| bad(e.message))?;
            let [raw] = df.instructions.as_slice() else {
                return Err(bad("a trigger must be a single instruction".into()).into());
            };
            let mut raw = raw.clone();
            raw.location = loc.clone();
            if matches!(raw.keyword.as_str(), "onbuild" | "from" | "maintainer") {
                return Err(bad(format!("{} isn't allowed as an ONBUILD trigger", raw.keyword.to_uppercase())).into());
            }
            triggers.push(parse_instruction(&raw)?);
        }
        Ok(triggers)
    }

    fn expand(&self, run: &StageRun, l: &Located, w: &str) -> Result<String, FrontendError> {
        Ok(self.lexer.process_word(w, &run.env).map_err(|e| expand_error(l, e))?)
    }

    fn expand_words(&self, run: &StageRun, l: &Located, w: &str) -> Result<Vec<String>, FrontendError> {
        Ok(self.lexer.process_words(w, &run.env).map_err(|e| expand_error(l, e))?)
    }

    fn description(&self, run: &StageRun, l: &Located) -> String {
        let mut parts = l.original.splitn(2, char::is_whitespace);
        let kw = parts.next().unwrap_or("").to_ascii_uppercase();
        let rest = parts.next().unwrap_or("");
        format!("[{}{}/{}] {} {}", run.prefix, run.step, run.steps, kw, rest.trim())
    }

    /// One instruction of a stage, by kind: image-config instructions in `config.rs`,
    /// RUN in `run.rs`, COPY and ADD in `copy.rs`.
    fn dispatch(&mut self, run: &mut StageRun, l: &Located) -> Result<(), FrontendError> {
        match &l.instruction {
            // FROM starts a stage and never reaches dispatch.
            Instruction::From { .. } => Ok(()),
            Instruction::Env(kvs) => self.dispatch_env(run, l, kvs),
            Instruction::Arg(args) => self.dispatch_arg(run, l, args),
            Instruction::Workdir(w) => self.dispatch_workdir(run, l, w),
            Instruction::User(u) => self.dispatch_user(run, l, u),
            Instruction::Label(kvs) => self.dispatch_label(run, l, kvs),
            Instruction::Expose(ports) => self.dispatch_expose(run, l, ports),
            Instruction::Cmd(c) => {
                self.dispatch_cmd(run, c);
                Ok(())
            }
            Instruction::Entrypoint(c) => {
                self.dispatch_entrypoint(run, c);
                Ok(())
            }
            Instruction::Volume(vs) => self.dispatch_volume(run, l, vs),
            Instruction::StopSignal(s) => self.dispatch_stopsignal(run, l, s),
            Instruction::Shell(sh) => {
                dispatch_shell(run, sh);
                Ok(())
            }
            Instruction::Maintainer(m) => {
                dispatch_maintainer(run, m);
                Ok(())
            }
            Instruction::Onbuild(t) => {
                dispatch_onbuild(run, t);
                Ok(())
            }
            Instruction::Healthcheck(h) => {
                dispatch_healthcheck(run, h);
                Ok(())
            }
            Instruction::Run { cmd, network, security, heredocs, mounts } => {
                let flags = run::RunFlags { network: network.as_deref(), security: security.as_deref(), heredocs, mounts };
                self.dispatch_run(run, l, cmd, flags)
            }
            Instruction::Copy(args) => self.dispatch_copy(run, l, args, false),
            Instruction::Add(args) => self.dispatch_copy(run, l, args, true),
        }
    }

    fn command_args(&self, run: &StageRun, c: &CommandForm) -> Vec<String> {
        match c {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => run.shell.iter().cloned().chain(std::iter::once(s.clone())).collect(),
        }
    }

    fn file_op(
        &mut self,
        run: &mut StageRun,
        l: &Located,
        actions: Vec<FileAction>,
        extra: Vec<Input>,
        copy_from: Option<String>,
    ) -> Result<(), FrontendError> {
        let desc = self.description(run, l);
        let meta = OpMetadata { copy_from, ..self.meta(run, desc, l) };
        let mut inputs: Vec<Input> = run.state.iter().cloned().collect();
        let base = run.state.as_ref().map(|_| 0);
        inputs.extend(extra);
        run.state = Some(self.builder.add(Op::File(FileOp { base, actions }), inputs, meta));
        Ok(())
    }
}

/// BuildKit's summarizeHeredoc: the first line, and `...` if there are more.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or("").to_string();
    if lines.next().is_some() { format!("{first}...") } else { first }
}

/// EXPOSE port specs: `80`, `80/tcp`, `8000-8002/udp`.
fn parse_port(s: &str) -> Result<Vec<String>, String> {
    let (range, proto) = match s.split_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        return Err(format!("invalid proto: {proto}"));
    }
    // `ip:host:container` mappings keep the container port, as Docker does.
    let range = range.rsplit(':').next().unwrap_or(range);
    let (a, b) = match range.split_once('-') {
        Some((a, b)) => (a, b),
        None => (range, range),
    };
    let a: u32 = a.parse().map_err(|_| format!("invalid containerPort: {range}"))?;
    let b: u32 = b.parse().map_err(|_| format!("invalid containerPort: {range}"))?;
    if b < a || b > 65535 {
        return Err(format!("invalid range specified for containerPort: {range}"));
    }
    Ok((a..=b).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ResolveError, ResolvedImage};

    #[test]
    fn paths_relative_to_workdir() {
        assert_eq!(relative_to("/app", "x"), "/app/x");
        assert_eq!(relative_to("/app", "x/"), "/app/x/");
        assert_eq!(relative_to("/app", "."), "/app/");
        assert_eq!(relative_to("/app", "/abs/../y"), "/y");
        assert_eq!(relative_to("/", "../../etc"), "/etc");
    }

    #[test]
    fn healthcheck_history_is_gos_plus_v() {
        struct NoImages;
        impl ImageResolver for NoImages {
            fn resolve(&self, _: &ImageRef, _: &rdock_imagespec::Platform) -> Result<ResolvedImage, ResolveError> {
                Err(ResolveError::NotFound { registry: "none".into() })
            }
        }
        let out = lower("FROM scratch\nHEALTHCHECK --interval=30s --retries=2 CMD true\n", &BuildOptions::default(), &NoImages).unwrap();
        assert_eq!(
            out.image.history[0].created_by.as_deref(),
            Some("HEALTHCHECK {Test:[CMD-SHELL true] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:2}")
        );
    }

    #[test]
    fn ports_and_durations() {
        assert_eq!(parse_port("8000-8002/UDP").unwrap(), vec!["8000/udp", "8001/udp", "8002/udp"]);
        assert!(parse_port("80/xyz").is_err());
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }
}
