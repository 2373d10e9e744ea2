//! `arrowport_metrics()`: per stream and protocol, what landed and what failed.

use super::*;

pub(super) struct MetricsTable;

/// Columns of `arrowport_metrics()`, in order.
pub(super) const METRIC_COLUMNS: [(&str, LogicalTypeId); 16] = [
    ("stream", LogicalTypeId::Varchar),
    ("protocol", LogicalTypeId::Varchar),
    ("requests_ok", LogicalTypeId::Bigint),
    ("requests_failed", LogicalTypeId::Bigint),
    ("rows_committed", LogicalTypeId::Bigint),
    ("batches", LogicalTypeId::Bigint),
    ("wire_bytes", LogicalTypeId::Bigint),
    ("decoded_bytes", LogicalTypeId::Bigint),
    ("rows_rolled_back", LogicalTypeId::Bigint),
    ("last_commit", LogicalTypeId::TimestampTZ),
    ("last_error", LogicalTypeId::Varchar),
    ("last_error_at", LogicalTypeId::TimestampTZ),
    ("latency_p50_ms", LogicalTypeId::Double),
    ("latency_p95_ms", LogicalTypeId::Double),
    ("latency_p99_ms", LogicalTypeId::Double),
    ("write_seconds", LogicalTypeId::Double),
];

impl VTab for MetricsTable {
    type InitData = Cursor;
    type BindData = Rows<metrics::Row>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        for (name, ty) in METRIC_COLUMNS {
            bind.add_result_column(name, ty.into());
        }
        let host = host_of(bind)?;
        host.refuse_own_connection("arrowport_metrics", crate::duck::caller::table_caller(bind))?;
        Ok(Rows { rows: host.metrics().rows() })
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_cursor(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit(func, output, |out, i, r: &metrics::Row| {
            let mut cols: Vec<_> = (0..METRIC_COLUMNS.len()).map(|c| out.flat_vector(c)).collect();
            cols[0].insert(i, r.stream.as_str());
            cols[1].insert(i, r.protocol.as_str());
            let counts = [
                r.requests_ok,
                r.requests_failed,
                r.rows,
                r.batches,
                r.wire_bytes,
                r.decoded_bytes,
                r.rows_rolled_back,
            ];
            for (j, v) in counts.into_iter().enumerate() {
                vector::set_bigint(&mut cols[2 + j], i, v as i64);
            }
            match r.last_commit_us {
                Some(us) => vector::set_bigint(&mut cols[9], i, us),
                None => cols[9].set_null(i),
            }
            match &r.last_error {
                Some(e) => cols[10].insert(i, e.as_str()),
                None => cols[10].set_null(i),
            }
            match r.last_error_us {
                Some(us) => vector::set_bigint(&mut cols[11], i, us),
                None => cols[11].set_null(i),
            }
            for (j, q) in [r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms].into_iter().enumerate() {
                match q {
                    Some(v) => vector::set_double(&mut cols[12 + j], i, v),
                    None => cols[12 + j].set_null(i),
                }
            }
            vector::set_double(&mut cols[15], i, r.write_seconds);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/status.json` carries every column of `arrowport_metrics()`, under the same name (timestamps in
    /// microseconds, `_us`), with the same value.
    #[test]
    fn status_json_rows_carry_the_columns_of_arrowport_metrics() {
        let row = metrics::Row {
            stream: "events".into(),
            protocol: "flight".into(),
            requests_ok: 3,
            requests_failed: 1,
            rows: 300,
            batches: 4,
            wire_bytes: 5000,
            decoded_bytes: 9000,
            rows_rolled_back: 7,
            last_commit_us: Some(11),
            last_error: Some("boom".into()),
            last_error_us: Some(12),
            latency_p50_ms: Some(1.5),
            latency_p95_ms: Some(2.5),
            latency_p99_ms: None,
            write_seconds: 0.25,
        };
        let json = crate::proto::rest::status_row(&row, "main.events");
        let key = |column: &str| match column {
            "last_commit" => "last_commit_us".to_string(),
            "last_error_at" => "last_error_us".to_string(),
            other => other.to_string(),
        };
        let expected = serde_json::json!({
            "stream": "events", "protocol": "flight", "requests_ok": 3, "requests_failed": 1, "rows_committed": 300,
            "batches": 4, "wire_bytes": 5000, "decoded_bytes": 9000, "rows_rolled_back": 7, "last_commit_us": 11,
            "last_error": "boom", "last_error_us": 12, "latency_p50_ms": 1.5, "latency_p95_ms": 2.5,
            "latency_p99_ms": null, "write_seconds": 0.25,
        });
        for (column, _) in METRIC_COLUMNS {
            assert_eq!(json.get(key(column)), expected.get(key(column)), "{column}");
        }
        assert_eq!(json["target"], "main.events");
    }
}
