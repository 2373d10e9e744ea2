//! Commit positions of followable streams: `<catalog>.arrowport.positions` holds each table's last position; a
//! commit into a followable stream's table takes the next one in its own transaction (an UPDATE of the table's
//! row, so two hosts of a shared DuckLake that commit at once conflict and one tries again) and writes it into
//! every row it lands ([`CURSOR_COLUMN`]). On one host, commits into one followable table take turns from the
//! position to the commit, so positions commit in their order: a follower that has read position N has
//! everything at or below N.

use super::*;
use crate::catalog::registry::CURSOR_COLUMN;
use crate::engine::follow::table_key;

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
        table_key(target.catalog.as_deref().unwrap_or(&self.host_db), &target.schema, &target.table)
    }

    /// Makes sure the positions table and the target's row exist, outside any transaction (two writers creating
    /// them inside theirs would conflict).
    pub(super) fn ensure_positions(&mut self, conn: &mut RawConn, target: &Target) -> Result<(), EngineError> {
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
        make(conn).or_else(|_| make(conn)).map_err(E::db)
    }

    /// The next position of a followable table, taken inside the commit's transaction.
    pub(super) fn next_position(&mut self, txn: &mut RawConn, target: &Target) -> Result<i64, EngineError> {
        let table = self.positions_table(target.catalog.as_deref());
        let key = quote_literal(&self.follow_key(target));
        txn.execute(&format!("UPDATE {table} SET position = position + 1 WHERE target = {key}")).map_err(E::db)?;
        let position =
            txn.query_value(&format!("SELECT max(position) FROM {table} WHERE target = {key}")).map_err(E::db)?;
        position
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| EngineError::Internal(format!("no position row for {} in {table}", target.display())))
    }

    /// A followable table's columns without its cursor column, and whether it has one.
    pub(super) fn without_cursor(table: &[Column]) -> (Vec<Column>, bool) {
        let has = table.iter().any(|c| c.name.eq_ignore_ascii_case(CURSOR_COLUMN));
        (table.iter().filter(|c| !c.name.eq_ignore_ascii_case(CURSOR_COLUMN)).cloned().collect(), has)
    }
}
