//! `--chmod` values: octal (`0755`) or symbolic (`u=rwx,go=rx`, `a+X`, `g-w`), applied to
//! each copied file's own mode, as chmod(1) does (ignoring the umask).

use serde::{Deserialize, Serialize};

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chmod {
    /// Absolute permission bits.
    Octal(u32),
    /// chmod(1) clauses, validated.
    Symbolic(String),
}

/// Why a `--chmod` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chmod value {0:?}: expected octal (0755) or symbolic (u=rwx,go=rx)")]
pub struct ChmodError(pub String);

impl Chmod {
    /// Parses octal or symbolic notation.
    pub fn parse(s: &str) -> Result<Chmod, ChmodError> {
        if !s.is_empty() && s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777).map(Chmod::Octal).ok_or_else(|| ChmodError(s.into()));
        }
        let c = Chmod::Symbolic(s.to_string());
        c.try_apply(0, false).map(|_| c).ok_or_else(|| ChmodError(s.into()))
    }

    /// The new mode of an entry whose mode is `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        self.try_apply(mode, is_dir).unwrap_or(mode)
    }

    fn try_apply(&self, mode: u32, is_dir: bool) -> Option<u32> {
        let s = match self {
            Chmod::Octal(m) => return Some(*m),
            Chmod::Symbolic(s) => s,
        };
        let mut mode = mode & 0o7777;
        for clause in s.split(',') {
            let ops_at = clause.find(['+', '-', '='])?;
            let (who, mut rest) = clause.split_at(ops_at);
            let mut mask = 0u32;
            for c in who.chars() {
                mask |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return None,
                };
            }
            if who.is_empty() {
                mask = 0o7777;
            }
            while !rest.is_empty() {
                let op = rest.chars().next()?;
                if !matches!(op, '+' | '-' | '=') {
                    return None;
                }
                rest = &rest[1..];
                let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
                let (perms, tail) = rest.split_at(end);
                rest = tail;
                let mut bits = 0u32;
                for p in perms.chars() {
                    bits |= match p {
                        'r' => 0o444,
                        'w' => 0o222,
                        'x' => 0o111,
                        'X' if is_dir || mode & 0o111 != 0 => 0o111,
                        'X' => 0,
                        's' => 0o6000,
                        't' => 0o1000,
                        _ => return None,
                    };
                }
                let bits = bits & mask;
                mode = match op {
                    '+' => mode | bits,
                    '-' => mode & !bits,
                    _ => (mode & !(mask & 0o777 | mask & 0o7000)) | bits,
                };
            }
        }
        Some(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("u=rwx,go=rx").unwrap().apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("a+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("g-w,o-r").unwrap().apply(0o664, false), 0o640);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, false), 0o644);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, true), 0o755);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
        assert!(Chmod::parse("z+x").is_err());
        assert!(Chmod::parse("u*x").is_err());
        assert!(Chmod::parse("99999").is_err());
    }
}
