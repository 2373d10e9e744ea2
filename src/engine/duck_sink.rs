//! The DuckDB side of a write ([`DuckSink`], the production [`Sink`]): a streamed request becomes one
//! transaction on one of our connections; small requests received whole share one transaction per group (group
//! commit, on the writer the pool reserves for it). Every transaction is a `duck::Txn`, which rolls back unless
//! committed, whatever ends it (an error, an early return, a panic).
//!
//! The batches are not converted by us: DuckDB's own Arrow scan pulls them from the request's channel (or from
//! memory, for a group) through an Arrow C stream (`duck::ScanStream`) registered as a view, and one
//! `INSERT INTO <target> SELECT * FROM <view>` lands them. That path reaches in-process insert speed and gives
//! every column the type DuckDB itself gives that Arrow data (see README, "Write path").
//!
//! Each writer has one view (`arrowport_scratch.main.arrowport_in_<id>`), made once, outside any transaction,
//! and pointed at each request's batches in turn: DuckDB binds the view on every statement. It lives in a small
//! in-memory database attached for the purpose: DuckDB's Arrow-scan views cannot be created in a file database,
//! and a transaction that writes to the host database cannot also create one in another.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::catalog::access::to_hex;
use crate::catalog::registry::{Mapping, Mode, OWN_SCHEMA, SchemaPolicy, TableRule, Target};
use crate::catalog::schema::{self, Column, quote_ident, quote_literal};
use crate::duck::conn::RawConn;
use crate::duck::scan::{BatchPull, ScanStream};
use crate::duck::statement::{Prepared, StatementKind};
use crate::duck::{DbError, DbErrorKind};
use crate::engine::error::IngestError;
use crate::engine::error::IngestError as E;
use crate::engine::policy::{self, Access};
use crate::engine::query;
use crate::engine::sink::{
    BatchRx, Buffered, Catalog, Described, Interrupter, KeyRecord, Maintained, Param, QueryItem, QueryOut, RequestKey,
    Sink, Statement, TableEntry, Written,
};
use crate::engine::sql_tree::{self, Refusal, Strictness};

/// The attached in-memory database that holds the per-request scan views.
pub use crate::engine::policy::SCRATCH_DB;

/// The table of idempotency keys, in the `arrowport` schema of each target's catalog. It holds each key's SHA-256
/// (hex, as DuckDB's `sha256()` writes it), never the key: whoever can read the table learns no key from it.
const KEYS_TABLE: &str = "requests";
const KEYS_COLUMNS: &str = "key_sha256 VARCHAR PRIMARY KEY, stream VARCHAR NOT NULL, ack VARCHAR NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now()";
/// The same for catalogs without PRIMARY KEY constraints (DuckLake): the key is checked inside the transaction.
const KEYS_COLUMNS_UNCONSTRAINED: &str = "key_sha256 VARCHAR NOT NULL, stream VARCHAR NOT NULL, ack VARCHAR NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now()";

/// What the keys table holds for a key: its SHA-256 in hex, as a SQL literal.
fn key_digest(key: &str) -> String {
    quote_literal(&to_hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref()))
}

/// Keys kept per catalog at most (the oldest go first), whatever the window...
const MAX_KEYS: u64 = 1_000_000;
/// ...checked every this many keys a writer records.
const PURGE_EVERY: u64 = 10_000;

/// Serializes the transactions that create a table, per target, so two first requests into a missing table
/// do not both create it (the second waits, then appends).
#[derive(Default)]
pub struct CreateLocks {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

struct CreateGuard {
    locks: Arc<CreateLocks>,
    key: String,
}

impl CreateLocks {
    fn lock(self: &Arc<Self>, key: String) -> CreateGuard {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(&key) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(key.clone());
        CreateGuard { locks: Arc::clone(self), key }
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
        self.locks.freed.notify_all();
    }
}

/// A writer's connection, ready to land requests.
pub struct DuckSink {
    conn: RawConn,
    at: Landing,
    /// Function names the host has (lower case), as last read, for [`DuckSink::preflight`].
    known_functions: HashSet<String>,
}

/// Everything a writer knows besides its connection: the methods that take the connection as an argument run
/// inside or outside a transaction alike (inside, they are given the `Txn`).
struct Landing {
    id: usize,
    host_db: String,
    locks: Arc<CreateLocks>,
    /// The stream behind this writer's scan view (`arrowport_in_<id>`), made on first use.
    scan: Option<ScanStream>,
    /// DuckDB's columns for an Arrow schema, as `DESCRIBE` of the view gave them.
    described: HashMap<Schema, Vec<Column>>,
    /// Catalogs whose `arrowport.requests` (idempotency keys) exists, as far as this writer made sure.
    keys_ready: HashSet<String>,
    /// Catalogs whose keys table is known to hold digests (see `upgrade_keys`).
    keys_upgraded: HashSet<String>,
    /// Catalogs whose key table has no PRIMARY KEY (the catalog supports none): keys are checked before insert.
    keys_unconstrained: HashSet<String>,
    /// Catalogs known to be DuckLakes (true) or not.
    lakes: HashMap<String, bool>,
    /// Keys this writer recorded, for purging now and then.
    keys_recorded: u64,
    /// Test hook (cargo feature `test-hooks` only): a request into a table of this name panics inside its
    /// transaction, after its INSERT (set by `ARROWPORT_TEST_PANIC_TABLE` in the host's environment; the
    /// end-to-end tests prove the writer survives).
    #[cfg(feature = "test-hooks")]
    panic_on: Option<String>,
}

/// The table whose requests panic on purpose (`ARROWPORT_TEST_PANIC_TABLE`), in the tests' build only.
#[cfg(feature = "test-hooks")]
fn test_hook_panic_table() -> Option<String> {
    std::env::var("ARROWPORT_TEST_PANIC_TABLE").ok().filter(|t| !t.is_empty())
}

/// Arrow schemas whose DuckDB columns a writer remembers.
const DESCRIBED_CACHE: usize = 256;

fn exists_error(target: &Target) -> IngestError {
    IngestError::AlreadyExists(format!(
        "table {} already exists (ingest mode create); use mode append, replace or create_append",
        target.display()
    ))
}

/// Batches already in memory, for DuckDB's scan.
struct VecPull(std::collections::VecDeque<RecordBatch>);

impl BatchPull for VecPull {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        Ok(self.0.pop_front())
    }
}

impl Drop for DuckSink {
    fn drop(&mut self) {
        // The view points at our stream: it goes first.
        if self.at.scan.is_some() {
            let _ = self.conn.execute(&format!("DROP VIEW IF EXISTS {}", view_sql(&self.at.view_name())));
        }
    }
}

