//! What is particular to DuckLake catalogs: telling one apart, taking turns on grouped commits into one, and
//! compacting it (`arrowport_maintain`).

use super::*;

impl Landing {
    /// Whether a catalog is an attached DuckLake (asked once per catalog and writer).
    pub(super) fn is_lake(&mut self, conn: &mut RawConn, catalog: Option<&str>) -> Result<bool, EngineError> {
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
    /// the lake's next snapshot, and the loser waits out DuckLake's retry pause. Held for a group's transaction,
    /// which holds buffered rows only, so briefly; streaming requests do not take it. With a lake among the
    /// targets, DuckLake's retry pause on this connection becomes `retry_wait` (`commit_retry_wait`).
    pub(super) fn lake_commit_locks<'m>(
        &mut self,
        conn: &mut RawConn,
        mappings: impl IntoIterator<Item = &'m Mapping>,
        retry_wait: std::time::Duration,
    ) -> Result<Vec<CreateGuard>, EngineError> {
        let mut lakes = std::collections::BTreeSet::new();
        for m in mappings {
            if let Some(catalog) = m.target.catalog.as_deref()
                && self.is_lake(conn, Some(catalog))?
            {
                lakes.insert(catalog.to_lowercase());
            }
        }
        if !lakes.is_empty() {
            self.lake_retry_wait(conn, retry_wait);
        }
        Ok(lakes.into_iter().map(|c| self.locks.lock(format!("lake commit {c}"))).collect())
    }

    /// Sets DuckLake's pause before it retries a commit that lost the race for the lake's next snapshot
    /// (`ducklake_retry_wait_ms`, this connection's own) when it differs from what this writer set last. Best
    /// effort: a DuckLake without the setting keeps its own pause, which only costs speed.
    fn lake_retry_wait(&mut self, conn: &mut RawConn, wait: std::time::Duration) {
        let ms = wait.as_millis();
        if self.lake_retry_wait_ms != Some(ms) {
            let _ = conn.execute(&format!("SET SESSION ducklake_retry_wait_ms = {ms}"));
            self.lake_retry_wait_ms = Some(ms);
        }
    }
}

impl DuckSession {
    pub(super) fn maintain_lake(
        &mut self,
        catalog: &str,
        older_than: std::time::Duration,
    ) -> Result<Vec<Maintained>, EngineError> {
        let lit = quote_literal(catalog);
        let cutoff = format!("older_than => now() - to_microseconds({})", older_than.as_micros());
        let steps: [(&'static str, String); 4] = [
            ("ducklake_flush_inlined_data", format!("CALL ducklake_flush_inlined_data({lit})")),
            ("ducklake_merge_adjacent_files", format!("CALL ducklake_merge_adjacent_files({lit})")),
            ("ducklake_expire_snapshots", format!("CALL ducklake_expire_snapshots({lit}, {cutoff})")),
            ("ducklake_cleanup_old_files", format!("CALL ducklake_cleanup_old_files({lit}, {cutoff})")),
        ];
        if !self.at.is_lake(&mut self.conn, Some(catalog))? {
            return Err(EngineError::BadInput(format!("{catalog:?} is not an attached DuckLake catalog")));
        }
        let mut done = Vec::with_capacity(steps.len());
        for (step, sql) in steps {
            let started = std::time::Instant::now();
            let rows = self.conn.query(&sql).map_err(EngineError::db)?;
            done.push(Maintained { step, rows: rows.len() as u64, seconds: started.elapsed().as_secs_f64() });
        }
        Ok(done)
    }
}
