//! Following a stream: a follower gets every row of a followable stream's table past its cursor, in position
//! order, then each commit as it lands, until it hangs up or the host stops.
//!
//! Rows are read back from the table (`WHERE arrowport_cursor > last ORDER BY arrowport_cursor`), in rounds, on
//! the statement pool's connections (never the writers): catching up and live are the same read, so there is no
//! seam between them where a row could be lost or repeated, and the host holds no rows for a follower beyond the
//! batch it is handing over. A round starts when this host commits into the table (`follow_hub`), and at least
//! every [`POLL`] (commits of other hosts of a shared DuckLake). A follower that does not take a batch within
//! [`SLOW`] gives its connection back; its next round starts from the last row it took.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::catalog::access::Principal;
use crate::catalog::registry::{CURSOR_COLUMN, Target};
use crate::catalog::schema::quote_ident;
use crate::engine::budget::Charge;
use crate::engine::core::Core;
use crate::engine::error::EngineError;
use crate::engine::follow_hub::table_key;
use crate::engine::metrics::FollowerNote;
use crate::engine::query::QueryStream;
use crate::engine::session::Session;

/// How often a live follower reads even without a commit on this host.
pub const POLL: Duration = Duration::from_millis(250);

/// How long a round waits for its follower to take a batch before giving its connection back.
pub const SLOW: Duration = Duration::from_secs(5);

/// Rows per batch handed to a follower (at most; a batch is also cut at 8 MiB).
pub const FOLLOW_BATCH_ROWS: usize = 65_536;

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Everything the stream has.
    Start,
    /// Only what commits from now on.
    End,
    /// Every row past this cursor.
    Cursor(i64),
}

impl After {
    /// `start` (or `0`), `end`, or a cursor a follower was given.
    pub fn parse(text: &str) -> Result<After, EngineError> {
        match text.trim() {
            "start" | "" => Ok(After::Start),
            "end" => Ok(After::End),
            t => match t.parse::<i64>() {
                Ok(0) => Ok(After::Start),
                Ok(n) if n > 0 => Ok(After::Cursor(n)),
                _ => Err(EngineError::BadInput(format!(
                    "after must be a cursor (a positive number a follower was given), 0, \"start\" or \"end\"; not {t:?}"
                ))),
            },
        }
    }
}

/// When a follow call ends by itself (it always ends when the host stops or the follower hangs up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Until {
    /// End once caught up: after the first read that handed over rows has ended, or, when there were none, once
    /// this long has passed without any. `None`: stay live.
    pub caught_up: Option<Duration>,
    /// End after this many rows (the batch that reaches it is cut).
    pub max_rows: Option<u64>,
}

/// The longest `wait` a follow call takes.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Until {
    /// From a request's `wait` (seconds, 0 to [`MAX_WAIT`]) and `max_rows` (positive), as texts.
    pub fn parse(wait: Option<&str>, max_rows: Option<&str>) -> Result<Until, EngineError> {
        let caught_up = match wait.map(str::trim) {
            None => None,
            Some(w) => match w.parse::<f64>() {
                Ok(s) if (0.0..=MAX_WAIT.as_secs_f64()).contains(&s) => Some(Duration::from_secs_f64(s)),
                _ => {
                    return Err(EngineError::BadInput(format!(
                        "wait must be a number of seconds from 0 to {}; not {w:?}",
                        MAX_WAIT.as_secs()
                    )));
                }
            },
        };
        let max_rows = match max_rows.map(str::trim) {
            None => None,
            Some(m) => match m.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(EngineError::BadInput(format!(
                        "max_rows must be a positive number of rows; not {m:?}"
                    )));
                }
            },
        };
        Ok(Until { caught_up, max_rows })
    }
}

/// What a follower gets of each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The table's columns (its cursor column among them).
    Rows,
    /// Two columns: `arrowport_cursor` and `row`, the row as JSON text (DuckDB's `to_json`).
    Json,
}

/// A follower's batches, each with the cursor of its last row.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<(RecordBatch, i64), EngineError>> + Send>>;

/// The cursor of a batch's last row (batches come in cursor order).
fn last_cursor(batch: &RecordBatch) -> Option<i64> {
    let column = batch.column_by_name(CURSOR_COLUMN)?.as_any().downcast_ref::<Int64Array>()?;
    (!column.is_empty() && column.is_valid(column.len() - 1)).then(|| column.value(column.len() - 1))
}

