//! The host's settings as arrowport reads and changes them, on a connection of its own: DuckDB's memory limit
//! (the memory guard's default limit), and extension autoloading, held off while a listener accepts SQL.
//!
//! DuckDB installs and loads a known extension on its own when a statement needs it: an unknown function
//! (`st_point`), a path (`'https://...'`, `'s3://...'`), a type. Those are global settings
//! (`autoinstall_known_extensions`, `autoload_known_extensions`), with no per-connection scope, and a client's
//! statement binds before anything can look at what it loads. So while a listener runs with `sql` on, both are
//! off for the whole process: a client's statement then fails to bind ("... is in extension X, LOAD X") instead
//! of making the host download or load code. The host's own session keeps `INSTALL` and `LOAD`. When the last
//! listener stops, each setting is put back to what it was, unless the operator changed it meanwhile.

use std::sync::Mutex;

use crate::duck::conn::RawConn;

const SETTINGS: [&str; 2] = ["autoinstall_known_extensions", "autoload_known_extensions"];

pub struct HostSettings {
    inner: Mutex<Inner>,
}

struct Inner {
    /// A connection of our own to the host database, for settings only.
    conn: RawConn,
    /// The settings we turned off (they were on), while we hold them off.
    held: Vec<&'static str>,
}

impl HostSettings {
    pub fn new(conn: RawConn) -> HostSettings {
        HostSettings { inner: Mutex::new(Inner { conn, held: Vec::new() }) }
    }

    /// Turns autoloading and autoinstalling off (if on); an error when DuckDB refuses (`lock_configuration`).
    pub fn hold_off_extension_loading(&self) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { conn, held } = &mut *inner;
        for setting in SETTINGS {
            if held.contains(&setting) {
                continue;
            }
            let on = conn
                .query_value(&format!("SELECT current_setting('{setting}')::BOOLEAN"))
                .map_err(|e| e.to_string())?;
            if on.as_deref() == Some("true") {
                conn.execute(&format!("SET GLOBAL {setting} = false")).map_err(|e| {
                    format!("cannot turn {setting} off, which a listener that accepts SQL needs (a client's statement must not make the host load extensions): {e}")
                })?;
                held.push(setting);
            }
        }
        Ok(())
    }

    /// Puts back what [`HostSettings::hold_off_extension_loading`] turned off, where it is still off.
    pub fn restore_extension_loading(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { conn, held } = &mut *inner;
        for setting in held.drain(..) {
            let still_off = conn.query_value(&format!("SELECT current_setting('{setting}')::BOOLEAN"));
            if matches!(still_off, Ok(Some(ref v)) if v == "false")
                && let Err(e) = conn.execute_past_interrupts(&format!("SET GLOBAL {setting} = true"))
            {
                eprintln!("arrowport: could not turn {setting} back on: {e}");
            }
        }
    }

    /// DuckDB's `memory_limit` in bytes (`None` when it cannot be read).
    pub fn memory_limit(&self) -> Option<u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = inner.conn.query_value("SELECT current_setting('memory_limit')").ok()??;
        parse_size(&text)
    }
}

/// A size as DuckDB shows one (`256.0 MiB`, `18.5 GiB`, `1000 bytes`, `2GB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (t[..split].parse::<f64>().ok()?, t[split..].trim().to_ascii_lowercase());
    let scale: u64 = match unit.as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_duckdb_shows_them() {
        assert_eq!(parse_size("256.0 MiB"), Some(256 << 20));
        assert_eq!(parse_size("18.5 GiB"), Some((18.5 * (1u64 << 30) as f64) as u64));
        assert_eq!(parse_size("1000 bytes"), Some(1000));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("3 parsecs"), None);
    }
}
