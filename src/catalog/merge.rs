//! Streams that merge on a key (`key`, `on_conflict`, `delete_column`): which key a stream merges on, what a
//! request must carry, and the statements that apply a request's rows to its table.
//!
//! A request's rows apply in their order, as if sent one at a time: for each key, the rows after its last delete
//! survive; `update` keeps the last survivor, `ignore` the first, `error` all of them. A key with a delete in the
//! request is deleted from the table first, so what survives it is inserted whole (a partial row after a delete
//! does not keep the deleted row's other columns). The statements are plain DELETE, UPDATE ... FROM and INSERT
//! over a staged copy of the request: the same path serves tables with a PRIMARY KEY or UNIQUE constraint, tables
//! without one and DuckLake tables (whose MERGE INTO takes a single action).
//!
//! The request's order is an ordinal column the engine adds to its batches ([`ORDINAL`]), not the scan's order.

use crate::catalog::registry::{Mapping, OnConflict};
use crate::catalog::schema::{Column, quote_ident};

/// The row's position in its request (or group of requests), added by the engine.
pub const ORDINAL: &str = "arrowport_ord";
/// Staged: this row is what its key becomes (it survives the key's last delete and was chosen).
const ALIVE: &str = "arrowport_alive";
/// Staged: the key had a delete in the request, so the table's row goes first.
const RESET: &str = "arrowport_reset";
const DELETED: &str = "arrowport_deleted";
const LAST_DELETE: &str = "arrowport_last_delete";

/// Names a request into a keyed stream cannot use for its columns.
pub const RESERVED: [&str; 5] = [ORDINAL, ALIVE, RESET, DELETED, LAST_DELETE];

/// The key a keyed stream merges on, in the table's spelling: the mapping's, else the table's PRIMARY KEY.
/// Checks that the table has every key column and not the delete column.
pub fn resolve_key(
    mapping: &Mapping,
    table_desc: &str,
    table: &[Column],
    primary_key: &[String],
) -> Result<Vec<String>, String> {
    let key = if mapping.key.is_empty() { primary_key } else { &mapping.key };
    if key.is_empty() {
        return Err(format!(
            "stream {:?} merges rows on a key, but names none and table {table_desc} has no PRIMARY KEY; give key := ['column', ...]",
            mapping.stream
        ));
    }
    let mut resolved = Vec::with_capacity(key.len());
    for k in key {
        match table.iter().find(|c| c.name.eq_ignore_ascii_case(k)) {
            Some(c) => resolved.push(c.name.clone()),
            None => return Err(format!("key column {} is not a column of table {table_desc}", quote_ident(k))),
        }
    }
    if let Some(d) = mapping.delete_column.as_deref().filter(|d| table.iter().any(|c| c.name.eq_ignore_ascii_case(d))) {
        return Err(format!(
            "delete_column {} is a column of table {table_desc}; it must be a column of the requests only",
            quote_ident(d)
        ));
    }
    Ok(resolved)
}

/// What is wrong with a request's columns for a keyed stream (before any row is read).
#[derive(Debug, PartialEq, Eq)]
pub enum RequestProblem {
    /// A key column is missing, the delete column is not BOOLEAN, a reserved name is used: the client's input.
    Input(String),
}

/// Checks a request's Arrow column names against its key: every key column present, no reserved name. Returns
/// the positions of the key columns.
pub fn key_positions(stream: &str, key: &[String], names: &[&str]) -> Result<Vec<usize>, RequestProblem> {
    if let Some(r) = names.iter().find(|n| RESERVED.iter().any(|r| r.eq_ignore_ascii_case(n))) {
        return Err(RequestProblem::Input(format!(
            "the request has a column named {}, a name arrowport uses to merge rows on a key",
            quote_ident(r)
        )));
    }
    key.iter()
        .map(|k| {
            names.iter().position(|n| n.eq_ignore_ascii_case(k)).ok_or_else(|| {
                RequestProblem::Input(format!(
                    "stream {stream:?} merges rows on key ({}): the request has no column {}",
                    key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", "),
                    quote_ident(k)
                ))
            })
        })
        .collect()
}

/// The request's columns as DuckDB describes them (with [`ORDINAL`]) split into the data columns and whether
/// the delete column is there; refuses a delete column that is not BOOLEAN.
pub fn split_request(mapping: &Mapping, incoming: &[Column]) -> Result<(Vec<Column>, bool), RequestProblem> {
    let mut data = Vec::with_capacity(incoming.len());
    let mut deletes = false;
    for c in incoming {
        if c.name == ORDINAL {
            continue;
        }
        if mapping.delete_column.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(&c.name)) {
            if c.sql_type != "BOOLEAN" {
                return Err(RequestProblem::Input(format!(
                    "delete_column {} is {} in the request; it must be BOOLEAN",
                    quote_ident(&c.name),
                    c.sql_type
                )));
            }
            deletes = true;
            continue;
        }
        data.push(c.clone());
    }
    Ok((data, deletes))
}

