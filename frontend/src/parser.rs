//! The Dockerfile parser, a port of BuildKit's `frontend/dockerfile/parser`: directives,
//! comments, line continuations (and empty continuation lines), flags, and each
//! instruction's arguments split the way BuildKit's line parsers split them. The result
//! dumps in BuildKit's s-expression format, so it can be compared with BuildKit's own test
//! data. Instruction semantics live in `instructions.rs`; word expansion in `shell.rs`.

use crate::error::{DockerfileError, Location};
use std::fmt::Write;

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
        Directives { escape: '\\', syntax: None, check: None }
    }
}

/// One `KEY=VALUE` of ENV or LABEL; `sep` is `=` or empty for the legacy `KEY VALUE` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, quotes and escapes still in it.
    pub key: String,
    /// The value, quotes and escapes still in it.
    pub value: String,
    /// `=`, or empty for the legacy form.
    pub sep: String,
}

/// An instruction's arguments as BuildKit's line parsers split them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Nothing after the keyword.
    Empty,
    /// Plain strings (whitespace-delimited words, or the whole rest as one string).
    Words(Vec<String>),
    /// A JSON array of strings (exec form).
    Json(Vec<String>),
    /// ENV and LABEL pairs.
    KeyValues(Vec<KeyValue>),
    /// HEALTHCHECK: the type (`CMD`, `NONE`) and the command.
    Health {
        /// `CMD` or `NONE` as written.
        kind: String,
        /// The command after it.
        cmd: Box<Args>,
    },
    /// ONBUILD's trigger, itself an instruction.
    Sub(Box<RawInstruction>),
}

/// A heredoc attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter, quotes removed.
    pub name: String,
    /// The lines up to the delimiter, each ending in a newline.
    pub content: String,
    /// True unless the delimiter was quoted (then `$` is not expanded).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from content and delimiter lines.
    pub chomp: bool,
}

impl Heredoc {
    /// The content with `<<-` tab stripping applied.
    pub fn data(&self) -> String {
        if self.chomp { self.content.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect() } else { self.content.clone() }
    }
}

/// If `word` is a heredoc redirection (`<<EOF`, `<<-"EOF"`, `3<<EOF`): the delimiter,
/// whether content is expanded, and whether tabs are stripped.
pub fn heredoc_word(word: &str) -> Option<(String, bool, bool)> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let words = crate::shell::Lexer::default().process_words(rest, &Vec::<(String, String)>::new()).ok()?;
    let [name] = words.as_slice() else { return None };
    Some((name.clone(), !rest.contains(['"', '\'']), chomp))
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInstruction {
    /// The keyword in lower case (`run`).
    pub keyword: String,
    /// The keyword as written (`Run`).
    pub keyword_as_written: String,
    /// Leading `--name=value` flags, quotes removed as BuildKit does.
    pub flags: Vec<String>,
    /// The text after keyword and flags, trimmed.
    pub rest: String,
    /// The arguments, split.
    pub args: Args,
    /// The whole instruction, continuation lines joined.
    pub original: String,
    /// Heredocs read after the instruction's line, in order.
    pub heredocs: Vec<Heredoc>,
    /// The comment lines right above the instruction (text after `#`), for descriptions.
    pub comments: Vec<String>,
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
    /// Lines of instructions that contained empty continuation lines (BuildKit warns).
    pub empty_continuations: Vec<usize>,
}

const VALID_DIRECTIVES: &[&str] = &["syntax", "escape", "check"];

struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    /// BuildKit's DirectiveParser.ParseLine: `# key=value` lines until the first other line.
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start();
        let Some((k, v)) = rest.split_once('=') else {
            self.done = true;
            return Ok(None);
        };
        let k = k.trim_end();
        let v = v.trim();
        let key_ok = k.starts_with(|c: char| c.is_ascii_alphabetic()) && k.chars().all(|c| c.is_ascii_alphanumeric());
        if !key_ok || v.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let k = k.to_ascii_lowercase();
        if !VALID_DIRECTIVES.contains(&k.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&k) {
            return Err(format!("only one {k} parser directive can be used"));
        }
        self.seen.push(k.clone());
        Ok(Some((k, v.to_string())))
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// BuildKit's `([^\\])\\[ \t]*$|^\\[ \t]*$` with `$1`: strips a trailing escape.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(body) = t.strip_suffix(escape) {
        if body.is_empty() {
            return (String::new(), false);
        }
        if !body.ends_with(escape) {
            return (body.to_string(), false);
        }
    }
    (line.to_string(), true)
}

