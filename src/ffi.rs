//! The one module that holds `unsafe`: DuckDB's C API and the Arrow C stream interface.
//!
//! What lives here, and nowhere else:
//! - the C entrypoint DuckDB calls on `LOAD` (`arrowport_init_c_api`), which opens our own connections
//!   while the borrowed `duckdb_database` handle is still valid;
//! - [`RawConn`], an owned `duckdb_connection` that runs SQL and registers Arrow streams as views;
//! - [`ScanStream`], an `ArrowArrayStream` that DuckDB's own Arrow scan pulls batches from;
//! - [`Prepared`] and [`Rows`]: a prepared statement with bound parameters, and its streaming result read as
//!   Arrow through DuckDB's own conversion (for Flight SQL queries);
//! - [`contain`], which keeps a Rust panic from unwinding into the host;
//! - [`LargeMmap`], the allocator for arrowport's own Rust allocations (large ones straight from the kernel).
//!
//! Nothing here knows about protocols, streams or tables: callers pass SQL text and batch sources.
//! Every `unsafe` block says which invariant makes it sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use duckdb::ffi as sys;

/// The C API version the binary is built against: DuckDB's stable extension API, so one binary loads in every
/// DuckDB release from 1.2.0 on (the footer written by `scripts/append_metadata.py` says the same).
pub const MIN_C_API: &str = "v1.2.0";

/// How many connections the entrypoint opens for the writers. They can only be opened while DuckDB hands us
/// the database (during `LOAD`), so this is the ceiling on concurrent writes into DuckDB.
pub const POOL_SIZE: usize = 8;

/// An error from DuckDB, with DuckDB's own text verbatim, or a contained panic.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Duck(String),
    #[error("internal error while {what}: {message}")]
    Panicked { what: String, message: String },
}

/// Runs `f`, turning a panic into an error so it never unwinds into DuckDB or the host.
pub fn contain<T>(what: &str, f: impl FnOnce() -> Result<T, DbError>) -> Result<T, DbError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(DbError::Panicked { what: what.to_string(), message: panic_message(payload.as_ref()) }),
    }
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// The version string of the DuckDB library we run in, e.g. `v1.5.6`.
pub fn library_version() -> String {
    // SAFETY: the API table is filled by the entrypoint before any SQL function can run; the returned pointer
    // is a static NUL-terminated string owned by DuckDB.
    unsafe {
        let p = sys::duckdb_library_version();
        if p.is_null() { "unknown".to_string() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Entrypoint
// ---------------------------------------------------------------------------------------------------------------

/// What the entrypoint hands to [`crate::init`]: a safe connection for registering functions and the pool of
/// raw connections for the writers.
pub struct LoadContext {
    pub conn: duckdb::Connection,
    pub pool: Vec<RawConn>,
    /// For arrowport's own catalog work (stream mappings), apart from the writers.
    pub admin: RawConn,
}

/// Called by DuckDB on `LOAD arrowport`. Panics and errors become DuckDB's load error; the host keeps running.
///
/// # Safety
/// DuckDB passes valid `info` and `access` pointers for the duration of this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arrowport_init_c_api(
    info: sys::duckdb_extension_info,
    access: *const sys::duckdb_extension_access,
) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: forwarded from our caller, valid for this call.
        unsafe { load(info, access) }
    }));
    let message = match outcome {
        Ok(Ok(loaded)) => return loaded,
        Ok(Err(message)) => message,
        Err(payload) => format!("arrowport failed to load: internal error: {}", panic_message(payload.as_ref())),
    };
    // SAFETY: `access` is valid for this call; set_error copies the message.
    unsafe {
        if !access.is_null() {
            if let Some(set_error) = (*access).set_error {
                let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
                set_error(info, text.as_ptr());
            }
        }
    }
    false
}

