//! The command-line layer shared by `rdock-build` and `rdock`: opening the store, the
//! build pipeline (frontend → solver → exporters), progress rendering and the small
//! image-management commands. Binaries parse flags and call into here.

pub mod bake;
pub mod build;
pub mod commands;
pub mod config;
pub mod containers;
pub mod format;
pub mod gc;
pub mod inspect;
pub mod progress;
pub mod registry;
pub mod timeline;
pub mod trace;
pub mod verify;

use anyhow::Context;
use rdock_snapshotter::Store;
use std::path::PathBuf;

/// A failure that should exit with status 2 (usage), as opposed to 1 (the build failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The store root: `RDOCK_ROOT`, else `/var/lib/rdock` for root, else
/// `$XDG_DATA_HOME/rdock` (or `~/.local/share/rdock`).
pub fn store_root() -> PathBuf {
    if let Some(r) = std::env::var_os("RDOCK_ROOT") {
        return PathBuf::from(r);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rdock");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("rdock");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/rdock")
}

/// Opens the store at [`store_root`].
pub fn open_store() -> anyhow::Result<Store> {
    let root = store_root();
    Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))
}

/// Shows the libraries' diagnostics on standard error: with `RDOCK_LOG=FILTER` (as
/// `RUST_LOG`, e.g. `rdock_solver=debug`), or everything at debug level with `--debug`.
/// Without either nothing is set up, and the events cost nothing.
pub fn init_logging(debug: bool) {
    let filter = match std::env::var("RDOCK_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ if debug => "debug".to_string(),
        _ => return,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: RDOCK_LOG={filter}: {e}; showing debug");
        tracing_subscriber::EnvFilter::new("debug")
    });
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// An error and its causes on one line, `outer: inner: innermost`, each cause once: many
/// of the libraries' errors already show their source in their own message (and keep it
/// as their `source()` too), and it is not repeated.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// Maps an error to the exit status of the contract: 2 for usage, 1 otherwise, printing it.
pub fn exit_with(err: anyhow::Error) -> ! {
    let usage = err.downcast_ref::<UsageError>().is_some();
    let text = render_error(&err);
    // Dockerfile errors render their own `error:` header, like rustc's.
    if text.starts_with("error:") {
        eprintln!("{text}");
    } else {
        eprintln!("error: {text}");
    }
    std::process::exit(if usage { 2 } else { 1 });
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("io failed")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("downloading x: {source}")]
        Shows {
            #[source]
            source: Inner,
        },
        #[error("exporting to y")]
        Hides(#[source] Inner),
    }

    #[test]
    fn causes_are_shown_once() {
        let shown = anyhow::Error::new(Outer::Shows { source: Inner });
        assert_eq!(super::render_error(&shown), "downloading x: io failed");
        let hidden = anyhow::Error::new(Outer::Hides(Inner)).context("building");
        assert_eq!(super::render_error(&hidden), "building: exporting to y: io failed");
    }
}
