//! Following a stream: the names commit positions of followable tables go by (the positions themselves are
//! taken where the rows land, `duck_session::positions`).

use crate::catalog::schema::quote_ident;

/// The name a followable table goes by in the positions table and the hub: its quoted parts, lower case.
pub fn table_key(catalog: &str, schema: &str, table: &str) -> String {
    format!("{}.{}.{}", quote_ident(catalog), quote_ident(schema), quote_ident(table)).to_lowercase()
}
