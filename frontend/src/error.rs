//! Errors that point into a Dockerfile, rendered like a compiler's: file, line and column,
//! the line itself, a caret under the offending part, and what was expected.

use std::fmt;

/// A place in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// The file name as the user gave it.
    pub file: String,
    /// First line, 1-based.
    pub start_line: usize,
    /// Last line (continuations), 1-based.
    pub end_line: usize,
    /// Column of the offending part on the first line, 1-based.
    pub column: usize,
    /// Width of the offending part in characters (0: one caret).
    pub width: usize,
    /// The text of the first line.
    pub source_line: String,
}

impl Location {
    /// A whole single line.
    pub fn line(file: &str, line: usize, text: &str) -> Location {
        Location {
            file: file.to_string(),
            start_line: line,
            end_line: line,
            column: 1,
            width: text.trim_end().chars().count(),
            source_line: text.to_string(),
        }
    }

    /// The same line, pointing at the first occurrence of `needle` (or unchanged).
    pub fn at(&self, needle: &str) -> Location {
        let mut l = self.clone();
        if !needle.is_empty()
            && let Some(p) = self.source_line.find(needle)
        {
            l.column = self.source_line[..p].chars().count() + 1;
            l.width = needle.chars().count();
        }
        l
    }
}

/// An error in a Dockerfile, with where it is and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DockerfileError {
    /// Where.
    pub location: Location,
    /// What is wrong.
    pub message: String,
    /// What would have been right, if that can be said.
    pub expected: Option<String>,
}

impl DockerfileError {
    /// An error at `location`.
    pub fn new(location: Location, message: impl Into<String>) -> DockerfileError {
        DockerfileError { location, message: message.into(), expected: None }
    }

    /// Adds what was expected.
    pub fn expected(mut self, what: impl Into<String>) -> DockerfileError {
        self.expected = Some(what.into());
        self
    }
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.location;
        let num = l.start_line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", l.file, l.start_line, l.column)?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{num} | {}", l.source_line.trim_end())?;
        let carets = "^".repeat(l.width.max(1));
        let lead: String = l.source_line.chars().take(l.column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        match &self.expected {
            Some(e) => write!(f, "{pad} | {lead}{carets} expected {e}"),
            None => write!(f, "{pad} | {lead}{carets}"),
        }
    }
}

/// Lines `lines` (1-based, inclusive) of the Dockerfile `file` whose text is `source`,
/// framed as a [`DockerfileError`] frames its line: for errors found while building (a
/// failed step, a missing COPY source), which know their lines but not a column. At most
/// eight lines are shown.
pub fn excerpt(file: &str, source: &str, lines: (usize, usize)) -> String {
    let (first, last) = (lines.0.max(1), lines.1.max(lines.0).min(lines.0 + 7));
    let pad = " ".repeat(last.to_string().len());
    let mut out = format!("{pad}--> {file}:{first}\n{pad} |");
    for (n, text) in source.lines().enumerate().map(|(i, t)| (i + 1, t)).filter(|(n, _)| (first..=last).contains(n)) {
        out.push_str(&format!("\n{n:>w$} | {}", text.trim_end(), w = pad.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_frame_the_lines_of_a_step() {
        let src = "FROM busybox\nRUN a \\\n  b\nCOPY x /\n";
        assert_eq!(excerpt("Dockerfile", src, (4, 4)), " --> Dockerfile:4\n  |\n4 | COPY x /");
        assert_eq!(excerpt("Dockerfile", src, (2, 3)), " --> Dockerfile:2\n  |\n2 | RUN a \\\n3 |   b");
    }

    #[test]
    fn renders_like_rustc() {
        let loc = Location::line("Dockerfile", 3, "FORM busybox").at("FORM");
        let e = DockerfileError::new(loc, "unknown instruction: FORM").expected("an instruction such as FROM");
        assert_eq!(
            e.to_string(),
            "error: unknown instruction: FORM\n --> Dockerfile:3:1\n  |\n3 | FORM busybox\n  | ^^^^ expected an instruction such as FROM"
        );
    }
}
