//! What landed, counted once and shown twice: `FROM arrowport_metrics()` and `GET /metrics` read the same
//! counters.
//!
//! One `prometheus::Registry` per host database holds every series; metric and label names are constants here.
//! Series are labelled `stream` and `protocol`. Cardinality is bounded: a stream gets a label of its own only once
//! it has committed (its table exists); failures of streams that never committed count under [`UNKNOWN_STREAM`],
//! and past [`MAX_STREAMS`] named streams everything new counts under [`OTHER_STREAMS`]. Only committed rows count
//! as rows; a rolled-back request counts as a failure and its received rows as rolled back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::engine::budget::Budget;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS: &str = "arrowport_requests_total";
pub const ROWS: &str = "arrowport_rows_total";
pub const BATCHES: &str = "arrowport_batches_total";
pub const WIRE_BYTES: &str = "arrowport_wire_bytes_total";
pub const DECODED_BYTES: &str = "arrowport_decoded_bytes_total";
pub const ROWS_ROLLED_BACK: &str = "arrowport_rows_rolled_back_total";
pub const REQUEST_SECONDS: &str = "arrowport_request_duration_seconds";
pub const WRITE_SECONDS: &str = "arrowport_write_duration_seconds";
pub const IN_FLIGHT: &str = "arrowport_requests_in_flight";
pub const UPTIME: &str = "arrowport_listener_uptime_seconds";
pub const BUDGET_USED: &str = "arrowport_memory_budget_used_bytes";
pub const BUDGET_LIMIT: &str = "arrowport_memory_budget_bytes";
pub const REPLAYS: &str = "arrowport_replays_total";
pub const COMMIT_RETRIES: &str = "arrowport_commit_retries_total";
pub const FOLLOWERS: &str = "arrowport_followers";
pub const FOLLOWED_ROWS: &str = "arrowport_followed_rows_total";
pub const FOLLOWED_BYTES: &str = "arrowport_followed_bytes_total";
pub const FOLLOWER_LAG: &str = "arrowport_follower_lag_rows";
pub const CHECKPOINTS: &str = "arrowport_checkpoints_total";
pub const CHECKPOINT_SECONDS: &str = "arrowport_checkpoint_seconds_total";
pub const WAL_BYTES: &str = "arrowport_wal_bytes";
pub const WAL_PEAK: &str = "arrowport_wal_peak_bytes";

pub const LABEL_STREAM: &str = "stream";
pub const LABEL_PROTOCOL: &str = "protocol";
pub const LABEL_OUTCOME: &str = "outcome";

/// Failures of streams that never committed.
pub const UNKNOWN_STREAM: &str = "_unknown";
/// New streams past the cap.
pub const OTHER_STREAMS: &str = "_other";
/// Most streams with series of their own.
pub const MAX_STREAMS: usize = 1000;

/// Latency buckets in seconds: 1 ms to 2 min.
const BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The protocols that count separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Flight,
    Rest,
    /// Flight SQL bulk ingest (ADBC).
    FlightSql,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Flight => "flight",
            Protocol::Rest => "rest",
            Protocol::FlightSql => "flightsql",
        }
    }
}

/// One finished request, as the ingest core saw it.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub stream: &'a str,
    /// A stream the operator defined (`arrowport_create_stream`) has series of its own from its first request,
    /// failed or not; others only once they commit (so a client cannot make series by failing with new names).
    pub defined: bool,
    pub protocol: Protocol,
    /// `Ok(write_seconds)` when committed, `Err(message)` when not.
    pub result: Result<f64, String>,
    pub rows: u64,
    pub batches: u64,
    pub wire_bytes: u64,
    pub decoded_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
struct Notes {
    last_commit: Option<SystemTime>,
    last_error: Option<(String, SystemTime)>,
}

/// Which streams have series of their own, and what SQL shows beyond the counters.
#[derive(Debug, Default)]
struct Known {
    /// Streams admitted to a label of their own (they committed once).
    named: HashSet<String>,
    notes: HashMap<(String, Protocol), Notes>,
}

impl Known {
    /// The label a request's series use (admitting a stream when it committed), noting its outcome.
    fn note(&mut self, stream: &str, defined: bool, protocol: Protocol, result: &Result<f64, String>) -> String {
        let label = if self.named.contains(stream) {
            stream
        } else if result.is_err() && !defined {
            UNKNOWN_STREAM
        } else if self.named.len() >= MAX_STREAMS {
            OTHER_STREAMS
        } else {
            self.named.insert(stream.to_string());
            stream
        };
        let notes = self.notes.entry((label.to_string(), protocol)).or_default();
        match result {
            Ok(_) => notes.last_commit = Some(SystemTime::now()),
            Err(message) => notes.last_error = Some((message.clone(), SystemTime::now())),
        }
        label.to_string()
    }
}

