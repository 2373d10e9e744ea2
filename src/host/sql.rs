//! The SQL surface: functions registered on `LOAD`. Each parses its arguments and calls into the listener's
//! [`Host`]; errors become DuckDB errors with the message users see. The administrative ones refuse to run for
//! a statement that came over the network, on whatever thread DuckDB runs them (`Host::admit_admin`).
//!
//! - `arrowport_version()`: the extension's version and the DuckDB it runs in.
//! - `arrowport_listen(address)` (scalar) and `FROM arrowport_listen(address, option := value, ...)` (table).
//! - `arrowport_stop()`: stops every listener; returns how many.
//! - `FROM arrowport_status()`: listeners, addresses, uptime, requests in flight.
//! - `FROM arrowport_metrics()`: per stream and protocol, what landed and what failed.
//! - `CALL arrowport_create_stream(name, target := ..., create_table := ..., schema_policy := ..., mode := ...)`,
//!   `arrowport_alter_stream` (same options), `arrowport_drop_stream(name)`, `FROM arrowport_streams()`.
//! - `CALL arrowport_create_token(name, streams := [...])` (the secret, shown once), `arrowport_revoke_token(name)`,
//!   `FROM arrowport_tokens()` (never secrets).
//! - `FROM arrowport_maintain(catalog, every := seconds, older_than := seconds)`: compacts a DuckLake catalog.
//! - `FROM arrowport_send(url, stream, query := '...', ...)`: the query's result to a remote stream, one row
//!   with the remote's acknowledgement.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use duckdb::Connection;
use duckdb::core::{DataChunkHandle, Inserter, LogicalTypeHandle, LogicalTypeId};
use duckdb::vscalar::{ScalarFunctionSignature, VScalar};
use duckdb::vtab::arrow::WritableVector;
use duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab};

use crate::catalog::access::{Scope, TokenRecord};
use crate::catalog::registry::{self, Mapping, MappingOptions};
use crate::catalog::schema::quote_literal;
use crate::duck::{self, vector};
use crate::engine::metrics;
use crate::engine::policy::Access;
use crate::engine::sink::{Maintained, validate_key};
use crate::host::gate::AuthMode;
use crate::host::listener::{AdminCall, Host, ListenOptions, StatusRow};
use crate::proto::send::{self, Compression, SendOptions, Sent, Target};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// `arrowport <version> (DuckDB <version>, C API <version>)`.
pub fn version_text() -> String {
    format!("arrowport {} (DuckDB {}, C API {})", crate::engine::VERSION, duck::library_version(), duck::MIN_C_API)
}

pub fn register(conn: &Connection, mut registrar: duck::conn::RawConn, host: Arc<Host>) -> Result<()> {
    conn.register_scalar_function::<Version>("arrowport_version")?;
    if duck::caller::available() {
        // Bound with the calling connection in view: the host's own session is served at once, whatever runs.
        register_admin_scalars(&mut registrar, &host)?;
    } else {
        conn.register_scalar_function_with_state::<ListenScalar>("arrowport_listen", &host)?;
        conn.register_scalar_function_with_state::<Stop>("arrowport_stop", &host)?;
    }
    drop(registrar);
    conn.register_table_function_with_extra_info::<ListenTable, Arc<Host>>("arrowport_listen", &host)?;
    conn.register_table_function_with_extra_info::<Status, Arc<Host>>("arrowport_status", &host)?;
    conn.register_table_function_with_extra_info::<MetricsTable, Arc<Host>>("arrowport_metrics", &host)?;
    conn.register_table_function_with_extra_info::<CreateStream, Arc<Host>>("arrowport_create_stream", &host)?;
    conn.register_table_function_with_extra_info::<AlterStream, Arc<Host>>("arrowport_alter_stream", &host)?;
    conn.register_table_function_with_extra_info::<DropStream, Arc<Host>>("arrowport_drop_stream", &host)?;
    conn.register_table_function_with_extra_info::<Streams, Arc<Host>>("arrowport_streams", &host)?;
    conn.register_table_function_with_extra_info::<CreateToken, Arc<Host>>("arrowport_create_token", &host)?;
    conn.register_table_function_with_extra_info::<RevokeToken, Arc<Host>>("arrowport_revoke_token", &host)?;
    conn.register_table_function_with_extra_info::<TokensTable, Arc<Host>>("arrowport_tokens", &host)?;
    conn.register_table_function_with_extra_info::<SendTable, Arc<Host>>("arrowport_send", &host)?;
    conn.register_table_function_with_extra_info::<Maintain, Arc<Host>>("arrowport_maintain", &host)?;
    Ok(())
}

/// The environment variable that makes `LOAD arrowport` start listening: its value is the address, as for
/// `arrowport_listen`, so `duckdb -cmd "LOAD arrowport"` in a service unit is enough.
pub const AUTOLISTEN: &str = "ARROWPORT_LISTEN";
/// Listen options for [`AUTOLISTEN`], as named arguments of `arrowport_listen`: `sql := 'read_only', ...`.
pub const AUTOLISTEN_OPTIONS: &str = "ARROWPORT_LISTEN_OPTIONS";

