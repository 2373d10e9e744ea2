//! Who may use a listener: protected mode, bearer tokens and their stream scopes.
//!
//! Every request passes [`authenticate`] once, at the edge (the accept loop in `server`), before any protocol
//! code sees it; the resulting [`Principal`] travels in the request's extensions and the ingest core checks its
//! scope against the stream. The rules:
//! - `AuthMode::Protected` (the default, as Redis does it): while no token exists only loopback clients are
//!   served; once tokens exist, non-loopback clients must present one. Loopback clients without one are served.
//! - `AuthMode::Token` (`auth := 'token'`): every client presents a token, loopback included.
//! - `AuthMode::Open` (`allow_unauthenticated := true`): no token needed.
//!
//! A credential that is presented is always checked, in every mode: a wrong token is refused, never ignored.
//! Secrets are random 256-bit strings shown once by `arrowport_create_token`; only `SHA-256(salt || secret)`
//! with a per-token random salt is kept (in `arrowport.tokens`). A secret has full entropy, so a fast hash is
//! the right one; comparison is constant-time. No secret is ever logged or echoed in an error.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use ring::rand::SecureRandom;

use crate::error::Code;

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

/// The streams a token may write to and see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Streams(Vec<String>),
}

impl Scope {
    pub fn allows(&self, stream: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Streams(list) => list.iter().any(|s| s == stream),
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential, and the listener did not need one (loopback in protected mode, or an open listener).
    Anonymous,
    Token { name: Arc<str>, scope: Arc<Scope> },
}

impl Principal {
    /// Whether this principal may write to (and see) `stream`.
    pub fn may_use(&self, stream: &str) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token { scope, .. } => scope.allows(stream),
        }
    }

    /// Whether this principal may name its own target table (the original JSON endpoint's `target_table`),
    /// which bypasses stream mappings: only principals not limited to a list of streams.
    pub fn may_choose_target(&self) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token { scope, .. } => **scope == Scope::All,
        }
    }

    /// The refusal for a stream outside this principal's scope.
    pub fn denied(&self, stream: &str) -> String {
        match self {
            Principal::Token { name, .. } => format!("token {name:?} is not allowed to use stream {stream:?}"),
            Principal::Anonymous => format!("not allowed to use stream {stream:?}"),
        }
    }
}

/// A credential as a client presented it.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    /// HTTP Basic (Flight's Handshake): the token's name and its secret.
    Basic { name: String, secret: String },
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
    #[error("a token is required: send 'authorization: Bearer <token>' (create one with CALL arrowport_create_token('<name>'))")]
    Missing,
    #[error("the token is not valid (unknown or revoked)")]
    Invalid,
    #[error("the authorization header is malformed: {0}")]
    Malformed(&'static str),
}

impl AuthError {
    pub fn code(&self) -> Code {
        Code::Unauthenticated
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
        let raw = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| AuthError::Malformed("Basic credentials are not base64"))?;
        let raw = String::from_utf8(raw).map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
        let (name, secret) = raw.split_once(':').ok_or(AuthError::Malformed("Basic credentials need 'name:token'"))?;
        return Ok(Credential::Basic { name: name.to_string(), secret: secret.to_string() });
    }
    Err(AuthError::Malformed("expected 'Bearer <token>' or 'Basic <credentials>'"))
}

thread_local! {
    /// Set while a writer thread runs a statement that came over the network.
    static REMOTE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as executing a statement sent over the network (see [`refuse_if_remote`]).
pub fn as_remote<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REMOTE.with(|r| r.set(false));
        }
    }
    REMOTE.with(|r| r.set(true));
    let _reset = Reset;
    f()
}

/// arrowport's own administrative SQL functions call this: they manage listeners, streams and tokens, and must
/// not be reachable through SQL that a client sent over the network (a token could mint itself a better one).
pub fn refuse_if_remote(function: &str) -> Result<(), String> {
    if REMOTE.with(|r| r.get()) {
        Err(format!("{function} cannot be called over the network; call it in the host's own session"))
    } else {
        Ok(())
    }
}

/// Loopback in every spelling, IPv4-mapped IPv6 included.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The decision for one request.
pub fn authenticate(mode: AuthMode, peer: IpAddr, credential: Option<&Credential>, tokens: &Tokens) -> Result<Principal, AuthError> {
    if let Some(c) = credential {
        let (name, scope) = tokens.verify(c).ok_or(AuthError::Invalid)?;
        return Ok(Principal::Token { name, scope });
    }
    match mode {
        AuthMode::Open => Ok(Principal::Anonymous),
        AuthMode::Token => Err(AuthError::Missing),
        AuthMode::Protected if is_loopback(peer) => Ok(Principal::Anonymous),
        AuthMode::Protected if tokens.is_empty() => Err(AuthError::ProtectedNoTokens),
        AuthMode::Protected => Err(AuthError::Missing),
    }
}

/// One token as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
    pub scope: Scope,
    /// Microseconds since the epoch.
    pub created_us: i64,
    pub last_used_us: Option<i64>,
}

