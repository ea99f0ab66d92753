//! Notes added to a failed step's error when its output says why in words a user may not
//! connect with rdock: a name that did not resolve is most often the step's network mode.

use rdock_llb::Network;

/// What resolvers, package managers and language runtimes print when a host name does not
/// resolve (glibc, musl, curl, wget, apt, pip/urllib3, npm/node, Go, cargo).
const RESOLUTION_FAILURES: &[&str] = &[
    "Temporary failure in name resolution",
    "Temporary failure resolving",
    "Name or service not known",
    "Could not resolve host",
    "Could not resolve '",
    "unable to resolve host address",
    "Failed to resolve",
    "getaddrinfo ENOTFOUND",
    "getaddrinfo EAI_AGAIN",
    "server misbehaving",
    "no such host",
    "failed to lookup address information",
    "bad address '",
];

/// Whether an output line reports a host name that did not resolve.
pub(crate) fn name_resolution_failed(line: &str) -> bool {
    RESOLUTION_FAILURES.iter().any(|p| line.contains(p))
}

/// The note: which network the step had and where that came from.
pub(crate) fn network_note(network: Network, origin: Option<&str>) -> String {
    let origin = origin.unwrap_or("the default: no RUN --network and no --network on the command line");
    let what = match network {
        Network::Sandbox => "the default network (its own namespace, egress through slirp4netns, DNS from the host's resolv.conf)",
        Network::None => "no network (--network=none: loopback only)",
        Network::Host => "the host's network (--network=host)",
    };
    format!("\n  note: the step could not resolve a host name; it ran with {what}, set by {origin}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_messages_are_recognised_and_others_not() {
        assert!(name_resolution_failed("Err:1 http://deb.debian.org/debian bookworm InRelease Temporary failure resolving 'x'"));
        assert!(name_resolution_failed("  Could not resolve 'deb.debian.org'"));
        assert!(name_resolution_failed("curl: (6) Could not resolve host: example.org"));
        assert!(name_resolution_failed(
            "npm ERR! request to https://registry.npmjs.org/x failed, reason: getaddrinfo EAI_AGAIN registry.npmjs.org"
        ));
        assert!(!name_resolution_failed("make: *** [all] Error 2"));
        let note = network_note(Network::None, Some("RUN --network=none on line 3"));
        assert!(note.contains("--network=none") && note.contains("line 3"), "{note}");
    }
}
