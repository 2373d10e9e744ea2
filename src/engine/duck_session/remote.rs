//! Statements sent over the network, and catalog browsing: each checked before DuckDB binds it (`sql_tree`,
//! `policy`), run on one of the statement pool's connections with arrowport's own functions refusing to run,
//! its result streamed in batches.

use super::*;
use crate::engine::sql_tree::{self, Refusal, Strictness};

/// A statement's parameter rows: each runs the statement once (no parameters: once, with none).
fn param_runs(statement: &Statement) -> &[Vec<Param>] {
    const NONE: &[Vec<Param>] = &[Vec::new()];
    if statement.params.is_empty() { NONE } else { &statement.params }
}

/// Runs a statement once with `params` and keeps its whole result.
fn run_materialized(
    conn: &mut RawConn,
    sql: &str,
    params: &[Param],
) -> Result<(SchemaRef, Vec<RecordBatch>), EngineError> {
    let mut p = conn.prepare(sql).map_err(E::sql)?;
    p.bind(params).map_err(E::sql)?;
    p.execute_materialized().map_err(E::sql)
}

/// Runs a query (once per parameter row) and sends its schema, then its batches, to `out` as DuckDB makes them.
pub(super) fn stream_result(conn: &mut RawConn, statement: &Statement, out: &QueryOut) -> Result<(), EngineError> {
    let mut schema_sent = false;
    let mut send_schema = |schema: SchemaRef| -> Result<(), EngineError> {
        if !schema_sent {
            schema_sent = true;
            out.send(QueryItem::Schema(schema))?;
        }
        Ok(())
    };
    for params in param_runs(statement) {
        // A query streams: DuckDB's Arrow schema for it comes from running it wrapped with LIMIT 0.
        match conn.select_schema(&statement.sql, params).map_err(E::sql)? {
            Some(schema) => {
                let mut p = conn.prepare(&statement.sql).map_err(E::sql)?;
                p.bind(params).map_err(E::sql)?;
                let mut rows = p.execute(&schema).map_err(E::sql)?;
                send_schema(rows.schema())?;
                while let Some(batch) = rows.next_batch().map_err(E::sql)? {
                    out.batch(batch)?;
                }
            }
            None => {
                let (schema, batches) = run_materialized(conn, &statement.sql, params)?;
                send_schema(schema)?;
                for batch in batches {
                    out.batch(batch)?;
                }
            }
        }
    }
    out.finish()
}

/// Runs a statement that is not a query (once per parameter row) and keeps its small result: the schema, then
/// its batches, to be handed over after commit.
pub(super) fn materialized_result(conn: &mut RawConn, statement: &Statement) -> Result<Vec<QueryItem>, EngineError> {
    let mut items = Vec::new();
    for params in param_runs(statement) {
        let (schema, batches) = run_materialized(conn, &statement.sql, params)?;
        if items.is_empty() {
            items.push(QueryItem::Schema(schema));
        }
        items.extend(batches.into_iter().map(QueryItem::Batch));
    }
    Ok(items)
}

/// Refuses what a network statement left in the connection's temporary catalog (the caller rolls back).
pub(super) fn refuse_temporary_objects(conn: &mut RawConn) -> Result<(), EngineError> {
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
        _ => Err(EngineError::Denied(
            "temporary tables, views, sequences and types are not accepted over the network: statements share arrowport's \
             connections, so a temporary object would outlive its statement; create a table in a schema instead"
                .into(),
        )),
    }
}

/// Whether the listener's access allows this statement's kind (as DuckDB prepared it).
pub(super) fn kind_allowed(p: &Prepared<'_>, access: Access) -> Result<(), EngineError> {
    match (p.kind(), access) {
        (StatementKind::Transaction, _) => {
            Err(EngineError::Denied("transaction statements are not accepted over the network: every statement commits on its own".into()))
        }
        (StatementKind::Instance(keyword), _) => Err(EngineError::Denied(format!(
            "{keyword} statements are not accepted over the network: they change the host's database instance (its settings, \
             extensions or attached databases), not data; run them in the host's own session"
        ))),
        (StatementKind::Function, _) => Err(EngineError::Denied("CREATE MACRO / CREATE FUNCTION is not accepted over the network".into())),
        (StatementKind::Select, _) | (_, Access::ReadWrite) => Ok(()),
        (_, _) => Err(EngineError::Denied(
            "this listener runs only statements that read (sql := 'read_only'); this statement would change the database".into(),
        )),
    }
}

