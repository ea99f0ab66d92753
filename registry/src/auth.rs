//! Registry authentication: the `WWW-Authenticate` challenge of a 401, and bearer tokens
//! cached per registry and scope until they expire (the distribution token spec).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a 401 asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: send the user and password with every request.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from the realm.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The `service` to ask the token for.
        service: Option<String>,
        /// The scope the registry said it needs, if it said.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (`Bearer realm="…",service="…"`); None for a
/// scheme we do not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key="value", key2=value2`: values may be quoted and hold commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// A token server's answer.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) access_token: Option<String>,
    #[serde(default)]
    pub(crate) expires_in: Option<u64>,
}

/// How a registry wants to be spoken to, learnt from its first 401 (none known: anonymous).
#[derive(Debug, Clone)]
pub(crate) enum Scheme {
    /// Basic with every request.
    Basic,
    /// Tokens from this realm and service.
    Bearer { realm: String, service: Option<String> },
}

/// Tokens by (registry, scope), and each registry's scheme.
#[derive(Default)]
pub(crate) struct AuthState {
    pub(crate) schemes: HashMap<String, Scheme>,
    tokens: HashMap<(String, String), (String, Instant)>,
}

/// Tokens are renewed this long before they expire, so one never lapses mid-request.
const MARGIN: Duration = Duration::from_secs(5);

impl AuthState {
    /// A live token for `host` and `scope`.
    pub(crate) fn token(&self, host: &str, scope: &str) -> Option<String> {
        let (t, expires) = self.tokens.get(&(host.to_string(), scope.to_string()))?;
        (Instant::now() + MARGIN < *expires).then(|| t.clone())
    }

    /// Remembers a token. Distribution's default lifetime is 60 s when the server does not
    /// say.
    pub(crate) fn remember(&mut self, host: &str, scope: &str, token: String, expires_in: Option<u64>) {
        let life = Duration::from_secs(expires_in.unwrap_or(60).max(1));
        self.tokens.insert((host.to_string(), scope.to_string()), (token, Instant::now() + life));
    }

    /// Forgets a token the registry refused.
    pub(crate) fn forget(&mut self, host: &str, scope: &str) {
        self.tokens.remove(&(host.to_string(), scope.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("bearer realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer { realm: "http://127.0.0.1:1/t".into(), service: None, scope: None })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a bearer challenge without a realm is useless");
    }

    #[test]
    fn tokens_expire() {
        let mut s = AuthState::default();
        s.remember("h", "repository:a:pull", "t1".into(), Some(3600));
        assert_eq!(s.token("h", "repository:a:pull").as_deref(), Some("t1"));
        assert_eq!(s.token("h", "repository:a:pull,push"), None, "tokens are per scope");
        s.remember("h", "repository:b:pull", "t2".into(), Some(2));
        assert_eq!(s.token("h", "repository:b:pull"), None, "a token within the margin of its expiry is renewed");
        s.forget("h", "repository:a:pull");
        assert_eq!(s.token("h", "repository:a:pull"), None);
    }
}