fn view_sql(view: &str) -> String {
    format!("{}.main.{}", quote_ident(SCRATCH_DB), quote_ident(view))
}

fn columns(rows: Vec<Vec<Option<String>>>) -> Vec<Column> {
    rows.into_iter()
        .map(|r| {
            let mut it = r.into_iter();
            Column { name: it.next().flatten().unwrap_or_default(), sql_type: it.next().flatten().unwrap_or_default() }
        })
        .collect()
}

impl DuckSink {
    /// Readies a pooled connection: remembers the host database's name, attaches the scratch database and makes
    /// it the connection's default, so scan views land there.
    pub fn prepare(mut conn: RawConn, id: usize, locks: Arc<CreateLocks>) -> Result<DuckSink, DbError> {
        let host_db =
            conn.query_value("SELECT current_database()")?.ok_or_else(|| DbError::ours("no current database"))?;
        conn.execute(&format!("ATTACH IF NOT EXISTS ':memory:' AS {}", quote_ident(SCRATCH_DB)))?;
        conn.execute(&format!("USE {}", quote_ident(SCRATCH_DB)))?;
        let at = Landing {
            id,
            host_db,
            locks,
            scan: None,
            described: HashMap::new(),
            keys_ready: HashSet::new(),
            keys_upgraded: HashSet::new(),
            keys_unconstrained: HashSet::new(),
            lakes: HashMap::new(),
            keys_recorded: 0,
            #[cfg(feature = "test-hooks")]
            panic_on: test_hook_panic_table(),
        };
        Ok(DuckSink { conn, at, known_functions: HashSet::new() })
    }
}

impl Landing {
    /// The target's columns, or an empty list when it does not exist.
    /// `DESCRIBE` of the one table: a catalog lookup, where scanning `duckdb_columns()` costs a millisecond or
    /// two per request. A missing table (or schema, or catalog) is DuckDB's Catalog Error, which would abort a
    /// transaction: outside transactions only (inside, [`Self::table_columns_in_txn`]).
    fn table_columns(&self, conn: &mut RawConn, target: &Target) -> Result<Vec<Column>, IngestError> {
        match conn.query(&format!("DESCRIBE {}", target.sql(&self.host_db))) {
            Ok(rows) => Ok(columns(rows)),
            Err(e) if e.is(DbErrorKind::Catalog) => Ok(vec![]),
            Err(e) => Err(E::db(e)),
        }
    }

    /// The target's columns from `duckdb_columns()`, which answers for a missing table without an error.
    fn table_columns_in_txn(&self, conn: &mut RawConn, target: &Target) -> Result<Vec<Column>, IngestError> {
        let catalog = target.catalog.as_deref().unwrap_or(&self.host_db);
        let sql = format!(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE lower(database_name) = lower({}) \
             AND lower(schema_name) = lower({}) AND lower(table_name) = lower({}) ORDER BY column_index",
            quote_literal(catalog),
            quote_literal(&target.schema),
            quote_literal(&target.table)
        );
        Ok(columns(conn.query(&sql).map_err(E::db)?))
    }

