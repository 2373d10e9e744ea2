//! Arrow Flight SQL on the Flight port: bulk ingest (`CommandStatementIngest`, ADBC's `adbc_ingest`), statements,
//! prepared statements with parameters, and catalog browsing.
//!
//! `flight` dispatches here when a descriptor's CMD, a ticket or an action is a Flight SQL message (protobuf
//! `Any` with a `arrow.flight.protocol.sql` type); PATH and the original JSON CMD stay with plain DoPut. Ingest
//! goes to the same ingest core as every other protocol (one request, one transaction, acknowledged after
//! commit); statements go to the query core, as the listener's `sql` option allows. Nothing here touches DuckDB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, CommandStatementIngest, DoPutPreparedStatementResult, DoPutUpdateResult, ProstMessageExt, SqlInfo,
    SqlSupportedTransaction, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, PutResult, SchemaAsIpc, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;

use crate::catalog::access::{self, Principal};
use crate::catalog::registry::{Mapping, SchemaPolicy, TableRule, Target};
use crate::engine::core::Core;
use crate::engine::error::EngineError;
use crate::engine::ingest::{Incoming, Request as IngestRequest};
use crate::engine::metrics::Protocol;
use crate::engine::policy::{Access, Policy};
use crate::engine::query;
use crate::engine::session::{Param, Session, Statement};

/// The Flight SQL action names this server answers.
pub const CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
pub const CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";

/// Prepared statements one listener remembers; the oldest is forgotten beyond this.
const MAX_PREPARED: usize = 1024;

/// Parameter rows one prepared statement may be given...
const MAX_PARAM_ROWS: usize = 100_000;

/// ...and the memory their batches may take.
const MAX_PARAM_BYTES: usize = 64 * 1024 * 1024;

const SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The Flight SQL command in a CMD descriptor or a ticket, if it is one.
pub fn command_of(bytes: &[u8]) -> Option<Command> {
    let any = Any::decode(bytes).ok()?;
    if !any.type_url.starts_with(SQL_TYPE_PREFIX) {
        return None;
    }
    Command::try_from(any).ok()
}

/// A prepared statement as the listener remembers it between calls.
#[derive(Clone)]
struct PreparedEntry {
    sql: String,
    schema: Schema,
    params: Vec<Vec<Param>>,
    /// The token that prepared it (`None`: anonymous); nobody else may use it.
    owner: Option<String>,
    seq: u64,
}

fn owner_of(principal: &Principal) -> Option<String> {
    match principal {
        Principal::Anonymous => None,
        Principal::Token { name, .. } => Some(name.to_string()),
    }
}

/// The Flight SQL side of one listener.
pub struct FlightSql<S: Session> {
    core: Arc<Core<S>>,
    policy: Arc<Policy>,
    access: Access,
    prepared: Mutex<HashMap<Vec<u8>, PreparedEntry>>,
    next: AtomicU64,
    /// A random prefix, so handles are not guessable across listeners or restarts.
    salt: u64,
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, EngineError> {
    let message: Result<IpcMessage, _> = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
    message.map(|IpcMessage(b)| b).map_err(|e: arrow::error::ArrowError| EngineError::Internal(e.to_string()))
}

fn info_for(schema: &Schema, descriptor: FlightDescriptor, ticket: Vec<u8>) -> Result<FlightInfo, EngineError> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    // A statement that is not a query has no known columns before it runs: no schema rather than a wrong one
    // (clients check the stream's schema against the one given here).
    if schema.fields().is_empty() {
        return Ok(FlightInfo::new()
            .with_descriptor(descriptor)
            .with_endpoint(endpoint)
            .with_total_records(-1)
            .with_total_bytes(-1));
    }
    FlightInfo::new()
        .try_with_schema(schema)
        .map(|i| {
            i.with_descriptor(descriptor)
                .with_endpoint(endpoint)
                .with_total_records(-1)
                .with_total_bytes(-1)
                .with_ordered(true)
        })
        .map_err(|e| EngineError::Internal(e.to_string()))
}

/// A stream of Flight data for a schema and its batches; errors midway end the stream with their status.
pub type DataStream = std::pin::Pin<Box<dyn Stream<Item = Result<FlightData, EngineError>> + Send>>;

