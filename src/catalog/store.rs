//! What arrowport persists: stream mappings (table `arrowport.streams`) and access tokens (table
//! `arrowport.tokens`, salted hashes only), in a database of arrowport's own beside the host's
//! (`duck::database`): the file `<host database file>.arrowport` (in memory for an in-memory host).
//!
//! No connection to the host database can name a table there, so no SQL a network client sends, whatever
//! indirection it tries (`query`, `query_table`, views, macros), reaches mappings or tokens. The file is made on
//! the first change, never on `LOAD`, and opened read-only when the host database is read-only. Tables an older
//! layout kept inside a writable host database (`<host>.arrowport.streams` / `.tokens`) are moved here when the
//! file is first opened.
//!
//! The SQL functions that change mappings or tokens write here first and then update memory (`registry`,
//! `access::Tokens`), so a change survives a restart of the process and takes effect at once. The writes commit
//! on our own connection, independently of any transaction the calling session has open.

use std::sync::Mutex;

use crate::catalog::access::{self, Scope, TokenAccess, TokenRecord};
use crate::catalog::registry::{Mapping, Mode, OWN_SCHEMA, OnConflict, SchemaPolicy, TableRule, Target};
use crate::catalog::schema::{Column, quote_ident, quote_literal};
use crate::duck::DbError;
use crate::duck::conn::RawConn;
use crate::duck::database::Database;

const STREAMS: &str = "streams";
const STREAMS_COLUMNS: &str = "stream VARCHAR PRIMARY KEY, catalog VARCHAR, schema VARCHAR NOT NULL, \
     \"table\" VARCHAR NOT NULL, create_table BOOLEAN NOT NULL, schema_policy VARCHAR NOT NULL, \
     mode VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
     \"key\" VARCHAR[], on_conflict VARCHAR, delete_column VARCHAR, follow BOOLEAN";
/// Columns added to `streams` after its first layout, with their types: a store made before them gets them on
/// its next write, and reads of it see their defaults until then.
const STREAMS_ADDED: [(&str, &str); 4] =
    [("key", "VARCHAR[]"), ("on_conflict", "VARCHAR"), ("delete_column", "VARCHAR"), ("follow", "BOOLEAN")];

const TOKENS: &str = "tokens";
/// `streams` is a JSON array of stream names, NULL for every stream; salt and hash are hex.
const TOKENS_COLUMNS: &str = "name VARCHAR PRIMARY KEY, salt VARCHAR NOT NULL, hash VARCHAR NOT NULL, streams VARCHAR, \
     created_at TIMESTAMPTZ NOT NULL, last_used_at TIMESTAMPTZ, access VARCHAR";
/// Columns added to `tokens` after its first layout (see [`STREAMS_ADDED`]).
const TOKENS_ADDED: [(&str, &str); 1] = [("access", "VARCHAR")];

/// What arrowport's own database file adds to the host database file's path.
pub const FILE_SUFFIX: &str = ".arrowport";

pub struct Store {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Our connection to the host database: where its file is, and the tables of the older layout.
    host: RawConn,
    own: Option<Own>,
}

/// arrowport's own database, open. Fields drop in order: the connection closes before the database.
struct Own {
    conn: RawConn,
    /// Its catalog name (DuckDB derives it from the file name).
    name: String,
    _db: Database,
}

fn opt_literal(v: Option<&str>) -> String {
    v.map(quote_literal).unwrap_or_else(|| "NULL".into())
}

fn named(db: &str, table: &str) -> String {
    format!("{}.{}.{}", quote_ident(db), quote_ident(OWN_SCHEMA), quote_ident(table))
}

fn has(conn: &mut RawConn, db: &str, table: &str) -> Result<bool, DbError> {
    let sql = format!(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = {} AND schema_name = {} AND table_name = {}",
        quote_literal(db),
        quote_literal(OWN_SCHEMA),
        quote_literal(table)
    );
    Ok(conn.query_value(&sql)?.as_deref() == Some("1"))
}