    /// Makes this writer's scan view, once, outside any transaction (a transaction that writes to the host
    /// database cannot also create a view in the scratch one, and a rolled-back creation would leave none).
    ///
    /// DuckDB binds the view when it makes it, so it is made over a schema of our own, never a client's:
    /// `duckdb_arrow_scan` does not catch DuckDB's exceptions, so a schema DuckDB refuses there would throw
    /// through our frames and abort the host. Every later bind (DESCRIBE, INSERT) runs inside `duckdb_query`,
    /// which turns DuckDB's refusal into an error.
    fn ensure_view(&mut self, conn: &mut RawConn) -> Result<(), IngestError> {
        if self.scan.is_some() {
            return Ok(());
        }
        let own = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "arrowport",
            arrow::datatypes::DataType::Int64,
            true,
        )]));
        let mut stream = ScanStream::new(own, Box::new(VecPull(Vec::new().into())));
        let view = self.view_name();
        conn.execute(&format!("DROP VIEW IF EXISTS {}", view_sql(&view))).map_err(E::db)?;
        conn.create_scan_view(&view, &mut stream).map_err(E::db)?;
        self.scan = Some(stream);
        Ok(())
    }

    /// Points this writer's scan view at a request's batches and returns DuckDB's columns for them. The view
    /// is made once (see [`Self::ensure_view`]): DuckDB binds it, and asks our stream for the schema, on every
    /// statement, so it serves request after request. DuckDB's columns for an Arrow schema are cached.
    fn point_view(
        &mut self,
        conn: &mut RawConn,
        schema: SchemaRef,
        pull: Box<dyn BatchPull>,
    ) -> Result<Vec<Column>, IngestError> {
        let Some(stream) = self.scan.as_mut() else {
            return Err(IngestError::Internal("the scan view was not made".into()));
        };
        stream.reset(Arc::clone(&schema), pull);
        if let Some(cols) = self.described.get(schema.as_ref()) {
            return Ok(cols.clone());
        }
        let described = conn.query(&format!("DESCRIBE {}", view_sql(&self.view_name())));
        let cols = columns(described.map_err(|e| self.view_lost(e))?);
        if self.described.len() >= DESCRIBED_CACHE {
            self.described.clear();
        }
        self.described.insert(schema.as_ref().clone(), cols.clone());
        Ok(cols)
    }

    /// A DuckDB error; if a name was not found (our view may be gone: someone dropped it), the next request makes
    /// the view again.
    fn view_lost(&mut self, e: DbError) -> IngestError {
        if e.is(DbErrorKind::Catalog) {
            self.scan = None;
        }
        E::db(e)
    }

    /// Lets go of the last request's batches (and its channel).
    fn release_view(&mut self) {
        if let Some(stream) = self.scan.as_mut() {
            stream.reset(Arc::new(Schema::empty()), Box::new(VecPull(Vec::new().into())));
        }
    }

    fn view_name(&self) -> String {
        format!("arrowport_in_{}", self.id)
    }

    /// Checks a target against the request's rule before any transaction: its columns (empty when missing),
    /// and the create lock when this request may create (or recreate) it.
    fn prepare_target(
        &self,
        conn: &mut RawConn,
        mapping: &Mapping,
        locked: &mut HashSet<String>,
    ) -> Result<(Vec<Column>, Option<CreateGuard>), IngestError> {
        let target = &mapping.target;
        self.check_landable(target)?;
        let table = self.table_columns(conn, target)?;
        match (table.is_empty(), mapping.rule) {
            (false, TableRule::Create) => return Err(exists_error(target)),
            (true, TableRule::Append) => {
                return Err(IngestError::NotFound(format!(
                    "table {} does not exist (ingest mode append does not create it)",
                    target.display()
                )));
            }
            (true, TableRule::Stream) if !mapping.create_table => {
                return Err(IngestError::NotFound(format!(
                    "table {} does not exist, and stream {:?} does not create it (create_table is false)",
                    target.display(),
                    mapping.stream
                )));
            }
            _ => {}
        }
        let key = target.sql(&self.host_db).to_lowercase();
        let creating = table.is_empty() || mapping.rule == TableRule::Replace;
        let guard = if creating && locked.insert(key.clone()) { Some(self.locks.lock(key)) } else { None };
        Ok((table, guard))
    }

    /// Refuses a target in arrowport's own state, however it is spelled: the host database's `arrowport` schema
    /// (stream mappings, tokens) and the scratch database (the writers' scan views). Every ingest path, whatever
    /// its protocol, resolves its target here before anything is read or written.
    /// The `arrowport` schema of any catalog holds arrowport's state too: idempotency keys live beside the rows
    /// they vouch for.
    fn check_landable(&self, target: &Target) -> Result<(), IngestError> {
        let catalog = target.catalog.as_deref().unwrap_or(&self.host_db);
        let own = catalog.eq_ignore_ascii_case(SCRATCH_DB) || target.schema.eq_ignore_ascii_case(OWN_SCHEMA);
        if own {
            return Err(IngestError::Denied(format!(
                "{} holds arrowport's own state; no request may write there",
                target.display()
            )));
        }
        Ok(())
    }

    /// Whether a catalog is an attached DuckLake (asked once per catalog and writer).
    fn is_lake(&mut self, conn: &mut RawConn, catalog: Option<&str>) -> Result<bool, IngestError> {
        let Some(catalog) = catalog else { return Ok(false) };
        let name = catalog.to_lowercase();
        if let Some(&known) = self.lakes.get(&name) {
            return Ok(known);
        }
        let kind = conn
            .query_value(&format!(
                "SELECT type FROM duckdb_databases() WHERE lower(database_name) = {}",
                quote_literal(&name)
            ))
            .map_err(E::db)?;
        let lake = kind.is_some_and(|t| t.eq_ignore_ascii_case("ducklake"));
        self.lakes.insert(name, lake);
        Ok(lake)
    }

    /// Grouped commits into one DuckLake take turns on this host: two of them at once would race each other for
    /// the lake's next snapshot, and the loser waits out DuckLake's retry pause (100 ms and more). Held for a
    /// group's transaction, which holds buffered rows only, so briefly; streaming requests do not take it.
    fn lake_commit_locks<'m>(
        &mut self,
        conn: &mut RawConn,
        mappings: impl IntoIterator<Item = &'m Mapping>,
    ) -> Result<Vec<CreateGuard>, IngestError> {
        let mut lakes = std::collections::BTreeSet::new();
        for m in mappings {
            if let Some(catalog) = m.target.catalog.as_deref()
                && self.is_lake(conn, Some(catalog))?
            {
                lakes.insert(catalog.to_lowercase());
            }
        }
        Ok(lakes.into_iter().map(|c| self.locks.lock(format!("lake commit {c}"))).collect())
    }

    /// The table of idempotency keys in a catalog (`None`: the host database).
    fn keys_table(&self, catalog: Option<&str>) -> String {
        format!(
            "{}.{}.{}",
            quote_ident(catalog.unwrap_or(&self.host_db)),
            quote_ident(OWN_SCHEMA),
            quote_ident(KEYS_TABLE)
        )
    }

    /// The condition on `duckdb_columns()`, `duckdb_constraints()` and the like that selects the keys table's rows.
    fn keys_table_is(&self, catalog: Option<&str>) -> String {
        format!(
            "database_name = {} AND schema_name = {} AND table_name = {}",
            quote_literal(catalog.unwrap_or(&self.host_db)),
            quote_literal(OWN_SCHEMA),
            quote_literal(KEYS_TABLE)
        )
    }

    /// Turns the keys an older layout kept in a column `key` into digests, in one transaction, once per catalog
    /// and writer (lookups and writes both come here first).
    fn upgrade_keys(&mut self, conn: &mut RawConn, catalog: Option<&str>) -> Result<(), IngestError> {
        let name = catalog.unwrap_or(&self.host_db).to_lowercase();
        if self.keys_upgraded.contains(&name) {
            return Ok(());
        }
        let table = self.keys_table(catalog);
        let old_layout = format!(
            "SELECT count(*) FROM duckdb_columns() WHERE {} AND column_name = 'key'",
            self.keys_table_is(catalog)
        );
        let upgrade = |conn: &mut RawConn| -> Result<(), DbError> {
            if conn.query_value(&old_layout)?.as_deref() != Some("1") {
                return Ok(());
            }
            let mut txn = conn.begin()?;
            txn.execute(&format!("ALTER TABLE {table} RENAME COLUMN key TO key_sha256"))?;
            txn.execute(&format!("UPDATE {table} SET key_sha256 = sha256(key_sha256)"))?;
            txn.commit()
        };
        // Another writer upgrading at the same moment makes ours fail once; then there is nothing left to do.
        upgrade(conn).or_else(|_| upgrade(conn)).map_err(E::db)?;
        self.keys_upgraded.insert(name);
        Ok(())
    }

    /// Makes sure the catalog's key table exists, outside any transaction (two writers creating it inside theirs
    /// would conflict), and purges keys past their window now and then.
    fn ensure_keys(
        &mut self,
        conn: &mut RawConn,
        catalog: Option<&str>,
        window: std::time::Duration,
    ) -> Result<(), IngestError> {
        let name = catalog.unwrap_or(&self.host_db).to_lowercase();
        let table = self.keys_table(catalog);
        if !self.keys_ready.contains(&name) {
            let schema = format!("{}.{}", quote_ident(catalog.unwrap_or(&self.host_db)), quote_ident(OWN_SCHEMA));
            // DuckLake has no PRIMARY KEY or UNIQUE constraints.
            let columns = if self.is_lake(conn, catalog)? { KEYS_COLUMNS_UNCONSTRAINED } else { KEYS_COLUMNS };
            let create = |conn: &mut RawConn| -> Result<(), DbError> {
                conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
                conn.execute(&format!("CREATE TABLE IF NOT EXISTS {table} ({columns})")).map(|_| ())
            };
            // Another writer creating it at the same moment makes ours fail once; then it exists.
            create(conn).or_else(|_| create(conn)).map_err(E::db)?;
            self.upgrade_keys(conn, catalog)?;
            // Whether the table (whoever made it) has its PRIMARY KEY decides how keys are checked: a DuckLake accepts
            // `CREATE TABLE IF NOT EXISTS ... PRIMARY KEY` without a word when the table is already there.
            let primary_key = conn
                .query_value(&format!(
                    "SELECT count(*) FROM duckdb_constraints() WHERE {} AND constraint_type = 'PRIMARY KEY'",
                    self.keys_table_is(catalog)
                ))
                .map_err(E::db)?;
            if primary_key.as_deref() != Some("1") {
                self.keys_unconstrained.insert(name.clone());
            }
            self.keys_ready.insert(name);
            self.keys_recorded = 0;
        }
        if self.keys_recorded.is_multiple_of(PURGE_EVERY) {
            let purge = format!(
                "DELETE FROM {table} WHERE committed_at < now() - to_microseconds({window}) \
                 OR key_sha256 IN (SELECT key_sha256 FROM {table} ORDER BY committed_at DESC OFFSET {MAX_KEYS})",
                window = window.as_micros()
            );
            conn.execute(&purge).map_err(E::db)?;
        }
        Ok(())
    }

    /// Records requests' keys and acknowledgements inside their transaction (one statement of each kind for all of
    /// them: in a DuckLake every statement is a round trip to its catalog): the keys commit with the rows or not at
    /// all. A key already there (another host, or a retry racing its original) fails the transaction.
    fn record_keys(
        &mut self,
        txn: &mut RawConn,
        target: &Target,
        keys: &[(&RequestKey, u64, u64)],
    ) -> Result<(), IngestError> {
        let Some((first, _, _)) = keys.first() else { return Ok(()) };
        let table = self.keys_table(target.catalog.as_deref());
        let digests: HashMap<String, &str> =
            keys.iter().map(|(k, _, _)| (key_digest(&k.key), k.key.as_str())).collect();
        let names = digests.keys().cloned().collect::<Vec<_>>().join(", ");
        // A row of the same key older than the window (not purged yet) is forgotten: the key is free again.
        let cutoff = format!("now() - to_microseconds({})", first.window.as_micros());
        let catalog = target.catalog.as_deref().unwrap_or(&self.host_db).to_lowercase();
        if self.keys_unconstrained.contains(&catalog) {
            // No constraint to refuse a second row: look inside this transaction (the keys are in progress on this
            // host, so only a commit elsewhere can have put one there). One query finds live and expired rows (in a
            // DuckLake each statement is a round trip to its catalog); expired ones, rare, are deleted.
            let found = txn
                .query(&format!(
                    "SELECT key_sha256, CASE WHEN committed_at >= {cutoff} THEN 'live' ELSE 'expired' END FROM {table} WHERE key_sha256 IN ({names})"
                ))
                .map_err(E::db)?;
            let mut expired = Vec::new();
            for row in found {
                let mut cells = row.into_iter();
                let (digest, state) = (
                    quote_literal(&cells.next().flatten().unwrap_or_default()),
                    cells.next().flatten().unwrap_or_default(),
                );
                if state == "live" {
                    return Err(IngestError::InProgress(
                        digests.get(&digest).map_or_else(|| digest.clone(), |k| k.to_string()),
                    ));
                }
                expired.push(digest);
            }
            if !expired.is_empty() {
                txn.execute(&format!(
                    "DELETE FROM {table} WHERE key_sha256 IN ({}) AND committed_at < {cutoff}",
                    expired.join(", ")
                ))
                .map_err(E::db)?;
            }
        } else {
            txn.execute(&format!("DELETE FROM {table} WHERE key_sha256 IN ({names}) AND committed_at < {cutoff}"))
                .map_err(E::db)?;
        }
        let rows: Vec<String> = keys
            .iter()
            .map(|(key, rows, batches)| {
                let ack = serde_json::json!({"stream": key.stream, "table": target.display(), "rows": rows, "batches": batches}).to_string();
                format!("({}, {}, {})", key_digest(&key.key), quote_literal(&key.stream), quote_literal(&ack))
            })
            .collect();
        txn.execute(&format!("INSERT INTO {table} (key_sha256, stream, ack) VALUES {}", rows.join(", ")))
            .map_err(E::db)?;
        self.keys_recorded += keys.len() as u64;
        Ok(())
    }

    /// Lands what the scan view holds into the target, inside the caller's transaction: (re)creates the table
    /// when the rule says so, checks the fit, inserts. Returns the rows inserted.
    fn land(
        &mut self,
        txn: &mut RawConn,
        mapping: &Mapping,
        incoming: &[Column],
        table: &mut Vec<Column>,
    ) -> Result<u64, IngestError> {
        let target = &mapping.target;
        let target_sql = target.sql(&self.host_db);
        let view_sql = view_sql(&self.view_name());
        if self.is_lake(txn, target.catalog.as_deref())? {
            schema::check_lake_types(&target.display(), incoming).map_err(IngestError::Conflict)?;
        }
        if mapping.rule == TableRule::Replace {
            txn.execute(&format!("DROP TABLE IF EXISTS {target_sql}")).map_err(E::db)?;
            table.clear();
        } else if table.is_empty() {
            // Someone (or an earlier part of this transaction) may have created it meanwhile.
            *table = self.table_columns_in_txn(txn, target)?;
            if !table.is_empty() && mapping.rule == TableRule::Create {
                return Err(exists_error(target));
            }
        }
        if table.is_empty() {
            txn.execute(&schema::create_table_sql(&target_sql, incoming)).map_err(E::db)?;
            *table = incoming.to_vec();
        }
        let insert = match mapping.policy {
            SchemaPolicy::Strict => {
                schema::check_fits(&target.display(), table, incoming).map_err(IngestError::Conflict)?;
                format!("INSERT INTO {target_sql} SELECT * FROM {view_sql}")
            }
            SchemaPolicy::ByName | SchemaPolicy::Evolve => {
                let evolve = mapping.policy == SchemaPolicy::Evolve;
                let added =
                    schema::check_by_name(&target.display(), table, incoming, evolve).map_err(IngestError::Conflict)?;
                for c in added {
                    txn.execute(&format!(
                        "ALTER TABLE {target_sql} ADD COLUMN {} {}",
                        quote_ident(&c.name),
                        c.sql_type
                    ))
                    .map_err(E::db)?;
                    table.push(c);
                }
                format!("INSERT INTO {target_sql} BY NAME SELECT * FROM {view_sql}")
            }
        };
        if mapping.mode == Mode::Replace {
            txn.execute(&format!("DELETE FROM {target_sql}")).map_err(E::db)?;
        }
        let rows = txn.execute(&insert).map_err(|e| self.view_lost(e))?;
        #[cfg(feature = "test-hooks")]
        if self.panic_on.as_deref() == Some(target.table.as_str()) {
            panic!("test hook: a panic inside the transaction of a request into {}", target.display());
        }
        Ok(rows)
    }

    /// The Arrow schema of a table, as DuckDB exports it; `None` when the table does not exist.
    fn describe_table(&self, conn: &mut RawConn, target: &Target) -> Result<Option<Schema>, IngestError> {
        if self.table_columns(conn, target)?.is_empty() {
            return Ok(None);
        }
        let sql = format!("SELECT * FROM {} LIMIT 0", target.sql(&self.host_db));
        conn.arrow_schema_of(&sql).map(Some).map_err(E::db)
    }

    /// Tables of the host database's main schema, the ones an unmapped stream name lands in.
    fn main_tables(&self, conn: &mut RawConn) -> Result<Vec<(String, Schema)>, IngestError> {
        let sql = format!(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = {} AND schema_name = 'main' ORDER BY 1",
            quote_literal(&self.host_db)
        );
        let names: Vec<String> =
            conn.query(&sql).map_err(E::db)?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let target = Target { catalog: None, schema: "main".into(), table: name.clone() };
            if let Some(s) = self.describe_table(conn, &target)? {
                out.push((name, s));
            }
        }
        Ok(out)
    }
}