fn encode(schema: SchemaRef, batches: query::QueryStream) -> DataStream {
    let input = batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(input)
        .map_err(|e| match e {
            FlightError::ExternalError(inner) => match inner.downcast::<EngineError>() {
                Ok(e) => *e,
                Err(other) => EngineError::Internal(other.to_string()),
            },
            other => EngineError::Internal(other.to_string()),
        });
    Box::pin(encoded)
}

impl<S: Session> FlightSql<S> {
    pub fn new(core: Arc<Core<S>>, policy: Arc<Policy>, access: Access) -> Self {
        let salt = access::now_us() as u64 ^ (std::process::id() as u64).rotate_left(32);
        FlightSql { core, policy, access, prepared: Mutex::new(HashMap::new()), next: AtomicU64::new(1), salt }
    }

    fn sql_info(&self) -> Result<SqlInfoData, EngineError> {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "arrowport");
        b.append(SqlInfo::FlightSqlServerVersion, crate::engine::VERSION);
        b.append(SqlInfo::FlightSqlServerArrowVersion, "60");
        b.append(SqlInfo::FlightSqlServerReadOnly, self.access != Access::ReadWrite);
        b.append(SqlInfo::FlightSqlServerSql, self.access != Access::Off);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
        b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        b.append(SqlInfo::SqlDdlCatalog, true);
        b.append(SqlInfo::SqlDdlSchema, true);
        b.append(SqlInfo::SqlDdlTable, true);
        b.build().map_err(|e| EngineError::Internal(e.to_string()))
    }

    // ---- DoPut -------------------------------------------------------------------------------------------

    /// A Flight SQL DoPut: `items` is the whole decoded message stream (schema first); `base` is the request as
    /// the DoPut began it (principal, wire count, memory reservation, idempotency key), for ingest to complete.
    pub async fn do_put<I>(&self, command: Command, items: I, base: IngestRequest) -> Result<PutResult, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let principal = base.principal.clone();
        match command {
            Command::CommandStatementIngest(cmd) => self.ingest(cmd, items, base).await,
            Command::CommandStatementUpdate(cmd) => {
                let statement = Statement { sql: cmd.query, params: vec![] };
                let n = self.core.update(statement, self.access, &principal, &self.policy).await?;
                Ok(update_result(n))
            }
            Command::CommandPreparedStatementQuery(cmd) => {
                let params = collect_params(items, self.policy.stall_timeout).await?;
                let handle = cmd.prepared_statement_handle.to_vec();
                self.with_entry(&handle, &principal, |e| e.params = params)?;
                let result = DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.into()) };
                Ok(PutResult { app_metadata: result.encode_to_vec().into() })
            }
            Command::CommandPreparedStatementUpdate(cmd) => {
                let params = collect_params(items, self.policy.stall_timeout).await?;
                let entry = self.entry(&cmd.prepared_statement_handle, &principal)?;
                let statement = Statement { sql: entry.sql, params };
                let n = self.core.update(statement, self.access, &principal, &self.policy).await?;
                Ok(update_result(n))
            }
            other => Err(EngineError::Unsupported(format!(
                "arrowport does not implement Flight SQL DoPut {}",
                other.type_url()
            ))),
        }
    }

    async fn ingest<I>(
        &self,
        cmd: CommandStatementIngest,
        items: I,
        base: IngestRequest,
    ) -> Result<PutResult, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let rule = ingest_rule(&cmd)?;
        if cmd.temporary {
            return Err(EngineError::Unsupported(
                "temporary tables are not available: a DuckDB temporary table lives in one connection, and arrowport \
                 serves each request on a connection of its pool, so no later request would see it"
                    .into(),
            ));
        }
        if cmd.transaction_id.is_some() {
            return Err(EngineError::Unsupported(
                "transactions are not available; every ingest commits on its own".into(),
            ));
        }
        if cmd.table.is_empty() {
            return Err(EngineError::BadInput("CommandStatementIngest names no table".into()));
        }
        let target = Target {
            catalog: cmd.catalog.filter(|c| !c.is_empty()),
            schema: cmd.schema.filter(|s| !s.is_empty()).unwrap_or_else(|| "main".into()),
            table: cmd.table.clone(),
        };
        let mapping = Mapping { target, policy: SchemaPolicy::ByName, rule, ..Mapping::default_for(&cmd.table) };
        let request =
            IngestRequest { stream: cmd.table, protocol: Protocol::FlightSql, mapping: Some(mapping), ..base };
        let report = self.core.ingest(request, items).await?;
        Ok(update_result(report.rows))
    }

    // ---- GetFlightInfo / DoGet ---------------------------------------------------------------------------

    pub async fn flight_info(
        &self,
        principal: Principal,
        command: Command,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, EngineError> {
        match command {
            Command::CommandStatementQuery(cmd) => {
                let described = self.core.describe_sql(&cmd.query, None, self.access, &principal, &self.policy).await?;
                // The ticket is a handle to the statement kept here (as a prepared statement is), not its text: a
                // client cannot run SQL the describe step never saw, and tickets stay small.
                let handle = self.remember(cmd.query, described.schema.clone(), owner_of(&principal));
                let ticket = TicketStatementQuery { statement_handle: handle.into() };
                info_for(&described.schema, descriptor, ticket.as_any().encode_to_vec())
            }
            Command::CommandPreparedStatementQuery(cmd) => {
                let entry = self.entry(&cmd.prepared_statement_handle, &principal)?;
                // With parameters bound, the columns are described with them (a parameter's type can decide a
                // column's).
                let schema = match entry.params.first() {
                    Some(first) => {
                        self.core
                            .describe_sql(&entry.sql, Some(first.clone()), self.access, &principal, &self.policy)
                            .await?
                            .schema
                    }
                    None => entry.schema,
                };
                info_for(&schema, descriptor, cmd.as_any().encode_to_vec())
            }
            Command::CommandGetCatalogs(cmd) => {
                info_for(&cmd.into_builder().schema(), descriptor, cmd.as_any().encode_to_vec())
            }
            Command::CommandGetDbSchemas(cmd) => {
                info_for(&cmd.clone().into_builder().schema(), descriptor, cmd.as_any().encode_to_vec())
            }
            Command::CommandGetTables(cmd) => {
                info_for(&cmd.clone().into_builder().schema(), descriptor, cmd.as_any().encode_to_vec())
            }
            Command::CommandGetTableTypes(cmd) => {
                info_for(&cmd.into_builder().schema(), descriptor, cmd.as_any().encode_to_vec())
            }
            Command::CommandGetSqlInfo(cmd) => {
                info_for(SqlInfoDataBuilder::schema(), descriptor, cmd.as_any().encode_to_vec())
            }
            other => Err(EngineError::Unsupported(format!(
                "arrowport does not implement Flight SQL GetFlightInfo {}",
                other.type_url()
            ))),
        }
    }

    pub async fn do_get(&self, principal: Principal, command: Command) -> Result<DataStream, EngineError> {
        match command {
            Command::TicketStatementQuery(t) => {
                let entry = self.entry(&t.statement_handle, &principal)?;
                let (schema, batches) = self
                    .core
                    .query(Statement { sql: entry.sql, params: vec![] }, self.access, &principal, &self.policy)
                    .await?;
                Ok(encode(schema, batches))
            }
            Command::CommandPreparedStatementQuery(cmd) => {
                let entry = self.entry(&cmd.prepared_statement_handle, &principal)?;
                let statement = Statement { sql: entry.sql, params: entry.params };
                let (schema, batches) = self.core.query(statement, self.access, &principal, &self.policy).await?;
                Ok(encode(schema, batches))
            }
            Command::CommandGetCatalogs(cmd) => {
                let catalog = self.core.catalog(false, &principal).await?;
                let mut b = cmd.into_builder();
                for c in catalog.catalogs {
                    b.append(c);
                }
                one_batch(b.build())
            }
            Command::CommandGetDbSchemas(cmd) => {
                let catalog = self.core.catalog(false, &principal).await?;
                let mut b = cmd.into_builder();
                for (c, s) in catalog.schemas {
                    b.append(c, s);
                }
                one_batch(b.build())
            }
            Command::CommandGetTables(cmd) => {
                let catalog = self.core.catalog(cmd.include_schema, &principal).await?;
                let mut b = cmd.into_builder();
                let empty = Schema::empty();
                for t in catalog.tables {
                    b.append(&t.catalog, &t.schema, &t.name, &t.kind, t.arrow.as_ref().unwrap_or(&empty))
                        .map_err(|e| EngineError::Internal(e.to_string()))?;
                }
                one_batch(b.build())
            }
            Command::CommandGetTableTypes(cmd) => {
                let mut b = cmd.into_builder();
                b.append("TABLE");
                b.append("VIEW");
                one_batch(b.build())
            }
            Command::CommandGetSqlInfo(cmd) => {
                let info = self.sql_info()?;
                one_batch(cmd.into_builder(&info).build())
            }
            other => Err(EngineError::Unsupported(format!(
                "arrowport does not implement Flight SQL DoGet {}",
                other.type_url()
            ))),
        }
    }

    /// The result schema of a statement (Flight `GetSchema` on a statement CMD).
    pub async fn schema(&self, principal: Principal, command: Command) -> Result<Schema, EngineError> {
        match command {
            Command::CommandStatementQuery(cmd) => {
                Ok(self.core.describe_sql(&cmd.query, None, self.access, &principal, &self.policy).await?.schema)
            }
            Command::CommandPreparedStatementQuery(cmd) => {
                Ok(self.entry(&cmd.prepared_statement_handle, &principal)?.schema)
            }
            other => Err(EngineError::Unsupported(format!(
                "arrowport does not implement Flight SQL GetSchema {}",
                other.type_url()
            ))),
        }
    }

    // ---- actions -----------------------------------------------------------------------------------------

    /// `CreatePreparedStatement` / `ClosePreparedStatement`; returns the action's result bodies.
    pub async fn action(
        &self,
        principal: Principal,
        kind: &str,
        body: &[u8],
    ) -> Result<Vec<bytes::Bytes>, EngineError> {
        let any = Any::decode(body)
            .map_err(|e| EngineError::BadInput(format!("the {kind} body is not a protobuf Any: {e}")))?;
        match kind {
            CREATE_PREPARED_STATEMENT => {
                let req: ActionCreatePreparedStatementRequest = any
                    .unpack()
                    .map_err(|e| EngineError::BadInput(e.to_string()))?
                    .ok_or_else(|| EngineError::BadInput("expected ActionCreatePreparedStatementRequest".into()))?;
                if req.transaction_id.is_some() {
                    return Err(EngineError::Unsupported(
                        "transactions are not available; every statement commits on its own".into(),
                    ));
                }
                let described = self.core.describe_sql(&req.query, None, self.access, &principal, &self.policy).await?;
                let handle = self.remember(req.query, described.schema.clone(), owner_of(&principal));
                let result = ActionCreatePreparedStatementResult {
                    prepared_statement_handle: handle.into(),
                    dataset_schema: schema_bytes(&described.schema)?,
                    parameter_schema: schema_bytes(&described.params)?,
                };
                Ok(vec![result.as_any().encode_to_vec().into()])
            }
            CLOSE_PREPARED_STATEMENT => {
                let req: ActionClosePreparedStatementRequest = any
                    .unpack()
                    .map_err(|e| EngineError::BadInput(e.to_string()))?
                    .ok_or_else(|| EngineError::BadInput("expected ActionClosePreparedStatementRequest".into()))?;
                let handle = req.prepared_statement_handle.to_vec();
                self.entry(&handle, &principal)?;
                self.lock().remove(&handle);
                Ok(vec![])
            }
            other => Err(EngineError::Unsupported(format!("arrowport does not implement the action {other:?}"))),
        }
    }

    // ---- prepared statements -----------------------------------------------------------------------------

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, PreparedEntry>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, sql: String, schema: Schema, owner: Option<String>) -> Vec<u8> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = format!("ap-{:016x}-{seq}", self.salt).into_bytes();
        let mut map = self.lock();
        if map.len() >= MAX_PREPARED
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.seq).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(handle.clone(), PreparedEntry { sql, schema, params: vec![], owner, seq });
        handle
    }

    fn entry(&self, handle: &[u8], principal: &Principal) -> Result<PreparedEntry, EngineError> {
        let map = self.lock();
        let entry = map
            .get(handle)
            .ok_or_else(|| EngineError::NotFound("no such statement handle: tickets and prepared statements are handles this listener gave out (closed, or forgotten after 1024 newer ones)".into()))?;
        if entry.owner != owner_of(principal) {
            return Err(EngineError::Denied("the prepared statement belongs to another token".into()));
        }
        Ok(entry.clone())
    }

    fn with_entry(
        &self,
        handle: &[u8],
        principal: &Principal,
        f: impl FnOnce(&mut PreparedEntry),
    ) -> Result<(), EngineError> {
        self.entry(handle, principal)?;
        if let Some(e) = self.lock().get_mut(handle) {
            f(e);
        }
        Ok(())
    }
}

