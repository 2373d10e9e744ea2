//! The host's memory while client statements run.
//!
//! DuckDB's `memory_limit` covers its buffer manager, not every allocation a statement makes: the strings a
//! vector holds are not counted, so `repeat('x', 1000000 + ...)` over many rows makes the process hold
//! gigabytes per chunk while DuckDB's own accounting sees nothing. The guard samples the process's resident
//! memory while statements sent over the network run, and when it is over the limit (`sql_memory_limit`,
//! DuckDB's `memory_limit` by default) it interrupts each running statement during which the process grew by
//! more than [`GROWTH`]; those statements fail with [`EngineError::OverMemory`]. The growth condition keeps a
//! process that stays large after a statement (allocators keep freed memory) from interrupting every later one.
//!
//! What it cannot do: stop one allocation. DuckDB checks for an interrupt between chunks of work, so a
//! statement overshoots by at most what one chunk of it allocates (measured in docs/testing.md), and a single
//! value built in one call (`repeat('x', 2000000000)`) is made whole before anything can stop it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::engine::error::EngineError;
use crate::engine::writers::Watch;

/// How often the resident size is read while statements run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// How much the process must have grown during a statement for the guard to interrupt it.
pub const GROWTH: u64 = 64 << 20;

pub struct MemoryGuard {
    limit: u64,
    resident: fn() -> Option<u64>,
    /// Statements running: their watch and the resident size when they started.
    running: Mutex<Vec<(Weak<Watch>, u64)>>,
    wake: Notify,
    interrupted: std::sync::atomic::AtomicU64,
}

impl MemoryGuard {
    pub fn new(limit: u64, resident: fn() -> Option<u64>) -> MemoryGuard {
        MemoryGuard {
            limit,
            resident,
            running: Mutex::new(Vec::new()),
            wake: Notify::new(),
            interrupted: Default::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Statements interrupted so far.
    pub fn interrupted(&self) -> u64 {
        self.interrupted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Watches a statement from now until its job ends.
    pub(crate) fn watch(&self, watch: &Arc<Watch>) {
        let now = (self.resident)().unwrap_or(0);
        self.running.lock().unwrap_or_else(|p| p.into_inner()).push((Arc::downgrade(watch), now));
        self.wake.notify_one();
    }

    /// One look: interrupts the statements over the limit; returns whether any statement is still watched.
    pub(crate) fn check(&self) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(w, _)| w.upgrade().is_some_and(|w| !w.is_done()));
        if running.is_empty() {
            return false;
        }
        let Some(resident) = (self.resident)() else { return true };
        if resident > self.limit {
            running.retain(|(w, started)| {
                let grew = resident.saturating_sub(*started) > GROWTH;
                if let Some(w) = w.upgrade().filter(|_| grew)
                    && w.fire(EngineError::OverMemory { resident, limit: self.limit })
                {
                    self.interrupted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                !grew
            });
        }
        !running.is_empty()
    }

    /// Samples while statements run, sleeps while none does; ends when `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let idle = !self.check();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified(), if idle => {}
                _ = tokio::time::sleep(SAMPLE_EVERY), if !idle => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static RESIDENT: AtomicU64 = AtomicU64::new(0);

    fn resident() -> Option<u64> {
        Some(RESIDENT.load(Ordering::Relaxed))
    }

    #[test]
    fn statements_that_grew_the_process_past_the_limit_are_interrupted() {
        let guard = MemoryGuard::new(1 << 30, resident);
        RESIDENT.store(2 << 30, Ordering::Relaxed);
        // Started while the process was already large (an earlier statement's memory kept by the allocator).
        let old = Arc::new(Watch::default());
        guard.watch(&old);
        assert!(guard.check());
        assert_eq!(guard.interrupted(), 0);
        RESIDENT.store(100 << 20, Ordering::Relaxed);
        let new = Arc::new(Watch::default());
        guard.watch(&new);
        RESIDENT.store((2 << 30) + GROWTH, Ordering::Relaxed);
        assert!(guard.check(), "the older statement did not grow the process by GROWTH: still watched");
        assert_eq!(guard.interrupted(), 1);
        let e = new
            .explain::<()>(Err(EngineError::Sql(crate::duck::DbError::from_text("INTERRUPT Error: Interrupted!"))))
            .unwrap_err();
        assert!(matches!(e, EngineError::OverMemory { limit, .. } if limit == 1 << 30), "{e:?}");
        drop(old);
        assert!(!guard.check(), "nothing left to watch");
    }
}
