//! The protocol adapters: bytes in, batches and statements to the engine; results and errors out. They decode,
//! encode and dispatch, and never touch DuckDB (a test, `layering`, holds them to it).
//!
//! [`send`] is the other direction: a query's batches to a remote stream (`arrowport_send`), as a Flight or HTTP client.
//! [`flight`] serves Arrow Flight (DoPut into streams, listings) and hands Flight SQL messages to [`flightsql`];
//! [`rest`] serves the HTTP API; [`ipc`] frames and decodes Arrow IPC streams for both, [`ipc_out`] writes them
//! with metadata on each batch; [`status`] is the only
//! place that builds a gRPC status or an HTTP error response.

pub mod flight;
pub mod flightsql;
pub mod grpc_body;
pub mod ipc;
pub mod ipc_out;
pub mod rest;
pub mod send;
pub mod status;
