//! Prepared statements on our connections and their results as Arrow: parameters bound by value, results
//! streamed chunk by chunk through DuckDB's own Arrow conversion (Flight SQL statements), or read whole when
//! small.

use std::ffi::{CStr, CString};

use arrow::array::{RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use duckdb::ffi as sys;

use crate::duck::DbError;
use crate::duck::conn::RawConn;

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    /// Text; DuckDB casts it to the parameter's type (dates, decimals, timestamps...).
    Text(String),
    Blob(Vec<u8>),
}

/// DuckDB's classification of a prepared statement, as far as access control needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    /// BEGIN / COMMIT / ROLLBACK.
    Transaction,
    /// Statements that change the database instance rather than data: its settings, extensions and attached
    /// databases (the statement's keyword).
    Instance(&'static str),
    /// CREATE MACRO / CREATE FUNCTION: code kept in the catalog that runs later in whoever's session calls it.
    Function,
    Other(u32),
}

/// A statement prepared on one of our connections; it cannot outlive the borrow of that connection.
pub struct Prepared<'c> {
    stmt: sys::duckdb_prepared_statement,
    /// Kept by the connection (see [`RawConn::prepare_kept`]): not destroyed with this handle.
    kept: bool,
    _conn: std::marker::PhantomData<&'c mut RawConn>,
}

/// The most statements a connection keeps prepared; past it, it forgets them all and starts again.
const KEPT_MAX: usize = 64;

impl RawConn {
    /// Runs one statement that may take long (a landing's INSERT): prepared, then run as
    /// [`Prepared::execute_update`] runs it. Returns the rows it changed.
    pub fn execute_long(&mut self, sql: &str) -> Result<u64, DbError> {
        self.prepare(sql)?.execute_update()
    }

    /// Prepares one statement (DuckDB binds it now: names are resolved, table functions bound).
    pub fn prepare(&mut self, sql: &str) -> Result<Prepared<'_>, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::ours("SQL text contains a NUL byte"))?;
        let mut stmt: sys::duckdb_prepared_statement = std::ptr::null_mut();
        // SAFETY: self.raw is live and ours; `stmt` is a valid out pointer and is destroyed by Prepared's drop
        // (also on failure, where DuckDB still allocates it to carry the error).
        let state = unsafe { sys::duckdb_prepare(self.raw, text.as_ptr(), &mut stmt) };
        let prepared = Prepared { stmt, kept: false, _conn: std::marker::PhantomData };
        if state != sys::duckdb_state_DuckDBSuccess {
            // SAFETY: the error text is owned by the statement, read before it is destroyed.
            let msg = unsafe {
                let p = if stmt.is_null() { std::ptr::null() } else { sys::duckdb_prepare_error(stmt) };
                if p.is_null() {
                    "DuckDB could not prepare the statement".to_string()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            return Err(DbError::from_text(msg));
        }
        Ok(prepared)
    }
}

impl RawConn {
    /// The statement `sql` as prepared the first time this connection was asked for it: later calls skip
    /// parsing and planning (DuckDB binds it again by itself when the catalog has changed). For statements run
    /// often with only their parameters changing.
    pub fn prepare_kept(&mut self, sql: &str) -> Result<Prepared<'_>, DbError> {
        if let Some(&stmt) = self.kept.get(sql) {
            return Ok(Prepared { stmt, kept: true, _conn: std::marker::PhantomData });
        }
        let stmt = {
            let mut fresh = self.prepare(sql)?;
            std::mem::replace(&mut fresh.stmt, std::ptr::null_mut())
        };
        if self.kept.len() >= KEPT_MAX {
            self.forget_kept();
        }
        self.kept.insert(sql.to_string(), stmt);
        Ok(Prepared { stmt, kept: true, _conn: std::marker::PhantomData })
    }

    /// Destroys the statements the connection keeps.
    pub(super) fn forget_kept(&mut self) {
        for (_, mut stmt) in self.kept.drain() {
            // SAFETY: made by duckdb_prepare on this (still open) connection, destroyed once: it leaves the map here.
            unsafe { sys::duckdb_destroy_prepare(&mut stmt) };
        }
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if !self.stmt.is_null() && !self.kept {
            // SAFETY: the statement was made by duckdb_prepare and is destroyed exactly once.
            unsafe { sys::duckdb_destroy_prepare(&mut self.stmt) };
        }
    }
}

