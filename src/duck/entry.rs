//! What happens on `LOAD arrowport`: the C API table is filled, our connections are opened while DuckDB lends
//! us the database handle, and the init function named in [`crate::entrypoint!`] gets them. Also the process
//! exit hook. Errors and panics become DuckDB's load error; the host keeps running.

use std::error::Error;
use std::ffi::{CString, c_int};

use duckdb::ffi as sys;

use crate::duck::conn::RawConn;
use crate::duck::{MIN_C_API, POOL_SIZE, STATEMENT_POOL_SIZE};

/// What the entrypoint hands to the init function: a safe connection for registering SQL functions, the pool
/// of raw connections for the writers, and one for arrowport's own catalog work.
pub struct LoadContext {
    pub conn: duckdb::Connection,
    pub pool: Vec<RawConn>,
    /// For statements sent over the network.
    pub statements: Vec<RawConn>,
    /// For arrowport's own catalog work (stream mappings, tokens), apart from the writers.
    pub admin: RawConn,
    /// For registering functions through the C API directly (`caller::register_scalar`); closed after LOAD.
    pub registrar: RawConn,
    /// For the settings arrowport changes while it listens (`host::settings`).
    pub control: RawConn,
    /// For the checkpoints arrowport runs while it listens (`host::checkpoints`).
    pub checkpointer: RawConn,
}

/// The init function arrowport's top layer gives [`crate::entrypoint!`].
pub type Init = fn(LoadContext) -> Result<(), Box<dyn Error>>;

/// The body of the C entrypoint.
///
/// # Safety
/// `info` and `access` come straight from DuckDB's call of the entrypoint and are valid for its duration.
pub unsafe fn run(info: sys::duckdb_extension_info, access: *const sys::duckdb_extension_access, init: Init) -> bool {
    let outcome = crate::panic::contain("loading arrowport", || {
        // SAFETY: forwarded from our caller, valid for this call.
        unsafe { load(info, access, init) }
    });
    let message = match outcome {
        Ok(Ok(loaded)) => return loaded,
        Ok(Err(message)) => message,
        Err(panicked) => format!("arrowport failed to load: {panicked}"),
    };
    // SAFETY: `access` is valid for this call; set_error copies the message.
    unsafe {
        if !access.is_null()
            && let Some(set_error) = (*access).set_error
        {
            let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
            set_error(info, text.as_ptr());
        }
    }
    false
}

/// # Safety
/// `info` and `access` come straight from DuckDB's call of the entrypoint.
unsafe fn load(
    info: sys::duckdb_extension_info,
    access: *const sys::duckdb_extension_access,
    init: Init,
) -> Result<bool, String> {
    if access.is_null() {
        return Err("arrowport: DuckDB passed no extension access table".into());
    }
    // SAFETY: `access` is non-null and valid for this call. When DuckDB does not offer the C API version we
    // need it returns no table and has already recorded its own error for the user; we just report failure.
    let have_api = unsafe { sys::duckdb_rs_extension_api_init(info, access, MIN_C_API) }.map_err(|e| e.to_string())?;
    if !have_api {
        return Ok(false);
    }
    // SAFETY: as above; the table get_api returns stays valid for the process (DuckDB keeps it with the
    // database's extension state), and resolve only reads it now.
    unsafe {
        if let Some(get_api) = (*access).get_api {
            let version = CString::new(MIN_C_API).unwrap_or_default();
            crate::duck::caller::resolve(get_api(info, version.as_ptr()).cast());
        }
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
    let mut statements = Vec::with_capacity(STATEMENT_POOL_SIZE);
    for _ in 0..STATEMENT_POOL_SIZE {
        statements.push(RawConn::connect(db).map_err(|e| e.to_string())?);
    }
    let admin = RawConn::connect(db).map_err(|e| e.to_string())?;
    let registrar = RawConn::connect(db).map_err(|e| e.to_string())?;
    let control = RawConn::connect(db).map_err(|e| e.to_string())?;
    let checkpointer = RawConn::connect(db).map_err(|e| e.to_string())?;
    init(LoadContext { conn, pool, statements, admin, registrar, control, checkpointer }).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Registers `f` to run when the process exits, so listeners stop before the host tears down. `f` must contain
/// its own panics (see `crate::panic`): it is called from C, and it may run twice.
///
/// C's `atexit` runs `f` after the destructors of every static DuckDB made lazily since (LIFO), so DuckDB code
/// running on our threads by then can touch freed memory. In a Python host `f` is also registered with Python's
/// `Py_AtExit` (found in the process, not linked): Python calls it at the end of its finalization, before C's
/// exit handlers destroy anything, which is where a Python host's exit otherwise crashed on our checkpoint thread.
pub fn at_exit(f: extern "C" fn()) {
    unsafe extern "C" {
        fn atexit(cb: extern "C" fn()) -> c_int;
    }
    // SAFETY: `f` is a plain function in this library, which DuckDB never unloads.
    unsafe {
        atexit(f);
    }
    // SAFETY: dlsym with RTLD_DEFAULT looks the name up in the process's global symbols; a Python interpreter
    // exports `Py_AtExit`, of type `int (*)(void (*)(void))` in every Python 3 (it only appends to a table and
    // needs no interpreter state). Absent (any other host), nothing is registered.
    unsafe {
        let found = libc::dlsym(libc::RTLD_DEFAULT, c"Py_AtExit".as_ptr());
        if !found.is_null() {
            let py_at_exit: unsafe extern "C" fn(extern "C" fn()) -> c_int = std::mem::transmute(found);
            py_at_exit(f);
        }
    }
}

/// Defines the C entrypoint DuckDB calls on `LOAD arrowport`, handing the opened connections to `$init`
/// (`fn(LoadContext) -> Result<(), Box<dyn Error>>`). Used once, in `lib.rs`: the layer that wires everything
/// names its init function, and this layer stays unaware of the layers above it.
#[macro_export]
macro_rules! entrypoint {
    ($init:path) => {
        /// Called by DuckDB on `LOAD arrowport`. Panics and errors become DuckDB's load error.
        ///
        /// # Safety
        /// DuckDB passes valid `info` and `access` pointers for the duration of this call.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn arrowport_init_c_api(
            info: ::duckdb::ffi::duckdb_extension_info,
            access: *const ::duckdb::ffi::duckdb_extension_access,
        ) -> bool {
            // SAFETY: forwarded from DuckDB's call, valid for its duration.
            unsafe { $crate::duck::entry::run(info, access, $init) }
        }
    };
}