/// Starts listening at load when [`AUTOLISTEN`] is set (and not empty); the load fails with the reason when
/// the listener cannot start, so a service never runs silently deaf.
pub fn autolisten(conn: &Connection) -> Result<()> {
    let addr = std::env::var(AUTOLISTEN).unwrap_or_default();
    if addr.trim().is_empty() {
        return Ok(());
    }
    let options = std::env::var(AUTOLISTEN_OPTIONS).unwrap_or_default();
    let sql = match options.trim() {
        "" => format!("FROM arrowport_listen({})", quote_literal(addr.trim())),
        o => format!("FROM arrowport_listen({}, {o})", quote_literal(addr.trim())),
    };
    // One plain execution: a prepared statement may be bound twice, and binding this one listens.
    conn.execute_batch(&sql).map_err(|e| format!("{AUTOLISTEN}={addr} {AUTOLISTEN_OPTIONS}={options}: {e}"))?;
    Ok(())
}

fn varchar() -> LogicalTypeHandle {
    LogicalTypeId::Varchar.into()
}

struct Version;

impl VScalar for Version {
    type State = ();

    fn invoke(_: &(), input: &mut DataChunkHandle, output: &mut dyn WritableVector) -> Result<()> {
        let text = version_text();
        let out = output.flat_vector();
        for row in 0..input.len() {
            out.insert(row, text.as_str());
        }
        Ok(())
    }

    fn signatures() -> Vec<ScalarFunctionSignature> {
        vec![ScalarFunctionSignature::exact(vec![], varchar())]
    }
}

struct ListenScalar;

impl VScalar for ListenScalar {
    type State = Arc<Host>;

    fn invoke(host: &Arc<Host>, input: &mut DataChunkHandle, output: &mut dyn WritableVector) -> Result<()> {
        host.admit_admin("arrowport_listen")?;
        let mut out = output.flat_vector();
        for row in 0..input.len() {
            match vector::varchar_arg(input, 0, row) {
                None => out.set_null(row),
                Some(addr) => {
                    let bound = host.listen(&addr, &ListenOptions::default())?;
                    let first = bound.first().map(|(_, a)| a.clone()).unwrap_or_default();
                    out.insert(row, first.as_str());
                }
            }
        }
        Ok(())
    }

    fn signatures() -> Vec<ScalarFunctionSignature> {
        vec![ScalarFunctionSignature::exact(vec![varchar()], varchar())]
    }

    fn volatile() -> bool {
        true
    }
}

struct Stop;

impl VScalar for Stop {
    type State = Arc<Host>;

    fn invoke(host: &Arc<Host>, input: &mut DataChunkHandle, output: &mut dyn WritableVector) -> Result<()> {
        host.admit_admin("arrowport_stop")?;
        let mut out = output.flat_vector();
        for row in 0..input.len() {
            let stopped = host.stop();
            vector::set_bigint(&mut out, row, stopped as i64);
        }
        Ok(())
    }

    fn signatures() -> Vec<ScalarFunctionSignature> {
        vec![ScalarFunctionSignature::exact(vec![], LogicalTypeId::Bigint.into())]
    }

    fn volatile() -> bool {
        true
    }
}

/// `arrowport_listen(address)` and `arrowport_stop()` as scalar functions with a bind step (see
/// `duck::caller`): refused at bind on arrowport's own connections, served at once on the host's.
fn register_admin_scalars(registrar: &mut duck::conn::RawConn, host: &Arc<Host>) -> Result<()> {
    use duck::caller::{ScalarOut, ScalarSpec, register_scalar};
    const VERIFIED: u8 = 1;
    let bind_for = |host: &Arc<Host>, function: &'static str| {
        let host = Arc::clone(host);
        Box::new(move |caller: Option<u64>| {
            host.admin_call(function, caller).map(|c| if c.is_verified() { VERIFIED } else { 0 })
        })
    };
    let h = Arc::clone(host);
    register_scalar(
        registrar,
        ScalarSpec {
            name: "arrowport_listen",
            varchar_arg: true,
            returns_bigint: false,
            bind: bind_for(host, "arrowport_listen"),
            call: Box::new(move |tag, addr| {
                if tag != VERIFIED {
                    h.admit_admin("arrowport_listen")?;
                }
                let bound =
                    h.listen(&addr.unwrap_or_default(), &ListenOptions::default()).map_err(|e| e.to_string())?;
                Ok(ScalarOut::Text(bound.first().map(|(_, a)| a.clone()).unwrap_or_default()))
            }),
        },
    )?;
    let h = Arc::clone(host);
    register_scalar(
        registrar,
        ScalarSpec {
            name: "arrowport_stop",
            varchar_arg: false,
            returns_bigint: true,
            bind: bind_for(host, "arrowport_stop"),
            call: Box::new(move |tag, _| {
                if tag != VERIFIED {
                    h.admit_admin("arrowport_stop")?;
                }
                Ok(ScalarOut::BigInt(h.stop() as i64))
            }),
        },
    )?;
    Ok(())
}

