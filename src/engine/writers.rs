//! The writer pool: a fixed set of threads, each owning one [`Session`] (one DuckDB connection), and the group
//! committer, a reserved writer that lands small requests many to a transaction.
//!
//! A request holds a permit for the whole time a writer works for it, so a submitted job always finds a free
//! thread. Every job runs behind the panic boundary: a panic fails that job, its transaction is rolled back by
//! its guard, and the thread goes on serving.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::datatypes::{Schema, SchemaRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::catalog::registry::{Mapping, Target};
use crate::engine::budget::Charge;
use crate::engine::error::EngineError;
use crate::engine::policy::Access;
use crate::engine::session::{
    BatchRx, Buffered, Catalog, Described, Interrupter, KeyLookup, Maintained, Param, QueryOut, RequestKey, Session,
    Statement, Written,
};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

pub(crate) enum Work {
    Write {
        mapping: Mapping,
        schema: SchemaRef,
        input: BatchRx,
        key: Option<RequestKey>,
        reply: Reply<Written>,
    },
    LookupKey {
        catalog: Option<String>,
        key: String,
        window: Duration,
        reply: Reply<KeyLookup>,
    },
    Describe {
        target: Target,
        reply: Reply<Option<Schema>>,
    },
    List {
        reply: Reply<Vec<(String, Schema)>>,
    },
    DescribeSql {
        sql: String,
        params: Option<Vec<Param>>,
        access: Access,
        reply: Reply<Described>,
    },
    Query {
        statement: Statement,
        access: Access,
        out: QueryOut,
        reply: Reply<()>,
    },
    Export {
        sql: String,
        out: QueryOut,
        reply: Reply<()>,
    },
    FollowRead {
        target: crate::catalog::registry::Target,
        columns: String,
        after: i64,
        limit: usize,
        ordered: bool,
        reply: Reply<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)>,
    },
    Update {
        statement: Statement,
        access: Access,
        reply: Reply<u64>,
    },
    Catalog {
        with_schemas: bool,
        reply: Reply<Catalog>,
    },
    Maintain {
        catalog: String,
        older_than: Duration,
        reply: Reply<Vec<Maintained>>,
    },
}

pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) _permit: OwnedSemaphorePermit,
    /// A time limit on the job: the thread that runs it arms this with its connection's interrupt.
    pub(crate) watch: Option<Arc<Watch>>,
}

/// A job's limits as its writer, its timer and the memory guard share them: the writer arms it with its
/// connection's interrupt while it runs the job; the timer (or the guard) fires it with the reason; a fired
/// watch interrupts at once when armed late, and a disarmed one does nothing. The job's error is then the reason.
#[derive(Default)]
pub(crate) struct Watch {
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    interrupt: Option<Interrupter>,
    fired: Option<EngineError>,
    done: bool,
}

impl Watch {
    fn arm(&self, interrupt: Option<Interrupter>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.fired.is_some()
            && let Some(i) = &interrupt
        {
            i();
        }
        s.interrupt = interrupt;
    }

    fn disarm(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.interrupt = None;
        s.done = true;
    }

    /// A limit passed (`why`): interrupts the job if it is running. Returns whether it was still running.
    pub(crate) fn fire(&self, why: EngineError) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.done {
            return false;
        }
        s.fired.get_or_insert(why);
        if let Some(i) = &s.interrupt {
            i();
        }
        true
    }

    /// Whether the job has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).done
    }

    /// The job's outcome, its failure told by why the watch fired (the interrupt caused it).
    pub(crate) fn explain<T>(&self, out: Result<T, EngineError>) -> Result<T, EngineError> {
        match (out, &self.state.lock().unwrap_or_else(|p| p.into_inner()).fired) {
            (Err(_), Some(why)) => Err(why.clone()),
            (out, _) => out,
        }
    }
}

