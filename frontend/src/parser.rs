//! The Dockerfile parser: directives, comments, line continuations and flags, to a list
//! of raw instructions with their source spans. Instruction semantics live in
//! `instructions.rs`; word expansion in `shell.rs`.

use crate::error::{DockerfileError, Location};

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=`: recorded, never fetched.
    pub syntax: Option<String>,
    /// `# check=`: recorded for the build checks.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// One instruction as written: keyword, flags and the rest of its (joined) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInstruction {
    /// The keyword in lower case (`run`).
    pub keyword: String,
    /// The keyword as written (`Run`).
    pub keyword_as_written: String,
    /// Leading `--name=value` flags, as written.
    pub flags: Vec<String>,
    /// The text after keyword and flags, continuation lines joined, trimmed.
    pub rest: String,
    /// The whole instruction text, continuation lines joined.
    pub original: String,
    /// Where it starts and ends.
    pub location: Location,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// Directives.
    pub directives: Directives,
    /// Instructions in order.
    pub instructions: Vec<RawInstruction>,
}

/// Parses `source`; `file` names it in errors.
pub fn parse(file: &str, source: &str) -> Result<Dockerfile, DockerfileError> {
    let lines: Vec<&str> = source
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut directives = Directives::default();
    let mut i = 0;
    // Directives: `# key=value` lines before anything else; the first other line ends them.
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        let key = key.to_ascii_lowercase();
        let loc = Location::line(file, i + 1, lines[i]);
        match key.as_str() {
            "escape" => {
                directives.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(DockerfileError::new(
                            loc,
                            format!("invalid escape token '{value}'"),
                        )
                        .expected("`\\` or a backtick"));
                    }
                }
            }
            "syntax" => directives.syntax = Some(value),
            "check" => directives.check = Some(value),
            _ => break,
        }
        i += 1;
    }
    let escape = directives.escape;
    let mut instructions = Vec::new();
    let mut offsets = Vec::with_capacity(lines.len());
    let mut off = 0;
    for l in source.split('\n') {
        offsets.push(off);
        off += l.len() + 1;
    }
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut text = String::new();
        let mut cur = line.to_string();
        loop {
            let (body, continues) = split_continuation(&cur, escape);
            text.push_str(body);
            if !continues {
                break;
            }
            // Skip comment lines and empty lines inside a continuation, as BuildKit does.
            i += 1;
            loop {
                if i >= lines.len() {
                    break;
                }
                let t = lines[i].trim_start();
                if t.starts_with('#') || t.is_empty() {
                    i += 1;
                    continue;
                }
                break;
            }
            if i >= lines.len() {
                // A continuation at the end of the file ends the instruction.
                i = lines.len() - 1;
                break;
            }
            cur = lines[i].to_string();
        }
        let end = i;
        let location = Location {
            file: file.to_string(),
            start_line: start + 1,
            end_line: end + 1,
            column: line.len() - trimmed.len() + 1,
            width: 0,
            source_line: line.to_string(),
        };
        instructions.push(split_instruction(&text, location)?);
        i += 1;
    }
    Ok(Dockerfile {
        directives,
        instructions,
    })
}

fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?.trim();
    let (k, v) = rest.split_once('=')?;
    let k = k.trim();
    if k.is_empty()
        || !k.chars().all(|c| c.is_ascii_alphanumeric())
        || !k.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return None;
    }
    Some((k.to_string(), v.trim().to_string()))
}

/// Returns the line without a trailing escape (and the whitespace after it), and whether it
/// continues onto the next line.
fn split_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end();
    if let Some(body) = t.strip_suffix(escape) {
        // An escaped escape (`\\` at the end) does not continue.
        let esc_count = body.chars().rev().take_while(|c| *c == escape).count();
        if esc_count % 2 == 0 {
            return (body, true);
        }
    }
    (line, false)
}

fn split_instruction(text: &str, location: Location) -> Result<RawInstruction, DockerfileError> {
    let t = text.trim();
    let (kw, rest) = match t.find(char::is_whitespace) {
        Some(p) => (&t[..p], t[p..].trim_start()),
        None => (t, ""),
    };
    let mut flags = Vec::new();
    let mut rest = rest;
    // Leading `--flag[=value]` words; `--` alone ends them.
    while let Some(r) = rest.strip_prefix("--") {
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let word = &r[..end];
        if word.is_empty() {
            rest = r[end..].trim_start();
            break;
        }
        flags.push(format!("--{word}"));
        rest = r[end..].trim_start();
    }
    let mut loc = location;
    loc.width = kw.len();
    Ok(RawInstruction {
        keyword: kw.to_ascii_lowercase(),
        keyword_as_written: kw.to_string(),
        flags,
        rest: rest.to_string(),
        original: t.to_string(),
        location: loc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_directives() {
        let df = "# escape=`\n# syntax=docker/dockerfile:1\nFROM busybox\n# comment\nRUN echo a `\n  # inner comment\n  && echo b\n\nCOPY --from=x --chown=1:2 a /b\n";
        let d = parse("Dockerfile", df).unwrap();
        assert_eq!(d.directives.escape, '`');
        assert_eq!(d.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.instructions.len(), 3);
        let run = &d.instructions[1];
        assert_eq!(run.keyword, "run");
        assert_eq!(run.rest, "echo a   && echo b");
        assert_eq!((run.location.start_line, run.location.end_line), (5, 7));
        let copy = &d.instructions[2];
        assert_eq!(copy.flags, vec!["--from=x", "--chown=1:2"]);
        assert_eq!(copy.rest, "a /b");
    }

    #[test]
    fn bad_escape_directive_is_an_error_with_a_line() {
        let err = parse("Dockerfile", "# escape=x\nFROM a\n").unwrap_err();
        assert_eq!(err.location.start_line, 1);
        assert!(err.to_string().contains("invalid escape token"));
    }
}