impl<S: Session + 'static> Core<S> {
    /// Follows a followable stream from `after`: its table's schema, and its rows past the cursor in position order,
    /// then live, until the host stops (the stream then ends cleanly).
    pub async fn follow(
        self: &Arc<Self>,
        principal: &Principal,
        stream: &str,
        after: After,
        shape: Shape,
        until: Until,
        protocol: &'static str,
    ) -> Result<(SchemaRef, FollowStream), EngineError> {
        let deadline = until.caught_up.map(|wait| tokio::time::Instant::now() + wait);
        if !principal.may_read(stream) {
            return Err(EngineError::Denied(principal.denied_read(stream)));
        }
        let mapping = self.registry.get(stream).ok_or_else(|| {
            EngineError::NotFound(format!(
                "unknown stream {stream:?}: only streams created with arrowport_create_stream can be followed"
            ))
        })?;
        if !mapping.follow {
            return Err(EngineError::BadInput(format!(
                "stream {stream:?} is not followable; make it so with arrowport_alter_stream('{stream}', follow := true)"
            )));
        }
        let key = table_key(&mapping.target);
        let table = target_sql(&mapping.target);
        let cursor = quote_ident(CURSOR_COLUMN);
        let columns = match shape {
            Shape::Rows => "*".to_string(),
            Shape::Json => format!("{cursor}, to_json(t)::VARCHAR AS \"row\""),
        };
        // A stream that has not landed anything yet has no table: its followers wait for the first commit (until
        // they hang up or the host stops).
        let mut hub = self.follow.watch(&key);
        let (schema, last_now) = loop {
            match self.round_schema(&table, &cursor, &columns).await {
                Err(e) if e.code() == crate::engine::error::Code::NotFound => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Err(EngineError::NotFound(format!(
                            "stream {stream:?} has not landed anything yet, so it has no rows and no columns to follow"
                        )));
                    }
                    tokio::select! {
                        _ = hub.changed() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = sleep_until(deadline) => {}
                        _ = self.cancel.cancelled() => return Err(EngineError::Stopping),
                    }
                }
                other => break other?,
            }
        };
        let last = match after {
            After::Start => 0,
            After::End => last_now,
            After::Cursor(c) if c > last_now => {
                return Err(EngineError::BadInput(format!(
                    "cursor {c} is past the last position of stream {stream:?} ({last_now}): it is not one of this stream's"
                )));
            }
            After::Cursor(c) => c,
        };
        let note = self.metrics.follower(stream, protocol, last);
        note.latest(last_now);
        let state = Following {
            note,
            held: Charge::default(),
            core: Arc::clone(self),
            hub,
            sql: move |last: i64| {
                format!("SELECT {columns} FROM {table} AS t WHERE {cursor} > {last} ORDER BY {cursor}")
            },
            last,
            round: None,
            schema: Arc::clone(&schema),
            until,
            deadline,
            handed: 0,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        });
        Ok((schema, Box::pin(stream)))
    }

    /// The table's schema, and its last position now.
    async fn round_schema(&self, table: &str, cursor: &str, columns: &str) -> Result<(SchemaRef, i64), EngineError> {
        let (_, mut last) = self
            .export_statement(&format!("SELECT coalesce(max({cursor}), 0)::BIGINT AS last FROM {table}"), SLOW)
            .await?;
        let mut position = 0;
        while let Some(batch) = last.next().await {
            let batch = batch?;
            if let Some(c) = batch.column(0).as_any().downcast_ref::<Int64Array>().filter(|c| !c.is_empty()) {
                position = c.value(0);
            }
        }
        let (schema, _) = self.export_statement(&format!("SELECT {columns} FROM {table} AS t LIMIT 0"), SLOW).await?;
        Ok((schema, position))
    }

    /// A read of the host's own on the statement pool, streamed; `stall` bounds the wait for its reader.
    async fn export_statement(&self, sql: &str, stall: Duration) -> Result<(SchemaRef, QueryStream), EngineError> {
        self.export_on_statements(sql, FOLLOW_BATCH_ROWS, stall).await
    }
}

/// The table as a statement on a connection whose default is the host database names it.
fn target_sql(target: &Target) -> String {
    match &target.catalog {
        Some(c) => format!("{}.{}.{}", quote_ident(c), quote_ident(&target.schema), quote_ident(&target.table)),
        None => format!("{}.{}", quote_ident(&target.schema), quote_ident(&target.table)),
    }
}

