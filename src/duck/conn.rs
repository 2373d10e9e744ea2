//! Our connections to the host database, and the transaction guard.
//!
//! A [`RawConn`] is opened during `LOAD` and used by one thread at a time. [`Txn`] is the only way arrowport
//! opens a transaction: it rolls back in `Drop` unless [`Txn::commit`] consumed it, so an error, an early
//! return or a panic between BEGIN and COMMIT never leaves a pooled connection inside a transaction.

use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};

use arrow::datatypes::Schema;
use arrow::ffi::FFI_ArrowSchema;
use duckdb::ffi as sys;

use crate::duck::{DbError, DbErrorKind};

/// A connection of ours to the host database, opened during `LOAD`.
///
/// One user at a time: `RawConn` is `Send` but not `Sync` or `Clone`, so exactly one thread holds it.
pub struct RawConn {
    pub(super) raw: sys::duckdb_connection,
    /// Statements prepared once and run again and again (see `RawConn::prepare_kept`), by their text; destroyed
    /// before the connection closes.
    pub(super) kept: std::collections::HashMap<String, sys::duckdb_prepared_statement>,
    /// The same handle for [`Interrupt`]s; emptied (under its lock) before the connection closes.
    shared: Arc<Mutex<Option<Handle>>>,
}

/// A connection handle as [`Interrupt`] keeps it.
struct Handle(sys::duckdb_connection);

// SAFETY: the handle is only used for `duckdb_interrupt`, which DuckDB allows from any thread while another
// thread runs a statement on the connection; the connection outlives every use (see `Drop for RawConn`).
unsafe impl Send for Handle {}

/// Interrupts whatever statement one of our connections is running, from any thread: DuckDB stops it with an
/// "Interrupted" error at its next check, and the transaction guard of its owner rolls back. Does nothing once
/// the connection is closed.
#[derive(Clone)]
pub struct Interrupt(Arc<Mutex<Option<Handle>>>);

impl Interrupt {
    pub fn interrupt(&self) {
        let handle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handle.as_ref() {
            // SAFETY: the connection is open: `Drop for RawConn` empties this slot, under this lock, before it
            // disconnects.
            unsafe { sys::duckdb_interrupt(h.0) };
        }
    }
}

// SAFETY: a duckdb_connection may be used from any thread provided calls on it are not concurrent; RawConn
// hands out `&mut self` only, so the borrow checker enforces one user at a time.
unsafe impl Send for RawConn {}

impl RawConn {
    pub(super) fn connect(db: sys::duckdb_database) -> Result<RawConn, DbError> {
        let mut conn: sys::duckdb_connection = std::ptr::null_mut();
        // SAFETY: `db` is the live database handle of the running entrypoint; `conn` is a valid out pointer.
        let state = unsafe { sys::duckdb_connect(db, &mut conn) };
        if state != sys::duckdb_state_DuckDBSuccess || conn.is_null() {
            return Err(DbError::ours("arrowport could not open a connection to the database"));
        }
        Ok(RawConn { raw: conn, kept: Default::default(), shared: Arc::new(Mutex::new(Some(Handle(conn)))) })
    }

    /// A handle that interrupts this connection's running statement from another thread.
    pub fn interrupter(&self) -> Interrupt {
        Interrupt(Arc::clone(&self.shared))
    }

    /// Runs one statement; returns the number of rows it changed.
    pub fn execute(&mut self, sql: &str) -> Result<u64, DbError> {
        self.run(sql, |res| {
            // SAFETY: `res` is a successful, live result.
            Ok(unsafe { sys::duckdb_rows_changed(res) })
        })
    }