/// # Safety
/// `info` and `access` come straight from DuckDB's call of the entrypoint.
unsafe fn load(info: sys::duckdb_extension_info, access: *const sys::duckdb_extension_access) -> Result<bool, String> {
    if access.is_null() {
        return Err("arrowport: DuckDB passed no extension access table".into());
    }
    // SAFETY: `access` is non-null and valid for this call. When DuckDB does not offer the C API version we
    // need it returns no table and has already recorded its own error for the user; we just report failure.
    let have_api = unsafe { sys::duckdb_rs_extension_api_init(info, access, MIN_C_API) }.map_err(|e| e.to_string())?;
    if !have_api {
        return Ok(false);
    }
    // SAFETY: as above; get_database returns a pointer to the database handle, valid during this call only.
    let db: sys::duckdb_database = unsafe {
        let get_database = (*access).get_database.ok_or("arrowport: DuckDB offers no get_database")?;
        let db_ptr = get_database(info);
        if db_ptr.is_null() {
            return Ok(false);
        }
        *db_ptr
    };
    // SAFETY: `db` is valid during the entrypoint; open_from_raw connects without taking ownership of it.
    let conn = unsafe { duckdb::Connection::open_from_raw(db.cast()) }.map_err(|e| e.to_string())?;
    let mut pool = Vec::with_capacity(POOL_SIZE);
    for _ in 0..POOL_SIZE {
        pool.push(RawConn::connect(db).map_err(|e| e.to_string())?);
    }
    let admin = RawConn::connect(db).map_err(|e| e.to_string())?;
    crate::init(LoadContext { conn, pool, admin }).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Registers `f` to run when the process exits (C `atexit`), so listeners stop before the host tears down.
pub fn at_exit(f: extern "C" fn()) {
    unsafe extern "C" {
        fn atexit(cb: extern "C" fn()) -> c_int;
    }
    // SAFETY: `f` is a plain function in this library, which DuckDB never unloads.
    unsafe {
        atexit(f);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------------------------

/// A connection of ours to the host database, opened during `LOAD`.
///
/// One user at a time: `RawConn` is `Send` but not `Sync` or `Clone`, so exactly one thread holds it.
pub struct RawConn(sys::duckdb_connection);

// SAFETY: a duckdb_connection may be used from any thread provided calls on it are not concurrent; RawConn
// hands out `&mut self` only, so the borrow checker enforces one user at a time.
unsafe impl Send for RawConn {}

impl RawConn {
    fn connect(db: sys::duckdb_database) -> Result<RawConn, DbError> {
        let mut conn: sys::duckdb_connection = std::ptr::null_mut();
        // SAFETY: `db` is the live database handle of the running entrypoint; `conn` is a valid out pointer.
        let state = unsafe { sys::duckdb_connect(db, &mut conn) };
        if state != sys::duckdb_state_DuckDBSuccess || conn.is_null() {
            return Err(DbError::Duck("arrowport could not open a connection to the database".into()));
        }
        Ok(RawConn(conn))
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

    fn run<T>(&mut self, sql: &str, f: impl FnOnce(*mut sys::duckdb_result) -> Result<T, DbError>) -> Result<T, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::Duck("SQL text contains a NUL byte".into()))?;
        // SAFETY: duckdb_result is a plain C struct; all-zero is its documented initial state.
        let mut res: sys::duckdb_result = unsafe { std::mem::zeroed() };
        // SAFETY: self.0 is a live connection used by this thread only; text and res outlive the call.
        let state = unsafe { sys::duckdb_query(self.0, text.as_ptr(), &mut res) };
        let out = if state == sys::duckdb_state_DuckDBSuccess {
            f(&mut res)
        } else {
            // SAFETY: the error pointer is owned by `res` and read before it is destroyed.
            let msg = unsafe {
                let p = sys::duckdb_result_error(&mut res);
                if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
            };
            Err(DbError::Duck(if msg.is_empty() { format!("DuckDB failed to run: {sql}") } else { msg }))
        };
        // SAFETY: `res` was filled by duckdb_query (success or failure) and is destroyed exactly once.
        unsafe { sys::duckdb_destroy_result(&mut res) };
        out
    }

    /// Creates the view `name` (in the connection's current catalog) over DuckDB's Arrow scan of `stream`.
    /// The stream must outlive every statement that reads the view; drop the view before the stream.
    pub fn create_scan_view(&mut self, name: &str, stream: &mut ScanStream) -> Result<(), DbError> {
        let text = CString::new(name).map_err(|_| DbError::Duck("view name contains a NUL byte".into()))?;
        // SAFETY: self.0 is live and ours; stream.raw is a boxed ArrowArrayStream whose address is stable and
        // which outlives the view (the caller's contract). DuckDB copies the callbacks and never releases it.
        let state = unsafe {
            sys::duckdb_arrow_scan(self.0, text.as_ptr(), (&mut *stream.raw as *mut FFI_ArrowArrayStream).cast())
        };
        if state == sys::duckdb_state_DuckDBSuccess {
            Ok(())
        } else {
            Err(DbError::Duck(stream.take_error().unwrap_or_else(|| "DuckDB could not scan the Arrow stream".into())))
        }
    }

    /// The Arrow schema DuckDB would produce for the result of `sql` (run it with `LIMIT 0`).
    pub fn arrow_schema_of(&mut self, sql: &str) -> Result<Schema, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::Duck("SQL text contains a NUL byte".into()))?;
        let mut res: sys::duckdb_arrow = std::ptr::null_mut();
        // SAFETY: self.0 is live and ours; `res` is destroyed exactly once below whatever the outcome.
        unsafe {
            let state = sys::duckdb_query_arrow(self.0, text.as_ptr(), &mut res);
            let out = if state != sys::duckdb_state_DuckDBSuccess {
                let p = sys::duckdb_query_arrow_error(res);
                Err(DbError::Duck(if p.is_null() { "query failed".into() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }))
            } else {
                let mut schema = FFI_ArrowSchema::empty();
                let mut ptr = (&mut schema as *mut FFI_ArrowSchema).cast::<sys::_duckdb_arrow_schema>();
                if sys::duckdb_query_arrow_schema(res, &mut ptr) != sys::duckdb_state_DuckDBSuccess {
                    Err(DbError::Duck("DuckDB could not describe the result as Arrow".into()))
                } else {
                    Schema::try_from(&schema).map_err(|e| DbError::Duck(e.to_string()))
                }
            };
            sys::duckdb_destroy_arrow(&mut res);
            out
        }
    }
}

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
    Other(u32),
}

