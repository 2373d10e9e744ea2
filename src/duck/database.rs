//! A database instance of arrowport's own, beside the host's: where arrowport keeps the metadata no network
//! client may name (stream mappings, tokens; see `catalog::store`).
//!
//! It is a separate DuckDB instance (`duckdb_open_ext`), not a catalog attached to the host: every connection to
//! the host, the writers' connections that run clients' SQL among them, sees the host's catalogs only, so no
//! statement a client sends can resolve a name inside this one. One worker thread; closed when dropped, after
//! its connections.

use std::ffi::{CStr, CString};

use duckdb::ffi as sys;

use crate::duck::DbError;
use crate::duck::conn::RawConn;

pub struct Database {
    raw: sys::duckdb_database,
}

// SAFETY: a duckdb_database may be used from any thread; DuckDB synchronises connecting and closing.
unsafe impl Send for Database {}
unsafe impl Sync for Database {}

impl Database {
    /// Opens (creating when absent, unless `read_only`) the database file at `path`, or an in-memory database
    /// for `:memory:`.
    pub fn open(path: &str, read_only: bool) -> Result<Database, DbError> {
        let c_path = CString::new(path).map_err(|_| DbError::ours(format!("invalid database path {path:?}")))?;
        let mut config: sys::duckdb_config = std::ptr::null_mut();
        // SAFETY: `config` is a valid out pointer; it is destroyed below on every path.
        if unsafe { sys::duckdb_create_config(&mut config) } != sys::duckdb_state_DuckDBSuccess {
            return Err(DbError::ours("could not create a DuckDB configuration"));
        }
        let mut settings =
            vec![("threads", "1"), ("autoload_known_extensions", "false"), ("autoinstall_known_extensions", "false")];
        if read_only {
            settings.push(("access_mode", "READ_ONLY"));
        }
        for (name, value) in settings {
            let (n, v) = (CString::new(name).expect("no NUL"), CString::new(value).expect("no NUL"));
            // SAFETY: `config` is live; both strings are NUL-terminated and outlive the call.
            unsafe { sys::duckdb_set_config(config, n.as_ptr(), v.as_ptr()) };
        }
        let mut db: sys::duckdb_database = std::ptr::null_mut();
        let mut error: *mut std::os::raw::c_char = std::ptr::null_mut();
        // SAFETY: valid path, out pointers and config; the config may be destroyed once open returns.
        let state = unsafe { sys::duckdb_open_ext(c_path.as_ptr(), &mut db, config, &mut error) };
        // SAFETY: created above, destroyed once.
        unsafe { sys::duckdb_destroy_config(&mut config) };
        if state != sys::duckdb_state_DuckDBSuccess || db.is_null() {
            let text = if error.is_null() {
                "unknown error".to_string()
            } else {
                // SAFETY: DuckDB returns a NUL-terminated message that we must free with duckdb_free.
                let t = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
                unsafe { sys::duckdb_free(error.cast()) };
                t
            };
            return Err(DbError::ours(format!("could not open {path}: {text}")));
        }
        Ok(Database { raw: db })
    }

    pub fn connect(&self) -> Result<RawConn, DbError> {
        RawConn::connect(self.raw)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: opened by duckdb_open_ext and closed exactly once; the owner drops its connections first.
        unsafe { sys::duckdb_close(&mut self.raw) };
    }
}