fn host_of(bind: &BindInfo) -> Result<&Arc<Host>> {
    vector::bind_extra::<Arc<Host>>(bind).ok_or_else(|| "arrowport is not initialised for this database".into())
}

/// Rows computed at bind time, emitted once.
pub struct Rows<T> {
    rows: Vec<T>,
}

/// How far a table function has emitted its rows.
pub struct Cursor {
    next: AtomicUsize,
}

fn init_cursor(_: &InitInfo) -> Result<Cursor> {
    Ok(Cursor { next: AtomicUsize::new(0) })
}

/// Rows per output chunk (DuckDB's vector size).
const CHUNK_ROWS: usize = 2048;

/// Emits the next chunk of a table function's rows, one `write_row(output, index_in_chunk, row)` each.
fn emit<V, T>(
    func: &TableFunctionInfo<V>,
    output: &mut DataChunkHandle,
    write_row: impl Fn(&mut DataChunkHandle, usize, &T),
) -> Result<()>
where
    V: VTab<InitData = Cursor, BindData = Rows<T>>,
{
    emit_chunk(&func.get_bind_data().rows, &func.get_init_data().next, output, write_row)
}

/// Writes the next chunk of `rows` (from `next`, which it advances) into `output`.
fn emit_chunk<T>(
    rows: &[T],
    next: &AtomicUsize,
    output: &mut DataChunkHandle,
    write_row: impl Fn(&mut DataChunkHandle, usize, &T),
) -> Result<()> {
    let start = next.fetch_add(CHUNK_ROWS, Ordering::Relaxed).min(rows.len());
    let chunk = &rows[start..(start + CHUNK_ROWS).min(rows.len())];
    for (i, row) in chunk.iter().enumerate() {
        write_row(output, i, row);
    }
    output.set_len(chunk.len());
    Ok(())
}

/// Who calls an administrative table function, decided when it is bound (see [`AdminCall`]).
fn admin_call(host: &Arc<Host>, bind: &BindInfo, function: &'static str) -> Result<AdminCall> {
    Ok(host.admin_call(function, crate::duck::caller::table_caller(bind))?)
}

/// What an administrative table function does, with its arguments already read (at bind): it runs at init,
/// once per execution, never at bind. DuckDB may bind a statement more than once (Python's relational API binds
/// `con.sql(...)`, then binds again to run it), so an action taken at bind could happen twice.
pub struct Action<T> {
    run: Box<dyn Fn() -> std::result::Result<Vec<T>, String> + Send + Sync>,
}

impl<T> Action<T> {
    fn new(run: impl Fn() -> std::result::Result<Vec<T>, String> + Send + Sync + 'static) -> Action<T> {
        Action { run: Box::new(run) }
    }
}

/// An action's rows, from its init, and how far they have been emitted.
pub struct Emitted<T> {
    rows: Vec<T>,
    next: AtomicUsize,
}

fn init_action<T>(init: &InitInfo) -> Result<Emitted<T>> {
    let action = vector::init_bind_data::<Action<T>>(init).ok_or("arrowport: the function was not bound")?;
    Ok(Emitted { rows: (action.run)()?, next: AtomicUsize::new(0) })
}

/// Emits the next chunk of an action's rows.
fn emit_action<V, T>(
    func: &TableFunctionInfo<V>,
    output: &mut DataChunkHandle,
    write_row: impl Fn(&mut DataChunkHandle, usize, &T),
) -> Result<()>
where
    V: VTab<InitData = Emitted<T>, BindData = Action<T>>,
{
    let emitted = func.get_init_data();
    emit_chunk(&emitted.rows, &emitted.next, output, write_row)
}

struct ListenTable;

