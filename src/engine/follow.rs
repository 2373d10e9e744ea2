//! Following a stream: a follower gets every row of a followable stream's table past its cursor, in position
//! order, then each commit as it lands, until it hangs up or the host stops.
//!
//! Rows are read back from the table (`WHERE arrowport_cursor > last ORDER BY arrowport_cursor`), in rounds, on
//! the statement pool's connections (never the writers): catching up and live are the same read, so there is no
//! seam between them where a row could be lost or repeated. A round starts when this host commits into the table
//! (`follow_hub`), and at least every [`POLL`] (commits of other hosts of a shared DuckLake). Live followers share
//! their reads: the follower that reads past the table's tail keeps what it found there for the others (see
//! `follow_hub`), so a commit is read once however many follow it; a follower behind the tail (catching up) reads
//! for itself. A follower that does not take a batch within [`SLOW`] gives its connection back; its next round
//! starts from the last row it took.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::catalog::access::Principal;
use crate::catalog::registry::{CURSOR_COLUMN, Target};
use crate::catalog::schema::{quote_ident, quote_literal};
use crate::engine::budget::Charge;
use crate::engine::core::Core;
use crate::engine::error::EngineError;
use crate::engine::follow_hub::{Joined, Segment, table_key};
use crate::engine::metrics::FollowerNote;
use crate::engine::query::QueryStream;
use crate::engine::session::Session;
use crate::engine::writers::Work;

/// How often a live follower reads even without a commit on this host.
pub const POLL: Duration = Duration::from_millis(250);

/// How long a round waits for its follower to take a batch before giving its connection back.
pub const SLOW: Duration = Duration::from_secs(5);

/// Rows per batch handed to a follower (at most; a batch is also cut at 8 MiB).
pub const FOLLOW_BATCH_ROWS: usize = 65_536;

/// Rows per batch of a read of a follower's own (catching up; at most, a batch is also cut at 8 MiB): DuckDB's
/// row group, as a Flight SQL result's batches.
pub const HISTORY_BATCH_ROWS: usize = 122_880;

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

/// Whether every row of a batch has a cursor past `after` and past the row before it.
fn follows_in_order(batch: &RecordBatch, after: i64) -> bool {
    let Some(column) = batch.column_by_name(CURSOR_COLUMN).and_then(|c| c.as_any().downcast_ref::<Int64Array>()) else {
        return false;
    };
    let mut previous = after;
    column.null_count() == 0
        && column.values().iter().all(|&c| {
            let next = c > previous;
            previous = c;
            next
        })
}