    /// Runs a query and returns every value as text (NULL as `None`). For small catalog queries only.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        self.run(sql, |res| {
            // SAFETY: `res` is a successful, live, materialized result; indexes stay within its bounds.
            unsafe {
                let rows = sys::duckdb_row_count(res);
                let cols = sys::duckdb_column_count(res);
                let mut out = Vec::with_capacity(rows as usize);
                for r in 0..rows {
                    let mut row = Vec::with_capacity(cols as usize);
                    for c in 0..cols {
                        if sys::duckdb_value_is_null(res, c, r) {
                            row.push(None);
                            continue;
                        }
                        let p = sys::duckdb_value_varchar(res, c, r);
                        if p.is_null() {
                            row.push(None);
                        } else {
                            row.push(Some(CStr::from_ptr(p).to_string_lossy().into_owned()));
                            sys::duckdb_free(p.cast());
                        }
                    }
                    out.push(row);
                }
                Ok(out)
            }
        })
    }

    /// The first column of the first row of a query's result (`None` for no row or NULL).
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        Ok(self.query(sql)?.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }

    fn run<T>(
        &mut self,
        sql: &str,
        f: impl FnOnce(*mut sys::duckdb_result) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::ours("SQL text contains a NUL byte"))?;
        // SAFETY: duckdb_result is a plain C struct; all-zero is its documented initial state.
        let mut res: sys::duckdb_result = unsafe { std::mem::zeroed() };
        // SAFETY: self.raw is a live connection used by this thread only; text and res outlive the call.
        let state = unsafe { sys::duckdb_query(self.raw, text.as_ptr(), &mut res) };
        let out = if state == sys::duckdb_state_DuckDBSuccess {
            f(&mut res)
        } else {
            // SAFETY: `res` was filled by duckdb_query and is destroyed only below.
            let error = unsafe { DbError::of_result(&mut res) }.filter(|e| !e.message.is_empty());
            Err(error.unwrap_or_else(|| DbError::ours(format!("DuckDB failed to run: {sql}"))))
        };
        // SAFETY: `res` was filled by duckdb_query (success or failure) and is destroyed exactly once.
        unsafe { sys::duckdb_destroy_result(&mut res) };
        out
    }

    /// The Arrow schema DuckDB would produce for the result of `sql` (run it with `LIMIT 0`).
    pub fn arrow_schema_of(&mut self, sql: &str) -> Result<Schema, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::ours("SQL text contains a NUL byte"))?;
        let mut res: sys::duckdb_arrow = std::ptr::null_mut();
        // SAFETY: self.raw is live and ours; `res` is destroyed exactly once below whatever the outcome.
        unsafe {
            let state = sys::duckdb_query_arrow(self.raw, text.as_ptr(), &mut res);
            let out = if state != sys::duckdb_state_DuckDBSuccess {
                let p = sys::duckdb_query_arrow_error(res);
                Err(if p.is_null() {
                    DbError::ours("query failed")
                } else {
                    DbError::from_text(CStr::from_ptr(p).to_string_lossy())
                })
            } else {
                let mut schema = FFI_ArrowSchema::empty();
                let mut ptr = (&mut schema as *mut FFI_ArrowSchema).cast::<sys::_duckdb_arrow_schema>();
                if sys::duckdb_query_arrow_schema(res, &mut ptr) != sys::duckdb_state_DuckDBSuccess {
                    Err(DbError::ours("DuckDB could not describe the result as Arrow"))
                } else {
                    Schema::try_from(&schema).map_err(|e| DbError::ours(e.to_string()))
                }
            };
            sys::duckdb_destroy_arrow(&mut res);
            out
        }
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        // No interrupt may reach the connection from now on; one in progress finishes before the lock is ours.
        self.forget_kept();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.take();
        // SAFETY: self.raw was opened by duckdb_connect and is disconnected exactly once.
        unsafe { sys::duckdb_disconnect(&mut self.raw) };
    }
}

/// An open transaction on one of our connections; rolls back in `Drop` unless committed.
///
/// It derefs to the connection, so statements inside the transaction run through it, and while it lives the
/// connection cannot be used any other way.
pub struct Txn<'c> {
    conn: &'c mut RawConn,
    open: bool,
}

impl RawConn {
    /// `BEGIN TRANSACTION`: a read-write transaction.
    pub fn begin(&mut self) -> Result<Txn<'_>, DbError> {
        self.execute("BEGIN TRANSACTION")?;
        Ok(Txn { conn: self, open: true })
    }

    /// `BEGIN TRANSACTION READ ONLY`: DuckDB refuses every write inside it.
    pub fn begin_read_only(&mut self) -> Result<Txn<'_>, DbError> {
        self.execute("BEGIN TRANSACTION READ ONLY")?;
        Ok(Txn { conn: self, open: true })
    }
}

impl Txn<'_> {
    /// `COMMIT`. When DuckDB refuses the commit, the transaction is rolled back (in `Drop`) and the error returned.
    pub fn commit(mut self) -> Result<(), DbError> {
        self.conn.execute("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Txn<'_> {
    type Target = RawConn;
    fn deref(&self) -> &RawConn {
        self.conn
    }
}

impl std::ops::DerefMut for Txn<'_> {
    fn deref_mut(&mut self) -> &mut RawConn {
        self.conn
    }
}

/// How often a rollback is tried again when an interrupt meant for the statement before it stops it instead.
const ROLLBACK_ATTEMPTS: usize = 20;

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed or interrupted transaction: DuckDB may already have ended it, and then says so ("no
            // transaction is active"). An interrupt can also land on the ROLLBACK itself (a stop interrupts the
            // writers' connections until they are idle): then the transaction is still open, aborted, and would
            // fail every later statement on the connection, so the ROLLBACK is tried again.
            let _ = self.conn.execute_past_interrupts("ROLLBACK");
        }
    }
}

impl RawConn {
    /// Runs a statement that must not be lost to an interrupt meant for the statement before it (clean-up after
    /// a failure: ROLLBACK, restoring the default catalog): tried again while DuckDB says "Interrupted".
    pub fn execute_past_interrupts(&mut self, sql: &str) -> Result<u64, DbError> {
        let mut last = Err(DbError::ours("not run"));
        for _ in 0..ROLLBACK_ATTEMPTS {
            last = self.execute(sql);
            match &last {
                Err(e) if e.is(DbErrorKind::Interrupted) => std::thread::sleep(std::time::Duration::from_millis(5)),
                _ => break,
            }
        }
        last
    }
}
