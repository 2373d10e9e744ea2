//! Checkpoints while arrowport listens: when and on which connection the host's database files are checkpointed.
//!
//! DuckDB checkpoints a database file on its own: the commit that finds the write-ahead log past
//! `checkpoint_threshold` (16 MiB by default) checkpoints before it returns, and while a checkpoint writes a
//! table, every other commit into that table waits. Under a steady stream of small requests that is one stall of
//! every request in flight every 16 MiB of log (several times a second at 50k 1,000-row requests a minute), the
//! whole p99 of small requests.
//!
//! While a listener runs (and `checkpoint_wal` is not 0) arrowport takes that over: it raises DuckDB's
//! `checkpoint_threshold` to twice `checkpoint_wal` (a backstop: DuckDB still checkpoints on its own past it), and
//! a thread of its own, on a connection of its own, watches each attached database file's log and runs
//! `CHECKPOINT` on it when
//! - the log has reached `checkpoint_wal` (the bound it keeps; default [`DEFAULT_WAL`]), or
//! - the log has reached the threshold the operator had set (what DuckDB would have done) and no request has been
//!   in flight for [`QUIET`]: idle moments keep the log as short as the operator asked.
//!
//! Fewer, larger checkpoints stall each request in flight once per checkpoint: the stalls are longer and rarer.
//! No commit of a client's request (nor of the operator's session) runs a checkpoint itself below the backstop.
//! When the last listener stops, `checkpoint_threshold` is put back to the operator's value, unless the operator
//! changed it meanwhile (then arrowport stops managing checkpoints at once, leaving the operator's value).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::duck::conn::RawConn;
use crate::engine::metrics::Metrics;
use crate::host::settings::parse_size;

/// The write-ahead log size at which arrowport checkpoints a busy database file, by default.
pub const DEFAULT_WAL: u64 = 64 << 20;

/// How long no request must have been in flight before a log past the operator's threshold is checkpointed.
pub const QUIET: Duration = Duration::from_millis(500);

/// How often the logs' sizes are looked at.
const TICK: Duration = Duration::from_millis(50);

/// How often the list of database files (and the setting) is read again.
const REFRESH: Duration = Duration::from_secs(2);

/// How often the logs are looked at and the list of files read again: [`TICK`] and [`REFRESH`]; in the tests'
/// build (cargo feature `test-hooks`) both every `ARROWPORT_TEST_CHECKPOINT_TICK_MS` milliseconds when the host's
/// environment sets it, so that an end-to-end test can have the thread inside DuckDB nearly all the time.
fn intervals() -> (Duration, Duration) {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("ARROWPORT_TEST_CHECKPOINT_TICK_MS").ok().and_then(|v| v.parse().ok()) {
        return (Duration::from_millis(ms), Duration::from_millis(ms));
    }
    (TICK, REFRESH)
}

/// How long a file whose checkpoint failed (a transaction of the operator's in the way, say) rests before the next try.
const AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How long `stop` waits for a checkpoint in progress before leaving the thread to finish it alone.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// When a database file is due for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    /// `checkpoint_wal`: the log is checkpointed when it reaches this size, busy or not.
    pub limit: u64,
    /// The operator's `checkpoint_threshold`: reached, the log is checkpointed at the next quiet moment.
    pub quiet: u64,
}

impl Due {
    pub fn now(&self, wal: u64, quiet_for: Duration) -> bool {
        wal > 0 && (wal >= self.limit || (wal >= self.quiet && quiet_for >= QUIET))
    }
}

/// The checkpointer of one host database: its connection while idle, and the running thread.
pub struct Checkpoints {
    /// Our connection, here while no thread holds it (a thread still finishing a checkpoint after `stop` keeps it
    /// until it is done, and puts it back).
    conn: Arc<Mutex<Option<RawConn>>>,
    running: Mutex<Option<Running>>,
}

struct Running {
    /// `checkpoint_wal` as the listen that started the listeners gave it.
    asked: u64,
    /// The thread and its stop signal (`None` when DuckDB keeps its own checkpoints).
    thread: Option<(Stop, std::thread::JoinHandle<()>)>,
}

/// The thread's stop signal and its condition variable: `Some(restore)` once it is to end, and whether it may
/// run SQL on its way out (to put the operator's threshold back).
type Stop = Arc<(Mutex<Option<bool>>, Condvar)>;

/// What the checkpointer's thread reads of the engine: whether requests are in flight now.
pub type Busy = Box<dyn Fn() -> bool + Send>;

impl Checkpoints {
    pub fn new(conn: RawConn) -> Checkpoints {
        Checkpoints { conn: Arc::new(Mutex::new(Some(conn))), running: Mutex::new(None) }
    }

