//! DuckDB's extension autoloading, held off while a listener accepts SQL.
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

pub struct ExtensionLoading {
    inner: Mutex<Inner>,
}

struct Inner {
    /// A connection of our own to the host database, for these settings only.
    conn: RawConn,
    /// The settings we turned off (they were on), while we hold them off.
    held: Vec<&'static str>,
}

impl ExtensionLoading {
    pub fn new(conn: RawConn) -> ExtensionLoading {
        ExtensionLoading { inner: Mutex::new(Inner { conn, held: Vec::new() }) }
    }

    /// Turns autoloading and autoinstalling off (if on); an error when DuckDB refuses (`lock_configuration`).
    pub fn hold_off(&self) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { conn, held } = &mut *inner;
        for setting in SETTINGS {
            if held.contains(&setting) {
                continue;
            }
            let on = conn.query_value(&format!("SELECT current_setting('{setting}')::BOOLEAN")).map_err(|e| e.to_string())?;
            if on.as_deref() == Some("true") {
                conn.execute(&format!("SET GLOBAL {setting} = false")).map_err(|e| {
                    format!("cannot turn {setting} off, which a listener that accepts SQL needs (a client's statement must not make the host load extensions): {e}")
                })?;
                held.push(setting);
            }
        }
        Ok(())
    }

    /// Puts back what [`ExtensionLoading::hold_off`] turned off, where it is still off.
    pub fn restore(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { conn, held } = &mut *inner;
        for setting in held.drain(..) {
            let still_off = conn.query_value(&format!("SELECT current_setting('{setting}')::BOOLEAN"));
            if matches!(still_off, Ok(Some(ref v)) if v == "false") {
                if let Err(e) = conn.execute_past_interrupts(&format!("SET GLOBAL {setting} = true")) {
                    eprintln!("arrowport: could not turn {setting} back on: {e}");
                }
            }
        }
    }
}
