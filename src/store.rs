//! Stream mappings persisted in the host database, table `arrowport.streams`, through a connection of our own.
//!
//! The SQL functions that change mappings write here first and then update the in-memory `registry`, so a
//! mapping survives a restart of the process and takes effect at once. The table is created on the first
//! change, never on `LOAD` (a read-only database loads arrowport fine). The writes commit on our connection,
//! independently of any transaction the calling session has open.

use std::sync::Mutex;

use crate::ffi::{DbError, RawConn};
use crate::registry::{Mapping, Mode, OWN_SCHEMA, SchemaPolicy, Target};
use crate::schema::{quote_ident, quote_literal};

pub struct Store {
    conn: Mutex<RawConn>,
}

fn opt_literal(v: Option<&str>) -> String {
    v.map(quote_literal).unwrap_or_else(|| "NULL".into())
}

impl Store {
    pub fn new(conn: RawConn) -> Store {
        Store { conn: Mutex::new(conn) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RawConn, &str) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let rows = conn.query("SELECT current_database()")?;
        let host = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        f(&mut conn, &host)
    }

    fn table(host: &str) -> String {
        format!("{}.{}.streams", quote_ident(host), quote_ident(OWN_SCHEMA))
    }

    fn exists(conn: &mut RawConn, host: &str) -> Result<bool, DbError> {
        let sql = format!(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = {} AND schema_name = {} AND table_name = 'streams'",
            quote_literal(host),
            quote_literal(OWN_SCHEMA)
        );
        Ok(conn.query(&sql)?.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("1"))
    }

    fn ensure(conn: &mut RawConn, host: &str) -> Result<(), DbError> {
        if Self::exists(conn, host)? {
            return Ok(());
        }
        conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {}.{}", quote_ident(host), quote_ident(OWN_SCHEMA)))?;
        conn.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream VARCHAR PRIMARY KEY, catalog VARCHAR, schema VARCHAR NOT NULL, \
             \"table\" VARCHAR NOT NULL, create_table BOOLEAN NOT NULL, schema_policy VARCHAR NOT NULL, \
             mode VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            Self::table(host)
        ))?;
        Ok(())
    }

    /// Every persisted mapping (none when the table does not exist yet).
    pub fn load(&self) -> Result<Vec<Mapping>, DbError> {
        self.with(|conn, host| {
            if !Self::exists(conn, host)? {
                return Ok(vec![]);
            }
            let rows = conn.query(&format!(
                "SELECT stream, catalog, schema, \"table\", create_table, schema_policy, mode FROM {} ORDER BY stream",
                Self::table(host)
            ))?;
            rows.into_iter()
                .map(|r| {
                    let v = |i: usize| r.get(i).cloned().flatten();
                    let bad = |what: &str| DbError::Duck(format!("arrowport.streams holds an invalid {what}"));
                    Ok(Mapping {
                        stream: v(0).ok_or_else(|| bad("stream"))?,
                        target: Target { catalog: v(1), schema: v(2).ok_or_else(|| bad("schema"))?, table: v(3).ok_or_else(|| bad("table"))? },
                        create_table: v(4).as_deref() == Some("true"),
                        policy: SchemaPolicy::parse(&v(5).unwrap_or_default()).map_err(|_| bad("schema_policy"))?,
                        mode: Mode::parse(&v(6).unwrap_or_default()).map_err(|_| bad("mode"))?,
                    })
                })
                .collect()
        })
    }

    /// Inserts or replaces a mapping.
    pub fn save(&self, m: &Mapping) -> Result<(), DbError> {
        self.with(|conn, host| {
            Self::ensure(conn, host)?;
            conn.execute(&format!(
                "INSERT INTO {} (stream, catalog, schema, \"table\", create_table, schema_policy, mode) VALUES ({}, {}, {}, {}, {}, {}, {}) \
                 ON CONFLICT (stream) DO UPDATE SET catalog = excluded.catalog, schema = excluded.schema, \"table\" = excluded.\"table\", \
                 create_table = excluded.create_table, schema_policy = excluded.schema_policy, mode = excluded.mode, updated_at = now()",
                Self::table(host),
                quote_literal(&m.stream),
                opt_literal(m.target.catalog.as_deref()),
                quote_literal(&m.target.schema),
                quote_literal(&m.target.table),
                m.create_table,
                quote_literal(m.policy.name()),
                quote_literal(m.mode.name()),
            ))?;
            Ok(())
        })
    }

    /// Deletes a mapping; false when there was none.
    pub fn delete(&self, stream: &str) -> Result<bool, DbError> {
        self.with(|conn, host| {
            if !Self::exists(conn, host)? {
                return Ok(false);
            }
            let n = conn.execute(&format!("DELETE FROM {} WHERE stream = {}", Self::table(host), quote_literal(stream)))?;
            Ok(n > 0)
        })
    }
}