fn update_result(rows: u64) -> PutResult {
    let result = DoPutUpdateResult { record_count: i64::try_from(rows).unwrap_or(i64::MAX) };
    PutResult { app_metadata: result.encode_to_vec().into() }
}

fn one_batch(batch: Result<arrow::array::RecordBatch, FlightError>) -> Result<DataStream, EngineError> {
    let batch = batch.map_err(|e| EngineError::Internal(e.to_string()))?;
    let schema = batch.schema();
    Ok(encode(schema, Box::pin(futures::stream::iter([Ok(batch)]))))
}

/// Parameter rows from a DoPut's batches.
/// Parameter rows from a DoPut's batches, within [`MAX_PARAM_ROWS`] and [`MAX_PARAM_BYTES`]; a client that
/// sends nothing for `stall` is refused.
async fn collect_params<I>(mut items: I, stall: std::time::Duration) -> Result<Vec<Vec<Param>>, EngineError>
where
    I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
{
    let mut rows = Vec::new();
    let mut bytes = 0;
    loop {
        let item = match tokio::time::timeout(stall, items.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(rows),
            Err(_) => return Err(EngineError::Stalled(stall)),
        };
        if let Incoming::Batch(b) = item? {
            bytes += b.get_array_memory_size();
            if bytes > MAX_PARAM_BYTES {
                return Err(EngineError::TooLarge(format!(
                    "more than {MAX_PARAM_BYTES} bytes of parameters for one statement"
                )));
            }
            rows.extend(query::params_from_batch(&b).map_err(EngineError::BadInput)?);
            if rows.len() > MAX_PARAM_ROWS {
                return Err(EngineError::TooLarge(format!(
                    "more than {MAX_PARAM_ROWS} parameter rows for one statement"
                )));
            }
        }
    }
}