impl DuckSink {
    /// One streaming request in its own transaction; the view already points at its batches.
    ///
    /// `handed_out` counts the rows the view's stream gave DuckDB. The INSERT must have inserted exactly those:
    /// the view is visible in the catalog, and if another connection scanned it meanwhile, it took batches of
    /// this request, which then must not commit with rows missing.
    fn write_view(
        &mut self,
        mapping: &Mapping,
        incoming: &[Column],
        failed: &Mutex<Option<IngestError>>,
        fed: &Fed<'_>,
    ) -> Result<Written, IngestError> {
        let started = std::time::Instant::now();
        let DuckSink { conn, at, .. } = self;
        let (mut table, _create_guard) = at.prepare_target(conn, mapping, &mut HashSet::new())?;
        if let Some(key) = fed.key {
            at.ensure_keys(conn, mapping.target.catalog.as_deref(), key.window)?;
        }
        let result = conn.begin().map_err(E::db).and_then(|mut txn| {
            let rows = at.land(&mut txn, mapping, incoming, &mut table)?;
            let given = fed.rows.load(Ordering::SeqCst);
            if rows != given {
                return Err(IngestError::Internal(format!(
                    "the insert took {rows} of the {given} rows the request's stream handed out (was its scan view read by \
                     another connection?); rolled back"
                )));
            }
            if let Some(key) = fed.key {
                at.record_keys(&mut txn, &mapping.target, &[(key, rows, fed.batches.load(Ordering::SeqCst))])?;
            }
            txn.commit().map_err(E::db)?;
            Ok(Written { rows, write_seconds: started.elapsed().as_secs_f64(), retries: 0 })
        });
        // When the input failed while DuckDB was reading it, DuckDB's error only echoes ours.
        result.map_err(|e| failed.lock().ok().and_then(|mut f| f.take()).unwrap_or(e))
    }