/// A statement prepared on one of our connections; it cannot outlive the borrow of that connection.
pub struct Prepared<'c> {
    stmt: sys::duckdb_prepared_statement,
    _conn: std::marker::PhantomData<&'c mut RawConn>,
}

impl RawConn {
    /// Prepares one statement (DuckDB binds it now: names are resolved, table functions bound).
    pub fn prepare(&mut self, sql: &str) -> Result<Prepared<'_>, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::Duck("SQL text contains a NUL byte".into()))?;
        let mut stmt: sys::duckdb_prepared_statement = std::ptr::null_mut();
        // SAFETY: self.0 is live and ours; `stmt` is a valid out pointer and is destroyed by Prepared's drop
        // (also on failure, where DuckDB still allocates it to carry the error).
        let state = unsafe { sys::duckdb_prepare(self.0, text.as_ptr(), &mut stmt) };
        let prepared = Prepared { stmt, _conn: std::marker::PhantomData };
        if state != sys::duckdb_state_DuckDBSuccess {
            // SAFETY: the error text is owned by the statement, read before it is destroyed.
            let msg = unsafe {
                let p = if stmt.is_null() { std::ptr::null() } else { sys::duckdb_prepare_error(stmt) };
                if p.is_null() { "DuckDB could not prepare the statement".to_string() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
            };
            return Err(DbError::Duck(msg));
        }
        Ok(prepared)
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if !self.stmt.is_null() {
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
            other => StatementKind::Other(other as u32),
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
                    Param::Text(v) => sys::duckdb_bind_varchar_length(self.stmt, idx, v.as_ptr().cast(), v.len() as sys::idx_t),
                    Param::Blob(v) => sys::duckdb_bind_blob(self.stmt, idx, v.as_ptr().cast(), v.len() as sys::idx_t),
                };
                if state != sys::duckdb_state_DuckDBSuccess {
                    let p = sys::duckdb_prepare_error(self.stmt);
                    let msg = if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
                    return Err(DbError::Duck(if msg.is_empty() { format!("could not bind parameter {}", i + 1) } else { msg }));
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
            return Err(DbError::Duck(rows.error().unwrap_or_else(|| "DuckDB could not run the statement".into())));
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
            return Err(DbError::Duck(format!(
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
                Err(DbError::Duck(if p.is_null() { "DuckDB could not run the statement".into() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }))
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
    pub fn execute_update(&mut self) -> Result<u64, DbError> {
        // SAFETY: as in `execute`; the materialized result is destroyed before returning.
        unsafe {
            let mut result: sys::duckdb_result = std::mem::zeroed();
            let state = sys::duckdb_execute_prepared(self.stmt, &mut result);
            let out = if state == sys::duckdb_state_DuckDBSuccess {
                Ok(sys::duckdb_rows_changed(&mut result))
            } else {
                let p = sys::duckdb_result_error(&mut result);
                Err(DbError::Duck(if p.is_null() { "DuckDB could not run the statement".into() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }))
            };
            sys::duckdb_destroy_result(&mut result);
            out
        }
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
        return Err(DbError::Duck("DuckDB could not describe the result as Arrow".into()));
    }
    let schema = std::sync::Arc::new(Schema::try_from(&schema).map_err(|e| DbError::Duck(e.to_string()))?);
    let data_type = arrow::datatypes::DataType::Struct(schema.fields().clone());
    let mut batches = Vec::new();
    loop {
        let mut array = FFI_ArrowArray::empty();
        let mut ptr = (&mut array as *mut FFI_ArrowArray).cast::<sys::_duckdb_arrow_array>();
        // SAFETY: per the contract; DuckDB fills `array` (released by its drop or by the imported data).
        if unsafe { sys::duckdb_query_arrow_array(res, &mut ptr) } != sys::duckdb_state_DuckDBSuccess {
            return Err(DbError::Duck("DuckDB could not read the result as Arrow".into()));
        }
        if array.is_released() || array.is_empty() {
            break;
        }
        // SAFETY: DuckDB produced `array` for exactly the struct of the schema it reported for this result.
        let data = unsafe { arrow::ffi::from_ffi_and_data_type(array, data_type.clone()) }.map_err(|e| DbError::Duck(e.to_string()))?;
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
    fn error(&mut self) -> Option<String> {
        // SAFETY: the error text is owned by the live result.
        unsafe {
            let p = sys::duckdb_result_error(&mut self.result);
            if p.is_null() { None } else { Some(CStr::from_ptr(p).to_string_lossy().into_owned()) }
        }
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
                Some(e) => Err(DbError::Duck(e)),
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
        let data = unsafe { arrow::ffi::from_ffi_and_data_type(array, data_type) }.map_err(|e| DbError::Duck(e.to_string()))?;
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

impl Drop for RawConn {
    fn drop(&mut self) {
        // SAFETY: self.0 was opened by duckdb_connect and is disconnected exactly once.
        unsafe { sys::duckdb_disconnect(&mut self.0) };
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Arrow C stream for DuckDB's Arrow scan
// ---------------------------------------------------------------------------------------------------------------

/// A source of record batches that DuckDB pulls from (on its own threads, one call at a time).
pub trait BatchPull: Send {
    /// The next batch, `Ok(None)` at the end, or an error message that fails the scan.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String>;
}

struct ScanPrivate {
    schema: Mutex<SchemaRef>,
    pull: Mutex<Box<dyn BatchPull>>,
    /// Every schema handed to DuckDB. DuckDB never releases the schemas it asks a scanned stream for (it nulls
    /// their release callbacks), so we hand out borrowed copies and free the originals with the stream.
    exported: Mutex<Vec<Box<FFI_ArrowSchema>>>,
    last_error: Mutex<Option<CString>>,
}

/// An `ArrowArrayStream` over a [`BatchPull`], for [`RawConn::create_scan_view`].
pub struct ScanStream {
    raw: Box<FFI_ArrowArrayStream>,
    private: *mut ScanPrivate,
}

// SAFETY: the private data is only touched through its mutexes; the raw stream is only used by DuckDB while
// the owning thread waits in a query.
unsafe impl Send for ScanStream {}

impl ScanStream {
    pub fn new(schema: SchemaRef, pull: Box<dyn BatchPull>) -> ScanStream {
        let private = Box::into_raw(Box::new(ScanPrivate {
            schema: Mutex::new(schema),
            pull: Mutex::new(pull),
            exported: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        }));
        // SAFETY: the callbacks below match the C stream ABI and only read `private`, which lives until Drop.
        // `release` is a no-op: DuckDB does not own this stream; we free it in Drop.
        let raw = unsafe {
            FFI_ArrowArrayStream::new_unchecked(
                Some(stream_get_schema),
                Some(stream_get_next),
                Some(stream_get_last_error),
                Some(stream_release_noop),
                private.cast(),
            )
        };
        ScanStream { raw: Box::new(raw), private }
    }

    /// Points the stream at a new request: its schema and its batches. A view made over this stream once can
    /// then serve request after request (DuckDB binds the view, and asks for the schema, on every statement).
    /// Call only while no statement reads the stream; frees what earlier statements were handed.
    pub fn reset(&mut self, schema: SchemaRef, pull: Box<dyn BatchPull>) {
        // SAFETY: `private` is live until Drop; `&mut self` and the caller's contract mean DuckDB is not in a
        // callback, so the schemas handed out before are no longer referenced.
        let p = unsafe { &*self.private };
        if let Ok(mut s) = p.schema.lock() {
            *s = schema;
        }
        if let Ok(mut old) = p.pull.lock() {
            *old = pull;
        }
        if let Ok(mut exported) = p.exported.lock() {
            exported.clear();
        }
        if let Ok(mut e) = p.last_error.lock() {
            *e = None;
        }
    }

    fn take_error(&self) -> Option<String> {
        // SAFETY: `private` is live until Drop.
        let p = unsafe { &*self.private };
        p.last_error.lock().ok()?.take().map(|c| c.to_string_lossy().into_owned())
    }
}

impl Drop for ScanStream {
    fn drop(&mut self) {
        // SAFETY: DuckDB no longer references the stream (the view is dropped and no statement runs); the
        // private data was made by Box::into_raw in `new` and is freed exactly once.
        unsafe {
            drop(Box::from_raw(self.private));
        }
    }
}

/// Mirror of the C `ArrowSchema` struct, to hand DuckDB a copy whose `release` does nothing.
#[repr(C)]
struct CArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut CArrowSchema,
    dictionary: *mut CArrowSchema,
    release: Option<unsafe extern "C" fn(*mut CArrowSchema)>,
    private_data: *mut c_void,
}

unsafe extern "C" fn schema_release_noop(schema: *mut CArrowSchema) {
    if !schema.is_null() {
        // SAFETY: DuckDB passes the struct we filled.
        unsafe { (*schema).release = None };
    }
}

unsafe extern "C" fn stream_release_noop(_: *mut FFI_ArrowArrayStream) {}

/// # Safety
/// `stream` is one of ours (its private data is a live ScanPrivate).
unsafe fn private_of<'a>(stream: *mut FFI_ArrowArrayStream) -> &'a ScanPrivate {
    // SAFETY: per the contract; the private pointer sits in the last field of the C struct.
    unsafe {
        let fields = stream.cast::<[*mut c_void; 5]>();
        &*((*fields)[4].cast::<ScanPrivate>())
    }
}

fn remember_error(p: &ScanPrivate, msg: String) -> c_int {
    if let Ok(mut slot) = p.last_error.lock() {
        *slot = Some(CString::new(msg.replace('\0', " ")).unwrap_or_default());
    }
    5 // EIO
}

unsafe extern "C" fn stream_get_schema(stream: *mut FFI_ArrowArrayStream, out: *mut FFI_ArrowSchema) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: DuckDB calls us with our stream and a writable out pointer.
        let p = unsafe { private_of(stream) };
        let schema = match p.schema.lock() {
            Ok(s) => SchemaRef::clone(&s),
            Err(_) => return remember_error(p, "arrowport: schema poisoned".into()),
        };
        let owned = match FFI_ArrowSchema::try_from(schema.as_ref()) {
            Ok(s) => Box::new(s),
            Err(e) => return remember_error(p, e.to_string()),
        };
        // SAFETY: FFI_ArrowSchema is the C ArrowSchema (repr C, same fields as CArrowSchema). `out` receives a
        // bitwise copy that borrows `owned`'s strings and children; its release only clears itself, and `owned`
        // stays in `exported` until the stream is dropped, after DuckDB's last use.
        unsafe {
            std::ptr::copy_nonoverlapping((&*owned as *const FFI_ArrowSchema).cast::<CArrowSchema>(), out.cast::<CArrowSchema>(), 1);
            (*out.cast::<CArrowSchema>()).release = Some(schema_release_noop);
        }
        match p.exported.lock() {
            Ok(mut v) => v.push(owned),
            Err(_) => std::mem::forget(owned),
        }
        0
    }));
    result.unwrap_or(5)
}

unsafe extern "C" fn stream_get_next(stream: *mut FFI_ArrowArrayStream, out: *mut FFI_ArrowArray) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: DuckDB calls us with our stream and a writable out pointer.
        let p = unsafe { private_of(stream) };
        let next = match p.pull.lock() {
            Ok(mut pull) => pull.next_batch(),
            Err(_) => Err("arrowport: batch source poisoned".to_string()),
        };
        match next {
            Ok(Some(batch)) => {
                let array = StructArray::from(batch);
                let ffi = FFI_ArrowArray::new(&array.to_data());
                // SAFETY: `out` is writable; DuckDB takes ownership and calls the array's release.
                unsafe { std::ptr::write(out, ffi) };
                0
            }
            Ok(None) => {
                // SAFETY: as above; an array with no release callback marks the end of the stream.
                unsafe { std::ptr::write(out, FFI_ArrowArray::empty()) };
                0
            }
            Err(msg) => remember_error(p, msg),
        }
    }));
    result.unwrap_or(5)
}

unsafe extern "C" fn stream_get_last_error(stream: *mut FFI_ArrowArrayStream) -> *const c_char {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: DuckDB calls us with our stream.
        let p = unsafe { private_of(stream) };
        match p.last_error.lock() {
            // The CString stays in the slot, so the pointer lives until the next error or the drop.
            Ok(slot) => slot.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            Err(_) => std::ptr::null(),
        }
    }));
    result.unwrap_or(std::ptr::null())
}

