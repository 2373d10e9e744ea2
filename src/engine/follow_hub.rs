//! What followers on this host wait on: the last position committed into each followable table, and the name a
//! table goes by for it (and in `arrowport.positions`).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::catalog::registry::Target;

/// The name a followable table goes by in the positions table and the hub.
pub fn table_key(target: &Target) -> String {
    target.display().to_lowercase()
}

/// The last position committed on this host, per followable table; followers wait on it.
#[derive(Default)]
pub struct FollowHub {
    positions: Mutex<HashMap<String, watch::Sender<i64>>>,
}

impl FollowHub {
    /// A commit into the table `key` whose last row has `position`.
    pub fn committed(&self, key: &str, position: i64) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let tx = positions.entry(key.to_string()).or_insert_with(|| watch::channel(0).0);
        tx.send_if_modified(|p| {
            let newer = position > *p;
            if newer {
                *p = position;
            }
            newer
        });
    }

    /// The table's positions as they commit on this host.
    pub fn watch(&self, key: &str) -> watch::Receiver<i64> {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.entry(key.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_keeps_the_newest_position() {
        let hub = FollowHub::default();
        let mut rx = hub.watch("main.ev");
        hub.committed("main.ev", 5);
        hub.committed("main.ev", 3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 5);
        hub.committed("main.other", 9);
        assert!(!rx.has_changed().unwrap());
    }
}