fn create(conn: &mut RawConn, db: &str, table: &str, columns: &str) -> Result<(), DbError> {
    if has(conn, db, table)? {
        return Ok(());
    }
    conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {}.{}", quote_ident(db), quote_ident(OWN_SCHEMA)))?;
    conn.execute(&format!("CREATE TABLE IF NOT EXISTS {} ({columns})", named(db, table)))?;
    Ok(())
}

impl Store {
    pub fn new(host: RawConn) -> Store {
        Store { inner: Mutex::new(Inner { host, own: None }) }
    }

    /// Runs `f` on arrowport's own database (its connection and catalog name), opening it first if needed.
    /// Without `create`, a database file that does not exist yet is not made: `f` gets `None`.
    fn with<T>(
        &self,
        create: bool,
        f: impl FnOnce(Option<(&mut RawConn, &str)>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.own.is_none() {
            inner.own = open(&mut inner.host, create)?;
        }
        match inner.own.as_mut() {
            Some(own) => f(Some((&mut own.conn, own.name.as_str()))),
            None => f(None),
        }
    }
}

/// A table's columns, and the columns of its PRIMARY KEY (none when it has none).
pub type TableFacts = (Vec<Column>, Vec<String>);

impl Store {
    /// A table's columns and PRIMARY KEY columns, as the host database's committed catalog has them (`None` when
    /// it does not exist): what a stream's options are checked against when they are set.
    pub fn table_facts(&self, target: &Target) -> Result<Option<TableFacts>, DbError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let conn = &mut inner.host;
        let filter = format!(
            "lower(database_name) = lower({}) AND lower(schema_name) = lower({}) AND lower(table_name) = lower({})",
            target.catalog.as_deref().map(quote_literal).unwrap_or_else(|| "current_database()".into()),
            quote_literal(&target.schema),
            quote_literal(&target.table)
        );
        let columns: Vec<Column> = conn
            .query(&format!(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE {filter} ORDER BY column_index"
            ))?
            .into_iter()
            .map(|r| Column {
                name: r.first().cloned().flatten().unwrap_or_default(),
                sql_type: r.get(1).cloned().flatten().unwrap_or_default(),
            })
            .collect();
        if columns.is_empty() {
            return Ok(None);
        }
        let primary = conn
            .query(&format!(
                "SELECT unnest(constraint_column_names) FROM duckdb_constraints() WHERE {filter} AND constraint_type = 'PRIMARY KEY'"
            ))?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        Ok(Some((columns, primary)))
    }
}

/// Opens arrowport's own database beside the host's (see the module doc); `None` when its file does not exist
/// and `create` is false (and there is nothing of the older layout to move).
fn open(host: &mut RawConn, create: bool) -> Result<Option<Own>, DbError> {
    let rows = host.query("SELECT path, readonly FROM duckdb_databases() WHERE database_name = current_database()")?;
    let row = rows.into_iter().next().unwrap_or_default();
    let host_path = row.first().cloned().flatten().filter(|p| !p.is_empty() && p != ":memory:");
    let read_only = row.get(1).cloned().flatten().as_deref() == Some("true");
    let host_db = host.query_value("SELECT current_database()")?.unwrap_or_default();
    let legacy = !read_only && (has(host, &host_db, STREAMS)? || has(host, &host_db, TOKENS)?);
    let path = match &host_path {
        None => ":memory:".to_string(),
        Some(p) => format!("{p}{FILE_SUFFIX}"),
    };
    let exists = host_path.is_none() || std::path::Path::new(&path).exists();
    if !(exists || create || legacy) {
        return Ok(None);
    }
    if !exists && read_only {
        return Err(DbError::ours("the host database is read-only: arrowport cannot store stream mappings or tokens"));
    }
    let db = Database::open(&path, read_only)?;
    let mut conn = db.connect()?;
    let name = conn.query_value("SELECT current_database()")?.unwrap_or_default();
    if legacy {
        move_older_layout(host, &host_db, &mut conn, &name)?;
    }
    Ok(Some(Own { conn, name, _db: db }))
}

