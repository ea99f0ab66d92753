//! The OCI distribution client: every request goes through [`Client::send`], which adds
//! credentials, answers a 401 with the challenge's scheme (basic, or a bearer token fetched
//! from the realm and cached per scope), and retries transient failures (connection errors,
//! 5xx, 429 with `Retry-After`) a bounded number of times with backoff.

use crate::RegistryError;
use crate::auth::{AuthState, Challenge, Scheme, TokenAnswer, parse_challenge};
use crate::credentials::{self, Credentials};
use rdock_imagespec::{Descriptor, Digest, ImageRef};
use rdock_snapshotter::ContentStore;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Makes, for each attempt of a download, a writer that sees its bytes too (or none).
pub type Tap<'a> = dyn Fn() -> Option<Box<dyn std::io::Write + Send>> + Sync + 'a;

/// Manifests larger than this are refused: containerd and BuildKit use the same limit, and
/// no real image needs more.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The manifest and index media types we ask for.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// How the client behaves; the defaults suit real registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registry hosts spoken to over plain HTTP besides loopback ones (which always are,
    /// as with Docker): `registry.insecure=true`.
    pub insecure: Vec<String>,
    /// Attempts for a request that fails transiently (at least 1).
    pub attempts: u32,
    /// First backoff; doubled after each failed attempt, capped at 5 s.
    pub backoff: Duration,
    /// Blobs larger than this are uploaded in chunks of this size; smaller ones in one PUT.
    pub chunk_size: u64,
    /// Credentials to use instead of the docker credentials file (for `rdock login`).
    pub credentials: Option<(String, Credentials)>,
}

impl Default for Options {
    fn default() -> Options {
        Options { insecure: Vec::new(), attempts: 5, backoff: Duration::from_millis(200), chunk_size: 64 << 20, credentials: None }
    }
}

/// What pushing a blob did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The registry had it already (blob HEAD).
    Existed,
    /// The registry linked it from another repository (cross-repository mount).
    Mounted,
    /// It was uploaded.
    Uploaded,
}

/// A manifest or index as the registry sent it, verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes (their sha256 is the digest).
    pub bytes: Vec<u8>,
    /// The media type (the document's own, else the `Content-Type`).
    pub media_type: String,
    /// The digest.
    pub digest: Digest,
}

impl FetchedManifest {
    /// True for an OCI index or a docker manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type.contains("index") || self.media_type.contains("manifest.list")
    }
}

