//! Docker's default seccomp profile (`seccomp/docker-default.toml`, data with its origin),
//! compiled once per process into BPF programs for the host's architecture and the
//! sandbox's capability set, and installed by the sandbox's child just before it hands
//! control to the image's code.
//!
//! Two programs, because one seccompiler filter has one match action: the first allows
//! what the profile allows and fails everything else with EPERM; the second fails
//! `clone3` with ENOSYS (so libc falls back to `clone`, whose flags a filter can see). The
//! kernel runs every installed filter and, between two errno results, takes the most
//! recently installed one's, so the second program is installed last.

use crate::ExecError;
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;

/// The profile, as committed.
const PROFILE: &str = include_str!("seccomp/docker-default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    default_errno: u32,
    rule: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    without_caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    /// Fail with this errno instead of allowing.
    errno: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    index: u8,
    op: String,
    value: u64,
    mask: Option<u64>,
    #[serde(default = "qword")]
    width: u32,
}

fn qword() -> u32 {
    64
}

/// Compiled BPF programs, installed in order.
#[derive(Debug)]
pub(crate) struct Programs {
    filters: Vec<Vec<libc::sock_filter>>,
}

impl Programs {
    /// The `sock_fprog`s the child passes to `seccomp(2)`; they point into `self`.
    pub(crate) fn fprogs(&self) -> Vec<libc::sock_fprog> {
        self.filters.iter().map(|f| libc::sock_fprog { len: f.len() as u16, filter: f.as_ptr().cast_mut() }).collect()
    }
}

/// Docker's default profile for a sandbox holding `caps` (capability numbers), compiled
/// once: every step and container of this process uses the same capability set.
pub(crate) fn docker_default(caps: &[u32]) -> Result<&'static Programs, ExecError> {
    static COMPILED: std::sync::OnceLock<Result<Programs, String>> = std::sync::OnceLock::new();
    COMPILED.get_or_init(|| compile(PROFILE, caps)).as_ref().map_err(|e| ExecError::Setup(format!("seccomp profile: {e}")))
}

/// The host's architecture, as the profile and seccompiler name it.
fn host_arch() -> Result<(&'static str, TargetArch), String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("x86_64", TargetArch::x86_64)),
        "aarch64" => Ok(("aarch64", TargetArch::aarch64)),
        "riscv64" => Ok(("riscv64", TargetArch::riscv64)),
        other => Err(format!("no seccomp support for {other}")),
    }
}

/// The capabilities a rule's `caps` name, by number (those the profile uses).
fn cap_number(name: &str) -> Result<u32, String> {
    Ok(match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_MODULE" => 16,
        "CAP_SYS_RAWIO" => 17,
        "CAP_SYS_CHROOT" => 18,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_PACCT" => 20,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_BOOT" => 22,
        "CAP_SYS_NICE" => 23,
        "CAP_SYS_TIME" => 25,
        "CAP_SYS_TTY_CONFIG" => 26,
        "CAP_SYSLOG" => 34,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => return Err(format!("unknown capability {other}")),
    })
}

fn condition(a: &Arg) -> Result<SeccompCondition, String> {
    let op = match (a.op.as_str(), a.mask) {
        ("eq", None) => SeccompCmpOp::Eq,
        ("ne", None) => SeccompCmpOp::Ne,
        ("masked_eq", Some(m)) => SeccompCmpOp::MaskedEq(m),
        (op, _) => return Err(format!("unsupported argument condition {op:?}")),
    };
    let len = if a.width == 32 { SeccompCmpArgLen::Dword } else { SeccompCmpArgLen::Qword };
    SeccompCondition::new(a.index, len, op, a.value).map_err(|e| e.to_string())
}

/// Compiles `profile` for the host architecture and `caps`.
fn compile(profile: &str, caps: &[u32]) -> Result<Programs, String> {
    let profile: Profile = toml::from_str(profile).map_err(|e| e.to_string())?;
    let (arch_name, arch) = host_arch()?;
    // Per syscall: None matches it whatever its arguments, Some(rules) when one holds.
    type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;
    let mut allow: Rules = BTreeMap::new();
    let mut errnos: BTreeMap<u32, Rules> = BTreeMap::new();
    for rule in &profile.rule {
        let held = |names: &[String]| -> Result<Vec<bool>, String> { names.iter().map(|n| Ok(caps.contains(&cap_number(n)?))).collect() };
        if held(&rule.caps)?.contains(&false) || held(&rule.without_caps)?.contains(&true) {
            continue;
        }
        if !rule.arches.is_empty() && !rule.arches.iter().any(|a| a == arch_name) {
            continue;
        }
        let conditions = rule.args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
        let target = match rule.errno {
            None => &mut allow,
            Some(e) => errnos.entry(e).or_default(),
        };
        for name in &rule.names {
            // A name this architecture lacks (`chown32` on x86_64) has nothing to filter.
            let Ok(nr) = syscalls::Sysno::from_str(name) else { continue };
            let entry = target.entry(nr.id() as i64).or_insert_with(|| Some(Vec::new()));
            match entry {
                Some(_) if conditions.is_empty() => *entry = None,
                Some(rules) => rules.push(SeccompRule::new(conditions.clone()).map_err(|e| e.to_string())?),
                None => {}
            }
        }
    }
    let flatten = |r: Rules| r.into_iter().map(|(nr, rules)| (nr, rules.unwrap_or_default())).collect();
    let mut filters = vec![program(flatten(allow), SeccompAction::Errno(profile.default_errno), SeccompAction::Allow, arch)?];
    for (errno, rules) in errnos {
        filters.push(program(flatten(rules), SeccompAction::Allow, SeccompAction::Errno(errno), arch)?);
    }
    Ok(Programs { filters })
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<Vec<libc::sock_filter>, String> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
    let bpf: seccompiler::BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok(bpf.into_iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_compiles_for_the_default_capabilities() {
        let p = compile(PROFILE, crate::sandbox::DEFAULT_CAPS).unwrap();
        assert_eq!(p.filters.len(), 2, "an allow list and clone3's ENOSYS");
        assert!(p.filters.iter().all(|f| !f.is_empty() && f.len() < u16::MAX as usize));
    }

    #[test]
    fn unknown_fields_and_capabilities_are_errors() {
        assert!(compile("default_errno = 1\n[[rule]]\nnames = [\"read\"]\nallow = true\n", &[]).is_err());
        assert!(compile("default_errno = 1\n[[rule]]\nnames = [\"read\"]\ncaps = [\"CAP_NOPE\"]\n", &[]).is_err());
    }
}
