//! The query core, shared by every protocol that runs SQL (today: Flight SQL): statements in, Arrow out.
//!
//! A listener decides whether SQL is allowed at all (`policy::Access`, the `sql` listen option); this module
//! checks that decision and the principal (`policy::check_statement`), then runs the statement on a writer
//! connection through its [`Session`]. Results stream through a small bounded channel: a client that stops reading
//! fills it, the writer waits at most the listener's stall timeout, then abandons the statement and is free
//! again. Like `ingest`, this module runs no SQL itself and knows no protocol.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::access::Principal;
use crate::engine::core::Core;
use crate::engine::error::EngineError;
use crate::engine::policy::{Access, Policy, check_statement};
use crate::engine::session::{Catalog, Described, Maintained, Param, QueryItem, QueryOut, Session, Statement};
use crate::engine::writers::Work;

/// Batches buffered between a statement's result and the client.
const RESULT_DEPTH: usize = 4;

/// Rows per batch of a statement's result (at most; a batch is also cut at 8 MiB): with [`RESULT_DEPTH`], what a
/// result holds of the host's memory at once is bounded to a few tens of MiB whatever its size.
const QUERY_BATCH_ROWS: usize = 122_880;

/// Parameter rows from an Arrow batch: one row per execution, one column per parameter.
pub fn params_from_batch(batch: &RecordBatch) -> Result<Vec<Vec<Param>>, String> {
    let mut rows = vec![Vec::with_capacity(batch.num_columns()); batch.num_rows()];
    for (c, column) in batch.columns().iter().enumerate() {
        let name = batch.schema().field(c).name().clone();
        let values = column_params(column.as_ref()).map_err(|e| format!("parameter {name:?}: {e}"))?;
        for (row, v) in rows.iter_mut().zip(values) {
            row.push(v);
        }
    }
    Ok(rows)
}

fn column_params(column: &dyn Array) -> Result<Vec<Param>, String> {
    use arrow::datatypes::*;
    let n = column.len();
    let mut out = Vec::with_capacity(n);
    macro_rules! each {
        ($arr:expr, $conv:expr) => {{
            let a = $arr;
            for i in 0..n {
                out.push(if a.is_null(i) { Param::Null } else { $conv(a.value(i)) });
            }
        }};
    }
    match column.data_type() {
        DataType::Null => out.extend((0..n).map(|_| Param::Null)),
        DataType::Boolean => each!(column.as_boolean(), Param::Bool),
        DataType::Int8 => each!(column.as_primitive::<Int8Type>(), |v: i8| Param::Int(v.into())),
        DataType::Int16 => each!(column.as_primitive::<Int16Type>(), |v: i16| Param::Int(v.into())),
        DataType::Int32 => each!(column.as_primitive::<Int32Type>(), |v: i32| Param::Int(v.into())),
        DataType::Int64 => each!(column.as_primitive::<Int64Type>(), Param::Int),
        DataType::UInt8 => each!(column.as_primitive::<UInt8Type>(), |v: u8| Param::UInt(v.into())),
        DataType::UInt16 => each!(column.as_primitive::<UInt16Type>(), |v: u16| Param::UInt(v.into())),
        DataType::UInt32 => each!(column.as_primitive::<UInt32Type>(), |v: u32| Param::UInt(v.into())),
        DataType::UInt64 => each!(column.as_primitive::<UInt64Type>(), Param::UInt),
        DataType::Float32 => each!(column.as_primitive::<Float32Type>(), |v: f32| Param::Double(v.into())),
        DataType::Float64 => each!(column.as_primitive::<Float64Type>(), Param::Double),
        DataType::Utf8 => each!(column.as_string::<i32>(), |v: &str| Param::Text(v.to_string())),
        DataType::LargeUtf8 => each!(column.as_string::<i64>(), |v: &str| Param::Text(v.to_string())),
        DataType::Binary => each!(column.as_binary::<i32>(), |v: &[u8]| Param::Blob(v.to_vec())),
        DataType::LargeBinary => each!(column.as_binary::<i64>(), |v: &[u8]| Param::Blob(v.to_vec())),
        _ => {
            // Dates, timestamps, decimals and the rest: their text, which DuckDB casts to the parameter's type.
            let text = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| format!("cannot be bound: {e}"))?;
            each!(text.as_string::<i32>(), |v: &str| Param::Text(v.to_string()));
        }
    }
    Ok(out)
}

/// The parameter schema clients are shown: `$1`, `$2`... with DuckDB's types.
pub fn param_schema(types: Vec<DataType>) -> Schema {
    Schema::new(
        types
            .into_iter()
            .enumerate()
            .map(|(i, t)| arrow::datatypes::Field::new(format!("${}", i + 1), t, true))
            .collect::<Vec<_>>(),
    )
}

/// A running statement's batches; ends with the statement's error if it failed midway.
pub type QueryStream = std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, EngineError>> + Send>>;

impl<S: Session> Core<S> {
    /// Prepares a statement (without running it): its result schema and its parameters.
    /// With `params`, the columns are described for those values (else for NULLs).
    pub async fn describe_sql(
        &self,
        sql: &str,
        params: Option<Vec<Param>>,
        access: Access,
        principal: &Principal,
        policy: &Policy,
    ) -> Result<Described, EngineError> {
        check_statement(sql, access, principal, policy)?;
        let (reply, rx) = oneshot::channel();
        self.call_statement(
            Work::DescribeSql { sql: sql.to_string(), params, access, reply },
            policy.statement_timeout,
            rx,
        )
        .await
    }

