//! Which connection a call of one of our SQL functions comes from: DuckDB's client context, read when the call
//! is bound, gives the calling connection's id, and arrowport knows the ids of its own connections. So an
//! administrative function can tell the host's own session (always served) from a statement a client sent
//! over the network (always refused), whatever runs at the same time and on whatever thread.
//!
//! The functions this needs (`duckdb_*_get_client_context`, `duckdb_client_context_get_connection_id`,
//! `duckdb_scalar_function_set_bind` and their companions) are not in the stable C API v1.2.0 that arrowport is
//! built against: they were unstable from DuckDB 1.3 and are stable from 1.5.6, and unstable slots of the API
//! table moved between patch releases. So each is taken by its exported name from the DuckDB image that serves
//! us (the Python modules export them), and only when a name is not exported (the CLI exports none) from its
//! slot in the table, and then only on DuckDB 1.5.6 or newer, where that slot is stable. Where a name is both
//! exported and in the table, the two must agree, else the name wins and stderr says so. Without all of them,
//! [`available`] is false and callers fall back to what needs none (`engine::policy::admit_admin`).

use std::ffi::{CString, c_char, c_void};
use std::sync::OnceLock;

use duckdb::ffi as sys;

use crate::duck::conn::RawConn;

type Ctx = *mut c_void;

#[derive(Clone, Copy)]
struct Api {
    connection_get_client_context: unsafe extern "C" fn(sys::duckdb_connection, *mut Ctx),
    client_context_get_connection_id: unsafe extern "C" fn(Ctx) -> sys::idx_t,
    destroy_client_context: unsafe extern "C" fn(*mut Ctx),
    table_function_get_client_context: unsafe extern "C" fn(sys::duckdb_bind_info, *mut Ctx),
    scalar_function_set_bind:
        unsafe extern "C" fn(sys::duckdb_scalar_function, Option<unsafe extern "C" fn(sys::duckdb_bind_info)>),
    scalar_function_get_client_context: unsafe extern "C" fn(sys::duckdb_bind_info, *mut Ctx),
    scalar_function_bind_set_error: unsafe extern "C" fn(sys::duckdb_bind_info, *const c_char),
    scalar_function_set_bind_data:
        unsafe extern "C" fn(sys::duckdb_bind_info, *mut c_void, sys::duckdb_delete_callback_t),
    scalar_function_get_bind_data: unsafe extern "C" fn(sys::duckdb_function_info) -> *mut c_void,
    scalar_function_bind_get_extra_info: unsafe extern "C" fn(sys::duckdb_bind_info) -> *mut c_void,
}

static API: OnceLock<Option<Api>> = OnceLock::new();

/// Whether the calling connection can be told ([`table_caller`], [`register_scalar`]).
pub fn available() -> bool {
    API.get().copied().flatten().is_some()
}

/// How the functions were found, for `arrowport_version()`-style reports and tests: `"by name"`, `"by slot"`, or
/// why they are unavailable.
pub fn how() -> &'static str {
    HOW.get().map_or("not resolved", |s| s.as_str())
}

static HOW: OnceLock<String> = OnceLock::new();

/// Finds the functions; called once by the entrypoint with the API table DuckDB handed out.
///
/// # Safety
/// `api` is the table DuckDB's `get_api` returned during this entrypoint (or null).
pub(super) unsafe fn resolve(api: *const sys::duckdb_ext_api_v1) {
    if API.get().is_some() || api.is_null() {
        return;
    }
    // SAFETY: forwarded from the caller.
    let (found, how) = unsafe { find(api) };
    let _ = HOW.set(how);
    let _ = API.set(found);
}

