//! What `arrowport_listen` takes: its options, their defaults, the address, and its errors.

use super::*;

/// Largest Flight or IPC message accepted by default (`max_message_bytes` changes it).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Largest REST body on the wire by default (`max_body_bytes` changes it). Bodies stream, so this bounds a
/// request's duration and disk use, not memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid listen address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("arrowport is already listening on {0}")]
    AlreadyListening(SocketAddr),
    #[error("could not listen on {0}: {1}")]
    Bind(SocketAddr, String),
    #[error("invalid value for option {0}: {1}")]
    BadOption(&'static str, String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("arrowport could not start: {0}")]
    Start(String),
}

/// Options of `arrowport_listen`.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub max_message_bytes: usize,
    pub max_body_bytes: u64,
    /// REST on an address of its own; `None` serves REST on the Flight port.
    pub rest: Option<String>,
    /// Refuse stream names without a mapping (`unknown_streams := 'reject'`).
    pub reject_unknown: bool,
    /// Who is served: protected (default), token, or open (`allow_unauthenticated := true`).
    pub auth: AuthMode,
    /// PEM files; both or neither.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Requests served at once; more are refused (RESOURCE_EXHAUSTED / 503).
    pub max_concurrent_requests: usize,
    /// How long a client may send nothing (mid-request, or before its request headers / TLS handshake).
    pub stall_timeout: Duration,
    /// SQL statements over Flight SQL: off (default), read_only or read_write.
    pub sql: Access,
    /// Names loopback clients without a token may address the listener by (besides IP literals, `localhost`).
    pub allowed_hosts: Vec<String>,
    /// Browser origins whose requests are served; requests with any other `Origin` header are refused.
    pub allowed_origins: Vec<String>,
    /// The host-wide memory budget (bytes); set by the listen that starts the host's runtime.
    pub memory_budget: Option<usize>,
    /// The process's resident size above which statements sent over the network that grew it are interrupted
    /// (bytes; DuckDB's `memory_limit` when not given); set by the listen that starts the host's runtime.
    pub sql_memory_limit: Option<u64>,
    /// How long idempotency keys of this listener's requests are kept.
    pub idempotency_window: Duration,
    /// Connections kept open at once (see `connections`).
    pub max_connections: usize,
    /// Fields a request's schema may have, and bytes its schema message may take.
    pub max_columns: usize,
    pub max_schema_bytes: usize,
    /// How long a statement sent over the network may run, and how much SQL text it may have.
    pub statement_timeout: Duration,
    pub max_sql_bytes: usize,
    /// How often a grouped commit that lost a race with another host's (a shared DuckLake) is tried again.
    pub commit_retries: u32,
    /// DuckLake's pause before it retries a grouped commit that lost a race (`ducklake_retry_wait_ms`).
    pub commit_retry_wait: Duration,
    /// How long a group commit waits for more small requests after its first (0: none).
    pub group_window: Duration,
    /// The write-ahead log size at which arrowport checkpoints a busy database file; 0 leaves checkpoints to
    /// DuckDB (see `host::checkpoints`). Set by the listen that starts the first listener.
    pub checkpoint_wal: u64,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rest: None,
            reject_unknown: false,
            auth: AuthMode::Protected,
            tls_cert: None,
            tls_key: None,
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
            stall_timeout: STALL_LIMIT,
            sql: Access::Off,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            memory_budget: None,
            sql_memory_limit: None,
            idempotency_window: IDEMPOTENCY_WINDOW,
            max_connections: connections::DEFAULT_MAX_CONNECTIONS,
            max_columns: policy::MAX_COLUMNS,
            max_schema_bytes: policy::MAX_SCHEMA_BYTES,
            statement_timeout: policy::STATEMENT_TIMEOUT,
            max_sql_bytes: policy::MAX_SQL_BYTES,
            commit_retries: policy::COMMIT_RETRIES,
            commit_retry_wait: policy::COMMIT_RETRY_WAIT,
            group_window: Duration::ZERO,
            checkpoint_wal: crate::host::checkpoints::DEFAULT_WAL,
        }
    }
}

/// Parses `host:port`; an address with no host (`:8815`) means loopback.
pub fn parse_addr(text: &str) -> Result<SocketAddr, ListenError> {
    let full = if text.starts_with(':') { format!("127.0.0.1{text}") } else { text.to_string() };
    let mut addrs = full.to_socket_addrs().map_err(|e| ListenError::BadAddress(text.to_string(), e.to_string()))?;
    addrs.next().ok_or_else(|| ListenError::BadAddress(text.to_string(), "it resolves to no address".into()))
}
