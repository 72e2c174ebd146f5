//! The threads that run bulk requests (uploads, and in middleware mode the
//! application's): a pool that grows to `max_uploads`, one thread per
//! running request, fed by a dispatcher thread.
//!
//! A thread each because an upload takes as long as its client, minutes
//! on a phone, and most of that time its thread sleeps in a read: a
//! sleeping thread costs its touched stack and buffers (see the README's
//! figures), not CPU, and the upload code stays the plain blocking code
//! that CGI runs too. A bound on uploads, not on threads in general: the
//! one resource a flood of slow uploads could take is memory, and
//! `max_uploads` says how much.
//!
//! Bulk threads run at the lowest CPU priority (see
//! [`crate::receiving::lower_priority`]), and that makes one rule here:
//! nothing the event loop waits for is ever held by a bulk thread. A lock
//! taken by a low-priority thread that the scheduler then leaves waiting,
//! on a busy machine, stalls whoever wants the lock next (priority
//! inversion: measured, polls at 250 ms p99 under the load test when the
//! event loop shared a queue with upload threads). So the event loop hands
//! bulk work to the dispatcher over a channel, the dispatcher (at normal
//! priority) starts a thread when none is idle (the loop never waits on
//! `mmap` and `clone` either), and bulk threads give connections back
//! over a channel too.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use super::assembly::Begun;
use super::connection::{self, Connection, Kind};
use super::server::Server;
use crate::error_code::ErrorCode;
use crate::http::HttpError;

/// How often the dispatcher looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// A bulk thread idle this long ends: the pool shrinks after a burst.
const IDLE: Duration = Duration::from_secs(30);

/// A request ready to run, with the answer it gets instead of the
/// handler's, if any.
pub(super) struct Job {
    pub(super) connection: Connection,
    pub(super) begun: Begun,
    pub(super) refusal: Option<HttpError>,
}

/// Jobs waiting for a bulk thread, and how many threads wait for jobs.
/// Shared by the dispatcher and the bulk threads only.
#[derive(Default)]
struct Queue {
    jobs: Mutex<(VecDeque<Job>, usize)>,
    ready: Condvar,
}

impl Queue {
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

/// The bulk side of the server.
pub(super) struct Bulk {
    /// The event loop's end of the channel to the dispatcher.
    to_dispatcher: OnceLock<Sender<Job>>,
    queue: Queue,
    /// Bulk requests running or waiting for a thread.
    pub(super) running: AtomicUsize,
    /// Bulk threads alive.
    threads: AtomicUsize,
}

impl Bulk {
    pub(super) fn new() -> Bulk {
        Bulk {
            to_dispatcher: OnceLock::new(),
            queue: Queue::default(),
            running: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
        }
    }
}

/// Starts the dispatcher.
pub(super) fn start(server: &Arc<Server>) -> io::Result<thread::JoinHandle<()>> {
    let (sender, jobs) = mpsc::channel();
    server
        .bulk
        .to_dispatcher
        .set(sender)
        .map_err(|_| io::Error::other("the dispatcher is started once"))?;
    let dispatching = Arc::clone(server);
    thread::Builder::new()
        .name("dispatcher".into())
        .spawn(move || dispatcher(&dispatching, &jobs))
}

/// Hands a bulk request to the dispatcher. When `max_uploads` run already
/// (or the server is stopping) it is given back, with the 503 it gets
/// instead, for the caller to answer. Never waits for a bulk thread.
pub(super) fn dispatch(server: &Server, connection: Connection, begun: Begun) -> Option<Job> {
    let job = Job {
        connection,
        begun,
        refusal: None,
    };
    let running = server.bulk.running.fetch_add(1, Ordering::SeqCst);
    if running >= server.options.max_uploads {
        let why = format!(
            "the server is receiving {} uploads already (max_uploads); try again later",
            server.options.max_uploads
        );
        return Some(refused(server, job, why));
    }
    let unsent = match server.bulk.to_dispatcher.get() {
        Some(sender) => sender.send(job).err().map(|e| e.0),
        None => Some(job),
    };
    unsent.map(|job| refused(server, job, "the server is shutting down".into()))
}

fn refused(server: &Server, job: Job, why: String) -> Job {
    server.bulk.running.fetch_sub(1, Ordering::SeqCst);
    Job {
        refusal: Some(HttpError::new(ErrorCode::Busy, why)),
        ..job
    }
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
            server.log.log(
                "thread",
                &format!("cannot start a thread for an upload: {e}"),
            );
            // The job waits for a running thread to finish; with none, it
            // is refused here rather than left.
            if server.bulk.threads.load(Ordering::SeqCst) == 0
                && let Some(job) = server.bulk.queue.pop(Duration::ZERO)
            {
                let job = refused(
                    server,
                    job,
                    "the server cannot take another upload now".into(),
                );
                run(server, job);
            }
        }
    }
}

fn bulk_worker(server: &Server) {
    // This thread only ever does bulk work: it gives way to the polls.
    crate::receiving::lower_priority();
    while let Some(job) = server.bulk.queue.pop(IDLE) {
        run(server, job);
        server.bulk.running.fetch_sub(1, Ordering::SeqCst);
    }
    server.bulk.threads.fetch_sub(1, Ordering::SeqCst);
}

fn run(server: &Server, job: Job) {
    let after = connection::run(server, job.connection, job.begun, job.refusal, Kind::Bulk);
    server.give_back(after);
}
