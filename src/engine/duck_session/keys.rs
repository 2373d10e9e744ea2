//! The idempotency keys of a catalog: `<catalog>.arrowport.requests`, written in the transaction of the rows
//! they vouch for (the key's SHA-256, never the key), looked up for replays, purged past their window.

use super::*;

/// The table of idempotency keys, in the `arrowport` schema of each target's catalog. It holds each key's SHA-256
/// (hex, as DuckDB's `sha256()` writes it), never the key: whoever can read the table learns no key from it.
pub(super) const KEYS_TABLE: &str = "requests";

pub(super) const KEYS_COLUMNS: &str = "key_sha256 VARCHAR PRIMARY KEY, stream VARCHAR NOT NULL, ack VARCHAR NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now()";

/// The same for catalogs without PRIMARY KEY constraints (DuckLake): the key is checked inside the transaction.
pub(super) const KEYS_COLUMNS_UNCONSTRAINED: &str = "key_sha256 VARCHAR NOT NULL, stream VARCHAR NOT NULL, ack VARCHAR NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now()";

/// SQL for the start of a key window ending now: keys committed before it are expired.
fn window_start(window: std::time::Duration) -> String {
    format!("now() - to_microseconds({})", window.as_micros())
}

/// A run of buffered requests' keys, with each request's rows and batches (what its acknowledgement reports).
pub(super) fn run_keys(run: &[Buffered]) -> Vec<(&RequestKey, u64, u64)> {
    run.iter().filter_map(|i| Some((i.key.as_ref()?, i.rows, i.batches.len() as u64))).collect()
}

/// What the keys table holds for a key: its SHA-256 in hex, as a SQL literal.
pub(super) fn key_digest(key: &str) -> String {
    quote_literal(&to_hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref()))
}

/// Key rows a DuckLake keeps in its catalog database per insert (DuckLake's `data_inlining_row_limit` for the
/// keys table alone): a group's keys go into the catalog with its commit instead of into a Parquet file of a few
/// rows each, and the check inside each keyed commit reads them from there instead of opening every such file
/// in the object store. `arrowport_maintain` (DuckLake's `ducklake_flush_inlined_data`) moves them into files.
pub(super) const LAKE_KEYS_INLINE_ROWS: u64 = 100_000;

/// Keys kept per catalog at most (the oldest go first), whatever the window...
pub(super) const MAX_KEYS: u64 = 1_000_000;

/// ...checked every this many keys a writer records.
pub(super) const PURGE_EVERY: u64 = 10_000;

/// The catalogs' key tables as one writer knows them (names lower case).
#[derive(Default)]
pub(super) struct KeyTables {
    /// Catalogs whose `arrowport.requests` exists, as far as this writer made sure.
    pub(super) ready: HashSet<String>,
    /// Catalogs whose keys table is known to hold digests (see `upgrade_keys`).
    pub(super) upgraded: HashSet<String>,
    /// Catalogs whose key table has no PRIMARY KEY (the catalog supports none): keys are checked before insert.
    pub(super) unconstrained: HashSet<String>,
    /// Keys this writer recorded, for purging now and then.
    pub(super) recorded: u64,
}

impl Landing {
    /// The table of idempotency keys in a catalog (`None`: the host database).
    pub(super) fn keys_table(&self, catalog: Option<&str>) -> String {
        format!(
            "{}.{}.{}",
            quote_ident(catalog.unwrap_or(&self.host_db)),
            quote_ident(OWN_SCHEMA),
            quote_ident(KEYS_TABLE)
        )
    }

    /// The condition on `duckdb_columns()`, `duckdb_constraints()` and the like that selects the keys table's rows.
    pub(super) fn keys_table_is(&self, catalog: Option<&str>) -> String {
        format!(
            "database_name = {} AND schema_name = {} AND table_name = {}",
            quote_literal(catalog.unwrap_or(&self.host_db)),
            quote_literal(OWN_SCHEMA),
            quote_literal(KEYS_TABLE)
        )
    }

    /// Turns the keys an older layout kept in a column `key` into digests, in one transaction, once per catalog
    /// and writer (lookups and writes both come here first).
    pub(super) fn upgrade_keys(&mut self, conn: &mut RawConn, catalog: Option<&str>) -> Result<(), EngineError> {
        let name = catalog.unwrap_or(&self.host_db).to_lowercase();
        if self.keys.upgraded.contains(&name) {
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
        self.keys.upgraded.insert(name);
        Ok(())
    }

    /// Makes sure the catalog's key table exists, outside any transaction (two writers creating it inside theirs
    /// would conflict), and purges keys past their window now and then.
    pub(super) fn ensure_keys(
        &mut self,
        conn: &mut RawConn,
        catalog: Option<&str>,
        window: std::time::Duration,
    ) -> Result<(), EngineError> {
        let name = catalog.unwrap_or(&self.host_db).to_lowercase();
        let table = self.keys_table(catalog);
        if !self.keys.ready.contains(&name) {
            let schema = format!("{}.{}", quote_ident(catalog.unwrap_or(&self.host_db)), quote_ident(OWN_SCHEMA));
            // DuckLake has no PRIMARY KEY or UNIQUE constraints.
            let lake = self.is_lake(conn, catalog)?;
            let columns = if lake { KEYS_COLUMNS_UNCONSTRAINED } else { KEYS_COLUMNS };
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
                self.keys.unconstrained.insert(name.clone());
            }
            if let Some(catalog) = catalog.filter(|_| lake) {
                self.inline_lake_keys(conn, catalog);
            }
            self.keys.ready.insert(name);
            self.keys.recorded = 0;
        }
        if self.keys.recorded.is_multiple_of(PURGE_EVERY) {
            let purge = format!(
                "DELETE FROM {table} WHERE committed_at < {} \
                 OR key_sha256 IN (SELECT key_sha256 FROM {table} ORDER BY committed_at DESC OFFSET {MAX_KEYS})",
                window_start(window)
            );
            conn.execute(&purge).map_err(E::db)?;
        }
        Ok(())
    }

