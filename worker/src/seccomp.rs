//! Docker's default seccomp profile (`seccomp/docker-default.toml`, data with its origin),
//! compiled once per process into a BPF program for the host's architecture and the
//! sandbox's capability set, and installed by the sandbox's child just before it hands
//! control to the image's code.
//!
//! The program is a binary search over syscall numbers, not a chain of comparisons: the
//! kernel runs it once per syscall number when it is installed (to cache which syscalls
//! are always allowed), so a chain of ~350 tests cost every step a millisecond; the tree
//! costs a few microseconds. Runs of allowed numbers become one range each. Syscalls with
//! argument conditions (socket, personality, clone) get their checks at their leaf.

use crate::ExecError;
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

/// A compiled BPF program.
#[derive(Debug)]
pub(crate) struct Program {
    filter: Vec<libc::sock_filter>,
}

impl Program {
    /// The `sock_fprog` the child passes to `seccomp(2)`; it points into `self`.
    pub(crate) fn fprog(&self) -> libc::sock_fprog {
        libc::sock_fprog { len: self.filter.len() as u16, filter: self.filter.as_ptr().cast_mut() }
    }
}

/// Docker's default profile for a sandbox holding `caps` (capability numbers), compiled
/// once: every step and container of this process uses the same capability set.
pub(crate) fn docker_default(caps: &[u32]) -> Result<&'static Program, ExecError> {
    static COMPILED: std::sync::OnceLock<Result<Program, String>> = std::sync::OnceLock::new();
    COMPILED.get_or_init(|| compile(PROFILE, caps)).as_ref().map_err(|e| ExecError::Setup(format!("seccomp profile: {e}")))
}

/// Starts compiling the profile on a thread of its own, so that the first step or
/// container finds it ready (callers do this when they start, before opening the store).
pub fn prepare() {
    std::thread::spawn(|| {
        let _ = docker_default(crate::caps::DEFAULT_CAPS);
    });
}

/// The host's architecture, as the profile names it, and its `AUDIT_ARCH_*`.
fn host_arch() -> Result<(&'static str, u32), String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("x86_64", 0xC000_003E)),
        "aarch64" => Ok(("aarch64", 0xC000_00B7)),
        "riscv64" => Ok(("riscv64", 0xC000_00F3)),
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

/// One test of an argument, on its low 32 bits or all 64.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    index: u8,
    /// (mask, value, equal): `(arg & mask) == value` holds, or must not when `!equal`.
    mask: u64,
    value: u64,
    equal: bool,
    wide: bool,
}

fn condition(a: &Arg) -> Result<Cond, String> {
    if a.index > 5 {
        return Err(format!("argument index {} out of range", a.index));
    }
    let wide = a.width != 32;
    let full = if wide { u64::MAX } else { u32::MAX as u64 };
    let (mask, equal) = match (a.op.as_str(), a.mask) {
        ("eq", None) => (full, true),
        ("ne", None) if !wide => (full, false),
        ("masked_eq", Some(m)) => (m & full, true),
        (op, _) => return Err(format!("unsupported argument condition {op:?} (width {})", a.width)),
    };
    Ok(Cond { index: a.index, mask, value: a.value & mask, equal, wide })
}

/// What a syscall number gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The profile's default: fail with `default_errno`.
    Default,
    /// Allowed whatever its arguments.
    Allow,
    /// Fails with this errno (clone3's ENOSYS).
    Errno(u32),
    /// Allowed when every condition of one of the rules holds, else the default.
    Conditional(Vec<Vec<Cond>>),
}

/// Which outcome each syscall number of the host gets, for `caps`.
fn outcomes(profile: &Profile, arch: &str, caps: &[u32]) -> Result<BTreeMap<u32, Outcome>, String> {
    let mut out: BTreeMap<u32, Outcome> = BTreeMap::new();
    for rule in &profile.rule {
        let held = |names: &[String]| -> Result<Vec<bool>, String> { names.iter().map(|n| Ok(caps.contains(&cap_number(n)?))).collect() };
        if held(&rule.caps)?.contains(&false) || held(&rule.without_caps)?.contains(&true) {
            continue;
        }
        if !rule.arches.is_empty() && !rule.arches.iter().any(|a| a == arch) {
            continue;
        }
        let conds = rule.args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
        for name in &rule.names {
            // A name this architecture lacks (`chown32` on x86_64) has nothing to filter.
            let Ok(nr) = syscalls::Sysno::from_str(name) else { continue };
            let slot = out.entry(nr.id() as u32).or_insert(Outcome::Default);
            *slot = match (rule.errno, std::mem::replace(slot, Outcome::Default), conds.is_empty()) {
                (Some(e), _, _) => Outcome::Errno(e),
                (None, Outcome::Errno(e), _) => Outcome::Errno(e),
                (None, _, true) | (None, Outcome::Allow, _) => Outcome::Allow,
                (None, Outcome::Conditional(mut rules), false) => {
                    rules.push(conds.clone());
                    Outcome::Conditional(rules)
                }
                (None, Outcome::Default, false) => Outcome::Conditional(vec![conds.clone()]),
            };
        }
    }
    Ok(out)
}

