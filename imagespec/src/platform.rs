//! Platforms (`os/arch[/variant]`) as the OCI spec and containerd spell them.
//!
//! Parsing and normalising follow containerd's `platforms` package, which BuildKit uses for
//! `FROM --platform` and `--opt platform=`: `x86_64` is `amd64`, `aarch64` is `arm64` (its `v8`
//! variant is dropped), a bare `arm` is `arm/v7`, and a single component names an OS or an
//! architecture, the other part defaulting to the host's.

use serde::{Deserialize, Serialize};

/// An OS/architecture pair, with the CPU variant where one matters (`arm/v7`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH spelling.
    pub architecture: String,
    /// GOOS spelling.
    pub os: String,
    /// CPU variant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
}

/// A platform string that names no known OS or architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {spec:?}: {reason}")]
pub struct PlatformError {
    /// What was given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    /// The platform this program runs on (always `linux`: rdock builds Linux images).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new("linux", arch, None).normalized()
    }

    /// A platform from its parts, as given.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform { os: os.to_string(), architecture: architecture.to_string(), variant: variant.map(str::to_string) }
    }

    /// Parses `os`, `arch`, `os/arch` or `os/arch/variant`, normalised.
    pub fn parse(spec: &str) -> Result<Platform, PlatformError> {
        let err = |reason: &str| PlatformError { spec: spec.to_string(), reason: reason.to_string() };
        let lower = spec.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err(err("empty"));
        }
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')) {
            return Err(err("expected os/arch[/variant], each part letters, digits, '_', '-' or '.'"));
        }
        let host = Platform::host();
        let p = match parts.as_slice() {
            [one] => {
                let os = normalize_os(one);
                if KNOWN_OS.contains(&os.as_str()) {
                    Platform { os, architecture: host.architecture, variant: host.variant }
                } else {
                    let (arch, variant) = normalize_arch(one, None);
                    if !KNOWN_ARCH.contains(&arch.as_str()) {
                        return Err(err("unknown operating system or architecture"));
                    }
                    Platform { os: "linux".into(), architecture: arch, variant }
                }
            }
            [os, arch] | [os, arch, _] => {
                let variant = parts.get(2).copied();
                let os = normalize_os(os);
                if !KNOWN_OS.contains(&os.as_str()) {
                    return Err(err(&format!("unknown operating system {os:?}")));
                }
                let (architecture, variant) = normalize_arch(arch, variant);
                if !KNOWN_ARCH.contains(&architecture.as_str()) {
                    return Err(err(&format!("unknown architecture {arch:?}")));
                }
                Platform { os, architecture, variant }
            }
            _ => return Err(err("too many parts (expected os/arch[/variant])")),
        };
        Ok(p)
    }

    /// The same platform in containerd's normal form.
    pub fn normalized(&self) -> Platform {
        let (architecture, variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        Platform { os: normalize_os(&self.os), architecture, variant }
    }

    /// True if an image for `self` can serve a request for `want`: same OS and architecture,
    /// and the same variant when `want` names one.
    pub fn satisfies(&self, want: &Platform) -> bool {
        let (a, b) = (self.normalized(), want.normalized());
        a.os == b.os && a.architecture == b.architecture && (b.variant.is_none() || a.variant == b.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".into(),
        o => o.into(),
    }
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.map(str::to_ascii_lowercase).filter(|v| !v.is_empty());
    match arch.as_str() {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant.filter(|v| v != "v1")),
        "aarch64" | "arm64" => ("arm64".into(), variant.filter(|v| !matches!(v.as_str(), "8" | "v8" | "v8.0"))),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") | Some("v7") => "v7".to_string(),
                Some("5") | Some("6") | Some("8") => format!("v{}", variant.as_deref().unwrap_or_default()),
                Some(v) => v.to_string(),
            };
            ("arm".into(), Some(v))
        }
        _ => (arch, variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_like_containerd() {
        let p = |s: &str| Platform::parse(s).map(|p| p.to_string());
        assert_eq!(p("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(p("Linux/x86_64").unwrap(), "linux/amd64");
        assert_eq!(p("linux/aarch64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm").unwrap(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").unwrap(), "linux/arm/v7");
        assert_eq!(p("linux/arm/6").unwrap(), "linux/arm/v6");
        assert_eq!(p("arm64").unwrap(), "linux/arm64");
        assert_eq!(p("linux").unwrap(), Platform::host().to_string());
        assert!(p("linux/amd64/v2/x").is_err());
        assert!(p("linux/potato").unwrap_err().to_string().contains("unknown architecture"));
        assert!(p("").is_err());
        assert!(p("linux//amd64").is_err());
    }

    #[test]
    fn a_variantless_request_is_served_by_any_variant() {
        let arm7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(arm7.satisfies(&Platform::new("linux", "arm", None)));
        assert!(!arm7.satisfies(&Platform::parse("linux/arm/v6").unwrap()));
        assert!(!Platform::parse("linux/amd64").unwrap().satisfies(&Platform::parse("linux/arm64").unwrap()));
    }
}
