//! Word expansion as BuildKit's shell lexer does it: quotes, escapes and the parameter
//! operators `$v ${v} ${v:-w} ${v-w} ${v:+w} ${v+w} ${v:?w} ${v?w} ${v#p} ${v##p} ${v%p}
//! ${v%%p} ${v/p/r} ${v//p/r}`.

use std::iter::Peekable;
use std::str::Chars;

/// Variables visible to an expansion.
pub trait Env {
    /// The value of `name`, or None if unset.
    fn get(&self, name: &str) -> Option<String>;
}

impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A quote was opened and never closed.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    /// `${` without a closing brace, or an operator we do not know.
    #[error("bad substitution in {0:?}")]
    BadSubstitution(String),
    /// The expansions of one word add up to more than [`MAX_EXPANSION`] bytes.
    #[error("expands to more than {} MiB (a variable that doubles each time it is reused?)", MAX_EXPANSION >> 20)]
    TooLong,
    /// `${a:-${b:-…}}` nested deeper than [`MAX_NESTING`].
    #[error("substitutions nested more than {MAX_NESTING} deep")]
    TooDeep,
    /// `${v:?message}` with v unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The user's message.
        message: String,
    },
}

/// The most one word may expand to, in bytes: far above any real use, and a bound on what
/// a Dockerfile whose variables grow each time they are reused can make rdock allocate.
pub const MAX_EXPANSION: usize = 1 << 20;

/// The deepest `${a:-${b:-…}}` nesting: the expander recurses once per level.
pub const MAX_NESTING: usize = 64;

/// The expander, configured with the escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    /// `\` or `` ` ``.
    pub escape: char,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer { escape: '\\' }
    }
}

struct Run<'a, E: Env + ?Sized> {
    chars: Peekable<Chars<'a>>,
    escape: char,
    env: &'a E,
    words: Option<Vec<String>>,
    cur: String,
    cur_started: bool,
    input: &'a str,
    /// Heredoc content: quotes are plain characters; the escape keeps the character after
    /// it, whatever it is, as BuildKit expands an unquoted COPY/ADD heredoc.
    heredoc: bool,
    /// Bytes substituted so far (bounded by [`MAX_EXPANSION`]).
    expanded: usize,
    /// Substitutions open around the current point (bounded by [`MAX_NESTING`]).
    depth: usize,
}

impl Lexer {
    /// Expands one word (quotes removed, variables substituted, no field splitting).
    pub fn process_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, ExpandError> {
        let mut r = Run {
            chars: word.chars().peekable(),
            escape: self.escape,
            env,
            words: None,
            cur: String::new(),
            cur_started: false,
            input: word,
            heredoc: false,
            expanded: 0,
            depth: 0,
        };
        let s = r.process(None)?;
        Ok(s)
    }

    /// Expands heredoc content (COPY/ADD `<<EOF` with an unquoted delimiter): variables
    /// are substituted, quotes are kept.
    pub fn process_heredoc<E: Env + ?Sized>(&self, content: &str, env: &E) -> Result<String, ExpandError> {
        let mut r = Run {
            chars: content.chars().peekable(),
            escape: '\\',
            env,
            words: None,
            cur: String::new(),
            cur_started: false,
            input: content,
            heredoc: true,
            expanded: 0,
            depth: 0,
        };
        r.process(None)
    }

    /// Expands and splits into words on unquoted white space (and in unquoted variable
    /// values), as for EXPOSE, VOLUME and COPY arguments.
    pub fn process_words<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<Vec<String>, ExpandError> {
        let mut r = Run {
            chars: word.chars().peekable(),
            escape: self.escape,
            env,
            words: Some(Vec::new()),
            cur: String::new(),
            cur_started: false,
            input: word,
            heredoc: false,
            expanded: 0,
            depth: 0,
        };
        let rest = r.process(None)?;
        let mut words = r.words.take().unwrap_or_default();
        if r.cur_started || !rest.is_empty() {
            words.push(rest);
        }
        Ok(words)
    }
}

