//! `arrowport_listen` (scalar and table), `arrowport_stop()` and `arrowport_status()`.

use super::*;

pub(super) struct ListenScalar;

impl VScalar for ListenScalar {
    type State = Arc<Host>;

    fn invoke(host: &Arc<Host>, input: &mut DataChunkHandle, output: &mut dyn WritableVector) -> Result<()> {
        host.admit_admin("arrowport_listen")?;
        let mut out = output.flat_vector();
        for row in 0..input.len() {
            match vector::varchar_arg(input, 0, row) {
                None => out.set_null(row),
                Some(addr) => {
                    let bound = host.listen(&addr, &ListenOptions::default())?;
                    let first = bound.first().map(|(_, a)| a.clone()).unwrap_or_default();
                    out.insert(row, first.as_str());
                }
            }
        }
        Ok(())
    }

    fn signatures() -> Vec<ScalarFunctionSignature> {
        vec![ScalarFunctionSignature::exact(vec![varchar()], varchar())]
    }

    fn volatile() -> bool {
        true
    }
}

pub(super) struct Stop;

impl VScalar for Stop {
    type State = Arc<Host>;

    fn invoke(host: &Arc<Host>, input: &mut DataChunkHandle, output: &mut dyn WritableVector) -> Result<()> {
        host.admit_admin("arrowport_stop")?;
        let mut out = output.flat_vector();
        for row in 0..input.len() {
            let stopped = host.stop();
            vector::set_bigint(&mut out, row, stopped as i64);
        }
        Ok(())
    }

    fn signatures() -> Vec<ScalarFunctionSignature> {
        vec![ScalarFunctionSignature::exact(vec![], LogicalTypeId::Bigint.into())]
    }

    fn volatile() -> bool {
        true
    }
}

/// `arrowport_listen(address)` and `arrowport_stop()` as scalar functions with a bind step (see
/// `duck::caller`): refused at bind on arrowport's own connections, served at once on the host's.
pub(super) fn register_admin_scalars(registrar: &mut duck::conn::RawConn, host: &Arc<Host>) -> Result<()> {
    use duck::caller::{ScalarOut, ScalarSpec, register_scalar};
    const VERIFIED: u8 = 1;
    let bind_for = |host: &Arc<Host>, function: &'static str| {
        let host = Arc::clone(host);
        Box::new(move |caller: Option<u64>| {
            host.admin_call(function, caller).map(|c| if c.is_verified() { VERIFIED } else { 0 })
        })
    };
    let h = Arc::clone(host);
    register_scalar(
        registrar,
        ScalarSpec {
            name: "arrowport_listen",
            varchar_arg: true,
            returns_bigint: false,
            bind: bind_for(host, "arrowport_listen"),
            call: Box::new(move |tag, addr| {
                if tag != VERIFIED {
                    h.admit_admin("arrowport_listen")?;
                }
                let bound =
                    h.listen(&addr.unwrap_or_default(), &ListenOptions::default()).map_err(|e| e.to_string())?;
                Ok(ScalarOut::Text(bound.first().map(|(_, a)| a.clone()).unwrap_or_default()))
            }),
        },
    )?;
    let h = Arc::clone(host);
    register_scalar(
        registrar,
        ScalarSpec {
            name: "arrowport_stop",
            varchar_arg: false,
            returns_bigint: true,
            bind: bind_for(host, "arrowport_stop"),
            call: Box::new(move |tag, _| {
                if tag != VERIFIED {
                    h.admit_admin("arrowport_stop")?;
                }
                Ok(ScalarOut::BigInt(h.stop() as i64))
            }),
        },
    )?;
    Ok(())
}

pub(super) struct ListenTable;