    /// Runs a statement that changes data; returns the rows changed (summed over parameter rows).
    pub async fn update(
        &self,
        statement: Statement,
        access: Access,
        principal: &Principal,
        policy: &Policy,
    ) -> Result<u64, EngineError> {
        check_statement(&statement.sql, access, principal, policy)?;
        let _admitted = policy.admit()?;
        let (reply, rx) = oneshot::channel();
        self.call_statement(Work::Update { statement, access, reply }, policy.statement_timeout, rx).await
    }

    /// Runs a statement and streams its result: the schema, then batches as the client takes them.
    pub async fn query(
        &self,
        statement: Statement,
        access: Access,
        principal: &Principal,
        policy: &Policy,
    ) -> Result<(SchemaRef, QueryStream), EngineError> {
        check_statement(&statement.sql, access, principal, policy)?;
        let admitted = policy.admit()?;
        let (tx, rx) = mpsc::channel(RESULT_DEPTH);
        let (reply, done) = oneshot::channel();
        // DuckDB's 2,048-row chunks are gathered into batches of up to QUERY_BATCH_ROWS rows (or 8 MiB): a result
        // goes out in a few large messages, not one per chunk.
        let out = QueryOut::gathering(tx, policy.stall_timeout, QUERY_BATCH_ROWS, tokio::runtime::Handle::current());
        self.submit_statement(Work::Query { statement, access, out, reply }, policy.statement_timeout).await?;
        result_stream(rx, done, admitted).await
    }

    /// Runs a query of the host's own session (for `arrowport_send`) in a read-only transaction and streams its
    /// result in batches of about `rows` rows (DuckDB's chunks gathered on the writer). `stall` bounds how long
    /// the writer waits for the batches to be taken.
    pub async fn export(
        &self,
        sql: &str,
        rows: usize,
        stall: std::time::Duration,
    ) -> Result<(SchemaRef, QueryStream), EngineError> {
        self.export_via(sql, rows, stall, false).await
    }

    /// The same on the statement pool (a follower's round), never on a writer.
    pub(crate) async fn export_on_statements(
        &self,
        sql: &str,
        rows: usize,
        stall: std::time::Duration,
    ) -> Result<(SchemaRef, QueryStream), EngineError> {
        self.export_via(sql, rows, stall, true).await
    }

    async fn export_via(
        &self,
        sql: &str,
        rows: usize,
        stall: std::time::Duration,
        statements: bool,
    ) -> Result<(SchemaRef, QueryStream), EngineError> {
        // One gathered batch waits while the reader takes the one before: the thread keeps working, and what is
        // held stays within a few batches.
        let (tx, rx) = mpsc::channel(1);
        let (reply, done) = oneshot::channel();
        let out = QueryOut::gathering(tx, stall, rows, tokio::runtime::Handle::current());
        let work = Work::Export { sql: sql.to_string(), out, reply };
        if statements {
            self.submit_statement(work, crate::engine::policy::STATEMENT_TIMEOUT).await?;
        } else {
            self.submit_work(work).await?;
        }
        result_stream(rx, done, ()).await
    }

    /// Compacts a DuckLake catalog on a writer (see `Session::maintain`).
    pub async fn maintain(
        &self,
        catalog: &str,
        older_than: std::time::Duration,
    ) -> Result<Vec<Maintained>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.call(Work::Maintain { catalog: catalog.to_string(), older_than, reply }, rx).await
    }

    /// Catalogs, schemas and tables (with their Arrow schemas when `with_schemas`).
    pub async fn catalog(&self, with_schemas: bool, principal: &Principal) -> Result<Catalog, EngineError> {
        if !principal.may_choose_target() {
            return Err(EngineError::Denied("a token limited to streams cannot browse the catalog".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.call(Work::Catalog { with_schemas, reply }, rx).await
    }
}

/// The schema, then a stream of the batches a writer hands over; ends with the statement's error if it failed
/// midway. `held` (an admission) lives as long as the stream.
async fn result_stream<H: Send + 'static>(
    mut rx: mpsc::Receiver<QueryItem>,
    mut done: oneshot::Receiver<Result<(), EngineError>>,
    held: H,
) -> Result<(SchemaRef, QueryStream), EngineError> {
    let schema = match rx.recv().await {
        Some(QueryItem::Schema(s)) => s,
        Some(QueryItem::Batch(_)) => return Err(EngineError::Internal("a result batch came before its schema".into())),
        None => {
            return Err(match (&mut done).await {
                Ok(Err(e)) => e,
                _ => EngineError::Internal("the statement ended without a result".into()),
            });
        }
    };
    let state = (rx, Some(done), held);
    let stream = futures::stream::unfold(state, |(mut rx, done, held)| async move {
        match rx.recv().await {
            Some(QueryItem::Batch(b)) => Some((Ok(b), (rx, done, held))),
            Some(QueryItem::Schema(_)) => {
                Some((Err(EngineError::Internal("a second schema in one result".into())), (rx, None, held)))
            }
            None => match done {
                None => None,
                Some(done) => match done.await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((Err(e), (rx, None, held))),
                    Err(_) => Some((Err(EngineError::Internal("the writer went away".into())), (rx, None, held))),
                },
            },
        }
    });
    Ok((schema, Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int32Array, StringArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn parameters_come_from_arrow_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", DataType::Date32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
                Arc::new(Date32Array::from(vec![Some(19_000), None])),
            ],
        )
        .unwrap();
        let rows = params_from_batch(&batch).unwrap();
        assert_eq!(rows[0], vec![Param::Int(7), Param::Text("x".into()), Param::Text("2022-01-08".into())]);
        assert_eq!(rows[1], vec![Param::Null, Param::Text("y".into()), Param::Null]);
    }
}