/// A job's outcome, explained by its watch if it has one.
fn explained<T>(watch: &Option<Arc<Watch>>, out: Result<T, EngineError>) -> Result<T, EngineError> {
    match watch {
        Some(w) => w.explain(out),
        None => out,
    }
}

/// How a pool's threads are made.
pub struct Shape {
    /// Thread names: `<name>-<i>`.
    pub name: &'static str,
    /// Each thread's stack.
    pub stack: usize,
    /// Whether the pool's last connection(s) commit groups of small requests.
    pub group: bool,
}

/// The ingest writers.
pub const INGEST: Shape = Shape { name: "arrowport-writer", stack: 2 << 20, group: true };

/// Statements sent over the network. DuckDB's parser, binder and planner recurse as deeply as a statement
/// nests, and DuckDB's depth guard is sized for the 8 MiB stack of a main thread: these threads have twice that.
pub const STATEMENTS: Shape = Shape { name: "arrowport-sql", stack: 16 << 20, group: false };

/// A small request waiting for the group committer.
pub(crate) struct GroupJob {
    item: Buffered,
    reply: Reply<Written>,
    /// The request's batches' charges on the memory budget, given back when its group is done.
    _charges: Vec<Charge>,
}

/// Writers that commit groups (when the pool has four connections or more). Measured on 2 cores, 8 clients of
/// 1,000-row DoPuts: one committer 41-44k requests/min, two 42-46k (the committer is DuckDB's own work, and the
/// clients share the cores); one keeps more writers for large requests.
const GROUP_COMMITTERS: usize = 1;

/// The requests waiting for a group committer (at least one, blocking for it), and those that arrive within the
/// first one's `group_window` after it; `None` once the queue is closed.
fn take_group(rx: &Mutex<std::sync::mpsc::Receiver<GroupJob>>) -> Option<Vec<GroupJob>> {
    let rx = rx.lock().ok()?;
    let first = rx.recv().ok()?;
    let until = Instant::now() + first.item.group_window;
    let mut jobs = vec![first];
    while jobs.len() < MAX_GROUP {
        let left = until.saturating_duration_since(Instant::now());
        let next = if left.is_zero() { rx.try_recv().ok() } else { rx.recv_timeout(left).ok() };
        match next {
            Some(j) => jobs.push(j),
            None => break,
        }
    }
    Some(jobs)
}

/// One result per item of a group written behind the panic boundary.
fn land_group<S: Session>(sink: &mut S, items: &[Buffered]) -> Vec<Result<Written, EngineError>> {
    match crate::panic::contain("committing a group", || sink.write_group(items)) {
        Ok(results) if results.len() == items.len() => results,
        Ok(_) => items.iter().map(|_| Err(EngineError::Internal("the group committer lost a result".into()))).collect(),
        Err(p) => items.iter().map(|_| Err(p.clone().into())).collect(),
    }
}

/// Lands one group and answers each request in it.
fn commit_group<S: Session>(sink: &mut S, jobs: Vec<GroupJob>) {
    let items: Vec<Buffered> = jobs.iter().map(|j| j.item.clone()).collect();
    let mut results = land_group(sink, &items);
    // A commit that lost a race with another writer of a shared catalog (a DuckLake's) wrote nothing: the
    // buffered requests are committed again, with a short growing pause, up to their retry limit.
    let limit = items.iter().map(|i| i.commit_retries).max().unwrap_or(0);
    let mut retries = 0;
    while retries < limit {
        let again: Vec<usize> = (0..items.len())
            .filter(|&i| {
                items[i].commit_retries > retries && results[i].as_ref().is_err_and(EngineError::is_commit_conflict)
            })
            .collect();
        if again.is_empty() {
            break;
        }
        retries += 1;
        std::thread::sleep(commit_backoff(retries, again.len()));
        let subset: Vec<Buffered> = again.iter().map(|&i| items[i].clone()).collect();
        for (result, &i) in land_group(sink, &subset).into_iter().zip(&again) {
            results[i] = result.map(|mut w| {
                w.retries = retries;
                w
            });
        }
    }
    for (job, result) in jobs.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
}

