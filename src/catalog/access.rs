//! Who a request comes from, and the tokens that say so: [`Principal`] and its [`Scope`], the token records
//! persisted in the host database (salted hashes, never secrets) and the set in effect ([`Tokens`]).
//!
//! Secrets are random 256-bit strings shown once by `arrowport_create_token`; only `SHA-256(salt || secret)`
//! with a per-token random salt is kept. A secret has full entropy, so a fast hash is the right one; comparison
//! is constant-time. No secret is ever logged or echoed in an error. The rules for who must present a token are
//! the gate's (`host::gate`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use ring::rand::SecureRandom;

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

/// What a token may do with its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenAccess {
    /// Send rows (every token made before read access existed).
    #[default]
    Write,
    /// Follow streams.
    Read,
    ReadWrite,
}

impl TokenAccess {
    pub fn name(self) -> &'static str {
        match self {
            TokenAccess::Write => "write",
            TokenAccess::Read => "read",
            TokenAccess::ReadWrite => "read_write",
        }
    }

    pub fn parse(text: &str) -> Result<TokenAccess, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "write" => Ok(TokenAccess::Write),
            "read" => Ok(TokenAccess::Read),
            "read_write" => Ok(TokenAccess::ReadWrite),
            _ => Err(format!("invalid value for option access: {text:?} (allowed: write, read, read_write)")),
        }
    }

    pub fn writes(self) -> bool {
        self != TokenAccess::Read
    }

    pub fn reads(self) -> bool {
        self != TokenAccess::Write
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential, and the listener did not need one (loopback in protected mode, or an open listener).
    Anonymous,
    Token {
        name: Arc<str>,
        scope: Arc<Scope>,
        access: TokenAccess,
    },
}

impl Principal {
    /// Whether this principal may write to (and see) `stream`.
    pub fn may_use(&self, stream: &str) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token { scope, access, .. } => access.writes() && scope.allows(stream),
        }
    }

    /// Whether this principal may follow (read) `stream`.
    pub fn may_read(&self, stream: &str) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Token { scope, access, .. } => access.reads() && scope.allows(stream),
        }
    }

    /// The refusal for a stream this principal may not read.
    pub fn denied_read(&self, stream: &str) -> String {
        match self {
            Principal::Token { name, access, .. } if !access.reads() => {
                format!("token {name:?} may write, not read: it cannot follow stream {stream:?}")
            }
            Principal::Token { name, .. } => format!("token {name:?} is not allowed to follow stream {stream:?}"),
            Principal::Anonymous => format!("not allowed to follow stream {stream:?}"),
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

/// One token as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
    pub scope: Scope,
    pub access: TokenAccess,
    /// Microseconds since the epoch.
    pub created_us: i64,
    pub last_used_us: Option<i64>,
}

/// A new token: its record (to store) and its secret (to show once).
pub fn new_token(name: &str, scope: Scope, now_us: i64) -> Result<(TokenRecord, String), String> {
    token_with_secret(name, scope, now_us, None)
}

/// A token with a secret of the caller's (`arrowport_create_token(..., secret := ...)`: the same token on every
/// host behind a load balancer), or a fresh one. A given secret must be one arrowport made (`arrowport_` and 43
/// more characters of base64url), so it is as strong as a fresh one.
pub fn token_with_secret(
    name: &str,
    scope: Scope,
    now_us: i64,
    given: Option<&str>,
) -> Result<(TokenRecord, String), String> {
    validate_token_name(name)?;
    if let Scope::Streams(list) = &scope
        && list.is_empty()
    {
        return Err("streams := [] would allow no stream; leave streams out to allow every stream".into());
    }
    let rng = ring::rand::SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "the system's random number generator failed".to_string())?;
    let secret = match given {
        Some(g) => {
            let body = g.strip_prefix(SECRET_PREFIX).unwrap_or("");
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap_or_default();
            if decoded.len() != 32 {
                return Err("secret must be a token secret arrowport made (arrowport_ and 43 characters), e.g. one shown by arrowport_create_token on another host".into());
            }
            g.to_string()
        }
        None => {
            let mut secret = [0u8; 32];
            rng.fill(&mut secret).map_err(|_| "the system's random number generator failed".to_string())?;
            format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
        }
    };
    let hash = digest(&salt, &secret);
    Ok((
        TokenRecord {
            name: name.to_string(),
            salt: salt.to_vec(),
            hash,
            scope,
            access: TokenAccess::Write,
            created_us: now_us,
            last_used_us: None,
        },
        secret,
    ))
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
    /// Whether a use was seen since [`Tokens::unsaved`] last took them.
    changed: std::sync::atomic::AtomicBool,
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

    /// Last uses seen since the tokens were loaded, when one came since this was last asked (or marked
    /// [`Tokens::unsaved_again`] after a failed save); `None` when there is nothing new to save.
    pub fn unsaved(&self) -> Option<Vec<(String, i64)>> {
        self.changed.swap(false, std::sync::atomic::Ordering::SeqCst).then(|| self.used())
    }

    /// A save of what [`Tokens::unsaved`] gave failed: the next call gives it again.
    pub fn unsaved_again(&self) {
        self.changed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Last uses seen since the tokens were loaded, for saving.
    pub fn used(&self) -> Vec<(String, i64)> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The token a secret proves, as (name, scope); with `name` (HTTP Basic), only the token of that name.
    /// Every record is checked, so the time taken does not tell which one matched.
    pub fn verify(&self, secret: &str, name: Option<&str>) -> Option<(Arc<str>, Arc<Scope>, TokenAccess)> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for r in records.iter() {
            let matches = constant_time_eq(&digest(&r.salt, secret), &r.hash);
            if matches && found.is_none() {
                found = Some(r);
            }
        }
        let r = found?;
        if name.is_some_and(|n| n != r.name) {
            return None;
        }
        let name: Arc<str> = Arc::from(r.name.as_str());
        let scope = Arc::new(r.scope.clone());
        let access = r.access;
        drop(records);
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), now_us());
        self.changed.store(true, std::sync::atomic::Ordering::SeqCst);
        Some((name, scope, access))
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
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hex_round_trips() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