/// The statements that apply a staged request, in order; run in the request's transaction.
#[derive(Debug, PartialEq, Eq)]
pub struct MergePlan {
    /// `CREATE OR REPLACE TEMP TABLE <stage> AS ...` from the request's scan view: one row per key and outcome.
    pub stage: String,
    /// Deletes the keys the request deleted (and re-inserts after).
    pub delete: Option<String>,
    /// `update`: the carried columns of keys the table holds.
    pub update: Option<String>,
    /// The surviving rows of keys the table does not hold (all survivors, for `error`).
    pub insert: String,
    pub drop: String,
}

/// The statements for one request. `data` are the columns the request carries (key columns among them),
/// `delete` the request's delete column when it has one.
pub fn plan(
    target: &str,
    view: &str,
    stage: &str,
    key: &[String],
    data: &[Column],
    delete: Option<&str>,
    on_conflict: OnConflict,
) -> MergePlan {
    let q = |n: &str| quote_ident(n);
    let stage_q = q(stage);
    let keys = key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
    let matches =
        |a: &str, b: &str| key.iter().map(|k| format!("{a}.{} = {b}.{}", q(k), q(k))).collect::<Vec<_>>().join(" AND ");
    let columns = data.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    let (ord, alive, reset, deleted, last) = (q(ORDINAL), q(ALIVE), q(RESET), q(DELETED), q(LAST_DELETE));
    let (deleted_expr, last_expr) = match delete {
        Some(d) => (
            format!("coalesce({}, false)", q(d)),
            format!("max(CASE WHEN coalesce({}, false) THEN {ord} END) OVER (PARTITION BY {keys})", q(d)),
        ),
        None => ("false".to_string(), "NULL::BIGINT".to_string()),
    };
    let survives = format!("(NOT {deleted} AND {ord} > coalesce({last}, -1))");
    // One row per key for update (the last survivor) and ignore (the first); a key without survivors keeps one
    // row, not alive, for its delete.
    let choose = match on_conflict {
        OnConflict::Update => {
            format!(" QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {survives} DESC, {ord} DESC) = 1")
        }
        OnConflict::Ignore => {
            format!(" QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {survives} DESC, {ord} ASC) = 1")
        }
        OnConflict::Error => String::new(),
    };
    // The request is read once, into a materialized CTE: the scan view is a stream, and DuckDB (1.5) may plan a
    // window as a join of its input with itself, which would read the view twice and find it empty the second time.
    let stage_sql = format!(
        "CREATE OR REPLACE TEMP TABLE {stage_q} AS WITH request AS MATERIALIZED (SELECT * FROM {view}) \
         SELECT {columns}, {ord}, {survives} AS {alive}, ({last} IS NOT NULL) AS {reset} \
         FROM (SELECT *, {deleted_expr} AS {deleted}, {last_expr} AS {last} FROM request){choose}"
    );
    let delete_sql = delete.map(|_| {
        format!(
            "DELETE FROM {target} AS t WHERE EXISTS (SELECT 1 FROM {stage_q} AS s WHERE s.{reset} AND {})",
            matches("t", "s")
        )
    });
    let carried: Vec<&Column> = data.iter().filter(|c| !key.iter().any(|k| k.eq_ignore_ascii_case(&c.name))).collect();
    let update_sql = (on_conflict == OnConflict::Update && !carried.is_empty()).then(|| {
        let set = carried.iter().map(|c| format!("{} = s.{}", q(&c.name), q(&c.name))).collect::<Vec<_>>().join(", ");
        format!("UPDATE {target} AS t SET {set} FROM {stage_q} AS s WHERE s.{alive} AND {}", matches("t", "s"))
    });
    // Keys the table lacks, by a left join: DuckDB builds its hash table on the smaller side (the request's),
    // where NOT EXISTS builds it on the table and costs a pass over every key it holds.
    let (join, absent) = match on_conflict {
        OnConflict::Error => (String::new(), String::new()),
        _ => (format!(" LEFT JOIN {target} AS t ON {}", matches("t", "s")), format!(" AND t.{} IS NULL", q(&key[0]))),
    };
    let insert_sql = format!(
        "INSERT INTO {target} ({columns}) SELECT {} FROM {stage_q} AS s{join} WHERE s.{alive}{absent} ORDER BY s.{ord}",
        data.iter().map(|c| format!("s.{}", q(&c.name))).collect::<Vec<_>>().join(", ")
    );
    MergePlan {
        stage: stage_sql,
        delete: delete_sql,
        update: update_sql,
        insert: insert_sql,
        drop: format!("DROP TABLE IF EXISTS {stage_q}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, sql_type: &str) -> Column {
        Column { name: name.into(), sql_type: sql_type.into() }
    }

    fn users() -> Mapping {
        Mapping {
            on_conflict: OnConflict::Update,
            delete_column: Some("_deleted".into()),
            ..Mapping::default_for("users")
        }
    }

    #[test]
    fn the_key_is_the_mappings_else_the_primary_key() {
        let table = [col("User_Id", "BIGINT"), col("name", "VARCHAR")];
        assert_eq!(resolve_key(&users(), "main.users", &table, &["User_Id".into()]).unwrap(), ["User_Id"]);
        let mut m = users();
        m.key = vec!["user_id".into()];
        assert_eq!(resolve_key(&m, "main.users", &table, &[]).unwrap(), ["User_Id"]);
        let e = resolve_key(&users(), "main.users", &table, &[]).unwrap_err();
        assert!(e.contains("names none and table main.users has no PRIMARY KEY"), "{e}");
        m.key = vec!["id".into()];
        assert_eq!(
            resolve_key(&m, "main.users", &table, &[]).unwrap_err(),
            "key column \"id\" is not a column of table main.users"
        );
        m.key = vec!["name".into()];
        let with_delete = [col("name", "VARCHAR"), col("_DELETED", "BOOLEAN")];
        assert!(resolve_key(&m, "t", &with_delete, &[]).unwrap_err().contains("is a column of table t"));
    }

    #[test]
    fn requests_carry_the_key_and_no_reserved_name() {
        let key = vec!["a".to_string(), "b".to_string()];
        assert_eq!(key_positions("s", &key, &["B", "x", "A"]).unwrap(), [2, 0]);
        let RequestProblem::Input(e) = key_positions("s", &key, &["a", "x"]).unwrap_err();
        assert_eq!(e, "stream \"s\" merges rows on key (\"a\", \"b\"): the request has no column \"b\"");
        let RequestProblem::Input(e) = key_positions("s", &key, &["a", "b", "ARROWPORT_ORD"]).unwrap_err();
        assert!(e.contains("a name arrowport uses"), "{e}");
    }

    #[test]
    fn the_delete_column_is_boolean_and_not_data() {
        let incoming = [col("id", "BIGINT"), col("_deleted", "BOOLEAN"), col(ORDINAL, "BIGINT")];
        assert_eq!(split_request(&users(), &incoming).unwrap(), (vec![col("id", "BIGINT")], true));
        assert_eq!(split_request(&users(), &incoming[..1]).unwrap(), (vec![col("id", "BIGINT")], false));
        let RequestProblem::Input(e) = split_request(&users(), &[col("_deleted", "INTEGER")]).unwrap_err();
        assert_eq!(e, "delete_column \"_deleted\" is INTEGER in the request; it must be BOOLEAN");
    }

    #[test]
    fn plans_name_every_statement() {
        let data = [col("id", "BIGINT"), col("name", "VARCHAR")];
        let p = plan("\"db\".\"main\".\"u\"", "v", "st", &["id".into()], &data, Some("_deleted"), OnConflict::Update);
        assert!(p.stage.contains("QUALIFY row_number() OVER (PARTITION BY \"id\" ORDER BY"), "{}", p.stage);
        assert!(p.stage.contains("WITH request AS MATERIALIZED (SELECT * FROM v)"), "{}", p.stage);
        assert!(p.stage.contains("\"arrowport_ord\" DESC) = 1"), "{}", p.stage);
        assert!(p.delete.as_deref().unwrap().starts_with("DELETE FROM \"db\".\"main\".\"u\" AS t WHERE EXISTS"));
        assert_eq!(
            p.update.as_deref().unwrap(),
            "UPDATE \"db\".\"main\".\"u\" AS t SET \"name\" = s.\"name\" FROM \"st\" AS s WHERE s.\"arrowport_alive\" AND t.\"id\" = s.\"id\""
        );
        assert!(p.insert.contains("LEFT JOIN \"db\".\"main\".\"u\" AS t ON t.\"id\" = s.\"id\" WHERE s.\"arrowport_alive\" AND t.\"id\" IS NULL"), "{}", p.insert);
        let p = plan("t", "v", "st", &["id".into()], &data[..1], None, OnConflict::Ignore);
        assert!(p.stage.contains("ASC) = 1") && p.stage.contains("NULL::BIGINT"), "{}", p.stage);
        assert_eq!((p.delete, p.update), (None, None));
        let p = plan("t", "v", "st", &["id".into()], &data, Some("d"), OnConflict::Error);
        assert!(!p.stage.contains("QUALIFY") && !p.insert.contains("LEFT JOIN"), "{p:?}");
    }
}
