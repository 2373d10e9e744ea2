//! The body of a gRPC request as arrowport reads it: how it ended, and what its unfinished message costs.
//!
//! - **How it ended.** tonic reads a client's RST_STREAM(CANCEL) (a call cancelled or past its deadline,
//!   mid-stream) as the end of a request stream, as if the client had finished; for DoPut that would commit
//!   whatever arrived before it. Each body records whether it really ended ([`BodyEnd`]), so that only a body that
//!   ended is taken as the end of the data.
//! - **What it holds.** tonic gathers a message whole (up to `max_message_bytes`) before it hands it over, and
//!   the handlers reserve a message's bytes from the memory budget only then. The bytes of the message still
//!   arriving are charged to the budget here, as they arrive (a length prefix claims nothing), and given back when
//!   the message is complete (its handler reserves it next) or the body is dropped. A frame that does not fit
//!   fails the call with RESOURCE_EXHAUSTED; the handler reads the refusal from [`BodyEnd::over_budget`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::engine::budget::{Budget, Charge};
use crate::engine::error::EngineError;

/// How a call's request body ended on the wire, and whether the budget refused it.
#[derive(Clone, Default)]
pub struct BodyEnd(Arc<Ends>);

#[derive(Default)]
struct Ends {
    /// 0 while the body is still open, then [`ENDED`] or [`BROKEN`].
    state: AtomicU8,
    /// `(bytes, limit)` when a frame did not fit in the budget.
    refused: Mutex<Option<(usize, usize)>>,
}

const ENDED: u8 = 1;
const BROKEN: u8 = 2;

impl BodyEnd {
    pub fn ended(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == ENDED
    }

    /// The budget's refusal, if a frame of this body did not fit.
    pub fn over_budget(&self) -> Option<EngineError> {
        let refused = *self.0.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.map(|(bytes, limit)| EngineError::OverBudget { bytes, limit })
    }
}

/// Where the reader is in gRPC's framing: each message is a 5-byte prefix (a compression flag and a big-endian
/// length), then that many bytes.
#[derive(Debug, Default, PartialEq)]
struct Framing {
    /// Prefix bytes read of the next message (0..5).
    prefix: [u8; 5],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    /// Reads `chunk`; returns the bytes of it that belong to a message not yet complete (to be charged), and
    /// whether some message completed in it (the charge so far can be given back before charging those).
    fn read(&mut self, mut chunk: &[u8]) -> (usize, bool) {
        let mut completed = false;
        let mut pending = 0;
        while !chunk.is_empty() {
            if self.remaining == 0 && self.prefix_read < 5 {
                let take = (5 - self.prefix_read).min(chunk.len());
                self.prefix[self.prefix_read..self.prefix_read + take].copy_from_slice(&chunk[..take]);
                self.prefix_read += take;
                chunk = &chunk[take..];
                pending += take;
                if self.prefix_read == 5 {
                    self.remaining =
                        u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                    if self.remaining == 0 {
                        self.prefix_read = 0;
                        completed = true;
                        pending = 0;
                    }
                }
                continue;
            }
            let take = (self.remaining.min(chunk.len() as u64)) as usize;
            chunk = &chunk[take..];
            self.remaining -= take as u64;
            pending += take;
            if self.remaining == 0 {
                self.prefix_read = 0;
                completed = true;
                pending = 0;
            }
        }
        (pending, completed)
    }
}

/// A request body that records how it ended and charges its unfinished message to the budget.
pub struct Watched {
    inner: axum::body::Body,
    end: BodyEnd,
    budget: Arc<Budget>,
    framing: Framing,
    /// What the unfinished message holds of the budget.
    held: Charge,
}

impl Watched {
    fn take_in(&mut self, data: &[u8]) -> Result<(), EngineError> {
        let (pending, completed) = self.framing.read(data);
        if completed {
            self.held = Charge::default();
        }
        if pending > 0 {
            let more = self.budget.charge(pending)?;
            self.held.absorb(more);
        }
        Ok(())
    }
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.end.0.state.store(ENDED, Ordering::Release),
            Poll::Ready(Some(Err(_))) => self.end.0.state.store(BROKEN, Ordering::Release),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if let Err(e) = self.take_in(&data) {
                        if let EngineError::OverBudget { bytes, limit } = e {
                            *self.end.0.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some((bytes, limit));
                        }
                        self.end.0.state.store(BROKEN, Ordering::Release);
                        self.held = Charge::default();
                        return Poll::Ready(Some(Err(axum::Error::new(tonic::Status::resource_exhausted(
                            e.to_string(),
                        )))));
                    }
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request of a gRPC router a watched body and its [`BodyEnd`] (an extension the handlers read).
pub fn watch_request_bodies(router: axum::Router, budget: Arc<Budget>) -> axum::Router {
    router.layer(tower::util::MapRequestLayer::new(move |mut request: axum::http::Request<axum::body::Body>| {
        let end = BodyEnd::default();
        request.extensions_mut().insert(end.clone());
        let budget = Arc::clone(&budget);
        request.map(|inner| {
            axum::body::Body::new(Watched { inner, end, budget, framing: Framing::default(), held: Charge::default() })
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn only_the_unfinished_message_is_pending() {
        let mut f = Framing::default();
        let whole = message(10);
        assert_eq!(f.read(&whole), (0, true));
        // A prefix claiming 4 GiB and 3 bytes: only what arrived is pending.
        let mut claim = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        claim.extend_from_slice(&[1, 2, 3]);
        assert_eq!(f.read(&claim), (8, false));
        let mut f = Framing::default();
        // Two messages and the start of a third in one chunk, the prefix split across chunks.
        let mut chunk = message(3);
        chunk.extend(message(0));
        chunk.extend_from_slice(&[0, 0, 0]);
        assert_eq!(f.read(&chunk), (3, true));
        assert_eq!(f.read(&[0, 4, 9, 9]), (4, false));
        assert_eq!(f.read(&[9, 9, 0]), (1, true));
        assert_eq!(f.remaining, 0);
        assert_eq!(f.prefix_read, 1);
    }

    #[test]
    fn unfinished_messages_are_charged_and_given_back() {
        let budget = Arc::new(Budget::new(100));
        let mut w = Watched {
            inner: axum::body::Body::empty(),
            end: BodyEnd::default(),
            budget: Arc::clone(&budget),
            framing: Framing::default(),
            held: Charge::default(),
        };
        let m = message(150);
        w.take_in(&m[..60]).unwrap();
        assert_eq!(budget.in_use(), 60);
        let e = w.take_in(&m[60..110]).unwrap_err();
        assert!(matches!(e, EngineError::OverBudget { bytes: 50, limit: 100 }), "{e:?}");
        let mut w2 = Watched { budget: Arc::clone(&budget), ..w };
        w2.held = Charge::default();
        assert_eq!(budget.in_use(), 0);
        let small = message(20);
        w2.framing = Framing::default();
        w2.take_in(&small[..10]).unwrap();
        assert_eq!(budget.in_use(), 10);
        w2.take_in(&small[10..]).unwrap();
        assert_eq!(budget.in_use(), 0, "a complete message is handed over and reserved by its handler");
    }
}
