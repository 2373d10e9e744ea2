//! Values in and out of DuckDB vectors, for the SQL functions (`host::sql`): what the duckdb crate's safe API
//! does not cover.

use duckdb::ffi as sys;

/// The text in row `row` of VARCHAR column `col` of a scalar function's input (`None` for NULL).
pub fn varchar_arg(input: &duckdb::core::DataChunkHandle, col: usize, row: usize) -> Option<String> {
    let vector = input.flat_vector(col);
    if vector.row_is_null(row as u64) {
        return None;
    }
    // SAFETY: the column is declared VARCHAR in the function's signature, so its data is `row < len` string
    // structs; DuckString reads (inlined or pointed-to) bytes DuckDB keeps alive for the call.
    unsafe {
        let strings = vector.as_slice_with_len::<sys::duckdb_string_t>(input.len());
        let mut s = strings[row];
        Some(duckdb::types::DuckString::new(&mut s).as_str().into_owned())
    }
}

/// Writes `value` into row `row` of a BIGINT output vector (or TIMESTAMP/TIMESTAMPTZ: microseconds since the epoch,
/// the same 64-bit layout).
pub fn set_bigint(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: i64) {
    // SAFETY: the vector is the function's BIGINT output, with capacity for every input row (`row` is one).
    unsafe { output.as_mut_slice::<i64>()[row] = value };
}

/// The extra info a table function was registered with.
pub fn bind_extra<T>(info: &duckdb::vtab::BindInfo) -> Option<&T> {
    let p = info.get_extra_info::<T>();
    // SAFETY: registered with register_table_function_with_extra_info::<_, T>, so the pointer is a live T owned by
    // DuckDB's catalog for as long as the function exists, which outlives any bind call.
    if p.is_null() { None } else { Some(unsafe { &*p }) }
}

/// The bind data a table function's bind returned, from its init.
pub fn init_bind_data<T>(info: &duckdb::vtab::InitInfo) -> Option<&T> {
    let p = info.get_bind_data::<T>();
    // SAFETY: the caller names the BindData type of the table function being initialised; DuckDB keeps the bind
    // data alive for the whole execution, which outlives its init call.
    if p.is_null() { None } else { Some(unsafe { &*p }) }
}

/// Writes `value` into row `row` of a BOOLEAN output vector.
pub fn set_bool(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: bool) {
    // SAFETY: the vector is a BOOLEAN output column (one byte per row) with capacity for `row`.
    unsafe { output.as_mut_slice::<bool>()[row] = value };
}

/// Writes `value` into row `row` of a DOUBLE output vector.
pub fn set_double(output: &mut duckdb::core::FlatVector<'_>, row: usize, value: f64) {
    // SAFETY: the vector is a DOUBLE output column with capacity for `row`.
    unsafe { output.as_mut_slice::<f64>()[row] = value };
}
