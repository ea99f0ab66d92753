//! Docker/OCI image documents as plain serde types: the image config (with Docker's
//! extensions BuildKit writes: Healthcheck, OnBuild, Shell), the manifest, the index and
//! content digests.
//!
//! Architecture invariant: pure data, no I/O. Both the frontend (which writes the image
//! config a Dockerfile describes) and `oci` (which stores, exports and loads images) use
//! these types, so the frontend never depends on the store. Field names, order and
//! omission rules follow the Go structs BuildKit serialises, so that our JSON matches
//! BuildKit's byte for byte where the content is the same. (`oci-spec` lacks Docker's
//! Healthcheck/OnBuild/Shell extensions, which is why these are our own.)
//!
//! ```
//! use rdock_imagespec::Digest;
//! let d = Digest::of(b"hello");
//! assert_eq!(d.algorithm(), "sha256");
//! assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
//! ```

mod digest;
mod image;
mod manifest;
mod nulls;
mod platform;
mod reference;
pub mod time;

pub use reference::{ImageRef, ReferenceError};

pub use digest::{Digest, DigestError};
pub use image::{ContainerConfig, Empty, HealthConfig, History, ImageConfig, RootFs};
pub use manifest::{
    Descriptor, Index, MAX_LAYERS, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST, Manifest,
};
pub use platform::{Platform, PlatformError};