/// Go's `[\t\v\f\r ]+`.
fn is_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Parses `source`; `file` names it in errors.
pub fn parse(file: &str, source: &str) -> Result<Dockerfile, DockerfileError> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    // scanLines: lines keep their '\n' until trimNewline removes "\r\n".
    let lines: Vec<&str> = source.split_inclusive('\n').map(|l| l.trim_end_matches(['\r', '\n'])).collect();
    let mut sc =
        Scanner { file, lines: &lines, i: 0, directives: Directives::default(), dp: DirectiveParser { done: false, seen: Vec::new() } };
    let mut instructions = Vec::new();
    let mut empty_continuations = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    while sc.i < lines.len() {
        let raw = lines[sc.i];
        let token = raw.trim_start();
        if let Some(c) = token.strip_prefix('#') {
            let c = c.trim();
            if c.is_empty() { comments.clear() } else { comments.push(c.to_string()) }
        } else if token.is_empty() {
            comments.clear();
        }
        if sc.directive(token)? {
            // A directive is not a description comment.
            comments.pop();
        }
        let token = if is_comment(token) { "" } else { token };
        sc.i += 1;
        let start_line = sc.i;
        let Some((buf, had_empty)) = sc.logical_line(token) else { continue };
        if had_empty {
            empty_continuations.push(start_line);
        }
        let location = Location {
            file: file.to_string(),
            start_line,
            end_line: sc.i,
            column: raw.len() - raw.trim_start().len() + 1,
            width: 0,
            source_line: raw.to_string(),
        };
        let mut inst = node_from_line(&buf, sc.directives.escape, location)?;
        inst.comments = std::mem::take(&mut comments);
        if can_contain_heredoc(&inst) && buf.contains("<<") {
            sc.heredocs(&mut inst, &buf)?;
        }
        instructions.push(inst);
    }
    if instructions.is_empty() {
        return Err(DockerfileError::new(
            Location::line(file, lines.len().max(1), lines.last().copied().unwrap_or("")),
            "file with no instructions",
        )
        .expected("at least one instruction, such as FROM"));
    }
    Ok(Dockerfile { directives: sc.directives, instructions, empty_continuations })
}

/// The parser's place in the file's lines, and the directives read so far.
struct Scanner<'a> {
    file: &'a str,
    lines: &'a [&'a str],
    /// The next line to read, 0-based.
    i: usize,
    directives: Directives,
    dp: DirectiveParser,
}

