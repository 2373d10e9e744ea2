//! Stream mappings: `arrowport_create_stream`, `arrowport_alter_stream`, `arrowport_drop_stream`, `arrowport_streams()`.

use super::*;

/// The columns a mapping is shown with.
pub(super) fn mapping_columns(bind: &BindInfo) {
    bind.add_result_column("stream", varchar());
    bind.add_result_column("target", varchar());
    bind.add_result_column("create_table", LogicalTypeId::Boolean.into());
    bind.add_result_column("schema_policy", varchar());
    bind.add_result_column("mode", varchar());
    bind.add_result_column("key", LogicalTypeHandle::list(&varchar()));
    bind.add_result_column("on_conflict", varchar());
    bind.add_result_column("delete_column", varchar());
    bind.add_result_column("follow", LogicalTypeId::Boolean.into());
}

pub(super) fn write_mapping(out: &mut DataChunkHandle, i: usize, m: &Mapping) {
    out.flat_vector(0).insert(i, m.stream.as_str());
    out.flat_vector(1).insert(i, m.target.display().as_str());
    vector::set_bool(&mut out.flat_vector(2), i, m.create_table);
    out.flat_vector(3).insert(i, m.policy.name());
    out.flat_vector(4).insert(i, m.mode.name());
    let mut list = out.list_vector(5);
    let offset = list.len();
    let child = list.child(offset + m.key.len());
    for (j, k) in m.key.iter().enumerate() {
        child.insert(offset + j, k.as_str());
    }
    list.set_entry(i, offset, m.key.len());
    list.set_len(offset + m.key.len());
    out.flat_vector(6).insert(i, m.on_conflict.name());
    match &m.delete_column {
        Some(d) => out.flat_vector(7).insert(i, d.as_str()),
        None => out.flat_vector(7).set_null(i),
    }
    vector::set_bool(&mut out.flat_vector(8), i, m.follow);
}

pub(super) fn mapping_options(bind: &BindInfo) -> Result<MappingOptions> {
    let text = |name: &str| bind.get_named_parameter(name).filter(|v| !v.is_null()).map(|v| v.to_string());
    let given = |name: &str| bind.get_named_parameter(name).is_some_and(|v| !v.is_null());
    Ok(MappingOptions {
        target: text("target"),
        create_table: bind.get_named_parameter("create_table").filter(|v| !v.is_null()).map(|v| v.to_bool()),
        schema_policy: text("schema_policy"),
        mode: text("mode"),
        key: if given("key") { Some(text_list(bind, "key")?) } else { None },
        on_conflict: text("on_conflict"),
        delete_column: text("delete_column"),
        follow: bind.get_named_parameter("follow").filter(|v| !v.is_null()).map(|v| v.to_bool()),
    })
}

pub(super) fn mapping_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
    Some(vec![
        ("target".to_string(), varchar()),
        ("create_table".to_string(), LogicalTypeId::Boolean.into()),
        ("schema_policy".to_string(), varchar()),
        ("mode".to_string(), varchar()),
        ("key".to_string(), LogicalTypeHandle::list(&varchar())),
        ("on_conflict".to_string(), varchar()),
        ("delete_column".to_string(), varchar()),
        ("follow".to_string(), LogicalTypeId::Boolean.into()),
    ])
}

pub(super) fn stream_name(bind: &BindInfo) -> Result<String> {
    let v = bind.get_parameter(0);
    if v.is_null() {
        return Err("the stream name is NULL".into());
    }
    Ok(v.to_string())
}

action_function!(
    CreateStream,
    Mapping,
    Some("arrowport_create_stream"),
    Some(vec![varchar()]),
    mapping_parameters(),
    mapping_columns,
    write_mapping,
    |bind| (stream_name(bind)?, mapping_options(bind)?),
    |host, (name, options)| host.create_stream(name, options).map(|m| vec![m])
);
action_function!(
    AlterStream,
    Mapping,
    Some("arrowport_alter_stream"),
    Some(vec![varchar()]),
    mapping_parameters(),
    mapping_columns,
    write_mapping,
    |bind| (stream_name(bind)?, mapping_options(bind)?),
    |host, (name, options)| host.alter_stream(name, options).map(|m| vec![m])
);
action_function!(
    DropStream,
    Mapping,
    Some("arrowport_drop_stream"),
    Some(vec![varchar()]),
    None,
    mapping_columns,
    write_mapping,
    |bind| stream_name(bind)?,
    |host, name| host.drop_stream(name).map(|m| vec![m])
);
action_function!(
    Streams,
    Mapping,
    None,
    None,
    None,
    mapping_columns,
    write_mapping,
    |bind| host_of(bind)?.refuse_own_connection("arrowport_streams", crate::duck::caller::table_caller(bind))?,
    |host, _| host.streams()
);

/// `arrowport_followers()`: the followers connected now.
pub(super) fn follower_columns(bind: &BindInfo) {
    bind.add_result_column("stream", varchar());
    bind.add_result_column("protocol", varchar());
    bind.add_result_column("cursor", LogicalTypeId::Bigint.into());
    bind.add_result_column("lag_rows", LogicalTypeId::Bigint.into());
    bind.add_result_column("rows_sent", LogicalTypeId::Bigint.into());
    bind.add_result_column("bytes_sent", LogicalTypeId::Bigint.into());
    bind.add_result_column("connected_at", LogicalTypeId::TimestampTZ.into());
}

pub(super) fn write_follower(out: &mut DataChunkHandle, i: usize, f: &metrics::Follower) {
    out.flat_vector(0).insert(i, f.stream.as_str());
    out.flat_vector(1).insert(i, f.protocol);
    vector::set_bigint(&mut out.flat_vector(2), i, f.cursor);
    vector::set_bigint(&mut out.flat_vector(3), i, f.latest - f.cursor);
    vector::set_bigint(&mut out.flat_vector(4), i, f.rows as i64);
    vector::set_bigint(&mut out.flat_vector(5), i, f.bytes as i64);
    let us = f.connected.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default();
    vector::set_bigint(&mut out.flat_vector(6), i, us);
}

action_function!(
    Followers,
    metrics::Follower,
    None,
    None,
    None,
    follower_columns,
    write_follower,
    |bind| host_of(bind)?.refuse_own_connection("arrowport_followers", crate::duck::caller::table_caller(bind))?,
    |host, _| Ok(host.metrics().followers())
);
