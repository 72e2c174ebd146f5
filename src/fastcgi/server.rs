//! The server: the event loop, the worker threads, the gc timer, and the
//! clean shutdown that SIGTERM or SIGINT starts.
//!
//! A connection waits for its next request in the event loop, costing a
//! socket and the bytes it has sent; once its parameters are complete, a
//! quick request is answered by the loop's thread that read it, and a bulk
//! one runs on a thread of its own (see [`super::bulk`]) and comes back to
//! the loop when it is done.
//!
//! Shutdown stops accepting at once, ends the connections waiting in the
//! loop, gives running requests the grace time, then cuts the rest short
//! (their uploads end in state `error`, "interrupted"): a deploy does not
//! wait for the slowest client, and no upload is left looking as if it
//! still ran.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::bulk::{self, Bulk};
use super::connection::{After, Kind};
use super::event_loop::EventLoop;
use super::listener::{Listener, Stream};
use super::log::RateLimitedLog;
use super::settings::{ConfigSources, Settings};
use crate::config::Config;
use crate::handler;
use crate::service::Service;

/// How often the main thread and the gc thread look at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How often the gc thread asks whether a collection is due.
const GC_LOOK: Duration = Duration::from_secs(5);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Event-loop threads, which also answer quick requests (status,
    /// clear, new identifiers).
    pub workers: usize,
    /// Bulk requests (uploads, the application's) running at once.
    pub max_uploads: usize,
    /// How long a connection may take to send a request's parameters.
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a body.
    pub body_timeout: Duration,
    /// After SIGTERM, how long running requests may take to finish.
    pub grace: Duration,
}

impl ServerOptions {
    /// The options a configuration sets.
    pub fn from_config(config: &Config) -> ServerOptions {
        ServerOptions {
            workers: config.workers,
            max_uploads: config.max_uploads,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            grace: config.grace,
        }
    }
}

/// State shared by the event loop, the bulk threads and the main thread.
pub(super) struct Server {
    /// The daemon's own configuration and pool, built once: what a request
    /// without `FILEUPLOAD_*` parameters gets.
    pub(super) service: Arc<Service>,
    /// Per-request settings: the sources, and what was merged from them.
    pub(super) settings: Settings,
    pub(super) options: ServerOptions,
    /// Set by SIGTERM/SIGINT.
    stopping: Arc<AtomicBool>,
    /// Set when the grace time is over: running requests are cut short.
    pub(super) grace_over: AtomicBool,
    /// Connections whose request runs, to cut them at shutdown: one map
    /// for each kind of thread, so that the two never share a lock (see
    /// [`super::bulk`]).
    in_flight: [Mutex<HashMap<u64, Arc<Stream>>>; 2],
    pub(super) next_connection: AtomicU64,
    pub(super) log: RateLimitedLog,
    /// Bulk requests and their threads.
    pub(super) bulk: Bulk,
    /// Connections done with a request, for the event loop to take back:
    /// a channel, which a sender cannot hold up the receiver on.
    returns: Sender<After>,
    /// Its receiving end, until the event loop takes it.
    returned: Mutex<Option<Receiver<After>>>,
    /// Wakes the event loop when a connection comes back.
    pub(super) waker: OwnedFd,
}

