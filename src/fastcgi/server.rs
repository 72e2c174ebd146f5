//! The server: a fixed pool of worker threads that each accept and serve
//! one connection at a time, the gc timer thread, and the clean shutdown
//! that SIGTERM or SIGINT starts.
//!
//! A fixed pool, not a thread per connection, so that memory and file
//! descriptors are bounded; excess connections wait in the listen backlog.
//! Shutdown stops accepting at once, ends idle kept-alive connections,
//! gives running requests the grace time, then cuts the rest short (their
//! uploads end in state `error`, "interrupted"): a deploy does not wait for
//! the slowest client, and no upload is left looking as if it still ran.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::connection::serve_connection;
use super::listener::{Listener, Stream};
use super::log::RateLimitedLog;
use super::settings::{ConfigSources, Settings};
use crate::config::Config;
use crate::handler;

/// How often the acceptor looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How often the gc thread asks whether a collection is due.
const GC_LOOK: Duration = Duration::from_secs(5);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Requests served at once (each worker serves one connection).
    pub workers: usize,
    /// After SIGTERM, how long running requests may take to finish.
    pub grace: Duration,
    /// How long a read from the web server may wait; also how long an idle
    /// kept-alive connection is kept.
    pub read_timeout: Duration,
}

/// State shared by the workers and the main thread.
pub(super) struct Server {
    /// The daemon's own configuration: what a request without
    /// `FILEUPLOAD_*` parameters gets.
    pub(super) config: Config,
    /// Per-request settings: the sources, and what was merged from them.
    pub(super) settings: Settings,
    pub(super) options: ServerOptions,
    /// Set by SIGTERM/SIGINT.
    pub(super) stopping: Arc<AtomicBool>,
    /// Set when the grace time is over: running requests are cut short.
    pub(super) grace_over: AtomicBool,
    /// Open connections, to cut them at shutdown; `true` while a request runs.
    connections: Mutex<HashMap<u64, (Arc<Stream>, bool)>>,
    pub(super) next_connection: AtomicU64,
    pub(super) log: RateLimitedLog,
}

impl Server {
    /// `quiet`: log nothing (the test hook).
    pub(super) fn new(
        config: Config,
        sources: Option<ConfigSources>,
        options: ServerOptions,
        stopping: Arc<AtomicBool>,
        quiet: bool,
    ) -> Server {
        Server {
            config,
            settings: Settings::new(sources),
            options,
            stopping,
            grace_over: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            log: RateLimitedLog::new(quiet),
        }
    }

    pub(super) fn set_busy(&self, id: u64, busy: bool) {
        if let Some(entry) = self.lock_connections().get_mut(&id) {
            entry.1 = busy;
        }
    }

    pub(super) fn lock_connections(&self) -> MutexGuard<'_, HashMap<u64, (Arc<Stream>, bool)>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the reading side of connections (all, or only idle ones): a
    /// worker blocked in a read returns at once.
    fn cut(&self, only_idle: bool) {
        for (stream, busy) in self.lock_connections().values() {
            if !only_idle || !busy {
                stream.shutdown_read();
            }
        }
    }
}

/// Serves FastCGI until SIGTERM or SIGINT, then shuts down cleanly: stops
/// accepting, gives running requests `grace` to finish, and cuts the rest
/// short (their uploads end in state `error`, "interrupted").
///
/// Each worker accepts its own connections: one that is busy simply does
/// not accept, so excess connections wait in the listen backlog, and no
/// connection is handed from thread to thread.
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
    // A blocked accept returns after this, so a worker notices shutdown.
    rustix::net::sockopt::set_socket_timeout(
        listener.as_fd(),
        rustix::net::sockopt::Timeout::Recv,
        Some(TICK),
    )?;
    let workers = options.workers.max(1);
    let server = Arc::new(Server::new(config, Some(sources), options, stopping, false));
    let listener = Arc::new(listener);
    let mut handles = Vec::with_capacity(workers);
    for n in 0..workers {
        let server = Arc::clone(&server);
        let listener = Arc::clone(&listener);
        let handle = thread::Builder::new()
            .name(format!("fastcgi-{n}"))
            .spawn(move || worker(&server, &listener))?;
        handles.push(handle);
    }
    let collector = Arc::clone(&server);
    handles.push(
        thread::Builder::new()
            .name("gc".into())
            .spawn(move || collect(&collector))?,
    );
    while !server.stopping.load(Ordering::SeqCst) {
        thread::sleep(TICK);
    }
    // Stop accepting now: new connections are refused rather than left
    // waiting in the backlog for a worker that will not take them.
    listener.stop();

    // Idle kept-alive connections end now; running requests get the grace.
    server.cut(true);
    let deadline = Instant::now() + server.options.grace;
    while Instant::now() < deadline && !server.lock_connections().is_empty() {
        thread::sleep(Duration::from_millis(20));
        server.cut(true);
    }
    server.grace_over.store(true, Ordering::SeqCst);
    server.cut(false);
    // Cut requests end within moments; one stuck elsewhere (an application
    // that does not exit) must not keep the process alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn worker(server: &Server, listener: &Listener) {
    while !server.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok(stream) => serve_connection(server, stream),
            // The accept timeout: look at the shutdown flag again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(_) if server.stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE): wait a moment,
                // while running requests finish and free some, and go on.
                server
                    .log
                    .log("accept", &format!("cannot accept a connection: {e}"));
                thread::sleep(TICK);
            }
        }
    }
}

/// Automatic gc on a timer of its own, so that no request's answer waits
/// for a sweep; [`crate::Pool::maybe_gc`] decides when one is due (and
/// that one process at a time runs it), so looking every few seconds costs
/// an open and a stat.
fn collect(server: &Server) {
    let mut last: Option<Instant> = None;
    while !server.stopping.load(Ordering::SeqCst) {
        if last.is_none_or(|at| at.elapsed() >= GC_LOOK) {
            last = Some(Instant::now());
            for config in server.settings.collected(&server.config) {
                handler::collect_if_due(&config);
            }
        }
        thread::sleep(TICK);
    }
}
