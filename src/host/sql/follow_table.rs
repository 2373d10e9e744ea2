//! `arrowport_follow(url, stream, after := ..., token, max_rows, wait, tls_ca, timeout)`: the rows of a remote
//! followable stream past a cursor, each with its `arrowport_cursor`, ending once the remote has caught up.

use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use duckdb::vtab::arrow::{record_batch_to_duckdb_data_chunk, to_duckdb_logical_type_for_field};

use super::*;
use crate::proto::send::{FollowOptions, Followed};

/// `FROM arrowport_follow(url, stream, after := cursor, ...)`. The call is made when the function is bound (the
/// remote's columns are its columns) and read as DuckDB asks for rows; a second execution of the same statement
/// follows again from `after`. Refused in a statement sent over the network (it would let a client reach any
/// address from the host).
pub(super) struct FollowTable;

/// The call's arguments, and the call bound with them until an execution takes it.
pub struct FollowBind {
    target: Target,
    stream: String,
    options: FollowOptions,
    schema: SchemaRef,
    opened: Mutex<Option<Followed>>,
}

/// An execution's call, and what is left of the batch being emitted.
pub struct FollowRead {
    followed: Mutex<(Followed, Option<(RecordBatch, usize)>)>,
}

/// Longest default wait for the remote.
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl VTab for FollowTable {
    type InitData = FollowRead;
    type BindData = FollowBind;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        crate::engine::policy::refuse_if_remote("arrowport_follow")?;
        let host = host_of(bind)?;
        host.refuse_own_connection("arrowport_follow", crate::duck::caller::table_caller(bind))?;
        let (target, stream) = url_and_stream(bind, "arrowport_follow")?;
        let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
        let after = text("after").unwrap_or_else(|| "start".to_string());
        let options = FollowOptions {
            token: text("token"),
            after: after.trim().to_string(),
            max_rows: positive(bind, "max_rows")?,
            wait: seconds(bind, "wait", (3600.0, "3600"), true)?.unwrap_or_default(),
            tls_ca: text("tls_ca"),
            timeout: seconds(bind, "timeout", A_DAY, false)?.unwrap_or(DEFAULT_TIMEOUT),
        };
        let followed = send::follow(&target, &stream, &options).map_err(|e| format!("arrowport_follow: {e}"))?;
        let schema = SchemaRef::clone(&followed.schema);
        for field in schema.fields() {
            let kind = to_duckdb_logical_type_for_field(field).map_err(|e| {
                format!(
                    "arrowport_follow: column {:?} of stream {stream:?} has a type DuckDB cannot take: {e}",
                    field.name()
                )
            })?;
            bind.add_result_column(field.name(), kind);
        }
        Ok(FollowBind { target, stream, options, schema, opened: Mutex::new(Some(followed)) })
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        let bound = vector::init_bind_data::<FollowBind>(init).ok_or("arrowport: the function was not bound")?;
        crate::engine::policy::refuse_if_remote("arrowport_follow")?;
        let taken = bound.opened.lock().map_err(|_| "arrowport_follow: poisoned")?.take();
        let followed = match taken {
            Some(f) => f,
            None => {
                let f = send::follow(&bound.target, &bound.stream, &bound.options)
                    .map_err(|e| format!("arrowport_follow: {e}"))?;
                if f.schema.fields() != bound.schema.fields() {
                    return Err(format!(
                        "arrowport_follow: the columns of stream {:?} changed since the statement was prepared; prepare it again",
                        bound.stream
                    )
                    .into());
                }
                f
            }
        };
        Ok(FollowRead { followed: Mutex::new((followed, None)) })
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        let read = func.get_init_data();
        let mut state = read.followed.lock().map_err(|_| "arrowport_follow: poisoned")?;
        let (followed, pending) = &mut *state;
        loop {
            if let Some((batch, at)) = pending.take() {
                let n = (batch.num_rows() - at).min(CHUNK_ROWS);
                let slice = batch.slice(at, n);
                if at + n < batch.num_rows() {
                    *pending = Some((batch, at + n));
                }
                record_batch_to_duckdb_data_chunk(&slice, output)
                    .map_err(|e| format!("arrowport_follow: a row DuckDB cannot take: {e}"))?;
                return Ok(());
            }
            match followed.next_batch().map_err(|e| format!("arrowport_follow: {e}"))? {
                Some(batch) if batch.num_rows() > 0 => *pending = Some((batch, 0)),
                Some(_) => {}
                None => {
                    output.set_len(0);
                    return Ok(());
                }
            }
        }
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar(), varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("after".to_string(), varchar()),
            ("token".to_string(), varchar()),
            ("max_rows".to_string(), LogicalTypeId::Bigint.into()),
            ("wait".to_string(), LogicalTypeId::Double.into()),
            ("tls_ca".to_string(), varchar()),
            ("timeout".to_string(), LogicalTypeId::Double.into()),
        ])
    }
}