    /// A buffered request on its own, in its own transaction.
    fn write_buffered(&mut self, item: &Buffered) -> Result<Written, IngestError> {
        let DuckSink { conn, at, .. } = self;
        let _lake = at.lake_commit_locks(conn, [&item.mapping])?;
        at.ensure_view(conn)?;
        let incoming = at.point_view(conn, Arc::clone(&item.schema), Box::new(VecPull(item.batches.clone().into())))?;
        let fed = Fed {
            rows: &AtomicU64::new(item.rows),
            batches: &AtomicU64::new(item.batches.len() as u64),
            key: item.key.as_ref(),
        };
        let result = self.write_view(&item.mapping, &incoming, &Mutex::new(None), &fed);
        self.at.release_view();
        result
    }

    /// Several buffered requests in one transaction: consecutive requests for the same target with the same
    /// schema become one INSERT. All or nothing; the caller retries each alone when it fails.
    fn try_group(&mut self, items: &[Buffered]) -> Result<(), IngestError> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match runs.last_mut() {
                Some((start, end))
                    if items[*start].mapping == item.mapping
                        && items[*start].schema.fields() == item.schema.fields() =>
                {
                    *end = i + 1
                }
                _ => runs.push((i, i + 1)),
            }
        }
        let DuckSink { conn, at, .. } = self;
        let _lake = at.lake_commit_locks(conn, items.iter().map(|i| &i.mapping))?;
        at.ensure_view(conn)?;
        let mut locked = HashSet::new();
        let mut guards = Vec::new();
        let mut tables = Vec::with_capacity(runs.len());
        for &(start, _) in &runs {
            let (table, guard) = at.prepare_target(conn, &items[start].mapping, &mut locked)?;
            tables.push(table);
            guards.extend(guard);
        }
        for item in items {
            if let Some(key) = &item.key {
                at.ensure_keys(conn, item.mapping.target.catalog.as_deref(), key.window)?;
            }
        }
        let result = conn.begin().map_err(E::db).and_then(|mut txn| {
            for (&(start, end), table) in runs.iter().zip(tables.iter_mut()) {
                let batches: Vec<RecordBatch> =
                    items[start..end].iter().flat_map(|i| i.batches.iter().cloned()).collect();
                let expected: u64 = items[start..end].iter().map(|i| i.rows).sum();
                let incoming =
                    at.point_view(&mut txn, Arc::clone(&items[start].schema), Box::new(VecPull(batches.into())))?;
                let rows = at.land(&mut txn, &items[start].mapping, &incoming, table)?;
                if rows != expected {
                    return Err(IngestError::Internal(format!("a grouped insert wrote {rows} rows of {expected}")));
                }
                let keys: Vec<_> = items[start..end]
                    .iter()
                    .filter_map(|i| Some((i.key.as_ref()?, i.rows, i.batches.len() as u64)))
                    .collect();
                at.record_keys(&mut txn, &items[start].mapping.target, &keys)?;
            }
            txn.commit().map_err(E::db)
        });
        at.release_view();
        drop(guards);
        result
    }
}

/// Feeds DuckDB's scan: the batch already read, then the rest of the request. Remembers the first failure so
/// the request reports it rather than DuckDB's wrapping of it.
struct Pull {
    first: Option<RecordBatch>,
    input: BatchRx,
    failed: Arc<Mutex<Option<IngestError>>>,
    /// Rows and batches handed to DuckDB so far.
    handed_out: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

/// What a request's scan handed DuckDB, and its idempotency key: checked and recorded before commit.
struct Fed<'a> {
    rows: &'a AtomicU64,
    batches: &'a AtomicU64,
    key: Option<&'a RequestKey>,
}

impl BatchPull for Pull {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        let next = match self.first.take() {
            Some(b) => Ok(Some(b)),
            None => self.input.next_batch(),
        };
        match next {
            Ok(Some(b)) => {
                self.handed_out.fetch_add(b.num_rows() as u64, Ordering::SeqCst);
                self.batches.fetch_add(1, Ordering::SeqCst);
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let msg = e.to_string();
                if let Ok(mut f) = self.failed.lock() {
                    f.get_or_insert(e);
                }
                Err(msg)
            }
        }
    }
}