/// ADBC's ingest modes as the command's table options spell them.
fn ingest_rule(cmd: &CommandStatementIngest) -> Result<TableRule, EngineError> {
    let opts = cmd.table_definition_options.unwrap_or_default();
    let missing = TableNotExistOption::try_from(opts.if_not_exist).unwrap_or(TableNotExistOption::Unspecified);
    let exists = TableExistsOption::try_from(opts.if_exists).unwrap_or(TableExistsOption::Unspecified);
    match (missing, exists) {
        (TableNotExistOption::Create, TableExistsOption::Fail) => Ok(TableRule::Create),
        (TableNotExistOption::Fail, TableExistsOption::Append) => Ok(TableRule::Append),
        (TableNotExistOption::Create, TableExistsOption::Replace) => Ok(TableRule::Replace),
        (TableNotExistOption::Create, TableExistsOption::Append) => Ok(TableRule::CreateAppend),
        (m, e) => Err(EngineError::BadInput(format!(
            "unsupported table options: if_not_exist {}, if_exists {} (supported: create/fail, fail/append, create/replace, create/append)",
            m.as_str_name(),
            e.as_str_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::sql::{CommandStatementQuery, TableDefinitionOptions};

    #[test]
    fn flight_sql_commands_are_told_apart_from_the_json_cmd() {
        let q = CommandStatementQuery { query: "SELECT 1".into(), transaction_id: None };
        assert!(matches!(command_of(&q.as_any().encode_to_vec()), Some(Command::CommandStatementQuery(_))));
        assert!(command_of(br#"{"stream_name": "events"}"#).is_none());
        assert!(command_of(b"").is_none());
    }

    #[test]
    fn adbc_modes_map_to_table_rules() {
        let cmd = |m: TableNotExistOption, e: TableExistsOption| CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions { if_not_exist: m as i32, if_exists: e as i32 }),
            table: "t".into(),
            ..Default::default()
        };
        use TableExistsOption as E;
        use TableNotExistOption as M;
        assert_eq!(ingest_rule(&cmd(M::Create, E::Fail)).unwrap(), TableRule::Create);
        assert_eq!(ingest_rule(&cmd(M::Fail, E::Append)).unwrap(), TableRule::Append);
        assert_eq!(ingest_rule(&cmd(M::Create, E::Replace)).unwrap(), TableRule::Replace);
        assert_eq!(ingest_rule(&cmd(M::Create, E::Append)).unwrap(), TableRule::CreateAppend);
        assert!(
            ingest_rule(&cmd(M::Unspecified, E::Append)).unwrap_err().to_string().contains("unsupported table options")
        );
    }
}
