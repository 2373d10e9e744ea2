//! arrowport: a DuckDB extension that lands Arrow data sent over the network straight into the host database.
//!
//! `LOAD arrowport; SELECT arrowport_listen('127.0.0.1:8815');` starts, inside the DuckDB process, a listener that
//! takes Arrow Flight `DoPut` streams and REST bodies on one port and writes each request into a table in one
//! transaction.
//!
//! The modules, one concern each:
//! - [`ffi`]: the only `unsafe` code: the C entrypoint, our DuckDB connections, the Arrow C stream DuckDB scans.
//! - [`sql`]: the SQL functions (`arrowport_listen`, `arrowport_stop`, `arrowport_status`, `arrowport_version`).
//! - [`server`]: the runtime, the writer threads, listeners (TLS and the authentication gate), start and stop.
//! - [`auth`]: protected mode, bearer tokens, scopes: who may use a listener.
//! - [`tls`]: PEM files into a rustls configuration.
//! - [`flight`]: the Arrow Flight protocol adapter (and the dispatch to Flight SQL).
//! - [`flightsql`]: Arrow Flight SQL: ADBC bulk ingest, statements, prepared statements, catalog browsing.
//! - [`rest`]: the REST adapter (raw Arrow IPC bodies, the original service's JSON body, health, listings).
//! - [`decode`]: Arrow IPC from a byte stream that arrives in pieces.
//! - [`ingest`]: the protocol-independent core: decoded Arrow in, one committed transaction out.
//! - [`query`]: the protocol-independent query core: SQL in (as the listener allows), Arrow out.
//! - [`writer`]: the DuckDB side of a write (DuckDB's Arrow scan, the transaction, table creation).
//! - [`registry`]: stream mappings (cached) and how a stream name resolves to its table.
//! - [`store`]: stream mappings and tokens (hashes) persisted in the host database.
//! - [`metrics`]: counters and histograms behind `arrowport_metrics()` and `GET /metrics`.
//! - [`schema`]: which Arrow types DuckDB holds, SQL quoting, table fit checks.
//! - [`error`]: the failure classes and their gRPC / HTTP statuses.
#![deny(unsafe_code)]

pub mod auth;
pub mod decode;
pub mod error;
pub mod ffi;
pub mod flight;
pub mod flightsql;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod registry;
pub mod rest;
pub mod schema;
pub mod server;
pub mod sql;
pub mod store;
pub mod tls;
pub mod writer;

use std::sync::Once;

/// Large blocks straight from the kernel: see [`ffi::LargeMmap`] (README, "Write path", on memory).
#[global_allocator]
static ALLOCATOR: ffi::LargeMmap = ffi::LargeMmap;

static AT_EXIT: Once = Once::new();
static PANIC_HOOK: Once = Once::new();

/// Called by the entrypoint on `LOAD`, with our connections already open.
pub fn init(ctx: ffi::LoadContext) -> Result<(), Box<dyn std::error::Error>> {
    PANIC_HOOK.call_once(quiet_panics);
    let host = server::Host::new(ctx.pool, store::Store::new(ctx.admin));
    sql::register(&ctx.conn, host)?;
    AT_EXIT.call_once(|| ffi::at_exit(server::stop_all_at_exit));
    Ok(())
}

/// Every panic in arrowport is contained where it happens: the request or statement fails with the panic's
/// message (arrow-ipc panics on some malformed input, for one), and the host keeps running. Rust's default
/// report would still print a panic and backtrace note on the host's stderr, which is the user's DuckDB
/// session; `ARROWPORT_LOG_PANICS=1` in the host's environment brings it back. The hook belongs to arrowport's
/// own copy of the Rust runtime (a cdylib links its own), so other Rust code in the process keeps its own.
fn quiet_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("ARROWPORT_LOG_PANICS").is_some_and(|v| v == "1") {
            report(info);
        }
    }));
}