/// The DuckDB version as (major, minor, patch), from `duckdb_library_version()`.
fn version() -> Option<(u32, u32, u32)> {
    let text = crate::duck::library_version();
    let mut parts = text.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

// The transmutes below take their target type from the `Api` field each one fills.
#[allow(clippy::missing_transmute_annotations)]
unsafe fn find(api: *const sys::duckdb_ext_api_v1) -> (Option<Api>, String) {
    // SAFETY: `api` is the live API table; reading a field reads one pointer-sized slot of it.
    let table = unsafe { &*api };
    let image = table.duckdb_library_version.map(|f| f as *const c_void);
    let handle = image.and_then(|p| unsafe { open_image(p) });
    let stable_slots = version().is_some_and(|v| v >= (1, 5, 6));
    let mut by_name = 0;
    let mut by_slot = 0;
    let mut disagreed = Vec::new();
    macro_rules! take {
        ($field:ident, $name:literal) => {{
            let slot = table.$field.map(|f| f as *const c_void);
            let named = handle.and_then(|h| unsafe { symbol(h, $name) });
            let chosen = match (named, slot) {
                (Some(n), s) => {
                    if stable_slots && s.is_some_and(|s| s != n) {
                        disagreed.push($name);
                    }
                    by_name += 1;
                    Some(n)
                }
                (None, Some(s)) if stable_slots => {
                    by_slot += 1;
                    Some(s)
                }
                _ => None,
            };
            match chosen {
                // SAFETY: the pointer is DuckDB's function of that name (by its exported name, or by its slot in a
                // table whose layout is stable for this version); the type is its C signature.
                Some(p) => unsafe { std::mem::transmute::<*const c_void, _>(p) },
                None => {
                    return (
                        None,
                        format!("unavailable: {} not found in DuckDB {}", $name, crate::duck::library_version()),
                    );
                }
            }
        }};
    }
    let found = Api {
        connection_get_client_context: take!(
            duckdb_connection_get_client_context,
            "duckdb_connection_get_client_context"
        ),
        client_context_get_connection_id: take!(
            duckdb_client_context_get_connection_id,
            "duckdb_client_context_get_connection_id"
        ),
        destroy_client_context: take!(duckdb_destroy_client_context, "duckdb_destroy_client_context"),
        table_function_get_client_context: take!(
            duckdb_table_function_get_client_context,
            "duckdb_table_function_get_client_context"
        ),
        scalar_function_set_bind: take!(duckdb_scalar_function_set_bind, "duckdb_scalar_function_set_bind"),
        scalar_function_get_client_context: take!(
            duckdb_scalar_function_get_client_context,
            "duckdb_scalar_function_get_client_context"
        ),
        scalar_function_bind_set_error: take!(
            duckdb_scalar_function_bind_set_error,
            "duckdb_scalar_function_bind_set_error"
        ),
        scalar_function_set_bind_data: take!(
            duckdb_scalar_function_set_bind_data,
            "duckdb_scalar_function_set_bind_data"
        ),
        scalar_function_get_bind_data: take!(
            duckdb_scalar_function_get_bind_data,
            "duckdb_scalar_function_get_bind_data"
        ),
        scalar_function_bind_get_extra_info: take!(
            duckdb_scalar_function_bind_get_extra_info,
            "duckdb_scalar_function_bind_get_extra_info"
        ),
    };
    if !disagreed.is_empty() {
        eprintln!(
            "arrowport: DuckDB's API table and its exported names disagree for {disagreed:?}; the exported names are used"
        );
    }
    let how = match (by_name, by_slot) {
        (n, 0) => format!("by name ({n})"),
        (0, s) => format!("by slot ({s})"),
        (n, s) => format!("by name ({n}) and by slot ({s})"),
    };
    let how = if disagreed.is_empty() { how } else { format!("{how}; slots disagreed: {}", disagreed.join(", ")) };
    (Some(found), how)
}

/// The loaded image (shared object or executable) that holds `address`, opened without loading anything.
unsafe fn open_image(address: *const c_void) -> Option<*mut c_void> {
    // SAFETY: dladdr fills `info` for an address inside a loaded image; the name it points to lives as long as
    // the image, and dlopen with RTLD_NOLOAD only returns a handle to an image already loaded.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(address, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let handle = libc::dlopen(info.dli_fname, libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        (!handle.is_null()).then_some(handle)
    }
}

unsafe fn symbol(handle: *mut c_void, name: &str) -> Option<*const c_void> {
    let c = CString::new(name).ok()?;
    // SAFETY: `handle` is a live dlopen handle; dlsym only looks the name up.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    (!p.is_null()).then_some(p as *const c_void)
}