impl VTab for ListenTable {
    type InitData = Emitted<(String, String)>;
    type BindData = Action<(String, String)>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        bind.add_result_column("protocol", varchar());
        bind.add_result_column("address", varchar());
        let host = Arc::clone(host_of(bind)?);
        let addr = bind.get_parameter(0).to_string();
        let mut options = ListenOptions::default();
        if let Some(n) = positive(bind, "max_message_bytes")? {
            options.max_message_bytes = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_body_bytes")? {
            options.max_body_bytes = n;
        }
        if let Some(v) = bind.get_named_parameter("rest")
            && !v.is_null()
        {
            options.rest = Some(v.to_string());
        }
        if let Some(v) = bind.get_named_parameter("unknown_streams") {
            options.reject_unknown = match v.to_string().trim().to_ascii_lowercase().as_str() {
                "accept" => false,
                "reject" => true,
                other => {
                    return Err(format!(
                        "invalid value for option unknown_streams: {other:?} (allowed: accept, reject)"
                    )
                    .into());
                }
            };
        }
        let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
        let open =
            bind.get_named_parameter("allow_unauthenticated").filter(|v| !v.is_null()).is_some_and(|v| v.to_bool());
        options.auth = AuthMode::from_options(text("auth").as_deref(), open)?;
        if let Some(a) = text("sql") {
            options.sql = Access::parse(&a)?;
        }
        options.tls_cert = text("tls_cert");
        options.tls_key = text("tls_key");
        if let Some(n) = positive(bind, "memory_budget")? {
            options.memory_budget = Some(usize::try_from(n)?);
        }
        if let Some(n) = positive(bind, "sql_memory_limit")? {
            options.sql_memory_limit = Some(n);
        }
        if let Some(n) = positive(bind, "max_concurrent_requests")? {
            options.max_concurrent_requests = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_connections")? {
            options.max_connections = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_sql_bytes")? {
            options.max_sql_bytes = usize::try_from(n)?;
        }
        if let Some(d) = seconds(bind, "statement_timeout", A_DAY, false)? {
            options.statement_timeout = d;
        }
        if let Some(n) = positive(bind, "max_columns")? {
            options.max_columns = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_schema_bytes")? {
            options.max_schema_bytes = usize::try_from(n)?;
        }
        if let Some(d) = seconds(bind, "idempotency_window", A_YEAR, false)? {
            options.idempotency_window = d;
        }
        if let Some(n) = count(bind, "commit_retries")? {
            options.commit_retries = n;
        }
        options.allowed_hosts = text_list(bind, "allowed_hosts")?;
        options.allowed_origins = text_list(bind, "allowed_origins")?;
        if let Some(d) = seconds(bind, "stall_timeout", A_DAY, false)? {
            options.stall_timeout = d;
        }
        let call = admin_call(&host, bind, "arrowport_listen")?;
        Ok(Action::new(move || {
            call.admit(&host)?;
            host.listen(&addr, &options).map_err(|e| e.to_string())
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, (p, a)| {
            out.flat_vector(0).insert(i, p.as_str());
            out.flat_vector(1).insert(i, a.as_str());
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("max_message_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("max_body_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("rest".to_string(), varchar()),
            ("unknown_streams".to_string(), varchar()),
            ("auth".to_string(), varchar()),
            ("allow_unauthenticated".to_string(), LogicalTypeId::Boolean.into()),
            ("tls_cert".to_string(), varchar()),
            ("tls_key".to_string(), varchar()),
            ("max_concurrent_requests".to_string(), LogicalTypeId::Bigint.into()),
            ("max_connections".to_string(), LogicalTypeId::Bigint.into()),
            ("max_columns".to_string(), LogicalTypeId::Bigint.into()),
            ("max_sql_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("max_schema_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("stall_timeout".to_string(), LogicalTypeId::Double.into()),
            ("statement_timeout".to_string(), LogicalTypeId::Double.into()),
            ("sql".to_string(), varchar()),
            ("allowed_hosts".to_string(), LogicalTypeHandle::list(&varchar())),
            ("memory_budget".to_string(), LogicalTypeId::Bigint.into()),
            ("sql_memory_limit".to_string(), LogicalTypeId::Bigint.into()),
            ("idempotency_window".to_string(), LogicalTypeId::Double.into()),
            ("allowed_origins".to_string(), LogicalTypeHandle::list(&varchar())),
            ("commit_retries".to_string(), LogicalTypeId::Bigint.into()),
        ])
    }
}

/// A named `VARCHAR[]` option: its texts (none when left out or NULL); NULL or empty items are refused.
fn text_list(bind: &BindInfo, name: &str) -> Result<Vec<String>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let items = v.to_list().ok_or_else(|| format!("{name} must be a list of texts, e.g. {name} := ['...']"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let text = if item.is_null() { String::new() } else { item.to_string() };
        if text.trim().is_empty() {
            return Err(format!("invalid value for option {name}: an item is NULL or empty").into());
        }
        out.push(text);
    }
    Ok(out)
}

/// Upper bounds of options in seconds, and how their errors say them.
const A_DAY: (f64, &str) = (86_400.0, "86400");
const A_YEAR: (f64, &str) = (366.0 * 86_400.0, "a year");

/// A named DOUBLE option in seconds (`None` when left out or NULL): more than 0 (or 0 too, `zero_ok`) and at most
/// `max`.
fn seconds(
    bind: &BindInfo,
    name: &str,
    (max, max_text): (f64, &str),
    zero_ok: bool,
) -> Result<Option<std::time::Duration>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(None) };
    let secs = v.to_double();
    let low_ok = if zero_ok { secs >= 0.0 } else { secs > 0.0 };
    if !(low_ok && secs <= max) {
        let low = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(format!("invalid value for option {name}: {secs} (seconds, {low} and at most {max_text})").into());
    }
    Ok(Some(std::time::Duration::from_secs_f64(secs)))
}

/// A named BIGINT option counting retries (`None` when left out or NULL): 0 to 100.
fn count(bind: &BindInfo, name: &str) -> Result<Option<u32>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(None) };
    let n = v.to_int64();
    if !(0..=100).contains(&n) {
        return Err(format!("invalid value for option {name}: {n} (0 to 100)").into());
    }
    Ok(Some(n as u32))
}