/// Whether batches read in turn all follow in order from `after` (see [`follows_in_order`]).
fn in_order_from(batches: &[RecordBatch], after: i64) -> bool {
    let mut last = after;
    batches.iter().all(|b| {
        let ok = follows_in_order(b, last);
        last = last_cursor(b).unwrap_or(last);
        ok
    })
}

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
        let (schema, last_now, in_order) = loop {
            match self.round_schema(&mapping.target, &cursor, &columns).await {
                // No table yet, or one without positions yet (its cursor column comes with the first commit after
                // the stream became followable).
                Err(e)
                    if e.code() == crate::engine::error::Code::NotFound
                        || matches!(&e, EngineError::Sql(db) if db.is(crate::duck::DbErrorKind::Binder)) =>
                {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Err(EngineError::NotFound(format!(
                            "stream {stream:?} has not landed anything since it became followable, so it has no rows to follow yet"
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
        let read = (mapping.target.clone(), columns.clone());
        let state = Following {
            read,
            note,
            held: Charge::default(),
            core: Arc::clone(self),
            hub,
            sql: move |last: i64, ordered: bool| {
                let order = if ordered { format!(" ORDER BY {cursor}") } else { String::new() };
                format!("SELECT {columns} FROM {table} AS t WHERE {cursor} > {last}{order}")
            },
            in_order,
            round_last: last,
            last,
            round: None,
            schema: Arc::clone(&schema),
            until,
            deadline,
            handed: 0,
            // Followers of the table's rows share its tail; JSON-shaped ones read their own.
            feed: (shape == Shape::Rows).then(|| self.follow.join(&key)),
            pending: VecDeque::new(),
            from_tail: false,
            catching_up: false,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        });
        Ok((schema, Box::pin(stream)))
    }

    /// The table's schema, its last position now, and whether its rows lie in position order (see
    /// [`Following::in_order`]).
    async fn round_schema(
        &self,
        target: &Target,
        cursor: &str,
        columns: &str,
    ) -> Result<(SchemaRef, i64, bool), EngineError> {
        let table = target_sql(target);
        let catalog = match &target.catalog {
            Some(c) => quote_literal(c),
            None => "current_database()".to_string(),
        };
        let (schema_name, table_name) = (quote_literal(&target.schema), quote_literal(&target.table));
        let this = format!("database_name = {catalog} AND schema_name = {schema_name} AND table_name = {table_name}");
        // A DuckDB table read in insertion order, without an index (an UPDATE of an indexed column moves the row to
        // the table's end). A BIGINT: the statement pool's connections export BOOLEAN as Arrow's bool8 extension.
        let in_order = format!(
            "(coalesce((SELECT any_value(type) FROM duckdb_databases() WHERE database_name = {catalog}) = 'duckdb', false) \
             AND current_setting('preserve_insertion_order')::BOOLEAN \
             AND NOT EXISTS (SELECT 1 FROM duckdb_indexes() WHERE {this}) \
             AND NOT EXISTS (SELECT 1 FROM duckdb_constraints() WHERE {this} \
                             AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')))::BIGINT"
        );
        let sql = format!("SELECT coalesce(max({cursor}), 0)::BIGINT AS last, {in_order} AS in_order FROM {table}");
        let (_, mut last) = self.export_statement(&sql, SLOW).await?;
        let (mut position, mut in_order) = (0, false);
        while let Some(batch) = last.next().await {
            let batch = batch?;
            if let Some(c) = batch.column(0).as_any().downcast_ref::<Int64Array>().filter(|c| !c.is_empty()) {
                position = c.value(0);
            }
            if let Some(o) = batch.column(1).as_any().downcast_ref::<Int64Array>().filter(|o| !o.is_empty()) {
                in_order = o.value(0) == 1;
            }
        }
        let (schema, _) = self.export_statement(&format!("SELECT {columns} FROM {table} AS t LIMIT 0"), SLOW).await?;
        Ok((schema, position, in_order))
    }

    /// The rows of `target` past `after` (sorted by position when `ordered`, else in the table's order), at most a
    /// batch's worth, read whole on the statement pool with a statement each connection prepares once (see
    /// `Session::follow_read`); its batches that hold rows.
    async fn read_past(
        &self,
        target: &Target,
        columns: &str,
        after: i64,
        ordered: bool,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), EngineError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let work = Work::FollowRead {
            target: target.clone(),
            columns: columns.to_string(),
            after,
            limit: FOLLOW_BATCH_ROWS,
            ordered,
            reply,
        };
        let (schema, batches) = self.call_statement(work, crate::engine::policy::STATEMENT_TIMEOUT, rx).await?;
        Ok((schema, batches.into_iter().filter(|b| b.num_rows() > 0).collect()))
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
struct Following<S: Session, F: Fn(i64, bool) -> String> {
    /// The table and the select list, for reads past the tail's end.
    read: (Target, String),
    /// The follower's entry in the metrics and `arrowport_followers()`.
    note: FollowerNote,
    /// The memory budget the batch being handed over holds.
    held: Charge,
    core: Arc<Core<S>>,
    hub: watch::Receiver<i64>,
    /// A read of the follower's own past a cursor, ordered by position or not.
    sql: F,
    /// Whether the table's rows lie in position order, so that a read of its own needs no ORDER BY: a table of a
    /// DuckDB database read with `preserve_insertion_order` on (arrowport's commits into a followable table take
    /// turns and number their rows in the order they append them). Turned off for good when a read finds a row
    /// out of order (a user who rewrote positions): the follower then reads sorted from its last row.
    in_order: bool,
    /// The cursor of the last row a read of its own in table order found (the next must be past it).
    round_last: i64,
    /// The cursor of the last row handed over.
    last: i64,
    /// A read of the follower's own, under way.
    round: Option<QueryStream>,
    schema: SchemaRef,
    until: Until,
    /// When a follower that asked to end once caught up stops waiting for a first row.
    deadline: Option<tokio::time::Instant>,
    /// Rows handed over so far.
    handed: u64,
    /// The table's shared tail (followers of its rows).
    feed: Option<Joined>,
    /// Batches read, to hand over in order.
    pending: VecDeque<RecordBatch>,
    /// Whether `pending` came from the tail (or a read past its end): once handed, the follower has what this
    /// host has committed.
    from_tail: bool,
    /// Far behind: reading in a stream of its own until it has caught up.
    catching_up: bool,
}

/// Sleeps until the deadline; never, without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What became of a batch offered to the follower.
enum Hand {
    Given(RecordBatch, i64),
    /// No rows in it.
    Empty,
    /// Its bytes do not fit the memory budget now.
    NoRoom,
    Failed(EngineError),
}

/// What a read past the tail's end found.
enum Tip {
    /// Rows (kept in the tail for the other followers).
    Rows(Vec<RecordBatch>),
    /// Nothing past the follower's cursor.
    Nothing,
    Failed(EngineError),
}

impl<S: Session + 'static, F: Fn(i64, bool) -> String> Following<S, F> {
    /// The next batch with its cursor; `None` when the host stops or the follower asked to end.
    async fn next(&mut self) -> Option<Result<(RecordBatch, i64), EngineError>> {
        loop {
            if self.core.cancel.is_cancelled() || self.until.max_rows.is_some_and(|m| self.handed >= m) {
                return None;
            }
            if let Some(batch) = self.pending.pop_front() {
                match self.hand(batch) {
                    Hand::Given(batch, cursor) => return Some(Ok((batch, cursor))),
                    Hand::Empty => continue,
                    Hand::NoRoom => {
                        // The follower reads them again later, from its last row.
                        self.pending.clear();
                        self.round = None;
                        if !self.pause().await {
                            return None;
                        }
                        continue;
                    }
                    Hand::Failed(e) => return Some(Err(e)),
                }
            }
            if std::mem::take(&mut self.from_tail) {
                if self.ended() {
                    return None;
                }
                if !self.wait_for_commit().await {
                    return None;
                }
                continue;
            }
            if let Some(round) = self.round.as_mut() {
                let mut caught_up = false;
                match round.next().await {
                    Some(Ok(batch)) if self.in_order && !follows_in_order(&batch, self.round_last) => {
                        // Rows out of position order: read again from the last row handed over, sorted.
                        self.in_order = false;
                        self.pending.clear();
                        self.round = None;
                        continue;
                    }
                    Some(Ok(batch)) => {
                        self.round_last = last_cursor(&batch).unwrap_or(self.round_last);
                        self.pending.push_back(batch);
                        continue;
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
                        self.catching_up = false;
                        caught_up = true;
                    }
                    _ => self.round = None,
                }
                if caught_up && self.ended() {
                    return None;
                }
                if !self.wait_for_commit().await {
                    return None;
                }
                continue;
            }
            if let Some(feed) = self.feed.as_ref().filter(|_| !self.catching_up) {
                if let Some(batches) = feed.rows_past(self.last) {
                    self.pending.extend(batches);
                    self.from_tail = true;
                    continue;
                }
                if feed.at_end(self.last) {
                    match self.read_tip().await {
                        Tip::Rows(batches) => {
                            // A full read: the follower is far behind, and reads the rest in one stream of its own.
                            self.catching_up =
                                batches.iter().map(RecordBatch::num_rows).sum::<usize>() >= FOLLOW_BATCH_ROWS;
                            self.from_tail = !self.catching_up;
                            self.pending.extend(batches);
                        }
                        Tip::Nothing => {
                            if self.ended() || !self.wait_for_commit().await {
                                return None;
                            }
                        }
                        Tip::Failed(e) if e.code().is_transient() => {
                            if !self.pause().await {
                                return None;
                            }
                        }
                        Tip::Failed(e) => return Some(Err(e)),
                    }
                    continue;
                }
            }
            // Behind the tail (catching up), or a follower of its own: a read of its own.
            let sql = (self.sql)(self.last, !self.in_order);
            self.round_last = self.last;
            match self.core.export_on_statements(&sql, HISTORY_BATCH_ROWS, SLOW).await {
                Ok((_, rows)) => self.round = Some(rows),
                Err(e) if e.code().is_transient() => {
                    if !self.pause().await {
                        return None;
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Offers a batch: checked, cut to `max_rows`, charged to the memory budget until the next one.
    fn hand(&mut self, mut batch: RecordBatch) -> Hand {
        if batch.num_rows() == 0 {
            return Hand::Empty;
        }
        if batch.schema().fields() != self.schema.fields() {
            return Hand::Failed(EngineError::Conflict(
                "the stream's table changed its columns; follow it again from the last cursor".into(),
            ));
        }
        if let Some(max) = self.until.max_rows {
            let room = usize::try_from(max - self.handed).unwrap_or(usize::MAX);
            if batch.num_rows() > room {
                batch = batch.slice(0, room);
            }
        }
        let Some(cursor) = last_cursor(&batch) else {
            return Hand::Failed(EngineError::Internal("a followed row without its cursor".into()));
        };
        let bytes = batch.get_array_memory_size();
        self.held = Charge::default();
        match self.core.budget.charge(bytes) {
            Ok(charge) => self.held = charge,
            Err(_) => return Hand::NoRoom,
        }
        self.last = cursor;
        self.handed += batch.num_rows() as u64;
        self.note.sent(batch.num_rows() as u64, bytes as u64, cursor, *self.hub.borrow());
        Hand::Given(batch, cursor)
    }

    /// Reads past the tail's end for every follower of the table: one at a time; a follower that finds the rows
    /// (or a read that found none since it woke) when its turn comes reads nothing.
    async fn read_tip(&mut self) -> Tip {
        let Some(feed) = &self.feed else { return Tip::Nothing };
        let woke = tokio::time::Instant::now();
        let Ok(_reading) = tokio::time::timeout(SLOW, feed.reading.lock()).await else {
            return Tip::Failed(EngineError::Busy(1));
        };
        if let Some(batches) = feed.rows_past(self.last) {
            return Tip::Rows(batches);
        }
        if feed.found_nothing(self.last, woke) {
            return Tip::Nothing;
        }
        let started = tokio::time::Instant::now();
        let (target, columns) = &self.read;
        let mut batches = match self.core.read_past(target, columns, self.last, !self.in_order).await {
            Ok((_, batches)) => batches,
            Err(e) => return Tip::Failed(e),
        };
        if self.in_order && !in_order_from(&batches, self.last) {
            // Rows out of position order (see `in_order`): read again, sorted.
            self.in_order = false;
            batches = match self.core.read_past(target, columns, self.last, true).await {
                Ok((_, batches)) => batches,
                Err(e) => return Tip::Failed(e),
            };
        }
        let Some(to) = batches.last().and_then(last_cursor) else {
            feed.nothing_past(self.last, started);
            return Tip::Nothing;
        };
        // Kept for the others when the budget has room (they read for themselves otherwise).
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if let Ok(charge) = self.core.budget.charge(bytes) {
            feed.keep(Segment { from: self.last, to, batches: batches.clone(), bytes, charge });
        }
        Tip::Rows(batches)
    }

    /// Whether a follower that asked to end once caught up has: it got rows, or waited its time for a first one.
    fn ended(&self) -> bool {
        self.deadline.is_some_and(|d| self.handed > 0 || tokio::time::Instant::now() >= d)
    }

    /// Waits for a commit on this host past the follower's cursor, at most [`POLL`] (other hosts' commits), or its
    /// deadline; `false` when the host stops.
    async fn wait_for_commit(&mut self) -> bool {
        self.held = Charge::default();
        let seen = *self.hub.borrow_and_update();
        self.note.latest(seen);
        if seen <= self.last {
            let deadline = if self.handed == 0 { self.deadline } else { None };
            tokio::select! {
                _ = self.hub.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = sleep_until(deadline) => {}
                _ = self.core.cancel.cancelled() => return false,
            }
        }
        true
    }

    /// A pause before trying again; `false` when the host stops.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => true,
            _ = self.core.cancel.cancelled() => false,
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

    fn cursors(values: Vec<Option<i64>>) -> RecordBatch {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            CURSOR_COLUMN,
            arrow::datatypes::DataType::Int64,
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[test]
    fn rows_in_table_order_are_taken_only_while_their_positions_grow() {
        assert!(follows_in_order(&cursors(vec![Some(5), Some(6), Some(9)]), 4));
        assert!(follows_in_order(&cursors(vec![]), 4));
        // Not past the last row taken, a position repeated or going back, a row without one.
        assert!(!follows_in_order(&cursors(vec![Some(4), Some(6)]), 4));
        assert!(!follows_in_order(&cursors(vec![Some(5), Some(5)]), 4));
        assert!(!follows_in_order(&cursors(vec![Some(5), Some(7), Some(6)]), 4));
        assert!(!follows_in_order(&cursors(vec![Some(5), None]), 4));
    }
}