/// A request body that can be sent again on a retry.
enum Payload<'a> {
    None,
    Bytes(&'a [u8]),
    File { path: &'a Path, offset: u64, len: u64 },
}

/// One request.
struct Call<'a> {
    method: &'static str,
    url: String,
    host: String,
    /// The token scope (`repository:NAME:pull`), space-separated if several; empty for `/v2/`.
    scope: String,
    headers: Vec<(&'static str, String)>,
    body: Payload<'a>,
}

/// A registry client, shared by threads (downloads run in parallel).
pub struct Client {
    agent: ureq::Agent,
    opts: Options,
    auth: Mutex<AuthState>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
    /// Held while a token is fetched, so that parallel transfers needing the same scope
    /// wait for one token rather than each asking for their own.
    fetching: Mutex<()>,
}

type Response = ureq::http::Response<ureq::Body>;

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host);
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:/,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The registry's own error message (`{"errors":[{"code":…,"message":…}]}`), for reports.
fn error_detail(resp: &mut Response) -> String {
    let body = resp.body_mut().with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct E {
        code: Option<String>,
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Es {
        errors: Vec<E>,
    }
    match serde_json::from_slice::<Es>(&body) {
        Ok(es) if !es.errors.is_empty() => format!(
            ": {}",
            es.errors
                .iter()
                .map(|e| format!("{} {}", e.code.as_deref().unwrap_or(""), e.message.as_deref().unwrap_or("")).trim().to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => String::new(),
    }
}

/// The error for a status the operation does not expect, with the registry's message.
fn unexpected(call: &Call<'_>, resp: &mut Response) -> RegistryError {
    RegistryError::Status { method: call.method.into(), url: call.url.clone(), status: resp.status().as_u16(), detail: error_detail(resp) }
}

fn transient_status(s: u16) -> bool {
    matches!(s, 408 | 429 | 500 | 502 | 503 | 504)
}

impl Client {
    /// A client with these options.
    pub fn new(opts: Options) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Blobs are compared byte for byte with their digests: no transparent decoding.
            .accept_encoding("identity")
            .user_agent(concat!("rdock/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .max_idle_connections_per_host(16)
            .build();
        let opts = Options { attempts: opts.attempts.max(1), ..opts };
        Client {
            agent: config.new_agent(),
            opts,
            auth: Mutex::new(AuthState::default()),
            creds: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
        }
    }

    /// The host requests for `registry` go to (Docker Hub's API host for `docker.io`).
    fn endpoint(registry: &str) -> &str {
        if registry == "docker.io" { "registry-1.docker.io" } else { registry }
    }

    fn base(&self, registry: &str) -> String {
        let host = Client::endpoint(registry);
        let scheme = if is_loopback(host) || self.opts.insecure.iter().any(|h| h == registry || h == host) { "http" } else { "https" };
        format!("{scheme}://{host}")
    }

    fn credentials(&self, host: &str) -> Result<Option<Credentials>, RegistryError> {
        if let Some((h, c)) = &self.opts.credentials
            && h == host
        {
            return Ok(Some(c.clone()));
        }
        let mut cache = self.creds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(host) {
            return Ok(c.clone());
        }
        let c = credentials::lookup(host)?;
        cache.insert(host.to_string(), c.clone());
        Ok(c)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        (self.opts.backoff * 2u32.saturating_pow(attempt)).min(Duration::from_secs(5))
    }

    /// The Authorization header for a call, fetching a token first when the registry is
    /// known to want one (saving a 401 round trip per scope).
    fn authorization(&self, call: &Call<'_>) -> Result<Option<String>, RegistryError> {
        let scheme = self.auth.lock().unwrap_or_else(|p| p.into_inner()).schemes.get(&call.host).cloned();
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => Ok(self.credentials(&call.host)?.map(|c| c.basic_header())),
            Some(Scheme::Bearer { realm, service }) => {
                if let Some(t) = self.auth.lock().unwrap_or_else(|p| p.into_inner()).token(&call.host, &call.scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let _one = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                // Another thread may have fetched it while this one waited.
                if let Some(t) = self.auth.lock().unwrap_or_else(|p| p.into_inner()).token(&call.host, &call.scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(&call.host, &realm, service.as_deref(), &call.scope)?;
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Answers a 401: learns the scheme; for bearer, fetches a token for the call's scope
    /// (unless another thread did meanwhile: `sent` is what this call sent).
    fn authenticate(&self, call: &Call<'_>, challenge: Option<String>, round: u32, sent: Option<&str>) -> Result<(), RegistryError> {
        let unauthorized = |reason: String| RegistryError::Unauthorized { registry: call.host.clone(), reason };
        let Some(ch) = challenge.as_deref().and_then(parse_challenge) else {
            return Err(unauthorized(format!(
                "{} {} needs authentication, but the registry's challenge is missing or of a scheme rdock does not speak",
                call.method, call.url
            )));
        };
        let creds = self.credentials(&call.host)?;
        match ch {
            Challenge::Basic => {
                if creds.is_none() {
                    return Err(unauthorized(format!("authentication required: run `rdock login {}`", call.host)));
                }
                let mut st = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                if round > 0 && matches!(st.schemes.get(&call.host), Some(Scheme::Basic)) {
                    return Err(unauthorized(format!(
                        "the registry refused the stored credentials: run `rdock login {}` again",
                        call.host
                    )));
                }
                st.schemes.insert(call.host.clone(), Scheme::Basic);
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                if round > 0 {
                    return Err(unauthorized(match creds {
                        None => format!("access to {} was denied: authentication required, run `rdock login {}`", call.url, call.host),
                        Some(_) => format!("access to {} was denied to the logged-in user", call.url),
                    }));
                }
                let _one = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                {
                    let mut st = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                    st.schemes.insert(call.host.clone(), Scheme::Bearer { realm: realm.clone(), service: service.clone() });
                    match st.token(&call.host, &call.scope) {
                        // A token this call did not send: another thread's, fresh.
                        Some(t) if sent != Some(format!("Bearer {t}").as_str()) => return Ok(()),
                        _ => st.forget(&call.host, &call.scope),
                    }
                }
                self.fetch_token(&call.host, &realm, service.as_deref(), &call.scope).map(|_| ())
            }
        }
    }

    /// Gets a token for `scope` from the realm (with basic credentials if we have some),
    /// and caches it until it expires.
    fn fetch_token(&self, host: &str, realm: &str, service: Option<&str>, scope: &str) -> Result<String, RegistryError> {
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", encode(s)));
            sep = '&';
        }
        for s in scope.split_whitespace() {
            url.push_str(&format!("{sep}scope={}", encode(s)));
            sep = '&';
        }
        let creds = self.credentials(host)?;
        let unauthorized = |reason: String| RegistryError::Unauthorized { registry: host.to_string(), reason };
        let mut attempt = 0;
        let mut resp = loop {
            let mut b = ureq::http::Request::builder().method("GET").uri(&url);
            if let Some(c) = &creds {
                b = b.header("authorization", c.basic_header());
            }
            let req = b.body(()).map_err(|e| RegistryError::Http { method: "GET".into(), url: url.clone(), reason: e.to_string() })?;
            match self.agent.run(req) {
                Ok(r) if transient_status(r.status().as_u16()) && attempt + 1 < self.opts.attempts => {}
                Ok(r) => break r,
                Err(e) if attempt + 1 >= self.opts.attempts => {
                    return Err(RegistryError::Http {
                        method: "GET".into(),
                        url,
                        reason: format!("token server: {e} (after {} attempts)", attempt + 1),
                    });
                }
                Err(_) => {}
            }
            std::thread::sleep(self.backoff(attempt));
            attempt += 1;
        };
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(unauthorized(match creds {
                    Some(_) => "the token server refused the stored credentials: run `rdock login` again".to_string(),
                    None => format!("the token server wants credentials: run `rdock login {host}`"),
                }));
            }
            s => {
                let detail = error_detail(&mut resp);
                return Err(RegistryError::Status { method: "GET".into(), url, status: s, detail });
            }
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::BadDocument { what: format!("token from {realm}"), reason: e.to_string() })?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::BadDocument { what: format!("token from {realm}"), reason: format!("not valid JSON: {e}") })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::BadDocument { what: format!("token from {realm}"), reason: "the answer has no token".into() })?;
        self.auth.lock().unwrap_or_else(|p| p.into_inner()).remember(host, scope, token.clone(), answer.expires_in);
        Ok(token)
    }

    fn build(&self, call: &Call<'_>, auth: Option<&str>) -> Result<Result<Response, ureq::Error>, RegistryError> {
        let fail = |e: ureq::http::Error| RegistryError::Http { method: call.method.into(), url: call.url.clone(), reason: e.to_string() };
        let mut b = ureq::http::Request::builder().method(call.method).uri(&call.url);
        for (k, v) in &call.headers {
            b = b.header(*k, v);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        Ok(match &call.body {
            Payload::None => {
                if matches!(call.method, "PUT" | "POST" | "PATCH") {
                    b = b.header("content-length", "0");
                }
                self.agent.run(b.body(()).map_err(fail)?)
            }
            Payload::Bytes(bytes) => self.agent.run(b.header("content-length", bytes.len().to_string()).body(*bytes).map_err(fail)?),
            Payload::File { path, offset, len } => {
                let io = |e| RegistryError::Io { path: path.to_path_buf(), source: e };
                let mut f = std::fs::File::open(path).map_err(io)?;
                f.seek(std::io::SeekFrom::Start(*offset)).map_err(io)?;
                let reader = std::io::BufReader::with_capacity(1 << 20, f).take(*len);
                let body = ureq::SendBody::from_owned_reader(reader);
                self.agent.run(b.header("content-length", len.to_string()).body(body).map_err(fail)?)
            }
        })
    }

    /// Sends a call: authentication and transient failures are handled here; any other
    /// status is the caller's to judge.
    fn send(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        let mut attempt = 0u32;
        let mut auth_round = 0u32;
        loop {
            let auth = self.authorization(call)?;
            let result = self.build(call, auth.as_deref())?;
            let wait = match result {
                Err(e) => {
                    tracing::debug!(method = call.method, url = %call.url, error = %e, attempt, "registry request failed");
                    // A name that does not resolve will not resolve on a retry either.
                    if unresolvable(&e) {
                        return Err(RegistryError::Http { method: call.method.into(), url: call.url.clone(), reason: e.to_string() });
                    }
                    if attempt + 1 >= self.opts.attempts {
                        return Err(RegistryError::Http {
                            method: call.method.into(),
                            url: call.url.clone(),
                            reason: format!("{e} (gave up after {} attempts)", attempt + 1),
                        });
                    }
                    self.backoff(attempt)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    tracing::debug!(method = call.method, url = %call.url, status, attempt, "registry answered");
                    if status == 401 {
                        self.authenticate(call, header(&resp, "www-authenticate"), auth_round, auth.as_deref())?;
                        auth_round += 1;
                        continue;
                    }
                    if !transient_status(status) {
                        return Ok(resp);
                    }
                    if attempt + 1 >= self.opts.attempts {
                        let mut resp = resp;
                        return Err(RegistryError::Http {
                            method: call.method.into(),
                            url: call.url.clone(),
                            reason: format!("status {status}{} (gave up after {} attempts)", error_detail(&mut resp), attempt + 1),
                        });
                    }
                    // `Retry-After: SECONDS` is honoured up to a minute.
                    header(&resp, "retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(60)))
                        .unwrap_or_else(|| self.backoff(attempt))
                }
            };
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn scope(repo: &ImageRef, push: bool) -> String {
        format!("repository:{}:{}", repo.repository, if push { "pull,push" } else { "pull" })
    }

    fn call<'a>(&self, method: &'static str, repo: &ImageRef, path: &str, push: bool) -> Call<'a> {
        Call {
            method,
            url: format!("{}/v2/{}/{path}", self.base(&repo.registry), repo.repository),
            host: repo.registry.clone(),
            scope: Client::scope(repo, push),
            headers: Vec::new(),
            body: Payload::None,
        }
    }

    /// `GET /v2/`: checks that the registry speaks the distribution API and that our
    /// credentials (if any) are good (`rdock login`).
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let call = Call {
            method: "GET",
            url: format!("{}/v2/", self.base(registry)),
            host: registry.to_string(),
            scope: String::new(),
            headers: Vec::new(),
            body: Payload::None,
        };
        let mut resp = self.send(&call)?;
        match resp.status().as_u16() {
            200 => Ok(()),
            _ => Err(unexpected(&call, &mut resp)),
        }
    }

    /// Fetches a manifest or index by tag or digest, refusing anything over
    /// [`MAX_MANIFEST`], not JSON, or not matching its digest.
    pub fn manifest(&self, repo: &ImageRef, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}:{reference}", repo.name());
        let mut call = self.call("GET", repo, &format!("manifests/{reference}"), false);
        call.headers.push(("accept", ACCEPT_MANIFESTS.to_string()));
        let mut resp = self.send(&call)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::NotFound { registry: repo.registry.clone(), what }),
            _ => return Err(unexpected(&call, &mut resp)),
        }
        if header(&resp, "content-length").and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > MAX_MANIFEST) {
            return Err(RegistryError::TooLarge { what, limit: MAX_MANIFEST });
        }
        let content_type = header(&resp, "content-type").unwrap_or_default();
        let announced = header(&resp, "docker-content-digest");
        let bytes = match resp.body_mut().with_config().limit(MAX_MANIFEST).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(_)) => return Err(RegistryError::TooLarge { what, limit: MAX_MANIFEST }),
            Err(e) => return Err(RegistryError::Http { method: "GET".into(), url: call.url, reason: e.to_string() }),
        };
        let digest = Digest::of(&bytes);
        let expected = match Digest::parse(reference) {
            Ok(d) => Some(d),
            Err(_) => announced.and_then(|a| Digest::parse(&a).ok()),
        };
        if let Some(e) = expected
            && e != digest
        {
            return Err(RegistryError::DigestMismatch { what, expected: e.to_string(), actual: digest.to_string() });
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: u32,
            #[serde(default)]
            media_type: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::BadDocument { what: what.clone(), reason: format!("not a valid manifest: {e}") })?;
        if probe.schema_version != 2 {
            return Err(RegistryError::BadDocument {
                what,
                reason: match probe.schema_version {
                    1 => "Docker's image manifest v2 schema 1 (signed, `fsLayers`), deprecated since 2016 and no longer \
                          pulled by docker, containerd or rdock: push the image again with a current docker, or \
                          convert it with `skopeo copy --format v2s2`"
                        .to_string(),
                    v => format!("schema version {v} (only version 2, OCI and docker, is supported)"),
                },
            });
        }
        let media_type =
            probe.media_type.filter(|m| !m.is_empty()).unwrap_or_else(|| content_type.split(';').next().unwrap_or("").trim().to_string());
        Ok(FetchedManifest { bytes, media_type, digest })
    }

    /// True if the repository has the blob (`HEAD`).
    pub fn blob_exists(&self, repo: &ImageRef, digest: &Digest, push: bool) -> Result<bool, RegistryError> {
        let call = self.call("HEAD", repo, &format!("blobs/{digest}"), push);
        let mut resp = self.send(&call)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(unexpected(&call, &mut resp)),
        }
    }

    /// Downloads a small blob (an image config) into memory, verified against its
    /// descriptor; over [`MAX_MANIFEST`] is refused.
    pub fn small_blob(&self, repo: &ImageRef, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {} of {}", desc.digest, repo.name());
        if desc.size > MAX_MANIFEST {
            return Err(RegistryError::TooLarge { what, limit: MAX_MANIFEST });
        }
        let call = self.call("GET", repo, &format!("blobs/{}", desc.digest), false);
        let mut resp = self.send(&call)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::NotFound { registry: repo.registry.clone(), what }),
            _ => return Err(unexpected(&call, &mut resp)),
        }
        let bytes = match resp.body_mut().with_config().limit(MAX_MANIFEST).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(_)) => return Err(RegistryError::TooLarge { what, limit: MAX_MANIFEST }),
            Err(e) => return Err(RegistryError::Http { method: "GET".into(), url: call.url, reason: e.to_string() }),
        };
        if bytes.len() as u64 != desc.size {
            return Err(RegistryError::WrongSize { what, got: bytes.len() as u64, expected: desc.size });
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch { what, expected: desc.digest.to_string(), actual: actual.to_string() });
        }
        Ok(bytes)
    }

    /// Downloads a blob into the content store, unless it is there already. It becomes
    /// visible only once its size and digest are verified; a connection that breaks is
    /// retried from the start. `progress` is told the bytes received so far.
    pub fn fetch_blob(
        &self,
        repo: &ImageRef,
        desc: &Descriptor,
        content: &ContentStore,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        self.fetch_blob_tapped(repo, desc, content, progress, &|| None)
    }

    /// [`Client::fetch_blob`], with every attempt's bytes also written, as they arrive, to a
    /// writer `tap` makes for it (a pull unpacks a layer while it downloads). A tap that
    /// stops accepting bytes is let go; the download goes on. The tap of an attempt that
    /// breaks is dropped before the next begins, so its reader sees the stream end.
    pub fn fetch_blob_tapped(
        &self,
        repo: &ImageRef,
        desc: &Descriptor,
        content: &ContentStore,
        progress: &(dyn Fn(u64) + Sync),
        tap: &Tap<'_>,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {} of {}", desc.digest, repo.name());
        let call = self.call("GET", repo, &format!("blobs/{}", desc.digest), false);
        self.download(&call, &repo.registry, what, desc, content, progress, tap)
    }

    /// Downloads a foreign (non-distributable) layer from one of the URLs its descriptor
    /// lists, as containerd and skopeo do: a plain GET without the registry's credentials, verified
    /// against the descriptor like any blob. Only `http` and `https` URLs are followed.
    pub fn fetch_url(
        &self,
        url: &str,
        desc: &Descriptor,
        content: &ContentStore,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(|| RegistryError::Http {
            method: "GET".into(),
            url: url.to_string(),
            reason: "a layer URL must be http or https".into(),
        })?;
        let host = host.split(['/', '?', '#']).next().unwrap_or_default().rsplit('@').next().unwrap_or_default().to_string();
        let call = Call {
            method: "GET",
            url: url.to_string(),
            host: host.clone(),
            scope: String::new(),
            headers: Vec::new(),
            body: Payload::None,
        };
        self.download(&call, &host, format!("foreign layer {} from {url}", desc.digest), desc, content, progress, &|| None)
    }

    /// Streams the body of `call` into the content store (unless the blob is there): it
    /// becomes visible only once its size and digest match `desc`; a connection that
    /// breaks is retried from the start.
    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        call: &Call<'_>,
        registry: &str,
        what: String,
        desc: &Descriptor,
        content: &ContentStore,
        progress: &(dyn Fn(u64) + Sync),
        tap: &Tap<'_>,
    ) -> Result<(), RegistryError> {
        if content.contains(&desc.digest) {
            return Ok(());
        }
        let mut attempt = 0u32;
        loop {
            let mut resp = self.send(call)?;
            match resp.status().as_u16() {
                200 => {}
                404 => return Err(RegistryError::NotFound { registry: registry.to_string(), what }),
                _ => return Err(unexpected(call, &mut resp)),
            }
            let mut w = content.writer()?;
            let mut tapped = tap();
            let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0u64;
            let broke = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        got += n as u64;
                        if got > desc.size {
                            return Err(RegistryError::WrongSize { what, got, expected: desc.size });
                        }
                        std::io::Write::write_all(&mut w, &buf[..n])
                            .map_err(|e| RegistryError::Io { path: content.path(&desc.digest), source: e })?;
                        if tapped.as_mut().is_some_and(|t| std::io::Write::write_all(t, &buf[..n]).is_err()) {
                            tapped = None;
                        }
                        progress(got);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e),
                }
            };
            drop(tapped);
            if let Some(e) = broke {
                drop(w);
                if attempt + 1 >= self.opts.attempts {
                    return Err(RegistryError::Http {
                        method: "GET".into(),
                        url: call.url.clone(),
                        reason: format!(
                            "the download broke after {got} of {} bytes: {e} (gave up after {} attempts); nothing was stored",
                            desc.size,
                            attempt + 1
                        ),
                    });
                }
                std::thread::sleep(self.backoff(attempt));
                attempt += 1;
                continue;
            }
            if got != desc.size {
                return Err(RegistryError::WrongSize { what, got, expected: desc.size });
            }
            return match w.commit(Some(&desc.digest)) {
                Ok(_) => Ok(()),
                Err(rdock_snapshotter::SnapshotError::DigestMismatch { expected, actual, .. }) => {
                    Err(RegistryError::DigestMismatch { what, expected, actual })
                }
                Err(e) => Err(e.into()),
            };
        }
    }

    fn location(&self, repo: &ImageRef, resp: &Response, url: &str) -> Result<String, RegistryError> {
        let loc = header(resp, "location").ok_or_else(|| RegistryError::BadDocument {
            what: format!("upload to {url}"),
            reason: "the registry gave no Location for the upload".into(),
        })?;
        Ok(if loc.starts_with("http://") || loc.starts_with("https://") { loc } else { format!("{}{loc}", self.base(&repo.registry)) })
    }

    /// Pushes the blob at `path` unless the repository has it: first a cross-repository
    /// mount from `mount_from` (a repository of the same registry known to hold it), then,
    /// if the registry declines, an upload: one PUT for small blobs, PATCH chunks of
    /// [`Options::chunk_size`] for large ones, streamed from disk.
    pub fn push_blob(&self, repo: &ImageRef, desc: &Descriptor, path: &Path, mount_from: Option<&str>) -> Result<Pushed, RegistryError> {
        if self.blob_exists(repo, &desc.digest, true)? {
            return Ok(Pushed::Existed);
        }
        let mut call = self.call("POST", repo, "blobs/uploads/", true);
        if let Some(from) = mount_from.filter(|f| *f != repo.repository) {
            call.url.push_str(&format!("?mount={}&from={}", encode(desc.digest.as_str()), encode(from)));
            call.scope.push_str(&format!(" repository:{from}:pull"));
        }
        let mut resp = self.send(&call)?;
        let mut location = match resp.status().as_u16() {
            201 => return Ok(Pushed::Mounted),
            202 => self.location(repo, &resp, &call.url)?,
            _ => return Err(unexpected(&call, &mut resp)),
        };
        let scope = Client::scope(repo, true);
        let with_digest = |loc: &str| format!("{loc}{}digest={}", if loc.contains('?') { '&' } else { '?' }, encode(desc.digest.as_str()));
        let size = desc.size;
        let octet = ("content-type", "application/octet-stream".to_string());
        // Small blobs go in the closing PUT itself; large ones in PATCH chunks before it.
        let monolithic = size <= self.opts.chunk_size;
        let mut offset = 0u64;
        while !monolithic && offset < size {
            let len = self.opts.chunk_size.min(size - offset);
            let patch = Call {
                method: "PATCH",
                url: location.clone(),
                host: repo.registry.clone(),
                scope: scope.clone(),
                headers: vec![octet.clone(), ("content-range", format!("{offset}-{}", offset + len - 1))],
                body: Payload::File { path, offset, len },
            };
            let mut resp = self.send(&patch)?;
            match resp.status().as_u16() {
                202 => location = self.location(repo, &resp, &patch.url)?,
                _ => return Err(unexpected(&patch, &mut resp)),
            }
            offset += len;
        }
        let put = Call {
            method: "PUT",
            url: with_digest(&location),
            host: repo.registry.clone(),
            scope,
            headers: vec![octet],
            body: if monolithic { Payload::File { path, offset: 0, len: size } } else { Payload::None },
        };
        let mut resp = self.send(&put)?;
        match resp.status().as_u16() {
            201 => Ok(Pushed::Uploaded),
            _ => Err(unexpected(&put, &mut resp)),
        }
    }

    /// Puts a manifest or index under `reference` (a tag or its digest) and returns its
    /// digest, checked against the one the registry computed.
    pub fn put_manifest(&self, repo: &ImageRef, reference: &str, media_type: &str, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let mut call = self.call("PUT", repo, &format!("manifests/{reference}"), true);
        call.headers.push(("content-type", media_type.to_string()));
        call.body = Payload::Bytes(bytes);
        let mut resp = self.send(&call)?;
        let digest = Digest::of(bytes);
        match resp.status().as_u16() {
            200 | 201 => {}
            _ => return Err(unexpected(&call, &mut resp)),
        }
        if let Some(d) = header(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d).ok())
            && d != digest
        {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {}:{reference}", repo.name()),
                expected: digest.to_string(),
                actual: d.to_string(),
            });
        }
        Ok(digest)
    }
}

/// True for a host name that does not resolve: ureq reports no addresses as
/// `HostNotFound`, and a resolver failure (EAI_NONAME) as std's I/O error for it.
fn unresolvable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) => io.to_string().contains("failed to lookup address information"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_plain_http() {
        let c = Client::new(Options { insecure: vec!["reg.internal:5000".into()], ..Options::default() });
        assert_eq!(c.base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(c.base("localhost:1234"), "http://localhost:1234");
        assert_eq!(c.base("localhost"), "http://localhost");
        assert_eq!(c.base("reg.internal:5000"), "http://reg.internal:5000");
        assert_eq!(c.base("ghcr.io"), "https://ghcr.io");
        assert_eq!(c.base("docker.io"), "https://registry-1.docker.io");
        assert_eq!(c.base("127.example.com"), "https://127.example.com");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("repository:a/b:pull,push"), "repository:a/b:pull,push");
        assert_eq!(encode("sha256:ab cd&x"), "sha256:ab%20cd%26x");
    }
}