/// Compiles `profile` for the host architecture and `caps`.
fn compile(profile: &str, caps: &[u32]) -> Result<Program, String> {
    let profile: Profile = toml::from_str(profile).map_err(|e| e.to_string())?;
    let (arch_name, audit_arch) = host_arch()?;
    let outcomes = outcomes(&profile, arch_name, caps)?;
    let default = libc::SECCOMP_RET_ERRNO | (profile.default_errno & libc::SECCOMP_RET_DATA);
    let mut prog = vec![
        stmt(LD_ABS, ARCH_OFFSET),
        jump(JEQ, audit_arch, 1, 0),
        // Another architecture's calling convention (32-bit x86 on x86_64): its numbers mean
        // other syscalls, so the process is killed, as seccompiler and runc's default do.
        stmt(RET, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_ABS, NR_OFFSET),
    ];
    if arch_name == "x86_64" {
        // x32 syscalls carry bit 30; none is allowed.
        prog.push(jump(JGE, 0x4000_0000, 0, 1));
        prog.push(stmt(RET, default));
    }
    prog.extend(tree(&segments(&outcomes), default));
    if prog.len() > u16::MAX as usize {
        return Err(format!("{} instructions is more than a filter may have", prog.len()));
    }
    Ok(Program { filter: prog })
}

/// The whole u32 range of syscall numbers as runs of equal outcome, in order: (first
/// number, outcome), each run lasting until the next begins.
fn segments(outcomes: &BTreeMap<u32, Outcome>) -> Vec<(u32, Outcome)> {
    let mut segs: Vec<(u32, Outcome)> = Vec::new();
    let mut push = |start: u32, o: Outcome| {
        if segs.last().is_none_or(|(_, last)| *last != o) {
            segs.push((start, o));
        }
    };
    let mut next = 0u32;
    for (&nr, o) in outcomes {
        if nr > next {
            push(next, Outcome::Default);
        }
        push(nr, o.clone());
        next = nr.saturating_add(1);
    }
    push(next, Outcome::Default);
    segs
}

const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K
/// Offsets in `struct seccomp_data` (little-endian: an argument's low word comes first).
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A binary search over `segs` (the accumulator holds the syscall number); each leaf
/// returns its segment's outcome.
fn tree(segs: &[(u32, Outcome)], default: u32) -> Vec<libc::sock_filter> {
    if segs.len() == 1 {
        return leaf(&segs[0].1, default);
    }
    let mid = segs.len() / 2;
    let left = tree(&segs[..mid], default);
    let right = tree(&segs[mid..], default);
    // `jge` true falls to the `ja` that leaps over the left half; false skips the `ja`.
    let mut out = vec![jump(JGE, segs[mid].0, 0, 1), stmt(JA, left.len() as u32)];
    out.extend(left);
    out.extend(right);
    out
}

fn leaf(o: &Outcome, default: u32) -> Vec<libc::sock_filter> {
    match o {
        Outcome::Default => vec![stmt(RET, default)],
        Outcome::Allow => vec![stmt(RET, libc::SECCOMP_RET_ALLOW)],
        Outcome::Errno(e) => vec![stmt(RET, libc::SECCOMP_RET_ERRNO | (e & libc::SECCOMP_RET_DATA))],
        Outcome::Conditional(rules) => {
            let mut out = Vec::new();
            for rule in rules {
                out.extend(rule_block(rule));
            }
            out.push(stmt(RET, default));
            out
        }
    }
}

/// Allows the syscall if every condition holds; otherwise falls through past its end.
fn rule_block(conds: &[Cond]) -> Vec<libc::sock_filter> {
    // Checks as (instructions, index in them of the jump that fails); fail offsets are
    // patched once the block's length is known.
    let mut out: Vec<libc::sock_filter> = Vec::new();
    let mut fails: Vec<(usize, bool)> = Vec::new(); // (index, fail on true)
    for c in conds {
        let words: &[(u32, u32)] = &if c.wide { vec![(0, c.mask as u32), (4, (c.mask >> 32) as u32)] } else { vec![(0, c.mask as u32)] };
        for &(off, mask) in words {
            let value = if off == 0 { c.value as u32 } else { (c.value >> 32) as u32 };
            out.push(stmt(LD_ABS, ARGS_OFFSET + 8 * c.index as u32 + off));
            if mask != u32::MAX {
                out.push(stmt(AND_K, mask));
            }
            out.push(jump(JEQ, value, 0, 0));
            fails.push((out.len() - 1, !c.equal));
        }
    }
    out.push(stmt(RET, libc::SECCOMP_RET_ALLOW));
    let end = out.len();
    for (i, on_true) in fails {
        let skip = (end - i - 1) as u8;
        if on_true { out[i].jt = skip } else { out[i].jf = skip }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_compiles_for_the_default_capabilities() {
        let p = compile(PROFILE, crate::caps::DEFAULT_CAPS).unwrap();
        assert!(!p.filter.is_empty() && p.filter.len() < 1024, "{} instructions", p.filter.len());
    }

    #[test]
    fn unknown_fields_and_capabilities_are_errors() {
        assert!(compile("default_errno = 1\n[[rule]]\nnames = [\"read\"]\nallow = true\n", &[]).is_err());
        assert!(compile("default_errno = 1\n[[rule]]\nnames = [\"read\"]\ncaps = [\"CAP_NOPE\"]\n", &[]).is_err());
    }
}
