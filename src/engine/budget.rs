//! The host-wide memory budget: bytes of client data admitted and not yet given up, across every request and
//! listener of the host.
//!
//! Two kinds of charge draw on one [`Budget`]:
//! - a message is reserved as it arrives (REST: each chunk of the body before it is kept, so a size an IPC
//!   header claims holds nothing until it is sent; Flight: as tonic hands the message over) and held in the
//!   request's [`Reservation`] while it is decoded (with what a compressed message claims decompressed);
//! - a request's schema is charged per field for as long as the request lives ([`Reservation::pin`]);
//! - each decoded batch is charged when the pipeline admits it (read-ahead, group commit, the queue to a
//!   writer), and the charge travels with the batch until a writer hands it to DuckDB or its group commits or
//!   rolls back; admitting a batch gives up the reservation of the message it came from.
//!
//! A charge that does not fit is refused at once ([`EngineError::OverBudget`]: RESOURCE_EXHAUSTED / 503 with
//! `Retry-After`) rather than waited for, so no request can hold the budget while it waits for another.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::error::EngineError;

/// The budget when `memory_budget` is not given: 1 GiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

/// Bytes the host may hold of client data at once.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    free: Arc<Semaphore>,
}

/// Bytes drawn from the budget; given back when dropped.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Takes `other`'s bytes into this charge: one charge, however many pieces it was drawn in.
    pub fn absorb(&mut self, other: Charge) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Budget { limit, free: Arc::new(Semaphore::new(limit)) }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged right now.
    pub fn in_use(&self) -> usize {
        self.limit - self.free.available_permits()
    }

    /// Draws `bytes` from the budget, or refuses at once when they do not fit now.
    pub fn charge(&self, bytes: usize) -> Result<Charge, EngineError> {
        if bytes == 0 {
            return Ok(Charge(None));
        }
        let over = || EngineError::OverBudget { bytes, limit: self.limit };
        let n = u32::try_from(bytes).map_err(|_| over())?;
        if bytes > self.limit {
            return Err(over());
        }
        Arc::clone(&self.free).try_acquire_many_owned(n).map(|p| Charge(Some(p))).map_err(|_| over())
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(DEFAULT_MEMORY_BUDGET)
    }
}

/// A request's reservations for the messages it is receiving and decoding; emptied as their batches are
/// admitted, and with the request.
#[derive(Debug, Clone, Default)]
pub struct Reservation(Arc<Mutex<Held>>);

#[derive(Debug, Default)]
struct Held {
    /// Messages being received and decoded: given up as their batches are admitted.
    messages: Vec<Charge>,
    /// What the request costs for as long as it lives (its schema).
    pinned: Vec<Charge>,
}

impl Reservation {
    pub fn hold(&self, charge: Charge) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).messages.push(charge);
    }

    /// Holds `charge` until the request ends (the last clone of this reservation is dropped).
    pub fn pin(&self, charge: Charge) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pinned.push(charge);
    }

    /// Gives up every message reservation held so far (their messages are decoded and admitted).
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).messages.clear();
    }

    /// Reserves `bytes` of `budget` for a message about to be read.
    pub fn reserve(&self, budget: &Budget, bytes: usize) -> Result<(), EngineError> {
        self.hold(budget.charge(bytes)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_or_are_refused_and_come_back_when_dropped() {
        let b = Budget::new(100);
        let a = b.charge(60).unwrap();
        assert_eq!((a.bytes(), b.in_use()), (60, 60));
        let e = b.charge(50).unwrap_err();
        assert!(matches!(e, EngineError::OverBudget { bytes: 50, limit: 100 }), "{e:?}");
        assert_eq!(e.code(), crate::engine::error::Code::Busy);
        assert!(b.charge(101).is_err(), "more than the whole budget");
        drop(a);
        assert_eq!(b.in_use(), 0);
        let r = Reservation::default();
        r.reserve(&b, 70).unwrap();
        assert!(r.reserve(&b, 40).is_err());
        assert_eq!(b.in_use(), 70);
        r.release();
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.charge(0).unwrap().bytes(), 0);
    }

    #[test]
    fn absorbed_charges_are_one_and_come_back_together() {
        let b = Budget::new(100);
        let mut held = Charge::default();
        for _ in 0..3 {
            let more = b.charge(20).unwrap();
            held.absorb(more);
        }
        held.absorb(Charge::default());
        assert_eq!((held.bytes(), b.in_use()), (60, 60));
        drop(held);
        assert_eq!(b.in_use(), 0);
    }
}
