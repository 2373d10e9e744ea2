//! Arrow schemas against DuckDB tables: which Arrow types DuckDB can hold, SQL quoting, CREATE TABLE text, and
//! the check that a stream fits an existing table.
//!
//! DuckDB's own Arrow scan decides how an Arrow type becomes a DuckDB type (so a landed column has exactly the
//! type DuckDB gives the same data in-process). This module only refuses, up front and by column name, what
//! that scan cannot take, and compares column lists. It runs no SQL.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};

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
        check_names(field.name(), field.data_type())?;
        check_type(field.data_type()).map_err(|why| {
            format!(
                "column {} has Arrow type {} which DuckDB cannot store: {why}",
                quote_ident(field.name()),
                field.data_type()
            )
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().to_lowercase()) {
            return Err(format!(
                "column {} appears twice (DuckDB column names ignore case)",
                quote_ident(field.name())
            ));
        }
    }
    Ok(())
}

/// Refuses NUL characters in a column's name and in the names of its nested fields: the Arrow C interface
/// passes names as C strings, so DuckDB would see a different (cut) name, or none.
fn check_names(column: &str, t: &DataType) -> Result<(), String> {
    if column.contains('\0') {
        return Err(format!("column {} has a NUL character in its name", quote_ident(&column.replace('\0', "\\0"))));
    }
    let nested: Vec<&FieldRef> = match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => vec![f],
        DataType::Struct(fields) => fields.iter().collect(),
        _ => vec![],
    };
    for f in nested {
        if f.name().contains('\0') {
            return Err(format!("column {} has a nested field with a NUL character in its name", quote_ident(column)));
        }
        check_names(column, f.data_type())?;
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
        // Stored widened to FLOAT (see `storable`).
        Float16 => Ok(()),
        // Stored as DECIMAL(min(p, 38), s); each value must fit (checked per batch in `cast_batch`).
        Decimal256(_, s) if *s >= 0 && *s <= 38 => Ok(()),
        Decimal256(_, s) => Err(format!("scale {s} is outside DuckDB's 0..=38")),
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

/// The type DuckDB's Arrow scan gets for `t`: float16 widened to float32, decimal256 narrowed to decimal128 (the
/// scan refuses both). Nested types are mapped inside.
fn storable_type(t: &DataType) -> DataType {
    use DataType::*;
    let field =
        |f: &FieldRef| -> FieldRef { Arc::new(f.as_ref().clone().with_data_type(storable_type(f.data_type()))) };
    match t {
        Float16 => Float32,
        Decimal256(p, s) => Decimal128((*p).min(38), *s),
        List(f) => List(field(f)),
        LargeList(f) => LargeList(field(f)),
        FixedSizeList(f, n) => FixedSizeList(field(f), *n),
        Struct(fields) => Struct(fields.iter().map(field).collect()),
        Map(f, sorted) => Map(field(f), *sorted),
        Dictionary(k, v) => Dictionary(k.clone(), Box::new(storable_type(v))),
        other => other.clone(),
    }
}

/// The schema to hand DuckDB, and whether batches need [`cast_batch`] to match it.
pub fn storable(schema: &SchemaRef) -> (SchemaRef, bool) {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_data_type(storable_type(f.data_type()))))
        .collect();
    let changed = fields.iter().zip(schema.fields().iter()).any(|(a, b)| a.data_type() != b.data_type());
    if !changed {
        return (Arc::clone(schema), false);
    }
    (Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), true)
}

/// Casts a batch to the storable schema; a value that does not fit is an error naming its column.
pub fn cast_batch(batch: &RecordBatch, to: &SchemaRef) -> Result<RecordBatch, String> {
    let options = CastOptions { safe: false, ..Default::default() };
    let columns = batch
        .columns()
        .iter()
        .zip(to.fields().iter())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast_with_options(c, f.data_type(), &options).map_err(|e| {
                    format!(
                        "column {} ({}) does not fit DuckDB's {}: {e}",
                        quote_ident(f.name()),
                        c.data_type(),
                        f.data_type()
                    )
                })
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    RecordBatch::try_new(Arc::clone(to), columns).map_err(|e| e.to_string())
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

/// DuckDB types a DuckLake table cannot hold (DuckLake 0.4 with DuckDB 1.5): BIT, BIGNUM, UNION, ENUM, fixed-size
/// arrays, and TIME_NS (its catalog in PostgreSQL has no such type). Refuses, naming every such column, before
/// anything is written.
pub fn check_lake_types(table_desc: &str, incoming: &[Column]) -> Result<(), String> {
    let refused: Vec<String> = incoming
        .iter()
        .filter(|c| lake_refuses(&c.sql_type))
        .map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "table {table_desc} is in a DuckLake, which cannot store column(s) {}; cast them (a fixed-size array to a list, \
         an ENUM to VARCHAR, TIME_NS to TIME, BIT or BIGNUM to VARCHAR) before sending",
        refused.join(", ")
    ))
}