/// A follower between rounds, or in one.
struct Following<S: Session, F: Fn(i64) -> String> {
    /// The follower's entry in the metrics and `arrowport_followers()`.
    note: FollowerNote,
    /// The memory budget the batch being handed over holds.
    held: Charge,
    core: Arc<Core<S>>,
    hub: watch::Receiver<i64>,
    sql: F,
    /// The cursor of the last row handed over.
    last: i64,
    round: Option<QueryStream>,
    schema: SchemaRef,
    until: Until,
    /// When a follower that asked to end once caught up stops waiting for a first row.
    deadline: Option<tokio::time::Instant>,
    /// Rows handed over so far.
    handed: u64,
}

/// Sleeps until the deadline; never, without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<S: Session + 'static, F: Fn(i64) -> String> Following<S, F> {
    /// The next batch with its cursor; `None` when the host stops.
    async fn next(&mut self) -> Option<Result<(RecordBatch, i64), EngineError>> {
        loop {
            if self.core.cancel.is_cancelled() || self.until.max_rows.is_some_and(|m| self.handed >= m) {
                return None;
            }
            if let Some(round) = self.round.as_mut() {
                let mut caught_up = false;
                match round.next().await {
                    Some(Ok(batch)) if batch.num_rows() == 0 => continue,
                    Some(Ok(mut batch)) => {
                        if batch.schema().fields() != self.schema.fields() {
                            return Some(Err(EngineError::Conflict(
                                "the stream's table changed its columns; follow it again from the last cursor".into(),
                            )));
                        }
                        if let Some(max) = self.until.max_rows {
                            let room = usize::try_from(max - self.handed).unwrap_or(usize::MAX);
                            if batch.num_rows() > room {
                                batch = batch.slice(0, room);
                            }
                        }
                        let Some(cursor) = last_cursor(&batch) else {
                            return Some(Err(EngineError::Internal("a followed row without its cursor".into())));
                        };
                        // The batch holds its bytes of the host's memory budget until the next one is asked for;
                        // when they do not fit, the round ends and the follower reads them again later.
                        let bytes = batch.get_array_memory_size();
                        self.held = Charge::default();
                        match self.core.budget.charge(bytes) {
                            Ok(charge) => self.held = charge,
                            Err(_) => {
                                self.round = None;
                                tokio::select! {
                                    _ = tokio::time::sleep(POLL) => {}
                                    _ = self.core.cancel.cancelled() => return None,
                                }
                                continue;
                            }
                        }
                        self.last = cursor;
                        self.handed += batch.num_rows() as u64;
                        self.note.sent(batch.num_rows() as u64, bytes as u64, cursor, *self.hub.borrow());
                        return Some(Ok((batch, cursor)));
                    }
                    // A round that ended, or gave up on a slow follower or a busy pool: the next one starts from
                    // the last row handed over.
                    Some(Err(e)) if !matches!(e, EngineError::Stopping) => {
                        self.round = None;
                        if !e.code().is_transient() {
                            return Some(Err(e));
                        }
                    }
                    None => {
                        self.round = None;
                        caught_up = true;
                    }
                    _ => self.round = None,
                }
                if caught_up && self.deadline.is_some() {
                    // A follower that asked to end once caught up: it is, after a read that handed it rows, or
                    // after waiting its time for a first one.
                    if self.handed > 0 || self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return None;
                    }
                }
                // Wait for a commit on this host, or poll for other hosts'.
                self.held = Charge::default();
                let seen = *self.hub.borrow_and_update();
                self.note.latest(seen);
                if seen <= self.last {
                    let deadline = if self.handed == 0 { self.deadline } else { None };
                    tokio::select! {
                        _ = self.hub.changed() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = sleep_until(deadline) => {}
                        _ = self.core.cancel.cancelled() => return None,
                    }
                }
                continue;
            }
            let sql = (self.sql)(self.last);
            match self.core.export_statement(&sql, SLOW).await {
                Ok((_, rows)) => self.round = Some(rows),
                Err(e) if e.code().is_transient() => {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = self.core.cancel.cancelled() => return None,
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_follower_starts() {
        assert_eq!(After::parse("start").unwrap(), After::Start);
        assert_eq!(After::parse("0").unwrap(), After::Start);
        assert_eq!(After::parse("end").unwrap(), After::End);
        assert_eq!(After::parse(" 42 ").unwrap(), After::Cursor(42));
        for bad in ["-1", "x", "1.5", "99999999999999999999"] {
            assert!(After::parse(bad).unwrap_err().to_string().contains("after must be a cursor"), "{bad}");
        }
    }
}
