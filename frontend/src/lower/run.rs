//! RUN: the command (shell or exec form, or a heredoc script), its `--mount`s, network
//! and security modes, as an exec op on the stage's state.

use super::{Ctx, StageRun, history, network_name, relative_to, summarize_heredoc};
use crate::error::DockerfileError;
use crate::instructions::{CommandForm, Located};
use crate::lower::FrontendError;
use crate::parser::{Heredoc, heredoc_word};
use crate::runmount::{RunMount, parse_run_mount};
use rdock_llb::{ExecOp, FileAction, FileOp, Input, Mount, MountKind, Network, Op, OpMetadata, Security};

/// RUN's flags and heredocs, as parsed.
pub(super) struct RunFlags<'a> {
    pub network: Option<&'a str>,
    pub security: Option<&'a str>,
    pub heredocs: &'a [Heredoc],
    pub mounts: &'a [String],
}

/// A mount beside the root, and the state it shows (None: nothing, or a tmpfs).
type ExtraMount = (Option<Input>, Mount);

fn mount(dest: String, kind: MountKind, readonly: bool) -> Mount {
    Mount { input: None, dest, selector: String::new(), output: None, readonly, kind }
}

impl Ctx<'_> {
    pub(super) fn dispatch_run(
        &mut self,
        run: &mut StageRun,
        l: &Located,
        cmd: &CommandForm,
        flags: RunFlags<'_>,
    ) -> Result<(), FrontendError> {
        let mut extra = self.run_mounts(run, l, flags.mounts)?;
        let (args, summary) = self.run_command(run, l, cmd, flags.heredocs, &mut extra)?;
        if args.is_empty() {
            return Err(DockerfileError::new(l.location.clone(), "RUN has an empty command").expected("a command").into());
        }
        let (network, network_origin) = self.run_network(run, l, flags.network)?;
        let security = match flags.security {
            None | Some("sandbox") => Security::Sandbox,
            Some("insecure") => Security::Insecure,
            Some(other) => {
                return Err(DockerfileError::new(l.location.at(other), format!("unsupported security mode {other:?}"))
                    .expected("sandbox or insecure")
                    .into());
            }
        };
        let mut inputs: Vec<Input> = run.state.iter().cloned().collect();
        let mut mounts = vec![Mount { input: run.state.as_ref().map(|_| 0), output: Some(0), ..mount("/".into(), MountKind::Bind, false) }];
        for (input, mut m) in extra {
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
            hostname: self.opts.build_args.get("BUILDKIT_SANDBOX_HOSTNAME").filter(|h| !h.is_empty()).cloned(),
            resources: self.opts.resources.clone(),
        };
        let mut desc = self.description(run, l);
        if let Some(s) = summary {
            desc = format!("{desc} ({s})");
        }
        let mut meta = self.meta(run, desc, l);
        meta.proxy_env = self.proxy_env(run);
        meta.network_origin = network_origin;
        run.state = Some(self.builder.add(Op::Exec(exec), inputs, meta));
        let entry = run_history(run, args);
        history(&mut run.image, entry, true);
        Ok(())
    }

    /// The state `--mount=from=NAME` names: an earlier stage (by name or index), a named
    /// context, else an image.
    fn mount_from(&mut self, run: &StageRun, l: &Located, from: &str) -> Result<Option<Input>, FrontendError> {
        match self.stage_by_name(from, run.idx).or_else(|| from.parse::<usize>().ok().filter(|i| *i < run.idx)) {
            Some(s) => Ok(self.lower_stage(s)?.state),
            None => match self.named_context_state(from, &l.location, &run.platform.clone())? {
                Some(r) => Ok(r.state),
                None => Ok(Some(self.image_source(from, &l.location, &run.platform.clone())?.0)),
            },
        }
    }

    /// RUN's `--mount`s, as mounts with the states they show.
    fn run_mounts(&mut self, run: &StageRun, l: &Located, specs: &[String]) -> Result<Vec<ExtraMount>, FrontendError> {
        let mut extra: Vec<ExtraMount> = Vec::new();
        for spec in specs {
            if crate::runmount::from_has_variable(spec) {
                return Err(DockerfileError::new(
                    l.location.at(spec),
                    "'from' doesn't support variable expansion, define alias stage instead",
                )
                .expected("from=STAGE or from=IMAGE, as written")
                .into());
            }
            let expanded = self.expand(run, l, spec)?;
            let parsed = parse_run_mount(&expanded).map_err(|m| {
                DockerfileError::new(l.location.at("--mount"), format!("invalid --mount={spec}: {m}"))
                    .expected("type=bind|cache|tmpfs|secret,target=PATH,…")
            })?;
            let abs = |t: &str| relative_to(&run.workdir, t).trim_end_matches('/').to_string();
            let m = match parsed {
                RunMount::Bind { target, source, from, rw } => {
                    let state = match from {
                        None => Some(self.context_source()),
                        Some(from) => self.mount_from(run, l, &from)?,
                    };
                    (state, Mount { selector: source, ..mount(abs(&target), MountKind::Bind, !rw) })
                }
                RunMount::Cache { target, id, sharing, mode, uid, gid, readonly, from, source } => {
                    // `from` seeds a cache the first time it is created.
                    let seed = match from {
                        None => None,
                        Some(from) => self.mount_from(run, l, &from)?,
                    };
                    (seed, Mount { selector: source, ..mount(abs(&target), MountKind::Cache { id, sharing, mode, uid, gid }, readonly) })
                }
                RunMount::Tmpfs { target, size } => (None, mount(abs(&target), MountKind::Tmpfs { size }, false)),
                RunMount::Ssh { target, id, required } => {
                    let n = extra.iter().filter(|(_, m)| matches!(m.kind, MountKind::Ssh { .. })).count();
                    let dest = if target.is_empty() { format!("/run/buildkit/ssh_agent.{n}") } else { abs(&target) };
                    (None, mount(dest, MountKind::Ssh { id, required }, true))
                }
                RunMount::Secret { target, id, required, mode, uid, gid, env } => {
                    let dest = if target.is_empty() { String::new() } else { abs(&target) };
                    (None, mount(dest, MountKind::Secret { id, required, mode, uid, gid, env }, true))
                }
            };
            extra.push(m);
        }
        Ok(extra)
    }

    /// The command's argv, and a summary of a heredoc script for the step's name. A lone
    /// heredoc is the script (run as a file when it has a shebang, mounted read-only at
    /// `/dev/pipes/`); heredocs within a longer command go to the shell with it.
    fn run_command(
        &mut self,
        run: &StageRun,
        l: &Located,
        cmd: &CommandForm,
        heredocs: &[Heredoc],
        extra: &mut Vec<ExtraMount>,
    ) -> Result<(Vec<String>, Option<String>), FrontendError> {
        if heredocs.is_empty() {
            return Ok((self.command_args(run, cmd), None));
        }
        let CommandForm::Shell(text) = cmd else {
            return Err(DockerfileError::new(l.location.clone(), "heredocs need the shell form of RUN").expected("RUN <<EOF").into());
        };
        let shell = |last: String| run.shell.iter().cloned().chain(std::iter::once(last)).collect::<Vec<_>>();
        let text = text.trim();
        if heredoc_word(text).is_none() {
            let mut script = text.to_string();
            for doc in heredocs {
                script.push('\n');
                script.push_str(&doc.content);
                script.push_str(&doc.name);
            }
            return Ok((shell(script), None));
        }
        let doc = &heredocs[0];
        let data = doc.data();
        let summary = Some(summarize_heredoc(&doc.content));
        if !data.starts_with("#!") {
            return Ok((shell(data), summary));
        }
        let file = self.builder.add(
            Op::File(FileOp {
                base: None,
                actions: vec![FileAction::Mkfile { path: format!("/{}", doc.name), mode: 0o755, data: data.into_bytes(), chown: None }],
            }),
            vec![],
            OpMetadata { description: "[internal] preparing inline document".into(), ..Default::default() },
        );
        extra.push((Some(file), Mount { selector: "/".into(), ..mount("/dev/pipes/".into(), MountKind::Bind, true) }));
        Ok((shell(format!("/dev/pipes/{}", doc.name)), summary))
    }

    /// The step's network, and where it was chosen when not the default (named in its
    /// error should it fail to resolve a host).
    fn run_network(&self, run: &StageRun, l: &Located, flag: Option<&str>) -> Result<(Network, Option<String>), FrontendError> {
        let flag = flag.map(|n| self.expand(run, l, n)).transpose()?;
        let origin = match (&flag, self.opts.network) {
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
        Ok((network, origin))
    }
}

/// History: `RUN |N K=V… cmd` when build args are in scope, as BuildKit writes it.
fn run_history(run: &StageRun, args: Vec<String>) -> String {
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
    format!("RUN {}", words.join(" "))
}