impl Sink for DuckSink {
    fn interrupter(&self) -> Option<Interrupter> {
        let handle = self.conn.interrupter();
        Some(Arc::new(move || handle.interrupt()))
    }

    fn write(
        &mut self,
        mapping: &Mapping,
        schema: SchemaRef,
        mut input: BatchRx,
        key: Option<&RequestKey>,
    ) -> Result<Written, IngestError> {
        // Nothing is created or written for a stream request without rows; in replace mode an existing table is
        // emptied (the request's rows, none, replace the table's). Flight SQL ingest creates (or replaces) the
        // table even from an empty stream, as its mode says.
        let first = input.next_batch()?;
        if first.is_none() && mapping.rule == TableRule::Stream {
            if mapping.mode == Mode::Replace && !self.at.table_columns(&mut self.conn, &mapping.target)?.is_empty() {
                let started = std::time::Instant::now();
                let target_sql = mapping.target.sql(&self.at.host_db);
                let mut txn = self.conn.begin().map_err(E::db)?;
                txn.execute(&format!("DELETE FROM {target_sql}")).map_err(E::db)?;
                txn.commit().map_err(E::db)?;
                return Ok(Written { rows: 0, write_seconds: started.elapsed().as_secs_f64(), retries: 0 });
            }
            return Ok(Written { rows: 0, write_seconds: 0.0, retries: 0 });
        }
        let failed = Arc::new(Mutex::new(None));
        let (handed_out, batches) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let pull = Pull {
            first,
            input,
            failed: Arc::clone(&failed),
            handed_out: Arc::clone(&handed_out),
            batches: Arc::clone(&batches),
        };
        let fed = Fed { rows: &handed_out, batches: &batches, key };
        let DuckSink { conn, at, .. } = self;
        let result = at
            .ensure_view(conn)
            .and_then(|()| at.point_view(conn, schema, Box::new(pull)))
            .and_then(|incoming| self.write_view(mapping, &incoming, &failed, &fed));
        self.at.release_view();
        result
    }

    fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, IngestError>> {
        let started = std::time::Instant::now();
        if items.len() > 1 && self.try_group(items).is_ok() {
            let seconds = started.elapsed().as_secs_f64();
            return items.iter().map(|i| Ok(Written { rows: i.rows, write_seconds: seconds, retries: 0 })).collect();
        }
        // Alone, or the group failed (rolled back): each request on its own, so one cannot fail the others.
        items.iter().map(|i| self.write_buffered(i)).collect()
    }

    fn lookup_key(
        &mut self,
        catalog: Option<&str>,
        key: &str,
        window: std::time::Duration,
    ) -> Result<Option<KeyRecord>, IngestError> {
        self.at.upgrade_keys(&mut self.conn, catalog)?;
        let sql = format!(
            "SELECT stream, ack FROM {} WHERE key_sha256 = {} AND committed_at >= now() - to_microseconds({})",
            self.at.keys_table(catalog),
            key_digest(key),
            window.as_micros()
        );
        match self.conn.query(&sql) {
            Ok(rows) => Ok(rows.into_iter().next().and_then(|r| {
                let mut it = r.into_iter();
                Some(KeyRecord { stream: it.next().flatten()?, ack: it.next().flatten()? })
            })),
            // No key table yet in that catalog: no key was ever recorded there.
            Err(e) if e.is(DbErrorKind::Catalog) => Ok(None),
            Err(e) => Err(E::db(e)),
        }
    }

    fn table_schema(&mut self, target: &Target) -> Result<Option<Schema>, IngestError> {
        self.at.describe_table(&mut self.conn, target)
    }

    fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, IngestError> {
        self.at.main_tables(&mut self.conn)
    }

    fn describe_sql(&mut self, sql: &str, params: Option<&[Param]>, access: Access) -> Result<Described, IngestError> {
        self.preflight(sql, access)?;
        self.remote(access, |conn| {
            let (kind, types) = {
                let p = conn.prepare(sql).map_err(E::sql)?;
                kind_allowed(&p, access)?;
                (p.kind(), p.param_types())
            };
            // A query's columns, for the given values or NULL for each parameter; other statements answer with
            // a row count or nothing, which only running them would show.
            let nulls = vec![Param::Null; types.len()];
            let values = params.unwrap_or(&nulls);
            let schema = match kind {
                StatementKind::Select => conn.select_schema(sql, values).map_err(E::sql)?.unwrap_or_else(Schema::empty),
                _ => Schema::empty(),
            };
            Ok(Described { schema, params: query::param_schema(types) })
        })
    }

    fn query(&mut self, statement: &Statement, access: Access, out: &QueryOut) -> Result<(), IngestError> {
        self.preflight(&statement.sql, access)?;
        self.remote(access, |conn| {
            let kind = {
                let p = conn.prepare(&statement.sql).map_err(E::sql)?;
                kind_allowed(&p, access)?;
                p.kind()
            };
            stream_result(conn, statement, kind, out)
        })
    }

