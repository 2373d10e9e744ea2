//! The gate: what every request passes before any protocol code sees it (TLS is the listener's, before this).
//!
//! [`Gate::pass`] authenticates a request once, at the edge, and hands it on with its [`Principal`] in the
//! request's extensions, or answers it with a refusal in the protocol it speaks. The rules ([`authenticate`]):
//! - `AuthMode::Protected` (the default, as Redis does it): while no token exists only loopback clients are
//!   served; once tokens exist, non-loopback clients must present one. Loopback clients without one are served.
//! - `AuthMode::Token` (`auth := 'token'`): every client presents a token, loopback included.
//! - `AuthMode::Open` (`allow_unauthenticated := true`): no token needed.
//!
//! A credential that is presented is always checked, in every mode: a wrong token is refused, never ignored.
//! Tokens themselves (records, hashes, scopes) are the catalog's (`catalog::access`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use base64::Engine;

use crate::catalog::access::{Principal, Tokens};
use crate::engine::error::Code;
use crate::proto::flight::ProvenBearer;
use crate::proto::status;

/// What a listener demands of its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Protected,
    Token,
    Open,
}

impl AuthMode {
    /// From the listen options `auth` (`'protected'` or `'token'`) and `allow_unauthenticated`.
    pub fn from_options(auth: Option<&str>, allow_unauthenticated: bool) -> Result<AuthMode, String> {
        let named = match auth.map(|a| a.trim().to_ascii_lowercase()) {
            None => None,
            Some(a) if a == "protected" => Some(AuthMode::Protected),
            Some(a) if a == "token" => Some(AuthMode::Token),
            Some(other) => return Err(format!("invalid value for option auth: {other:?} (allowed: protected, token)")),
        };
        match (named, allow_unauthenticated) {
            (Some(AuthMode::Token), true) => {
                Err("auth := 'token' and allow_unauthenticated := true contradict each other; choose one".into())
            }
            (_, true) => Ok(AuthMode::Open),
            (named, false) => Ok(named.unwrap_or(AuthMode::Protected)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Protected => "protected",
            AuthMode::Token => "token",
            AuthMode::Open => "none",
        }
    }
}

/// A credential as a client presented it.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    /// HTTP Basic (Flight's Handshake): the token's name and its secret.
    Basic {
        name: String,
        secret: String,
    },
}

impl Credential {
    pub fn secret(&self) -> &str {
        match self {
            Credential::Bearer(s) | Credential::Basic { secret: s, .. } => s,
        }
    }
}

/// Why a request was refused before it reached any protocol code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "arrowport is in protected mode: no token exists, so only loopback clients are served. Create one with \
         CALL arrowport_create_token('<name>') and send it as 'authorization: Bearer <token>', or listen with \
         allow_unauthenticated := true"
    )]
    ProtectedNoTokens,
    #[error(
        "a token is required: send 'authorization: Bearer <token>' (create one with CALL arrowport_create_token('<name>'))"
    )]
    Missing,
    #[error("the token is not valid (unknown or revoked)")]
    Invalid,
    #[error("the authorization header is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "requests from web pages are refused: Origin {0:?} is not allowed on this listener (allow it with \
         allowed_origins := ['<origin>'])"
    )]
    ForeignOrigin(String),
    #[error(
        "a loopback client without a token must address the listener as localhost or an IP address, not as {0:?} \
         (a web page may reach 127.0.0.1 under another name); name it with allowed_hosts := ['<name>'], or send a token"
    )]
    UntrustedHost(String),
    #[error("a loopback client without a token must send a Host header (HTTP) or :authority (gRPC)")]
    NoHost,
}

impl AuthError {
    pub fn code(&self) -> Code {
        match self {
            AuthError::ForeignOrigin(_) | AuthError::UntrustedHost(_) | AuthError::NoHost => Code::Denied,
            _ => Code::Unauthenticated,
        }
    }
}

/// Parses an `authorization` header value: `Bearer <token>` or `Basic base64(name:secret)`.
pub fn parse_header(value: &[u8]) -> Result<Credential, AuthError> {
    let text = std::str::from_utf8(value).map_err(|_| AuthError::Malformed("not UTF-8"))?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Malformed("expected 'Bearer <token>'"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthError::Malformed("the bearer token is empty"));
        }
        return Ok(Credential::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Malformed("Basic credentials are not base64"))?;
        let raw = String::from_utf8(raw).map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
        let (name, secret) = raw.split_once(':').ok_or(AuthError::Malformed("Basic credentials need 'name:token'"))?;
        return Ok(Credential::Basic { name: name.to_string(), secret: secret.to_string() });
    }
    Err(AuthError::Malformed("expected 'Bearer <token>' or 'Basic <credentials>'"))
}

