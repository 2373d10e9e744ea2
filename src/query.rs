//! The query core, shared by every protocol that runs SQL (today: Flight SQL): statements in, Arrow out.
//!
//! A listener decides whether SQL is allowed at all ([`Access`], the `sql` listen option); this module checks
//! that decision and the principal, then runs the statement on a writer connection through [`Sink`]. Results
//! stream through a small bounded channel: a client that stops reading fills it, the writer waits at most the
//! listener's stall timeout, then abandons the statement and is free again. Like `ingest`, this module runs no
//! SQL itself and knows no protocol.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::ffi::Param;
use crate::ingest::{Core, IngestError, Policy, Sink, Work};

/// Batches buffered between a statement's result and the client.
const RESULT_DEPTH: usize = 4;

/// What a listener lets clients do with SQL (`sql := ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No statements; metadata calls and ingest only.
    Off,
    /// Only statements that read, each in a read-only transaction.
    ReadOnly,
    ReadWrite,
}

impl Access {
    pub fn parse(text: &str) -> Result<Access, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(Access::Off),
            "read_only" => Ok(Access::ReadOnly),
            "read_write" => Ok(Access::ReadWrite),
            other => Err(format!("invalid value for option sql: {other:?} (allowed: off, read_only, read_write)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Access::Off => "off",
            Access::ReadOnly => "read_only",
            Access::ReadWrite => "read_write",
        }
    }
}

/// One statement and its parameter rows (none, or one execution per row).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Vec<Param>>,
}

/// What a prepared statement returns and takes.
#[derive(Debug, Clone)]
pub struct Described {
    pub schema: Schema,
    pub params: Schema,
}

/// A table or view, for catalog browsing.
#[derive(Debug, Clone)]
pub struct TableEntry {
    pub catalog: String,
    pub schema: String,
    pub name: String,
    /// `TABLE` or `VIEW`.
    pub kind: String,
    /// Filled when asked for.
    pub arrow: Option<Schema>,
}

/// What the catalog holds, for `GetCatalogs` / `GetDbSchemas` / `GetTables`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub catalogs: Vec<String>,
    /// (catalog, schema)
    pub schemas: Vec<(String, String)>,
    pub tables: Vec<TableEntry>,
}

/// Items from a running statement: its schema first, then batches.
#[derive(Debug)]
pub enum QueryItem {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// The writer's end of a statement's result.
pub struct QueryOut {
    tx: mpsc::Sender<QueryItem>,
    stall: Duration,
}

impl QueryOut {
    /// Hands an item to the client side; waits (polling) while the client is slow, up to the stall timeout.
    pub fn send(&self, item: QueryItem) -> Result<(), IngestError> {
        let started = Instant::now();
        let mut item = item;
        let mut pause = Duration::from_micros(200);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(IngestError::Disconnected),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if started.elapsed() > self.stall {
                        return Err(IngestError::Stalled(self.stall));
                    }
                    item = back;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
        }
    }
}

/// Names a statement sent over the network may not contain: the functions that start and stop listeners (from a
/// writer thread they would wait for that very thread), and the scratch database the writers' scan views live
/// in (detaching it would break every writer).
const FORBIDDEN_NAMES: [&str; 3] = ["arrowport_stop", "arrowport_listen", "arrowport_scratch"];

fn check_statement(sql: &str, access: Access, principal: &Principal) -> Result<(), IngestError> {
    if access == Access::Off {
        return Err(IngestError::Denied(
            "SQL statements are off on this listener; start it with sql := 'read_only' or sql := 'read_write' to allow them".into(),
        ));
    }
    if !principal.may_choose_target() {
        return Err(IngestError::Denied("a token limited to streams cannot run SQL statements".into()));
    }
    let lower = sql.to_ascii_lowercase();
    if let Some(f) = FORBIDDEN_NAMES.iter().find(|f| lower.contains(*f)) {
        return Err(IngestError::Denied(format!("{f} cannot be used over the network; use it in the host's own session")));
    }
    Ok(())
}

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
    Schema::new(types.into_iter().enumerate().map(|(i, t)| arrow::datatypes::Field::new(format!("${}", i + 1), t, true)).collect::<Vec<_>>())
}

/// A running statement's batches; ends with the statement's error if it failed midway.
pub type QueryStream = std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, IngestError>> + Send>>;