    /// Keeps a DuckLake's key rows in its catalog database ([`LAKE_KEYS_INLINE_ROWS`]) unless the table has a
    /// setting of the operator's. Set by every host that writes keys into the lake, even when another host's
    /// setting is there already: a DuckLake reads its options when it is attached, so one host setting it does not
    /// reach the others. Best effort: a DuckLake without table-scoped options keeps the keys in files, which only
    /// costs speed.
    fn inline_lake_keys(&self, conn: &mut RawConn, lake: &str) {
        let entry = quote_literal(&format!("{OWN_SCHEMA}.{KEYS_TABLE}"));
        let set = conn.query_value(&format!(
            "SELECT any_value(value) FROM {}.options() WHERE option_name = 'data_inlining_row_limit' \
             AND scope = 'TABLE' AND scope_entry = {entry}",
            quote_ident(lake)
        ));
        let ours = LAKE_KEYS_INLINE_ROWS.to_string();
        if set.is_ok_and(|value| value.is_none_or(|v| v == ours)) {
            let _ = conn.execute(&format!(
                "CALL {}.set_option('data_inlining_row_limit', {ours}, schema => {}, table_name => {})",
                quote_ident(lake),
                quote_literal(OWN_SCHEMA),
                quote_literal(KEYS_TABLE)
            ));
        }
    }

    /// Which of these keys a catalog without a key constraint (DuckLake) already holds: a live one fails with
    /// `InProgress`; expired ones (older than the window, not purged yet) are returned, to be deleted by the
    /// transaction that records them anew. One query for all of them (in a DuckLake each statement is a round trip
    /// to its catalog).
    pub(super) fn check_keys(
        &self,
        conn: &mut RawConn,
        target: &Target,
        keys: &[(&RequestKey, u64, u64)],
    ) -> Result<Vec<String>, EngineError> {
        let Some((first, _, _)) = keys.first() else { return Ok(Vec::new()) };
        let digests: HashMap<String, &str> =
            keys.iter().map(|(k, _, _)| (key_digest(&k.key), k.key.as_str())).collect();
        let names = digests.keys().cloned().collect::<Vec<_>>().join(", ");
        let cutoff = window_start(first.window);
        let found = conn
            .query(&format!(
                "SELECT key_sha256, CASE WHEN committed_at >= {cutoff} THEN 'live' ELSE 'expired' END FROM {} WHERE key_sha256 IN ({names})",
                self.keys_table(target.catalog.as_deref())
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
                return Err(EngineError::InProgress(
                    digests.get(&digest).map_or_else(|| digest.clone(), |k| k.to_string()),
                ));
            }
            expired.push(digest);
        }
        Ok(expired)
    }

    /// Whether a target's catalog keeps its keys without a constraint (DuckLake): they are checked by `check_keys`.
    pub(super) fn keys_unconstrained(&self, target: &Target) -> bool {
        self.keys.unconstrained.contains(&target.catalog.as_deref().unwrap_or(&self.host_db).to_lowercase())
    }

    /// Records requests' keys and acknowledgements inside their transaction (one statement of each kind for all of
    /// them: in a DuckLake every statement is a round trip to its catalog): the keys commit with the rows or not at
    /// all. A key already there (another host, or a retry racing its original) fails the transaction. In a catalog
    /// without a key constraint the keys are checked first: inside this transaction, or `checked` before it (the
    /// expired rows that check found).
    pub(super) fn record_keys(
        &mut self,
        txn: &mut RawConn,
        target: &Target,
        keys: &[(&RequestKey, u64, u64)],
        checked: Option<Vec<String>>,
    ) -> Result<(), EngineError> {
        let Some((first, _, _)) = keys.first() else { return Ok(()) };
        let table = self.keys_table(target.catalog.as_deref());
        // A row of the same key older than the window (not purged yet) is forgotten: the key is free again.
        let cutoff = window_start(first.window);
        if self.keys_unconstrained(target) {
            let expired = match checked {
                Some(expired) => expired,
                None => self.check_keys(txn, target, keys)?,
            };
            if !expired.is_empty() {
                txn.execute(&format!(
                    "DELETE FROM {table} WHERE key_sha256 IN ({}) AND committed_at < {cutoff}",
                    expired.join(", ")
                ))
                .map_err(E::db)?;
            }
        } else {
            let names = keys.iter().map(|(k, _, _)| key_digest(&k.key)).collect::<Vec<_>>().join(", ");
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
        self.keys.recorded += keys.len() as u64;
        Ok(())
    }
}

impl DuckSession {
    pub(super) fn lookup_key_in(
        &mut self,
        catalog: Option<&str>,
        key: &str,
        window: std::time::Duration,
    ) -> Result<Option<KeyRecord>, EngineError> {
        self.at.upgrade_keys(&mut self.conn, catalog)?;
        let sql = format!(
            "SELECT stream, ack FROM {} WHERE key_sha256 = {} AND committed_at >= {}",
            self.at.keys_table(catalog),
            key_digest(key),
            window_start(window)
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
}
