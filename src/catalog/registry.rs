//! Streams and where they land.
//!
//! A stream name resolves to a [`Mapping`]: its target table and how requests write into it. Mappings are
//! defined in SQL (`arrowport_create_stream` ...), persisted in arrowport's own database (table
//! `arrowport.streams`, see `store`), and cached here, so a change takes effect for the next request of every running listener. A
//! name without a mapping lands in the same-named table of the host database's `main` schema, unless the
//! listener refuses unknown streams.
//!
//! Names from clients are validated here and only ever reach SQL quoted (see `catalog::schema::quote_ident`).

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::catalog::schema::quote_ident;

/// Longest stream name we accept (DuckDB identifiers have no hard limit; this keeps logs and errors sane).
pub const MAX_STREAM_NAME: usize = 255;

/// The schema in the host database that holds arrowport's own tables; no stream may land there.
pub const OWN_SCHEMA: &str = "arrowport";

/// Where a stream's rows go. `catalog: None` means the host database (the one arrowport was loaded into).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub catalog: Option<String>,
    pub schema: String,
    pub table: String,
}

impl Target {
    /// The fully qualified, quoted name, with `host_db` standing in for the host database.
    pub fn sql(&self, host_db: &str) -> String {
        format!(
            "{}.{}.{}",
            quote_ident(self.catalog.as_deref().unwrap_or(host_db)),
            quote_ident(&self.schema),
            quote_ident(&self.table)
        )
    }

    /// `schema.table` as users read it (the catalog only when it is not the host database).
    pub fn display(&self) -> String {
        match &self.catalog {
            Some(c) => format!("{c}.{}.{}", self.schema, self.table),
            None => format!("{}.{}", self.schema, self.table),
        }
    }

    /// Parses `table`, `schema.table` or `catalog.schema.table`; a part may be double-quoted (`"my.db"`,
    /// with `""` for a quote inside).
    pub fn parse(text: &str) -> Result<Target, String> {
        let parts = split_qualified(text).map_err(|why| format!("invalid target {text:?}: {why}"))?;
        let target = match parts.as_slice() {
            [t] => Target { catalog: None, schema: "main".into(), table: t.clone() },
            [s, t] => Target { catalog: None, schema: s.clone(), table: t.clone() },
            [c, s, t] => Target { catalog: Some(c.clone()), schema: s.clone(), table: t.clone() },
            _ => return Err(format!("invalid target {text:?}: use table, schema.table or catalog.schema.table")),
        };
        if let Some(c) =
            target.catalog.as_deref().filter(|c| c.eq_ignore_ascii_case("temp") || c.eq_ignore_ascii_case("system"))
        {
            return Err(format!(
                "invalid target {text:?}: the catalog {c:?} is DuckDB's own (temporary tables belong to one connection); land in a database's table"
            ));
        }
        if target.schema.eq_ignore_ascii_case(OWN_SCHEMA) && target.catalog.is_none() {
            return Err(format!("invalid target {text:?}: the schema {OWN_SCHEMA:?} holds arrowport's own tables"));
        }
        Ok(target)
    }
}

/// The parts of a qualified name (`catalog.schema.table`, parts possibly double-quoted).
pub fn split_qualified(text: &str) -> Result<Vec<String>, &'static str> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err("an unterminated quote"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err("an empty name part");
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(_) => return Err("text after a quoted name"),
        }
    }
}

/// How a stream's columns must relate to its table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Same columns, same order, same types.
    Strict,
    /// Columns matched by name, order free; table columns the stream lacks get NULL.
    ByName,
    /// As `ByName`, and new stream columns are added to the table in the same transaction.
    Evolve,
}

/// What a request does to the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Append,
    /// The table's rows are replaced by the request's, atomically.
    Replace,
}

