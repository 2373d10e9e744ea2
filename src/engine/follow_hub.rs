//! What followers on this host share per followable table: the last position committed here (they wait on it),
//! and the table's tail: the rows of its latest reads, so that live followers read each commit once between them
//! instead of once each.
//!
//! The tail is a run of contiguous segments, each the rows past one position up to the position of its last row,
//! as one read found them; a follower whose cursor is where a segment starts takes that segment and the ones after
//! it. One follower at a time reads past the tail's end (`reading`), so the followers a commit wakes together
//! make one read. A read that found nothing is remembered too: a follower woken before it started need not read
//! again. The tail holds at most [`TAIL_BYTES`] (charged to the memory budget by whoever reads) and is emptied when
//! the table's last follower leaves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::registry::Target;
use crate::engine::budget::Charge;

/// The most a table's tail keeps; the oldest segments go first.
pub const TAIL_BYTES: usize = 16 << 20;

/// The name a followable table goes by in the positions table and the hub.
pub fn table_key(target: &Target) -> String {
    target.display().to_lowercase()
}

/// Per followable table: its position as commits land on this host, and its tail.
#[derive(Default)]
pub struct FollowHub {
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

impl FollowHub {
    fn feed(&self, key: &str) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(feeds.entry(key.to_string()).or_insert_with(|| {
            Arc::new(Feed {
                position: watch::channel(0).0,
                tail: Mutex::new(Tail::default()),
                reading: tokio::sync::Mutex::new(()),
                followers: AtomicUsize::new(0),
            })
        }))
    }

    /// A commit into the table `key` whose last row has `position`.
    pub fn committed(&self, key: &str, position: i64) {
        self.feed(key).position.send_if_modified(|p| {
            let newer = position > *p;
            if newer {
                *p = position;
            }
            newer
        });
    }

    /// The table's positions as they commit on this host.
    pub fn watch(&self, key: &str) -> watch::Receiver<i64> {
        self.feed(key).position.subscribe()
    }

    /// The table's feed, for a follower (counted until the [`Joined`] is dropped).
    pub fn join(&self, key: &str) -> Joined {
        let feed = self.feed(key);
        feed.followers.fetch_add(1, Ordering::Relaxed);
        Joined(feed)
    }
}

/// One followable table's shared state.
pub struct Feed {
    position: watch::Sender<i64>,
    tail: Mutex<Tail>,
    /// Held by the follower reading past the tail's end.
    pub reading: tokio::sync::Mutex<()>,
    followers: AtomicUsize,
}

/// A follower's membership of a feed; the last to leave empties the tail.
pub struct Joined(Arc<Feed>);

impl std::ops::Deref for Joined {
    type Target = Feed;
    fn deref(&self) -> &Feed {
        &self.0
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if self.0.followers.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.tail() = Tail::default();
        }
    }
}

/// The rows past `from` up to `to` (the position of the last of them), as one read found them.
pub struct Segment {
    pub from: i64,
    pub to: i64,
    pub batches: Vec<RecordBatch>,
    pub bytes: usize,
    /// The memory budget the rows hold while they are kept.
    pub charge: Charge,
}

#[derive(Default)]
struct Tail {
    segments: VecDeque<Segment>,
    bytes: usize,
    /// The last read that found nothing: the position it read past, and when it started.
    empty: Option<(i64, Instant)>,
}

impl Feed {
    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rows past `last` the tail holds, when a segment starts at `last`.
    pub fn rows_past(&self, last: i64) -> Option<Vec<RecordBatch>> {
        let tail = self.tail();
        let at = tail.segments.iter().position(|s| s.from == last)?;
        Some(tail.segments.iter().skip(at).flat_map(|s| s.batches.iter().cloned()).collect())
    }

    /// Whether `last` is at or past the tail's end (or the tail is empty): rows past it take a read.
    pub fn at_end(&self, last: i64) -> bool {
        self.tail().segments.back().is_none_or(|s| s.to <= last)
    }

    /// Whether a read past `last` that started at or after `since` found nothing.
    pub fn found_nothing(&self, last: i64, since: Instant) -> bool {
        self.tail().empty.is_some_and(|(from, started)| from == last && started >= since)
    }

    /// A read past `last`, started at `started`, found nothing.
    pub fn nothing_past(&self, last: i64, started: Instant) {
        self.tail().empty = Some((last, started));
    }

    /// Keeps a read's rows at the tail's end when they continue it (else they start it afresh, or, when the tail
    /// is already past them, are not kept); the oldest segments go beyond [`TAIL_BYTES`].
    pub fn keep(&self, segment: Segment) {
        let mut tail = self.tail();
        match tail.segments.back() {
            Some(s) if s.to == segment.from => {}
            Some(s) if s.to > segment.from => return,
            _ => {
                tail.segments.clear();
                tail.bytes = 0;
            }
        }
        tail.bytes += segment.bytes;
        tail.segments.push_back(segment);
        while tail.bytes > TAIL_BYTES && tail.segments.len() > 1 {
            if let Some(old) = tail.segments.pop_front() {
                tail.bytes -= old.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn segment(from: i64, to: i64) -> Segment {
        let batch =
            RecordBatch::try_from_iter([("c", Arc::new(Int64Array::from_iter_values(from + 1..=to)) as _)]).unwrap();
        Segment { from, to, bytes: 8 * (to - from) as usize, batches: vec![batch], charge: Charge::default() }
    }

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

    #[test]
    fn the_tail_hands_out_contiguous_rows_and_forgets_when_nobody_follows() {
        let hub = FollowHub::default();
        let feed = hub.join("main.ev");
        assert!(feed.at_end(0) && feed.rows_past(0).is_none());
        feed.keep(segment(0, 3));
        feed.keep(segment(3, 5));
        // Not contiguous with the end: not kept.
        feed.keep(segment(2, 9));
        assert_eq!(feed.rows_past(0).unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        assert_eq!(feed.rows_past(3).unwrap().len(), 1);
        assert!(feed.rows_past(4).is_none() && !feed.at_end(4) && feed.at_end(5));
        // A read that jumps past the end starts the tail afresh.
        feed.keep(segment(7, 8));
        assert!(feed.rows_past(0).is_none() && feed.rows_past(7).is_some());
        let started = Instant::now();
        feed.nothing_past(8, started);
        assert!(feed.found_nothing(8, started) && !feed.found_nothing(7, started));
        assert!(!feed.found_nothing(8, started + std::time::Duration::from_millis(1)));
        let second = hub.join("main.ev");
        drop(feed);
        assert!(second.rows_past(7).is_some());
        drop(second);
        assert!(hub.join("main.ev").rows_past(7).is_none());
    }

    #[test]
    fn the_tail_is_bounded() {
        let hub = FollowHub::default();
        let feed = hub.join("main.ev");
        let n = (TAIL_BYTES / 8 / 1000) as i64 + 10;
        for i in 0..n {
            feed.keep(segment(i * 1000, (i + 1) * 1000));
        }
        assert!(feed.rows_past(0).is_none());
        assert!(feed.rows_past((n - 1) * 1000).is_some());
        assert!(feed.tail().bytes <= TAIL_BYTES);
    }
}