/// A named BIGINT option that must be positive when given.
fn positive(bind: &BindInfo, name: &str) -> Result<Option<u64>> {
    let Some(v) = bind.get_named_parameter(name) else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    let n = v.to_int64();
    if n <= 0 {
        return Err(format!("invalid value for option {name}: {n} (must be positive)").into());
    }
    Ok(Some(n as u64))
}

struct Status;

impl VTab for Status {
    type InitData = Cursor;
    type BindData = Rows<StatusRow>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        bind.add_result_column("protocol", varchar());
        bind.add_result_column("address", varchar());
        bind.add_result_column("uptime_seconds", LogicalTypeId::Double.into());
        bind.add_result_column("requests_in_flight", LogicalTypeId::Bigint.into());
        bind.add_result_column("tls", LogicalTypeId::Boolean.into());
        bind.add_result_column("auth", varchar());
        let host = host_of(bind)?;
        host.refuse_own_connection("arrowport_status", crate::duck::caller::table_caller(bind))?;
        Ok(Rows { rows: host.status() })
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_cursor(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit(func, output, |out, i, r: &StatusRow| {
            out.flat_vector(0).insert(i, r.protocol);
            out.flat_vector(1).insert(i, r.address.as_str());
            vector::set_double(&mut out.flat_vector(2), i, r.uptime_seconds);
            vector::set_bigint(&mut out.flat_vector(3), i, r.requests_in_flight);
            vector::set_bool(&mut out.flat_vector(4), i, r.tls);
            out.flat_vector(5).insert(i, r.auth);
        })
    }
}

struct MetricsTable;

/// Columns of `arrowport_metrics()`, in order.
const METRIC_COLUMNS: [(&str, LogicalTypeId); 16] = [
    ("stream", LogicalTypeId::Varchar),
    ("protocol", LogicalTypeId::Varchar),
    ("requests_ok", LogicalTypeId::Bigint),
    ("requests_failed", LogicalTypeId::Bigint),
    ("rows_committed", LogicalTypeId::Bigint),
    ("batches", LogicalTypeId::Bigint),
    ("wire_bytes", LogicalTypeId::Bigint),
    ("decoded_bytes", LogicalTypeId::Bigint),
    ("rows_rolled_back", LogicalTypeId::Bigint),
    ("last_commit", LogicalTypeId::TimestampTZ),
    ("last_error", LogicalTypeId::Varchar),
    ("last_error_at", LogicalTypeId::TimestampTZ),
    ("latency_p50_ms", LogicalTypeId::Double),
    ("latency_p95_ms", LogicalTypeId::Double),
    ("latency_p99_ms", LogicalTypeId::Double),
    ("write_seconds", LogicalTypeId::Double),
];

impl VTab for MetricsTable {
    type InitData = Cursor;
    type BindData = Rows<metrics::Row>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        for (name, ty) in METRIC_COLUMNS {
            bind.add_result_column(name, ty.into());
        }
        let host = host_of(bind)?;
        host.refuse_own_connection("arrowport_metrics", crate::duck::caller::table_caller(bind))?;
        Ok(Rows { rows: host.metrics().rows() })
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_cursor(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit(func, output, |out, i, r: &metrics::Row| {
            let mut cols: Vec<_> = (0..METRIC_COLUMNS.len()).map(|c| out.flat_vector(c)).collect();
            cols[0].insert(i, r.stream.as_str());
            cols[1].insert(i, r.protocol.as_str());
            let counts = [
                r.requests_ok,
                r.requests_failed,
                r.rows,
                r.batches,
                r.wire_bytes,
                r.decoded_bytes,
                r.rows_rolled_back,
            ];
            for (j, v) in counts.into_iter().enumerate() {
                vector::set_bigint(&mut cols[2 + j], i, v as i64);
            }
            match r.last_commit_us {
                Some(us) => vector::set_bigint(&mut cols[9], i, us),
                None => cols[9].set_null(i),
            }
            match &r.last_error {
                Some(e) => cols[10].insert(i, e.as_str()),
                None => cols[10].set_null(i),
            }
            match r.last_error_us {
                Some(us) => vector::set_bigint(&mut cols[11], i, us),
                None => cols[11].set_null(i),
            }
            for (j, q) in [r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms].into_iter().enumerate() {
                match q {
                    Some(v) => vector::set_double(&mut cols[12 + j], i, v),
                    None => cols[12 + j].set_null(i),
                }
            }
            vector::set_double(&mut cols[15], i, r.write_seconds);
        })
    }
}

/// The columns a mapping is shown with.
fn mapping_columns(bind: &BindInfo) {
    bind.add_result_column("stream", varchar());
    bind.add_result_column("target", varchar());
    bind.add_result_column("create_table", LogicalTypeId::Boolean.into());
    bind.add_result_column("schema_policy", varchar());
    bind.add_result_column("mode", varchar());
}