/// Loopback in every spelling, IPv4-mapped IPv6 included.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The decision for one request.
pub fn authenticate(
    mode: AuthMode,
    peer: IpAddr,
    credential: Option<&Credential>,
    tokens: &Tokens,
) -> Result<Principal, AuthError> {
    if let Some(c) = credential {
        let (name, scope, access) = match c {
            Credential::Bearer(secret) => tokens.verify(secret, None),
            Credential::Basic { name, secret } => tokens.verify(secret, Some(name)),
        }
        .ok_or(AuthError::Invalid)?;
        return Ok(Principal::Token { name, scope, access });
    }
    match mode {
        AuthMode::Open => Ok(Principal::Anonymous),
        AuthMode::Token => Err(AuthError::Missing),
        AuthMode::Protected if is_loopback(peer) => Ok(Principal::Anonymous),
        AuthMode::Protected if tokens.is_empty() => Err(AuthError::ProtectedNoTokens),
        AuthMode::Protected => Err(AuthError::Missing),
    }
}

/// What a listener checks before any protocol code sees a connection or a request: TLS and authentication.
pub struct Gate {
    pub mode: AuthMode,
    pub tokens: Arc<Tokens>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest TLS handshake, and longest wait for an HTTP/1.1 request's headers.
    pub handshake_timeout: Duration,
    /// Names a loopback client may address the listener by, besides IP literals and `localhost` (lowercase).
    pub allowed_hosts: Vec<String>,
    /// Browser origins whose requests are served (`scheme://host[:port]`, lowercase).
    pub allowed_origins: Vec<String>,
}

/// Paths served without authentication: liveness and readiness only, nothing about the data.
fn is_public(request: &axum::http::Request<hyper::body::Incoming>) -> bool {
    // The status page itself holds no data (it asks `/status.json`, which is not public, with a token).
    request.method() == Method::GET && matches!(request.uri().path(), "/health" | "/ready" | "/")
}

/// The host a request addresses: HTTP/2's `:authority` (and an absolute HTTP/1.1 target), else the `Host`
/// header; without a port, IPv6 brackets removed, lowercase.
fn addressed_host<B>(request: &axum::http::Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(a) => a.clone(),
        None => request.headers().get(header::HOST)?.to_str().ok()?.parse::<axum::http::uri::Authority>().ok()?,
    };
    let host = authority.host();
    Some(host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
}

/// The authority a request addresses (`host[:port]`, lowercase), as an `Origin` names it.
fn addressed_authority<B>(request: &axum::http::Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => request.headers().get(header::HOST)?.to_str().ok()?.to_string(),
    };
    Some(authority.to_ascii_lowercase())
}

/// Normalises an origin for comparison: lowercase, no trailing slash.
pub fn normal_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl Gate {
    /// A request that carries a browser `Origin` is refused unless the origin is allowed: a web page must not
    /// write into the database through a browser that can reach the listener.
    /// The listener's own page (`GET /`) is same-origin: an `Origin` naming the very authority the request
    /// addresses passes, when that authority is one the listener answers to as itself (an IP literal,
    /// `localhost`, an allowed name): a foreign page on a DNS name rebound to the listener's address is not.
    fn check_origin<B>(&self, request: &axum::http::Request<B>) -> Result<(), AuthError> {
        let Some(origin) = request.headers().get(header::ORIGIN) else { return Ok(()) };
        let origin = normal_origin(&String::from_utf8_lossy(origin.as_bytes()));
        let same = origin.split_once("://").map(|(_, authority)| authority) == addressed_authority(request).as_deref()
            && self.check_host(request).is_ok();
        if same || self.allowed_origins.contains(&origin) { Ok(()) } else { Err(AuthError::ForeignOrigin(origin)) }
    }

    /// Loopback trust (protected mode, no token) needs the request to address the listener as an IP literal,
    /// `localhost` or an allowed name: a page that rebinds its own DNS name to 127.0.0.1 addresses it by that name.
    fn check_host<B>(&self, request: &axum::http::Request<B>) -> Result<(), AuthError> {
        let host = addressed_host(request).ok_or(AuthError::NoHost)?;
        if host.parse::<IpAddr>().is_ok() || host == "localhost" || self.allowed_hosts.contains(&host) {
            Ok(())
        } else {
            Err(AuthError::UntrustedHost(host))
        }
    }

    /// Authenticates a request and passes it on with its [`Principal`], or answers it with a refusal in the
    /// protocol it speaks (a gRPC status, or HTTP 401 / 403 with a JSON error).
    pub async fn pass(
        &self,
        app: axum::Router,
        peer: SocketAddr,
        mut request: axum::http::Request<hyper::body::Incoming>,
    ) -> axum::response::Response {
        use tower::ServiceExt;
        let decided = if is_public(&request) {
            Ok(Principal::Anonymous)
        } else {
            let credential =
                request.headers().get(header::AUTHORIZATION).map(|v| parse_header(v.as_bytes())).transpose();
            self.check_origin(&request).and(credential).and_then(|c| {
                let principal = authenticate(self.mode, peer.ip(), c.as_ref(), &self.tokens)?;
                if c.is_none() && self.mode == AuthMode::Protected {
                    self.check_host(&request)?;
                }
                if let Some(c) = c.filter(|_| request.uri().path().ends_with("/Handshake")) {
                    request.extensions_mut().insert(ProvenBearer(c.secret().to_string()));
                }
                Ok(principal)
            })
        };
        match decided {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
            Err(e) => refusal(status::is_grpc(&request), &e),
        }
    }
}