impl<E: Env + ?Sized> Run<'_, E> {
    /// Processes until `stop` (unquoted) or the end; returns the text of the current word.
    fn process(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        while let Some(&c) = self.chars.peek() {
            if Some(c) == stop {
                self.chars.next();
                return Ok(std::mem::take(&mut self.cur));
            }
            if self.words.is_some() && stop.is_none() && c.is_whitespace() {
                self.chars.next();
                self.split_word();
                continue;
            }
            self.chars.next();
            if self.heredoc && c != '$' && c != self.escape {
                self.push(c);
                continue;
            }
            if self.heredoc && c == self.escape {
                // As BuildKit's lexer with SkipProcessQuotes: the escape keeps whatever
                // follows it (a newline too) and is itself dropped, at the very end as well.
                if let Some(n) = self.chars.next() {
                    self.push(n);
                }
                continue;
            }
            if c == self.escape {
                // An escape at the very end of the word is dropped, as BuildKit does.
                if let Some(n) = self.chars.next() {
                    self.push(n);
                }
            } else if c == '\'' {
                self.cur_started = true;
                let mut closed = false;
                for n in self.chars.by_ref() {
                    if n == '\'' {
                        closed = true;
                        break;
                    }
                    self.cur.push(n);
                }
                if !closed {
                    return Err(ExpandError::Unterminated("single-quote"));
                }
            } else if c == '"' {
                self.cur_started = true;
                self.double_quoted()?;
            } else if c == '$' {
                let v = self.substitute()?;
                if self.words.is_some() && stop.is_none() {
                    // Unquoted expansion is split into fields.
                    for (i, p) in v.split(char::is_whitespace).enumerate() {
                        if i > 0 {
                            self.split_word();
                        }
                        if !p.is_empty() {
                            self.push_str(p);
                        }
                    }
                } else {
                    self.push_str(&v);
                }
            } else {
                self.push(c);
            }
        }
        if stop.is_some() {
            return Err(ExpandError::BadSubstitution(self.input.to_string()));
        }
        Ok(std::mem::take(&mut self.cur))
    }

    fn push(&mut self, c: char) {
        self.cur.push(c);
        self.cur_started = true;
    }

    fn push_str(&mut self, s: &str) {
        self.cur.push_str(s);
        self.cur_started = true;
    }

    fn split_word(&mut self) {
        if self.cur_started {
            let w = std::mem::take(&mut self.cur);
            if let Some(ws) = self.words.as_mut() {
                ws.push(w);
            }
            self.cur_started = false;
        }
    }

    fn double_quoted(&mut self) -> Result<(), ExpandError> {
        loop {
            let Some(c) = self.chars.next() else {
                return Err(ExpandError::Unterminated("double-quote"));
            };
            if c == '"' {
                return Ok(());
            }
            if c == self.escape {
                match self.chars.peek().copied() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.chars.next();
                        self.cur.push(n);
                    }
                    Some(_) => self.cur.push(c),
                    None => return Err(ExpandError::Unterminated("double-quote")),
                }
            } else if c == '$' {
                let v = self.substitute()?;
                self.cur.push_str(&v);
            } else {
                self.cur.push(c);
            }
        }
    }

    /// BuildKit's processName: a run of digits (positional, always unset here), one
    /// special parameter (`@ * # ? - $ ! 0`, always unset), or letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.chars.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(&c) = self.chars.peek() {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    name.push(c);
                    self.chars.next();
                }
                return name;
            }
            Some(&c) if "@*#?-$!".contains(c) => {
                self.chars.next();
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(&c) = self.chars.peek() {
            if c.is_alphanumeric() || c == '_' {
                name.push(c);
                self.chars.next();
            } else {
                break;
            }
        }
        name
    }

    /// The value of a name; positional and special parameters are never set in a build.
    fn lookup(&self, name: &str) -> Option<String> {
        if name.starts_with(|c: char| c.is_ascii_digit() || "@*#?-$!".contains(c)) {
            return None;
        }
        self.env.get(name)
    }

    /// After a `$`: the substitution, counted against [`MAX_EXPANSION`].
    fn substitute(&mut self) -> Result<String, ExpandError> {
        let v = self.dollar()?;
        self.expanded += v.len();
        if self.expanded > MAX_EXPANSION {
            return Err(ExpandError::TooLong);
        }
        Ok(v)
    }

    /// After a `$`.
    ///
    /// Long on purpose (about 100 lines): one arm per substitution operator of BuildKit's
    /// processDollar (`:-`, `:+`, `:?`, `-`, `+`, `?`, `#`, `##`, `%`, `%%`, `/`, `//`),
    /// kept in its order so the two read side by side.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.chars.peek() != Some(&'{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.chars.next();
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError::BadSubstitution(self.input.to_string()));
        }
        let value = self.lookup(&name);
        let Some(op) = self.chars.next() else {
            return Err(ExpandError::BadSubstitution(self.input.to_string()));
        };
        match op {
            '}' => Ok(value.unwrap_or_default()),
            ':' => {
                let Some(op2) = self.chars.next() else {
                    return Err(ExpandError::BadSubstitution(self.input.to_string()));
                };
                let word = self.nested_word()?;
                let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
                match op2 {
                    '-' => Ok(if set_nonempty { value.unwrap_or_default() } else { word }),
                    '+' => Ok(if set_nonempty { word } else { String::new() }),
                    '?' => {
                        if set_nonempty {
                            Ok(value.unwrap_or_default())
                        } else {
                            Err(ExpandError::Required {
                                name,
                                message: if word.is_empty() { "is not allowed to be unset".into() } else { word },
                            })
                        }
                    }
                    _ => Err(ExpandError::BadSubstitution(self.input.to_string())),
                }
            }
            '-' | '+' | '?' => {
                let word = self.nested_word()?;
                match op {
                    '-' => Ok(value.unwrap_or(word)),
                    '+' => Ok(if value.is_some() { word } else { String::new() }),
                    _ => value.ok_or(ExpandError::Required {
                        name,
                        message: if word.is_empty() { "is not allowed to be unset".into() } else { word },
                    }),
                }
            }
            '#' | '%' => {
                let longest = self.chars.peek() == Some(&op);
                if longest {
                    self.chars.next();
                }
                let pattern = self.nested_word()?;
                let v = value.unwrap_or_default();
                Ok(trim_pattern(&v, &pattern, op == '#', longest))
            }
            '/' => {
                let all = self.chars.peek() == Some(&'/');
                if all {
                    self.chars.next();
                }
                let mut pattern = String::new();
                let mut replacement = String::new();
                let mut in_repl = false;
                loop {
                    let Some(c) = self.chars.next() else {
                        return Err(ExpandError::BadSubstitution(self.input.to_string()));
                    };
                    if c == '}' {
                        break;
                    }
                    if c == '/' && !in_repl {
                        in_repl = true;
                        continue;
                    }
                    if c == self.escape
                        && let Some(n) = self.chars.next()
                    {
                        if in_repl {
                            replacement.push(n)
                        } else {
                            pattern.push(n)
                        }
                        continue;
                    }
                    if in_repl { replacement.push(c) } else { pattern.push(c) }
                }
                let v = value.unwrap_or_default();
                Ok(replace_pattern(&v, &pattern, &replacement, all))
            }
            _ => Err(ExpandError::BadSubstitution(self.input.to_string())),
        }
    }

    /// The word of `${v:-word}` up to the closing brace, itself expanded.
    fn nested_word(&mut self) -> Result<String, ExpandError> {
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep);
        }
        self.depth += 1;
        let saved_words = self.words.take();
        let saved_cur = std::mem::take(&mut self.cur);
        let saved_started = self.cur_started;
        let w = self.process(Some('}'));
        self.words = saved_words;
        self.cur = saved_cur;
        self.cur_started = saved_started;
        self.depth -= 1;
        w
    }
}