/// Moves mappings and tokens from tables of the older layout in the host database into our own, then drops them
/// from the host (the copy commits first: a crash in between leaves both, and the next open moves nothing twice).
fn move_older_layout(host: &mut RawConn, host_db: &str, own: &mut RawConn, own_db: &str) -> Result<(), DbError> {
    let mappings = load_mappings(host, host_db)?;
    let tokens = load_tokens(host, host_db)?;
    for m in &mappings {
        save_mapping(own, own_db, m)?;
    }
    let stored: Vec<String> = load_tokens(own, own_db)?.into_iter().map(|t| t.name).collect();
    for t in tokens.iter().filter(|t| !stored.contains(&t.name)) {
        insert_token(own, own_db, t)?;
    }
    let used: Vec<(String, i64)> =
        tokens.iter().filter_map(|t| t.last_used_us.map(|us| (t.name.clone(), us))).collect();
    save_last_used(own, own_db, &used)?;
    for table in [STREAMS, TOKENS] {
        host.execute(&format!("DROP TABLE IF EXISTS {}", named(host_db, table)))?;
    }
    Ok(())
}

impl Store {
    /// Every persisted mapping (none when nothing was stored yet).
    pub fn load(&self) -> Result<Vec<Mapping>, DbError> {
        self.with(false, |own| match own {
            None => Ok(vec![]),
            Some((conn, db)) => load_mappings(conn, db),
        })
    }

    /// Inserts or replaces a mapping.
    pub fn save(&self, m: &Mapping) -> Result<(), DbError> {
        self.with(true, |own| match own {
            None => Err(DbError::ours("arrowport's own database is not open")),
            Some((conn, db)) => save_mapping(conn, db, m),
        })
    }

    /// Deletes a mapping; false when there was none.
    pub fn delete(&self, stream: &str) -> Result<bool, DbError> {
        self.delete_row(STREAMS, "stream", stream)
    }

    /// Deletes the row of `table` whose `key` column holds `value`; false when there was none.
    fn delete_row(&self, table: &str, key: &str, value: &str) -> Result<bool, DbError> {
        self.with(false, |own| {
            let Some((conn, db)) = own else { return Ok(false) };
            if !has(conn, db, table)? {
                return Ok(false);
            }
            Ok(conn.execute(&format!("DELETE FROM {} WHERE {key} = {}", named(db, table), quote_literal(value)))? > 0)
        })
    }

    /// Every persisted token (none when nothing was stored yet).
    pub fn load_tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.with(false, |own| match own {
            None => Ok(vec![]),
            Some((conn, db)) => load_tokens(conn, db),
        })
    }

    /// Stores a new token; fails when one of that name exists.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<(), DbError> {
        self.with(true, |own| match own {
            None => Err(DbError::ours("arrowport's own database is not open")),
            Some((conn, db)) => insert_token(conn, db, t),
        })
    }

    /// Deletes a token; false when there was none.
    pub fn delete_token(&self, name: &str) -> Result<bool, DbError> {
        self.delete_row(TOKENS, "name", name)
    }

    /// Saves last-use times kept in memory (only ones newer than what is stored).
    pub fn save_last_used(&self, used: &[(String, i64)]) -> Result<(), DbError> {
        if used.is_empty() {
            return Ok(());
        }
        self.with(false, |own| match own {
            None => Ok(()),
            Some((conn, db)) => save_last_used(conn, db, used),
        })
    }
}

/// The columns of [`STREAMS_ADDED`] the stored table lacks.
fn missing_columns(conn: &mut RawConn, db: &str) -> Result<Vec<(&'static str, &'static str)>, DbError> {
    missing_in(conn, db, STREAMS, &STREAMS_ADDED)
}

