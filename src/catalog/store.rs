//! What arrowport persists in the host database, through a connection of its own: stream mappings (table
//! `arrowport.streams`) and access tokens (table `arrowport.tokens`, salted hashes only).
//!
//! The SQL functions that change mappings or tokens write here first and then update memory (`registry`,
//! `access::Tokens`), so a change survives a restart of the process and takes effect at once. The tables are
//! created on the first change, never on `LOAD` (a read-only database loads arrowport fine). The writes commit
//! on our connection, independently of any transaction the calling session has open.

use std::sync::Mutex;

use crate::catalog::access::{self, Scope, TokenRecord};
use crate::catalog::registry::{Mapping, Mode, OWN_SCHEMA, SchemaPolicy, TableRule, Target};
use crate::catalog::schema::{quote_ident, quote_literal};
use crate::duck::DbError;
use crate::duck::conn::RawConn;

const STREAMS: &str = "streams";
const STREAMS_COLUMNS: &str = "stream VARCHAR PRIMARY KEY, catalog VARCHAR, schema VARCHAR NOT NULL, \
     \"table\" VARCHAR NOT NULL, create_table BOOLEAN NOT NULL, schema_policy VARCHAR NOT NULL, \
     mode VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now()";

const TOKENS: &str = "tokens";
/// `streams` is a JSON array of stream names, NULL for every stream; salt and hash are hex.
const TOKENS_COLUMNS: &str = "name VARCHAR PRIMARY KEY, salt VARCHAR NOT NULL, hash VARCHAR NOT NULL, streams VARCHAR, \
     created_at TIMESTAMPTZ NOT NULL, last_used_at TIMESTAMPTZ";

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
        Self::named(host, STREAMS)
    }

    fn named(host: &str, table: &str) -> String {
        format!("{}.{}.{}", quote_ident(host), quote_ident(OWN_SCHEMA), quote_ident(table))
    }

    fn exists(conn: &mut RawConn, host: &str) -> Result<bool, DbError> {
        Self::has(conn, host, STREAMS)
    }

    fn has(conn: &mut RawConn, host: &str, table: &str) -> Result<bool, DbError> {
        let sql = format!(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = {} AND schema_name = {} AND table_name = {}",
            quote_literal(host),
            quote_literal(OWN_SCHEMA),
            quote_literal(table)
        );
        Ok(conn.query(&sql)?.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("1"))
    }

    fn ensure(conn: &mut RawConn, host: &str) -> Result<(), DbError> {
        Self::create(conn, host, STREAMS, STREAMS_COLUMNS)
    }

    fn create(conn: &mut RawConn, host: &str, table: &str, columns: &str) -> Result<(), DbError> {
        if Self::has(conn, host, table)? {
            return Ok(());
        }
        conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {}.{}", quote_ident(host), quote_ident(OWN_SCHEMA)))?;
        conn.execute(&format!("CREATE TABLE IF NOT EXISTS {} ({columns})", Self::named(host, table)))?;
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
                    let bad = |what: &str| DbError(format!("arrowport.streams holds an invalid {what}"));
                    Ok(Mapping {
                        stream: v(0).ok_or_else(|| bad("stream"))?,
                        target: Target { catalog: v(1), schema: v(2).ok_or_else(|| bad("schema"))?, table: v(3).ok_or_else(|| bad("table"))? },
                        create_table: v(4).as_deref() == Some("true"),
                        policy: SchemaPolicy::parse(&v(5).unwrap_or_default()).map_err(|_| bad("schema_policy"))?,
                        mode: Mode::parse(&v(6).unwrap_or_default()).map_err(|_| bad("mode"))?,
                        rule: TableRule::Stream,
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

fn timestamp_literal(us: i64) -> String {
    format!("(to_timestamp(0) + to_microseconds({us}))")
}

impl Store {
    /// Every persisted token (none when the table does not exist yet).
    pub fn load_tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.with(|conn, host| {
            if !Self::has(conn, host, TOKENS)? {
                return Ok(vec![]);
            }
            let rows = conn.query(&format!(
                "SELECT name, salt, hash, streams, epoch_us(created_at), epoch_us(last_used_at) FROM {} ORDER BY name",
                Self::named(host, TOKENS)
            ))?;
            rows.into_iter()
                .map(|r| {
                    let v = |i: usize| r.get(i).cloned().flatten();
                    let bad = |what: &str| DbError(format!("arrowport.tokens holds an invalid {what}"));
                    let scope = match v(3) {
                        None => Scope::All,
                        Some(json) => Scope::Streams(serde_json::from_str(&json).map_err(|_| bad("streams"))?),
                    };
                    Ok(TokenRecord {
                        name: v(0).ok_or_else(|| bad("name"))?,
                        salt: v(1).as_deref().and_then(access::from_hex).ok_or_else(|| bad("salt"))?,
                        hash: v(2).as_deref().and_then(access::from_hex).ok_or_else(|| bad("hash"))?,
                        scope,
                        created_us: v(4).and_then(|t| t.parse().ok()).ok_or_else(|| bad("created_at"))?,
                        last_used_us: v(5).and_then(|t| t.parse().ok()),
                    })
                })
                .collect()
        })
    }

    /// Stores a new token; fails when one of that name exists.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<(), DbError> {
        let streams = match &t.scope {
            Scope::All => "NULL".to_string(),
            Scope::Streams(list) => quote_literal(&serde_json::to_string(list).unwrap_or_else(|_| "[]".into())),
        };
        self.with(|conn, host| {
            Self::create(conn, host, TOKENS, TOKENS_COLUMNS)?;
            conn.execute(&format!(
                "INSERT INTO {} (name, salt, hash, streams, created_at) VALUES ({}, {}, {}, {streams}, {})",
                Self::named(host, TOKENS),
                quote_literal(&t.name),
                quote_literal(&access::to_hex(&t.salt)),
                quote_literal(&access::to_hex(&t.hash)),
                timestamp_literal(t.created_us),
            ))?;
            Ok(())
        })
    }

    /// Deletes a token; false when there was none.
    pub fn delete_token(&self, name: &str) -> Result<bool, DbError> {
        self.with(|conn, host| {
            if !Self::has(conn, host, TOKENS)? {
                return Ok(false);
            }
            Ok(conn.execute(&format!("DELETE FROM {} WHERE name = {}", Self::named(host, TOKENS), quote_literal(name)))? > 0)
        })
    }

    /// Saves last-use times kept in memory (only ones newer than what is stored).
    pub fn save_last_used(&self, used: &[(String, i64)]) -> Result<(), DbError> {
        if used.is_empty() {
            return Ok(());
        }
        self.with(|conn, host| {
            if !Self::has(conn, host, TOKENS)? {
                return Ok(());
            }
            let table = Self::named(host, TOKENS);
            for (name, us) in used {
                conn.execute(&format!(
                    "UPDATE {table} SET last_used_at = {ts} WHERE name = {} AND (last_used_at IS NULL OR last_used_at < {ts})",
                    quote_literal(name),
                    ts = timestamp_literal(*us),
                ))?;
            }
            Ok(())
        })
    }
}
