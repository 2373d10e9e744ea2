//! `arrowport_maintain(catalog, ...)`: compacts a DuckLake catalog, now and on a timer.

use super::*;

/// `FROM arrowport_maintain(catalog, every := seconds, older_than := seconds)`: compacts a DuckLake catalog now
/// (flush inlined rows, merge small files, expire snapshots and delete their files), and with `every` from then on
/// at that interval until `arrowport_stop()`. One row per step. Refused in a statement sent over the network.
pub(super) struct Maintain;

impl VTab for Maintain {
    type InitData = Emitted<Maintained>;
    type BindData = Action<Maintained>;

    fn bind(bind: &BindInfo) -> Result<Self::BindData> {
        crate::engine::policy::refuse_if_remote("arrowport_maintain")?;
        bind.add_result_column("step", varchar());
        bind.add_result_column("rows", LogicalTypeId::Bigint.into());
        bind.add_result_column("seconds", LogicalTypeId::Double.into());
        let host = Arc::clone(host_of(bind)?);
        host.refuse_own_connection("arrowport_maintain", crate::duck::caller::table_caller(bind))?;
        let v = bind.get_parameter(0);
        if v.is_null() {
            return Err("arrowport_maintain: the catalog is NULL".into());
        }
        let catalog = v.to_string();
        let every = seconds(bind, "every", A_YEAR, true)?;
        let older_than = seconds(bind, "older_than", A_YEAR, true)?.unwrap_or(std::time::Duration::from_secs(3600));
        Ok(Action::new(move || {
            crate::engine::policy::refuse_if_remote("arrowport_maintain")?;
            host.maintain(&catalog, older_than, every)
        }))
    }

    fn init(init: &InitInfo) -> Result<Self::InitData> {
        init_action(init)
    }

    fn func(func: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<()> {
        emit_action(func, output, |out, i, m: &Maintained| {
            out.flat_vector(0).insert(i, m.step);
            vector::set_bigint(&mut out.flat_vector(1), i, m.rows as i64);
            vector::set_double(&mut out.flat_vector(2), i, m.seconds);
        })
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![varchar()])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("every".to_string(), LogicalTypeId::Double.into()),
            ("older_than".to_string(), LogicalTypeId::Double.into()),
        ])
    }
}
