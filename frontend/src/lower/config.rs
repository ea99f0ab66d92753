//! The instructions that change only the image config (and, for WORKDIR, make the
//! directory): each writes what BuildKit writes, history wording included.

use super::{Ctx, StageRun, go_duration, go_quote_list, history, parse_chown, parse_port, relative_to, set_env};
use crate::error::DockerfileError;
use crate::instructions::{CommandForm, Healthcheck, Located};
use crate::lower::FrontendError;
use rdock_imagespec::{Empty, HealthConfig};
use rdock_llb::FileAction;

impl Ctx<'_> {
    pub(super) fn dispatch_env(&mut self, run: &mut StageRun, l: &Located, kvs: &[(String, String)]) -> Result<(), FrontendError> {
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
        Ok(())
    }

    /// ARG: a build arg's value, else the default, else the global ARG of that name.
    pub(super) fn dispatch_arg(&mut self, run: &mut StageRun, l: &Located, args: &[(String, Option<String>)]) -> Result<(), FrontendError> {
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
        Ok(())
    }

    /// WORKDIR: relative to the last one; made (owned by the stage's user) unless `/`.
    pub(super) fn dispatch_workdir(&mut self, run: &mut StageRun, l: &Located, w: &str) -> Result<(), FrontendError> {
        let w = self.expand(run, l, w)?;
        let wd = relative_to(&run.workdir, &w);
        let wd = if wd.len() > 1 { wd.trim_end_matches('/').to_string() } else { wd };
        run.workdir = wd.clone();
        run.image.config.working_dir = Some(wd.clone());
        if wd == "/" {
            history(&mut run.image, format!("WORKDIR {wd}"), false);
            return Ok(());
        }
        let chown = run.image.config.user.as_deref().filter(|u| !u.is_empty()).map(parse_chown);
        let action = FileAction::Mkdir { path: wd.clone(), mode: 0o755, make_parents: true, chown };
        self.file_op(run, l, vec![action], vec![], None)?;
        history(&mut run.image, format!("WORKDIR {wd}"), true);
        // BuildKit writes no " # buildkit" suffix for WORKDIR.
        if let Some(h) = run.image.history.last_mut() {
            h.created_by = Some(format!("WORKDIR {wd}"));
        }
        Ok(())
    }

    pub(super) fn dispatch_user(&mut self, run: &mut StageRun, l: &Located, u: &str) -> Result<(), FrontendError> {
        let u = self.expand(run, l, u)?;
        run.image.config.user = Some(u.clone());
        history(&mut run.image, format!("USER {u}"), false);
        Ok(())
    }

    pub(super) fn dispatch_label(&mut self, run: &mut StageRun, l: &Located, kvs: &[(String, String)]) -> Result<(), FrontendError> {
        let mut msg = String::from("LABEL");
        for (k, v) in kvs {
            let k = self.expand(run, l, k)?;
            let v = self.expand(run, l, v)?;
            msg.push_str(&format!(" {k}={v}"));
            run.image.config.labels.insert(k, v);
        }
        history(&mut run.image, msg, false);
        Ok(())
    }

    pub(super) fn dispatch_expose(&mut self, run: &mut StageRun, l: &Located, ports: &[String]) -> Result<(), FrontendError> {
        let mut specs = Vec::new();
        for p in ports {
            for w in self.expand_words(run, l, p)? {
                specs.extend(
                    parse_port(&w).map_err(|m| {
                        DockerfileError::new(l.location.at(p), m).expected("PORT[/PROTOCOL] or a range START-END[/PROTOCOL]")
                    })?,
                );
            }
        }
        for s in &specs {
            run.image.config.exposed_ports.insert(s.clone(), Empty {});
        }
        history(&mut run.image, format!("EXPOSE [{}]", specs.join(" ")), false);
        Ok(())
    }

    pub(super) fn dispatch_cmd(&self, run: &mut StageRun, c: &CommandForm) {
        let args = self.command_args(run, c);
        run.image.config.cmd = Some(args.clone());
        run.cmd_set = true;
        history(&mut run.image, format!("CMD {}", go_quote_list(&args)), false);
    }

    /// ENTRYPOINT: resets an inherited CMD, unless the stage set its own before.
    pub(super) fn dispatch_entrypoint(&self, run: &mut StageRun, c: &CommandForm) {
        let args = self.command_args(run, c);
        run.image.config.entrypoint = Some(args.clone());
        if !run.cmd_set {
            run.image.config.cmd = None;
        }
        history(&mut run.image, format!("ENTRYPOINT {}", go_quote_list(&args)), false);
    }

    pub(super) fn dispatch_volume(&mut self, run: &mut StageRun, l: &Located, vs: &[String]) -> Result<(), FrontendError> {
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
        Ok(())
    }

    pub(super) fn dispatch_stopsignal(&mut self, run: &mut StageRun, l: &Located, s: &str) -> Result<(), FrontendError> {
        let s = self.expand(run, l, s)?;
        run.image.config.stop_signal = Some(s.clone());
        history(&mut run.image, format!("STOPSIGNAL {s}"), false);
        Ok(())
    }
}

pub(super) fn dispatch_shell(run: &mut StageRun, sh: &[String]) {
    run.shell = sh.to_vec();
    run.image.config.shell = sh.to_vec();
    history(&mut run.image, format!("SHELL [{}]", sh.join(" ")), false);
}

pub(super) fn dispatch_maintainer(run: &mut StageRun, m: &str) {
    run.image.author = Some(m.to_string());
    history(&mut run.image, format!("MAINTAINER {m}"), false);
}

/// ONBUILD: recorded with its keyword in upper case, for the images built on this one.
pub(super) fn dispatch_onbuild(run: &mut StageRun, t: &str) {
    let mut parts = t.trim().splitn(2, char::is_whitespace);
    let kw = parts.next().unwrap_or("").to_ascii_uppercase();
    let rest = parts.next().unwrap_or("");
    run.image.config.on_build.push(if rest.is_empty() { kw } else { format!("{kw} {rest}") });
}

pub(super) fn dispatch_healthcheck(run: &mut StageRun, h: &Healthcheck) {
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