/// One row of `arrowport_metrics()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub stream: String,
    pub protocol: String,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub rows: u64,
    pub batches: u64,
    pub wire_bytes: u64,
    pub decoded_bytes: u64,
    pub rows_rolled_back: u64,
    /// Microseconds since the epoch.
    pub last_commit_us: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_us: Option<i64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub write_seconds: f64,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    rows: IntCounterVec,
    batches: IntCounterVec,
    wire: IntCounterVec,
    decoded: IntCounterVec,
    rolled_back: IntCounterVec,
    request_seconds: HistogramVec,
    write_seconds: HistogramVec,
    in_flight: IntGaugeVec,
    uptime: IntGauge,
    replays: IntCounterVec,
    commit_retries: IntCounterVec,
    /// Streams with series of their own, and notes per (stream, protocol) for SQL.
    known: Mutex<Known>,
    started: Mutex<Option<Instant>>,
    budget_used: IntGauge,
    budget_limit: IntGauge,
    /// The budget the gauges above read when the metrics are rendered (the running core's).
    budget: Mutex<Option<Arc<Budget>>>,
    followers_now: IntGauge,
    followed_rows: IntCounterVec,
    followed_bytes: IntCounterVec,
    follower_lag: IntGaugeVec,
    /// The followers connected now, by id.
    followers: Mutex<(u64, HashMap<u64, Follower>)>,
    checkpoints: IntCounterVec,
    checkpoint_seconds: prometheus::Counter,
    wal_bytes: IntGauge,
    wal_peak: IntGauge,
}

/// A follower as `arrowport_followers()` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Follower {
    pub stream: String,
    pub protocol: &'static str,
    /// The cursor of the last row handed over.
    pub cursor: i64,
    /// The newest position it knows the stream to have.
    pub latest: i64,
    pub rows: u64,
    pub bytes: u64,
    pub connected: SystemTime,
}

/// A follower's entry in the metrics, taken away when it is dropped (the follower hung up or the host stopped).
pub struct FollowerNote {
    metrics: Arc<Metrics>,
    id: u64,
}

impl FollowerNote {
    /// A batch handed over: its rows and bytes, the cursor after it, and the newest position known.
    pub fn sent(&self, rows: u64, bytes: u64, cursor: i64, latest: i64) {
        let mut f = self.metrics.followers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(me) = f.1.get_mut(&self.id) {
            me.rows += rows;
            me.bytes += bytes;
            me.cursor = cursor;
            me.latest = me.latest.max(latest).max(cursor);
            self.metrics.followed_rows.with_label_values(&[me.stream.as_str()]).inc_by(rows);
            self.metrics.followed_bytes.with_label_values(&[me.stream.as_str()]).inc_by(bytes);
        }
    }

    /// The newest position the follower knows the stream to have.
    pub fn latest(&self, latest: i64) {
        let mut f = self.metrics.followers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(me) = f.1.get_mut(&self.id) {
            me.latest = me.latest.max(latest);
        }
    }
}