/// Converts a shell glob to an anchored regex body.
fn glob_to_regex(p: &str) -> String {
    let mut out = String::new();
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                let mut class = String::from("[");
                let mut closed = false;
                if chars.peek() == Some(&'!') || chars.peek() == Some(&'^') {
                    chars.next();
                    class.push('^');
                }
                for n in chars.by_ref() {
                    if n == ']' {
                        closed = true;
                        break;
                    }
                    if n == '\\' {
                        class.push_str("\\\\");
                    } else {
                        class.push(n);
                    }
                }
                if closed {
                    class.push(']');
                    out.push_str(&class);
                } else {
                    out.push_str(&regex::escape("["));
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&regex::escape(&n.to_string()));
                }
            }
            _ => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out
}

fn trim_pattern(v: &str, pattern: &str, prefix: bool, longest: bool) -> String {
    let Ok(re) = regex::Regex::new(&format!("^(?s:{})$", glob_to_regex(pattern))) else {
        return v.to_string();
    };
    let bounds: Vec<usize> = v.char_indices().map(|(i, _)| i).chain(std::iter::once(v.len())).collect();
    if prefix {
        let iter: Box<dyn Iterator<Item = &usize>> = if longest { Box::new(bounds.iter().rev()) } else { Box::new(bounds.iter()) };
        for &i in iter {
            if re.is_match(&v[..i]) {
                return v[i..].to_string();
            }
        }
    } else {
        let iter: Box<dyn Iterator<Item = &usize>> = if longest { Box::new(bounds.iter()) } else { Box::new(bounds.iter().rev()) };
        for &i in iter {
            if re.is_match(&v[i..]) {
                return v[..i].to_string();
            }
        }
    }
    v.to_string()
}

