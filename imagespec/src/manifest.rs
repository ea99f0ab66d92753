//! Manifests, indexes and descriptors (OCI image spec v1.1, Docker schema 2 compatible).

use crate::Digest;
use crate::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most layers an image may have: overlayfs stacks at most 500 lower directories
/// (the kernel's `OVL_MAX_STACK`), so an image with more could never run. A manifest with
/// more is refused before anything is downloaded or unpacked.
pub const MAX_LAYERS: usize = 500;

/// A zstd-compressed OCI layer.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker schema 2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Points at a blob: what it is, its digest and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// Its sha256.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// Free-form annotations (`org.opencontainers.image.ref.name` in an OCI layout index).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest in an index.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<Platform>,
    /// Where a foreign (non-distributable) layer can be downloaded from, besides the
    /// registry: Windows base layers, and any image whose producer keeps a layer out of
    /// registries.
    #[serde(skip_serializing_if = "Vec::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// A descriptor without annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.to_string(), digest, size, annotations: BTreeMap::new(), platform: None, urls: Vec::new() }
    }

    /// True for a foreign layer (Docker's `…rootfs.foreign.diff.tar.gzip`, OCI's deprecated
    /// `…layer.nondistributable.v1.tar…`): docker and containerd never upload one to a
    /// registry, they keep its descriptor (and URLs) in the manifest.
    pub fn is_non_distributable(&self) -> bool {
        self.media_type.contains(".foreign.") || self.media_type.contains(".nondistributable.")
    }

    /// True for a gzip-compressed layer media type (OCI or Docker).
    pub fn is_gzip_layer(&self) -> bool {
        self.media_type.ends_with("+gzip") || self.media_type.ends_with(".tar.gzip")
    }
}

/// An image manifest: one config and its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index: a list of manifests (one per platform, or an OCI layout's root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    /// Compact JSON, as stored and hashed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Index {
    /// Compact JSON, as stored and hashed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