fn write_mapping(out: &mut DataChunkHandle, i: usize, m: &Mapping) {
    out.flat_vector(0).insert(i, m.stream.as_str());
    out.flat_vector(1).insert(i, m.target.display().as_str());
    vector::set_bool(&mut out.flat_vector(2), i, m.create_table);
    out.flat_vector(3).insert(i, m.policy.name());
    out.flat_vector(4).insert(i, m.mode.name());
}

fn mapping_options(bind: &BindInfo) -> MappingOptions {
    let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
    MappingOptions {
        target: text("target"),
        create_table: bind.get_named_parameter("create_table").filter(|v| !v.is_null()).map(|v| v.to_bool()),
        schema_policy: text("schema_policy"),
        mode: text("mode"),
    }
}

fn mapping_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
    Some(vec![
        ("target".to_string(), varchar()),
        ("create_table".to_string(), LogicalTypeId::Boolean.into()),
        ("schema_policy".to_string(), varchar()),
        ("mode".to_string(), varchar()),
    ])
}

fn stream_name(bind: &BindInfo) -> Result<String> {
    let v = bind.get_parameter(0);
    if v.is_null() {
        return Err("the stream name is NULL".into());
    }
    Ok(v.to_string())
}

/// A table function that shows mappings: `$args` reads its arguments at bind, `$act` runs at init (see
/// [`Action`]).
macro_rules! mapping_function {
    ($name:ident, $admin:expr, $params:expr, $named:expr, |$bind:ident| $args:expr, |$host:ident, $a:pat_param| $act:expr) => {
        struct $name;

        impl VTab for $name {
            type InitData = Emitted<Mapping>;
            type BindData = Action<Mapping>;

            fn bind($bind: &BindInfo) -> Result<Self::BindData> {
                mapping_columns($bind);
                let $host = Arc::clone(host_of($bind)?);
                let admin: Option<&'static str> = $admin;
                let call = admin.map(|f| admin_call(&$host, $bind, f)).transpose()?;
                let args = $args;
                Ok(Action::new(move || {
                    if let Some(call) = &call {
                        call.admit(&$host)?;
                    }
                    let $a = &args;
                    $act
                }))
            }

            fn init(init: &InitInfo) -> Result<Self::InitData> {
                init_action(init)
            }

            fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
                emit_action(func, output, write_mapping)
            }

            fn parameters() -> Option<Vec<LogicalTypeHandle>> {
                $params
            }

            fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
                $named
            }
        }
    };
}

mapping_function!(
    CreateStream,
    Some("arrowport_create_stream"),
    Some(vec![varchar()]),
    mapping_parameters(),
    |bind| (stream_name(bind)?, mapping_options(bind)),
    |host, (name, options)| host.create_stream(name, options).map(|m| vec![m])
);
mapping_function!(
    AlterStream,
    Some("arrowport_alter_stream"),
    Some(vec![varchar()]),
    mapping_parameters(),
    |bind| (stream_name(bind)?, mapping_options(bind)),
    |host, (name, options)| host.alter_stream(name, options).map(|m| vec![m])
);
mapping_function!(
    DropStream,
    Some("arrowport_drop_stream"),
    Some(vec![varchar()]),
    None,
    |bind| stream_name(bind)?,
    |host, name| host.drop_stream(name).map(|m| vec![m])
);
mapping_function!(
    Streams,
    None,
    None,
    None,
    |bind| host_of(bind)?.refuse_own_connection("arrowport_streams", crate::duck::caller::table_caller(bind))?,
    |host, _| host.streams()
);

/// A token as the SQL functions show it; `secret` only from `arrowport_create_token`.
pub struct TokenRow {
    record: TokenRecord,
    secret: Option<String>,
}

fn token_columns(bind: &BindInfo, with_secret: bool) {
    bind.add_result_column("name", varchar());
    if with_secret {
        bind.add_result_column("token", varchar());
    }
    bind.add_result_column("streams", LogicalTypeHandle::list(&varchar()));
    bind.add_result_column("created_at", LogicalTypeId::TimestampTZ.into());
    bind.add_result_column("last_used_at", LogicalTypeId::TimestampTZ.into());
}

/// Writes one token row; `streams` is NULL for a token that may use every stream.
fn write_token(out: &mut DataChunkHandle, i: usize, row: &TokenRow) {
    let mut col = 0;
    out.flat_vector(col).insert(i, row.record.name.as_str());
    col += 1;
    if let Some(secret) = &row.secret {
        out.flat_vector(col).insert(i, secret.as_str());
        col += 1;
    }
    let mut list = out.list_vector(col);
    match &row.record.scope {
        Scope::All => list.set_null(i),
        Scope::Streams(names) => {
            let offset = list.len();
            let child = list.child(offset + names.len());
            for (j, n) in names.iter().enumerate() {
                child.insert(offset + j, n.as_str());
            }
            list.set_entry(i, offset, names.len());
            list.set_len(offset + names.len());
        }
    }
    vector::set_bigint(&mut out.flat_vector(col + 1), i, row.record.created_us);
    match row.record.last_used_us {
        Some(us) => vector::set_bigint(&mut out.flat_vector(col + 2), i, us),
        None => out.flat_vector(col + 2).set_null(i),
    }
}