macro_rules! named_values {
    ($ty:ident, $option:literal, $($variant:ident = $text:literal),+) => {
        impl $ty {
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Result<$ty, String> {
                match text.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(format!(
                        concat!("invalid value for option ", $option, ": {:?} (allowed: {})"),
                        text,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

named_values!(SchemaPolicy, "schema_policy", Strict = "strict", ByName = "by_name", Evolve = "evolve");
named_values!(Mode, "mode", Append = "append", Replace = "replace");

/// What a row whose key the table already holds does (streams that merge on a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Insert as an append does: a key constraint refuses the request, a table without one takes the row.
    #[default]
    Error,
    /// The row already there stays.
    Ignore,
    /// The incoming row replaces the columns it carries.
    Update,
}

named_values!(OnConflict, "on_conflict", Error = "error", Ignore = "ignore", Update = "update");

/// How a stream lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub stream: String,
    pub target: Target,
    pub create_table: bool,
    pub policy: SchemaPolicy,
    pub mode: Mode,
    /// How an existing or missing table is treated; `Stream` (the options above) except for Flight SQL ingest.
    pub rule: TableRule,
    /// The columns rows merge on; empty: the target's PRIMARY KEY, looked up when needed.
    pub key: Vec<String>,
    pub on_conflict: OnConflict,
    /// A BOOLEAN column of the requests (never of the table) whose true deletes the row's key.
    pub delete_column: Option<String>,
    /// Consumers may follow the stream: each commit gets a position, kept with its rows in [`CURSOR_COLUMN`].
    pub follow: bool,
}

/// The column of a followable stream's table that holds each row's commit position.
pub const CURSOR_COLUMN: &str = "arrowport_cursor";

/// Flight SQL ingest's table-exists / table-missing semantics (ADBC's modes), beside the stream options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableRule {
    /// As the mapping's `create_table` and `mode` say.
    #[default]
    Stream,
    /// Create the table; fail if it exists.
    Create,
    /// Append; fail if the table is missing.
    Append,
    /// Drop and recreate the table from the stream's schema (create it if missing).
    Replace,
    /// Append, creating the table if it is missing.
    CreateAppend,
}

impl TableRule {
    /// ADBC's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            TableRule::Stream => "stream",
            TableRule::Create => "create",
            TableRule::Append => "append",
            TableRule::Replace => "replace",
            TableRule::CreateAppend => "create_append",
        }
    }
}

impl Mapping {
    /// The mapping of a stream nobody configured: the same-named table in `main`.
    pub fn default_for(stream: &str) -> Mapping {
        Mapping {
            stream: stream.to_string(),
            target: Target { catalog: None, schema: "main".into(), table: stream.to_string() },
            create_table: true,
            policy: SchemaPolicy::Strict,
            mode: Mode::Append,
            rule: TableRule::Stream,
            key: Vec::new(),
            on_conflict: OnConflict::Error,
            delete_column: None,
            follow: false,
        }
    }

    /// Whether requests merge on a key (update or ignore existing keys, or delete keys) rather than append.
    pub fn is_keyed(&self) -> bool {
        self.on_conflict != OnConflict::Error || self.delete_column.is_some()
    }
}

/// Options of `arrowport_create_stream` / `arrowport_alter_stream`; `None` leaves a value as it is.
#[derive(Debug, Clone, Default)]
pub struct MappingOptions {
    pub target: Option<String>,
    pub create_table: Option<bool>,
    pub schema_policy: Option<String>,
    pub mode: Option<String>,
    pub key: Option<Vec<String>>,
    pub on_conflict: Option<String>,
    /// `Some("")` takes the delete column away.
    pub delete_column: Option<String>,
    pub follow: Option<bool>,
}

impl MappingOptions {
    /// Applies the options to `base`, validating each.
    pub fn apply(&self, mut base: Mapping) -> Result<Mapping, String> {
        if let Some(t) = &self.target {
            base.target = Target::parse(t)?;
        }
        if let Some(c) = self.create_table {
            base.create_table = c;
        }
        if let Some(p) = &self.schema_policy {
            base.policy = SchemaPolicy::parse(p)?;
        }
        if let Some(m) = &self.mode {
            base.mode = Mode::parse(m)?;
        }
        if let Some(k) = &self.key {
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = k.iter().find(|c| !seen.insert(c.to_lowercase())) {
                return Err(format!("invalid value for option key: the column {dup:?} is named twice"));
            }
            base.key = k.clone();
        }
        if let Some(c) = &self.on_conflict {
            base.on_conflict = OnConflict::parse(c)?;
        }
        if let Some(d) = &self.delete_column {
            base.delete_column = Some(d.trim().to_string()).filter(|d| !d.is_empty());
        }
        if let Some(f) = self.follow {
            base.follow = f;
        }
        if base.follow && (base.is_keyed() || base.mode == Mode::Replace) {
            return Err(
                "follow := true takes streams that append; a stream that replaces or merges rows cannot be followed"
                    .into(),
            );
        }
        if base.is_keyed() && base.mode == Mode::Replace {
            return Err(
                "mode 'replace' replaces the whole table; it does not go with on_conflict or delete_column".into()
            );
        }
        if let Some(d) = base.delete_column.as_deref().filter(|d| base.key.iter().any(|k| k.eq_ignore_ascii_case(d))) {
            return Err(format!("delete_column {d:?} is a key column; it must be a column of its own"));
        }
        Ok(base)
    }
}

/// Checks a stream name from a client or a user.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the stream name is empty".into());
    }
    if name.len() > MAX_STREAM_NAME {
        return Err(format!("the stream name is longer than {MAX_STREAM_NAME} bytes"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("the stream name contains control characters".into());
    }
    Ok(())
}

/// Why a stream did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    BadName(String),
    Unknown(String),
}