impl Server {
    /// `quiet`: log nothing (the test hook).
    pub(super) fn new(
        config: Config,
        sources: Option<ConfigSources>,
        options: ServerOptions,
        stopping: Arc<AtomicBool>,
        quiet: bool,
    ) -> io::Result<Server> {
        let waker = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let (returns, returned) = mpsc::channel();
        Ok(Server {
            service: Arc::new(Service::new(config)),
            settings: Settings::new(sources),
            options,
            stopping,
            grace_over: AtomicBool::new(false),
            in_flight: [Mutex::new(HashMap::new()), Mutex::new(HashMap::new())],
            next_connection: AtomicU64::new(0),
            log: RateLimitedLog::new(quiet),
            bulk: Bulk::new(),
            returns,
            returned: Mutex::new(Some(returned)),
            waker,
        })
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn in_flight(&self, kind: Kind) -> MutexGuard<'_, HashMap<u64, Arc<Stream>>> {
        let index = match kind {
            Kind::Quick => 0,
            Kind::Bulk => 1,
        };
        self.in_flight[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A request begins to run on `stream`.
    pub(super) fn running(&self, kind: Kind, id: u64, stream: &Arc<Stream>) {
        self.in_flight(kind).insert(id, Arc::clone(stream));
    }

    /// The request on connection `id` is done.
    pub(super) fn done(&self, kind: Kind, id: u64) {
        self.in_flight(kind).remove(&id);
    }

    fn any_in_flight(&self) -> bool {
        [Kind::Quick, Kind::Bulk]
            .iter()
            .any(|kind| !self.in_flight(*kind).is_empty())
    }

    /// Gives a connection back to the event loop. Once the server stops
    /// there is no loop: the connection closes here.
    pub(super) fn give_back(&self, after: After) {
        if self.is_stopping() || self.returns.send(after).is_err() {
            return;
        }
        // A full counter (never, in practice) still wakes the loop.
        let _ = rustix::io::write(&self.waker, &1u64.to_ne_bytes());
    }

    /// The receiving end of the connections given back (the event loop's).
    pub(super) fn take_returns(&self) -> Option<Receiver<After>> {
        self.returned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Cuts the reading side of every running request: a thread blocked
    /// in a read returns at once.
    fn cut_running(&self) {
        for kind in [Kind::Quick, Kind::Bulk] {
            for stream in self.in_flight(kind).values() {
                stream.shutdown_read();
            }
        }
    }
}

/// Serves FastCGI until SIGTERM or SIGINT, then shuts down cleanly: stops
/// accepting, gives running requests `grace` to finish, and cuts the rest
/// short (their uploads end in state `error`, "interrupted").
///
/// `sources` are what `config` was loaded from: a request whose parameters
/// carry settings runs with them merged in (see [`ConfigSources`]).
pub fn serve(
    config: Config,
    sources: ConfigSources,
    listener: Listener,
    options: ServerOptions,
) -> io::Result<()> {
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stopping))?;
    }
    raise_file_limit(&options);
    let server = Arc::new(Server::new(
        config,
        Some(sources),
        options,
        stopping,
        false,
    )?);
    let listener = Arc::new(listener);
    let event_loop = Arc::new(EventLoop::new(Arc::clone(&server), Arc::clone(&listener))?);
    let mut handles = vec![bulk::start(&server)?];
    for n in 0..server.options.workers.max(1) {
        let event_loop = Arc::clone(&event_loop);
        handles.push(
            thread::Builder::new()
                .name(format!("fastcgi-{n}"))
                .spawn(move || event_loop.run(n))?,
        );
    }
    let collector = Arc::clone(&server);
    handles.push(
        thread::Builder::new()
            .name("gc".into())
            .spawn(move || collect(&collector))?,
    );
    while !server.is_stopping() {
        thread::sleep(TICK);
    }
    // Stop accepting now: new connections are refused rather than left
    // waiting in the backlog; connections between requests close.
    listener.stop();
    event_loop.close_all();
    let deadline = Instant::now() + server.options.grace;
    while Instant::now() < deadline && server.any_in_flight() {
        thread::sleep(Duration::from_millis(20));
    }
    server.grace_over.store(true, Ordering::SeqCst);
    server.cut_running();
    // Cut requests end within moments; one stuck elsewhere (an application
    // that does not exit) must not keep the process alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !(handles.iter().all(|h| h.is_finished())
            && server.bulk.running.load(Ordering::SeqCst) == 0)
    {
        thread::sleep(Duration::from_millis(20));
        server.cut_running();
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: each connection is a
/// descriptor and each running upload a few more, and the soft limit a
/// service gets by default (1024) is far below `max_uploads`.
fn raise_file_limit(options: &ServerOptions) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
    let now = getrlimit(Resource::Nofile).current;
    // An upload holds its connection, its lock, its data file and its
    // bucket's directory open.
    let wanted = options.max_uploads.saturating_mul(4) as u64;
    if let Some(now) = now
        && now < wanted
    {
        crate::log!(
            "the limit on open files is {now}, less than {wanted} for {} uploads (max_uploads): \
             raise it (systemd LimitNOFILE=, ulimit -n) or lower max_uploads",
            options.max_uploads
        );
    }
    reserve_descriptor_table(
        wanted
            .min(now.unwrap_or(wanted))
            .min(MAX_RESERVED_DESCRIPTORS),
    );
}

/// The most descriptors [`reserve_descriptor_table`] makes room for:
/// the kernel's table for them takes 8 bytes each (256 KiB at most).
const MAX_RESERVED_DESCRIPTORS: u64 = 1 << 15;

/// Grows the process's descriptor table once, now, to hold `count`.
///
/// The kernel grows the table as descriptors are opened, doubling it each
/// time, and every growth waits for an RCU grace period (about 12 ms here)
/// during which no thread of the process can open a file or accept a
/// connection. Under a burst of new uploads the table grew five times in a
/// row and the status polls of that moment waited 40-90 ms (perf: threads
/// in `expand_files`); the table never shrinks, so growing it first costs
/// only its memory. Best effort: a process that cannot is only slower.
fn reserve_descriptor_table(count: u64) {
    let Ok(highest) = i32::try_from(count.saturating_sub(1)) else {
        return;
    };
    if let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest) {
        drop(fd);
    }
}

/// Automatic gc on a timer of its own, so that no request's answer waits
/// for a sweep; [`crate::Pool::maybe_gc`] decides when one is due (and
/// that one process at a time runs it), so looking every few seconds costs
/// an open and a stat.
fn collect(server: &Server) {
    let mut last: Option<Instant> = None;
    while !server.is_stopping() {
        if last.is_none_or(|at| at.elapsed() >= GC_LOOK) {
            last = Some(Instant::now());
            for service in server.settings.collected(&server.service) {
                handler::collect_if_due(&service);
            }
        }
        thread::sleep(TICK);
    }
}
