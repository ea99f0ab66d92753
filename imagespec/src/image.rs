//! The image config document (`application/vnd.oci.image.config.v1+json`), with Docker's
//! extensions, shaped like BuildKit's `dockerspec.DockerOCIImage`.

use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Go's `struct{}`: the value type of ExposedPorts and Volumes maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The whole image config: platform, runtime config, layers and history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created: Option<String>,
    /// Author (MAINTAINER).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub author: Option<String>,
    /// CPU architecture, Go's GOARCH spelling (`amd64`).
    #[serde(default, deserialize_with = "crate::nulls::or_default")]
    pub architecture: String,
    /// CPU variant (`v8`), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
    /// Operating system (`linux`).
    #[serde(default, deserialize_with = "crate::nulls::or_default")]
    pub os: String,
    /// How containers of this image run.
    #[serde(default, deserialize_with = "crate::nulls::or_default")]
    pub config: ContainerConfig,
    /// The uncompressed layer digests, bottom first.
    #[serde(default, deserialize_with = "crate::nulls::or_default")]
    pub rootfs: RootFs,
    /// One entry per Dockerfile instruction, including those that add no layer.
    #[serde(skip_serializing_if = "Vec::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub history: Vec<History>,
}

/// The runtime part of an image config. Keys are Go's capitalised names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// USER.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    /// EXPOSE, as `80/tcp` keys.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// ENV, as `KEY=value`, in order of first definition.
    #[serde(skip_serializing_if = "Vec::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub env: Vec<String>,
    /// ENTRYPOINT.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmd: Option<Vec<String>>,
    /// VOLUME.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub volumes: BTreeMap<String, Empty>,
    /// WORKDIR.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub working_dir: Option<String>,
    /// LABEL.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub labels: BTreeMap<String, String>,
    /// STOPSIGNAL.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_signal: Option<String>,
    /// Windows-only in practice; kept so that configs round-trip.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub args_escaped: Option<bool>,
    /// HEALTHCHECK (Docker extension).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub healthcheck: Option<HealthConfig>,
    /// ONBUILD triggers (Docker extension).
    #[serde(skip_serializing_if = "Vec::is_empty", default, rename = "OnBuild", deserialize_with = "crate::nulls::or_default")]
    pub on_build: Vec<String>,
    /// SHELL (Docker extension).
    #[serde(skip_serializing_if = "Vec::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub shell: Vec<String>,
}

/// HEALTHCHECK settings; durations in nanoseconds as Go's time.Duration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    #[serde(skip_serializing_if = "Vec::is_empty", default, deserialize_with = "crate::nulls::or_default")]
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interval: Option<i64>,
    /// Time a check may take.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout: Option<i64>,
    /// Grace period after start.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_period: Option<i64>,
    /// Interval during the start period.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_interval: Option<i64>,
    /// Failures before unhealthy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retries: Option<i64>,
}

/// The uncompressed layer digests (diff IDs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer tar, bottom first.
    #[serde(default, deserialize_with = "crate::nulls::or_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs { kind: "layers".to_string(), diff_ids: Vec::new() }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created: Option<String>,
    /// The instruction, as BuildKit words it (`RUN /bin/sh -c echo hi # buildkit`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created_by: Option<String>,
    /// Author.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub author: Option<String>,
    /// `buildkit.dockerfile.v0` for entries we write.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comment: Option<String>,
    /// True when the instruction added no layer.
    #[serde(skip_serializing_if = "std::ops::Not::not", default, deserialize_with = "crate::nulls::or_default")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// The value of `key` in the config's Env, if set.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.config.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == key).then_some(v)
        })
    }

    /// Serialises to the compact JSON stored as the config blob.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs, string maps and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omits_empty_fields_like_go() {
        let cfg = ImageConfig { architecture: "amd64".into(), os: "linux".into(), ..Default::default() };
        let json = String::from_utf8(cfg.to_json()).unwrap();
        assert_eq!(json, r#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#);
    }

    /// Issue 14: docker's classic builder, `docker commit` and `docker import` write Go's
    /// nil slices and maps as `null`; rdock refused every such image.
    #[test]
    fn reads_go_nulls_as_absent() {
        let json = r#"{"architecture":"amd64","os":"linux","author":null,"config":{"Hostname":"","User":"","Env":null,"Cmd":null,"Entrypoint":null,"Volumes":null,"WorkingDir":"","OnBuild":null,"Labels":null,"ExposedPorts":null,"Shell":null,"Healthcheck":{"Test":null}},"container_config":{"Env":null,"OnBuild":null},"history":[{"created_by":"/bin/sh -c #(nop) ADD file:x in / ","empty_layer":null}],"rootfs":{"type":"layers","diff_ids":null}}"#;
        let cfg: ImageConfig = serde_json::from_str(json).unwrap();
        assert!(
            cfg.config.env.is_empty() && cfg.config.on_build.is_empty() && cfg.config.volumes.is_empty() && cfg.config.labels.is_empty()
        );
        assert_eq!(cfg.config.cmd, None);
        assert!(cfg.rootfs.diff_ids.is_empty());
        assert!(!cfg.history[0].empty_layer);
        let all_null = r#"{"architecture":"amd64","os":"linux","config":null,"rootfs":{"type":"layers","diff_ids":[]},"history":null}"#;
        let cfg: ImageConfig = serde_json::from_str(all_null).unwrap();
        assert_eq!(cfg.config, ContainerConfig::default());
    }

    #[test]
    fn reads_docker_config_with_extensions() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"OnBuild":["RUN x"],"Healthcheck":{"Test":["NONE"]}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.env_value("PATH"), Some("/bin"));
        assert_eq!(cfg.config.on_build, vec!["RUN x"]);
        assert_eq!(cfg.config.healthcheck.unwrap().test, vec!["NONE"]);
    }
}