fn replace_pattern(v: &str, pattern: &str, replacement: &str, all: bool) -> String {
    if pattern.is_empty() {
        return v.to_string();
    }
    // Shell replacement takes the longest match at the leftmost position.
    let Ok(re) = regex::Regex::new(&format!("(?s:{})", glob_to_regex(pattern))) else {
        return v.to_string();
    };
    if all {
        re.replace_all(v, regex::NoExpand(replacement)).into_owned()
    } else {
        re.replacen(v, 1, regex::NoExpand(replacement)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "hello world".into()), ("E".into(), "".into()), ("P".into(), "/usr/local/bin/tool.tar.gz".into())]
    }

    fn w(s: &str) -> String {
        Lexer::default().process_word(s, &env()).unwrap()
    }

    #[test]
    fn operators() {
        assert_eq!(w("$A"), "hello world");
        assert_eq!(w("${A}x"), "hello worldx");
        assert_eq!(w("${E:-d}"), "d");
        assert_eq!(w("${E-d}"), "");
        assert_eq!(w("${U-d}"), "d");
        assert_eq!(w("${A:+set}"), "set");
        assert_eq!(w("${E+set}"), "set");
        assert_eq!(w("${P#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(w("${P##*/}"), "tool.tar.gz");
        assert_eq!(w("${P%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${P%%.*}"), "/usr/local/bin/tool");
        assert_eq!(w("${A/o/0}"), "hell0 world");
        assert_eq!(w("${A//o/0}"), "hell0 w0rld");
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A\""), "hello world");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(w("${U:-${A}}"), "hello world");
        assert!(Lexer::default().process_word("${U:?missing}", &env()).is_err());
        assert!(Lexer::default().process_word("'open", &env()).is_err());
    }

    /// BuildKit's testCopyHeredocSpecialSymbols, unquoted half (the quoted half is not
    /// expanded at all).
    #[test]
    fn heredoc_escapes_keep_the_character_after_them() {
        let x = |s: &str| Lexer::default().process_heredoc(s, &env()).unwrap();
        assert_eq!(x("\\\n"), "\n");
        assert_eq!(x("\\\\\n"), "\\\n");
        assert_eq!(x("\\$\n"), "$\n");
        assert_eq!(x("a\\"), "a");
    }

    #[test]
    fn heredoc_content_keeps_quotes() {
        let out = Lexer::default().process_heredoc("echo \"$A\" '${E:-x}' \\$A\n", &env()).unwrap();
        assert_eq!(out, "echo \"hello world\" 'x' $A\n");
    }

    #[test]
    fn words_split_unquoted_values() {
        let ws = Lexer::default().process_words("a \"b c\" $A", &env()).unwrap();
        assert_eq!(ws, vec!["a", "b c", "hello", "world"]);
    }
}
