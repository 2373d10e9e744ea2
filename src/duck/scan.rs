//! The Arrow C stream DuckDB's Arrow scan pulls batches from.
//!
//! A [`ScanStream`] wraps a [`BatchPull`] (a request's channel, or batches in memory) in an `ArrowArrayStream`;
//! [`RawConn::create_scan_view`] registers it with `duckdb_arrow_scan`. DuckDB calls the stream's callbacks on
//! its own threads; each runs behind the panic boundary and reports failure through `get_last_error`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;
use std::thread::ThreadId;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::SchemaRef;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use duckdb::ffi as sys;

use crate::duck::DbError;
use crate::duck::conn::RawConn;

impl RawConn {
    /// Creates the view `name` (in the connection's current catalog) over DuckDB's Arrow scan of `stream`.
    /// The stream must outlive every statement that reads the view; drop the view before the stream.
    pub fn create_scan_view(&mut self, name: &str, stream: &mut ScanStream) -> Result<(), DbError> {
        let text = CString::new(name).map_err(|_| DbError::ours("view name contains a NUL byte"))?;
        // SAFETY: self.raw is live and ours; stream.raw is a boxed ArrowArrayStream whose address is stable and
        // which outlives the view (the caller's contract). DuckDB copies the callbacks and never releases it.
        let state = unsafe {
            sys::duckdb_arrow_scan(self.raw, text.as_ptr(), (&mut *stream.raw as *mut FFI_ArrowArrayStream).cast())
        };
        if state == sys::duckdb_state_DuckDBSuccess {
            Ok(())
        } else {
            Err(stream
                .take_error()
                .map(DbError::from_text)
                .unwrap_or_else(|| DbError::ours("DuckDB could not scan the Arrow stream")))
        }
    }
}

/// A source of record batches that DuckDB pulls from (on its own threads, one call at a time).
pub trait BatchPull: Send {
    /// The next batch, `Ok(None)` at the end, or an error message that fails the scan.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String>;
}

struct ScanPrivate {
    /// The thread whose statements may read the stream: the writer that points it at a request. DuckDB asks for
    /// the schema when it binds a statement, on the thread that runs that statement; a bind on any other thread
    /// (another connection scanning the view) is refused there, so no other connection ever gets a batch.
    owner: Mutex<ThreadId>,
    /// What a bind on another thread gets: see [`Refusal`].
    refusal: Box<Refusal>,
    schema: Mutex<SchemaRef>,
    pull: Mutex<Box<dyn BatchPull>>,
    /// Every schema handed to DuckDB. DuckDB never releases the schemas it asks a scanned stream for (it nulls
    /// their release callbacks), so we hand out borrowed copies and free the originals with the stream. Boxed:
    /// their addresses are DuckDB's and must not move when the vector grows.
    #[allow(clippy::vec_box)]
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
            owner: Mutex::new(std::thread::current().id()),
            refusal: Refusal::new(),
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
    /// Only statements run on the calling thread can read it from now on. Call only while no statement reads
    /// the stream; frees what earlier statements were handed.
    pub fn reset(&mut self, schema: SchemaRef, pull: Box<dyn BatchPull>) {
        // SAFETY: `private` is live until Drop; `&mut self` and the caller's contract mean DuckDB is not in a
        // callback, so the schemas handed out before are no longer referenced.
        let p = unsafe { &*self.private };
        if let Ok(mut owner) = p.owner.lock() {
            *owner = std::thread::current().id();
        }
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

/// A schema DuckDB refuses when it binds a scan: one column whose "type" is the reason, so the binder fails with
/// "Unsupported Internal Arrow Type arrowport: ..." and the statement never reads a batch. Built from static
/// strings; nothing in it is ever released.
struct Refusal {
    root: CArrowSchema,
    child: CArrowSchema,
    children: [*mut CArrowSchema; 1],
}

const REFUSAL_REASON: &CStr =
    c"arrowport: this is the scan of one of arrowport's writers; no other connection can read it";

impl Refusal {
    fn new() -> Box<Refusal> {
        let blank = |format: &'static CStr, name: &'static CStr| CArrowSchema {
            format: format.as_ptr(),
            name: name.as_ptr(),
            metadata: std::ptr::null(),
            flags: 2, // nullable
            n_children: 0,
            children: std::ptr::null_mut(),
            dictionary: std::ptr::null_mut(),
            release: Some(schema_release_noop),
            private_data: std::ptr::null_mut(),
        };
        let mut r = Box::new(Refusal {
            root: blank(c"+s", c""),
            child: blank(REFUSAL_REASON, c"refused"),
            children: [std::ptr::null_mut()],
        });
        r.children[0] = &mut r.child;
        r.root.n_children = 1;
        r.root.children = r.children.as_mut_ptr();
        r
    }
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
    let result = crate::panic::contain("reading a request's batches", || {
        // SAFETY: DuckDB calls us with our stream and a writable out pointer.
        let p = unsafe { private_of(stream) };
        if p.owner.lock().map(|o| *o != std::thread::current().id()).unwrap_or(true) {
            // DuckDB ignores get_schema's result code when it binds (it reads `out` regardless), so the refusal
            // is a schema it refuses to bind, with our reason in place of a type.
            // SAFETY: `out` is writable; the copy borrows `p.refusal`, which lives as long as the stream.
            unsafe {
                std::ptr::copy_nonoverlapping(&p.refusal.root as *const CArrowSchema, out.cast::<CArrowSchema>(), 1)
            };
            return 0;
        }
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
            std::ptr::copy_nonoverlapping(
                (&*owned as *const FFI_ArrowSchema).cast::<CArrowSchema>(),
                out.cast::<CArrowSchema>(),
                1,
            );
            (*out.cast::<CArrowSchema>()).release = Some(schema_release_noop);
        }
        match p.exported.lock() {
            Ok(mut v) => v.push(owned),
            Err(_) => std::mem::forget(owned),
        }
        0
    });
    result.unwrap_or(5)
}

unsafe extern "C" fn stream_get_next(stream: *mut FFI_ArrowArrayStream, out: *mut FFI_ArrowArray) -> c_int {
    let result = crate::panic::contain("reading a request's batches", || {
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
    });
    result.unwrap_or(5)
}

unsafe extern "C" fn stream_get_last_error(stream: *mut FFI_ArrowArrayStream) -> *const c_char {
    let result = crate::panic::contain("reading a request's batches", || {
        // SAFETY: DuckDB calls us with our stream.
        let p = unsafe { private_of(stream) };
        match p.last_error.lock() {
            // The CString stays in the slot, so the pointer lives until the next error or the drop.
            Ok(slot) => slot.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            Err(_) => std::ptr::null(),
        }
    });
    result.unwrap_or(std::ptr::null())
}