impl Scanner<'_> {
    fn error_at(&self, line: usize, msg: String) -> DockerfileError {
        DockerfileError::new(Location::line(self.file, line, self.lines.get(line.saturating_sub(1)).copied().unwrap_or("")), msg)
    }

    /// Reads a parser directive (`# escape=`, `# syntax=`, `# check=`) on the current
    /// line, if it is one; true if it was.
    fn directive(&mut self, token: &str) -> Result<bool, DockerfileError> {
        let (k, v) = match self.dp.parse_line(token) {
            Ok(Some(kv)) => kv,
            Ok(None) => return Ok(false),
            Err(m) => return Err(self.error_at(self.i + 1, m)),
        };
        match k.as_str() {
            "escape" => {
                self.directives.escape = match v.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(self
                            .error_at(self.i + 1, format!("invalid escape token '{v}' does not match ` or \\"))
                            .expected("`\\` or a backtick"));
                    }
                }
            }
            "syntax" => self.directives.syntax = Some(v),
            _ => self.directives.check = Some(v),
        }
        Ok(true)
    }

    /// The instruction starting with `token`, continuation lines joined (comments and
    /// empty lines within it skipped), and whether an empty line was skipped; None for
    /// nothing (an empty line, a comment, a lone continuation).
    fn logical_line(&mut self, token: &str) -> Option<(String, bool)> {
        let escape = self.directives.escape;
        let (first, mut end_of_line) = trim_continuation(token, escape);
        if end_of_line && first.is_empty() {
            return None;
        }
        let mut buf = first;
        let mut had_empty = false;
        while !end_of_line && self.i < self.lines.len() {
            let next = self.lines[self.i];
            self.i += 1;
            if is_comment(next) {
                continue;
            }
            if next.trim_start().is_empty() {
                had_empty = true;
                continue;
            }
            let (t, eol) = trim_continuation(next, escape);
            buf.push_str(&t);
            end_of_line = eol;
        }
        Some((buf, had_empty))
    }

    /// Reads the bodies of the heredocs `buf` opens, from the lines after it.
    fn heredocs(&mut self, inst: &mut RawInstruction, buf: &str) -> Result<(), DockerfileError> {
        for word in parse_words(buf, '\\') {
            let Some((name, expand, chomp)) = heredoc_word(&word) else { continue };
            let mut content = String::new();
            let mut terminated = false;
            while self.i < self.lines.len() {
                let line = self.lines[self.i];
                self.i += 1;
                let candidate = if chomp { line.trim_start_matches('\t') } else { line };
                if candidate == name {
                    terminated = true;
                    break;
                }
                content.push_str(line);
                content.push('\n');
            }
            if !terminated {
                return Err(DockerfileError::new(inst.location.at(&word), format!("unterminated heredoc {name:?}"))
                    .expected(format!("a line with just {name} to end it")));
            }
            inst.heredocs.push(Heredoc { name, content, expand, chomp });
        }
        inst.location.end_line = self.i;
        if let Args::Sub(child) = &mut inst.args {
            child.heredocs = inst.heredocs.clone();
        }
        Ok(())
    }
}

/// BuildKit's newNodeFromLine: split off the keyword and flags, then the arguments.
fn node_from_line(line: &str, escape: char, location: Location) -> Result<RawInstruction, DockerfileError> {
    let t = line.trim();
    let (kw, rest) = match t.find(is_ws) {
        Some(p) => (&t[..p], t[p..].trim_start_matches(is_ws)),
        None => (t, ""),
    };
    let (rest, flags) = extract_flags(rest, escape);
    let rest = rest.trim().to_string();
    let keyword = kw.to_ascii_lowercase();
    let mut loc = location;
    loc.width = kw.chars().count();
    let fail = |m: String| DockerfileError::new(loc.clone(), m);
    let args = match keyword.as_str() {
        "add" | "copy" | "volume" => maybe_json_list(&rest).map_err(fail)?,
        "arg" => words_or_empty(parse_words(&rest, escape)),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(&rest).map_err(fail)?,
        "env" | "label" => name_values(&rest, &keyword.to_ascii_uppercase(), escape).map_err(fail)?,
        "expose" | "from" => whitespace_delimited(&rest),
        "healthcheck" => health(&rest).map_err(fail)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Words(vec![rest.clone()])
            }
        }
        "onbuild" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Sub(Box::new(node_from_line(&rest, escape, loc.clone())?))
            }
        }
        _ => Args::Empty,
    };
    Ok(RawInstruction {
        keyword,
        keyword_as_written: kw.to_string(),
        flags,
        rest,
        args,
        original: t.to_string(),
        location: loc,
        heredocs: Vec::new(),
        comments: Vec::new(),
    })
}

fn can_contain_heredoc(inst: &RawInstruction) -> bool {
    let kw = match &inst.args {
        Args::Sub(child) if inst.keyword == "onbuild" => child.keyword.as_str(),
        _ => inst.keyword.as_str(),
    };
    matches!(kw, "run" | "copy" | "add")
}

fn words_or_empty(w: Vec<String>) -> Args {
    if w.is_empty() { Args::Empty } else { Args::Words(w) }
}