fn with_context(api: &Api, get: impl FnOnce(*mut Ctx)) -> Option<u64> {
    let mut ctx: Ctx = std::ptr::null_mut();
    get(&mut ctx);
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` was just handed out by DuckDB and is destroyed exactly once.
    unsafe {
        let id = (api.client_context_get_connection_id)(ctx);
        (api.destroy_client_context)(&mut ctx);
        Some(id)
    }
}

impl RawConn {
    /// This connection's id as DuckDB's client context gives it (`None` where that cannot be read).
    pub fn connection_id(&self) -> Option<u64> {
        let api = API.get().copied().flatten()?;
        // SAFETY: self.raw is a live connection; the context is read and destroyed at once.
        with_context(&api, |out| unsafe { (api.connection_get_client_context)(self.raw, out) })
    }
}

/// The id of the connection that binds a table function call (`None` where it cannot be read).
pub fn table_caller(bind: &duckdb::vtab::BindInfo) -> Option<u64> {
    const _: () =
        assert!(std::mem::size_of::<duckdb::vtab::BindInfo>() == std::mem::size_of::<sys::duckdb_bind_info>());
    let api = API.get().copied().flatten()?;
    // SAFETY: `BindInfo` is the duckdb crate's wrapper of exactly one `duckdb_bind_info` (same size, asserted
    // above); the handle is live for the bind call we are in.
    let raw: sys::duckdb_bind_info = unsafe { std::mem::transmute_copy(bind) };
    // SAFETY: the bind info of the running bind call.
    with_context(&api, |out| unsafe { (api.table_function_get_client_context)(raw, out) })
}

/// What a scalar function registered with [`register_scalar`] returns for a row.
pub enum ScalarOut {
    BigInt(i64),
    Text(String),
    Null,
}

/// A scalar function with a bind step that sees the calling connection.
pub struct ScalarSpec {
    pub name: &'static str,
    /// One VARCHAR argument, or none.
    pub varchar_arg: bool,
    /// BIGINT, else VARCHAR.
    pub returns_bigint: bool,
    /// At bind, with the calling connection's id: an error refuses the statement; `Ok(tag)` is handed to every
    /// call of the statement.
    pub bind: Box<dyn Fn(Option<u64>) -> Result<u8, String> + Send + Sync>,
    /// Each row: the bind's tag and the argument.
    pub call: Box<dyn Fn(u8, Option<String>) -> Result<ScalarOut, String> + Send + Sync>,
}

/// Registers `spec` as a volatile scalar function of the database `conn` belongs to. Requires [`available`].
pub fn register_scalar(conn: &mut RawConn, spec: ScalarSpec) -> Result<(), crate::duck::DbError> {
    let api = API
        .get()
        .copied()
        .flatten()
        .ok_or_else(|| crate::duck::DbError::ours("DuckDB's client context is not available"))?;
    let name = CString::new(spec.name).map_err(|_| crate::duck::DbError::ours("function name"))?;
    // SAFETY: the function object is made, configured and registered here, then destroyed once; the spec is
    // boxed into DuckDB's catalog as extra info with its own destructor.
    unsafe {
        let mut f = sys::duckdb_create_scalar_function();
        sys::duckdb_scalar_function_set_name(f, name.as_ptr());
        let varchar = || sys::duckdb_create_logical_type(sys::DUCKDB_TYPE_DUCKDB_TYPE_VARCHAR);
        if spec.varchar_arg {
            let mut t = varchar();
            sys::duckdb_scalar_function_add_parameter(f, t);
            sys::duckdb_destroy_logical_type(&mut t);
        }
        let mut ret = if spec.returns_bigint {
            sys::duckdb_create_logical_type(sys::DUCKDB_TYPE_DUCKDB_TYPE_BIGINT)
        } else {
            varchar()
        };
        sys::duckdb_scalar_function_set_return_type(f, ret);
        sys::duckdb_destroy_logical_type(&mut ret);
        sys::duckdb_scalar_function_set_volatile(f);
        sys::duckdb_scalar_function_set_function(f, Some(scalar_call));
        (api.scalar_function_set_bind)(f, Some(scalar_bind));
        let extra = Box::into_raw(Box::new(spec)).cast::<c_void>();
        sys::duckdb_scalar_function_set_extra_info(f, extra, Some(drop_box::<ScalarSpec>));
        let state = sys::duckdb_register_scalar_function(conn.raw, f);
        sys::duckdb_destroy_scalar_function(&mut f);
        if state != sys::duckdb_state_DuckDBSuccess {
            return Err(crate::duck::DbError::ours(format!("could not register {}", name.to_string_lossy())));
        }
    }
    Ok(())
}

unsafe extern "C" fn drop_box<T>(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: made by Box::into_raw of a T, dropped once by DuckDB's destructor call.
        drop(unsafe { Box::from_raw(p.cast::<T>()) });
    }
}

unsafe extern "C" fn scalar_bind(info: sys::duckdb_bind_info) {
    let Some(api) = API.get().copied().flatten() else { return };
    let outcome = crate::panic::contain("binding an arrowport function", || {
        // SAFETY: the extra info is the ScalarSpec registered with this function, alive in DuckDB's catalog.
        let spec = unsafe { &*(api.scalar_function_bind_get_extra_info)(info).cast::<ScalarSpec>() };
        // SAFETY: `info` is the live bind info of this call.
        let caller = with_context(&api, |out| unsafe { (api.scalar_function_get_client_context)(info, out) });
        (spec.bind)(caller)
    });
    let message = match outcome {
        Ok(Ok(tag)) => {
            // SAFETY: the bind data is a boxed u8 with its own destructor.
            unsafe {
                (api.scalar_function_set_bind_data)(info, Box::into_raw(Box::new(tag)).cast(), Some(drop_box::<u8>))
            };
            return;
        }
        Ok(Err(m)) => m,
        Err(p) => p.to_string(),
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `info` is live; DuckDB copies the message.
    unsafe { (api.scalar_function_bind_set_error)(info, text.as_ptr()) };
}

unsafe extern "C" fn scalar_call(
    info: sys::duckdb_function_info,
    input: sys::duckdb_data_chunk,
    output: sys::duckdb_vector,
) {
    let Some(api) = API.get().copied().flatten() else { return };
    let outcome = crate::panic::contain("running an arrowport function", || -> Result<(), String> {
        // SAFETY: extra info and bind data are the ones registered and set above, alive for this call; the
        // input has one VARCHAR column when the spec says so; the output is a BIGINT or VARCHAR vector with room
        // for every input row.
        unsafe {
            let spec = &*sys::duckdb_scalar_function_get_extra_info(info).cast::<ScalarSpec>();
            let tag = (api.scalar_function_get_bind_data)(info).cast::<u8>().as_ref().copied().unwrap_or(0);
            let rows = sys::duckdb_data_chunk_get_size(input) as usize;
            for row in 0..rows {
                let arg =
                    if spec.varchar_arg { varchar_at(sys::duckdb_data_chunk_get_vector(input, 0), row) } else { None };
                if spec.varchar_arg && arg.is_none() {
                    set_null(output, row);
                    continue;
                }
                match (spec.call)(tag, arg)? {
                    ScalarOut::BigInt(v) => *sys::duckdb_vector_get_data(output).cast::<i64>().add(row) = v,
                    ScalarOut::Text(t) => sys::duckdb_vector_assign_string_element_len(
                        output,
                        row as u64,
                        t.as_ptr().cast(),
                        t.len() as u64,
                    ),
                    ScalarOut::Null => set_null(output, row),
                }
            }
        }
        Ok(())
    });
    let message = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(m)) => m,
        Err(p) => p.to_string(),
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `info` is live; DuckDB copies the message.
    unsafe { sys::duckdb_scalar_function_set_error(info, text.as_ptr()) };
}

/// # Safety
/// `vector` is a VARCHAR vector with more than `row` rows.
unsafe fn varchar_at(vector: sys::duckdb_vector, row: usize) -> Option<String> {
    // SAFETY: as the caller promises; the string bytes live as long as the vector.
    unsafe {
        let validity = sys::duckdb_vector_get_validity(vector);
        if !validity.is_null() && !sys::duckdb_validity_row_is_valid(validity, row as u64) {
            return None;
        }
        let strings = sys::duckdb_vector_get_data(vector).cast::<sys::duckdb_string_t>();
        let mut s = *strings.add(row);
        Some(duckdb::types::DuckString::new(&mut s).as_str().into_owned())
    }
}

/// # Safety
/// `vector` is a writable output vector with more than `row` rows.
unsafe fn set_null(vector: sys::duckdb_vector, row: usize) {
    // SAFETY: as the caller promises.
    unsafe {
        sys::duckdb_vector_ensure_validity_writable(vector);
        sys::duckdb_validity_set_row_invalid(sys::duckdb_vector_get_validity(vector), row as u64);
    }
}
