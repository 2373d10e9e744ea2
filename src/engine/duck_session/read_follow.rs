//! Followers' reads on a statement connection: the rows of a followable table past a cursor, from a statement
//! prepared once per connection and table (a live follower reads after every commit, and parsing and planning
//! the read each time cost more than running it). The connection is left converting losslessly to Arrow, as
//! followers need (UUID, HUGEINT... as the extension types a DuckDB reads back); a statement sent over the
//! network turns that off first ([`DuckSession::plain_arrow`]).

use super::*;

impl DuckSession {
    pub(super) fn read_for_followers(
        &mut self,
        target: &Target,
        columns: &str,
        after: i64,
        limit: usize,
        ordered: bool,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), EngineError> {
        if !self.lossless {
            self.conn.execute("SET SESSION arrow_lossless_conversion = true").map_err(E::db)?;
            self.lossless = true;
        }
        let cursor = quote_ident(CURSOR_COLUMN);
        let order = if ordered { format!(" ORDER BY {cursor}") } else { String::new() };
        let sql = format!(
            "SELECT {columns} FROM {} AS t WHERE {cursor} > $1{order} LIMIT {limit}",
            target.sql(&self.at.host_db)
        );
        let mut read = self.conn.prepare_kept(&sql).map_err(E::sql)?;
        read.bind(&[Param::Int(after)]).map_err(E::sql)?;
        // The schema comes with the result itself (not from a description made before), so it is the one the
        // rows were converted with even when the table changed meanwhile.
        read.execute_materialized().map_err(E::sql)
    }

    /// Turns lossless Arrow conversion off again when a followers' read left it on.
    pub(super) fn plain_arrow(&mut self) -> Result<(), EngineError> {
        if self.lossless {
            self.conn.execute("RESET SESSION arrow_lossless_conversion").map_err(E::db)?;
            self.lossless = false;
        }
        Ok(())
    }
}