/// A statement interrupted so that an administrative function could run says so (it may have been the one
/// calling it: then this is its refusal).
pub(super) fn explain_interrupt<T>(
    (out, by): (Result<T, EngineError>, Option<&'static str>),
) -> Result<T, EngineError> {
    match (out, by) {
        (Err(EngineError::Sql(e)), Some(function)) if e.is(DbErrorKind::Interrupted) => Err(EngineError::Sql(e.with_message(format!(
            "{e} (interrupted so that {function} could run in the host's session; {function} cannot be called over the network)"
        )))),
        (out, _) => out,
    }
}

/// How many `query('...')` texts one statement may nest.
pub(super) const MAX_NESTED_TEXTS: usize = 16;

impl DuckSession {
    /// Checks a statement sent over the network before DuckDB binds it (see `sql_tree`), parsed without binding:
    /// no table it names (nor a name it gives `query_table`) may be in arrowport's schema or scratch database.
    /// With `read_only` it must also be a query, call no function with side effects, and call only functions the
    /// host already has. The constant texts given to `query()` are checked the same way. A `read_write`
    /// statement DuckDB's serializer does not take (anything but SELECT) is checked by its names.
    fn preflight(&mut self, sql: &str, access: Access) -> Result<(), EngineError> {
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
                return Err(EngineError::Denied(format!("query() texts nest more than {MAX_NESTED_TEXTS} deep")));
            }
            let serialized = self
                .conn
                .query_value(&format!("SELECT json_serialize_sql({})", quote_literal(&text)))
                .map_err(E::db)?;
            let calls = match sql_tree::calls_of(&serialized.unwrap_or_default(), strictness) {
                Ok(calls) => calls,
                Err(Refusal::Invalid(m)) => return Err(EngineError::Sql(DbError::from_text(m))),
                // Not a query (or one the serializer cannot describe): read_write reads its names.
                Err(_) if strictness == Strictness::ReadWrite => {
                    policy::check_identifiers(&text)?;
                    continue;
                }
                Err(other) => return Err(EngineError::Denied(other.message())),
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
    fn only_known_functions(&mut self, functions: &[String]) -> Result<(), EngineError> {
        for f in functions {
            if !self.known_functions.contains(f) {
                let rows =
                    self.conn.query("SELECT DISTINCT lower(function_name) FROM duckdb_functions()").map_err(E::db)?;
                self.known_functions = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
                if !self.known_functions.contains(f) {
                    return Err(EngineError::Denied(format!(
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
    /// With `read_write`, a statement that is not a query (`f` says which kind ran) runs in a transaction of ours
    /// that commits only if it left no temporary object: the statement pool's connections serve every client in
    /// turn, so a temporary table, view, sequence or type would outlive its statement and be seen (or shadow
    /// names) in the next client's.
    fn remote<T>(
        &mut self,
        access: Access,
        f: impl FnOnce(&mut RawConn) -> Result<(T, StatementKind), EngineError>,
    ) -> Result<T, EngineError> {
        self.on_host_db(|conn| {
            let begun = if access == Access::ReadOnly { conn.begin_read_only() } else { conn.begin() };
            begun.map_err(E::db).and_then(|mut txn| {
                let (out, kind) = explain_interrupt(policy::as_remote(|| f(&mut txn)))?;
                if access != Access::ReadOnly && kind != StatementKind::Select {
                    refuse_temporary_objects(&mut txn)?;
                }
                txn.commit().map_err(E::db)?;
                Ok(out)
            })
        })
    }

    /// Runs `f` with the host database as this connection's default (our connections default to the scratch
    /// database), then restores the scratch database, whatever `f` did.
    fn on_host_db<T>(&mut self, f: impl FnOnce(&mut RawConn) -> Result<T, EngineError>) -> Result<T, EngineError> {
        self.plain_arrow()?;
        self.conn.execute(&format!("USE {}", quote_ident(&self.at.host_db))).map_err(E::db)?;
        let out = f(&mut self.conn);
        if let Err(e) = self.conn.execute_past_interrupts(&format!("USE {}", quote_ident(SCRATCH_DB))) {
            eprintln!("arrowport: could not restore writer {} after a statement: {e}", self.at.id);
        }
        out
    }
}

impl DuckSession {
    pub(super) fn describe_statement(
        &mut self,
        sql: &str,
        params: Option<&[Param]>,
        access: Access,
    ) -> Result<Described, EngineError> {
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
            // Nothing ran: DuckDB prepared the statement, and ran only a query (wrapped with LIMIT 0).
            Ok((Described { schema, params: query::param_schema(types) }, StatementKind::Select))
        })
    }

    pub(super) fn run_query(
        &mut self,
        statement: &Statement,
        access: Access,
        out: &QueryOut,
    ) -> Result<(), EngineError> {
        self.preflight(&statement.sql, access)?;
        let held = self.remote(access, |conn| {
            let kind = {
                let p = conn.prepare(&statement.sql).map_err(E::sql)?;
                kind_allowed(&p, access)?;
                p.kind()
            };
            if kind == StatementKind::Select {
                stream_result(conn, statement, out)?;
                return Ok((Vec::new(), kind));
            }
            Ok((materialized_result(conn, statement)?, kind))
        })?;
        // A statement that changes something is answered (its row count) only once its transaction has
        // committed: a client that sees the answer and sends its next statement finds the change.
        if !held.is_empty() {
            for item in held {
                out.send(item)?;
            }
            out.finish()?;
        }
        Ok(())
    }

    pub(super) fn run_update(&mut self, statement: &Statement, access: Access) -> Result<u64, EngineError> {
        self.preflight(&statement.sql, access)?;
        self.remote(access, |conn| {
            let mut p = conn.prepare(&statement.sql).map_err(E::sql)?;
            kind_allowed(&p, access)?;
            let kind = p.kind();
            let mut changed = 0;
            for params in param_runs(statement) {
                p.bind(params).map_err(E::sql)?;
                changed += p.execute_update().map_err(E::sql)?;
            }
            Ok((changed, kind))
        })
    }

    pub(super) fn export_query(&mut self, sql: &str, out: &QueryOut) -> Result<(), EngineError> {
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
                        return Err(EngineError::BadInput(
                            "the query must be a statement that returns rows (SELECT, FROM, VALUES, ...)".into(),
                        ));
                    }
                    stream_result(&mut txn, &Statement { sql: sql.to_string(), params: Vec::new() }, out)?;
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

    pub(super) fn read_catalog(&mut self, with_schemas: bool) -> Result<Catalog, EngineError> {
        self.plain_arrow()?;
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
                <[String; 4]>::try_from(r).map_err(|_| EngineError::Internal("catalog row".into()))?;
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