/// The answer to a request that failed authentication.
fn refusal(grpc: bool, e: &AuthError) -> axum::response::Response {
    if grpc {
        return status::grpc(e.code(), e.to_string()).into_http();
    }
    let mut response = status::http(e.code(), e.to_string());
    if e.code() == Code::Unauthenticated {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"arrowport\""));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::access::{Scope, new_token};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn with_token(scope: Scope) -> (Tokens, String) {
        let tokens = Tokens::default();
        let (record, secret) = new_token("etl", scope, 1).unwrap();
        tokens.put(record);
        (tokens, secret)
    }

    #[test]
    fn loopback_in_every_spelling() {
        for a in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip(a)), "{a}");
        }
        for a in ["192.0.2.2", "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0"] {
            assert!(!is_loopback(ip(a)), "{a}");
        }
    }

    #[test]
    fn protected_mode_serves_loopback_only_until_a_token_exists() {
        let none = Tokens::default();
        assert_eq!(authenticate(AuthMode::Protected, ip("127.0.0.1"), None, &none), Ok(Principal::Anonymous));
        assert_eq!(authenticate(AuthMode::Protected, ip("192.0.2.2"), None, &none), Err(AuthError::ProtectedNoTokens));
        let msg = AuthError::ProtectedNoTokens.to_string();
        assert!(msg.contains("arrowport_create_token") && msg.contains("allow_unauthenticated"), "{msg}");

        let (tokens, secret) = with_token(Scope::All);
        assert_eq!(authenticate(AuthMode::Protected, ip("192.0.2.2"), None, &tokens), Err(AuthError::Missing));
        assert_eq!(authenticate(AuthMode::Protected, ip("::1"), None, &tokens), Ok(Principal::Anonymous));
        let good = Credential::Bearer(secret);
        assert!(matches!(
            authenticate(AuthMode::Protected, ip("192.0.2.2"), Some(&good), &tokens),
            Ok(Principal::Token { .. })
        ));
    }

    #[test]
    fn token_mode_demands_a_token_from_loopback_too() {
        let (tokens, secret) = with_token(Scope::All);
        assert_eq!(authenticate(AuthMode::Token, ip("127.0.0.1"), None, &tokens), Err(AuthError::Missing));
        let p = authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens).unwrap();
        assert!(matches!(p, Principal::Token { ref name, .. } if &**name == "etl"));
    }

    #[test]
    fn open_mode_needs_nothing_but_still_checks_what_is_presented() {
        let (tokens, _) = with_token(Scope::All);
        assert_eq!(authenticate(AuthMode::Open, ip("192.0.2.2"), None, &tokens), Ok(Principal::Anonymous));
        let wrong = Credential::Bearer("arrowport_nope".into());
        assert_eq!(authenticate(AuthMode::Open, ip("127.0.0.1"), Some(&wrong), &tokens), Err(AuthError::Invalid));
    }

    #[test]
    fn wrong_revoked_and_misnamed_tokens_are_refused() {
        let (tokens, secret) = with_token(Scope::All);
        let mut bad = secret.clone();
        bad.push('x');
        assert_eq!(
            authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(bad)), &tokens),
            Err(AuthError::Invalid)
        );
        let basic = Credential::Basic { name: "other".into(), secret: secret.clone() };
        assert_eq!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&basic), &tokens), Err(AuthError::Invalid));
        let basic = Credential::Basic { name: "etl".into(), secret: secret.clone() };
        assert!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&basic), &tokens).is_ok());
        assert!(tokens.remove("etl"));
        assert_eq!(
            authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn scopes_limit_streams_and_target_choice() {
        let (tokens, secret) = with_token(Scope::Streams(vec!["events".into()]));
        let p = authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens).unwrap();
        assert!(p.may_use("events"));
        assert!(!p.may_use("orders"));
        assert!(!p.may_choose_target());
        assert!(p.denied("orders").contains("\"etl\""));
        assert!(Principal::Anonymous.may_choose_target());
    }

    fn gate(hosts: &[&str], origins: &[&str]) -> Gate {
        Gate {
            mode: AuthMode::Protected,
            tokens: Arc::default(),
            tls: None,
            handshake_timeout: Duration::from_secs(1),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_origins: origins.iter().map(|o| normal_origin(o)).collect(),
        }
    }

    fn request(host: Option<&str>, origin: Option<&str>) -> axum::http::Request<()> {
        let mut b = axum::http::Request::builder().uri("/streams/events");
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn loopback_trust_needs_a_host_the_listener_answers_to() {
        let g = gate(&["arrowport.internal"], &[]);
        for ok in ["127.0.0.1:8815", "localhost:8815", "LOCALHOST", "[::1]:8815", "10.1.2.3", "arrowport.internal:1"] {
            assert_eq!(g.check_host(&request(Some(ok), None)), Ok(()), "{ok}");
        }
        assert_eq!(
            g.check_host(&request(Some("evil.example:8815"), None)),
            Err(AuthError::UntrustedHost("evil.example".into()))
        );
        assert_eq!(g.check_host(&request(None, None)), Err(AuthError::NoHost));
        let h2 = axum::http::Request::builder().uri("http://evil.example:8815/x").body(()).unwrap();
        assert_eq!(g.check_host(&h2), Err(AuthError::UntrustedHost("evil.example".into())));
        assert_eq!(AuthError::NoHost.code(), Code::Denied);
    }

    #[test]
    fn browser_origins_are_refused_unless_allowed() {
        let g = gate(&[], &["http://localhost:3000/"]);
        assert_eq!(g.check_origin(&request(Some("127.0.0.1"), None)), Ok(()));
        assert_eq!(g.check_origin(&request(Some("127.0.0.1"), Some("HTTP://localhost:3000"))), Ok(()));
        assert_eq!(
            g.check_origin(&request(Some("127.0.0.1:8815"), Some("http://127.0.0.1:8815"))),
            Ok(()),
            "same origin"
        );
        assert!(g.check_origin(&request(Some("127.0.0.1:8815"), Some("http://127.0.0.1:8816"))).is_err());
        let rebound = request(Some("evil.example:8815"), Some("http://evil.example:8815"));
        assert!(g.check_origin(&rebound).is_err(), "a rebound name is not the listener's own origin");
        let e = g.check_origin(&request(Some("127.0.0.1"), Some("http://evil.example"))).unwrap_err();
        assert_eq!((e.code(), e.to_string().contains("\"http://evil.example\"")), (Code::Denied, true));
    }

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header(b"Bearer abc"), Ok(Credential::Bearer("abc".into())));
        assert_eq!(parse_header(b"bearer  abc "), Ok(Credential::Bearer("abc".into())));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("etl:s3cret"));
        assert_eq!(
            parse_header(basic.as_bytes()),
            Ok(Credential::Basic { name: "etl".into(), secret: "s3cret".into() })
        );
        assert!(matches!(parse_header(b"Bearer "), Err(AuthError::Malformed(_))));
        assert!(matches!(parse_header(b"Token abc"), Err(AuthError::Malformed(_))));
        assert!(matches!(parse_header(b"Basic !!!"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn modes_from_options() {
        assert_eq!(AuthMode::from_options(None, false), Ok(AuthMode::Protected));
        assert_eq!(AuthMode::from_options(Some("TOKEN"), false), Ok(AuthMode::Token));
        assert_eq!(AuthMode::from_options(None, true), Ok(AuthMode::Open));
        assert!(AuthMode::from_options(Some("token"), true).is_err());
        assert!(AuthMode::from_options(Some("basic"), false).is_err());
    }

    #[test]
    fn last_use_is_remembered() {
        let (tokens, secret) = with_token(Scope::All);
        assert_eq!(tokens.all()[0].last_used_us, None);
        authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens).unwrap();
        assert!(tokens.all()[0].last_used_us.is_some());
    }
}
