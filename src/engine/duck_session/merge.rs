//! Landing into a stream that merges on a key (`catalog::merge` decides the statements): the request's batches get
//! their ordinal, key columns are checked for NULLs as batches pass, and the rows are applied in the request's
//! transaction through a staged copy (the scan view can be read once).

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field};

use super::*;
use crate::catalog::merge::{self, ORDINAL, RequestProblem};

/// A keyed request's batches as DuckDB's scan reads them: each with its rows' ordinal appended, refused at the
/// first NULL in a key column.
struct Ordered {
    inner: Box<dyn BatchPull>,
    schema: SchemaRef,
    next: i64,
    keys: Vec<(usize, String)>,
    failed: Arc<Mutex<Option<EngineError>>>,
}

impl BatchPull for Ordered {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        let Some(batch) = self.inner.next_batch()? else { return Ok(None) };
        if let Some((_, name)) = self.keys.iter().find(|(i, _)| batch.column(*i).null_count() > 0) {
            let e = EngineError::BadInput(format!(
                "key column {} is NULL in a row; every row needs its key",
                quote_ident(name)
            ));
            let msg = e.to_string();
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert(e);
            }
            return Err(msg);
        }
        let n = batch.num_rows() as i64;
        let ordinal: ArrayRef = Arc::new(Int64Array::from_iter_values(self.next..self.next + n));
        self.next += n;
        let mut columns = batch.columns().to_vec();
        columns.push(ordinal);
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map(Some).map_err(|e| e.to_string())
    }
}

fn input_error(p: RequestProblem) -> EngineError {
    match p {
        RequestProblem::Input(m) => EngineError::BadInput(m),
    }
}

impl Landing {
    /// A table's PRIMARY KEY columns in order (none when it has none or does not exist); answers inside a
    /// transaction too.
    pub(super) fn primary_key(&self, conn: &mut RawConn, target: &Target) -> Result<Vec<String>, EngineError> {
        let catalog = target.catalog.as_deref().unwrap_or(&self.host_db);
        let sql = format!(
            "SELECT unnest(constraint_column_names) FROM duckdb_constraints() WHERE lower(database_name) = lower({}) \
             AND lower(schema_name) = lower({}) AND lower(table_name) = lower({}) AND constraint_type = 'PRIMARY KEY'",
            quote_literal(catalog),
            quote_literal(&target.schema),
            quote_literal(&target.table)
        );
        Ok(conn.query(&sql).map_err(E::db)?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect())
    }

    /// The scan's schema and batches for a request: as they are, or for a keyed stream with the ordinal column
    /// and the key checks. `failed` receives the first NULL key's error.
    pub(super) fn scan_input(
        &self,
        conn: &mut RawConn,
        mapping: &Mapping,
        schema: SchemaRef,
        pull: Box<dyn BatchPull>,
        failed: &Arc<Mutex<Option<EngineError>>>,
    ) -> Result<(SchemaRef, Box<dyn BatchPull>), EngineError> {
        if !mapping.is_keyed() {
            return Ok((schema, pull));
        }
        let key = if mapping.key.is_empty() { self.primary_key(conn, &mapping.target)? } else { mapping.key.clone() };
        if key.is_empty() {
            return Err(EngineError::Conflict(format!(
                "stream {:?} merges rows on a key, but names none and table {} has no PRIMARY KEY; give key := ['column', ...]",
                mapping.stream,
                mapping.target.display()
            )));
        }
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let positions = merge::key_positions(&mapping.stream, &key, &names).map_err(input_error)?;
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(ORDINAL, DataType::Int64, false)));
        let with_ordinal = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let ordered = Ordered {
            inner: pull,
            schema: Arc::clone(&with_ordinal),
            next: 0,
            keys: positions.into_iter().zip(key).collect(),
            failed: Arc::clone(failed),
        };
        Ok((with_ordinal, Box::new(ordered)))
    }

    /// Splits a keyed request's columns into its data and its delete column (checked).
    pub(super) fn keyed_columns(
        &self,
        mapping: &Mapping,
        incoming: &[Column],
    ) -> Result<(Vec<Column>, bool), EngineError> {
        merge::split_request(mapping, incoming).map_err(input_error)
    }

    /// Applies what the scan view holds to a keyed stream's table, inside the caller's transaction; the table
    /// exists and the data columns fit it.
    pub(super) fn merge_rows(
        &mut self,
        txn: &mut RawConn,
        mapping: &Mapping,
        data: &[Column],
        deletes: bool,
        table: &[Column],
        arrival: Arrival,
    ) -> Result<(), EngineError> {
        let target = &mapping.target;
        let primary = if mapping.key.is_empty() { self.primary_key(txn, target)? } else { Vec::new() };
        let key = merge::resolve_key(mapping, &target.display(), table, &primary).map_err(EngineError::Conflict)?;
        let plan = merge::plan(
            &target.sql(&self.host_db),
            &view_sql(&self.view_name()),
            &format!("arrowport_merge_{}", self.id),
            &key,
            data,
            mapping.delete_column.as_deref().filter(|_| deletes),
            mapping.on_conflict,
        );
        arrival.run(txn, &plan.stage).map_err(|e| self.view_lost(e))?;
        for statement in [plan.delete, plan.update].into_iter().flatten() {
            arrival.run(txn, &statement).map_err(E::db)?;
        }
        arrival.run(txn, &plan.insert).map_err(E::db)?;
        txn.execute(&plan.drop).map_err(E::db)?;
        Ok(())
    }
}
