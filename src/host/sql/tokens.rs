//! Tokens: `arrowport_create_token` (the secret, shown once), `arrowport_revoke_token`, `arrowport_tokens()`.

use super::*;

/// A token as the SQL functions show it; `secret` only from `arrowport_create_token`.
pub struct TokenRow {
    record: TokenRecord,
    secret: Option<String>,
}

pub(super) fn token_columns(bind: &BindInfo, with_secret: bool) {
    bind.add_result_column("name", varchar());
    if with_secret {
        bind.add_result_column("token", varchar());
    }
    bind.add_result_column("streams", LogicalTypeHandle::list(&varchar()));
    bind.add_result_column("created_at", LogicalTypeId::TimestampTZ.into());
    bind.add_result_column("last_used_at", LogicalTypeId::TimestampTZ.into());
    bind.add_result_column("access", varchar());
}

/// Writes one token row; `streams` is NULL for a token that may use every stream.
pub(super) fn write_token(out: &mut DataChunkHandle, i: usize, row: &TokenRow) {
    let mut col = 0;
    out.flat_vector(col).insert(i, row.record.name.as_str());
    col += 1;
    if let Some(secret) = &row.secret {
        out.flat_vector(col).insert(i, secret.as_str());
        col += 1;
    }
    let mut list = out.list_vector(col);
    match &row.record.scope {
        Scope::All => list.set_null(i),
        Scope::Streams(names) => {
            let offset = list.len();
            let child = list.child(offset + names.len());
            for (j, n) in names.iter().enumerate() {
                child.insert(offset + j, n.as_str());
            }
            list.set_entry(i, offset, names.len());
            list.set_len(offset + names.len());
        }
    }
    vector::set_bigint(&mut out.flat_vector(col + 1), i, row.record.created_us);
    match row.record.last_used_us {
        Some(us) => vector::set_bigint(&mut out.flat_vector(col + 2), i, us),
        None => out.flat_vector(col + 2).set_null(i),
    }
    out.flat_vector(col + 3).insert(i, row.record.access.name());
}

pub(super) fn token_name(bind: &BindInfo) -> Result<String> {
    let v = bind.get_parameter(0);
    if v.is_null() {
        return Err("the token name is NULL".into());
    }
    Ok(v.to_string())
}

/// `streams := [...]`: the streams a token is limited to; left out (or NULL), every stream.
pub(super) fn token_scope(bind: &BindInfo) -> Result<Scope> {
    let Some(v) = bind.get_named_parameter("streams").filter(|v| !v.is_null()) else { return Ok(Scope::All) };
    let items = v.to_list().ok_or("streams must be a list of stream names, e.g. streams := ['events']")?;
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        if item.is_null() {
            return Err("streams must not contain NULL".into());
        }
        let name = item.to_string();
        registry::validate_stream_name(&name)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Scope::Streams(names))
}

action_function!(
    CreateToken,
    TokenRow,
    Some("arrowport_create_token"),
    Some(vec![varchar()]),
    Some(vec![
        ("streams".to_string(), LogicalTypeHandle::list(&varchar())),
        ("secret".to_string(), varchar()),
        ("access".to_string(), varchar())
    ]),
    |b: &BindInfo| token_columns(b, true),
    write_token,
    |bind| (
        token_name(bind)?,
        token_scope(bind)?,
        match bind.get_named_parameter("access").filter(|v| !v.is_null()) {
            None => TokenAccess::Write,
            Some(v) => TokenAccess::parse(&v.to_string())?,
        },
        bind.get_named_parameter("secret").filter(|v| !v.is_null()).map(|v| v.to_string())
    ),
    |host, (name, scope, access, secret)| {
        let (record, secret) = host.create_token(name, scope.clone(), *access, secret.as_deref())?;
        Ok(vec![TokenRow { record, secret: Some(secret) }])
    }
);
action_function!(
    RevokeToken,
    TokenRow,
    Some("arrowport_revoke_token"),
    Some(vec![varchar()]),
    None,
    |b: &BindInfo| token_columns(b, false),
    write_token,
    |bind| token_name(bind)?,
    |host, name| Ok(vec![TokenRow { record: host.revoke_token(name)?, secret: None }])
);
action_function!(
    TokensTable,
    TokenRow,
    Some("arrowport_tokens"),
    None,
    None,
    |b: &BindInfo| token_columns(b, false),
    write_token,
    |bind| (),
    |host, _| Ok(host.tokens()?.into_iter().map(|record| TokenRow { record, secret: None }).collect())
);