/// BuildKit's extractBuilderFlags: leading `--…` words, quotes removed, escapes applied.
///
/// Long on purpose (about 95 lines): a state machine (spaces, word, quote) ported from
/// BuildKit's function of the same name and kept whole, so that the two can be compared
/// state by state.
fn extract_flags(line: &str, escape: char) -> (String, Vec<String>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut blank_ok = false;
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut phase = Phase::Spaces;
    let mut k = 0;
    loop {
        let at_end = k >= chars.len();
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            let (pos, ch) = chars[k];
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            if ch != '-' || chars.get(k + 1).map(|c| c.1) != Some('-') {
                return (line[pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if cur != "--" && (blank_ok || !cur.is_empty()) {
                words.push(cur);
            }
            break;
        }
        let (pos, ch) = chars[k];
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    if cur == "--" {
                        return (line[pos..].to_string(), words);
                    }
                    if blank_ok || !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    cur.clear();
                    blank_ok = false;
                    phase = Phase::Spaces;
                    k += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    k += 1;
                    continue;
                }
                if ch == escape {
                    if k + 1 == chars.len() {
                        k += 1;
                        continue;
                    }
                    k += 1;
                    cur.push(chars[k].1);
                    k += 1;
                    continue;
                }
                cur.push(ch);
                k += 1;
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                    k += 1;
                    continue;
                }
                if ch == escape {
                    if k + 1 == chars.len() {
                        phase = Phase::Word;
                        k += 1;
                        continue;
                    }
                    k += 1;
                    cur.push(chars[k].1);
                    k += 1;
                    continue;
                }
                cur.push(ch);
                k += 1;
            }
            Phase::Spaces => {}
        }
    }
    (String::new(), words)
}

/// BuildKit's parseWords: words split on unquoted white space, quotes and escapes kept.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut blank_ok = false;
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut k = 0;
    while k <= chars.len() {
        if k == chars.len() {
            if (in_word || quote.is_some()) && (blank_ok || !cur.is_empty()) {
                words.push(cur);
            }
            break;
        }
        let ch = chars[k];
        if !in_word && quote.is_none() {
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            in_word = true;
        }
        // The escape (never a quote character) keeps itself and the next character, except
        // inside single quotes; a trailing one is dropped and ends an open quote.
        if ch == escape && quote != Some('\'') {
            if k + 1 == chars.len() {
                quote = None;
                k += 1;
                continue;
            }
            cur.push(ch);
            cur.push(chars[k + 1]);
            k += 2;
            continue;
        }
        if let Some(q) = quote {
            if ch == q {
                quote = None;
                in_word = true;
            }
            cur.push(ch);
            k += 1;
            continue;
        }
        if ch.is_whitespace() {
            in_word = false;
            if blank_ok || !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            blank_ok = false;
            k += 1;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        cur.push(ch);
        k += 1;
    }
    words
}

fn name_values(rest: &str, key: &str, escape: char) -> Result<Args, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Args::Empty);
    }
    if !words[0].contains('=') {
        let mut parts = rest.splitn(2, is_ws);
        let k = parts.next().unwrap_or("");
        let v = parts.next().map(|v| v.trim_start_matches(is_ws));
        return match v {
            Some(v) => Ok(Args::KeyValues(vec![KeyValue { key: k.to_string(), value: v.to_string(), sep: String::new() }])),
            None => Err(format!("{key} must have two arguments")),
        };
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"));
        };
        out.push(KeyValue { key: k.to_string(), value: v.to_string(), sep: "=".to_string() });
    }
    Ok(Args::KeyValues(out))
}

fn whitespace_delimited(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::Empty;
    }
    Args::Words(rest.split(is_ws).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

enum JsonErr {
    NotJson,
    NotStrings,
}

fn parse_json(rest: &str) -> Result<Vec<String>, JsonErr> {
    let t = rest.trim_start();
    if !t.starts_with('[') {
        return Err(JsonErr::NotJson);
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(t).map_err(|_| JsonErr::NotJson)?;
    values.into_iter().map(|v| if let serde_json::Value::String(s) = v { Ok(s) } else { Err(JsonErr::NotStrings) }).collect()
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn maybe_json(rest: &str) -> Result<Args, String> {
    if rest.is_empty() {
        return Ok(Args::Empty);
    }
    match parse_json(rest) {
        Ok(v) => Ok(Args::Json(v)),
        Err(JsonErr::NotStrings) => Err(NOT_STRINGS.into()),
        Err(JsonErr::NotJson) => Ok(Args::Words(vec![rest.to_string()])),
    }
}

fn maybe_json_list(rest: &str) -> Result<Args, String> {
    match parse_json(rest) {
        Ok(v) => Ok(Args::Json(v)),
        Err(JsonErr::NotStrings) => Err(NOT_STRINGS.into()),
        Err(JsonErr::NotJson) => Ok(whitespace_delimited(rest)),
    }
}

fn health(rest: &str) -> Result<Args, String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Args::Empty);
    }
    let kind = rest[..sep].to_string();
    let cmd = maybe_json(rest[sep..].trim_start())?;
    Ok(Args::Health { kind, cmd: Box::new(cmd) })
}

