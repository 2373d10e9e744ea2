//! The DuckDB side of a write ([`DuckSession`], the production [`Session`]): a streamed request becomes one
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
//!
//! The files: `landing` (a request or a group into its target, through the scan view), `keys` (the idempotency
//! keys table), `merge` (streams that merge on a key), `lake` (what is particular to DuckLake catalogs: commit turns, maintenance), `remote` (statements
//! sent over the network and catalog browsing: checked, run on the statement pool's connections).

mod keys;
mod lake;
mod landing;
mod merge;
mod positions;
mod read_follow;
mod remote;

use landing::{Arrival, HandedOut, ScanFeed, view_sql};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::catalog::access::to_hex;
use crate::catalog::registry::{CURSOR_COLUMN, Mapping, Mode, OWN_SCHEMA, SchemaPolicy, TableRule, Target};
use crate::catalog::schema::{self, Column, quote_ident, quote_literal};
use crate::duck::conn::RawConn;
use crate::duck::scan::{BatchPull, ScanStream};
use crate::duck::statement::{Prepared, StatementKind};
use crate::duck::{DbError, DbErrorKind};
use crate::engine::error::EngineError;
use crate::engine::error::EngineError as E;
use crate::engine::policy::{self, Access};
use crate::engine::query;
use crate::engine::session::{
    BatchRx, Buffered, Catalog, Described, Interrupter, KeyLookup, KeyRecord, Maintained, Param, QueryItem, QueryOut,
    RequestKey, Session, Statement, TableEntry, Written,
};

/// The attached in-memory database that holds the per-request scan views.
pub use crate::engine::policy::SCRATCH_DB;

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
pub struct DuckSession {
    conn: RawConn,
    at: Landing,
    /// Function names the host has (lower case), as last read, for [`DuckSession::preflight`].
    known_functions: HashSet<String>,
    /// Whether the connection converts results to Arrow losslessly now (followers' reads leave it so; every
    /// statement sent over the network runs without).
    lossless: bool,
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
    /// The idempotency key tables of the catalogs this writer wrote to.
    keys: keys::KeyTables,
    /// The position the last landing into a followable table took (read after its commit).
    position: Option<(String, i64)>,
    /// Followable tables whose row in `arrowport.positions` this writer made sure of.
    positions_ready: HashSet<String>,
    /// Catalogs known to be DuckLakes (true) or not.
    lakes: HashMap<String, bool>,
    /// DuckLake tables this writer's last grouped commit into them found there (see `Landing::lake_columns_later`).
    lake_tables: HashSet<String>,
    /// DuckLake's retry pause (ms) last set on this writer's connection (`lake_retry_wait`).
    lake_retry_wait_ms: Option<u128>,
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

impl Drop for DuckSession {
    fn drop(&mut self) {
        // The view points at our stream: it goes first.
        if self.at.scan.is_some() {
            let _ = self.conn.execute(&format!("DROP VIEW IF EXISTS {}", view_sql(&self.at.view_name())));
        }
    }
}

impl DuckSession {
    /// Readies a pooled connection: remembers the host database's name, attaches the scratch database and makes
    /// it the connection's default, so scan views land there.
    pub fn prepare(mut conn: RawConn, id: usize, locks: Arc<CreateLocks>) -> Result<DuckSession, DbError> {
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
            keys: keys::KeyTables::default(),
            position: None,
            positions_ready: HashSet::new(),
            lakes: HashMap::new(),
            lake_tables: HashSet::new(),
            lake_retry_wait_ms: None,
            #[cfg(feature = "test-hooks")]
            panic_on: test_hook_panic_table(),
        };
        Ok(DuckSession { conn, at, known_functions: HashSet::new(), lossless: false })
    }
}

impl Session for DuckSession {
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
    ) -> Result<Written, EngineError> {
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
                return Ok(Written { rows: 0, write_seconds: started.elapsed().as_secs_f64(), ..Default::default() });
            }
            return Ok(Written { rows: 0, write_seconds: 0.0, ..Default::default() });
        }
        let failed = Arc::new(Mutex::new(None));
        let (handed_out, batches) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let pull = ScanFeed {
            first,
            input,
            failed: Arc::clone(&failed),
            handed_out: Arc::clone(&handed_out),
            batches: Arc::clone(&batches),
        };
        let fed = HandedOut { rows: &handed_out, batches: &batches, key };
        let DuckSession { conn, at, .. } = self;
        let result = at
            .ensure_view(conn)
            .and_then(|()| at.scan_input(conn, mapping, schema, Box::new(pull), &failed))
            .and_then(|(schema, pull)| at.point_view(conn, schema, pull))
            .and_then(|incoming| self.write_view(mapping, &incoming, &failed, &fed));
        self.at.release_view();
        result
    }

    fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, EngineError>> {
        let started = std::time::Instant::now();
        if items.len() > 1
            && let Ok(positions) = self.try_group(items)
        {
            let seconds = started.elapsed().as_secs_f64();
            return items
                .iter()
                .zip(positions)
                .map(|(i, position)| Ok(Written { rows: i.rows, write_seconds: seconds, retries: 0, position }))
                .collect();
        }
        // Alone, or the group failed (rolled back): each request on its own, so one cannot fail the others.
        items.iter().map(|i| self.write_buffered(i)).collect()
    }

    fn lookup_key(
        &mut self,
        catalog: Option<&str>,
        key: &str,
        window: std::time::Duration,
    ) -> Result<KeyLookup, EngineError> {
        let record = self.lookup_key_in(catalog, key, window)?;
        let checked_at_commit = self.at.is_lake(&mut self.conn, catalog)?;
        Ok(KeyLookup { record, checked_at_commit })
    }

    fn table_schema(&mut self, target: &Target) -> Result<Option<Schema>, EngineError> {
        self.at.describe_table(&mut self.conn, target)
    }

    fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, EngineError> {
        self.at.main_tables(&mut self.conn)
    }

    fn describe_sql(&mut self, sql: &str, params: Option<&[Param]>, access: Access) -> Result<Described, EngineError> {
        self.describe_statement(sql, params, access)
    }

    fn query(&mut self, statement: &Statement, access: Access, out: &QueryOut) -> Result<(), EngineError> {
        self.run_query(statement, access, out)
    }

    fn maintain(&mut self, catalog: &str, older_than: std::time::Duration) -> Result<Vec<Maintained>, EngineError> {
        self.maintain_lake(catalog, older_than)
    }

    fn export(&mut self, sql: &str, out: &QueryOut) -> Result<(), EngineError> {
        self.export_query(sql, out)
    }

    fn follow_read(
        &mut self,
        target: &Target,
        columns: &str,
        after: i64,
        limit: usize,
        ordered: bool,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), EngineError> {
        self.read_for_followers(target, columns, after, limit, ordered)
    }

    fn update(&mut self, statement: &Statement, access: Access) -> Result<u64, EngineError> {
        self.run_update(statement, access)
    }

    fn catalog(&mut self, with_schemas: bool) -> Result<Catalog, EngineError> {
        self.read_catalog(with_schemas)
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
