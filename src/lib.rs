//! arrowport: a DuckDB extension that lands Arrow data sent over the network straight into the host database.
//!
//! `LOAD arrowport; SELECT arrowport_listen('127.0.0.1:8815');` starts, inside the DuckDB process, a listener that
//! takes Arrow Flight `DoPut` streams, Flight SQL and REST bodies on one port and writes each request into a
//! table in one transaction, acknowledged after commit.
//!
//! The folders are the layers; a module imports only from layers below its own (a test, `layering`, reads the
//! sources and fails on an import that goes up, or on `unsafe` outside `duck` and `alloc`):
//! - [`host`]: what the host's SQL session and the network meet first: SQL functions, listeners and their
//!   runtime, the authentication gate, TLS.
//! - [`proto`]: the protocol adapters (Flight, Flight SQL, REST, IPC framing): bytes to batches and errors to
//!   the wire; they call the engine and never DuckDB.
//! - [`engine`]: the writer pool and group commit, the ingest pipeline, the query core and its policy, the
//!   error classification, metrics.
//! - [`catalog`]: stream mappings, what is persisted in the host database, Arrow to DuckDB schema, tokens and
//!   principals.
//! - [`duck`]: DuckDB's C API: connections, transactions, statements, the Arrow stream DuckDB scans.
//! - [`alloc`] and [`panic`]: the large-block allocator and the panic boundary, used by every layer.
//!
//! This file wires them: the entrypoint DuckDB calls on `LOAD`, and [`init`].
#![deny(unsafe_code)]

pub mod alloc;
pub mod catalog;
pub mod duck;
pub mod engine;
pub mod host;
pub mod panic;
pub mod proto;

#[cfg(test)]
mod layering;

use std::sync::Once;

/// Large blocks straight from the kernel: see [`alloc::LargeMmap`] (README, "Write path", on memory).
#[global_allocator]
static ALLOCATOR: alloc::LargeMmap = alloc::LargeMmap;

static AT_EXIT: Once = Once::new();
static PANIC_HOOK: Once = Once::new();

entrypoint!(init);

/// Called by the entrypoint on `LOAD`, with our connections already open: builds the host's state and
/// registers the SQL functions.
pub fn init(ctx: duck::entry::LoadContext) -> Result<(), Box<dyn std::error::Error>> {
    PANIC_HOOK.call_once(panic::quiet_reports);
    let store = catalog::store::Store::new(ctx.admin);
    let settings = host::settings::HostSettings::new(ctx.control);
    let checkpoints = host::checkpoints::Checkpoints::new(ctx.checkpointer);
    let host = host::listener::Host::new(ctx.pool, ctx.statements, store, settings, checkpoints);
    host::sql::register(&ctx.conn, ctx.registrar, host)?;
    AT_EXIT.call_once(|| duck::entry::at_exit(host::listener::stop_all_at_exit));
    host::sql::autolisten(&ctx.conn)?;
    Ok(())
}