/// The pause before the `n`th retry of a lost commit race: 20 ms doubling, spread by a pseudo-random part so that
/// the hosts that collided do not collide again.
fn commit_backoff(n: u32, salt: usize) -> Duration {
    let base = 20u64 << n.min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_millis(base + (nanos ^ (salt as u64 * 7919)) % base)
}

/// Requests one group commit takes at most.
const MAX_GROUP: usize = 128;

/// Runs one job of a writer thread behind the panic boundary.
fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    crate::panic::contain("writing", f).unwrap_or_else(|p| Err(p.into()))
}

/// What a writer thread is doing, for [`Writers::interrupt`].
const IDLE: u8 = 0;
const WRITING: u8 = 1;
const STATEMENT: u8 = 2;

/// One writer thread as the pool watches it: what it is doing and how to interrupt it.
struct Slot {
    busy: Arc<AtomicU8>,
    interrupt: Option<Interrupter>,
}

impl Slot {
    fn of<S: Session>(sink: &S) -> Slot {
        Slot { busy: Arc::new(AtomicU8::new(IDLE)), interrupt: sink.interrupter() }
    }
}

/// Marks a writer busy with one job while it lives.
struct Busy<'a>(&'a AtomicU8);

impl<'a> Busy<'a> {
    fn with(flag: &'a AtomicU8, what: u8) -> Busy<'a> {
        flag.store(what, Ordering::SeqCst);
        Busy(flag)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(IDLE, Ordering::SeqCst);
    }
}

/// A fixed set of writer threads, each owning one session (one DuckDB connection). A request holds a permit for
/// the whole time a writer works for it, so a submitted job always finds a free thread.
pub struct Writers<S: Session> {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    pub(crate) permits: Arc<Semaphore>,
    threads: Mutex<Vec<JoinHandle<S>>>,
    pub(crate) size: usize,
    /// The group committer: one writer of the pool that lands small requests, as many per transaction as have
    /// arrived while it committed the last group (so N waiting requests cost one commit, not N).
    group: Mutex<Option<std::sync::mpsc::Sender<GroupJob>>>,
    group_threads: Mutex<Vec<JoinHandle<S>>>,
    /// Every thread's state, writers and committers alike.
    slots: Vec<Slot>,
    /// The pool's thread name, for messages.
    name: &'static str,
    /// Threads that have ended, counted as they end (writers and committers alike).
    exits: Arc<Exits>,
}

/// How many of a pool's threads have ended; each thread's [`ExitSignal`] counts it when the thread ends, panic
/// or not, and wakes whoever waits in [`Writers::stop`].
#[derive(Default)]
struct Exits {
    /// By thread, in the order `stop` lists them (writers, then committers).
    ended: Mutex<Vec<bool>>,
    changed: std::sync::Condvar,
}

/// Marks its thread (by index) as ended when dropped.
struct ExitSignal(Arc<Exits>, usize);

impl ExitSignal {
    fn new(exits: &Arc<Exits>, index: usize) -> ExitSignal {
        let mut ended = exits.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() <= index {
            ended.resize(index + 1, false);
        }
        ExitSignal(Arc::clone(exits), index)
    }
}

impl Drop for ExitSignal {
    fn drop(&mut self) {
        if let Some(e) = self.0.ended.lock().unwrap_or_else(|p| p.into_inner()).get_mut(self.1) {
            *e = true;
        }
        self.0.changed.notify_all();
    }
}

/// While `stop` waits, running statements are interrupted again this often: a statement a thread had taken from
/// the queue but not started when the first interrupt went out would not see it.
const REINTERRUPT: Duration = Duration::from_millis(100);

impl<S: Session> Writers<S> {
    pub fn start(sinks: Vec<S>) -> std::io::Result<Writers<S>> {
        Writers::start_shaped(sinks, &INGEST)
    }