// ---------------------------------------------------------------------------------------------------------------
// SQL function plumbing
// ---------------------------------------------------------------------------------------------------------------

/// The text in row `row` of VARCHAR column `col` of a scalar function's input (`None` for NULL).
pub fn varchar_arg(input: &duckdb::core::DataChunkHandle, col: usize, row: usize) -> Option<String> {
    let vector = input.flat_vector(col);
    if vector.row_is_null(row as u64) {
        return None;
    }
    // SAFETY: the column is declared VARCHAR in the function's signature, so its data is `row < len` string
    // structs; DuckString reads (inlined or pointed-to) bytes DuckDB keeps alive for the call.
    unsafe {
        let strings = vector.as_slice_with_len::<sys::duckdb_string_t>(input.len());
        let mut s = strings[row];
        Some(duckdb::types::DuckString::new(&mut s).as_str().into_owned())
    }
}

/// Writes `value` into row `row` of a BIGINT output vector (or TIMESTAMP/TIMESTAMPTZ: microseconds since the epoch,
/// the same 64-bit layout).
pub fn set_bigint(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: i64) {
    // SAFETY: the vector is the function's BIGINT output, with capacity for every input row (`row` is one).
    unsafe { output.as_mut_slice::<i64>()[row] = value };
}

/// The extra info a table function was registered with.
pub fn bind_extra<T>(info: &duckdb::vtab::BindInfo) -> Option<&T> {
    let p = info.get_extra_info::<T>();
    // SAFETY: registered with register_table_function_with_extra_info::<_, T>, so the pointer is a live T owned by
    // DuckDB's catalog for as long as the function exists, which outlives any bind call.
    if p.is_null() { None } else { Some(unsafe { &*p }) }
}

