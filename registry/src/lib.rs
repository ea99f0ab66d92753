//! An OCI distribution client: the `/v2/` probe; anonymous, basic and bearer-token
//! authentication with credentials from docker's `config.json` (or its credential helpers);
//! manifests and indexes fetched with digest and size checks; blobs streamed into the
//! content store and verified before they become visible; blob HEAD, cross-repository
//! mount with fallback, monolithic and chunked uploads streamed from disk; transient
//! failures retried with backoff.
//!
//! Architecture invariant: speaks HTTP and knows the content store; knows nothing of images
//! as the local store keeps them (that is `rdock-oci`), nor of builds.
//!
//! ```no_run
//! use rdock_registry::{Client, Options};
//! let client = Client::new(Options::default());
//! let r = rdock_imagespec::ImageRef::parse("127.0.0.1:5000/busybox:latest").unwrap();
//! let m = client.manifest(&r, "latest").unwrap();
//! println!("{} {}", m.digest, m.media_type);
//! ```

mod auth;
mod client;
pub mod credentials;
mod error;

pub use auth::{Challenge, parse_challenge};
pub use client::{Client, FetchedManifest, MAX_MANIFEST, Options, Pushed, Tap};
pub use credentials::Credentials;
pub use error::RegistryError;
