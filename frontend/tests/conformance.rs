//! BuildKit's own parser and shell-lexer test data (tests/data/buildkit, see its README for
//! origin and licence), read as tables: every Dockerfile in `testfiles` must dump to its `result`,
//! every one in `testfiles-negative` must be rejected, `parser-line` must give the right
//! line ranges, and the expansion tables must hold for the A and U cases.

use rdock_frontend::parser::parse;
use rdock_frontend::shell::Lexer;
use std::path::PathBuf;

fn data() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/buildkit");
    assert!(p.is_dir(), "{} is missing", p.display());
    p
}

fn cases(dir: &str) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> =
        std::fs::read_dir(data().join(dir)).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect();
    v.sort();
    v
}

#[test]
fn testfiles_dump_to_buildkits_results() {
    let mut failures = Vec::new();
    let all = cases("testfiles");
    assert!(all.len() >= 33, "expected the 33 cases, found {}", all.len());
    for (name, dir) in &all {
        let source = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let expected = std::fs::read_to_string(dir.join("result")).unwrap();
        match parse("Dockerfile", &source) {
            Ok(df) => {
                let got = df.dump();
                if got.trim_end() != expected.trim_end() {
                    failures.push(format!("== {name}\n-- expected\n{expected}\n-- got\n{got}"));
                }
            }
            Err(e) => failures.push(format!("== {name}: rejected: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), all.len(), failures.join("\n"));
}

#[test]
fn negative_testfiles_are_rejected_with_a_location() {
    for (name, dir) in cases("testfiles-negative") {
        let source = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
        match parse("Dockerfile", &source) {
            Ok(df) => panic!("{name} was accepted: {}", df.dump()),
            Err(e) => assert!(e.location.start_line >= 1, "{name}: {e}"),
        }
    }
}

#[test]
fn parser_line_ranges() {
    let source = std::fs::read_to_string(data().join("parser-line/Dockerfile")).unwrap();
    let df = parse("Dockerfile", &source).unwrap();
    let ranges: Vec<(usize, usize)> = df.instructions.iter().map(|i| (i.location.start_line, i.location.end_line)).collect();
    assert_eq!(ranges, vec![(5, 5), (11, 12), (17, 31)]);
}

fn env_var_env() -> Vec<(String, String)> {
    vec![("PWD".into(), "/home".into()), ("SHELL".into(), "bash".into()), ("KOREAN".into(), "한국어".into()), ("NULL".into(), "".into())]
}

#[test]
fn env_var_expansion_table() {
    let text = std::fs::read_to_string(data().join("shell/envVarTest")).unwrap();
    let env = env_var_env();
    let lexer = Lexer::default();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        if fields.len() != 3 || !(fields[0].contains('A') || fields[0].contains('U')) {
            continue;
        }
        n += 1;
        let (input, expected) = (fields[1], fields[2]);
        match (lexer.process_word(input, &env), expected) {
            (Err(_), "error") => {}
            (Ok(got), exp) if got == exp => {}
            (got, exp) => failures.push(format!("{input:?}: expected {exp:?}, got {got:?}")),
        }
    }
    assert!(n > 100, "only {n} cases read");
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn words_table() {
    let text = std::fs::read_to_string(data().join("shell/wordsTest")).unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    let lexer = Lexer::default();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // Read as BuildKit's TestShellParserWords does: ENV values and expected words
        // keep their trailing spaces.
        if let Some(kv) = line.strip_prefix("ENV ") {
            let kv = kv.trim_start_matches(' ');
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let Some((input, expected)) = line.split_once('|') else {
            continue;
        };
        n += 1;
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = lexer.process_words(input, &env).unwrap_or_else(|_| vec!["error".to_string()]);
        if got != expected {
            failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(n > 5, "only {n} cases read");
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}
