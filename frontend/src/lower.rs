//! Lowering: typed instructions to an LLB definition plus the image config, the way
//! BuildKit's dockerfile2llb does it (ARG scoping, stage resolution, history wording).

use crate::error::{DockerfileError, Location};
use crate::instructions::{CommandForm, CopyArgs, Healthcheck, Instruction, Located, parse_instruction};
use crate::parser::parse;
use crate::parser::{Heredoc, heredoc_word};
use crate::request::builtin_args;
use crate::request::{BuildOptions, ImageResolver};
use crate::runmount::{RunMount, parse_run_mount};
use crate::shell::Lexer;
use rdock_imagespec::{Empty, HealthConfig, History, ImageConfig, ImageRef, Platform};
use rdock_llb::{
    ChownOpt, CopyAction, Definition, DefinitionBuilder, ExecOp, FileAction, FileOp, Input, Mount, MountKind, Network, Op, OpMetadata,
    Security, SourceOp,
};
use std::collections::HashMap;

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
    let escape = df.directives.escape;
    let mut located = Vec::new();
    for raw in &df.instructions {
        located.push(parse_instruction(raw)?);
    }
    let check = crate::lint::CheckConfig::parse(df.directives.check.as_deref());
    let warnings = crate::lint::lint(&df, &located, &opts.excludes, resolver, opts, &check);

    // Split into the global section and stages.
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
                stages.push(Stage {
                    name: name.clone(),
                    base: image.clone(),
                    platform: platform.clone(),
                    location: l.location.clone(),
                    commands: Vec::new(),
                });
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
    if stages.is_empty() {
        return Err(FrontendError::NoStages { file: opts.filename.clone() });
    }

    let lexer = Lexer { escape };
    let mut meta_args = builtin_args(&opts.build_platform, &opts.target());
    for g in &globals {
        if let Instruction::Arg(args) = &g.instruction {
            for (k, default) in args {
                let value = match opts.build_args.get(k) {
                    Some(v) => Some(v.clone()),
                    None => match default {
                        Some(d) => Some(lexer.process_word(d, &meta_args).map_err(|e| expand_error(g, e))?),
                        None => None,
                    },
                };
                meta_args.retain(|(mk, _)| mk != k);
                // An ARG without a value is declared but empty for FROM.
                meta_args.push((k.clone(), value.unwrap_or_default()));
            }
        }
    }

    let target = match &opts.target {
        Some(t) => {
            let t = t.to_ascii_lowercase();
            stages.iter().position(|s| s.name.as_deref() == Some(t.as_str())).ok_or_else(|| FrontendError::UnknownTarget {
                name: t.clone(),
                available: stages
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.name.clone().unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
        }
        None => stages.len() - 1,
    };

    // TARGETSTAGE names the stage being built (empty for an unnamed one), for FROM and ARG.
    let target_name = stages[target].name.clone().unwrap_or_default();
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
    // An explicit target platform is what the image says it is for (BuildKit forces it);
    // otherwise the target stage's platform stands, falling back to the build platform.
    let target = opts.target_platform.clone().unwrap_or(result.platform);
    if opts.target_platform.is_some() || image.architecture.is_empty() || image.os.is_empty() {
        let same = image.os == target.os && image.architecture == target.architecture;
        image.os = target.os.clone();
        image.architecture = target.architecture.clone();
        if target.variant.is_some() || !same {
            image.variant = target.variant.clone();
        }
    }
    Ok(Lowered { definition: ctx.builder.finish(result.state), image, base_diff_ids, syntax: df.directives.syntax, warnings, check })
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
        }
    }

    /// `--build-arg` proxy variables, which every RUN gets without an ARG (BuildKit's
    /// proxyEnvFromBuildArgs), unless the stage declared them (then they are ordinary env).
    fn proxy_env(&self, run: &StageRun) -> Vec<String> {
        const PROXIES: &[&str] = &["http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"];
        self.opts
            .build_args
            .iter()
            .filter(|(k, _)| PROXIES.iter().any(|p| k.eq_ignore_ascii_case(p)) && !run.env.iter().any(|(e, _)| e == *k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
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
        let op = Op::Source(SourceOp::image(&resolved.pinned));
        let input =
            self.builder.add(op, vec![], OpMetadata { description: format!("[internal] load metadata for {}", r), ..Default::default() });
        Ok((input, resolved.config))
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
        let base_word = self.stages[idx].base.clone();
        let base = self.lexer.process_word(&base_word, &self.meta_args).map_err(|e| DockerfileError::new(loc.clone(), e.to_string()))?;
        // `FROM --platform` is expanded with the global args (BUILDPLATFORM, TARGETPLATFORM …);
        // without it a stage is for the target platform.
        let flag_platform = match self.stages[idx].platform.clone() {
            Some(p) => {
                let want = self.lexer.process_word(&p, &self.meta_args).map_err(|e| DockerfileError::new(loc.clone(), e.to_string()))?;
                if want.is_empty() {
                    return Err(DockerfileError::new(loc.at(&p), format!("empty platform value from expression {p}"))
                        .expected("os/arch[/variant], such as linux/arm64")
                        .into());
                }
                Some(Platform::parse(&want).map_err(|e| {
                    DockerfileError::new(loc.at(&p), format!("failed to parse platform {p}: {e}"))
                        .expected("os/arch[/variant], such as linux/amd64, linux/arm64 or linux/arm/v7")
                })?)
            }
            None => None,
        };
        let stage_platform = flag_platform.clone().unwrap_or_else(|| self.opts.target());
        if base.is_empty() {
            return Err(DockerfileError::new(loc.at(&base_word), format!("base name ({base_word}) should not be blank"))
                .expected("an image or stage name")
                .into());
        }
        let (state, mut image, platform) = if base == "scratch" {
            let mut image = ImageConfig {
                architecture: stage_platform.architecture.clone(),
                os: stage_platform.os.clone(),
                variant: stage_platform.variant.clone(),
                ..Default::default()
            };
            // BuildKit's empty image: WorkingDir "/".
            image.config.working_dir = Some("/".into());
            (None, image, stage_platform)
        } else if let Some(s) = self.stage_by_name(&base, idx) {
            // A stage built on another keeps that stage's platform, as in BuildKit.
            let r = self.lower_stage(s)?;
            (r.state, r.image, r.platform)
        } else {
            let (input, cfg) = self.image_source(&base, &loc, &stage_platform)?;
            (Some(input), cfg, stage_platform)
        };
        // The base's ONBUILD triggers run first, as if written right after FROM, and are not
        // passed on to this stage's image.
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
        if image.env_value("PATH").is_none() {
            image.config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let env = env_from_config(&image);
        let workdir = image.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
        let multi = self.stages.len() > 1;
        let prefix = match &self.stages[idx].name {
            Some(n) => format!("{n} "),
            None if multi => format!("stage-{idx} "),
            None => String::new(),
        };
        let steps = triggers.len() + self.stages[idx].commands.len() + 1;
        let mut run = StageRun {
            idx,
            state,
            image,
            env,
            build_args: Vec::new(),
            workdir,
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
            step: 1,
            steps,
            prefix,
            platform,
        };
        if !run.image.config.shell.is_empty() {
            run.shell = run.image.config.shell.clone();
        }
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

    fn dispatch(&mut self, run: &mut StageRun, l: &Located) -> Result<(), FrontendError> {
        match &l.instruction {
            // FROM starts a stage and never reaches dispatch.
            Instruction::From { .. } => {}
            Instruction::Env(kvs) => {
                let mut msg = String::from("ENV");
                for (k, v) in kvs {
                    let v = self.expand(run, l, v)?;
                    set_env(&mut run.env, k, &v);
                    match run.image.config.env.iter_mut().find(|e| e.split_once('=').map(|x| x.0).unwrap_or(e) == k) {
                        Some(e) => *e = format!("{k}={v}"),
                        None => run.image.config.env.push(format!("{k}={v}")),
                    }
                    msg.push_str(&format!(" {k}={v}"));
                }
                history(&mut run.image, msg, false);
            }
            Instruction::Arg(args) => {
                let mut parts = Vec::new();
                for (k, default) in args {
                    let value = if let Some(v) = self.opts.build_args.get(k) {
                        Some(v.clone())
                    } else if let Some(d) = default {
                        Some(self.expand(run, l, d)?)
                    } else {
                        self.meta_args.iter().rev().find(|(mk, _)| mk == k).map(|(_, v)| v.clone())
                    };
                    if let Some(v) = &value {
                        // ENV set earlier in the stage wins over an ARG of the same name.
                        if !run.image.config.env.iter().any(|e| e.split_once('=').map(|x| x.0) == Some(k.as_str())) {
                            set_env(&mut run.env, k, v);
                        }
                        parts.push(format!("{k}={v}"));
                    } else {
                        parts.push(k.clone());
                    }
                    run.build_args.retain(|(bk, _)| bk != k);
                    run.build_args.push((k.clone(), value));
                }
                history(&mut run.image, format!("ARG {}", parts.join(" ")), false);
            }
            Instruction::Workdir(w) => {
                let w = self.expand(run, l, w)?;
                let wd = relative_to(&run.workdir, &w);
                let wd = if wd.len() > 1 { wd.trim_end_matches('/').to_string() } else { wd };
                run.workdir = wd.clone();
                run.image.config.working_dir = Some(wd.clone());
                if wd != "/" {
                    let chown = run.image.config.user.as_deref().filter(|u| !u.is_empty()).map(parse_chown);
                    let action = FileAction::Mkdir { path: wd.clone(), mode: 0o755, make_parents: true, chown };
                    self.file_op(run, l, vec![action], vec![])?;
                    history(&mut run.image, format!("WORKDIR {wd}"), true);
                    // BuildKit writes no " # buildkit" suffix for WORKDIR.
                    if let Some(h) = run.image.history.last_mut() {
                        h.created_by = Some(format!("WORKDIR {wd}"));
                    }
                } else {
                    history(&mut run.image, format!("WORKDIR {wd}"), false);
                }
            }
            Instruction::User(u) => {
                let u = self.expand(run, l, u)?;
                run.image.config.user = Some(u.clone());
                history(&mut run.image, format!("USER {u}"), false);
            }
            Instruction::Label(kvs) => {
                let mut msg = String::from("LABEL");
                for (k, v) in kvs {
                    let k = self.expand(run, l, k)?;
                    let v = self.expand(run, l, v)?;
                    msg.push_str(&format!(" {k}={v}"));
                    run.image.config.labels.insert(k, v);
                }
                history(&mut run.image, msg, false);
            }
            Instruction::Expose(ports) => {
                let mut specs = Vec::new();
                for p in ports {
                    for w in self.expand_words(run, l, p)? {
                        specs.extend(parse_port(&w).map_err(|m| {
                            DockerfileError::new(l.location.at(p), m).expected("PORT[/PROTOCOL] or a range START-END[/PROTOCOL]")
                        })?);
                    }
                }
                for s in &specs {
                    run.image.config.exposed_ports.insert(s.clone(), Empty {});
                }
                history(&mut run.image, format!("EXPOSE [{}]", specs.join(" ")), false);
            }
            Instruction::Cmd(c) => {
                let args = self.command_args(run, c);
                run.image.config.cmd = Some(args.clone());
                run.cmd_set = true;
                history(&mut run.image, format!("CMD {}", go_quote_list(&args)), false);
            }
            Instruction::Entrypoint(c) => {
                let args = self.command_args(run, c);
                run.image.config.entrypoint = Some(args.clone());
                if !run.cmd_set {
                    run.image.config.cmd = None;
                }
                history(&mut run.image, format!("ENTRYPOINT {}", go_quote_list(&args)), false);
            }
            Instruction::Volume(vs) => {
                let mut list = Vec::new();
                for v in vs {
                    let v = self.expand(run, l, v)?;
                    if v.trim().is_empty() {
                        return Err(DockerfileError::new(l.location.clone(), "VOLUME specified can not be an empty string")
                            .expected("a path")
                            .into());
                    }
                    run.image.config.volumes.insert(v.clone(), Empty {});
                    list.push(v);
                }
                history(&mut run.image, format!("VOLUME [{}]", list.join(" ")), false);
            }
            Instruction::StopSignal(s) => {
                let s = self.expand(run, l, s)?;
                run.image.config.stop_signal = Some(s.clone());
                history(&mut run.image, format!("STOPSIGNAL {s}"), false);
            }
            Instruction::Shell(sh) => {
                run.shell = sh.clone();
                run.image.config.shell = sh.clone();
                history(&mut run.image, format!("SHELL [{}]", sh.join(" ")), false);
            }
            Instruction::Maintainer(m) => {
                run.image.author = Some(m.clone());
                history(&mut run.image, format!("MAINTAINER {m}"), false);
            }
            Instruction::Onbuild(t) => {
                let mut parts = t.trim().splitn(2, char::is_whitespace);
                let kw = parts.next().unwrap_or("").to_ascii_uppercase();
                let rest = parts.next().unwrap_or("");
                run.image.config.on_build.push(if rest.is_empty() { kw } else { format!("{kw} {rest}") });
            }
            Instruction::Healthcheck(h) => {
                let hc = match h {
                    Healthcheck::None => HealthConfig { test: vec!["NONE".into()], ..Default::default() },
                    Healthcheck::Cmd { cmd, interval, timeout, start_period, start_interval, retries } => {
                        let test = match cmd {
                            CommandForm::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                            CommandForm::Exec(v) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
                        };
                        HealthConfig {
                            test,
                            interval: *interval,
                            timeout: *timeout,
                            start_period: *start_period,
                            start_interval: *start_interval,
                            retries: *retries,
                        }
                    }
                };
                // Go's `%+v` of BuildKit's HealthcheckConfig value.
                let msg = format!(
                    "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    hc.test.join(" "),
                    go_duration(hc.interval.unwrap_or(0)),
                    go_duration(hc.timeout.unwrap_or(0)),
                    go_duration(hc.start_period.unwrap_or(0)),
                    go_duration(hc.start_interval.unwrap_or(0)),
                    hc.retries.unwrap_or(0)
                );
                run.image.config.healthcheck = Some(hc);
                history(&mut run.image, msg, false);
            }
            Instruction::Run { cmd, network, security, heredocs, mounts } => {
                self.dispatch_run(run, l, cmd, network.as_deref(), security.as_deref(), heredocs, mounts)?
            }
            Instruction::Copy(args) => self.dispatch_copy(run, l, args, false)?,
            Instruction::Add(args) => self.dispatch_copy(run, l, args, true)?,
        }
        Ok(())
    }

    fn command_args(&self, run: &StageRun, c: &CommandForm) -> Vec<String> {
        match c {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => run.shell.iter().cloned().chain(std::iter::once(s.clone())).collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_run(
        &mut self,
        run: &mut StageRun,
        l: &Located,
        cmd: &CommandForm,
        network: Option<&str>,
        security: Option<&str>,
        heredocs: &[Heredoc],
        run_mounts: &[String],
    ) -> Result<(), FrontendError> {
        let mut args = self.command_args(run, cmd);
        let mut extra_mounts: Vec<(Option<Input>, Mount)> = Vec::new();
        for spec in run_mounts {
            let expanded = self.expand(run, l, spec)?;
            let bad = |m: String| {
                DockerfileError::new(l.location.at("--mount"), format!("invalid --mount={spec}: {m}"))
                    .expected("type=bind|cache|tmpfs|secret,target=PATH,…")
            };
            let parsed = parse_run_mount(&expanded).map_err(bad)?;
            let abs = |t: &str| relative_to(&run.workdir, t).trim_end_matches('/').to_string();
            let mount = |dest: String, kind: MountKind, readonly: bool| Mount {
                input: None,
                dest,
                selector: String::new(),
                output: None,
                readonly,
                kind,
            };
            match parsed {
                RunMount::Bind { target, source, from, rw } => {
                    let state = match from {
                        None => Some(self.context_source()),
                        Some(from) => {
                            match self.stage_by_name(&from, run.idx).or_else(|| from.parse::<usize>().ok().filter(|i| *i < run.idx)) {
                                Some(s) => self.lower_stage(s)?.state,
                                None => Some(self.image_source(&from, &l.location, &run.platform.clone())?.0),
                            }
                        }
                    };
                    let mut m = mount(abs(&target), MountKind::Bind, !rw);
                    m.selector = source;
                    extra_mounts.push((state, m));
                }
                RunMount::Cache { target, id, sharing, mode, uid, gid, readonly, from, source } => {
                    // `from` seeds a cache the first time it is created.
                    let seed = match from {
                        None => None,
                        Some(from) => {
                            match self.stage_by_name(&from, run.idx).or_else(|| from.parse::<usize>().ok().filter(|i| *i < run.idx)) {
                                Some(s) => self.lower_stage(s)?.state,
                                None => Some(self.image_source(&from, &l.location, &run.platform.clone())?.0),
                            }
                        }
                    };
                    let mut m = mount(abs(&target), MountKind::Cache { id, sharing, mode, uid, gid }, readonly);
                    m.selector = source;
                    extra_mounts.push((seed, m));
                }
                RunMount::Tmpfs { target, size } => extra_mounts.push((None, mount(abs(&target), MountKind::Tmpfs { size }, false))),
                RunMount::Ssh { target, id, required } => {
                    let n = extra_mounts.iter().filter(|(_, m)| matches!(m.kind, MountKind::Ssh { .. })).count();
                    let dest = if target.is_empty() { format!("/run/buildkit/ssh_agent.{n}") } else { abs(&target) };
                    extra_mounts.push((None, mount(dest, MountKind::Ssh { id, required }, true)));
                }
                RunMount::Secret { target, id, required, mode, uid, gid, env } => {
                    let dest = if target.is_empty() { String::new() } else { abs(&target) };
                    extra_mounts.push((None, mount(dest, MountKind::Secret { id, required, mode, uid, gid, env }, true)));
                }
            }
        }
        let mut summary = None;
        if !heredocs.is_empty() {
            let CommandForm::Shell(text) = cmd else {
                return Err(DockerfileError::new(l.location.clone(), "heredocs need the shell form of RUN").expected("RUN <<EOF").into());
            };
            let text = text.trim();
            if heredoc_word(text).is_some() {
                // A lone heredoc: its content is the script.
                let doc = &heredocs[0];
                let data = doc.data();
                summary = Some(summarize_heredoc(&doc.content));
                if data.starts_with("#!") {
                    // With a shebang it runs as a file, mounted read-only at /dev/pipes/.
                    let file = self.builder.add(
                        Op::File(FileOp {
                            base: None,
                            actions: vec![FileAction::Mkfile {
                                path: format!("/{}", doc.name),
                                mode: 0o755,
                                data: data.into_bytes(),
                                chown: None,
                            }],
                        }),
                        vec![],
                        OpMetadata { description: "[internal] preparing inline document".into(), ..Default::default() },
                    );
                    extra_mounts.push((
                        Some(file),
                        Mount {
                            input: None,
                            dest: "/dev/pipes/".into(),
                            selector: "/".into(),
                            output: None,
                            readonly: true,
                            kind: MountKind::Bind,
                        },
                    ));
                    args = run.shell.iter().cloned().chain(std::iter::once(format!("/dev/pipes/{}", doc.name))).collect();
                } else {
                    args = run.shell.iter().cloned().chain(std::iter::once(data)).collect();
                }
            } else {
                // Heredocs within a longer command: hand the whole script to the shell.
                let mut script = text.to_string();
                for doc in heredocs {
                    script.push('\n');
                    script.push_str(&doc.content);
                    script.push_str(&doc.name);
                }
                args = run.shell.iter().cloned().chain(std::iter::once(script)).collect();
            }
        }
        if args.is_empty() {
            return Err(DockerfileError::new(l.location.clone(), "RUN has an empty command").expected("a command").into());
        }
        let flag = network.map(|n| self.expand(run, l, n)).transpose()?;
        let network_origin = match (&flag, self.opts.network) {
            (Some(f), _) => Some(format!("RUN --network={f} on line {}", l.location.start_line)),
            (None, Network::Sandbox) => None,
            (None, n) => Some(format!("the build's --network {}", network_name(n))),
        };
        let network = match flag.as_deref() {
            None => self.opts.network,
            Some("default") | Some("sandbox") => Network::Sandbox,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(DockerfileError::new(l.location.at(other), format!("unsupported network mode {other:?}"))
                    .expected("default, none or host")
                    .into());
            }
        };
        let security = match security {
            None | Some("sandbox") => Security::Sandbox,
            Some("insecure") => Security::Insecure,
            Some(other) => {
                return Err(DockerfileError::new(l.location.at(other), format!("unsupported security mode {other:?}"))
                    .expected("sandbox or insecure")
                    .into());
            }
        };
        let mut inputs: Vec<Input> = run.state.iter().cloned().collect();
        let mut mounts = vec![Mount {
            input: run.state.as_ref().map(|_| 0),
            dest: "/".into(),
            selector: String::new(),
            output: Some(0),
            readonly: false,
            kind: MountKind::Bind,
        }];
        for (input, mut m) in extra_mounts {
            if let Some(input) = input {
                m.input = Some(inputs.len() as u32);
                inputs.push(input);
            }
            mounts.push(m);
        }
        let exec = ExecOp {
            args: args.clone(),
            env: run.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: run.workdir.clone(),
            user: run.image.config.user.clone().unwrap_or_default(),
            network,
            security,
            mounts,
            platform: Some(run.platform.to_string()),
            extra_hosts: self.opts.extra_hosts.clone(),
        };
        let mut desc = self.description(run, l);
        if let Some(s) = summary {
            desc = format!("{desc} ({s})");
        }
        let mut meta = self.meta(run, desc, l);
        meta.proxy_env = self.proxy_env(run);
        meta.network_origin = network_origin;
        run.state = Some(self.builder.add(Op::Exec(exec), inputs, meta));
        // History: `RUN |N K=V… cmd` when build args are in scope, as BuildKit writes it.
        let mut prefix: Vec<String> = Vec::new();
        for (k, v) in &run.build_args {
            let val = run.env.iter().rev().find(|(ek, _)| ek == k).map(|(_, v)| v.clone()).or_else(|| v.clone()).unwrap_or_default();
            prefix.push(format!("{k}={val}"));
        }
        let mut words = Vec::new();
        if !prefix.is_empty() {
            words.push(format!("|{}", prefix.len()));
            words.extend(prefix);
        }
        words.extend(args);
        history(&mut run.image, format!("RUN {}", words.join(" ")), true);
        Ok(())
    }

    fn dispatch_copy(&mut self, run: &mut StageRun, l: &Located, args: &CopyArgs, is_add: bool) -> Result<(), FrontendError> {
        let what = if is_add { "ADD" } else { "COPY" };
        let mut srcs = Vec::new();
        let mut contents: Vec<&Heredoc> = Vec::new();
        let mut urls: Vec<String> = Vec::new();
        let mut gits: Vec<String> = Vec::new();
        for s in &args.srcs {
            if let Some((name, _, _)) = heredoc_word(s)
                && let Some(doc) = args.heredocs.iter().find(|d| d.name == name)
            {
                contents.push(doc);
                continue;
            }
            let e = self.expand(run, l, s)?;
            if is_add && rdock_llb::parse_git_ref(&e).is_some() {
                gits.push(e);
                continue;
            }
            if e.starts_with("http://") || e.starts_with("https://") {
                if !is_add {
                    return Err(DockerfileError::new(l.location.at(s), "source can't be a URL for COPY")
                        .expected("ADD for URLs, or a path in the build context")
                        .into());
                }
                urls.push(e);
                continue;
            }
            srcs.push(e);
        }
        let dest_word = self.expand(run, l, &args.dest)?;
        if srcs.len() + contents.len() + urls.len() + gits.len() > 1 && !dest_word.ends_with('/') {
            return Err(DockerfileError::new(
                l.location.at(&args.dest),
                format!("When using {what} with more than one source file, the destination must be a directory and end with a /"),
            )
            .expected(format!("{}/", args.dest))
            .into());
        }
        let dest = relative_to(&run.workdir, &dest_word);
        let chown = args.chown.as_ref().map(|c| self.expand(run, l, c)).transpose()?;
        let chmod = match &args.chmod {
            None => None,
            Some(m) => {
                let m = self.expand(run, l, m)?;
                Some(rdock_llb::Chmod::parse(&m).map_err(|e| {
                    DockerfileError::new(l.location.at("--chmod"), e.to_string()).expected("an octal mode such as 0755, or u=rwx,go=rx")
                })?)
            }
        };
        let exclude = args.exclude.iter().map(|e| self.expand(run, l, e)).collect::<Result<Vec<_>, _>>()?;
        let base_inputs = usize::from(run.state.is_some());
        let mut extra = Vec::new();
        let mut actions = Vec::new();
        if !srcs.is_empty() {
            // The source: the build context, an earlier stage, or an image.
            let src_state = match &args.from {
                None => Some(self.context_source()),
                Some(from) => {
                    let from = self.expand(run, l, from)?;
                    let stage = self.stage_by_name(&from, run.idx).or_else(|| from.parse::<usize>().ok().filter(|i| *i < run.idx));
                    match stage {
                        Some(s) => self.lower_stage(s)?.state,
                        None => {
                            if self.stages.iter().any(|s| s.name.as_deref() == Some(from.to_ascii_lowercase().as_str()))
                                || from.parse::<usize>().is_ok()
                            {
                                return Err(DockerfileError::new(
                                    l.location.at(&from),
                                    format!("{what} --from={from} refers to a stage that is not defined before this one"),
                                )
                                .expected("the name or index of an earlier stage")
                                .into());
                            }
                            Some(self.image_source(&from, &l.location, &run.platform.clone())?.0)
                        }
                    }
                }
            };
            let Some(src_state) = src_state else {
                // Copying from an empty (scratch) stage: nothing to copy, as BuildKit fails.
                return Err(DockerfileError::new(l.location.clone(), format!("{what} --from refers to an empty stage")).into());
            };
            let src_paths: Vec<String> = srcs
                .iter()
                .map(|s| {
                    let abs = |p: &str| {
                        let c = rdock_llb::patterns::clean_path(p);
                        if c == "." { "/".to_string() } else { format!("/{c}") }
                    };
                    // --parents keeps a `/./` pivot: what precedes it is not recreated.
                    match s.split_once("/./") {
                        Some((before, after)) if args.parents => {
                            format!("{}/./{}", abs(before).trim_end_matches('/'), abs(after).trim_start_matches('/'))
                        }
                        _ => abs(s),
                    }
                })
                .collect();
            extra.push(src_state);
            actions.push(FileAction::Copy(CopyAction {
                src_input: (base_inputs + extra.len() - 1) as u32,
                src: src_paths,
                dest: dest.clone(),
                chown: chown.as_deref().map(parse_chown),
                chmod: chmod.clone(),
                allow_wildcard: true,
                allow_empty_wildcard: false,
                unpack_archives: is_add && args.unpack != Some(false),
                exclude: exclude.clone(),
                parents: args.parents,
            }));
        }
        // URL sources: the download is a source op (fetched and keyed by content by the
        // solver) holding one file, copied like a file.
        let checksum = args.checksum.as_ref().map(|c| self.expand(run, l, c)).transpose()?;
        if checksum.is_some() && urls.is_empty() {
            return Err(DockerfileError::new(l.location.at("--checksum"), "--checksum applies to URL sources only")
                .expected("ADD --checksum=sha256:… https://…")
                .into());
        }
        for url in &urls {
            let op = SourceOp::http(url, checksum.as_deref());
            let filename = op.attr("http.filename").unwrap_or_default().to_string();
            let src = self.builder.add(
                Op::Source(op),
                vec![],
                OpMetadata { description: format!("[internal] load remote file {url}"), ..Default::default() },
            );
            extra.push(src);
            actions.push(FileAction::Copy(CopyAction {
                src_input: (base_inputs + extra.len() - 1) as u32,
                src: vec![format!("/{filename}")],
                dest: dest.clone(),
                chown: chown.as_deref().map(parse_chown),
                chmod: chmod.clone(),
                allow_wildcard: false,
                allow_empty_wildcard: false,
                unpack_archives: args.unpack == Some(true),
                exclude: Vec::new(),
                parents: false,
            }));
        }
        // Git sources: the checked-out tree's contents go into the destination directory.
        for g in &gits {
            let src = self.builder.add(
                Op::Source(SourceOp::git(g, args.keep_git_dir)),
                vec![],
                OpMetadata { description: format!("[internal] load git source {g}"), ..Default::default() },
            );
            extra.push(src);
            actions.push(FileAction::Copy(CopyAction {
                src_input: (base_inputs + extra.len() - 1) as u32,
                src: vec!["/".to_string()],
                dest: format!("{}/", dest.trim_end_matches('/')),
                chown: chown.as_deref().map(parse_chown),
                chmod: chmod.clone(),
                allow_wildcard: false,
                allow_empty_wildcard: false,
                unpack_archives: false,
                exclude: exclude.clone(),
                parents: false,
            }));
        }
        // Heredoc sources: each becomes a one-file scratch state copied like a file.
        for doc in &contents {
            let mut data = doc.data();
            if doc.expand {
                data = self.lexer.process_heredoc(&data, &run.env).map_err(|e| expand_error(l, e))?;
            }
            let file = self.builder.add(
                Op::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Mkfile { path: format!("/{}", doc.name), mode: 0o644, data: data.into_bytes(), chown: None }],
                }),
                vec![],
                OpMetadata { description: "[internal] preparing inline document".into(), ..Default::default() },
            );
            extra.push(file);
            actions.push(FileAction::Copy(CopyAction {
                src_input: (base_inputs + extra.len() - 1) as u32,
                src: vec![format!("/{}", doc.name)],
                dest: dest.clone(),
                chown: chown.as_deref().map(parse_chown),
                chmod: chmod.clone(),
                allow_wildcard: false,
                allow_empty_wildcard: false,
                unpack_archives: false,
                exclude: Vec::new(),
                parents: false,
            }));
        }
        let mut msg = String::from(what);
        if let Some(c) = &chown {
            msg.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &args.chmod {
            msg.push_str(&format!(" --chmod={c}"));
        }
        for s in &srcs {
            msg.push_str(&format!(" {s}"));
        }
        for u in urls.iter().chain(&gits) {
            msg.push_str(&format!(" {u}"));
        }
        for doc in &contents {
            msg.push_str(&format!(" <<{}", doc.name));
        }
        msg.push_str(&format!(" {dest_word}"));
        self.file_op(run, l, actions, extra)?;
        history(&mut run.image, msg, true);
        Ok(())
    }

    fn file_op(&mut self, run: &mut StageRun, l: &Located, actions: Vec<FileAction>, extra: Vec<Input>) -> Result<(), FrontendError> {
        let desc = self.description(run, l);
        let meta = self.meta(run, desc, l);
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