/// Go's strconv.Quote.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Args {
    fn dump_into(&self, out: &mut String) {
        match self {
            Args::Empty => {}
            Args::Words(v) | Args::Json(v) => {
                for w in v {
                    out.push(' ');
                    out.push_str(&go_quote(w));
                }
            }
            Args::KeyValues(kvs) => {
                for kv in kvs {
                    for part in [&kv.key, &kv.value, &kv.sep] {
                        out.push(' ');
                        out.push_str(&go_quote(part));
                    }
                }
            }
            Args::Health { kind, cmd } => {
                out.push(' ');
                out.push_str(&go_quote(kind));
                cmd.dump_into(out);
            }
            Args::Sub(child) => {
                out.push_str(" (");
                out.push_str(&child.dump());
                out.push(')');
            }
        }
    }
}

impl RawInstruction {
    /// BuildKit's Node.Dump: `run ["--flag"] "arg"` (without the surrounding parentheses).
    pub fn dump(&self) -> String {
        let mut out = self.keyword.clone();
        if !self.flags.is_empty() {
            out.push_str(" [");
            out.push_str(&self.flags.iter().map(|f| go_quote(f)).collect::<Vec<_>>().join(" "));
            out.push(']');
        }
        self.args.dump_into(&mut out);
        out.trim().to_string()
    }
}

impl Dockerfile {
    /// The whole AST in BuildKit's dump format, one `(instruction …)` per line.
    pub fn dump(&self) -> String {
        self.instructions.iter().map(|i| format!("({})\n", i.dump())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_directives() {
        let df = "# escape=`\n# syntax=docker/dockerfile:1\nFROM busybox\n# comment\nRUN echo a `\n  # inner comment\n  && echo b\n\nCOPY --from=x --chown=\"1:2\" a /b\n";
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
        assert_eq!(copy.dump(), r#"copy ["--from=x" "--chown=1:2"] "a" "/b""#);
    }

    #[test]
    fn bad_escape_directive_is_an_error_with_a_line() {
        let err = parse("Dockerfile", "# escape=x\nFROM a\n").unwrap_err();
        assert_eq!(err.location.start_line, 1);
        assert!(err.to_string().contains("invalid escape token"));
    }

    #[test]
    fn heredocs_are_read_with_their_lines() {
        let df = "FROM x\nRUN <<EOF\necho a\necho b\nEOF\nCOPY <<-\"A\" <<B /dst/\n\tone $X\n\tA\ntwo\nB\nRUN echo after\n";
        let d = parse("Dockerfile", df).unwrap();
        let run = &d.instructions[1];
        assert_eq!(run.heredocs, vec![Heredoc { name: "EOF".into(), content: "echo a\necho b\n".into(), expand: true, chomp: false }]);
        assert_eq!((run.location.start_line, run.location.end_line), (2, 5));
        let copy = &d.instructions[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].data(), "one $X\n");
        assert!(!copy.heredocs[0].expand && copy.heredocs[1].expand);
        assert_eq!(d.instructions[3].rest, "echo after");
        assert!(parse("Dockerfile", "FROM x\nRUN <<EOF\nnever ends\n").unwrap_err().to_string().contains("unterminated heredoc"));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\td\u{1b}"), r#""a\"b\\c\td\x1b""#);
        assert_eq!(go_quote("한국어"), "\"한국어\"");
    }
}
