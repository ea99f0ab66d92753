//! Any bytes as a word to expand: every expansion mode must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdock_frontend::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env: Vec<(String, String)> = vec![("A".into(), "a b".into()), ("E".into(), String::new()), ("P".into(), "/x/y.tar.gz".into())];
    for escape in ['\\', '`'] {
        let l = Lexer { escape };
        let _ = l.process_word(text, &env);
        let _ = l.process_words(text, &env);
        let _ = l.process_heredoc(text, &env);
    }
});