    fn maintain(&mut self, catalog: &str, older_than: std::time::Duration) -> Result<Vec<Maintained>, IngestError> {
        let lit = quote_literal(catalog);
        let cutoff = format!("older_than => now() - to_microseconds({})", older_than.as_micros());
        let steps: [(&'static str, String); 4] = [
            ("ducklake_flush_inlined_data", format!("CALL ducklake_flush_inlined_data({lit})")),
            ("ducklake_merge_adjacent_files", format!("CALL ducklake_merge_adjacent_files({lit})")),
            ("ducklake_expire_snapshots", format!("CALL ducklake_expire_snapshots({lit}, {cutoff})")),
            ("ducklake_cleanup_old_files", format!("CALL ducklake_cleanup_old_files({lit}, {cutoff})")),
        ];
        if !self.at.is_lake(&mut self.conn, Some(catalog))? {
            return Err(IngestError::BadInput(format!("{catalog:?} is not an attached DuckLake catalog")));
        }
        let mut done = Vec::with_capacity(steps.len());
        for (step, sql) in steps {
            let started = std::time::Instant::now();
            let rows = self.conn.query(&sql).map_err(IngestError::db)?;
            done.push(Maintained { step, rows: rows.len() as u64, seconds: started.elapsed().as_secs_f64() });
        }
        Ok(done)
    }

    fn export(&mut self, sql: &str, out: &QueryOut) -> Result<(), IngestError> {
        let id = self.at.id;
        self.on_host_db(|conn| {
            // DuckDB's types without an Arrow equivalent (HUGEINT, UHUGEINT, UUID, TIME WITH TIME ZONE, BIT,
            // BIGNUM) go out as Arrow extension types a DuckDB receiver reads back as the same type; without this
            // setting DuckDB sends UUID as text and UHUGEINT as a DECIMAL(38,0) that wraps above 10^38.
            // How far DuckDB's threads may run ahead of the reader of a streaming result: 10 MiB by default in DuckDB
            // 2.0 (1.5: 976 KiB). At the rate a send reads, that much in flight left DuckDB's allocator holding
            // 150-250 MiB more (100M rows, measured); 1 MiB keeps a send's memory flat at the same speed.
            // Both are reset below whatever happens, the first even when the second cannot be set.
            let exported = conn
                .execute("SET SESSION arrow_lossless_conversion = true")
                .and_then(|_| conn.execute("SET SESSION streaming_buffer_size = '1MB'"))
                .and_then(|_| conn.begin_read_only())
                .map_err(E::db)
                .and_then(|mut txn| {
                    let kind = txn.prepare(sql).map_err(E::sql)?.kind();
                    if kind != StatementKind::Select {
                        return Err(IngestError::BadInput(
                            "the query must be a statement that returns rows (SELECT, FROM, VALUES, ...)".into(),
                        ));
                    }
                    stream_result(&mut txn, &Statement { sql: sql.to_string(), params: Vec::new() }, kind, out)?;
                    txn.commit().map_err(E::db)
                });
            for setting in ["arrow_lossless_conversion", "streaming_buffer_size"] {
                if let Err(e) = conn.execute_past_interrupts(&format!("RESET SESSION {setting}")) {
                    eprintln!("arrowport: could not restore writer {id} after a query: {e}");
                }
            }
            exported
        })
    }

    fn update(&mut self, statement: &Statement, access: Access) -> Result<u64, IngestError> {
        self.preflight(&statement.sql, access)?;
        self.remote(access, |conn| {
            let mut p = conn.prepare(&statement.sql).map_err(E::sql)?;
            kind_allowed(&p, access)?;
            let no_params = [Vec::new()];
            let runs: &[Vec<Param>] = if statement.params.is_empty() { &no_params } else { &statement.params };
            let mut changed = 0;
            for params in runs {
                p.bind(params).map_err(E::sql)?;
                changed += p.execute_update().map_err(E::sql)?;
            }
            Ok(changed)
        })
    }

    fn catalog(&mut self, with_schemas: bool) -> Result<Catalog, IngestError> {
        let conn = &mut self.conn;
        let own = format!("database_name NOT IN ({}, 'temp', 'system')", quote_literal(SCRATCH_DB));
        let text = |rows: Vec<Vec<Option<String>>>| -> Vec<Vec<String>> {
            rows.into_iter().map(|r| r.into_iter().map(Option::unwrap_or_default).collect()).collect()
        };
        let catalogs = text(
            conn.query(&format!("SELECT database_name FROM duckdb_databases() WHERE {own} ORDER BY 1"))
                .map_err(E::db)?,
        );
        let schemas = text(
            conn.query(&format!("SELECT database_name, schema_name FROM duckdb_schemas() WHERE {own} ORDER BY 1, 2"))
                .map_err(E::db)?,
        );
        let tables = text(
            conn.query(&format!(
                "SELECT database_name, schema_name, table_name, 'TABLE' FROM duckdb_tables() WHERE {own} AND NOT temporary \
                 UNION ALL SELECT database_name, schema_name, view_name, 'VIEW' FROM duckdb_views() WHERE {own} AND NOT internal \
                 AND NOT temporary ORDER BY 1, 2, 3"
            ))
            .map_err(E::db)?,
        );
        let mut out = Catalog {
            catalogs: catalogs.into_iter().filter_map(|r| r.into_iter().next()).collect(),
            schemas: schemas.into_iter().filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone()))).collect(),
            tables: Vec::with_capacity(tables.len()),
        };
        for r in tables {
            let [catalog, schema, name, kind] =
                <[String; 4]>::try_from(r).map_err(|_| IngestError::Internal("catalog row".into()))?;
            let arrow = if with_schemas {
                let sql = format!(
                    "SELECT * FROM {}.{}.{} LIMIT 0",
                    quote_ident(&catalog),
                    quote_ident(&schema),
                    quote_ident(&name)
                );
                Some(conn.arrow_schema_of(&sql).map_err(E::db)?)
            } else {
                None
            };
            out.tables.push(TableEntry { catalog, schema, name, kind, arrow });
        }
        Ok(out)
    }
}

/// Runs a statement (once per parameter row) and sends its schema, then its batches, to `out`.
fn stream_result(
    conn: &mut RawConn,
    statement: &Statement,
    kind: StatementKind,
    out: &QueryOut,
) -> Result<(), IngestError> {
    let no_params = [Vec::new()];
    let runs: &[Vec<Param>] = if statement.params.is_empty() { &no_params } else { &statement.params };
    let mut schema_sent = false;
    let mut send_schema = |schema: SchemaRef| -> Result<(), IngestError> {
        if !schema_sent {
            schema_sent = true;
            out.send(QueryItem::Schema(schema))?;
        }
        Ok(())
    };
    for params in runs {
        // A query streams: DuckDB's Arrow schema for it comes from running it wrapped with LIMIT 0.
        let streaming_schema = if kind == StatementKind::Select {
            conn.select_schema(&statement.sql, params).map_err(E::sql)?
        } else {
            None
        };
        let mut p = conn.prepare(&statement.sql).map_err(E::sql)?;
        p.bind(params).map_err(E::sql)?;
        match streaming_schema {
            Some(schema) => {
                let mut rows = p.execute(&schema).map_err(E::sql)?;
                send_schema(rows.schema())?;
                while let Some(batch) = rows.next_batch().map_err(E::sql)? {
                    out.batch(batch)?;
                }
            }
            None => {
                let (schema, batches) = p.execute_materialized().map_err(E::sql)?;
                send_schema(schema)?;
                for batch in batches {
                    out.batch(batch)?;
                }
            }
        }
    }
    out.finish()
}

/// Refuses what a network statement left in the connection's temporary catalog (the caller rolls back).
fn refuse_temporary_objects(conn: &mut RawConn) -> Result<(), IngestError> {
    let left = conn
        .query_value(
            "SELECT (SELECT count(*) FROM duckdb_tables() WHERE database_name = 'temp') \
             + (SELECT count(*) FROM duckdb_views() WHERE database_name = 'temp' AND NOT internal) \
             + (SELECT count(*) FROM duckdb_sequences() WHERE database_name = 'temp') \
             + (SELECT count(*) FROM duckdb_types() WHERE database_name = 'temp' AND NOT internal)",
        )
        .map_err(E::db)?;
    match left.as_deref() {
        Some("0") => Ok(()),
        _ => Err(IngestError::Denied(
            "temporary tables, views, sequences and types are not accepted over the network: statements share arrowport's \
             connections, so a temporary object would outlive its statement; create a table in a schema instead"
                .into(),
        )),
    }
}