/// Writes `value` into row `row` of a BOOLEAN output vector.
pub fn set_bool(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: bool) {
    // SAFETY: the vector is a BOOLEAN output column (one byte per row) with capacity for `row`.
    unsafe { output.as_mut_slice::<bool>()[row] = value };
}

/// Writes `value` into row `row` of a DOUBLE output vector.
pub fn set_double(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: f64) {
    // SAFETY: the vector is a DOUBLE output column with capacity for `row`.
    unsafe { output.as_mut_slice::<f64>()[row] = value };
}

// ---------------------------------------------------------------------------------------------------------------
// Allocator
// ---------------------------------------------------------------------------------------------------------------

/// Allocations at least this large are mapped from the kernel; their sizes are rounded up to a multiple of it.
const LARGE_ALLOC: usize = 1 << 20;
const PAGE: usize = 4096;
/// Freed large blocks kept mapped for reuse, at most this many bytes in all...
const CACHE_BYTES: usize = 32 << 20;
/// ...of blocks of at most this size each...
const CACHE_BLOCK: usize = 8 << 20;
/// ...in at most this many slots.
const CACHE_SLOTS: usize = 32;

unsafe extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
    fn mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, ...) -> *mut c_void;
}

const PROT_READ_WRITE: c_int = 0x1 | 0x2;
const MAP_PRIVATE_ANONYMOUS: c_int = 0x02 | 0x20;
const MREMAP_MAYMOVE: c_int = 1;

