//! The connections of one listener: how many may be open, which one makes room for a newcomer, and how a
//! connection that sends nothing is let go.
//!
//! Every accepted connection is registered with [`Connections::admit`] and holds its [`Admitted`] while it is
//! served. At the cap (`max_connections`), the oldest connection with no request in progress (one that never
//! spoke, one whose request headers never completed, or an idle keep-alive one) is closed to make room, so a
//! crowd of silent connections cannot keep a real client, or `/health`, out. When every open connection has a
//! request in progress the newcomer is refused ([`Admission::Refused`]): it gets a short answer (HTTP 503, gRPC
//! UNAVAILABLE) saying so, from a small bounded set of refusing tasks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections one listener keeps open at once by default (`max_connections` changes it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// How long a new connection may send nothing at all (not even a TLS hello) before it is closed.
pub const FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Refusals answered at once; past these a refused connection is closed without an answer.
const REFUSING: usize = 32;

struct Entry {
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// The open connections of one listener.
pub struct Connections {
    max: usize,
    open: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicUsize,
    refusing: Arc<Semaphore>,
    /// Connections closed to make room, and connections refused: for `arrowport_status()` and tests.
    pub evicted: AtomicUsize,
    pub refused: AtomicUsize,
}

/// A connection's place among the open ones; it leaves when this is dropped.
pub struct Admitted {
    id: u64,
    owner: Arc<Connections>,
    busy: Arc<AtomicUsize>,
    /// Cancelled when the connection is closed to make room for a newer one.
    pub close: CancellationToken,
}

/// A request in progress on a connection (the connection is not closed to make room while one lives).
pub struct InRequest(Arc<AtomicUsize>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admitted {
    /// Marks a request in progress until the returned guard is dropped.
    pub fn request(&self) -> InRequest {
        self.busy.fetch_add(1, Ordering::SeqCst);
        InRequest(Arc::clone(&self.busy))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.owner.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// What becomes of a new connection.
pub enum Admission {
    Admitted(Admitted),
    /// At the cap with every connection busy: answer with the permit (a refusal in progress), or close it.
    Refused(Option<OwnedSemaphorePermit>),
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            open: Mutex::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
            refusing: Arc::new(Semaphore::new(REFUSING)),
            evicted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Registers a new connection, closing the oldest idle one when the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max {
            let idle = open.iter().find(|(_, e)| e.busy.load(Ordering::SeqCst) == 0).map(|(id, _)| *id);
            match idle.and_then(|id| open.remove(&id)) {
                Some(entry) => {
                    entry.close.cancel();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused(Arc::clone(&self.refusing).try_acquire_owned().ok());
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let (busy, close) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        open.insert(id, Entry { busy: Arc::clone(&busy), close: close.clone() });
        Admission::Admitted(Admitted { id, owner: Arc::clone(self), busy, close })
    }
}

/// The message a refused connection is answered with.
pub fn refusal_text(max: usize) -> String {
    format!(
        "too many connections: this listener keeps at most {max} open (max_connections) and every one has a request in \
         progress; retry shortly"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(c: &Arc<Connections>) -> Admitted {
        match c.admit() {
            Admission::Admitted(a) => a,
            Admission::Refused(_) => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let c = Connections::new(2);
        let a = admitted(&c);
        let b = admitted(&c);
        let _in_a = a.request();
        // At the cap: b (idle) is closed for the newcomer, a (busy) is kept.
        let n = admitted(&c);
        assert!(b.close.is_cancelled() && !a.close.is_cancelled());
        assert_eq!((c.open(), c.evicted.load(Ordering::Relaxed)), (2, 1));
        drop(b); // its task ends: nothing more to remove
        assert_eq!(c.open(), 2);
        // Both busy: refused, with an answer while refusing tasks are free.
        let _in_n = n.request();
        assert!(matches!(c.admit(), Admission::Refused(Some(_))));
        assert_eq!(c.refused.load(Ordering::Relaxed), 1);
        drop(_in_n);
        let _m = admitted(&c);
        assert!(n.close.is_cancelled());
        drop(a);
        assert_eq!(c.open(), 1);
    }
}
