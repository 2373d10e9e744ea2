//! Streams and where they land. A stream name resolves to a target table; until mappings are defined in SQL,
//! a stream lands in the table of the same name in the host database's `main` schema.
//!
//! Names from clients are validated here and only ever reach SQL quoted (see `schema::quote_ident`).

use crate::schema::quote_ident;

/// Longest stream name we accept (DuckDB identifiers have no hard limit; this keeps logs and errors sane).
pub const MAX_STREAM_NAME: usize = 255;

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
}

/// Checks a stream name from a client.
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

/// Resolves a stream to its target table.
pub fn resolve(stream: &str) -> Result<Target, String> {
    validate_stream_name(stream)?;
    Ok(Target { catalog: None, schema: "main".into(), table: stream.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_stream_lands_in_main_table_of_same_name() {
        let t = resolve("Events 2026").unwrap();
        assert_eq!(t.sql("my db"), "\"my db\".\"main\".\"Events 2026\"");
        assert_eq!(t.display(), "main.Events 2026");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(resolve("").is_err());
        assert!(resolve("a\nb").is_err());
        assert!(resolve(&"x".repeat(256)).is_err());
        assert!(resolve("quote\"ok").is_ok());
    }
}