impl Prepared<'_> {
    pub fn kind(&self) -> StatementKind {
        // SAFETY: self.stmt is a successfully prepared statement.
        let t = unsafe { sys::duckdb_prepared_statement_type(self.stmt) };
        match t {
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT => StatementKind::Select,
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_TRANSACTION => StatementKind::Transaction,
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SET => StatementKind::Instance("SET"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_VARIABLE_SET => StatementKind::Instance("SET VARIABLE"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_PRAGMA => StatementKind::Instance("PRAGMA"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_LOAD => StatementKind::Instance("LOAD / INSTALL"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_UPDATE_EXTENSIONS => {
                StatementKind::Instance("UPDATE EXTENSIONS")
            }
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ATTACH => StatementKind::Instance("ATTACH"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DETACH => StatementKind::Instance("DETACH"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_COPY_DATABASE => {
                StatementKind::Instance("COPY FROM DATABASE")
            }
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPORT => StatementKind::Instance("EXPORT DATABASE"),
            sys::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CREATE_FUNC => StatementKind::Function,
            other => StatementKind::Other(other),
        }
    }

    pub fn param_count(&self) -> usize {
        // SAFETY: self.stmt is a successfully prepared statement.
        unsafe { sys::duckdb_nparams(self.stmt) as usize }
    }

    /// The parameters' types as Arrow types (`Utf8` where DuckDB does not know the type yet, or for types
    /// with no plain Arrow counterpart: text binds to anything).
    pub fn param_types(&self) -> Vec<arrow::datatypes::DataType> {
        use arrow::datatypes::{DataType, TimeUnit};
        // SAFETY: self.stmt is a successfully prepared statement; indexes are 1-based and within nparams.
        let n = unsafe { sys::duckdb_nparams(self.stmt) };
        (1..=n)
            .map(|i| match unsafe { sys::duckdb_param_type(self.stmt, i) } {
                sys::DUCKDB_TYPE_DUCKDB_TYPE_BOOLEAN => DataType::Boolean,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_TINYINT => DataType::Int8,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_SMALLINT => DataType::Int16,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_INTEGER => DataType::Int32,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_BIGINT => DataType::Int64,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_UTINYINT => DataType::UInt8,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_USMALLINT => DataType::UInt16,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_UINTEGER => DataType::UInt32,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_UBIGINT => DataType::UInt64,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_FLOAT => DataType::Float32,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_DOUBLE => DataType::Float64,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_DATE => DataType::Date32,
                sys::DUCKDB_TYPE_DUCKDB_TYPE_TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
                sys::DUCKDB_TYPE_DUCKDB_TYPE_BLOB => DataType::Binary,
                _ => DataType::Utf8,
            })
            .collect()
    }

    /// Binds one row of parameters (1-based positions in order); clears earlier bindings first.
    pub fn bind(&mut self, params: &[Param]) -> Result<(), DbError> {
        // SAFETY: self.stmt is prepared and used by this thread only; strings and blobs are passed with their
        // lengths and copied by DuckDB during the call.
        unsafe {
            sys::duckdb_clear_bindings(self.stmt);
            for (i, p) in params.iter().enumerate() {
                let idx = (i + 1) as sys::idx_t;
                let state = match p {
                    Param::Null => sys::duckdb_bind_null(self.stmt, idx),
                    Param::Bool(v) => sys::duckdb_bind_boolean(self.stmt, idx, *v),
                    Param::Int(v) => sys::duckdb_bind_int64(self.stmt, idx, *v),
                    Param::UInt(v) => sys::duckdb_bind_uint64(self.stmt, idx, *v),
                    Param::Double(v) => sys::duckdb_bind_double(self.stmt, idx, *v),
                    Param::Text(v) => {
                        sys::duckdb_bind_varchar_length(self.stmt, idx, v.as_ptr().cast(), v.len() as sys::idx_t)
                    }
                    Param::Blob(v) => sys::duckdb_bind_blob(self.stmt, idx, v.as_ptr().cast(), v.len() as sys::idx_t),
                };
                if state != sys::duckdb_state_DuckDBSuccess {
                    let p = sys::duckdb_prepare_error(self.stmt);
                    let msg =
                        if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
                    return Err(if msg.is_empty() {
                        DbError::ours(format!("could not bind parameter {}", i + 1))
                    } else {
                        DbError::from_text(msg)
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the statement; its result streams chunk by chunk (DuckDB keeps no more than it must). `schema` is
    /// the result's Arrow schema as DuckDB converts it (see [`RawConn::select_schema`]); its column count is
    /// checked against the result, and the result's own column names are used.
    pub fn execute(&mut self, schema: &Schema) -> Result<Rows<'_>, DbError> {
        // SAFETY: duckdb_result is a plain C struct; all-zero is its initial state. It is destroyed by Rows.
        let mut result: sys::duckdb_result = unsafe { std::mem::zeroed() };
        // SAFETY: self.stmt is prepared; `result` is a valid out pointer.
        let state = unsafe { sys::duckdb_execute_prepared_streaming(self.stmt, &mut result) };
        let mut rows = Rows { result, fields: schema.fields().clone(), done: false, _stmt: std::marker::PhantomData };
        if state != sys::duckdb_state_DuckDBSuccess {
            return Err(rows.error().unwrap_or_else(|| DbError::ours("DuckDB could not run the statement")));
        }
        // SAFETY: the result is live; names are owned by it and copied here.
        let names: Vec<String> = unsafe {
            let n = sys::duckdb_column_count(&mut rows.result);
            (0..n)
                .map(|i| {
                    let p = sys::duckdb_column_name(&mut rows.result, i);
                    if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
                })
                .collect()
        };
        if names.len() != schema.fields().len() {
            return Err(DbError::ours(format!(
                "the result has {} columns where its description has {}",
                names.len(),
                schema.fields().len()
            )));
        }
        rows.fields = schema.fields().iter().zip(names).map(|(f, n)| f.as_ref().clone().with_name(n)).collect();
        Ok(rows)
    }

    /// Runs the statement and reads its whole (small) result as Arrow: for statements that are not queries
    /// (their result is a row count or nothing).
    pub fn execute_materialized(&mut self) -> Result<(SchemaRef, Vec<RecordBatch>), DbError> {
        let mut res: sys::duckdb_arrow = std::ptr::null_mut();
        // SAFETY: self.stmt is prepared; `res` is destroyed exactly once below whatever the outcome.
        unsafe {
            let state = sys::duckdb_execute_prepared_arrow(self.stmt, &mut res);
            let out = if state != sys::duckdb_state_DuckDBSuccess {
                let p = if res.is_null() { std::ptr::null() } else { sys::duckdb_query_arrow_error(res) };
                Err(if p.is_null() {
                    DbError::ours("DuckDB could not run the statement")
                } else {
                    DbError::from_text(CStr::from_ptr(p).to_string_lossy())
                })
            } else {
                read_arrow_result(res)
            };
            if !res.is_null() {
                sys::duckdb_destroy_arrow(&mut res);
            }
            out
        }
    }

    /// Runs the statement to its end; returns the rows it changed.
    ///
    /// The calling thread runs DuckDB's tasks for the statement itself (as `duckdb_execute_prepared` does), but
    /// when DuckDB's own threads hold every task (a scan waiting for the network, the one task of a single large
    /// batch) it waits instead of asking again at once: DuckDB's blocking execution asks in a loop, which keeps a
    /// core busy for the length of the statement.
    pub fn execute_update(&mut self) -> Result<u64, DbError> {
        let mut pending: sys::duckdb_pending_result = std::ptr::null_mut();
        // SAFETY: self.stmt is prepared; `pending` is destroyed exactly once below whatever the outcome, and the
        // materialized result before returning.
        unsafe {
            let state = sys::duckdb_pending_prepared(self.stmt, &mut pending);
            let mut out = if state == sys::duckdb_state_DuckDBSuccess { Ok(0) } else { Err(pending_error(pending)) };
            if out.is_ok() {
                let mut idle = IdleWait::default();
                loop {
                    match sys::duckdb_pending_execute_task(pending) {
                        sys::duckdb_pending_state_DUCKDB_PENDING_RESULT_READY => break,
                        sys::duckdb_pending_state_DUCKDB_PENDING_NO_TASKS_AVAILABLE => idle.wait(),
                        sys::duckdb_pending_state_DUCKDB_PENDING_RESULT_NOT_READY => idle.reset(),
                        _ => {
                            out = Err(pending_error(pending));
                            break;
                        }
                    }
                }
            }
            if out.is_ok() {
                let mut result: sys::duckdb_result = std::mem::zeroed();
                let state = sys::duckdb_execute_pending(pending, &mut result);
                out = if state == sys::duckdb_state_DuckDBSuccess {
                    Ok(sys::duckdb_rows_changed(&mut result))
                } else {
                    Err(DbError::of_result(&mut result)
                        .unwrap_or_else(|| DbError::ours("DuckDB could not run the statement")))
                };
                sys::duckdb_destroy_result(&mut result);
            }
            if !pending.is_null() {
                sys::duckdb_destroy_pending(&mut pending);
            }
            out
        }
    }
}

/// The error of a pending result (its kind read from the text: the pending API gives no error type).
///
/// # Safety
/// `pending` must be null or a live pending result.
unsafe fn pending_error(pending: sys::duckdb_pending_result) -> DbError {
    // SAFETY: per the contract; the text is owned by the pending result and copied here.
    let p = if pending.is_null() { std::ptr::null() } else { unsafe { sys::duckdb_pending_error(pending) } };
    if p.is_null() {
        DbError::ours("DuckDB could not run the statement")
    } else {
        // SAFETY: a NUL-terminated string that lives as long as `pending`.
        DbError::from_text(unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

/// How a thread that runs a statement's tasks waits while DuckDB's other threads hold all of them: for the first
/// [`IdleWait::SPIN`] of an idle spell it yields and asks again (a small statement's tasks come back within
/// microseconds, and sleeping would add to its latency), then it sleeps, longer each time up to
/// [`IdleWait::LONGEST`], which bounds the delay it adds once the last task ends.
#[derive(Default)]
struct IdleWait {
    since: Option<std::time::Instant>,
    sleeps: u32,
}

impl IdleWait {
    const SPIN: std::time::Duration = std::time::Duration::from_millis(1);
    const SHORTEST: std::time::Duration = std::time::Duration::from_micros(20);
    const LONGEST: std::time::Duration = std::time::Duration::from_micros(500);

    fn wait(&mut self) {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < Self::SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.pause());
            self.sleeps = self.sleeps.saturating_add(1);
        }
    }

    /// The next sleep: doubling from the shortest to the longest.
    fn pause(&self) -> std::time::Duration {
        (Self::SHORTEST * (1 << self.sleeps.min(8))).min(Self::LONGEST)
    }

    fn reset(&mut self) {
        *self = IdleWait::default();
    }
}

/// The schema and every batch of a materialized Arrow result.
///
/// # Safety
/// `res` must be a live result of a successful `duckdb_execute_prepared_arrow` or `duckdb_query_arrow`.
unsafe fn read_arrow_result(res: sys::duckdb_arrow) -> Result<(SchemaRef, Vec<RecordBatch>), DbError> {
    let mut schema = FFI_ArrowSchema::empty();
    let mut ptr = (&mut schema as *mut FFI_ArrowSchema).cast::<sys::_duckdb_arrow_schema>();
    // SAFETY: per the contract; `schema` is released by its own drop.
    if unsafe { sys::duckdb_query_arrow_schema(res, &mut ptr) } != sys::duckdb_state_DuckDBSuccess {
        return Err(DbError::ours("DuckDB could not describe the result as Arrow"));
    }
    let schema = std::sync::Arc::new(Schema::try_from(&schema).map_err(|e| DbError::ours(e.to_string()))?);
    let data_type = arrow::datatypes::DataType::Struct(schema.fields().clone());
    let mut batches = Vec::new();
    loop {
        let mut array = FFI_ArrowArray::empty();
        let mut ptr = (&mut array as *mut FFI_ArrowArray).cast::<sys::_duckdb_arrow_array>();
        // SAFETY: per the contract; DuckDB fills `array` (released by its drop or by the imported data).
        if unsafe { sys::duckdb_query_arrow_array(res, &mut ptr) } != sys::duckdb_state_DuckDBSuccess {
            return Err(DbError::ours("DuckDB could not read the result as Arrow"));
        }
        if array.is_released() || array.is_empty() {
            break;
        }
        // SAFETY: DuckDB produced `array` for exactly the struct of the schema it reported for this result.
        let data = unsafe { arrow::ffi::from_ffi_and_data_type(array, data_type.clone()) }
            .map_err(|e| DbError::ours(e.to_string()))?;
        batches.push(RecordBatch::from(StructArray::from(data)));
    }
    Ok((schema, batches))
}

impl RawConn {
    /// The Arrow schema DuckDB gives the result of a query statement run with `params`: the statement is
    /// wrapped as `SELECT * FROM (<sql>) LIMIT 0` and run, so nothing is read. `Ok(None)` when the statement
    /// cannot be wrapped (DuckDB refused to prepare the wrapper; that leaves a transaction usable). An error
    /// running the wrapper is the statement's own error.
    pub fn select_schema(&mut self, sql: &str, params: &[Param]) -> Result<Option<Schema>, DbError> {
        let body = sql.trim().trim_end_matches(';');
        let wrapped = format!("SELECT * FROM (\n{body}\n) AS arrowport_q LIMIT 0");
        let Ok(mut p) = self.prepare(&wrapped) else { return Ok(None) };
        p.bind(params)?;
        p.execute_materialized().map(|(s, _)| Some(s.as_ref().clone()))
    }
}

/// A statement's result, read as Arrow record batches (one per DuckDB chunk).
pub struct Rows<'p> {
    result: sys::duckdb_result,
    fields: arrow::datatypes::Fields,
    done: bool,
    _stmt: std::marker::PhantomData<&'p mut ()>,
}

impl Rows<'_> {
    fn error(&mut self) -> Option<DbError> {
        // SAFETY: self.result is a live result.
        unsafe { DbError::of_result(&mut self.result) }
    }

    pub fn schema(&self) -> SchemaRef {
        std::sync::Arc::new(Schema::new(self.fields.clone()))
    }

    /// The next batch, `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, DbError> {
        if self.done {
            return Ok(None);
        }
        // SAFETY: self.result is a live result of a successful execution; the chunk is destroyed below.
        let mut chunk = unsafe { sys::duckdb_fetch_chunk(self.result) };
        if chunk.is_null() || unsafe { sys::duckdb_data_chunk_get_size(chunk) } == 0 {
            if !chunk.is_null() {
                // SAFETY: a chunk returned by duckdb_fetch_chunk, destroyed once.
                unsafe { sys::duckdb_destroy_data_chunk(&mut chunk) };
            }
            self.done = true;
            return match self.error() {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        let mut array = FFI_ArrowArray::empty();
        let mut ptr = (&mut array as *mut FFI_ArrowArray).cast::<sys::_duckdb_arrow_array>();
        // SAFETY: `chunk` belongs to this result; DuckDB fills `array` (which owns what it points to and is
        // released by from_ffi's data or its own drop) and we destroy the chunk after the conversion.
        unsafe {
            sys::duckdb_result_arrow_array(self.result, chunk, &mut ptr);
            sys::duckdb_destroy_data_chunk(&mut chunk);
        }
        let data_type = arrow::datatypes::DataType::Struct(self.fields.clone());
        // SAFETY: DuckDB produced `array` for exactly this struct type (the schema it gave for this result).
        let data = unsafe { arrow::ffi::from_ffi_and_data_type(array, data_type) }
            .map_err(|e| DbError::ours(e.to_string()))?;
        let batch = RecordBatch::from(StructArray::from(data));
        Ok(Some(batch))
    }
}

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        // SAFETY: the result was filled by duckdb_execute_prepared_streaming and is destroyed exactly once.
        unsafe { sys::duckdb_destroy_result(&mut self.result) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_spins_first_then_sleeps_longer_up_to_a_bound() {
        let mut w = IdleWait::default();
        w.wait();
        assert_eq!(w.sleeps, 0, "the first turns of an idle spell do not sleep");
        assert_eq!(w.pause(), IdleWait::SHORTEST);
        w.since = Some(std::time::Instant::now() - IdleWait::SPIN);
        w.wait();
        assert_eq!((w.sleeps, w.pause()), (1, IdleWait::SHORTEST * 2));
        w.sleeps = u32::MAX;
        assert_eq!(w.pause(), IdleWait::LONGEST);
        w.reset();
        assert!(w.since.is_none() && w.sleeps == 0);
    }
}
