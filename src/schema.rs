//! Arrow schemas against DuckDB tables: which Arrow types DuckDB can hold, SQL quoting, CREATE TABLE text, and
//! the check that a stream fits an existing table.
//!
//! DuckDB's own Arrow scan decides how an Arrow type becomes a DuckDB type (so a landed column has exactly the
//! type DuckDB gives the same data in-process). This module only refuses, up front and by column name, what
//! that scan cannot take, and compares column lists. It runs no SQL.

use arrow::datatypes::{DataType, Field, Schema};

/// Quotes an SQL identifier: `my "col"` becomes `"my ""col"""`. Everything a client names goes through here.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Refuses a schema DuckDB cannot hold, naming the first offending column and its type.
pub fn check_supported(schema: &Schema) -> Result<(), String> {
    if schema.fields().is_empty() {
        return Err("the stream's schema has no columns".into());
    }
    for field in schema.fields() {
        if field.name().is_empty() {
            return Err("a column of the stream has an empty name".into());
        }
        check_type(field.data_type()).map_err(|why| {
            format!("column {} has Arrow type {} which DuckDB cannot store: {why}", quote_ident(field.name()), field.data_type())
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().to_lowercase()) {
            return Err(format!("column {} appears twice (DuckDB column names ignore case)", quote_ident(field.name())));
        }
    }
    Ok(())
}

fn check_type(t: &DataType) -> Result<(), String> {
    use DataType::*;
    match t {
        Null | Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32 | Float64 => Ok(()),
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Ok(()),
        Date32 | Date64 | Time32(_) | Time64(_) | Timestamp(_, _) | Duration(_) | Interval(_) => Ok(()),
        Decimal128(p, _) if *p <= 38 => Ok(()),
        Decimal128(p, _) => Err(format!("precision {p} is over DuckDB's 38")),
        Float16 => Err("half floats are not supported yet".into()),
        Decimal256(_, _) => Err("256-bit decimals are not supported yet".into()),
        List(f) | LargeList(f) | FixedSizeList(f, _) => check_type(f.data_type()),
        Struct(fields) => {
            if fields.is_empty() {
                return Err("a struct needs at least one field".into());
            }
            fields.iter().try_for_each(|f| check_type(f.data_type()))
        }
        Map(entries, _) => check_type(entries.data_type()),
        Dictionary(key, value) => {
            if key.is_integer() {
                check_type(value)
            } else {
                Err("dictionary keys must be integers".into())
            }
        }
        other => Err(format!("{other} is not supported")),
    }
}

/// A column as DuckDB describes it: name and SQL type text (DuckDB's own rendering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub sql_type: String,
}

/// `CREATE TABLE <target> (<col> <type>, ...)` from DuckDB's description of the incoming columns.
pub fn create_table_sql(target: &str, columns: &[Column]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type)).collect();
    format!("CREATE TABLE {target} ({})", cols.join(", "))
}

/// Checks that the incoming columns match the table's: same count, same names (ignoring case, as DuckDB does)
/// in the same order, same types. The error lists what differs.
pub fn check_fits(table_desc: &str, table: &[Column], incoming: &[Column]) -> Result<(), String> {
    let mut problems = Vec::new();
    if table.len() != incoming.len() {
        problems.push(format!("the table has {} columns, the stream has {}", table.len(), incoming.len()));
    }
    for (i, (t, s)) in table.iter().zip(incoming.iter()).enumerate() {
        if !t.name.eq_ignore_ascii_case(&s.name) {
            problems.push(format!("column {} is {} in the table but {} in the stream", i + 1, quote_ident(&t.name), quote_ident(&s.name)));
        } else if t.sql_type != s.sql_type {
            problems.push(format!("column {} is {} in the table but {} in the stream", quote_ident(&t.name), t.sql_type, s.sql_type));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the stream does not fit table {table_desc}: {}", problems.join("; ")))
    }
}

/// A field's description for listings: `name: type`.
pub fn describe_field(f: &Field) -> String {
    format!("{}: {}", f.name(), f.data_type())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};
    use std::sync::Arc;

    fn col(n: &str, t: &str) -> Column {
        Column { name: n.into(), sql_type: t.into() }
    }

    #[test]
    fn quoting_escapes_embedded_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("we\"ird; DROP TABLE x"), "\"we\"\"ird; DROP TABLE x\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn supported_types_pass_and_others_name_the_column() {
        let ok = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), true),
            Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
            Field::new("d", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
        ]);
        assert!(check_supported(&ok).is_ok());
        let bad = Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("h", DataType::Float16, true)]);
        let err = check_supported(&bad).unwrap_err();
        assert!(err.contains("column \"h\" has Arrow type Float16"), "{err}");
        let nested = Schema::new(vec![Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Float16, true))), true)]);
        assert!(check_supported(&nested).unwrap_err().contains("\"l\""));
    }

    #[test]
    fn duplicate_names_ignoring_case_are_refused() {
        let s = Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("A", DataType::Int64, true)]);
        assert!(check_supported(&s).unwrap_err().contains("appears twice"));
        assert!(check_supported(&Schema::empty()).is_err());
    }

    #[test]
    fn create_table_quotes_names() {
        let sql = create_table_sql("\"db\".\"main\".\"t\"", &[col("id", "BIGINT"), col("my col", "VARCHAR")]);
        assert_eq!(sql, "CREATE TABLE \"db\".\"main\".\"t\" (\"id\" BIGINT, \"my col\" VARCHAR)");
    }

    #[test]
    fn fit_check_reports_every_difference() {
        let table = vec![col("id", "BIGINT"), col("v", "DOUBLE")];
        assert!(check_fits("t", &table, &[col("ID", "BIGINT"), col("v", "DOUBLE")]).is_ok());
        let err = check_fits("t", &table, &[col("id", "BIGINT"), col("v", "VARCHAR")]).unwrap_err();
        assert!(err.contains("column \"v\" is DOUBLE in the table but VARCHAR in the stream"), "{err}");
        let err = check_fits("t", &table, &[col("id", "BIGINT")]).unwrap_err();
        assert!(err.contains("the table has 2 columns, the stream has 1"), "{err}");
        let err = check_fits("t", &table, &[col("x", "BIGINT"), col("v", "DOUBLE")]).unwrap_err();
        assert!(err.contains("column 1 is \"id\" in the table but \"x\" in the stream"), "{err}");
    }
}