fn lake_refuses(sql_type: &str) -> bool {
    // Quoted parts are names (STRUCT fields) or values (ENUM members), never types.
    let mut upper = String::with_capacity(sql_type.len());
    let mut quote = None;
    for c in sql_type.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => {
                quote = None;
                upper.push('q');
            }
            (Some(_), _) => {}
            (None, c) => upper.push(c.to_ascii_uppercase()),
        }
    }
    let bytes = upper.as_bytes();
    let fixed_array = upper.match_indices('[').any(|(at, _)| bytes.get(at + 1).is_some_and(u8::is_ascii_digit));
    // A word in type position (a STRUCT field's name is followed by a space, a type is not).
    let mut start = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut refused = false;
    for (i, &c) in bytes.iter().enumerate().chain(std::iter::once((bytes.len(), &b' '))) {
        if i < bytes.len() && word(c) {
            continue;
        }
        let w = &upper[start..i];
        if i < bytes.len() && c == b' ' {
            start = i + 1;
            continue;
        }
        refused |= matches!(w, "BIT" | "BIGNUM" | "VARINT" | "UNION" | "ENUM" | "TIME_NS");
        start = i + 1;
    }
    fixed_array || refused
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
            problems.push(format!(
                "column {} is {} in the table but {} in the stream",
                i + 1,
                quote_ident(&t.name),
                quote_ident(&s.name)
            ));
        } else if t.sql_type != s.sql_type {
            problems.push(format!(
                "column {} is {} in the table but {} in the stream",
                quote_ident(&t.name),
                t.sql_type,
                s.sql_type
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the stream does not fit table {table_desc}: {}", problems.join("; ")))
    }
}

/// For `by_name` and `evolve`: every stream column must exist in the table with the same type (ignoring case in
/// names) or, with `evolve`, be new; returns the new columns to add. Table columns the stream lacks get NULL.
pub fn check_by_name(
    table_desc: &str,
    table: &[Column],
    incoming: &[Column],
    evolve: bool,
) -> Result<Vec<Column>, String> {
    let mut problems = Vec::new();
    let mut added = Vec::new();
    for s in incoming {
        match table.iter().find(|t| t.name.eq_ignore_ascii_case(&s.name)) {
            Some(t) if t.sql_type != s.sql_type => problems.push(format!(
                "column {} is {} in the table but {} in the stream",
                quote_ident(&t.name),
                t.sql_type,
                s.sql_type
            )),
            Some(_) => {}
            None if evolve => added.push(s.clone()),
            None => problems.push(format!(
                "column {} is not in the table (schema_policy by_name matches existing columns; evolve adds new ones)",
                quote_ident(&s.name)
            )),
        }
    }
    if problems.is_empty() {
        Ok(added)
    } else {
        Err(format!("the stream does not fit table {table_desc}: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_a_ducklake_cannot_hold_are_named_before_anything_is_written() {
        let col = |name: &str, t: &str| Column { name: name.into(), sql_type: t.into() };
        for t in [
            "BIT",
            "BIGNUM",
            "UNION(a INTEGER, b VARCHAR)",
            "ENUM('a', 'b')",
            "BIGINT[2]",
            "TIME_NS",
            "STRUCT(a INTEGER[3])",
            "MAP(VARCHAR, BIT)",
        ] {
            assert!(lake_refuses(t), "{t}");
        }
        for t in [
            "INTEGER",
            "BIGINT[]",
            "STRUCT(\"bit\" INTEGER)",
            "STRUCT(bit INTEGER, enum VARCHAR)",
            "TIMESTAMP_NS",
            "TIME",
            "HUGEINT",
            "UUID",
        ] {
            assert!(!lake_refuses(t), "{t}");
        }
        let e = check_lake_types("lake.main.t", &[col("ok", "INTEGER"), col("pair", "BIGINT[2]"), col("t", "TIME_NS")])
            .unwrap_err();
        assert!(
            e.starts_with(
                "table lake.main.t is in a DuckLake, which cannot store column(s) \"pair\" BIGINT[2], \"t\" TIME_NS;"
            ),
            "{e}"
        );
        assert!(check_lake_types("x", &[col("a", "VARCHAR")]).is_ok());
    }
    use arrow::array::{ArrayRef, Decimal256Array, Float32Array};
    use arrow::datatypes::i256;
    use arrow::datatypes::{Field, TimeUnit};

    fn col(n: &str, t: &str) -> Column {
        Column { name: n.into(), sql_type: t.into() }
    }

    #[test]
    fn nul_characters_in_names_are_refused_at_any_depth() {
        let nested = DataType::Struct(vec![Field::new("a\0b", DataType::Int32, true)].into());
        for (name, t) in [
            ("x\0", DataType::Int32),
            ("ok", nested),
            ("ok", DataType::List(Arc::new(Field::new("\0", DataType::Int32, true)))),
        ] {
            let e = check_supported(&Schema::new(vec![Field::new(name, t, true)])).unwrap_err();
            assert!(e.contains("NUL character"), "{e}");
        }
        assert!(check_supported(&Schema::new(vec![Field::new("plain", DataType::Int32, true)])).is_ok());
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
        let bad = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new(
                "u",
                DataType::Union(arrow::datatypes::UnionFields::empty(), arrow::datatypes::UnionMode::Dense),
                true,
            ),
        ]);
        let err = check_supported(&bad).unwrap_err();
        assert!(err.contains("column \"u\" has Arrow type Union"), "{err}");
        let nested = Schema::new(vec![Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Decimal256(40, 39), true))),
            true,
        )]);
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

    #[test]
    fn by_name_matches_any_order_and_evolve_adds_columns() {
        let table = vec![col("id", "BIGINT"), col("v", "DOUBLE"), col("note", "VARCHAR")];
        assert_eq!(check_by_name("t", &table, &[col("V", "DOUBLE"), col("id", "BIGINT")], false).unwrap(), vec![]);
        let err = check_by_name("t", &table, &[col("id", "BIGINT"), col("extra", "INTEGER")], false).unwrap_err();
        assert!(err.contains("column \"extra\" is not in the table"), "{err}");
        assert_eq!(
            check_by_name("t", &table, &[col("id", "BIGINT"), col("extra", "INTEGER")], true).unwrap(),
            vec![col("extra", "INTEGER")]
        );
        let err = check_by_name("t", &table, &[col("v", "VARCHAR")], true).unwrap_err();
        assert!(err.contains("column \"v\" is DOUBLE in the table but VARCHAR in the stream"), "{err}");
    }

    fn half(values: &[Option<f32>]) -> ArrayRef {
        arrow::compute::cast(&Float32Array::from(values.to_vec()), &DataType::Float16).unwrap()
    }

    #[test]
    fn half_floats_widen_and_wide_decimals_narrow_when_they_fit() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("h", DataType::Float16, true),
            Field::new("d", DataType::Decimal256(40, 2), true),
            Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Float16, true))), true),
        ]));
        let (to, needs) = storable(&schema);
        assert!(needs);
        assert_eq!(to.field(0).data_type(), &DataType::Float32);
        assert_eq!(to.field(1).data_type(), &DataType::Decimal128(38, 2));
        assert_eq!(to.field(2).data_type(), &DataType::List(Arc::new(Field::new("item", DataType::Float32, true))));
        let plain = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        assert!(!storable(&plain).1);

        let two = Arc::new(Schema::new(vec![
            Field::new("h", DataType::Float16, true),
            Field::new("d", DataType::Decimal256(40, 2), true),
        ]));
        let (to, _) = storable(&two);
        let ok = RecordBatch::try_new(
            Arc::clone(&two),
            vec![
                half(&[Some(1.5), None]),
                Arc::new(
                    Decimal256Array::from(vec![Some(i256::from_i128(12345)), None])
                        .with_precision_and_scale(40, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let cast = cast_batch(&ok, &to).unwrap();
        assert_eq!(cast.column(0).data_type(), &DataType::Float32);
        let too_big = RecordBatch::try_new(
            Arc::clone(&two),
            vec![
                half(&[Some(1.0)]),
                Arc::new(
                    Decimal256Array::from(vec![Some(i256::from_i128(i128::MAX).wrapping_mul(i256::from_i128(10)))])
                        .with_precision_and_scale(40, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let err = cast_batch(&too_big, &to).unwrap_err();
        assert!(err.starts_with("column \"d\" (Decimal256(40, 2)) does not fit DuckDB's Decimal128(38, 2)"), "{err}");
    }
}