impl<S: Sink> Core<S> {
    /// Prepares a statement (without running it): its result schema and its parameters.
    /// With `params`, the columns are described for those values (else for NULLs).
    pub async fn describe_sql(&self, sql: &str, params: Option<Vec<Param>>, access: Access, principal: &Principal) -> Result<Described, IngestError> {
        check_statement(sql, access, principal)?;
        let (reply, rx) = oneshot::channel();
        self.call(Work::DescribeSql { sql: sql.to_string(), params, access, reply }, rx).await
    }

    /// Runs a statement that changes data; returns the rows changed (summed over parameter rows).
    pub async fn update(&self, statement: Statement, access: Access, principal: &Principal, policy: &Policy) -> Result<u64, IngestError> {
        check_statement(&statement.sql, access, principal)?;
        let _admitted = policy.admit()?;
        let (reply, rx) = oneshot::channel();
        self.call(Work::Update { statement, access, reply }, rx).await
    }

    /// Runs a statement and streams its result: the schema, then batches as the client takes them.
    pub async fn query(
        &self,
        statement: Statement,
        access: Access,
        principal: &Principal,
        policy: &Policy,
    ) -> Result<(SchemaRef, QueryStream), IngestError> {
        check_statement(&statement.sql, access, principal)?;
        let admitted = policy.admit()?;
        let (tx, mut rx) = mpsc::channel(RESULT_DEPTH);
        let (reply, mut done) = oneshot::channel();
        let out = QueryOut { tx, stall: policy.stall_timeout };
        self.submit_work(Work::Query { statement, access, out, reply }).await?;
        let schema = tokio::select! {
            item = rx.recv() => match item {
                Some(QueryItem::Schema(s)) => s,
                Some(QueryItem::Batch(_)) => return Err(IngestError::Internal("a result batch came before its schema".into())),
                None => return Err(match (&mut done).await {
                    Ok(Err(e)) => e,
                    _ => IngestError::Internal("the statement ended without a result".into()),
                }),
            },
        };
        let state = (rx, Some(done), admitted);
        let stream = futures::stream::unfold(state, |(mut rx, done, admitted)| async move {
            match rx.recv().await {
                Some(QueryItem::Batch(b)) => Some((Ok(b), (rx, done, admitted))),
                Some(QueryItem::Schema(_)) => Some((Err(IngestError::Internal("a second schema in one result".into())), (rx, None, admitted))),
                None => match done {
                    None => None,
                    Some(done) => match done.await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some((Err(e), (rx, None, admitted))),
                        Err(_) => Some((Err(IngestError::Internal("the writer went away".into())), (rx, None, admitted))),
                    },
                },
            }
        });
        Ok((schema, Box::pin(stream)))
    }

    /// Catalogs, schemas and tables (with their Arrow schemas when `with_schemas`).
    pub async fn catalog(&self, with_schemas: bool, principal: &Principal) -> Result<Catalog, IngestError> {
        if !principal.may_choose_target() {
            return Err(IngestError::Denied("a token limited to streams cannot browse the catalog".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.call(Work::Catalog { with_schemas, reply }, rx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use arrow::array::{Date32Array, Int32Array, StringArray};
    use arrow::datatypes::Field;

    #[test]
    fn access_parses() {
        assert_eq!(Access::parse("READ_ONLY"), Ok(Access::ReadOnly));
        assert_eq!(Access::parse("read_write"), Ok(Access::ReadWrite));
        assert_eq!(Access::parse("off"), Ok(Access::Off));
        assert!(Access::parse("write").unwrap_err().contains("allowed: off, read_only, read_write"));
    }

    #[test]
    fn statements_are_checked_before_they_reach_duckdb() {
        let anon = Principal::Anonymous;
        assert!(check_statement("SELECT 1", Access::ReadOnly, &anon).is_ok());
        assert!(check_statement("SELECT 1", Access::Off, &anon).unwrap_err().to_string().contains("sql := 'read_only'"));
        let e = check_statement("select ARROWPORT_STOP()", Access::ReadWrite, &anon).unwrap_err();
        assert!(e.to_string().starts_with("arrowport_stop cannot be used over the network"), "{e}");
        let e = check_statement("DETACH arrowport_scratch", Access::ReadWrite, &anon).unwrap_err();
        assert!(e.to_string().starts_with("arrowport_scratch cannot be used over the network"), "{e}");
        let scoped = Principal::Token {
            name: Arc::from("etl"),
            scope: Arc::new(crate::auth::Scope::Streams(vec!["events".into()])),
        };
        assert!(check_statement("SELECT 1", Access::ReadWrite, &scoped).is_err());
    }

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