fn map_failed(p: *mut c_void) -> bool {
    p as usize == usize::MAX
}

/// The global allocator of arrowport's Rust code (not of the host): the system allocator, except that blocks of
/// 1 MiB and more (decoded Arrow buffers, network messages) are mapped directly, and given back to the kernel
/// when freed, but for a small bounded cache of recently freed blocks.
///
/// Why: batches are allocated on the network threads and freed on DuckDB's threads after the scan; with glibc's
/// dynamic mmap threshold those multi-megabyte blocks land in the heap and are kept after they are freed, so the
/// host's RSS grew by about the size of every large request (measured: +500 MiB per 10M-row DoPut, again for
/// each one) although nothing stayed referenced. Mapped directly, freed memory goes back to the kernel at once;
/// but a fresh mapping costs a page fault per 4 KiB on first touch, which was half the network thread's time in
/// a large DoPut. A stream of batches frees and allocates blocks of the same few sizes over and over, so up to
/// [`CACHE_BYTES`] of freed blocks stay mapped and are handed out again for the same rounded size: that bounds
/// what is kept while idle, and a steady stream reuses its pages.
pub struct LargeMmap;

fn large(size: usize, align: usize) -> bool {
    size >= LARGE_ALLOC && align <= PAGE
}

/// The length of the mapping that holds a large block of `size` bytes.
fn mapped_len(size: usize) -> usize {
    size.div_ceil(LARGE_ALLOC) * LARGE_ALLOC
}

