//! Who calls an administrative function: decided where DuckDB binds the call, by the calling connection.

use super::*;

/// An administrative call as its bind saw it: `verified` when it was bound on a connection of the host's own
/// session (so it runs at once), else it goes through [`Host::admit_admin`] when it runs.
pub struct AdminCall {
    function: &'static str,
    verified: bool,
}

impl AdminCall {
    /// Whether the call was bound on the host's own session.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    pub fn admit(&self, host: &Host) -> Result<(), String> {
        if self.verified { Ok(()) } else { host.admit_admin(self.function) }
    }
}

impl Host {
    /// Who calls an administrative function, from the id of the connection that binds the call: one of
    /// arrowport's own connections (statements sent over the network, the writers) is refused now; any other
    /// connection is the host's own session, served without waiting for anything; an unknown caller (DuckDB does
    /// not tell) is left to [`Host::admit_admin`] when the call runs.
    pub fn admin_call(&self, function: &'static str, caller: Option<u64>) -> Result<AdminCall, String> {
        policy::refuse_if_remote(function)?;
        self.refuse_own_connection(function, caller)?;
        Ok(AdminCall { function, verified: caller.is_some() })
    }

    /// Refuses a call bound on one of arrowport's own connections.
    pub fn refuse_own_connection(&self, function: &str, caller: Option<u64>) -> Result<(), String> {
        match caller {
            Some(id) if self.own_connections.contains(&id) => {
                Err(format!("{function} cannot be called over the network; call it in the host's own session"))
            }
            _ => Ok(()),
        }
    }

    /// Lets an administrative SQL function run, or refuses it when it came over the network
    /// ([`policy::admit_admin`]); statements sent over the network that outlast the grace are interrupted.
    pub fn admit_admin(&self, function: &'static str) -> Result<(), String> {
        policy::admit_admin(function, || {
            if let Some(running) = self.lock().running.as_ref() {
                running.core.writers().interrupt(true);
                if let Some(statements) = running.core.statements() {
                    statements.interrupt(false);
                }
            }
        })
    }
}
