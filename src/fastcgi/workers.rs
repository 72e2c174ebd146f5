//! The threads that run requests: a fixed pool for quick requests, and a
//! pool for bulk requests that grows to `max_uploads` threads, one per
//! running upload.
//!
//! Two kinds because their costs differ by orders of magnitude. A status
//! poll takes microseconds and must never wait behind an upload; an
//! upload takes as long as its client, minutes on a phone, and most of
//! that time its thread sleeps in a read. So polls get `workers` threads
//! that nothing else runs on, and each upload a thread that does nothing
//! else (a sleeping thread costs its touched stack and buffers, see the
//! README's figures, not CPU). A bound on uploads, not on threads in
//! general: the one resource a flood of slow uploads could take is
//! memory, and `max_uploads` says how much.
//!
//! Bulk threads run at the lowest CPU priority (see
//! [`crate::receiving::lower_priority`]), and that makes one rule here:
//! nothing the event loop or a quick worker waits for is ever held by a
//! bulk thread. A lock taken by a low-priority thread that the scheduler
//! then leaves waiting, on a busy machine, stalls whoever wants the lock
//! next (priority inversion; measured: polls 250 ms at p99 under the load
//! test). So the event loop hands bulk work to a dispatcher thread over a
//! channel, the dispatcher (at normal priority) starts bulk threads when
//! none is idle, so the loop never waits on `mmap` and `clone` either,
//! and bulk threads give connections back over a channel too.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use super::assembly::Begun;
use super::connection::{self, Connection, Kind};
use super::server::Server;
use crate::error_code::ErrorCode;
use crate::http::HttpError;

/// How often an idle quick worker or the dispatcher looks at the shutdown
/// flag.
const TICK: Duration = Duration::from_millis(100);
/// A bulk thread idle this long ends: the pool shrinks after a burst.
const BULK_IDLE: Duration = Duration::from_secs(30);

/// A request ready to run, with the answer it gets instead of the
/// handler's, if any.
pub(super) struct Job {
    pub(super) connection: Connection,
    pub(super) begun: Begun,
    pub(super) refusal: Option<HttpError>,
}

/// Jobs waiting for a thread, and how many threads wait for jobs.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Mutex<(VecDeque<Job>, usize)>,
    ready: Condvar,
}

impl Queue {
    pub(super) fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push_back(job);
        self.ready.notify_one();
    }

    /// Pushes `job`; whether a thread was idle to take it.
    fn push_to_idle(&self, job: Job) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.0.push_back(job);
        let taken = jobs.1 >= jobs.0.len();
        drop(jobs);
        self.ready.notify_one();
        taken
    }

    /// The next job; `None` after `wait` without one.
    fn pop(&self, wait: Duration) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.1 += 1;
        let (mut jobs, _) = self
            .ready
            .wait_timeout_while(jobs, wait, |jobs| jobs.0.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        jobs.1 -= 1;
        jobs.0.pop_front()
    }
}

/// The bulk side: the channel from the event loop, and the queue the bulk
/// threads take jobs from.
pub(super) struct Bulk {
    /// The event loop's end of the channel to the dispatcher.
    to_dispatcher: Mutex<Option<Sender<Job>>>,
    queue: Queue,
    /// Bulk requests running or waiting for a thread.
    pub(super) running: AtomicUsize,
    /// Bulk threads alive.
    threads: AtomicUsize,
}

impl Bulk {
    pub(super) fn new() -> Bulk {
        Bulk {
            to_dispatcher: Mutex::new(None),
            queue: Queue::default(),
            running: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
        }
    }
}

/// Starts the quick workers and the bulk dispatcher.
pub(super) fn start(server: &Arc<Server>) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let mut handles = (0..server.options.workers.max(1))
        .map(|n| {
            let server = Arc::clone(server);
            thread::Builder::new()
                .name(format!("fastcgi-{n}"))
                .spawn(move || quick_worker(&server))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let (sender, jobs) = mpsc::channel();
    *server
        .bulk
        .to_dispatcher
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(sender);
    let dispatching = Arc::clone(server);
    handles.push(
        thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || dispatcher(&dispatching, &jobs))?,
    );
    Ok(handles)
}

fn quick_worker(server: &Server) {
    loop {
        match server.quick.pop(TICK) {
            Some(job) => run(server, job, Kind::Quick),
            None if server.is_stopping() => return,
            None => {}
        }
    }
}

/// Hands a request to the threads that run it: a quick one to the pool,
/// a bulk one to the dispatcher, or, when `max_uploads` run already, to
/// the quick pool with a 503. Called by the event loop: it never waits
/// for a bulk thread.
pub(super) fn dispatch(server: &Arc<Server>, connection: Connection, begun: Begun, quick: bool) {
    let job = Job {
        connection,
        begun,
        refusal: None,
    };
    if quick {
        return server.quick.push(job);
    }
    let running = server.bulk.running.fetch_add(1, Ordering::SeqCst);
    if running >= server.options.max_uploads {
        let why = format!(
            "the server is receiving {} uploads already (max_uploads); try again later",
            server.options.max_uploads
        );
        return refuse(server, job, why);
    }
    let sender = server
        .bulk
        .to_dispatcher
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let unsent = match sender {
        Some(sender) => sender.send(job).err().map(|e| e.0),
        None => Some(job),
    };
    if let Some(job) = unsent {
        refuse(server, job, "the server is shutting down".into());
    }
}

/// Answers a bulk request 503 on a quick worker, instead of running it.
fn refuse(server: &Server, job: Job, why: String) {
    server.bulk.running.fetch_sub(1, Ordering::SeqCst);
    server.quick.push(Job {
        refusal: Some(HttpError::new(ErrorCode::Busy, why)),
        ..job
    });
}

/// Queues bulk jobs for the bulk threads, and starts a thread when none is
/// idle to take one.
fn dispatcher(server: &Arc<Server>, jobs: &Receiver<Job>) {
    loop {
        let job = match jobs.recv_timeout(TICK) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if !server.is_stopping() => continue,
            Err(_) => return,
        };
        if server.bulk.queue.push_to_idle(job) {
            continue;
        }
        let thread_server = Arc::clone(server);
        server.bulk.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("upload".into())
            .spawn(move || bulk_worker(&thread_server));
        if let Err(e) = spawned {
            server.bulk.threads.fetch_sub(1, Ordering::SeqCst);
            server
                .log
                .log("thread", &format!("cannot start a thread for an upload: {e}"));
            // The job waits for a thread that finishes; if there is none,
            // it is refused rather than left.
            if server.bulk.threads.load(Ordering::SeqCst) == 0
                && let Some(job) = server.bulk.queue.pop(Duration::ZERO)
            {
                refuse(server, job, "the server cannot take another upload now".into());
            }
        }
    }
}

fn bulk_worker(server: &Server) {
    // This thread only ever does bulk work: it gives way to the polls.
    crate::receiving::lower_priority();
    while let Some(job) = server.bulk.queue.pop(BULK_IDLE) {
        run(server, job, Kind::Bulk);
        server.bulk.running.fetch_sub(1, Ordering::SeqCst);
    }
    server.bulk.threads.fetch_sub(1, Ordering::SeqCst);
}

fn run(server: &Server, job: Job, kind: Kind) {
    let after = connection::run(server, job.connection, job.begun, job.refusal, kind);
    server.give_back(after);
}
