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
//! - `FROM arrowport_follow(url, stream, after := ..., ...)`: a remote followable stream's rows past a cursor.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use duckdb::Connection;
use duckdb::core::{DataChunkHandle, Inserter, LogicalTypeHandle, LogicalTypeId};
use duckdb::vscalar::{ScalarFunctionSignature, VScalar};
use duckdb::vtab::arrow::WritableVector;
use duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab};

use crate::catalog::access::{Scope, TokenAccess, TokenRecord};
use crate::catalog::registry::{self, Mapping, MappingOptions};
use crate::catalog::schema::quote_literal;
use crate::duck::{self, vector};
use crate::engine::metrics;
use crate::engine::policy::Access;
use crate::engine::session::{Maintained, validate_key};
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
    conn.register_table_function_with_extra_info::<Followers, Arc<Host>>("arrowport_followers", &host)?;
    conn.register_table_function_with_extra_info::<CreateToken, Arc<Host>>("arrowport_create_token", &host)?;
    conn.register_table_function_with_extra_info::<RevokeToken, Arc<Host>>("arrowport_revoke_token", &host)?;
    conn.register_table_function_with_extra_info::<TokensTable, Arc<Host>>("arrowport_tokens", &host)?;
    conn.register_table_function_with_extra_info::<SendTable, Arc<Host>>("arrowport_send", &host)?;
    conn.register_table_function_with_extra_info::<FollowTable, Arc<Host>>("arrowport_follow", &host)?;
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

/// A client function's two arguments: the remote's url and the stream's name, checked.
fn url_and_stream(bind: &BindInfo, function: &str) -> Result<(Target, String)> {
    let arg = |i: u64, what: &str| -> Result<String> {
        let v = bind.get_parameter(i);
        if v.is_null() { Err(format!("{function}: the {what} is NULL").into()) } else { Ok(v.to_string()) }
    };
    let target = Target::parse(&arg(0, "url")?)?;
    let stream = arg(1, "stream")?;
    registry::validate_stream_name(&stream)?;
    Ok((target, stream))
}

/// Upper bounds of options in seconds, and how their errors say them.
const A_DAY: (f64, &str) = (86_400.0, "86400");
const A_YEAR: (f64, &str) = (366.0 * 86_400.0, "a year");

/// A named DOUBLE option in seconds (`None` when left out or NULL): more than 0 (or 0 too, `zero_ok`) and at most
/// `max`.
fn seconds(bind: &BindInfo, name: &str, max: (f64, &str), zero_ok: bool) -> Result<Option<std::time::Duration>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(None) };
    Ok(Some(checked_seconds(name, v.to_double(), max, zero_ok)?))
}

/// A duration option's value in seconds, checked: more than 0 (or 0 too) and at most `max`.
fn checked_seconds(name: &str, secs: f64, (max, max_text): (f64, &str), zero_ok: bool) -> Result<std::time::Duration> {
    let low_ok = if zero_ok { secs >= 0.0 } else { secs > 0.0 };
    if !(low_ok && secs <= max) {
        let low = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(format!("invalid value for option {name}: {secs} (seconds, {low} and at most {max_text})").into());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A named BIGINT option counting retries (`None` when left out or NULL): 0 to 100.
fn count(bind: &BindInfo, name: &str) -> Result<Option<u32>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(None) };
    Ok(Some(checked_count(name, v.to_int64())?))
}

fn checked_count(name: &str, n: i64) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= 100)
        .ok_or_else(|| format!("invalid value for option {name}: {n} (0 to 100)").into())
}

/// A named BIGINT option that must be positive when given.
fn positive(bind: &BindInfo, name: &str) -> Result<Option<u64>> {
    let Some(v) = bind.get_named_parameter(name).filter(|v| !v.is_null()) else { return Ok(None) };
    Ok(Some(checked_positive(name, v.to_int64())?))
}

fn checked_positive(name: &str, n: i64) -> Result<u64> {
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid value for option {name}: {n} (must be positive)").into())
}

/// A table function whose rows an action makes (see [`Action`]): at bind `$columns` declares the columns,
/// `$admin` names the function for the administrative check (`None`: not administrative; `$args` may refuse the
/// caller itself) and `$args` reads the arguments; at init, after the check, `$act` makes the rows, and `$write`
/// writes each one.
macro_rules! action_function {
    (
        $name:ident,
        $row:ty,
        $admin:expr,
        $params:expr,
        $named:expr,
        $columns:expr,
        $write:expr,
        |$bind:ident| $args:expr,
        |$host:ident, $a:pat_param| $act:expr
    ) => {
        pub(super) struct $name;

        impl VTab for $name {
            type InitData = Emitted<$row>;
            type BindData = Action<$row>;

            fn bind($bind: &BindInfo) -> Result<Self::BindData> {
                ($columns)($bind);
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
                emit_action(func, output, $write)
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

// After the macro above, which they use.
mod follow_table;
mod listen;
mod maintain;
mod metrics_table;
mod send_table;
mod streams;
mod tokens;

use follow_table::FollowTable;
use listen::{ListenScalar, ListenTable, Status, Stop, register_admin_scalars};
use maintain::Maintain;
use metrics_table::MetricsTable;
use send_table::SendTable;
use streams::{AlterStream, CreateStream, DropStream, Followers, Streams};
use tokens::{CreateToken, RevokeToken, TokensTable};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_with_messages_naming_them() {
        assert_eq!(
            checked_seconds("stall_timeout", 1.5, A_DAY, false).unwrap(),
            std::time::Duration::from_millis(1500)
        );
        let e = checked_seconds("stall_timeout", 0.0, A_DAY, false).unwrap_err().to_string();
        assert_eq!(e, "invalid value for option stall_timeout: 0 (seconds, more than 0 and at most 86400)");
        assert!(checked_seconds("every", 0.0, A_YEAR, true).is_ok());
        let e = checked_seconds("every", 1e9, A_YEAR, true).unwrap_err().to_string();
        assert!(e.ends_with("(seconds, 0 or more and at most a year)"), "{e}");
        assert!(checked_seconds("x", f64::NAN, A_DAY, true).is_err());
        assert_eq!(checked_count("retries", 100).unwrap(), 100);
        assert_eq!(
            checked_count("retries", 101).unwrap_err().to_string(),
            "invalid value for option retries: 101 (0 to 100)"
        );
        assert!(checked_count("retries", -1).is_err());
        assert_eq!(checked_positive("memory_budget", 7).unwrap(), 7);
        let e = checked_positive("memory_budget", 0).unwrap_err().to_string();
        assert_eq!(e, "invalid value for option memory_budget: 0 (must be positive)");
    }
}
