//! Landing a request: the writer's scan view pointed at the request's batches, the target made or checked
//! against the batches' schema, one INSERT, inside the caller's transaction; a group of small requests in one.

use super::*;

/// Arrow schemas whose DuckDB columns a writer remembers.
pub(super) const DESCRIBED_CACHE: usize = 256;

pub(super) fn exists_error(target: &Target) -> EngineError {
    EngineError::AlreadyExists(format!(
        "table {} already exists (ingest mode create); use mode append, replace or create_append",
        target.display()
    ))
}

/// The turns of followable tables a transaction holds (see `positions`), given back when dropped.
pub(super) struct Turns {
    _held: Vec<CreateGuard>,
}

impl Landing {
    /// Takes the turn of every followable table among `mappings` (in one order, so two groups cannot wait on
    /// each other), after making sure their positions exist.
    pub(super) fn follow_turns<'m>(
        &mut self,
        conn: &mut RawConn,
        mappings: impl IntoIterator<Item = &'m Mapping>,
    ) -> Result<Turns, EngineError> {
        let mut keys = std::collections::BTreeMap::new();
        for m in mappings.into_iter().filter(|m| m.follow) {
            keys.entry(self.follow_key(&m.target)).or_insert_with(|| m.target.clone());
        }
        let mut turns = Vec::with_capacity(keys.len());
        for (key, target) in keys {
            self.ensure_positions(conn, &target)?;
            turns.push(self.locks.lock(format!("follow {key}")));
        }
        Ok(Turns { _held: turns })
    }
}

/// What a landing wrote.
pub(super) enum Landed {
    /// Rows inserted, to check against the rows the request's scan handed out.
    Inserted(u64),
    /// A keyed stream's rows merged: updates, deletes and skipped rows are not inserted rows, so there is no
    /// count to check (the scan view is in the scratch database, which no network client's SQL can name).
    Merged,
}

/// Where a landing's scan view reads from, which decides how its statements are run.
#[derive(Clone, Copy)]
pub(super) enum Arrival {
    /// A streaming request's batches as they arrive: the statement can run for long, much of it waiting for the
    /// network or for DuckDB's other threads, so it runs as [`RawConn::execute_long`] runs (which waits instead of
    /// asking DuckDB for work in a loop).
    Streaming,
    /// A group's batches, already in memory: short statements, run the plain way.
    Buffered,
}

impl Arrival {
    pub(super) fn run(self, txn: &mut RawConn, sql: &str) -> Result<u64, DbError> {
        match self {
            Arrival::Streaming => txn.execute_long(sql),
            Arrival::Buffered => txn.execute(sql),
        }
    }
}

/// Batches already in memory, for DuckDB's scan.
pub(super) struct VecPull(std::collections::VecDeque<RecordBatch>);

impl BatchPull for VecPull {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        Ok(self.0.pop_front())
    }
}

pub(super) fn view_sql(view: &str) -> String {
    format!("{}.main.{}", quote_ident(SCRATCH_DB), quote_ident(view))
}

pub(super) fn columns(rows: Vec<Vec<Option<String>>>) -> Vec<Column> {
    rows.into_iter()
        .map(|r| {
            let mut it = r.into_iter();
            Column { name: it.next().flatten().unwrap_or_default(), sql_type: it.next().flatten().unwrap_or_default() }
        })
        .collect()
}

impl Landing {
    /// The target's columns, or an empty list when it does not exist.
    /// `DESCRIBE` of the one table: a catalog lookup, where scanning `duckdb_columns()` costs a millisecond or
    /// two per request. A missing table (or schema, or catalog) is DuckDB's Catalog Error, which would abort a
    /// transaction: outside transactions only (inside, [`Self::table_columns_in_txn`]).
    pub(super) fn table_columns(&self, conn: &mut RawConn, target: &Target) -> Result<Vec<Column>, EngineError> {
        match conn.query(&format!("DESCRIBE {}", target.sql(&self.host_db))) {
            Ok(rows) => Ok(columns(rows)),
            Err(e) if e.is(DbErrorKind::Catalog) => Ok(vec![]),
            Err(e) => Err(E::db(e)),
        }
    }

