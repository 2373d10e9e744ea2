//! The host layer: where the user's DuckDB session and the network meet arrowport.
//!
//! [`sql`] registers the SQL functions; [`listener`] keeps the host's state (writers, runtime, listeners) and
//! serves one port with gRPC and HTTP side by side; every request passes the [`gate`] (authentication) after
//! [`tls`]. Below it: the protocol adapters (`proto`), the engine, the catalog.

pub mod checkpoints;
pub mod connections;
pub mod gate;
pub mod listener;
pub mod settings;
pub mod sql;
pub mod tls;
