//! Generated container names, `adjective_scientist` as Docker makes them, so that
//! `rdock ps -a` reads like `docker ps -a` and a container can be named in `rm`/`commit`
//! without copying its id.

const LEFT: &[&str] = &[
    "admiring",
    "brave",
    "clever",
    "dazzling",
    "eager",
    "festive",
    "gallant",
    "happy",
    "inspiring",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const RIGHT: &[&str] = &[
    "agnesi", "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "italiani", "johnson", "kepler", "lovelace", "meitner",
    "noether", "ohm", "pasteur", "quimby", "ritchie", "shannon", "turing", "ullman", "volta", "wozniak", "yonath", "zuse",
];

/// A name from two bytes of `seed` (the container id's), with a number appended on
/// the `attempt`-th retry after a clash.
pub fn generate(seed: &[u8], attempt: u32) -> String {
    let l = LEFT[seed.first().copied().unwrap_or(0) as usize % LEFT.len()];
    let r = RIGHT[seed.get(1).copied().unwrap_or(0) as usize % RIGHT.len()];
    if attempt == 0 { format!("{l}_{r}") } else { format!("{l}_{r}{attempt}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_docker_shaped_and_retries_differ() {
        assert_eq!(super::generate(&[0, 3], 0), "admiring_darwin");
        assert_eq!(super::generate(&[0, 3], 2), "admiring_darwin2");
        assert!(super::generate(&[], 0).contains('_'));
    }
}
