//! The engine: everything between a decoded request and a committed transaction, independent of protocols.
//!
//! The protocol adapters call one [`core::Core`]: the ingest pipeline ([`ingest`]) reads a request's batches
//! and hands them to the writer pool ([`writers`]), whose writers are [`session::Session`]s (in production
//! [`duck_session::DuckSession`], one DuckDB connection each); the query core ([`query`]) runs SQL statements as the
//! listener's [`policy`] allows. [`error`] is the one classification of failures; [`metrics`] counts what
//! landed. Only `duck_session` talks to DuckDB (through `duck`).

pub mod budget;
pub mod core;
pub mod duck_session;
pub mod error;
pub mod follow;
pub mod follow_hub;
pub mod ingest;
pub mod memory_guard;
pub mod metrics;
pub mod policy;
pub mod query;
pub mod session;
pub mod sql_tree;
pub mod writers;

/// arrowport's version, as `arrowport_version()` and Flight SQL's server info report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
