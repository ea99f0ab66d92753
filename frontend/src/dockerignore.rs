//! `.dockerignore`: one pattern per line, `#` comments, blank lines skipped, paths
//! cleaned and made relative, as Docker's `ignorefile.ReadAll` does. Matching itself is
//! `rdock_llb::patterns::PatternMatcher`.

/// Reads the patterns of a `.dockerignore` file.
pub fn parse(content: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in content.lines() {
        let line = line.trim_start_matches('\u{feff}');
        if line.starts_with('#') {
            continue;
        }
        let mut p = line.trim().to_string();
        if p.is_empty() {
            continue;
        }
        let mut invert = false;
        if let Some(rest) = p.strip_prefix('!') {
            invert = true;
            p = rest.trim().to_string();
        }
        if !p.is_empty() {
            let cleaned = rdock_llb::patterns::clean_path(&p);
            p = if cleaned == "." && p != "." { p } else { cleaned };
        }
        out.push(if invert { format!("!{p}") } else { p });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_patterns() {
        let p = super::parse("# comment\n\n/secret.txt\n!keep/../keep.md\n  build/  \n");
        assert_eq!(p, vec!["secret.txt", "!keep.md", "build"]);
    }
}
