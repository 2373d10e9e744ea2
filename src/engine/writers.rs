//! The writer pool: a fixed set of threads, each owning one [`Sink`] (one DuckDB connection), and the group
//! committer, a reserved writer that lands small requests many to a transaction.
//!
//! A request holds a permit for the whole time a writer works for it, so a submitted job always finds a free
//! thread. Every job runs behind the panic boundary: a panic fails that job, its transaction is rolled back by
//! its guard, and the thread goes on serving.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow::datatypes::{Schema, SchemaRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::catalog::registry::{Mapping, Target};
use crate::engine::error::IngestError;
use crate::engine::policy::Access;
use crate::engine::sink::{BatchRx, Buffered, Catalog, Described, Param, QueryOut, Sink, Statement, Written};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, IngestError>>;

pub(crate) enum Work {
    Write { mapping: Mapping, schema: SchemaRef, input: BatchRx, reply: Reply<Written> },
    Describe { target: Target, reply: Reply<Option<Schema>> },
    List { reply: Reply<Vec<(String, Schema)>> },
    Ping { reply: Reply<String> },
    DescribeSql { sql: String, params: Option<Vec<Param>>, access: Access, reply: Reply<Described> },
    Query { statement: Statement, access: Access, out: QueryOut, reply: Reply<()> },
    Update { statement: Statement, access: Access, reply: Reply<u64> },
    Catalog { with_schemas: bool, reply: Reply<Catalog> },
}

pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// A small request waiting for the group committer.
pub(crate) struct GroupJob {
    item: Buffered,
    reply: Reply<Written>,
}

/// Writers that commit groups (when the pool has four connections or more). Measured on 2 cores, 8 clients of
/// 1,000-row DoPuts: one committer 41-44k requests/min, two 42-46k (the committer is DuckDB's own work, and the
/// clients share the cores); one keeps more writers for large requests.
const GROUP_COMMITTERS: usize = 1;

/// The requests waiting for a group committer (at least one, blocking for it); `None` once the queue is closed.
fn take_group(rx: &Mutex<std::sync::mpsc::Receiver<GroupJob>>) -> Option<Vec<GroupJob>> {
    let rx = rx.lock().ok()?;
    let mut jobs = vec![rx.recv().ok()?];
    while jobs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Lands one group and answers each request in it.
fn commit_group<S: Sink>(sink: &mut S, jobs: Vec<GroupJob>) {
    let items: Vec<Buffered> = jobs.iter().map(|j| j.item.clone()).collect();
    match crate::panic::contain("committing a group", || sink.write_group(&items)) {
        Ok(results) if results.len() == jobs.len() => {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Ok(_) => {
            for job in jobs {
                let _ = job.reply.send(Err(IngestError::Internal("the group committer lost a result".into())));
            }
        }
        Err(p) => {
            for job in jobs {
                let _ = job.reply.send(Err(p.clone().into()));
            }
        }
    }
}

/// Requests one group commit takes at most.
const MAX_GROUP: usize = 128;

/// Runs one job of a writer thread behind the panic boundary.
fn guarded<T>(f: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    crate::panic::contain("writing", f).unwrap_or_else(|p| Err(p.into()))
}

/// A fixed set of writer threads, each owning one sink (one DuckDB connection). A request holds a permit for
/// the whole time a writer works for it, so a submitted job always finds a free thread.
pub struct Writers<S: Sink> {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    pub(crate) permits: Arc<Semaphore>,
    threads: Mutex<Vec<JoinHandle<S>>>,
    pub(crate) size: usize,
    /// The group committer: one writer of the pool that lands small requests, as many per transaction as have
    /// arrived while it committed the last group (so N waiting requests cost one commit, not N).
    group: Mutex<Option<std::sync::mpsc::Sender<GroupJob>>>,
    group_threads: Mutex<Vec<JoinHandle<S>>>,
}

impl<S: Sink> Writers<S> {
    pub fn start(mut sinks: Vec<S>) -> std::io::Result<Writers<S>> {
        // The last connection(s) of the pool commit groups of small requests.
        let committers = match sinks.len() {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => GROUP_COMMITTERS,
        };
        let group_sinks = sinks.split_off(sinks.len() - committers);
        let (group, group_threads) = if group_sinks.is_empty() {
            (None, Vec::new())
        } else {
            let (tx, handles) = Self::start_group(group_sinks)?;
            (Some(tx), handles)
        };
        let size = sinks.len();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(size);
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new().name(format!("arrowport-writer-{i}")).spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    match job.work {
                        Work::Write { mapping, schema, input, reply } => {
                            let _ = reply.send(guarded(|| sink.write(&mapping, schema, input)));
                        }
                        Work::Describe { target, reply } => {
                            let _ = reply.send(guarded(|| sink.table_schema(&target)));
                        }
                        Work::List { reply } => {
                            let _ = reply.send(guarded(|| sink.list_tables()));
                        }
                        Work::Ping { reply } => {
                            let _ = reply.send(guarded(|| sink.ping()));
                        }
                        Work::DescribeSql { sql, params, access, reply } => {
                            let _ = reply.send(guarded(|| sink.describe_sql(&sql, params.as_deref(), access)));
                        }
                        Work::Query { statement, access, out, reply } => {
                            let _ = reply.send(guarded(|| sink.query(&statement, access, &out)));
                        }
                        Work::Update { statement, access, reply } => {
                            let _ = reply.send(guarded(|| sink.update(&statement, access)));
                        }
                        Work::Catalog { with_schemas, reply } => {
                            let _ = reply.send(guarded(|| sink.catalog(with_schemas)));
                        }
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
        })
    }

    fn start_group(sinks: Vec<S>) -> std::io::Result<(std::sync::mpsc::Sender<GroupJob>, Vec<JoinHandle<S>>)> {
        let (tx, rx) = std::sync::mpsc::channel::<GroupJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(sinks.len());
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new().name(format!("arrowport-commit-{i}")).spawn(move || {
                // Each turn takes every request waiting now; one committer takes while the other may commit.
                while let Some(jobs) = take_group(&rx) {
                    commit_group(&mut sink, jobs);
                }
                sink
            })?;
            handles.push(handle);
        }
        Ok((tx, handles))
    }

    /// Queues a small request for the group committer; `Err(item)` when there is none.
    pub(crate) fn submit_group(&self, item: Buffered, reply: Reply<Written>) -> Result<(), IngestError> {
        let group = self.group.lock().map_err(|_| IngestError::Internal("group queue poisoned".into()))?;
        match group.as_ref() {
            Some(tx) => tx.send(GroupJob { item, reply }).map_err(|_| IngestError::Stopping),
            None => Err(IngestError::Stopping),
        }
    }

    pub(crate) fn has_group(&self) -> bool {
        self.group.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Stops taking jobs, waits for the running ones, joins the threads and gives the sinks back.
    pub fn stop(&self) -> Vec<S> {
        self.permits.close();
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut group) = self.group.lock() {
            group.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        let mut sinks: Vec<S> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
        let group_threads = self.group_threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        sinks.extend(group_threads.into_iter().filter_map(|t| t.join().ok()));
        sinks
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), IngestError> {
        let jobs = self.jobs.lock().map_err(|_| IngestError::Internal("writer queue poisoned".into()))?;
        match jobs.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| IngestError::Stopping),
            None => Err(IngestError::Stopping),
        }
    }
}