/// The cache of mappings, shared by the SQL functions (which change it) and the ingest core (which reads it).
#[derive(Debug, Default)]
pub struct Registry {
    mappings: RwLock<BTreeMap<String, Mapping>>,
}

impl Registry {
    /// Replaces the whole cache (after loading the persisted mappings).
    pub fn load(&self, all: Vec<Mapping>) {
        if let Ok(mut m) = self.mappings.write() {
            *m = all.into_iter().map(|x| (x.stream.clone(), x)).collect();
        }
    }

    pub fn put(&self, mapping: Mapping) {
        if let Ok(mut m) = self.mappings.write() {
            m.insert(mapping.stream.clone(), mapping);
        }
    }

    pub fn remove(&self, stream: &str) {
        if let Ok(mut m) = self.mappings.write() {
            m.remove(stream);
        }
    }

    pub fn get(&self, stream: &str) -> Option<Mapping> {
        self.mappings.read().ok()?.get(stream).cloned()
    }

    /// Whether `stream` has a mapping (without copying it).
    pub fn contains(&self, stream: &str) -> bool {
        self.mappings.read().is_ok_and(|m| m.contains_key(stream))
    }

    pub fn all(&self) -> Vec<Mapping> {
        self.mappings.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The mapping a request uses; unknown names land in `main.<name>` unless `reject_unknown`.
    pub fn resolve(&self, stream: &str, reject_unknown: bool) -> Result<Mapping, ResolveError> {
        validate_stream_name(stream).map_err(ResolveError::BadName)?;
        if let Some(m) = self.get(stream) {
            return Ok(m);
        }
        if reject_unknown {
            return Err(ResolveError::Unknown(format!(
                "unknown stream {stream:?}: this listener only takes streams created with arrowport_create_stream"
            )));
        }
        Ok(Mapping::default_for(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_stream_lands_in_main_table_of_same_name() {
        let r = Registry::default();
        let m = r.resolve("Events 2026", false).unwrap();
        assert_eq!(m.target.sql("my db"), "\"my db\".\"main\".\"Events 2026\"");
        assert_eq!(m.target.display(), "main.Events 2026");
        assert_eq!((m.create_table, m.policy, m.mode), (true, SchemaPolicy::Strict, Mode::Append));
        assert!(matches!(r.resolve("x", true), Err(ResolveError::Unknown(_))));
    }

    #[test]
    fn bad_names_are_refused() {
        let r = Registry::default();
        assert!(r.resolve("", false).is_err());
        assert!(r.resolve("a\nb", false).is_err());
        assert!(r.resolve(&"x".repeat(256), false).is_err());
        assert!(r.resolve("quote\"ok", false).is_ok());
    }

    #[test]
    fn targets_parse_with_quotes() {
        assert_eq!(Target::parse("t").unwrap().sql("h"), "\"h\".\"main\".\"t\"");
        assert_eq!(Target::parse("s.t").unwrap().sql("h"), "\"h\".\"s\".\"t\"");
        let t = Target::parse("\"my.db\".\"Sch ema\".\"ta\"\"ble\"").unwrap();
        assert_eq!(t.sql("h"), "\"my.db\".\"Sch ema\".\"ta\"\"ble\"");
        assert!(Target::parse("a..b").is_err());
        assert!(Target::parse("a.b.c.d").is_err());
        assert!(Target::parse("\"open").is_err());
        assert!(Target::parse("arrowport.streams").unwrap_err().contains("arrowport's own tables"));
        assert!(Target::parse("temp.main.x").unwrap_err().contains("the catalog \"temp\" is DuckDB's own"));
        assert!(Target::parse("TEMP.main.x").is_err() && Target::parse("system.main.x").is_err());
        assert_eq!(Target::parse("x; DROP TABLE y").unwrap().sql("db"), "\"db\".\"main\".\"x; DROP TABLE y\"");
    }

    #[test]
    fn options_name_the_allowed_values() {
        let e = MappingOptions { schema_policy: Some("loose".into()), ..Default::default() }
            .apply(Mapping::default_for("s"))
            .unwrap_err();
        assert_eq!(e, "invalid value for option schema_policy: \"loose\" (allowed: strict, by_name, evolve)");
        let e = MappingOptions { mode: Some("upsert".into()), ..Default::default() }
            .apply(Mapping::default_for("s"))
            .unwrap_err();
        assert_eq!(e, "invalid value for option mode: \"upsert\" (allowed: append, replace)");
        let m = MappingOptions {
            target: Some("c.s.t".into()),
            mode: Some("REPLACE".into()),
            create_table: Some(false),
            ..Default::default()
        }
        .apply(Mapping::default_for("s"))
        .unwrap();
        assert_eq!(
            (m.target.display(), m.mode, m.create_table, m.policy),
            ("c.s.t".into(), Mode::Replace, false, SchemaPolicy::Strict)
        );
    }

    #[test]
    fn keyed_options_are_checked_together() {
        let keyed = |o: MappingOptions| o.apply(Mapping::default_for("users"));
        let m = keyed(MappingOptions {
            key: Some(vec!["user_id".into()]),
            on_conflict: Some("UPDATE".into()),
            delete_column: Some("_deleted".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (m.on_conflict, m.delete_column.as_deref(), m.is_keyed()),
            (OnConflict::Update, Some("_deleted"), true)
        );
        assert!(!Mapping::default_for("events").is_keyed());
        let e = keyed(MappingOptions { on_conflict: Some("merge".into()), ..Default::default() }).unwrap_err();
        assert_eq!(e, "invalid value for option on_conflict: \"merge\" (allowed: error, ignore, update)");
        let e = keyed(MappingOptions { key: Some(vec!["a".into(), "A".into()]), ..Default::default() }).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        let e = keyed(MappingOptions {
            on_conflict: Some("ignore".into()),
            mode: Some("replace".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("does not go with on_conflict"), "{e}");
        let e = keyed(MappingOptions {
            key: Some(vec!["id".into()]),
            delete_column: Some("ID".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("is a key column"), "{e}");
        let cleared = MappingOptions { delete_column: Some(String::new()), ..Default::default() }.apply(m).unwrap();
        assert_eq!(cleared.delete_column, None);
    }

    #[test]
    fn the_cache_serves_mappings_first() {
        let r = Registry::default();
        let mut m = Mapping::default_for("events");
        m.target = Target::parse("other.t").unwrap();
        r.put(m.clone());
        assert_eq!(r.resolve("events", true).unwrap(), m);
        r.remove("events");
        assert_eq!(r.resolve("events", false).unwrap(), Mapping::default_for("events"));
    }
}