    pub fn start_shaped(mut sinks: Vec<S>, shape: &Shape) -> std::io::Result<Writers<S>> {
        // The last connection(s) of the pool commit groups of small requests.
        let committers = match sinks.len() {
            _ if !shape.group => 0,
            0 | 1 => 0,
            2 | 3 => 1,
            _ => GROUP_COMMITTERS,
        };
        let mut slots: Vec<Slot> = sinks.iter().map(Slot::of).collect();
        let exits = Arc::new(Exits::default());
        let group_sinks = sinks.split_off(sinks.len() - committers);
        let group_busy: Vec<Arc<AtomicU8>> = slots[sinks.len()..].iter().map(|s| Arc::clone(&s.busy)).collect();
        let (group, group_threads) = if group_sinks.is_empty() {
            (None, Vec::new())
        } else {
            let (tx, handles) = Self::start_group(group_sinks, group_busy, &exits, sinks.len())?;
            (Some(tx), handles)
        };
        let size = sinks.len();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(size);
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let busy = Arc::clone(&slots[i].busy);
            let interrupt = slots[i].interrupt.clone();
            let exit = ExitSignal::new(&exits, i);
            let handle = std::thread::Builder::new()
                .name(format!("{}-{i}", shape.name))
                .stack_size(shape.stack)
                .spawn(move || {
                    let _exit = exit;
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        let kind = if matches!(
                            job.work,
                            Work::Write { .. } | Work::Export { .. } | Work::FollowRead { .. } | Work::Maintain { .. }
                        ) {
                            WRITING
                        } else {
                            STATEMENT
                        };
                        let _busy = Busy::with(&busy, kind);
                        if let Some(w) = &job.watch {
                            w.arm(interrupt.clone());
                        }
                        let watch = job.watch;
                        match job.work {
                            Work::Write { mapping, schema, input, key, reply } => {
                                let _ = reply.send(explained(
                                    &watch,
                                    guarded(|| sink.write(&mapping, schema, input, key.as_ref())),
                                ));
                            }
                            Work::LookupKey { catalog, key, window, reply } => {
                                let _ = reply.send(explained(
                                    &watch,
                                    guarded(|| sink.lookup_key(catalog.as_deref(), &key, window)),
                                ));
                            }
                            Work::Describe { target, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.table_schema(&target))));
                            }
                            Work::List { reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.list_tables())));
                            }
                            Work::DescribeSql { sql, params, access, reply } => {
                                let _ = reply.send(explained(
                                    &watch,
                                    guarded(|| sink.describe_sql(&sql, params.as_deref(), access)),
                                ));
                            }
                            Work::Query { statement, access, out, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.query(&statement, access, &out))));
                            }
                            Work::Export { sql, out, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.export(&sql, &out))));
                            }
                            Work::Update { statement, access, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.update(&statement, access))));
                            }
                            Work::FollowRead { target, columns, after, limit, ordered, reply } => {
                                let _ = reply.send(explained(
                                    &watch,
                                    guarded(|| sink.follow_read(&target, &columns, after, limit, ordered)),
                                ));
                            }
                            Work::Maintain { catalog, older_than, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.maintain(&catalog, older_than))));
                            }
                            Work::Catalog { with_schemas, reply } => {
                                let _ = reply.send(explained(&watch, guarded(|| sink.catalog(with_schemas))));
                            }
                        }
                        if let Some(w) = watch {
                            w.disarm();
                        }
                    }
                    sink
                })?;
            threads.push(handle);
        }
        Ok(Writers {
            jobs: Mutex::new(Some(tx)),
            permits: Arc::new(Semaphore::new(size)),
            threads: Mutex::new(threads),
            size,
            group: Mutex::new(group),
            group_threads: Mutex::new(group_threads),
            slots: std::mem::take(&mut slots),
            name: shape.name,
            exits,
        })
    }

    fn start_group(
        sinks: Vec<S>,
        busy: Vec<Arc<AtomicU8>>,
        exits: &Arc<Exits>,
        first: usize,
    ) -> std::io::Result<(std::sync::mpsc::Sender<GroupJob>, Vec<JoinHandle<S>>)> {
        let (tx, rx) = std::sync::mpsc::channel::<GroupJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(sinks.len());
        for (i, (mut sink, busy)) in sinks.into_iter().zip(busy).enumerate() {
            let rx = Arc::clone(&rx);
            let exit = ExitSignal::new(exits, first + i);
            let handle = std::thread::Builder::new().name(format!("arrowport-commit-{i}")).spawn(move || {
                let _exit = exit;
                // Each turn takes every request waiting now; one committer takes while the other may commit.
                while let Some(jobs) = take_group(&rx) {
                    let _busy = Busy::with(&busy, WRITING);
                    commit_group(&mut sink, jobs);
                }
                sink
            })?;
            handles.push(handle);
        }
        Ok((tx, handles))
    }

    /// Queues a small request for the group committer; `Err(item)` when there is none.
    pub(crate) fn submit_group(
        &self,
        item: Buffered,
        reply: Reply<Written>,
        charges: Vec<Charge>,
    ) -> Result<(), EngineError> {
        let group = self.group.lock().map_err(|_| EngineError::Internal("group queue poisoned".into()))?;
        match group.as_ref() {
            Some(tx) => tx.send(GroupJob { item, reply, _charges: charges }).map_err(|_| EngineError::Stopping),
            None => Err(EngineError::Stopping),
        }
    }

    pub(crate) fn has_group(&self) -> bool {
        self.group.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Interrupts the statements writers are running: only SQL statements sent over the network
    /// (`statements_only`), or every job, ingest writes included (their requests roll back).
    pub fn interrupt(&self, statements_only: bool) -> usize {
        let mut n = 0;
        for slot in &self.slots {
            let busy = slot.busy.load(Ordering::SeqCst);
            if (busy == STATEMENT || (!statements_only && busy == WRITING))
                && let Some(interrupt) = &slot.interrupt
            {
                interrupt();
                n += 1;
            }
        }
        n
    }

    /// Stops taking jobs and waits for the running ones within `limit`, interrupting whatever still runs; joins
    /// the threads that ended and gives their sinks back. A thread still busy at the limit (a statement DuckDB
    /// does not interrupt) is left to finish on its own, with its session: the pool is smaller by one, and the
    /// caller is never held longer than `limit`.
    pub fn stop(&self, limit: Duration) -> Vec<S> {
        self.permits.close();
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut group) = self.group.lock() {
            group.take();
        }
        let mut threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        threads.extend(self.group_threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default());
        // Woken as threads end; a thread that has not ended within REINTERRUPT has its statement interrupted again.
        let deadline = Instant::now() + limit;
        let mut ended = self.exits.ended.lock().unwrap_or_else(|p| p.into_inner());
        while ended.iter().any(|e| !e) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.interrupt(false);
            ended = self.exits.changed.wait_timeout(ended, left.min(REINTERRUPT)).unwrap_or_else(|p| p.into_inner()).0;
        }
        // A thread that said it ended is returning its session: joined (at once), never left behind.
        let ended = std::mem::take(&mut *ended);
        let (done, stuck): (Vec<_>, Vec<_>) = threads
            .into_iter()
            .enumerate()
            .partition(|(i, t)| t.is_finished() || ended.get(*i).copied().unwrap_or(false));
        let (done, stuck): (Vec<_>, Vec<_>) =
            (done.into_iter().map(|(_, t)| t).collect(), stuck.into_iter().map(|(_, t)| t).collect());
        if !stuck.is_empty() {
            eprintln!(
                "arrowport: {} thread(s) of {} still busy after {limit:?}; left to finish on their own",
                stuck.len(),
                self.name
            );
        }
        done.into_iter().filter_map(|t| t.join().ok()).collect()
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), EngineError> {
        let jobs = self.jobs.lock().map_err(|_| EngineError::Internal("writer queue poisoned".into()))?;
        match jobs.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| EngineError::Stopping),
            None => Err(EngineError::Stopping),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::session::BatchRx;
    use arrow::datatypes::Schema;

    /// Fails the first `conflicts` group commits with DuckLake's lost-race error; records every commit's size.
    struct Racing {
        conflicts: usize,
        commits: Vec<usize>,
    }

    impl Session for Racing {
        fn write(
            &mut self,
            _: &Mapping,
            _: SchemaRef,
            _: BatchRx,
            _: Option<&RequestKey>,
        ) -> Result<Written, EngineError> {
            unreachable!("only groups here")
        }
        fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, EngineError>> {
            self.commits.push(items.len());
            if self.conflicts > 0 {
                self.conflicts -= 1;
                let e = EngineError::Db(crate::duck::DbError::from_text(
                    "TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction.\nTransaction conflict",
                ));
                return items.iter().map(|_| Err(e.clone())).collect();
            }
            items.iter().map(|i| Ok(Written { rows: i.rows, write_seconds: 0.0, ..Default::default() })).collect()
        }
        fn table_schema(&mut self, _: &Target) -> Result<Option<Schema>, EngineError> {
            Ok(None)
        }
        fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, EngineError> {
            Ok(vec![])
        }
    }

    fn jobs(n: usize, retries: u32) -> (Vec<GroupJob>, Vec<oneshot::Receiver<Result<Written, EngineError>>>) {
        (0..n)
            .map(|i| {
                let (reply, rx) = oneshot::channel();
                let item = Buffered {
                    mapping: Mapping::default_for("s"),
                    schema: Arc::new(Schema::empty()),
                    batches: vec![],
                    rows: i as u64 + 1,
                    key: None,
                    commit_retries: retries,
                    commit_retry_wait: Duration::ZERO,
                    group_window: Duration::ZERO,
                };
                (GroupJob { item, reply, _charges: vec![] }, rx)
            })
            .unzip()
    }

    #[test]
    fn a_group_takes_what_waits_and_with_a_window_what_arrives_within_it() {
        for (window, expected) in [(Duration::ZERO, 1), (Duration::from_millis(500), 3)] {
            let (tx, rx) = std::sync::mpsc::channel();
            let (mut all, _replies) = jobs(3, 0);
            for j in &mut all {
                j.item.group_window = window;
            }
            let mut all = all.into_iter();
            tx.send(all.next().unwrap()).unwrap();
            let late = std::thread::spawn(move || {
                for j in all {
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = tx.send(j); // gone once the group was taken
                }
            });
            let taken = take_group(&Mutex::new(rx)).unwrap();
            assert_eq!(taken.len(), expected, "window {window:?}");
            late.join().unwrap();
        }
    }

    #[test]
    fn lost_commit_races_are_retried_up_to_the_limit() {
        let mut sink = Racing { conflicts: 2, commits: vec![] };
        let (js, rxs) = jobs(3, 5);
        commit_group(&mut sink, js);
        assert_eq!(sink.commits, vec![3, 3, 3]);
        for (i, mut rx) in rxs.into_iter().enumerate() {
            let w = rx.try_recv().unwrap().unwrap();
            assert_eq!((w.rows, w.retries), (i as u64 + 1, 2));
        }
        // Past the limit the client gets the conflict (503 / ABORTED, worth its own retry).
        let mut sink = Racing { conflicts: 10, commits: vec![] };
        let (js, rxs) = jobs(2, 1);
        commit_group(&mut sink, js);
        assert_eq!(sink.commits, vec![2, 2]);
        for mut rx in rxs {
            let e = rx.try_recv().unwrap().unwrap_err();
            assert_eq!(e.code(), crate::engine::error::Code::Contended);
        }
    }
}