impl VTab for ListenTable {
    type InitData = Emitted<(String, String)>;
    type BindData = Action<(String, String)>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        bind.add_result_column("protocol", varchar());
        bind.add_result_column("address", varchar());
        let host = Arc::clone(host_of(bind)?);
        let addr = bind.get_parameter(0).to_string();
        let mut options = ListenOptions::default();
        if let Some(n) = positive(bind, "max_message_bytes")? {
            options.max_message_bytes = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_body_bytes")? {
            options.max_body_bytes = n;
        }
        if let Some(v) = bind.get_named_parameter("rest")
            && !v.is_null()
        {
            options.rest = Some(v.to_string());
        }
        if let Some(v) = bind.get_named_parameter("unknown_streams") {
            options.reject_unknown = match v.to_string().trim().to_ascii_lowercase().as_str() {
                "accept" => false,
                "reject" => true,
                other => {
                    return Err(format!(
                        "invalid value for option unknown_streams: {other:?} (allowed: accept, reject)"
                    )
                    .into());
                }
            };
        }
        let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
        let open =
            bind.get_named_parameter("allow_unauthenticated").filter(|v| !v.is_null()).is_some_and(|v| v.to_bool());
        options.auth = AuthMode::from_options(text("auth").as_deref(), open)?;
        if let Some(a) = text("sql") {
            options.sql = Access::parse(&a)?;
        }
        options.tls_cert = text("tls_cert");
        options.tls_key = text("tls_key");
        if let Some(n) = positive(bind, "memory_budget")? {
            options.memory_budget = Some(usize::try_from(n)?);
        }
        if let Some(n) = positive(bind, "sql_memory_limit")? {
            options.sql_memory_limit = Some(n);
        }
        if let Some(n) = positive(bind, "max_concurrent_requests")? {
            options.max_concurrent_requests = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_connections")? {
            options.max_connections = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_sql_bytes")? {
            options.max_sql_bytes = usize::try_from(n)?;
        }
        if let Some(d) = seconds(bind, "statement_timeout", A_DAY, false)? {
            options.statement_timeout = d;
        }
        if let Some(n) = positive(bind, "max_columns")? {
            options.max_columns = usize::try_from(n)?;
        }
        if let Some(n) = positive(bind, "max_schema_bytes")? {
            options.max_schema_bytes = usize::try_from(n)?;
        }
        if let Some(d) = seconds(bind, "idempotency_window", A_YEAR, false)? {
            options.idempotency_window = d;
        }
        if let Some(v) = bind.get_named_parameter("checkpoint_wal").filter(|v| !v.is_null()) {
            let n = v.to_int64();
            options.checkpoint_wal = u64::try_from(n)
                .map_err(|_| format!("invalid value for option checkpoint_wal: {n} (bytes, 0 or more)"))?;
        }
        if let Some(n) = count(bind, "commit_retries")? {
            options.commit_retries = n;
        }
        if let Some(d) = seconds(bind, "commit_retry_wait", (10.0, "10"), true)? {
            options.commit_retry_wait = d;
        }
        if let Some(d) = seconds(bind, "group_window", (1.0, "1"), true)? {
            options.group_window = d;
        }
        options.allowed_hosts = text_list(bind, "allowed_hosts")?;
        options.allowed_origins = text_list(bind, "allowed_origins")?;
        if let Some(d) = seconds(bind, "stall_timeout", A_DAY, false)? {
            options.stall_timeout = d;
        }
        let call = admin_call(&host, bind, "arrowport_listen")?;
        Ok(Action::new(move || {
            call.admit(&host)?;
            host.listen(&addr, &options).map_err(|e| e.to_string())
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, (p, a)| {
            out.flat_vector(0).insert(i, p.as_str());
            out.flat_vector(1).insert(i, a.as_str());
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("max_message_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("max_body_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("rest".to_string(), varchar()),
            ("unknown_streams".to_string(), varchar()),
            ("auth".to_string(), varchar()),
            ("allow_unauthenticated".to_string(), LogicalTypeId::Boolean.into()),
            ("tls_cert".to_string(), varchar()),
            ("tls_key".to_string(), varchar()),
            ("max_concurrent_requests".to_string(), LogicalTypeId::Bigint.into()),
            ("max_connections".to_string(), LogicalTypeId::Bigint.into()),
            ("max_columns".to_string(), LogicalTypeId::Bigint.into()),
            ("max_sql_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("max_schema_bytes".to_string(), LogicalTypeId::Bigint.into()),
            ("stall_timeout".to_string(), LogicalTypeId::Double.into()),
            ("statement_timeout".to_string(), LogicalTypeId::Double.into()),
            ("sql".to_string(), varchar()),
            ("allowed_hosts".to_string(), LogicalTypeHandle::list(&varchar())),
            ("memory_budget".to_string(), LogicalTypeId::Bigint.into()),
            ("sql_memory_limit".to_string(), LogicalTypeId::Bigint.into()),
            ("idempotency_window".to_string(), LogicalTypeId::Double.into()),
            ("allowed_origins".to_string(), LogicalTypeHandle::list(&varchar())),
            ("commit_retries".to_string(), LogicalTypeId::Bigint.into()),
            ("group_window".to_string(), LogicalTypeId::Double.into()),
            ("commit_retry_wait".to_string(), LogicalTypeId::Double.into()),
            ("checkpoint_wal".to_string(), LogicalTypeId::Bigint.into()),
        ])
    }
}

pub(super) struct Status;

impl VTab for Status {
    type InitData = Cursor;
    type BindData = Rows<StatusRow>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        bind.add_result_column("protocol", varchar());
        bind.add_result_column("address", varchar());
        bind.add_result_column("uptime_seconds", LogicalTypeId::Double.into());
        bind.add_result_column("requests_in_flight", LogicalTypeId::Bigint.into());
        bind.add_result_column("tls", LogicalTypeId::Boolean.into());
        bind.add_result_column("auth", varchar());
        let host = host_of(bind)?;
        host.refuse_own_connection("arrowport_status", crate::duck::caller::table_caller(bind))?;
        Ok(Rows { rows: host.status() })
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_cursor(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit(func, output, |out, i, r: &StatusRow| {
            out.flat_vector(0).insert(i, r.protocol);
            out.flat_vector(1).insert(i, r.address.as_str());
            vector::set_double(&mut out.flat_vector(2), i, r.uptime_seconds);
            vector::set_bigint(&mut out.flat_vector(3), i, r.requests_in_flight);
            vector::set_bool(&mut out.flat_vector(4), i, r.tls);
            out.flat_vector(5).insert(i, r.auth);
        })
    }
}