impl Drop for FollowerNote {
    fn drop(&mut self) {
        let mut f = self.metrics.followers.lock().unwrap_or_else(|p| p.into_inner());
        f.1.remove(&self.id);
        self.metrics.followers_now.set(f.1.len() as i64);
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), &[LABEL_STREAM, LABEL_PROTOCOL])
            .expect("static metric definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let sp = [LABEL_STREAM, LABEL_PROTOCOL];
        let requests = counter(
            &registry,
            REQUESTS,
            "Requests finished, by outcome (ok = committed).",
            &[LABEL_STREAM, LABEL_PROTOCOL, LABEL_OUTCOME],
        );
        let rows = counter(&registry, ROWS, "Rows committed.", &sp);
        let batches = counter(&registry, BATCHES, "Record batches committed.", &sp);
        let wire = counter(&registry, WIRE_BYTES, "Request bytes on the wire, committed or not.", &sp);
        let decoded =
            counter(&registry, DECODED_BYTES, "Arrow bytes after decoding (and decompression), committed or not.", &sp);
        let rolled_back = counter(&registry, ROWS_ROLLED_BACK, "Rows received by a writer and rolled back.", &sp);
        let request_seconds = histogram(&registry, REQUEST_SECONDS, "Request duration, first byte to answer.");
        let write_seconds =
            histogram(&registry, WRITE_SECONDS, "Time spent writing into DuckDB, first batch to commit.");
        let in_flight =
            IntGaugeVec::new(Opts::new(IN_FLIGHT, "Requests being received or written."), &[LABEL_PROTOCOL])
                .expect("static metric definition");
        registry.register(Box::new(in_flight.clone())).expect("metric registered once");
        let uptime = IntGauge::new(UPTIME, "Seconds since the listeners started (0 when stopped).")
            .expect("static metric definition");
        registry.register(Box::new(uptime.clone())).expect("metric registered once");
        let budget_used = IntGauge::new(BUDGET_USED, "Bytes of client data held against the memory budget now (messages arriving and being decoded, batches queued).")
            .expect("static metric definition");
        registry.register(Box::new(budget_used.clone())).expect("metric registered once");
        let budget_limit = IntGauge::new(BUDGET_LIMIT, "The memory budget (memory_budget), 0 when stopped.")
            .expect("static metric definition");
        registry.register(Box::new(budget_limit.clone())).expect("metric registered once");
        let replays = counter(
            &registry,
            REPLAYS,
            "Requests answered from an earlier commit of their idempotency key (nothing written).",
            &[LABEL_PROTOCOL],
        );
        let commit_retries = counter(
            &registry,
            COMMIT_RETRIES,
            "Commits tried again after losing a race with another writer of a shared catalog (a DuckLake's).",
            &[LABEL_PROTOCOL],
        );
        let followers_now = IntGauge::new(FOLLOWERS, "Followers connected now.").expect("static metric definition");
        registry.register(Box::new(followers_now.clone())).expect("metric registered once");
        let followed_rows = counter(&registry, FOLLOWED_ROWS, "Rows handed to followers.", &[LABEL_STREAM]);
        let followed_bytes =
            counter(&registry, FOLLOWED_BYTES, "Arrow bytes of the batches handed to followers.", &[LABEL_STREAM]);
        let follower_lag = IntGaugeVec::new(
            Opts::new(FOLLOWER_LAG, "Rows the furthest-behind follower of a stream has yet to receive."),
            &[LABEL_STREAM],
        )
        .expect("static metric definition");
        registry.register(Box::new(follower_lag.clone())).expect("metric registered once");
        let checkpoints = counter(
            &registry,
            CHECKPOINTS,
            "CHECKPOINTs arrowport ran on the host's database files while listening, by outcome.",
            &[LABEL_OUTCOME],
        );
        let checkpoint_seconds =
            prometheus::Counter::new(CHECKPOINT_SECONDS, "Seconds spent in the CHECKPOINTs arrowport ran.")
                .expect("static metric definition");
        registry.register(Box::new(checkpoint_seconds.clone())).expect("metric registered once");
        let wal_bytes = IntGauge::new(
            WAL_BYTES,
            "Bytes of write-ahead log of the host's database files now (while arrowport manages checkpoints).",
        )
        .expect("static metric definition");
        registry.register(Box::new(wal_bytes.clone())).expect("metric registered once");
        let wal_peak = IntGauge::new(WAL_PEAK, "The largest write-ahead log seen since the host loaded arrowport.")
            .expect("static metric definition");
        registry.register(Box::new(wal_peak.clone())).expect("metric registered once");
        Metrics {
            registry,
            requests,
            rows,
            batches,
            wire,
            decoded,
            rolled_back,
            request_seconds,
            write_seconds,
            in_flight,
            uptime,
            replays,
            commit_retries,
            known: Mutex::new(Known::default()),
            started: Mutex::new(None),
            budget_used,
            budget_limit,
            budget: Mutex::new(None),
            followers_now,
            followed_rows,
            followed_bytes,
            follower_lag,
            followers: Mutex::new((0, HashMap::new())),
            checkpoints,
            checkpoint_seconds,
            wal_bytes,
            wal_peak,
        }
    }

    /// A CHECKPOINT arrowport ran, and how long it took.
    pub fn checkpointed(&self, ok: bool, seconds: f64) {
        self.checkpoints.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
        self.checkpoint_seconds.inc_by(seconds);
    }

    /// The write-ahead logs' size now.
    pub fn wal_bytes(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.wal_bytes.set(bytes);
        if bytes > self.wal_peak.get() {
            self.wal_peak.set(bytes);
        }
    }

    /// A follower of `stream` connected; its entry goes when the note is dropped.
    pub fn follower(self: &Arc<Self>, stream: &str, protocol: &'static str, cursor: i64) -> FollowerNote {
        let mut f = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        f.0 += 1;
        let id = f.0;
        let me = Follower {
            stream: stream.to_string(),
            protocol,
            cursor,
            latest: cursor,
            rows: 0,
            bytes: 0,
            connected: SystemTime::now(),
        };
        f.1.insert(id, me);
        self.followers_now.set(f.1.len() as i64);
        FollowerNote { metrics: Arc::clone(self), id }
    }

    /// The followers connected now, oldest first.
    pub fn followers(&self) -> Vec<Follower> {
        let f = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(u64, Follower)> = f.1.iter().map(|(id, row)| (*id, row.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, row)| row).collect()
    }

    /// The lag gauges from the followers connected now.
    fn refresh_follower_lag(&self) {
        self.follower_lag.reset();
        for f in self.followers() {
            let lag = self.follower_lag.with_label_values(&[f.stream.as_str()]);
            lag.set(lag.get().max(f.latest - f.cursor));
        }
    }

    /// Marks the listeners as started (`Some`) or stopped (`None`), for the uptime gauge.
    pub fn set_started(&self, at: Option<Instant>) {
        if let Ok(mut s) = self.started.lock() {
            *s = at;
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self, protocol: Protocol) -> InFlight {
        let gauge = self.in_flight.with_label_values(&[protocol.name()]);
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts a request answered from its idempotency key's earlier commit.
    pub fn replayed(&self, _stream: &str, protocol: Protocol) {
        self.replays.with_label_values(&[protocol.name()]).inc();
    }

    /// Counts the commits of a request that were tried again (see [`COMMIT_RETRIES`]).
    pub fn commit_retried(&self, protocol: Protocol, retries: u32) {
        if retries > 0 {
            self.commit_retries.with_label_values(&[protocol.name()]).inc_by(u64::from(retries));
        }
    }

    pub fn record(&self, o: &Outcome<'_>) {
        let committed = o.result.is_ok();
        let stream = match self.known.lock() {
            Ok(mut known) => known.note(o.stream, o.defined, o.protocol, &o.result),
            Err(_) => OTHER_STREAMS.to_string(),
        };
        let sp = [stream.as_str(), o.protocol.name()];
        let outcome = if committed { "ok" } else { "failed" };
        self.requests.with_label_values(&[stream.as_str(), o.protocol.name(), outcome]).inc();
        self.wire.with_label_values(&sp).inc_by(o.wire_bytes);
        self.decoded.with_label_values(&sp).inc_by(o.decoded_bytes);
        self.request_seconds.with_label_values(&sp).observe(o.seconds);
        match &o.result {
            Ok(write_seconds) => {
                self.rows.with_label_values(&sp).inc_by(o.rows);
                self.batches.with_label_values(&sp).inc_by(o.batches);
                self.write_seconds.with_label_values(&sp).observe(*write_seconds);
            }
            Err(_) => self.rolled_back.with_label_values(&sp).inc_by(o.rows),
        }
    }

    fn refresh_uptime(&self) {
        let secs = self.started.lock().ok().and_then(|s| s.map(|t| t.elapsed().as_secs() as i64)).unwrap_or(0);
        self.uptime.set(secs);
    }

    /// The budget the memory gauges show (`None` when stopped).
    pub fn watch_budget(&self, budget: Option<Arc<Budget>>) {
        if let Ok(mut b) = self.budget.lock() {
            *b = budget;
        }
    }

    fn refresh_budget(&self) {
        let (used, limit) = match self.budget.lock().ok().and_then(|b| b.clone()) {
            Some(b) => (b.in_use(), b.limit()),
            None => (0, 0),
        };
        self.budget_used.set(used as i64);
        self.budget_limit.set(limit as i64);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.refresh_uptime();
        self.refresh_budget();
        self.refresh_follower_lag();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// One row per (stream, protocol) that has series, sorted.
    pub fn rows(&self) -> Vec<Row> {
        let notes: Vec<((String, Protocol), Notes)> = self
            .known
            .lock()
            .map(|k| k.notes.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut rows: Vec<Row> = notes
            .into_iter()
            .map(|((stream, protocol), notes)| {
                let sp = [stream.as_str(), protocol.name()];
                let latency = self.request_seconds.with_label_values(&sp);
                let q = |p: f64| quantile(&latency, p).map(|s| s * 1000.0);
                Row {
                    requests_ok: self.requests.with_label_values(&[stream.as_str(), protocol.name(), "ok"]).get(),
                    requests_failed: self
                        .requests
                        .with_label_values(&[stream.as_str(), protocol.name(), "failed"])
                        .get(),
                    rows: self.rows.with_label_values(&sp).get(),
                    batches: self.batches.with_label_values(&sp).get(),
                    wire_bytes: self.wire.with_label_values(&sp).get(),
                    decoded_bytes: self.decoded.with_label_values(&sp).get(),
                    rows_rolled_back: self.rolled_back.with_label_values(&sp).get(),
                    last_commit_us: notes.last_commit.map(micros),
                    last_error: notes.last_error.as_ref().map(|(m, _)| m.clone()),
                    last_error_us: notes.last_error.as_ref().map(|(_, t)| micros(*t)),
                    latency_p50_ms: q(0.50),
                    latency_p95_ms: q(0.95),
                    latency_p99_ms: q(0.99),
                    write_seconds: self.write_seconds.with_label_values(&sp).get_sample_sum(),
                    protocol: protocol.name().to_string(),
                    stream,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.stream, &a.protocol).cmp(&(&b.stream, &b.protocol)));
        rows
    }
}

/// The p-quantile of a histogram, interpolated inside its bucket as Prometheus' `histogram_quantile` does.
fn quantile(h: &prometheus::Histogram, p: f64) -> Option<f64> {
    let metric = prometheus::core::Collector::collect(h);
    let m = metric.first()?.get_metric().first()?.get_histogram().clone();
    let total = m.get_sample_count();
    if total == 0 {
        return None;
    }
    let rank = p * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for bucket in m.get_bucket() {
        let count = bucket.cumulative_count();
        let upper = bucket.upper_bound();
        if count as f64 >= rank {
            let in_bucket = (count - below) as f64;
            if in_bucket == 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / in_bucket);
        }
        lower = upper;
        below = count;
    }
    Some(lower)
}

/// Decrements the in-flight gauge on drop.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(stream: &str, ok: bool, rows: u64, seconds: f64) -> Outcome<'_> {
        Outcome {
            stream,
            defined: false,
            protocol: Protocol::Flight,
            result: if ok { Ok(seconds / 2.0) } else { Err("boom".into()) },
            rows,
            batches: 1,
            wire_bytes: 100,
            decoded_bytes: 400,
            seconds,
        }
    }

    #[test]
    fn only_committed_rows_count_and_failures_of_unknown_streams_share_a_label() {
        let m = Metrics::new();
        m.record(&outcome("events", true, 10, 0.004));
        m.record(&outcome("events", false, 7, 0.002));
        m.record(&outcome("typo1", false, 3, 0.001));
        m.record(&outcome("typo2", false, 3, 0.001));
        let rows = m.rows();
        let names: Vec<_> = rows.iter().map(|r| r.stream.as_str()).collect();
        assert_eq!(names, vec!["_unknown", "events"]);
        let events = &rows[1];
        assert_eq!((events.requests_ok, events.requests_failed, events.rows, events.rows_rolled_back), (1, 1, 10, 7));
        assert_eq!((events.wire_bytes, events.decoded_bytes), (200, 800));
        assert_eq!(events.last_error.as_deref(), Some("boom"));
        assert!(events.last_commit_us.is_some());
        assert_eq!(rows[0].requests_failed, 2);
        let text = m.render();
        assert!(text.contains("arrowport_rows_total{protocol=\"flight\",stream=\"events\"} 10"), "{text}");
        assert!(!text.contains("typo1"));
        // A defined stream's failures are its own from the first.
        m.record(&Outcome { defined: true, ..outcome("orders", false, 2, 0.001) });
        assert_eq!(m.rows().iter().find(|r| r.stream == "orders").map(|r| r.requests_failed), Some(1));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let m = Metrics::new();
        for _ in 0..99 {
            m.record(&outcome("s", true, 1, 0.003));
        }
        m.record(&outcome("s", true, 1, 3.0));
        let row = &m.rows()[0];
        let p50 = row.latency_p50_ms.unwrap();
        assert!(p50 > 2.5 && p50 <= 5.0, "{p50}");
        let p99 = row.latency_p99_ms.unwrap();
        assert!(p99 <= 5.0, "{p99}");
    }

    #[test]
    fn in_flight_gauge_follows_guards() {
        let m = Metrics::new();
        let g = m.in_flight(Protocol::Rest);
        assert!(m.render().contains("arrowport_requests_in_flight{protocol=\"rest\"} 1"));
        drop(g);
        assert!(m.render().contains("arrowport_requests_in_flight{protocol=\"rest\"} 0"));
    }
}
