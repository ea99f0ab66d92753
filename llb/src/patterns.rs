//! Path patterns, with the semantics of Go's `moby/patternmatcher` (exclude patterns of a
//! local source: `.dockerignore`, `COPY --exclude`) and `filepath.Match` (COPY source
//! wildcards). They live in `llb` because they define what a local source op includes,
//! and both the solver (hashing) and the worker (copying) must agree on it.

use regex::Regex;

/// A pattern that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Pattern {
    re: Regex,
    exclusion: bool,
}

/// An ordered list of patterns; the last one that matches a path decides, and a path is
/// also matched when one of its parent directories is.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exclusions: bool,
}

/// Lexically cleans a slash path like Go's `path.Clean`, without a leading `/`.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    if out.is_empty() { ".".to_string() } else { out.join("/") }
}

impl PatternMatcher {
    /// Compiles patterns; `!pattern` re-includes.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PatternMatcher, PatternError> {
        let mut out = Vec::new();
        let mut has_exclusions = false;
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let (exclusion, body) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p),
            };
            if body.is_empty() {
                return Err(PatternError { pattern: p.to_string(), reason: "illegal exclusion pattern: \"!\"".into() });
            }
            has_exclusions |= exclusion;
            let cleaned = clean_path(body);
            let re = Regex::new(&pattern_regex(&cleaned)).map_err(|e| PatternError { pattern: p.to_string(), reason: e.to_string() })?;
            out.push(Pattern { re, exclusion });
        }
        Ok(PatternMatcher { patterns: out, has_exclusions })
    }

    /// True if there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True if some pattern re-includes (then an excluded directory must still be walked).
    pub fn has_exclusions(&self) -> bool {
        self.has_exclusions
    }

    /// Whether `path` (relative, slash-separated) is matched by the patterns, taking parent
    /// directories into account.
    pub fn matches(&self, path: &str) -> bool {
        let path = clean_path(path);
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut matched = false;
        for p in &self.patterns {
            // Only a pattern that could flip the result needs checking.
            if p.exclusion != matched {
                continue;
            }
            let mut m = p.re.is_match(&path);
            if !m {
                m = parents.iter().any(|parent| p.re.is_match(parent));
            }
            if m {
                matched = !p.exclusion;
            }
        }
        matched
    }
}

/// Go patternmatcher's regex for a cleaned pattern.
fn pattern_regex(p: &str) -> String {
    let mut re = String::from("^");
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' => {
                if chars.get(i + 1) == Some(&'*') {
                    i += 1;
                    // `**/` at any depth, `**` at the end matches everything.
                    if chars.get(i + 1) == Some(&'/') {
                        i += 1;
                    }
                    if i + 1 >= chars.len() {
                        re.push_str(".*");
                    } else {
                        re.push_str("(.*/)?");
                    }
                } else {
                    re.push_str("[^/]*");
                }
            }
            '?' => re.push_str("[^/]"),
            '[' => {
                let mut j = i + 1;
                let mut class = String::from("[");
                if chars.get(j) == Some(&'^') || chars.get(j) == Some(&'!') {
                    class.push('^');
                    j += 1;
                }
                let mut closed = false;
                while j < chars.len() {
                    if chars[j] == ']' {
                        closed = true;
                        break;
                    }
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                    }
                    class.push_str(&regex::escape(&chars[j].to_string()));
                    j += 1;
                }
                if closed {
                    class.push(']');
                    re.push_str(&class);
                    i = j;
                } else {
                    re.push_str("\\[");
                }
            }
            '\\' => {
                i += 1;
                if let Some(n) = chars.get(i) {
                    re.push_str(&regex::escape(&n.to_string()));
                }
            }
            _ => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    re
}

/// Go's `filepath.Match` for one path: `*` and `?` never cross `/`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let cleaned = clean_path(pattern);
    let mut body = pattern_regex(&cleaned);
    // `**` is not special in filepath.Match; pattern_regex only widens it, which is harmless
    // for COPY sources because BuildKit accepts it there too.
    body = body.replace("(.*/)?", "[^/]*");
    Regex::new(&body).map(|re| re.is_match(&clean_path(name))).unwrap_or(false)
}

/// True if the pattern has a wildcard character.
pub fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_semantics() {
        let m = PatternMatcher::new(&["*.md", "!README.md", "build", "**/*.o", "/tmp/**"]).unwrap();
        assert!(m.matches("notes.md"));
        assert!(!m.matches("README.md"));
        assert!(!m.matches("docs/notes.md"), "* does not cross directories");
        assert!(m.matches("build/out/x"), "a matched parent excludes its children");
        assert!(m.matches("a/b/c.o"));
        assert!(m.matches("c.o"));
        assert!(m.matches("tmp/x/y"));
        assert!(!m.matches("src/main.rs"));
    }

    #[test]
    fn last_match_wins() {
        let m = PatternMatcher::new(&["!a", "a"]).unwrap();
        assert!(m.matches("a"));
        let m = PatternMatcher::new(&["a", "!a"]).unwrap();
        assert!(!m.matches("a"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "d/a.txt"));
        assert!(glob_match("d/?.txt", "d/a.txt"));
        assert!(glob_match("[ab].txt", "b.txt"));
        assert_eq!(clean_path("./a/../b//c/"), "b/c");
    }
}