/// The columns of `added` the stored table `table` lacks.
fn missing_in(
    conn: &mut RawConn,
    db: &str,
    table: &str,
    added: &[(&'static str, &'static str)],
) -> Result<Vec<(&'static str, &'static str)>, DbError> {
    let sql = format!(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = {} AND schema_name = {} AND table_name = {}",
        quote_literal(db),
        quote_literal(OWN_SCHEMA),
        quote_literal(table)
    );
    let present: Vec<String> = conn.query(&sql)?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    Ok(added.iter().copied().filter(|(c, _)| !present.iter().any(|p| p == c)).collect())
}

fn load_mappings(conn: &mut RawConn, db: &str) -> Result<Vec<Mapping>, DbError> {
    if !has(conn, db, STREAMS)? {
        return Ok(vec![]);
    }
    let missing = missing_columns(conn, db)?;
    let added = STREAMS_ADDED
        .map(|(c, _)| if missing.iter().any(|(m, _)| *m == c) { "NULL".to_string() } else { quote_ident(c) });
    // The key list as JSON text: our rows are texts, and JSON keeps names with commas or quotes apart.
    let rows = conn.query(&format!(
        "SELECT stream, catalog, schema, \"table\", create_table, schema_policy, mode, to_json({}::VARCHAR[]), {}, {}, {} \
         FROM {} ORDER BY stream",
        added[0],
        added[1],
        added[2],
        added[3],
        named(db, STREAMS)
    ))?;
    rows.into_iter()
        .map(|r| {
            let v = |i: usize| r.get(i).cloned().flatten();
            let bad = |what: &str| DbError::ours(format!("arrowport.streams holds an invalid {what}"));
            Ok(Mapping {
                stream: v(0).ok_or_else(|| bad("stream"))?,
                target: Target {
                    catalog: v(1),
                    schema: v(2).ok_or_else(|| bad("schema"))?,
                    table: v(3).ok_or_else(|| bad("table"))?,
                },
                create_table: v(4).as_deref() == Some("true"),
                policy: SchemaPolicy::parse(&v(5).unwrap_or_default()).map_err(|_| bad("schema_policy"))?,
                mode: Mode::parse(&v(6).unwrap_or_default()).map_err(|_| bad("mode"))?,
                rule: TableRule::Stream,
                key: match v(7) {
                    None => Vec::new(),
                    Some(json) => serde_json::from_str(&json).map_err(|_| bad("key"))?,
                },
                on_conflict: match v(8) {
                    None => OnConflict::Error,
                    Some(c) => OnConflict::parse(&c).map_err(|_| bad("on_conflict"))?,
                },
                delete_column: v(9),
                follow: v(10).as_deref() == Some("true"),
            })
        })
        .collect()
}

fn save_mapping(conn: &mut RawConn, db: &str, m: &Mapping) -> Result<(), DbError> {
    create(conn, db, STREAMS, STREAMS_COLUMNS)?;
    for (column, sql_type) in missing_columns(conn, db)? {
        conn.execute(&format!("ALTER TABLE {} ADD COLUMN {} {sql_type}", named(db, STREAMS), quote_ident(column)))?;
    }
    let key = format!("[{}]::VARCHAR[]", m.key.iter().map(|k| quote_literal(k)).collect::<Vec<_>>().join(", "));
    conn.execute(&format!(
        "INSERT INTO {} (stream, catalog, schema, \"table\", create_table, schema_policy, mode, \"key\", on_conflict, delete_column, \
         follow) VALUES ({}, {}, {}, {}, {}, {}, {}, {key}, {}, {}, {}) \
         ON CONFLICT (stream) DO UPDATE SET catalog = excluded.catalog, schema = excluded.schema, \"table\" = excluded.\"table\", \
         create_table = excluded.create_table, schema_policy = excluded.schema_policy, mode = excluded.mode, \
         \"key\" = excluded.\"key\", on_conflict = excluded.on_conflict, delete_column = excluded.delete_column, \
         follow = excluded.follow, updated_at = now()",
        named(db, STREAMS),
        quote_literal(&m.stream),
        opt_literal(m.target.catalog.as_deref()),
        quote_literal(&m.target.schema),
        quote_literal(&m.target.table),
        m.create_table,
        quote_literal(m.policy.name()),
        quote_literal(m.mode.name()),
        quote_literal(m.on_conflict.name()),
        opt_literal(m.delete_column.as_deref()),
        m.follow,
    ))?;
    Ok(())
}