fn token_name(bind: &BindInfo) -> Result<String> {
    let v = bind.get_parameter(0);
    if v.is_null() {
        return Err("the token name is NULL".into());
    }
    Ok(v.to_string())
}

/// `streams := [...]`: the streams a token is limited to; left out (or NULL), every stream.
fn token_scope(bind: &BindInfo) -> Result<Scope> {
    let Some(v) = bind.get_named_parameter("streams").filter(|v| !v.is_null()) else { return Ok(Scope::All) };
    let items = v.to_list().ok_or("streams must be a list of stream names, e.g. streams := ['events']")?;
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        if item.is_null() {
            return Err("streams must not contain NULL".into());
        }
        let name = item.to_string();
        registry::validate_stream_name(&name)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Scope::Streams(names))
}

/// A table function over tokens: `$args` reads its arguments at bind, `$act` runs at init (see [`Action`]),
/// after the administrative gate.
macro_rules! token_function {
    ($name:ident, $sql_name:literal, $secret:expr, $params:expr, $named:expr, |$bind:ident| $args:expr, |$host:ident, $a:pat_param| $act:expr) => {
        struct $name;

        impl VTab for $name {
            type InitData = Emitted<TokenRow>;
            type BindData = Action<TokenRow>;

            fn bind($bind: &BindInfo) -> Result<Self::BindData> {
                token_columns($bind, $secret);
                let $host = Arc::clone(host_of($bind)?);
                let call = admin_call(&$host, $bind, $sql_name)?;
                let args = $args;
                Ok(Action::new(move || {
                    call.admit(&$host)?;
                    let $a = &args;
                    $act
                }))
            }

            fn init(init: &InitInfo) -> Result<Self::InitData> {
                init_action(init)
            }

            fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
                emit_action(func, output, write_token)
            }

            fn parameters() -> Option<Vec<LogicalTypeHandle>> {
                $params
            }

            fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
                $named
            }
        }
    };
}

token_function!(
    CreateToken,
    "arrowport_create_token",
    true,
    Some(vec![varchar()]),
    Some(vec![("streams".to_string(), LogicalTypeHandle::list(&varchar())), ("secret".to_string(), varchar())]),
    |bind| (
        token_name(bind)?,
        token_scope(bind)?,
        bind.get_named_parameter("secret").filter(|v| !v.is_null()).map(|v| v.to_string())
    ),
    |host, (name, scope, secret)| {
        let (record, secret) = host.create_token(name, scope.clone(), secret.as_deref())?;
        Ok(vec![TokenRow { record, secret: Some(secret) }])
    }
);
token_function!(
    RevokeToken,
    "arrowport_revoke_token",
    false,
    Some(vec![varchar()]),
    None,
    |bind| token_name(bind)?,
    |host, name| Ok(vec![TokenRow { record: host.revoke_token(name)?, secret: None }])
);
token_function!(TokensTable, "arrowport_tokens", false, None, None, |bind| (), |host, _| {
    Ok(host.tokens()?.into_iter().map(|record| TokenRow { record, secret: None }).collect())
});

/// `FROM arrowport_send(url, stream, query := '...', token, compression, batch_rows, idempotency_key, tls_ca,
/// timeout, retries)`: runs the query on this database and sends its result to `stream` at `url` as one
/// request; one row, the remote's acknowledgement. Refused in a statement sent over the network (it would let a
/// client reach any address from the host).
struct SendTable;

/// What `arrowport_send` returns: the acknowledgement and the key it was sent under.
pub struct SendRow {
    sent: Sent,
    key: String,
}

