//! Positions of followable streams: `<catalog>.arrowport.positions` holds each table's last position; a commit
//! into a followable stream's table numbers its rows from the next one on ([`CURSOR_COLUMN`]) and moves the
//! table's position to its last row, in its own transaction (an UPDATE of the table's row, so two hosts of a
//! shared DuckLake that commit at once conflict and one tries again). On one host, commits into one followable
//! table take turns from reading the position to the commit, so positions commit in their order: a follower that
//! has read position N has every row at or below N.

use super::*;
use crate::catalog::registry::CURSOR_COLUMN;
use crate::engine::follow_hub::table_key;

const POSITIONS_TABLE: &str = "positions";

impl Landing {
    fn positions_table(&self, catalog: Option<&str>) -> String {
        format!(
            "{}.{}.{}",
            quote_ident(catalog.unwrap_or(&self.host_db)),
            quote_ident(OWN_SCHEMA),
            quote_ident(POSITIONS_TABLE)
        )
    }

    /// The name a followable table's turn and position go by.
    pub(super) fn follow_key(&self, target: &Target) -> String {
        table_key(target)
    }

    /// Makes sure the positions table and the target's row exist, outside any transaction (two writers creating
    /// them inside theirs would conflict); once per target and writer.
    pub(super) fn ensure_positions(&mut self, conn: &mut RawConn, target: &Target) -> Result<(), EngineError> {
        let ready = self.follow_key(target);
        if self.positions_ready.contains(&ready) {
            return Ok(());
        }
        let catalog = target.catalog.as_deref();
        let table = self.positions_table(catalog);
        let schema = format!("{}.{}", quote_ident(catalog.unwrap_or(&self.host_db)), quote_ident(OWN_SCHEMA));
        let key = quote_literal(&self.follow_key(target));
        let make = |conn: &mut RawConn| -> Result<(), DbError> {
            conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
            conn.execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (target VARCHAR NOT NULL, position BIGINT NOT NULL)"
            ))?;
            conn.execute(&format!(
                "INSERT INTO {table} SELECT {key}, 0 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE target = {key})"
            ))?;
            Ok(())
        };
        // Another writer making them at the same moment makes ours fail once; then they exist.
        make(conn).or_else(|_| make(conn)).map_err(E::db)?;
        self.positions_ready.insert(ready);
        Ok(())
    }

    /// A followable table's last position, read inside the commit's transaction (which holds the table's turn).
    pub(super) fn last_position(&mut self, txn: &mut RawConn, target: &Target) -> Result<i64, EngineError> {
        let table = self.positions_table(target.catalog.as_deref());
        let key = quote_literal(&self.follow_key(target));
        let position =
            txn.query_value(&format!("SELECT max(position) FROM {table} WHERE target = {key}")).map_err(E::db)?;
        position
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| EngineError::Internal(format!("no position row for {} in {table}", target.display())))
    }

    /// Moves a followable table's position to the last row the commit wrote, inside its transaction: two hosts
    /// of a shared DuckLake that commit into one table at once both update this row, and one of them conflicts.
    pub(super) fn advance_position(&mut self, txn: &mut RawConn, target: &Target, to: i64) -> Result<i64, EngineError> {
        let table = self.positions_table(target.catalog.as_deref());
        let key = quote_literal(&self.follow_key(target));
        txn.execute(&format!("UPDATE {table} SET position = {to} WHERE target = {key}")).map_err(E::db)?;
        Ok(to)
    }

    /// A followable table's columns without its cursor column, and whether it has one.
    pub(super) fn without_cursor(table: &[Column]) -> (Vec<Column>, bool) {
        let has = table.iter().any(|c| c.name.eq_ignore_ascii_case(CURSOR_COLUMN));
        (table.iter().filter(|c| !c.name.eq_ignore_ascii_case(CURSOR_COLUMN)).cloned().collect(), has)
    }
}