    /// The target's columns from `duckdb_columns()`, which answers for a missing table without an error.
    pub(super) fn table_columns_in_txn(&self, conn: &mut RawConn, target: &Target) -> Result<Vec<Column>, EngineError> {
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
    pub(super) fn ensure_view(&mut self, conn: &mut RawConn) -> Result<(), EngineError> {
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
    pub(super) fn point_view(
        &mut self,
        conn: &mut RawConn,
        schema: SchemaRef,
        pull: Box<dyn BatchPull>,
    ) -> Result<Vec<Column>, EngineError> {
        let Some(stream) = self.scan.as_mut() else {
            return Err(EngineError::Internal("the scan view was not made".into()));
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
    pub(super) fn view_lost(&mut self, e: DbError) -> EngineError {
        if e.is(DbErrorKind::Catalog) {
            self.scan = None;
        }
        E::db(e)
    }

    /// Lets go of the last request's batches (and its channel).
    pub(super) fn release_view(&mut self) {
        if let Some(stream) = self.scan.as_mut() {
            stream.reset(Arc::new(Schema::empty()), Box::new(VecPull(Vec::new().into())));
        }
    }

    pub(super) fn view_name(&self) -> String {
        format!("arrowport_in_{}", self.id)
    }

    /// Checks a target against the request's rule before any transaction: its columns (empty when missing),
    /// and the create lock when this request may create (or recreate) it.
    pub(super) fn prepare_target(
        &self,
        conn: &mut RawConn,
        mapping: &Mapping,
        locked: &mut HashSet<String>,
    ) -> Result<(Vec<Column>, Option<CreateGuard>), EngineError> {
        let target = &mapping.target;
        self.check_landable(target)?;
        let table = self.table_columns(conn, target)?;
        match (table.is_empty(), mapping.rule) {
            (false, TableRule::Create) => return Err(exists_error(target)),
            (true, TableRule::Append) => {
                return Err(EngineError::NotFound(format!(
                    "table {} does not exist (ingest mode append does not create it)",
                    target.display()
                )));
            }
            (true, TableRule::Stream) if !mapping.create_table => {
                return Err(EngineError::NotFound(format!(
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

    /// A run's keys in a catalog without a key constraint (a DuckLake), checked before the group's transaction:
    /// the expired rows found (to delete in the transaction), or `None` when there is nothing to check here. In a
    /// DuckLake the check reads the keys table (its files, its inlined rows: several catalog statements); outside
    /// the transaction that time is not part of the span in which another host's commit makes this one lose the
    /// race for the lake's next snapshot. What it can miss, a commit of the same key elsewhere between the check and
    /// this transaction's start, is a request running on two hosts at once, which the check inside did not exclude
    /// either (a DuckLake refuses no second row).
    pub(super) fn prechecked(&self, conn: &mut RawConn, run: &[Buffered]) -> Result<Option<Vec<String>>, EngineError> {
        let target = &run[0].mapping.target;
        let keys = keys::run_keys(run);
        if keys.is_empty() || !self.keys_unconstrained(target) {
            return Ok(None);
        }
        self.check_keys(conn, target, &keys).map(Some)
    }

    /// Whether a grouped commit reads its target's columns inside its own transaction rather than before it: for
    /// a DuckLake table this writer's last grouped commit found there (appended to, not created or replaced). A
    /// look before the transaction is a transaction of its own in the lake's catalog; inside, the lake answers from
    /// the transaction's own snapshot. A table dropped meanwhile fails the group (its requests then go one by one,
    /// each with a look before it, and the table is forgotten).
    pub(super) fn lake_columns_later(&self, mapping: &Mapping) -> Result<bool, EngineError> {
        let target = &mapping.target;
        if !matches!(mapping.rule, TableRule::Stream | TableRule::Append | TableRule::CreateAppend)
            || !self.lake_tables.contains(&target.sql(&self.host_db).to_lowercase())
        {
            return Ok(false);
        }
        self.check_landable(target)?;
        Ok(true)
    }

    /// Refuses a target in arrowport's own state, however it is spelled: the host database's `arrowport` schema
    /// (stream mappings, tokens) and the scratch database (the writers' scan views). Every ingest path, whatever
    /// its protocol, resolves its target here before anything is read or written.
    /// The `arrowport` schema of any catalog holds arrowport's state too: idempotency keys live beside the rows
    /// they vouch for.
    pub(super) fn check_landable(&self, target: &Target) -> Result<(), EngineError> {
        let catalog = target.catalog.as_deref().unwrap_or(&self.host_db);
        let own = catalog.eq_ignore_ascii_case(SCRATCH_DB) || target.schema.eq_ignore_ascii_case(OWN_SCHEMA);
        if own {
            return Err(EngineError::Denied(format!(
                "{} holds arrowport's own state; no request may write there",
                target.display()
            )));
        }
        Ok(())
    }

    /// Lands what the scan view holds into the target, inside the caller's transaction: (re)creates the table
    /// when the rule says so, checks the fit, inserts (or merges, for a keyed stream).
    pub(super) fn land(
        &mut self,
        txn: &mut RawConn,
        mapping: &Mapping,
        incoming: &[Column],
        table: &mut Vec<Column>,
        arrival: Arrival,
    ) -> Result<Landed, EngineError> {
        let target = &mapping.target;
        let target_sql = target.sql(&self.host_db);
        let view_sql = view_sql(&self.view_name());
        let keyed = mapping.is_keyed();
        let (data, deletes) = if keyed { self.keyed_columns(mapping, incoming)? } else { (incoming.to_vec(), false) };
        if self.is_lake(txn, target.catalog.as_deref())? {
            schema::check_lake_types(&target.display(), &data).map_err(EngineError::Conflict)?;
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
        let cursor = Column { name: CURSOR_COLUMN.to_string(), sql_type: "BIGINT".to_string() };
        if table.is_empty() {
            let mut columns = data.clone();
            if mapping.follow {
                columns.push(cursor.clone());
            }
            txn.execute(&schema::create_table_sql(&target_sql, &columns)).map_err(E::db)?;
            *table = columns;
        }
        // A followable stream's table has its cursor column besides the stream's columns (added when missing:
        // rows from before hold NULL there, and are not part of what followers read).
        let (fits, has_cursor) = if mapping.follow { Self::without_cursor(table) } else { (table.clone(), false) };
        if mapping.follow && !has_cursor {
            txn.execute(&format!("ALTER TABLE {target_sql} ADD COLUMN {} BIGINT", quote_ident(CURSOR_COLUMN)))
                .map_err(E::db)?;
            table.push(cursor);
        }
        let by_name = match mapping.policy {
            SchemaPolicy::Strict => {
                schema::check_fits(&target.display(), &fits, &data).map_err(EngineError::Conflict)?;
                ""
            }
            SchemaPolicy::ByName | SchemaPolicy::Evolve => {
                let evolve = mapping.policy == SchemaPolicy::Evolve;
                let added =
                    schema::check_by_name(&target.display(), &fits, &data, evolve).map_err(EngineError::Conflict)?;
                for c in added {
                    txn.execute(&format!(
                        "ALTER TABLE {target_sql} ADD COLUMN {} {}",
                        quote_ident(&c.name),
                        c.sql_type
                    ))
                    .map_err(E::db)?;
                    table.push(c);
                }
                " BY NAME"
            }
        };
        if mapping.mode == Mode::Replace {
            txn.execute(&format!("DELETE FROM {target_sql}")).map_err(E::db)?;
        }
        let landed = if keyed {
            self.merge_rows(txn, mapping, &data, deletes, table, arrival)?;
            Landed::Merged
        } else if mapping.follow {
            // Each row its own position, past the table's last: the follower's cursor can stop at any row.
            let last = self.last_position(txn, target)?;
            let insert = format!(
                "INSERT INTO {target_sql} BY NAME SELECT *, {last}::BIGINT + row_number() OVER () AS {} FROM {view_sql}",
                quote_ident(CURSOR_COLUMN)
            );
            let rows = arrival.run(txn, &insert).map_err(|e| self.view_lost(e))?;
            let position = self.advance_position(txn, target, last + rows as i64)?;
            self.position = Some((self.follow_key(target), position));
            Landed::Inserted(rows)
        } else {
            let insert = format!("INSERT INTO {target_sql}{by_name} SELECT * FROM {view_sql}");
            Landed::Inserted(arrival.run(txn, &insert).map_err(|e| self.view_lost(e))?)
        };
        #[cfg(feature = "test-hooks")]
        if self.panic_on.as_deref() == Some(target.table.as_str()) {
            panic!("test hook: a panic inside the transaction of a request into {}", target.display());
        }
        Ok(landed)
    }

    /// The Arrow schema of a table, as DuckDB exports it; `None` when the table does not exist.
    pub(super) fn describe_table(&self, conn: &mut RawConn, target: &Target) -> Result<Option<Schema>, EngineError> {
        if self.table_columns(conn, target)?.is_empty() {
            return Ok(None);
        }
        let sql = format!("SELECT * FROM {} LIMIT 0", target.sql(&self.host_db));
        conn.arrow_schema_of(&sql).map(Some).map_err(E::db)
    }

    /// Tables of the host database's main schema, the ones an unmapped stream name lands in.
    pub(super) fn main_tables(&self, conn: &mut RawConn) -> Result<Vec<(String, Schema)>, EngineError> {
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

impl DuckSession {
    /// One streaming request in its own transaction; the view already points at its batches.
    ///
    /// `handed_out` counts the rows the view's stream gave DuckDB. The INSERT must have inserted exactly those:
    /// the view is visible in the catalog, and if another connection scanned it meanwhile, it took batches of
    /// this request, which then must not commit with rows missing.
    pub(super) fn write_view(
        &mut self,
        mapping: &Mapping,
        incoming: &[Column],
        failed: &Mutex<Option<EngineError>>,
        fed: &HandedOut<'_>,
    ) -> Result<Written, EngineError> {
        let started = std::time::Instant::now();
        let DuckSession { conn, at, .. } = self;
        let (mut table, _create_guard) = at.prepare_target(conn, mapping, &mut HashSet::new())?;
        if let Some(key) = fed.key {
            at.ensure_keys(conn, mapping.target.catalog.as_deref(), key.window)?;
        }
        let _turn = at.follow_turns(conn, [mapping])?;
        at.position = None;
        let result = conn.begin().map_err(E::db).and_then(|mut txn| {
            let landed = at.land(&mut txn, mapping, incoming, &mut table, Arrival::Streaming)?;
            let given = fed.rows.load(Ordering::SeqCst);
            let rows = match landed {
                Landed::Inserted(rows) => rows,
                Landed::Merged => given,
            };
            if rows != given {
                return Err(EngineError::Internal(format!(
                    "the insert took {rows} of the {given} rows the request's stream handed out (was its scan view read by \
                     another connection?); rolled back"
                )));
            }
            if let Some(key) = fed.key {
                at.record_keys(&mut txn, &mapping.target, &[(key, rows, fed.batches.load(Ordering::SeqCst))], None)?;
            }
            txn.commit().map_err(E::db)?;
            let position = at.position.take();
            Ok(Written { rows, write_seconds: started.elapsed().as_secs_f64(), retries: 0, position })
        });
        // When the input failed while DuckDB was reading it, DuckDB's error only echoes ours.
        result.map_err(|e| failed.lock().ok().and_then(|mut f| f.take()).unwrap_or(e))
    }

    /// A buffered request on its own, in its own transaction.
    pub(super) fn write_buffered(&mut self, item: &Buffered) -> Result<Written, EngineError> {
        let DuckSession { conn, at, .. } = self;
        let _lake = at.lake_commit_locks(conn, [&item.mapping], item.commit_retry_wait)?;
        at.ensure_view(conn)?;
        let failed = Arc::new(Mutex::new(None));
        let pull = Box::new(VecPull(item.batches.clone().into()));
        let (schema, pull) = at.scan_input(conn, &item.mapping, Arc::clone(&item.schema), pull, &failed)?;
        let incoming = at.point_view(conn, schema, pull)?;
        let fed = HandedOut {
            rows: &AtomicU64::new(item.rows),
            batches: &AtomicU64::new(item.batches.len() as u64),
            key: item.key.as_ref(),
        };
        let result = self.write_view(&item.mapping, &incoming, &failed, &fed);
        self.at.release_view();
        result
    }

    /// Several buffered requests in one transaction: consecutive requests for the same target with the same
    /// schema become one INSERT. All or nothing; the caller retries each alone when it fails.
    pub(super) fn try_group(&mut self, items: &[Buffered]) -> Result<Vec<Option<(String, i64)>>, EngineError> {
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
        let DuckSession { conn, at, .. } = self;
        let wait = items.iter().map(|i| i.commit_retry_wait).max().unwrap_or_default();
        let _lake = at.lake_commit_locks(conn, items.iter().map(|i| &i.mapping), wait)?;
        at.ensure_view(conn)?;
        let mut locked = HashSet::new();
        let mut guards = Vec::new();
        let mut tables = Vec::with_capacity(runs.len());
        let mut in_txn = Vec::with_capacity(runs.len());
        // The lake tables among the targets (lower case), remembered or forgotten by the group's outcome.
        let mut lake_tables = Vec::new();
        for &(start, _) in &runs {
            let mapping = &items[start].mapping;
            if at.is_lake(conn, mapping.target.catalog.as_deref())? {
                lake_tables.push(mapping.target.sql(&at.host_db).to_lowercase());
            }
            let later = at.lake_columns_later(mapping)?;
            let (table, guard) =
                if later { (Vec::new(), None) } else { at.prepare_target(conn, mapping, &mut locked)? };
            tables.push(table);
            in_txn.push(later);
            guards.extend(guard);
        }
        for item in items {
            if let Some(key) = &item.key {
                at.ensure_keys(conn, item.mapping.target.catalog.as_deref(), key.window)?;
            }
        }
        // A lake's keys are checked before the group's transaction (see `prechecked`).
        let mut checked = Vec::with_capacity(runs.len());
        for &(start, end) in &runs {
            checked.push(at.prechecked(conn, &items[start..end])?);
        }
        let _turns = at.follow_turns(conn, items.iter().map(|i| &i.mapping))?;
        let mut positions = vec![None; items.len()];
        let result = conn.begin().map_err(E::db).and_then(|mut txn| {
            for (((&(start, end), table), &later), checked) in
                runs.iter().zip(tables.iter_mut()).zip(&in_txn).zip(checked)
            {
                at.position = None;
                if later {
                    let target = &items[start].mapping.target;
                    *table = columns(txn.query(&format!("DESCRIBE {}", target.sql(&at.host_db))).map_err(E::db)?);
                }
                let batches: Vec<RecordBatch> =
                    items[start..end].iter().flat_map(|i| i.batches.iter().cloned()).collect();
                let expected: u64 = items[start..end].iter().map(|i| i.rows).sum();
                let pull = Box::new(VecPull(batches.into()));
                let failed = Arc::new(Mutex::new(None));
                let mapping = &items[start].mapping;
                let (schema, pull) =
                    at.scan_input(&mut txn, mapping, Arc::clone(&items[start].schema), pull, &failed)?;
                let incoming = at.point_view(&mut txn, schema, pull)?;
                let rows = match at.land(&mut txn, mapping, &incoming, table, Arrival::Buffered)? {
                    Landed::Inserted(rows) => rows,
                    Landed::Merged => expected,
                };
                if rows != expected {
                    return Err(EngineError::Internal(format!("a grouped insert wrote {rows} rows of {expected}")));
                }
                at.record_keys(&mut txn, &items[start].mapping.target, &keys::run_keys(&items[start..end]), checked)?;
                if let Some(position) = at.position.take() {
                    positions[start..end].iter_mut().for_each(|p| *p = Some(position.clone()));
                }
            }
            txn.commit().map_err(E::db)
        });
        at.release_view();
        drop(guards);
        for name in lake_tables {
            if result.is_ok() {
                at.lake_tables.insert(name);
            } else {
                at.lake_tables.remove(&name);
            }
        }
        result.map(|()| positions)
    }
}

/// Feeds DuckDB's scan: the batch already read, then the rest of the request. Remembers the first failure so
/// the request reports it rather than DuckDB's wrapping of it.
pub(super) struct ScanFeed {
    pub(super) first: Option<RecordBatch>,
    pub(super) input: BatchRx,
    pub(super) failed: Arc<Mutex<Option<EngineError>>>,
    /// Rows and batches handed to DuckDB so far.
    pub(super) handed_out: Arc<AtomicU64>,
    pub(super) batches: Arc<AtomicU64>,
}

/// What a request's scan handed DuckDB, and its idempotency key: checked and recorded before commit.
pub(super) struct HandedOut<'a> {
    pub(super) rows: &'a AtomicU64,
    pub(super) batches: &'a AtomicU64,
    pub(super) key: Option<&'a RequestKey>,
}

impl BatchPull for ScanFeed {
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