    /// Starts managing checkpoints with logs kept under `limit` bytes (0: leave checkpoints to DuckDB). Does
    /// nothing if already running. An error when the setting cannot be read or changed.
    pub fn start(&self, limit: u64, busy: Busy, metrics: Arc<Metrics>) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.as_ref() {
            return match r.asked == limit {
                true => Ok(()),
                false => Err(format!(
                    "the host's listeners share one checkpoint_wal, already {} bytes; stop them all to change it",
                    r.asked
                )),
            };
        }
        if limit == 0 {
            *running = Some(Running { asked: limit, thread: None });
            return Ok(());
        }
        let Some(mut conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            // A thread from an earlier listen is still finishing a checkpoint: DuckDB keeps its own checkpoints.
            eprintln!(
                "arrowport: a checkpoint started before the last stop is still running; DuckDB checkpoints on its own until the next listen"
            );
            *running = Some(Running { asked: limit, thread: None });
            return Ok(());
        };
        let prepared = (|| {
            let text = conn
                .query_value("SELECT current_setting('checkpoint_threshold')")
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let operator = parse_size(&text).ok_or_else(|| format!("cannot read checkpoint_threshold {text:?}"))?;
            // An operator who set a larger threshold than ours wanted fewer checkpoints: theirs is the bound.
            let limit = limit.max(operator);
            let backstop = limit.saturating_mul(2);
            conn.execute(&format!("SET GLOBAL checkpoint_threshold = '{backstop} bytes'"))
                .map_err(|e| e.to_string())?;
            let ours = conn
                .query_value("SELECT current_setting('checkpoint_threshold')")
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            Ok::<_, String>((text, Due { limit, quiet: operator }, ours))
        })();
        let (operator_text, due, ours) = match prepared {
            Ok(p) => p,
            Err(e) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                return Err(format!(
                    "arrowport could not take over checkpoints (checkpoint_wal := 0 leaves them to DuckDB): {e}"
                ));
            }
        };
        let stop = Arc::new((Mutex::new(None), Condvar::new()));
        let worker = Worker {
            conn,
            slot: Arc::clone(&self.conn),
            stop: Arc::clone(&stop),
            due,
            busy,
            metrics,
            ours,
            operator_text,
        };
        let thread = std::thread::Builder::new()
            .name("arrowport-checkpoints".into())
            .spawn(move || {
                let _ = crate::panic::contain("checkpointing", move || worker.run());
            })
            .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
        *running = Some(Running { asked: limit, thread: Some((stop, thread)) });
        Ok(())
    }

    /// Stops the thread (waiting for a checkpoint in progress, up to [`STOP_WAIT`]); with `restore`, it puts the
    /// operator's threshold back before it ends (not at process exit, where no SQL may run).
    pub fn stop(&self, restore: bool) {
        let Some(Running { thread: Some((stop, thread)), .. }) =
            self.running.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        let (flag, wake) = &*stop;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(restore);
        wake.notify_all();
        let deadline = Instant::now() + STOP_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            eprintln!("arrowport: a checkpoint is still running; it finishes on its own");
        }
    }
}

struct Worker {
    conn: RawConn,
    slot: Arc<Mutex<Option<RawConn>>>,
    stop: Stop,
    due: Due,
    busy: Busy,
    metrics: Arc<Metrics>,
    /// `checkpoint_threshold` as we set it, and as the operator had it.
    ours: String,
    operator_text: String,
}

/// A database file arrowport checkpoints: its name in SQL and its log's path.
struct File {
    name: String,
    wal: std::path::PathBuf,
}