/// A new token: its record (to store) and its secret (to show once).
pub fn new_token(name: &str, scope: Scope, now_us: i64) -> Result<(TokenRecord, String), String> {
    validate_token_name(name)?;
    if let Scope::Streams(list) = &scope {
        if list.is_empty() {
            return Err("streams := [] would allow no stream; leave streams out to allow every stream".into());
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    rng.fill(&mut secret).map_err(|_| "the system's random number generator failed".to_string())?;
    rng.fill(&mut salt).map_err(|_| "the system's random number generator failed".to_string())?;
    let secret = format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    let hash = digest(&salt, &secret);
    Ok((TokenRecord { name: name.to_string(), salt: salt.to_vec(), hash, scope, created_us: now_us, last_used_us: None }, secret))
}

/// Every secret starts with this, so secret scanners and people can tell what it is.
pub const SECRET_PREFIX: &str = "arrowport_";

pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("a token name must have 1 to 128 characters".into());
    }
    if name.chars().any(|c| c.is_control() || c == ':') {
        return Err(format!("invalid token name {name:?}: control characters and ':' are not allowed"));
    }
    Ok(())
}

fn digest(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The tokens in effect, in memory; `arrowport.tokens` is their persisted copy.
#[derive(Default)]
pub struct Tokens {
    records: RwLock<Vec<TokenRecord>>,
    /// Last use per token name, kept in memory and saved with the tokens on request.
    used: Mutex<HashMap<String, i64>>,
}

impl Tokens {
    pub fn load(&self, records: Vec<TokenRecord>) {
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
    }

    pub fn is_empty(&self) -> bool {
        self.records.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    pub fn put(&self, record: TokenRecord) {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        records.retain(|r| r.name != record.name);
        records.push(record);
    }

    pub fn remove(&self, name: &str) -> bool {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let before = records.len();
        records.retain(|r| r.name != name);
        records.len() != before
    }

    pub fn get(&self, name: &str) -> Option<TokenRecord> {
        self.records.read().unwrap_or_else(|p| p.into_inner()).iter().find(|r| r.name == name).cloned()
    }

    /// Every token, with its last use as known in memory.
    pub fn all(&self) -> Vec<TokenRecord> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<TokenRecord> = self.records.read().unwrap_or_else(|p| p.into_inner()).clone();
        for r in &mut out {
            if let Some(&t) = used.get(&r.name) {
                r.last_used_us = Some(r.last_used_us.map_or(t, |old| old.max(t)));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Last uses seen since the tokens were loaded, for saving.
    pub fn used(&self) -> Vec<(String, i64)> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The token a credential proves, as (name, scope). Every record is checked, so the time taken does not
    /// tell which one matched.
    fn verify(&self, credential: &Credential) -> Option<(Arc<str>, Arc<Scope>)> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for r in records.iter() {
            let matches = constant_time_eq(&digest(&r.salt, credential.secret()), &r.hash);
            if matches && found.is_none() {
                found = Some(r);
            }
        }
        let r = found?;
        if let Credential::Basic { name, .. } = credential {
            if name != &r.name {
                return None;
            }
        }
        let name: Arc<str> = Arc::from(r.name.as_str());
        let scope = Arc::new(r.scope.clone());
        drop(records);
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), now_us());
        Some((name, scope))
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Hex for storing salts and hashes in a VARCHAR column.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(authenticate(AuthMode::Protected, ip("192.0.2.2"), Some(&good), &tokens), Ok(Principal::Token { .. })));
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
        assert_eq!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(bad)), &tokens), Err(AuthError::Invalid));
        let basic = Credential::Basic { name: "other".into(), secret: secret.clone() };
        assert_eq!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&basic), &tokens), Err(AuthError::Invalid));
        let basic = Credential::Basic { name: "etl".into(), secret: secret.clone() };
        assert!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&basic), &tokens).is_ok());
        assert!(tokens.remove("etl"));
        assert_eq!(authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens), Err(AuthError::Invalid));
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

    #[test]
    fn secrets_are_random_and_only_their_salted_hash_is_kept() {
        let (a, sa) = new_token("a", Scope::All, 1).unwrap();
        let (b, sb) = new_token("b", Scope::All, 1).unwrap();
        assert_ne!(sa, sb);
        assert!(sa.starts_with(SECRET_PREFIX) && sa.len() == SECRET_PREFIX.len() + 43);
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.hash, digest(&a.salt, &sa));
        assert!(!format!("{a:?}").contains(&sa[SECRET_PREFIX.len()..]));
        assert!(new_token("", Scope::All, 1).is_err());
        assert!(new_token("a:b", Scope::All, 1).is_err());
        assert!(new_token("x", Scope::Streams(vec![]), 1).is_err());
    }

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header(b"Bearer abc"), Ok(Credential::Bearer("abc".into())));
        assert_eq!(parse_header(b"bearer  abc "), Ok(Credential::Bearer("abc".into())));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("etl:s3cret"));
        assert_eq!(parse_header(basic.as_bytes()), Ok(Credential::Basic { name: "etl".into(), secret: "s3cret".into() }));
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
    fn hex_round_trips() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn last_use_is_remembered() {
        let (tokens, secret) = with_token(Scope::All);
        assert_eq!(tokens.all()[0].last_used_us, None);
        authenticate(AuthMode::Token, ip("127.0.0.1"), Some(&Credential::Bearer(secret)), &tokens).unwrap();
        assert!(tokens.all()[0].last_used_us.is_some());
    }
}