/// Freed mappings kept for reuse: (address, length) in the first `count` slots.
struct BlockCache {
    slots: [(usize, usize); CACHE_SLOTS],
    count: usize,
    bytes: usize,
}

static CACHE: Mutex<BlockCache> = Mutex::new(BlockCache { slots: [(0, 0); CACHE_SLOTS], count: 0, bytes: 0 });

impl BlockCache {
    fn take(&mut self, len: usize) -> Option<*mut u8> {
        let i = self.slots[..self.count].iter().position(|&(_, l)| l == len)?;
        let (addr, _) = self.slots[i];
        self.count -= 1;
        self.slots[i] = self.slots[self.count];
        self.bytes -= len;
        Some(addr as *mut u8)
    }

    fn keep(&mut self, addr: *mut u8, len: usize) -> bool {
        if len > CACHE_BLOCK || self.count == CACHE_SLOTS || self.bytes + len > CACHE_BYTES {
            return false;
        }
        self.slots[self.count] = (addr as usize, len);
        self.count += 1;
        self.bytes += len;
        true
    }
}

/// A mapping of `len` bytes: a cached one, or a fresh one (zero-filled) from the kernel. `.1` says it is fresh.
fn map(len: usize) -> (*mut u8, bool) {
    // A poisoned lock only means a panic elsewhere while it was held; the slots are consistent at every unlock.
    if let Some(p) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).take(len) {
        return (p, false);
    }
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe { mmap(std::ptr::null_mut(), len, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0) };
    (if map_failed(p) { std::ptr::null_mut() } else { p.cast() }, true)
}

/// Keeps a freed mapping for reuse, or gives it back to the kernel.
///
/// # Safety
/// `p` is the start of a mapping of exactly `len` bytes that nothing uses any more.
unsafe fn unmap(p: *mut u8, len: usize) {
    if !CACHE.lock().unwrap_or_else(|p| p.into_inner()).keep(p, len) {
        // SAFETY: the caller's contract.
        unsafe { munmap(p.cast(), len) };
    }
}

