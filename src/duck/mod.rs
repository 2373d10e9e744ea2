//! The DuckDB layer: the only `unsafe` code of arrowport (with `alloc`) and the only user of DuckDB's C API.
//!
//! It holds the C entrypoint DuckDB calls on `LOAD` ([`crate::entrypoint!`], [`entry`]), arrowport's own database
//! ([`database::Database`]), our own connections
//! ([`conn::RawConn`]) and the transaction guard that rolls back unless committed ([`conn::Txn`]), prepared statements and
//! their streaming Arrow results ([`statement::Prepared`], [`statement::Rows`]), the Arrow C stream DuckDB's scan pulls batches from
//! ([`scan::ScanStream`]), and the vector helpers of the SQL functions ([`vector`]). Nothing here knows about
//! protocols, streams or tables: callers pass SQL text and batch sources. Every `unsafe` block says which
//! invariant makes it sound; every call into us from C runs behind the panic boundary (`crate::panic`).
#![allow(unsafe_code)]

pub mod caller;
pub mod conn;
pub mod database;
pub mod entry;
pub mod error;
pub mod os;
pub mod scan;
pub mod statement;
pub mod vector;

use std::ffi::CStr;

use duckdb::ffi as sys;

/// The C API version the binary is built against: DuckDB's stable extension API, so one binary loads in every
/// DuckDB release from 1.2.0 on (the footer written by `scripts/append_metadata.py` says the same).
pub const MIN_C_API: &str = "v1.2.0";

/// How many connections the entrypoint opens for the writers. They can only be opened while DuckDB hands us
/// the database (during `LOAD`), so this is the ceiling on concurrent writes into DuckDB.
pub const POOL_SIZE: usize = 8;

/// How many connections the entrypoint opens for statements sent over the network (Flight SQL), apart from the
/// writers: a statement a client sends never runs on a connection that lands data.
pub const STATEMENT_POOL_SIZE: usize = 4;

pub use error::{DbError, DbErrorKind};

/// The version string of the DuckDB library we run in, e.g. `v1.5.6`.
pub fn library_version() -> String {
    // SAFETY: the API table is filled by the entrypoint before any SQL function can run; the returned pointer
    // is a static NUL-terminated string owned by DuckDB.
    unsafe {
        let p = sys::duckdb_library_version();
        if p.is_null() { "unknown".to_string() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}
