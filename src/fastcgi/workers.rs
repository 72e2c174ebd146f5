//! The threads that run requests: a fixed pool for quick requests, and a
//! thread of its own for each bulk request, up to `max_uploads`.
//!
//! Two kinds because their costs differ by orders of magnitude. A status
//! poll takes microseconds and must never wait behind an upload; an
//! upload takes as long as its client, minutes on a phone, and most of
//! that time its thread sleeps in a read. So polls get `workers` threads
//! that nothing else runs on, and each upload gets a thread that does
//! nothing else (a sleeping thread costs its touched stack and buffers,
//! see the README's figures, not CPU). A bound on uploads, not on
//! threads in general: the one resource a flood of slow uploads could
//! take is memory, and `max_uploads` says how much.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use super::assembly::Begun;
use super::connection::{self, Connection};
use super::server::Server;
use crate::error_code::ErrorCode;
use crate::http::HttpError;

/// How often an idle quick worker looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);

/// A request ready to run, with the answer it gets instead of the
/// handler's, if any.
pub(super) struct Job {
    pub(super) connection: Connection,
    pub(super) begun: Begun,
    pub(super) refusal: Option<HttpError>,
}

/// The quick requests waiting for a worker.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl Queue {
    pub(super) fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.ready.notify_one();
    }

    /// The next job; `None` after a tick without one, so that the caller
    /// can look at the shutdown flag.
    fn pop(&self) -> Option<Job> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut jobs, _) = self
            .ready
            .wait_timeout_while(jobs, TICK, |jobs| jobs.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        jobs.pop_front()
    }
}

/// Starts the quick workers.
pub(super) fn start_quick(server: &Arc<Server>) -> io::Result<Vec<thread::JoinHandle<()>>> {
    (0..server.options.workers.max(1))
        .map(|n| {
            let server = Arc::clone(server);
            thread::Builder::new()
                .name(format!("fastcgi-{n}"))
                .spawn(move || quick_worker(&server))
        })
        .collect()
}

fn quick_worker(server: &Server) {
    loop {
        match server.quick.pop() {
            Some(job) => run(server, job),
            None if server.is_stopping() => return,
            None => {}
        }
    }
}

/// Hands a request to the threads that run it: a quick one to the pool,
/// a bulk one to a thread of its own, or, when `max_uploads` run already
/// (or no thread can be had), to the pool with a 503.
pub(super) fn dispatch(server: &Arc<Server>, connection: Connection, begun: Begun, quick: bool) {
    if quick {
        server.quick.push(Job {
            connection,
            begun,
            refusal: None,
        });
        return;
    }
    let running = server.bulk.fetch_add(1, Ordering::SeqCst);
    let refuse = |server: &Server, job: Job, why: String| {
        server.bulk.fetch_sub(1, Ordering::SeqCst);
        server.quick.push(Job {
            refusal: Some(HttpError::new(ErrorCode::Busy, why)),
            ..job
        });
    };
    let job = Job {
        connection,
        begun,
        refusal: None,
    };
    if running >= server.options.max_uploads {
        let why = format!(
            "the server is receiving {} uploads already (max_uploads); try again later",
            server.options.max_uploads
        );
        return refuse(server, job, why);
    }
    // The job comes back if the thread cannot start, to be refused.
    let slot = Arc::new(Mutex::new(Some(job)));
    let taken = Arc::clone(&slot);
    let thread_server = Arc::clone(server);
    let spawned = thread::Builder::new().name("upload".into()).spawn(move || {
        let job = taken.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            // This thread does nothing but this request: bulk work gives
            // way to the polls (see receiving::lower_priority).
            crate::receiving::lower_priority();
            run(&thread_server, job);
        }
        thread_server.bulk.fetch_sub(1, Ordering::SeqCst);
    });
    if let Err(e) = spawned {
        let job = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        server.log.log(
            "thread",
            &format!("cannot start a thread for an upload: {e}"),
        );
        if let Some(job) = job {
            refuse(
                server,
                job,
                "the server cannot take another upload now".into(),
            );
        }
    }
}

fn run(server: &Server, job: Job) {
    let after = connection::run(server, job.connection, job.begun, job.refusal);
    server.give_back(after);
}