// SAFETY: every block is either the system allocator's (small, or over-aligned) or a private anonymous mapping
// of `mapped_len` of its size, page-aligned (so any alignment up to a page holds); the size/alignment test and the
// rounding decide the same way for a block's allocation and its release, since Rust passes the same layout to
// both. A cached mapping is owned by the cache alone until it is handed out again.
unsafe impl std::alloc::GlobalAlloc for LargeMmap {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !large(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { std::alloc::System.alloc(layout) };
        }
        map(mapped_len(layout.size())).0
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !large(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { std::alloc::System.alloc_zeroed(layout) };
        }
        let (p, fresh) = map(mapped_len(layout.size()));
        if !p.is_null() && !fresh {
            // SAFETY: a reused mapping of at least `layout.size()` bytes, ours alone now.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if large(layout.size(), layout.align()) {
            // SAFETY: `ptr` is the start of our mapping of `mapped_len(layout.size())` bytes, freed by its owner.
            unsafe { unmap(ptr, mapped_len(layout.size())) };
        } else {
            // SAFETY: the system allocator's block, with its layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let (was, will) = (large(layout.size(), layout.align()), large(new_size, layout.align()));
        match (was, will) {
            // SAFETY: the system allocator's block, resized by it.
            (false, false) => unsafe { std::alloc::System.realloc(ptr, layout, new_size) },
            (true, true) => {
                let (old_len, new_len) = (mapped_len(layout.size()), mapped_len(new_size));
                if old_len == new_len {
                    return ptr;
                }
                // SAFETY: our mapping, moved or resized by the kernel; the old mapping is gone afterwards.
                let p = unsafe { mremap(ptr.cast(), old_len, new_len, MREMAP_MAYMOVE) };
                if map_failed(p) { std::ptr::null_mut() } else { p.cast() }
            }
            _ => {
                // SAFETY: a new block of the new size with the same alignment (valid: the caller's contract),
                // the overlap copied, the old block released with its own layout.
                unsafe {
                    let new_layout = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
                    let p = self.alloc(new_layout);
                    if !p.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    p
                }
            }
        }
    }
}

#[cfg(test)]
mod alloc_tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn large_blocks_round_trip_through_their_mappings() {
        let a = LargeMmap;
        // SAFETY: test of the allocator itself; every block is used within its size and freed with its layout.
        unsafe {
            let small = Layout::from_size_align(64, 8).unwrap();
            let big = Layout::from_size_align(3 << 20, 64).unwrap();
            let p = a.alloc_zeroed(big);
            assert!(!p.is_null() && p as usize % PAGE == 0);
            assert_eq!(*p.add((3 << 20) - 1), 0);
            *p.add(12345) = 7;
            let q = a.realloc(p, big, 9 << 20);
            assert_eq!(*q.add(12345), 7);
            let r = a.realloc(q, Layout::from_size_align(9 << 20, 64).unwrap(), 100);
            assert_eq!(*r.add(99), 0);
            a.dealloc(r, Layout::from_size_align(100, 64).unwrap());
            let s = a.alloc(small);
            *s = 1;
            let t = a.realloc(s, small, 2 << 20);
            assert_eq!(*t, 1);
            a.dealloc(t, Layout::from_size_align(2 << 20, 8).unwrap());
        }
    }

    #[test]
    fn freed_blocks_are_reused_within_bounds_and_zeroed_when_asked() {
        let mut c = BlockCache { slots: [(0, 0); CACHE_SLOTS], count: 0, bytes: 0 };
        let block = |i: usize| (i * PAGE) as *mut u8;
        assert!(c.keep(block(1), 2 << 20));
        assert!(c.keep(block(2), 4 << 20));
        assert!(!c.keep(block(3), CACHE_BLOCK + LARGE_ALLOC), "blocks over the per-block bound go back to the kernel");
        assert_eq!(c.take(3 << 20), None, "only the same rounded size is reused");
        assert_eq!(c.take(4 << 20), Some(block(2)));
        assert_eq!((c.count, c.bytes), (1, 2 << 20));
        let mut kept = 2 << 20;
        let mut i = 10;
        while c.keep(block(i), CACHE_BLOCK) {
            kept += CACHE_BLOCK;
            i += 1;
        }
        assert!(kept <= CACHE_BYTES && kept + CACHE_BLOCK > CACHE_BYTES, "the cache holds at most CACHE_BYTES");
        assert_eq!(c.bytes, kept);

        // Through the allocator: a dirty freed block handed out zeroed.
        let a = LargeMmap;
        let big = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: test of the allocator itself; every block is used within its size and freed with its layout.
        unsafe {
            let p = a.alloc(big);
            std::ptr::write_bytes(p, 0xAB, 3 << 20);
            a.dealloc(p, big);
            let q = a.alloc_zeroed(big);
            assert!((0..3 << 20).step_by(4093).all(|i| *q.add(i) == 0));
            a.dealloc(q, big);
        }
        assert_eq!(mapped_len(LARGE_ALLOC), LARGE_ALLOC);
        assert_eq!(mapped_len(LARGE_ALLOC + 1), 2 * LARGE_ALLOC);
    }
}
