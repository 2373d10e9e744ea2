//! `arrowport_send(url, stream, query := ...)`: a query's result to a remote stream, as one request.

use super::*;

/// `FROM arrowport_send(url, stream, query := '...', token, compression, batch_rows, idempotency_key, tls_ca,
/// timeout, retries)`: runs the query on this database and sends its result to `stream` at `url` as one
/// request; one row, the remote's acknowledgement. Refused in a statement sent over the network (it would let a
/// client reach any address from the host).
pub(super) struct SendTable;

/// What `arrowport_send` returns: the acknowledgement and the key it was sent under.
pub struct SendRow {
    sent: Sent,
    key: String,
}

impl VTab for SendTable {
    type InitData = Emitted<SendRow>;
    type BindData = Action<SendRow>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        crate::engine::policy::refuse_if_remote("arrowport_send")?;
        for (name, kind) in [
            ("stream", LogicalTypeId::Varchar),
            ("table", LogicalTypeId::Varchar),
            ("rows", LogicalTypeId::Bigint),
            ("batches", LogicalTypeId::Bigint),
            ("bytes", LogicalTypeId::Bigint),
            ("replayed", LogicalTypeId::Boolean),
            ("idempotency_key", LogicalTypeId::Varchar),
            ("retries", LogicalTypeId::Bigint),
            ("elapsed_seconds", LogicalTypeId::Double),
        ] {
            bind.add_result_column(name, kind.into());
        }
        let host = Arc::clone(host_of(bind)?);
        host.refuse_own_connection("arrowport_send", crate::duck::caller::table_caller(bind))?;
        let (target, stream) = url_and_stream(bind, "arrowport_send")?;
        let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
        let query = text("query")
            .filter(|q| !q.trim().is_empty())
            .ok_or("arrowport_send needs query := 'SELECT ...': the rows to send")?;
        let mut options = SendOptions {
            token: text("token"),
            compression: Compression::parse(&text("compression").unwrap_or_default())?,
            batch_rows: send::DEFAULT_BATCH_ROWS,
            idempotency_key: text("idempotency_key").unwrap_or_default(),
            tls_ca: text("tls_ca"),
            timeout: send::DEFAULT_TIMEOUT,
            retries: send::DEFAULT_RETRIES,
        };
        if let Some(n) = positive(bind, "batch_rows")? {
            options.batch_rows = usize::try_from(n.min(1 << 24))?;
        }
        if let Some(d) = seconds(bind, "timeout", A_DAY, false)? {
            options.timeout = d;
        }
        if let Some(n) = count(bind, "retries")? {
            options.retries = n;
        }
        if !options.idempotency_key.is_empty() {
            // The receiver's own rule for keys.
            validate_key(&options.idempotency_key)
                .map_err(|e| format!("invalid value for option idempotency_key: {e}"))?;
        }
        Ok(Action::new(move || {
            crate::engine::policy::refuse_if_remote("arrowport_send")?;
            let mut options = options.clone();
            if options.idempotency_key.is_empty() {
                // One key per call, kept across its retries.
                options.idempotency_key = send::new_key()?;
            }
            let sent = host.send(&target, &stream, &query, &options)?;
            Ok(vec![SendRow { sent, key: options.idempotency_key }])
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, r: &SendRow| {
            let ack = &r.sent.ack;
            out.flat_vector(0).insert(i, ack.stream.as_str());
            match &ack.table {
                Some(t) => out.flat_vector(1).insert(i, t.as_str()),
                None => out.flat_vector(1).set_null(i),
            }
            vector::set_bigint(&mut out.flat_vector(2), i, ack.rows as i64);
            vector::set_bigint(&mut out.flat_vector(3), i, ack.batches as i64);
            vector::set_bigint(&mut out.flat_vector(4), i, ack.bytes as i64);
            vector::set_bool(&mut out.flat_vector(5), i, ack.replayed);
            out.flat_vector(6).insert(i, r.key.as_str());
            vector::set_bigint(&mut out.flat_vector(7), i, i64::from(r.sent.retries));
            vector::set_double(&mut out.flat_vector(8), i, r.sent.elapsed.as_secs_f64());
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar(), varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("query".to_string(), varchar()),
            ("token".to_string(), varchar()),
            ("compression".to_string(), varchar()),
            ("batch_rows".to_string(), LogicalTypeId::Bigint.into()),
            ("idempotency_key".to_string(), varchar()),
            ("tls_ca".to_string(), varchar()),
            ("timeout".to_string(), LogicalTypeId::Double.into()),
            ("retries".to_string(), LogicalTypeId::Bigint.into()),
        ])
    }
}