impl VTab for SendTable {
    type InitData = Emitted<SendRow>;
    type BindData = Action<SendRow>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        crate::engine::policy::refuse_if_remote("arrowport_send")?;
        for (name, kind) in [
            ("stream", LogicalTypeId::Varchar),
            ("table", LogicalTypeId::Varchar),
            ("rows", LogicalTypeId::Bigint),
            ("batches", LogicalTypeId::Bigint),
            ("bytes", LogicalTypeId::Bigint),
            ("replayed", LogicalTypeId::Boolean),
            ("idempotency_key", LogicalTypeId::Varchar),
            ("retries", LogicalTypeId::Bigint),
            ("elapsed_seconds", LogicalTypeId::Double),
        ] {
            bind.add_result_column(name, kind.into());
        }
        let host = Arc::clone(host_of(bind)?);
        host.refuse_own_connection("arrowport_send", crate::duck::caller::table_caller(bind))?;
        let arg = |i: u64, what: &str| -> Result<String> {
            let v = bind.get_parameter(i);
            if v.is_null() { Err(format!("arrowport_send: the {what} is NULL").into()) } else { Ok(v.to_string()) }
        };
        let target = Target::parse(&arg(0, "url")?)?;
        let stream = arg(1, "stream")?;
        registry::validate_stream_name(&stream)?;
        let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
        let query = text("query")
            .filter(|q| !q.trim().is_empty())
            .ok_or("arrowport_send needs query := 'SELECT ...': the rows to send")?;
        let mut options = SendOptions {
            token: text("token"),
            compression: Compression::parse(&text("compression").unwrap_or_default())?,
            batch_rows: send::DEFAULT_BATCH_ROWS,
            idempotency_key: text("idempotency_key").unwrap_or_default(),
            tls_ca: text("tls_ca"),
            timeout: send::DEFAULT_TIMEOUT,
            retries: send::DEFAULT_RETRIES,
        };
        if let Some(n) = positive(bind, "batch_rows")? {
            options.batch_rows = usize::try_from(n.min(1 << 24))?;
        }
        if let Some(d) = seconds(bind, "timeout", A_DAY, false)? {
            options.timeout = d;
        }
        if let Some(n) = count(bind, "retries")? {
            options.retries = n;
        }
        if !options.idempotency_key.is_empty() {
            // The receiver's own rule for keys.
            validate_key(&options.idempotency_key)
                .map_err(|e| format!("invalid value for option idempotency_key: {e}"))?;
        }
        Ok(Action::new(move || {
            crate::engine::policy::refuse_if_remote("arrowport_send")?;
            let mut options = options.clone();
            if options.idempotency_key.is_empty() {
                // One key per call, kept across its retries.
                options.idempotency_key = send::new_key()?;
            }
            let sent = host.send(&target, &stream, &query, &options)?;
            Ok(vec![SendRow { sent, key: options.idempotency_key }])
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, r: &SendRow| {
            let ack = &r.sent.ack;
            out.flat_vector(0).insert(i, ack.stream.as_str());
            match &ack.table {
                Some(t) => out.flat_vector(1).insert(i, t.as_str()),
                None => out.flat_vector(1).set_null(i),
            }
            vector::set_bigint(&mut out.flat_vector(2), i, ack.rows as i64);
            vector::set_bigint(&mut out.flat_vector(3), i, ack.batches as i64);
            vector::set_bigint(&mut out.flat_vector(4), i, ack.bytes as i64);
            vector::set_bool(&mut out.flat_vector(5), i, ack.replayed);
            out.flat_vector(6).insert(i, r.key.as_str());
            vector::set_bigint(&mut out.flat_vector(7), i, i64::from(r.sent.retries));
            vector::set_double(&mut out.flat_vector(8), i, r.sent.elapsed.as_secs_f64());
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar(), varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("query".to_string(), varchar()),
            ("token".to_string(), varchar()),
            ("compression".to_string(), varchar()),
            ("batch_rows".to_string(), LogicalTypeId::Bigint.into()),
            ("idempotency_key".to_string(), varchar()),
            ("tls_ca".to_string(), varchar()),
            ("timeout".to_string(), LogicalTypeId::Double.into()),
            ("retries".to_string(), LogicalTypeId::Bigint.into()),
        ])
    }
}

/// `FROM arrowport_maintain(catalog, every := seconds, older_than := seconds)`: compacts a DuckLake catalog now
/// (flush inlined rows, merge small files, expire snapshots and delete their files), and with `every` from then on
/// at that interval until `arrowport_stop()`. One row per step. Refused in a statement sent over the network.
struct Maintain;

impl VTab for Maintain {
    type InitData = Emitted<Maintained>;
    type BindData = Action<Maintained>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        crate::engine::policy::refuse_if_remote("arrowport_maintain")?;
        bind.add_result_column("step", varchar());
        bind.add_result_column("rows", LogicalTypeId::Bigint.into());
        bind.add_result_column("seconds", LogicalTypeId::Double.into());
        let host = Arc::clone(host_of(bind)?);
        host.refuse_own_connection("arrowport_maintain", crate::duck::caller::table_caller(bind))?;
        let v = bind.get_parameter(0);
        if v.is_null() {
            return Err("arrowport_maintain: the catalog is NULL".into());
        }
        let catalog = v.to_string();
        let every = seconds(bind, "every", A_YEAR, true)?;
        let older_than = seconds(bind, "older_than", A_YEAR, true)?.unwrap_or(std::time::Duration::from_secs(3600));
        Ok(Action::new(move || {
            crate::engine::policy::refuse_if_remote("arrowport_maintain")?;
            host.maintain(&catalog, older_than, every)
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, m: &Maintained| {
            out.flat_vector(0).insert(i, m.step);
            vector::set_bigint(&mut out.flat_vector(1), i, m.rows as i64);
            vector::set_double(&mut out.flat_vector(2), i, m.seconds);
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("every".to_string(), LogicalTypeId::Double.into()),
            ("older_than".to_string(), LogicalTypeId::Double.into()),
        ])
    }
}