fn timestamp_literal(us: i64) -> String {
    format!("(to_timestamp(0) + to_microseconds({us}))")
}

fn load_tokens(conn: &mut RawConn, db: &str) -> Result<Vec<TokenRecord>, DbError> {
    if !has(conn, db, TOKENS)? {
        return Ok(vec![]);
    }
    let access = if missing_in(conn, db, TOKENS, &TOKENS_ADDED)?.is_empty() { "access" } else { "NULL" };
    let rows = conn.query(&format!(
        "SELECT name, salt, hash, streams, epoch_us(created_at), epoch_us(last_used_at), {access} FROM {} ORDER BY name",
        named(db, TOKENS)
    ))?;
    rows.into_iter()
        .map(|r| {
            let v = |i: usize| r.get(i).cloned().flatten();
            let bad = |what: &str| DbError::ours(format!("arrowport.tokens holds an invalid {what}"));
            let scope = match v(3) {
                None => Scope::All,
                Some(json) => Scope::Streams(serde_json::from_str(&json).map_err(|_| bad("streams"))?),
            };
            Ok(TokenRecord {
                name: v(0).ok_or_else(|| bad("name"))?,
                salt: v(1).as_deref().and_then(access::from_hex).ok_or_else(|| bad("salt"))?,
                hash: v(2).as_deref().and_then(access::from_hex).ok_or_else(|| bad("hash"))?,
                scope,
                access: match v(6) {
                    None => TokenAccess::Write,
                    Some(a) => TokenAccess::parse(&a).map_err(|_| bad("access"))?,
                },
                created_us: v(4).and_then(|t| t.parse().ok()).ok_or_else(|| bad("created_at"))?,
                last_used_us: v(5).and_then(|t| t.parse().ok()),
            })
        })
        .collect()
}

fn insert_token(conn: &mut RawConn, db: &str, t: &TokenRecord) -> Result<(), DbError> {
    let streams = match &t.scope {
        Scope::All => "NULL".to_string(),
        Scope::Streams(list) => quote_literal(&serde_json::to_string(list).unwrap_or_else(|_| "[]".into())),
    };
    create(conn, db, TOKENS, TOKENS_COLUMNS)?;
    for (column, sql_type) in missing_in(conn, db, TOKENS, &TOKENS_ADDED)? {
        conn.execute(&format!("ALTER TABLE {} ADD COLUMN {} {sql_type}", named(db, TOKENS), quote_ident(column)))?;
    }
    conn.execute(&format!(
        "INSERT INTO {} (name, salt, hash, streams, created_at, access) VALUES ({}, {}, {}, {streams}, {}, {})",
        named(db, TOKENS),
        quote_literal(&t.name),
        quote_literal(&access::to_hex(&t.salt)),
        quote_literal(&access::to_hex(&t.hash)),
        timestamp_literal(t.created_us),
        quote_literal(t.access.name()),
    ))?;
    Ok(())
}

fn save_last_used(conn: &mut RawConn, db: &str, used: &[(String, i64)]) -> Result<(), DbError> {
    if used.is_empty() || !has(conn, db, TOKENS)? {
        return Ok(());
    }
    let table = named(db, TOKENS);
    for (name, us) in used {
        conn.execute(&format!(
            "UPDATE {table} SET last_used_at = {ts} WHERE name = {} AND (last_used_at IS NULL OR last_used_at < {ts})",
            quote_literal(name),
            ts = timestamp_literal(*us),
        ))?;
    }
    Ok(())
}