/// Whether the listener's access allows this statement's kind (as DuckDB prepared it).
fn kind_allowed(p: &Prepared<'_>, access: Access) -> Result<(), IngestError> {
    match (p.kind(), access) {
        (StatementKind::Transaction, _) => {
            Err(IngestError::Denied("transaction statements are not accepted over the network: every statement commits on its own".into()))
        }
        (StatementKind::Instance(keyword), _) => Err(IngestError::Denied(format!(
            "{keyword} statements are not accepted over the network: they change the host's database instance (its settings, \
             extensions or attached databases), not data; run them in the host's own session"
        ))),
        (StatementKind::Function, _) => Err(IngestError::Denied("CREATE MACRO / CREATE FUNCTION is not accepted over the network".into())),
        (StatementKind::Select, _) | (_, Access::ReadWrite) => Ok(()),
        (_, _) => Err(IngestError::Denied(
            "this listener runs only statements that read (sql := 'read_only'); this statement would change the database".into(),
        )),
    }
}

/// A statement interrupted so that an administrative function could run says so (it may have been the one
/// calling it: then this is its refusal).
fn explain_interrupt<T>((out, by): (Result<T, IngestError>, Option<&'static str>)) -> Result<T, IngestError> {
    match (out, by) {
        (Err(IngestError::Sql(e)), Some(function)) if e.is(DbErrorKind::Interrupted) => Err(IngestError::Sql(e.with_message(format!(
            "{e} (interrupted so that {function} could run in the host's session; {function} cannot be called over the network)"
        )))),
        (out, _) => out,
    }
}

/// How many `query('...')` texts one statement may nest.
const MAX_NESTED_TEXTS: usize = 16;

impl DuckSink {
    /// Checks a statement sent over the network before DuckDB binds it (see `sql_tree`), parsed without binding:
    /// no table it names (nor a name it gives `query_table`) may be in arrowport's schema or scratch database.
    /// With `read_only` it must also be a query, call no function with side effects, and call only functions the
    /// host already has. The constant texts given to `query()` are checked the same way. A `read_write`
    /// statement DuckDB's serializer does not take (anything but SELECT) is checked by its names.
    fn preflight(&mut self, sql: &str, access: Access) -> Result<(), IngestError> {
        let strictness = match access {
            Access::Off => return Ok(()),
            Access::ReadOnly => Strictness::ReadOnly,
            Access::ReadWrite => Strictness::ReadWrite,
        };
        let mut texts = vec![sql.to_string()];
        let mut checked = 0;
        while let Some(text) = texts.pop() {
            checked += 1;
            if checked > MAX_NESTED_TEXTS {
                return Err(IngestError::Denied(format!("query() texts nest more than {MAX_NESTED_TEXTS} deep")));
            }
            let serialized = self
                .conn
                .query_value(&format!("SELECT json_serialize_sql({})", quote_literal(&text)))
                .map_err(E::db)?;
            let calls = match sql_tree::calls_of(&serialized.unwrap_or_default(), strictness) {
                Ok(calls) => calls,
                Err(Refusal::Invalid(m)) => return Err(IngestError::Sql(DbError::from_text(m))),
                // Not a query (or one the serializer cannot describe): read_write reads its names.
                Err(_) if strictness == Strictness::ReadWrite => {
                    policy::check_identifiers(&text)?;
                    continue;
                }
                Err(other) => return Err(IngestError::Denied(other.message())),
            };
            policy::check_tables(&calls)?;
            if strictness == Strictness::ReadOnly {
                self.only_known_functions(&calls.functions)?;
            }
            texts.extend(calls.nested);
        }
        Ok(())
    }

    /// Refuses a call of a function the host does not have (binding it would make DuckDB load an extension).
    fn only_known_functions(&mut self, functions: &[String]) -> Result<(), IngestError> {
        for f in functions {
            if !self.known_functions.contains(f) {
                let rows =
                    self.conn.query("SELECT DISTINCT lower(function_name) FROM duckdb_functions()").map_err(E::db)?;
                self.known_functions = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
                if !self.known_functions.contains(f) {
                    return Err(IngestError::Denied(format!(
                        "{f}() is not a function this host has; a statement sent over the network calls only functions \
                         already loaded (no extension is loaded on a client's behalf)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs a statement sent over the network on this connection: with the host database as the default (our
    /// connections default to the scratch database), inside a read-only transaction when the listener says so,
    /// with arrowport's own SQL functions refusing to run; then restores the connection.
    ///
    /// With `read_write`, the statement runs in a transaction of ours that commits only if it left no temporary
    /// object: the statement pool's connections serve every client in turn, so a temporary table, view, sequence
    /// or type would outlive its statement and be seen (or shadow names) in the next client's.
    fn remote<T>(
        &mut self,
        access: Access,
        f: impl FnOnce(&mut RawConn) -> Result<T, IngestError>,
    ) -> Result<T, IngestError> {
        self.on_host_db(|conn| {
            let begun = if access == Access::ReadOnly { conn.begin_read_only() } else { conn.begin() };
            begun.map_err(E::db).and_then(|mut txn| {
                let out = explain_interrupt(policy::as_remote(|| f(&mut txn)))?;
                if access != Access::ReadOnly {
                    refuse_temporary_objects(&mut txn)?;
                }
                txn.commit().map_err(E::db)?;
                Ok(out)
            })
        })
    }

    /// Runs `f` with the host database as this connection's default (our connections default to the scratch
    /// database), then restores the scratch database, whatever `f` did.
    fn on_host_db<T>(&mut self, f: impl FnOnce(&mut RawConn) -> Result<T, IngestError>) -> Result<T, IngestError> {
        self.conn.execute(&format!("USE {}", quote_ident(&self.at.host_db))).map_err(E::db)?;
        let out = f(&mut self.conn);
        if let Err(e) = self.conn.execute_past_interrupts(&format!("USE {}", quote_ident(SCRATCH_DB))) {
            eprintln!("arrowport: could not restore writer {} after a statement: {e}", self.at.id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_locks_exclude_per_key_only() {
        let locks = Arc::new(CreateLocks::default());
        let a = locks.lock("a".into());
        let _b = locks.lock("b".into());
        let l2 = Arc::clone(&locks);
        let waiter = std::thread::spawn(move || {
            let _a = l2.lock("a".into());
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!waiter.is_finished());
        drop(a);
        waiter.join().unwrap();
    }
}
