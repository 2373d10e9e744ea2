//! The catalog: what arrowport knows about streams, tokens and tables.
//!
//! [`registry`] resolves a stream name to its mapping (target table, schema policy, mode, key); [`store`]
//! persists mappings and token hashes in the host database; [`schema`] decides how Arrow schemas meet DuckDB
//! tables; [`merge`] how a keyed stream's requests apply to its table; [`access`] holds principals, scopes and
//! tokens. Only `store` runs SQL (through `duck`).

pub mod access;
pub mod merge;
pub mod registry;
pub mod schema;
pub mod store;