impl Worker {
    fn run(mut self) {
        let mut files: Vec<File> = Vec::new();
        let mut refreshed: Option<Instant> = None;
        let mut last_busy = Instant::now();
        let mut managing = true;
        let mut failed: std::collections::HashMap<String, Instant> = Default::default();
        let (tick, refresh) = intervals();
        while !self.stopping(tick) {
            if (self.busy)() {
                last_busy = Instant::now();
            }
            if refreshed.is_none_or(|t| t.elapsed() >= refresh) {
                refreshed = Some(Instant::now());
                match self.conn.query_value("SELECT current_setting('checkpoint_threshold')") {
                    Ok(Some(now)) if now != self.ours => {
                        // The operator changed it: theirs from now on.
                        eprintln!(
                            "arrowport: checkpoint_threshold was changed to {now}; arrowport leaves checkpoints to DuckDB until the next listen"
                        );
                        managing = false;
                        break;
                    }
                    _ => {}
                }
                files = self.files();
            }
            let mut total = 0;
            for file in &files {
                let wal = std::fs::metadata(&file.wal).map(|m| m.len()).unwrap_or(0);
                total += wal;
                let resting = failed.get(&file.name).is_some_and(|t| t.elapsed() < AFTER_FAILURE);
                if !resting && self.due.now(wal, last_busy.elapsed()) {
                    let started = Instant::now();
                    let outcome = self.conn.execute(&format!("CHECKPOINT {}", quoted(&file.name)));
                    match &outcome {
                        Ok(_) => {
                            failed.remove(&file.name);
                        }
                        Err(e) => {
                            // Said once per run of failures; tried again after a rest.
                            if failed.insert(file.name.clone(), Instant::now()).is_none() {
                                eprintln!(
                                    "arrowport: checkpoint of {} failed (tried again every {} s): {e}",
                                    file.name,
                                    AFTER_FAILURE.as_secs()
                                );
                            }
                        }
                    }
                    self.metrics.checkpointed(outcome.is_ok(), started.elapsed().as_secs_f64());
                }
            }
            self.metrics.wal_bytes(total);
        }
        let restore = self.stop.0.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(true);
        if managing && restore {
            let now = self.conn.query_value("SELECT current_setting('checkpoint_threshold')");
            if matches!(now, Ok(Some(ref v)) if *v == self.ours)
                && let Err(e) = self.conn.execute_past_interrupts(&restoring(&self.operator_text))
            {
                eprintln!("arrowport: could not put checkpoint_threshold back to {}: {e}", self.operator_text);
            }
        }
        self.metrics.wal_bytes(0);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.conn);
    }

    /// Waits up to `d`; whether to stop.
    fn stopping(&self, d: Duration) -> bool {
        let (flag, wake) = &*self.stop;
        let stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
        if stopped.is_some() {
            return true;
        }
        let (stopped, _) = wake.wait_timeout(stopped, d).unwrap_or_else(|p| p.into_inner());
        stopped.is_some()
    }

    /// The attached database files that can be written (DuckDB's own format, on disk).
    fn files(&mut self) -> Vec<File> {
        let rows = self
            .conn
            .query(
                "SELECT database_name, path FROM duckdb_databases() \
                 WHERE type = 'duckdb' AND path IS NOT NULL AND NOT readonly AND NOT internal",
            )
            .unwrap_or_default();
        rows.into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                let (name, path) = (r.next().flatten()?, r.next().flatten()?);
                Some(File { name, wal: format!("{path}.wal").into() })
            })
            .collect()
    }
}

/// The statement that puts the operator's threshold back, as DuckDB showed it. DuckDB shows sizes cut to one
/// decimal (1 GB as `953.6 MiB`), and the exact bytes cannot be read: the default comes back exactly (`RESET`),
/// any other value as the middle of what its text covers, which DuckDB shows as the same text.
fn restoring(shown: &str) -> String {
    if shown == DUCKDB_DEFAULT_SHOWN {
        return "RESET GLOBAL checkpoint_threshold".into();
    }
    let t = shown.trim();
    let value = match t.split_once(' ') {
        // One more digit, 5: half of the last shown digit's step.
        Some((number, unit)) if number.contains('.') && unit.ends_with('B') => format!("{number}5 {unit}"),
        _ => t.to_string(),
    };
    format!("SET GLOBAL checkpoint_threshold = '{value}'")
}

/// How DuckDB shows its default `checkpoint_threshold` (16 MiB).
const DUCKDB_DEFAULT_SHOWN: &str = "16.0 MiB";

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_logs_wait_for_the_limit_and_quiet_ones_for_the_operators_threshold() {
        let due = Due { limit: 128 << 20, quiet: 16 << 20 };
        let busy = Duration::ZERO;
        let quiet = QUIET;
        assert!(!due.now(0, quiet), "an empty log is never checkpointed");
        assert!(!due.now(15 << 20, quiet));
        assert!(due.now(16 << 20, quiet), "past the operator's threshold at a quiet moment");
        assert!(!due.now(100 << 20, busy), "while requests are in flight only the limit counts");
        assert!(!due.now(100 << 20, QUIET - Duration::from_millis(1)));
        assert!(due.now(128 << 20, busy));
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(restoring("16.0 MiB"), "RESET GLOBAL checkpoint_threshold");
        assert_eq!(restoring("953.6 MiB"), "SET GLOBAL checkpoint_threshold = '953.65 MiB'");
        assert_eq!(restoring("1000 bytes"), "SET GLOBAL checkpoint_threshold = '1000 bytes'");
    }
}
