//! The FastCGI transport: a responder (FastCGI 1.0) in front of the same
//! handler the CGI transport uses.
//!
//! A long-running process saves a process start per status poll. It
//! listens on the socket it was given on stdin (the convention of
//! `spawn-fcgi`, `mod_fcgid` and lighttpd's `bin-path`) or on the address of
//! `--listen`. A fixed pool of worker threads serves one connection each;
//! when all are busy, new connections wait in the listen backlog.
//!
//! It is written for peers that misbehave: a malformed record ends that
//! connection with one rate-limited line in the log, a connection closed
//! at a record boundary ends silently, a connection cut mid-request or an
//! `FCGI_ABORT_REQUEST` fails only that request, running out of file
//! descriptors on `accept` waits and retries, and a panic in a request is
//! caught and answered with a 500. Nothing here can take the process down.
//!
//! A kept connection (`FCGI_KEEP_CONN`) serves its next request only once
//! the current one's STDIN has ended. An answer may come first (a 413
//! from `Content-Length`, a malformed form, a clear); the reader is then
//! inside a STDIN record whose rest is the client's bytes, and reading
//! those as record headers would serve whatever request a client hid in
//! its upload. So the rest is read and discarded record by record, at most
//! 4 MiB within about a second (`DISCARD_LIMIT`, `DISCARD_TIME`), or the
//! connection is closed.
//!
//! Settings can come with a request: `FILEUPLOAD_*` parameters, which the
//! web server's configuration sets (nginx `fastcgi_param`), are merged
//! between the daemon's options and its environment (see
//! [`ConfigSources`] and `Server::request_config`), with CGI's errors.
//!
//! Why not a crate: `fastcgi` 1.0.0 `unwrap()`s the first record of every
//! connection and `panic!`s when `accept` fails, so a bad peer or a full
//! file table kills the process; `outer_cgi` takes over `main` (its own
//! option parser, a forked syslog diverter) and `expect()`s on `fcntl` and
//! `fstat` errors; `tokio-fastcgi` would bring an async runtime into a
//! synchronous program. What this needs is the responder role alone (no
//! multiplexing, no other roles), so it is written here, record layer
//! included; fcgiwrap, for comparison, leaves the record layer to libfcgi,
//! the FastCGI reference library, and implements the CGI side only.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{Config, DAEMON_ONLY, SETTINGS};
use crate::error_code::ErrorCode;
use crate::handler;
use crate::http::{HttpError, Request, Response, ResponseWriter, write_cgi_head};

const VERSION_1: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const ABORT_REQUEST: u8 = 2;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;
const UNKNOWN_TYPE: u8 = 11;
const RESPONDER: u16 = 1;
const KEEP_CONN: u8 = 1;
const REQUEST_COMPLETE: u8 = 0;
const CANT_MPX_CONN: u8 = 1;
const UNKNOWN_ROLE: u8 = 3;
/// Largest record content.
const MAX_CONTENT: usize = 65535;
/// Most bytes of `PARAMS` one request may send (nginx sends a few KiB).
const MAX_PARAMS: usize = 1 << 20;
/// The record reader's buffer.
const READ_BUFFER: usize = 8 * 1024;
/// Most distinct sets of per-request settings kept merged (see
/// [`Server::request_config`]); past this the cache starts over.
const MAX_MERGED: usize = 64;
/// What the names of settings' variables and parameters begin with.
const SETTING_PREFIX: &str = "FILEUPLOAD_";
/// How often the acceptor looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How often the gc thread asks whether a collection is due.
const GC_LOOK: Duration = Duration::from_secs(5);
/// After an answer given before the request's STDIN ended (a 413, a 400,
/// a 410), at most this much of the rest of the body is read and discarded
/// to keep the connection. A web server sends the rest of a body it has
/// buffered at once (it sits in the socket buffers, a few MiB at most);
/// more than this is a client still sending, and such a connection is not
/// worth its wait: it is closed instead.
const DISCARD_LIMIT: u64 = 4 << 20;
/// And the rest must arrive within this time, counted from the first
/// wait on the socket (each read waits at most this long, so the whole
/// takes at most twice it).
const DISCARD_TIME: Duration = Duration::from_secs(1);

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

/// What the daemon's configuration was loaded from, kept so that the
/// `FILEUPLOAD_*` parameters a web server passes with a request can be
/// placed between them: options, then the request's parameters, then the
/// daemon's environment, then the config file, then defaults.
///
/// No `Debug`: the environment may hold the upload key.
#[derive(Clone, Default)]
pub struct ConfigSources {
    /// Command-line options, by setting name (and `config`).
    pub options: Vec<(String, String)>,
    /// The daemon's own `FILEUPLOAD_*` environment variables.
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// `options` as given to [`Config::load`], and this process's
    /// environment.
    pub fn capture(options: &[(&str, String)]) -> ConfigSources {
        let names = SETTINGS
            .iter()
            .map(|s| s.env_var())
            .chain(["FILEUPLOAD_CONFIG".to_owned()]);
        ConfigSources {
            options: options
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            env: names
                .filter_map(|name| std::env::var(&name).ok().map(|value| (name, value)))
                .collect(),
        }
    }
}

/// Where connections come from.
pub enum Listener {
    Tcp(TcpListener),
    /// With the path of a socket file we made, removed again at shutdown.
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    /// Binds `host:port`, or `unix:/path` with the socket file's mode.
    pub fn bind(address: &str, socket_mode: u32) -> io::Result<Listener> {
        let Some(path) = address.strip_prefix("unix:") else {
            return TcpListener::bind(address).map(Listener::Tcp);
        };
        let path = PathBuf::from(path);
        if let Ok(meta) = fs::symlink_metadata(&path) {
            // A socket left by a process that died may go; a live one, or
            // anything that is not a socket, stays.
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server is listening on {}", path.display()),
                ));
            }
            fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(socket_mode))?;
        Ok(Listener::Unix(listener, Some(path)))
    }

    /// The listening socket passed as stdin (FCGI_LISTENSOCK_FILENO).
    pub fn from_stdin() -> io::Result<Listener> {
        let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
        if !stdin_is_listening_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "stdin is not a listening socket: start fileupload with --listen ADDRESS, \
                 or from spawn-fcgi, mod_fcgid or lighttpd, which pass one",
            ));
        }
        match rustix::net::sockopt::socket_domain(&fd)? {
            rustix::net::AddressFamily::UNIX => Ok(Listener::Unix(UnixListener::from(fd), None)),
            _ => Ok(Listener::Tcp(TcpListener::from(fd))),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        let stream = match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Listener::Unix(l, _) => Stream::Unix(l.accept()?.0),
        };
        Ok(stream)
    }
}

impl Listener {
    /// Refuses further connections (and wakes workers blocked in accept);
    /// removes the socket file we made.
    fn stop(&self) {
        let _ = rustix::net::shutdown(self.as_fd(), rustix::net::Shutdown::Both);
        if let Listener::Unix(_, Some(path)) = self {
            let _ = fs::remove_file(path);
        }
    }
}

/// Whether stdin is a listening socket, as a FastCGI launcher leaves it.
pub fn stdin_is_listening_socket() -> bool {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    rustix::fs::fstat(fd).is_ok_and(|s| {
        rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Socket
    }) && rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false)
}

/// One connection from the web server.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    fn shutdown_read(&self) {
        self.shutdown(Shutdown::Read);
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }
}

// Reading, writing and shutting down all work through a shared reference,
// so one socket serves the record reader, the response and the registry
// without duplicating its descriptor.
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection's reading end, for the `BufReader`.
struct Incoming(Arc<Stream>);

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// Prints a line on stderr at most once a second per kind, saying how many
/// were held back: a peer sending garbage cannot flood the log.
struct RateLimitedLog {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
    /// `serve_bytes` (fuzzing) logs nothing.
    quiet: bool,
}

impl RateLimitedLog {
    fn log(&self, kind: &'static str, message: &str) {
        if self.quiet {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = last
            .entry(kind)
            .or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) < Duration::from_secs(1) {
            entry.1 += 1;
            return;
        }
        let held_back = std::mem::take(&mut entry.1);
        entry.0 = now;
        if held_back > 0 {
            crate::log!("{message} ({held_back} more like it not shown)");
        } else {
            crate::log!("{message}");
        }
    }
}

/// Configurations merged with requests' `FILEUPLOAD_*` parameters, by
/// those parameters (sorted).
type Merged = HashMap<Vec<(String, String)>, Arc<Config>>;

/// State shared by the workers and the main thread.
struct Server {
    /// The daemon's own configuration: what a request without
    /// `FILEUPLOAD_*` parameters gets.
    config: Config,
    /// Where a request's own configuration is merged from; `None`
    /// (fuzzing): requests may not bring settings.
    sources: Option<ConfigSources>,
    merged: Mutex<Merged>,
    options: ServerOptions,
    /// Set by SIGTERM/SIGINT.
    stopping: Arc<AtomicBool>,
    /// Set when the grace time is over: running requests are cut short.
    grace_over: AtomicBool,
    /// Open connections, to cut them at shutdown; `true` while a request runs.
    connections: Mutex<HashMap<u64, (Arc<Stream>, bool)>>,
    next_connection: AtomicU64,
    log: RateLimitedLog,
}

impl Server {
    fn new(
        config: Config,
        sources: Option<ConfigSources>,
        options: ServerOptions,
        stopping: Arc<AtomicBool>,
    ) -> Server {
        Server {
            config,
            sources,
            merged: Mutex::new(HashMap::new()),
            options,
            stopping,
            grace_over: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            log: RateLimitedLog {
                last: Mutex::new(HashMap::new()),
                quiet: false,
            },
        }
    }

    /// The configuration a request runs with. Without `FILEUPLOAD_*`
    /// parameters (the usual case, and every status poll behind a server
    /// that passes none) it is the daemon's own: `None`, at the cost of one
    /// look at each parameter's first bytes. With them, the daemon's
    /// sources merged with them, once per distinct set: a key file is read
    /// when a set is first seen, not on every poll.
    ///
    /// A parameter that cannot apply (a [`DAEMON_ONLY`] setting,
    /// `FILEUPLOAD_CONFIG`, an unknown `FILEUPLOAD_` name) or a bad value
    /// is a 500 and a rate-limited log line naming it: an administrator who
    /// set a limit or a key must not believe it active when it is not.
    fn request_config(
        &self,
        params: &[(String, String)],
    ) -> Result<Option<Arc<Config>>, HttpError> {
        if !params
            .iter()
            .any(|(name, _)| name.starts_with(SETTING_PREFIX))
        {
            return Ok(None);
        }
        let mut given: Vec<(String, String)> = params
            .iter()
            .filter(|(name, _)| name.starts_with(SETTING_PREFIX))
            .cloned()
            .collect();
        given.sort();
        if let Some(config) = self.lock_merged().get(&given) {
            return Ok(Some(Arc::clone(config)));
        }
        let config = self.merge(&given).map_err(|message| {
            self.log
                .log("settings", &format!("refusing a request: {message}"));
            HttpError::new(
                ErrorCode::Config,
                "the upload service is misconfigured; the details are in the server's log",
            )
        })?;
        let config = Arc::new(config);
        let mut merged = self.lock_merged();
        if merged.len() >= MAX_MERGED {
            merged.clear();
        }
        merged.insert(given, Arc::clone(&config));
        Ok(Some(config))
    }

    fn merge(&self, given: &[(String, String)]) -> Result<Config, String> {
        let Some(sources) = &self.sources else {
            return Err("this server takes no settings from requests".into());
        };
        // An empty value counts as unset, as everywhere.
        for (name, _) in given.iter().filter(|(_, value)| !value.is_empty()) {
            if name == "FILEUPLOAD_CONFIG" {
                return Err(format!(
                    "FastCGI parameter {name}: the config file is the daemon's (its --config or \
                     environment); pass the settings themselves as FILEUPLOAD_* parameters"
                ));
            }
            match SETTINGS.iter().find(|s| s.env_var() == *name) {
                None => {
                    let known: Vec<String> = SETTINGS
                        .iter()
                        .filter(|s| !DAEMON_ONLY.contains(&s.name))
                        .map(|s| s.env_var())
                        .collect();
                    return Err(format!(
                        "FastCGI parameter {name}: no such setting; a request may set {}",
                        known.join(", ")
                    ));
                }
                Some(setting) if DAEMON_ONLY.contains(&setting.name) => {
                    return Err(format!(
                        "FastCGI parameter {name}: {} is a setting of the daemon as a whole and \
                         cannot change per request; set it in the daemon's options, environment \
                         or config file",
                        setting.name
                    ));
                }
                Some(_) => {}
            }
        }
        let lookup = |pairs: &[(String, String)], var: &str| {
            pairs
                .iter()
                .find(|(name, _)| name == var)
                .map(|(_, value)| value.clone())
        };
        let options: Vec<(&str, String)> = sources
            .options
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        Config::load_layered(
            &options,
            |var| lookup(given, var),
            |var| lookup(&sources.env, var),
        )
        .map_err(|err| err.to_string())
    }

    /// The configurations whose pools automatic gc looks after: the
    /// daemon's own and those merged for requests, one per pool and age.
    fn collected(&self) -> Vec<Arc<Config>> {
        let mut configs = vec![Arc::new(self.config.clone())];
        configs.extend(self.lock_merged().values().cloned());
        configs.retain(|config| config.max_age.is_some());
        let mut seen = std::collections::HashSet::new();
        configs.retain(|config| seen.insert((config.directory.clone(), config.max_age)));
        configs
    }

    fn lock_merged(&self) -> std::sync::MutexGuard<'_, Merged> {
        self.merged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(entry) = self.lock_connections().get_mut(&id) {
            entry.1 = busy;
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Stream>, bool)>> {
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
    let server = Arc::new(Server::new(config, Some(sources), options, stopping));
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

/// Serves one connection on which the peer sends `input` and then closes
/// its side; returns everything the peer received. The way in for fuzzing
/// the record stream (fuzz/fuzz_targets/fastcgi_stream.rs), not a stable
/// API. Requests may not bring settings here (they are answered 500): a
/// fuzzer's parameters could name any directory or program.
#[doc(hidden)]
pub fn serve_bytes(config: Config, input: &[u8]) -> io::Result<Vec<u8>> {
    let (ours, mut theirs) = UnixStream::pair()?;
    let options = ServerOptions {
        workers: 1,
        grace: Duration::ZERO,
        read_timeout: Duration::from_secs(5),
    };
    let mut server = Server::new(config, None, options, Arc::new(AtomicBool::new(false)));
    server.log.quiet = true;
    thread::scope(|scope| {
        let peer = scope.spawn(move || {
            // The server may stop reading (a malformed record) and close:
            // the rest of the input is then refused, which is fine.
            let _ = theirs.write_all(input);
            let _ = theirs.shutdown(Shutdown::Write);
            let mut received = Vec::new();
            let _ = theirs.read_to_end(&mut received);
            received
        });
        serve_connection(&server, Stream::Unix(ours));
        peer.join()
            .map_err(|_| io::Error::other("the peer thread panicked"))
    })
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
            for config in server.collected() {
                handler::collect_if_due(&config);
            }
        }
        thread::sleep(TICK);
    }
}

/// A protocol violation: the connection cannot go on.
#[derive(Debug)]
struct Malformed(String);

/// The reading half of a connection: records, one at a time.
struct Records {
    reader: BufReader<Incoming>,
}

#[derive(Clone, Copy, Debug)]
struct Header {
    kind: u8,
    id: u16,
    length: usize,
    padding: usize,
}

enum Next {
    Record(Header),
    /// The peer closed the connection between records: a normal end.
    Closed,
}

impl Records {
    /// Reads a record header; `Closed` if the connection ended first.
    fn header(&mut self) -> io::Result<Result<Next, Malformed>> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(Ok(Next::Closed));
        }
        let mut bytes = [0u8; 8];
        self.reader.read_exact(&mut bytes)?;
        if bytes[0] != VERSION_1 {
            return Ok(Err(Malformed(format!(
                "unsupported FastCGI version {}",
                bytes[0]
            ))));
        }
        Ok(Ok(Next::Record(Header {
            kind: bytes[1],
            id: u16::from_be_bytes([bytes[2], bytes[3]]),
            length: usize::from(u16::from_be_bytes([bytes[4], bytes[5]])),
            padding: usize::from(bytes[6]),
        })))
    }

    fn content(&mut self, header: &Header) -> io::Result<Vec<u8>> {
        let mut content = vec![0u8; header.length];
        self.reader.read_exact(&mut content)?;
        self.skip(header.padding)?;
        Ok(content)
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.reader).take(n as u64), &mut io::sink())?;
        if copied < n as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// The writing side, shared by the body reader (which may have to refuse a
/// second request on the connection) and the response.
struct Output {
    stream: Arc<Stream>,
}

impl Output {
    fn record(&self, kind: u8, id: u16, content: &[u8]) -> io::Result<()> {
        let padding = (8 - content.len() % 8) % 8;
        let [id_hi, id_lo] = id.to_be_bytes();
        let [len_hi, len_lo] = (content.len() as u16).to_be_bytes();
        let mut record = Vec::with_capacity(8 + content.len() + padding);
        record.extend_from_slice(&[
            VERSION_1,
            kind,
            id_hi,
            id_lo,
            len_hi,
            len_lo,
            padding as u8,
            0,
        ]);
        record.extend_from_slice(content);
        record.resize(record.len() + padding, 0);
        (&*self.stream).write_all(&record)
    }

    fn end_request(&self, id: u16, protocol_status: u8) -> io::Result<()> {
        self.record(END_REQUEST, id, &[0, 0, 0, 0, protocol_status, 0, 0, 0])
    }

    /// Answers FCGI_GET_VALUES: we take one request per connection.
    fn get_values(&self, server: &Server, query: &[u8]) -> io::Result<()> {
        let workers = server.options.workers.to_string();
        let mut answer = Vec::new();
        for (name, _) in decode_params(query).unwrap_or_default() {
            let value = match name.as_str() {
                "FCGI_MAX_CONNS" | "FCGI_MAX_REQS" => workers.as_str(),
                "FCGI_MPXS_CONNS" => "0",
                _ => continue,
            };
            encode_param(&mut answer, &name, value);
        }
        self.record(GET_VALUES_RESULT, 0, &answer)
    }
}

/// A request as it begins: its id, and whether the connection stays open.
struct Begun {
    id: u16,
    keep_conn: bool,
    params: Vec<(String, String)>,
}

fn serve_connection(server: &Server, stream: Stream) {
    let id = server.next_connection.fetch_add(1, Ordering::Relaxed);
    if stream
        .set_read_timeout(server.options.read_timeout)
        .is_err()
    {
        return;
    }
    let stream = Arc::new(stream);
    server
        .lock_connections()
        .insert(id, (Arc::clone(&stream), false));
    let mut records = Records {
        // Small: record headers and parameters go through it, while body
        // reads larger than it go straight to the socket. (A large one per
        // connection costs more than it saves: std zero-fills it on first
        // use, and glibc consolidates its heap for every allocation of
        // 64 KiB or more.)
        reader: BufReader::with_capacity(READ_BUFFER, Incoming(Arc::clone(&stream))),
    };
    let output = Output { stream };
    loop {
        if server.stopping.load(Ordering::SeqCst) {
            break;
        }
        let begun = match next_request(server, &mut records, &output) {
            Ok(Ok(Some(begun))) => begun,
            // Closed between requests, or cut at shutdown: nothing to say.
            Ok(Ok(None)) => break,
            Ok(Err(Malformed(why))) => {
                server
                    .log
                    .log("malformed", &format!("closing a FastCGI connection: {why}"));
                break;
            }
            Err(e) => {
                // An idle connection timing out, or a web server closing
                // one with our last answer unread (its client went away):
                // an ordinary end, not worth a line.
                let ordinary = matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionReset
                );
                if !ordinary {
                    server
                        .log
                        .log("read", &format!("FastCGI connection failed: {e}"));
                }
                break;
            }
        };
        server.set_busy(id, true);
        let keep_conn = begun.keep_conn;
        let keep = respond(server, &mut records, &output, begun);
        server.set_busy(id, false);
        if !keep || !keep_conn {
            break;
        }
    }
    linger(&mut records, &output);
    server.lock_connections().remove(&id);
}

/// Closes like nginx's lingering close. An answer given before the whole
/// body was read (413 from Content-Length) leaves body bytes unread; closing
/// on them makes the kernel reset the connection, and the web server may
/// lose the answer. So: stop writing, then read and discard until the web
/// server closes (it does once it has FCGI_END_REQUEST), for a bounded time
/// and amount.
fn linger(records: &mut Records, output: &Output) {
    const LIMIT: u64 = 64 << 20;
    const TIME: Duration = Duration::from_secs(5);
    output.stream.shutdown(Shutdown::Write);
    if output
        .stream
        .set_read_timeout(Duration::from_millis(500))
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + TIME;
    let mut drained = 0u64;
    let mut scratch = [0u8; 4096];
    while drained < LIMIT && Instant::now() < deadline {
        match records.reader.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n as u64,
        }
    }
}

/// Reads records up to the end of a request's PARAMS.
fn next_request(
    server: &Server,
    records: &mut Records,
    output: &Output,
) -> io::Result<Result<Option<Begun>, Malformed>> {
    let mut current: Option<(u16, bool)> = None;
    let mut params = Vec::new();
    loop {
        let header = match records.header()? {
            Ok(Next::Record(header)) => header,
            Ok(Next::Closed) if current.is_none() => return Ok(Ok(None)),
            Ok(Next::Closed) => {
                return Ok(Err(Malformed(
                    "connection closed inside a request's parameters".into(),
                )));
            }
            Err(malformed) => return Ok(Err(malformed)),
        };
        let content = records.content(&header)?;
        match (header.kind, current) {
            (GET_VALUES, _) if header.id == 0 => output.get_values(server, &content)?,
            (_, _) if header.id == 0 => {
                output.record(UNKNOWN_TYPE, 0, &[header.kind, 0, 0, 0, 0, 0, 0, 0])?
            }
            (BEGIN_REQUEST, None) => {
                if content.len() < 8 {
                    return Ok(Err(Malformed("short FCGI_BEGIN_REQUEST".into())));
                }
                let role = u16::from_be_bytes([content[0], content[1]]);
                if role != RESPONDER {
                    output.end_request(header.id, UNKNOWN_ROLE)?;
                    continue;
                }
                current = Some((header.id, content[2] & KEEP_CONN != 0));
            }
            (BEGIN_REQUEST, Some(_)) => output.end_request(header.id, CANT_MPX_CONN)?,
            (PARAMS, Some((id, keep_conn))) if header.id == id => {
                if content.is_empty() {
                    let Some(params) = decode_params(&params) else {
                        return Ok(Err(Malformed("malformed FCGI_PARAMS".into())));
                    };
                    return Ok(Ok(Some(Begun {
                        id,
                        keep_conn,
                        params,
                    })));
                }
                params.extend_from_slice(&content);
                if params.len() > MAX_PARAMS {
                    return Ok(Err(Malformed(format!(
                        "FCGI_PARAMS longer than {MAX_PARAMS} bytes"
                    ))));
                }
            }
            (ABORT_REQUEST, Some((id, _))) if header.id == id => {
                output.end_request(id, REQUEST_COMPLETE)?;
                current = None;
                params.clear();
            }
            // Records of a request already answered (a late abort; its
            // body was read to its end before this request began): they
            // need nothing.
            _ => {}
        }
    }
}

/// Runs the handler for one request. Returns whether the connection may
/// serve another: only when it answered the request, the peer asked to
/// keep the connection, and the request's STDIN has ended, so the next
/// byte read is the header of a record the web server wrote, never a byte
/// of a client's body.
fn respond(server: &Server, records: &mut Records, output: &Output, begun: Begun) -> bool {
    let mut body = Body {
        records,
        output,
        server,
        id: begun.id,
        left: 0,
        padding: 0,
        state: BodyState::Open,
    };
    let mut response = Stdout {
        output,
        id: begun.id,
        buffer: Vec::new(),
        started: false,
    };
    // A request with a body runs on a thread of its own at lower priority
    // (see receiving::lower_priority), so the worker keeps its priority for
    // the status polls it serves next.
    let bulk = begun
        .params
        .iter()
        .any(|(name, value)| name == "REQUEST_METHOD" && value == "POST");
    let config = server.request_config(&begun.params);
    let params = begun.params;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let serve = || {
            let mut request = Request::new(params, &mut body, true);
            match &config {
                Ok(None) => handler::answer(&server.config, &mut request, &mut response),
                Ok(Some(merged)) => handler::answer(merged, &mut request, &mut response),
                Err(err) => {
                    let head_only = request.method() == "HEAD";
                    Response::error(err).send(&mut response, head_only)
                }
            }
        };
        if !bulk {
            return serve();
        }
        thread::scope(|scope| {
            let receiving = scope.spawn(|| {
                crate::receiving::lower_priority();
                serve()
            });
            receiving
                .join()
                .unwrap_or_else(|panic| panic::resume_unwind(panic))
        })
    }));
    let answered = match outcome {
        Ok(result) => result.is_ok(),
        Err(_) if !response.started => {
            let err = HttpError::new(
                ErrorCode::Internal,
                "internal error; the details are in the server's log",
            );
            Response::error(&err).send(&mut response, false).is_ok()
        }
        Err(_) => false,
    };
    let clean = body.state != BodyState::Broken;
    let finished = answered
        && response.flush().is_ok()
        && output.record(STDOUT, begun.id, &[]).is_ok()
        && output.end_request(begun.id, REQUEST_COMPLETE).is_ok();
    // An answer may come before the body has ended (a 413 from
    // Content-Length, a malformed form, a clear): the reader may then be in
    // the middle of a STDIN record, whose rest is the client's bytes. Read
    // as record headers, they would be a request the client wrote itself
    // (request smuggling). So the rest of STDIN is read, record by record,
    // and discarded first; the answer is already on its way.
    finished && clean && begun.keep_conn && body.discard_rest()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    Open,
    Ended,
    /// Aborted, cut, or malformed: the connection cannot be trusted after.
    Broken,
}

/// The request body: the data of the request's STDIN records, as it comes.
struct Body<'a> {
    records: &'a mut Records,
    output: &'a Output,
    server: &'a Server,
    id: u16,
    left: usize,
    padding: usize,
    state: BodyState,
}

impl Body<'_> {
    /// Reads and discards what is left of this request's STDIN, record by
    /// record, up to its empty end record. False when the stream broke or
    /// the end did not come within [`DISCARD_LIMIT`] and [`DISCARD_TIME`]:
    /// the connection must then close.
    ///
    /// When the end record is already buffered, as after every request
    /// without a body (status polls), this costs no system call.
    fn discard_rest(&mut self) -> bool {
        // The time counts from the first wait on the socket, so a worker
        // that was not scheduled for a while still takes what has arrived.
        let mut deadline: Option<Instant> = None;
        let mut discarded = 0u64;
        let mut scratch = [0u8; 8192];
        let ended = loop {
            match self.state {
                BodyState::Ended => break true,
                BodyState::Broken => break false,
                BodyState::Open => {}
            }
            if discarded > DISCARD_LIMIT {
                break false;
            }
            // A read that has to wait for the socket waits the short time,
            // not the connection's read timeout.
            let needed = if self.left > 0 { 1 } else { 8 };
            if self.records.reader.buffer().len() < needed {
                match deadline {
                    Some(deadline) if Instant::now() >= deadline => break false,
                    Some(_) => {}
                    None => {
                        if self.output.stream.set_read_timeout(DISCARD_TIME).is_err() {
                            break false;
                        }
                        deadline = Some(Instant::now() + DISCARD_TIME);
                    }
                }
            }
            let step = if self.left == 0 {
                self.next_record().map(|_| 8)
            } else {
                self.read(&mut scratch)
            };
            match step {
                Ok(n) => discarded += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if deadline.is_some()
            && self
                .output
                .stream
                .set_read_timeout(self.server.options.read_timeout)
                .is_err()
        {
            return false;
        }
        ended
    }

    /// Fails the read with an error the upload answers and records: it
    /// travels inside the `io::Error`, code and all, through the parser
    /// (see `error_code::carried`).
    fn fail(&mut self, code: ErrorCode, message: &str) -> io::Error {
        self.state = BodyState::Broken;
        let err = if self.server.grace_over.load(Ordering::SeqCst) {
            HttpError::new(
                ErrorCode::Shutdown,
                "interrupted: the server shut down before the upload finished",
            )
        } else {
            HttpError::new(code, message)
        };
        io::Error::other(err)
    }

    /// Moves to the next STDIN record of this request; false at the end.
    fn next_record(&mut self) -> io::Result<bool> {
        loop {
            let header = match self.records.header() {
                Ok(Ok(Next::Record(header))) => header,
                Ok(Ok(Next::Closed)) | Err(_) => {
                    return Err(self.fail(
                        ErrorCode::Truncated,
                        "the web server closed the connection before the body was complete",
                    ));
                }
                Ok(Err(Malformed(why))) => {
                    return Err(self.fail(
                        ErrorCode::BadFastcgi,
                        &format!("malformed FastCGI stream: {why}"),
                    ));
                }
            };
            match header.kind {
                STDIN if header.id == self.id => {
                    if header.length == 0 {
                        self.records.skip(header.padding)?;
                        self.state = BodyState::Ended;
                        return Ok(false);
                    }
                    self.left = header.length;
                    self.padding = header.padding;
                    return Ok(true);
                }
                ABORT_REQUEST if header.id == self.id => {
                    self.records.skip(header.length + header.padding)?;
                    return Err(self.fail(ErrorCode::Aborted, "the web server aborted the request"));
                }
                BEGIN_REQUEST if header.id != self.id => {
                    self.records.skip(header.length + header.padding)?;
                    self.output.end_request(header.id, CANT_MPX_CONN)?;
                }
                _ => self.records.skip(header.length + header.padding)?,
            }
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state != BodyState::Open || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.next_record()? {
            return Ok(0);
        }
        let want = buf.len().min(self.left);
        let n = match self.records.reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(self.fail(
                    ErrorCode::Truncated,
                    "the web server closed the connection before the body was complete",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                return Err(self.fail(
                    ErrorCode::Truncated,
                    &format!("reading the body from the web server failed: {e}"),
                ));
            }
        };
        self.left -= n;
        if self.left == 0 {
            let padding = std::mem::take(&mut self.padding);
            self.records.skip(padding)?;
        }
        Ok(n)
    }
}

/// The response: CGI head and body in STDOUT records.
struct Stdout<'a> {
    output: &'a Output,
    id: u16,
    buffer: Vec<u8>,
    started: bool,
}

impl ResponseWriter for Stdout<'_> {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        self.started = true;
        write_cgi_head(&mut self.buffer, status, headers)?;
        Ok(self)
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_CONTENT - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == MAX_CONTENT {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // The head alone may exceed one record (an application's headers).
        for chunk in self.buffer.chunks(MAX_CONTENT) {
            self.output.record(STDOUT, self.id, chunk)?;
        }
        self.buffer.clear();
        Ok(())
    }
}

/// Decodes FastCGI name-value pairs; `None` if they are malformed.
fn decode_params(mut bytes: &[u8]) -> Option<Vec<(String, String)>> {
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        let first = *bytes.first()?;
        if first & 0x80 == 0 {
            *bytes = &bytes[1..];
            Some(usize::from(first))
        } else {
            let four: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            *bytes = &bytes[4..];
            Some((u32::from_be_bytes(four) & 0x7fff_ffff) as usize)
        }
    }
    let mut pairs = Vec::new();
    while !bytes.is_empty() {
        let name_len = length(&mut bytes)?;
        let value_len = length(&mut bytes)?;
        let name = bytes.get(..name_len)?;
        let value = bytes.get(name_len..name_len.checked_add(value_len)?)?;
        pairs.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        bytes = &bytes[name_len + value_len..];
    }
    Some(pairs)
}

/// Encodes one name-value pair.
fn encode_param(out: &mut Vec<u8>, name: &str, value: &str) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_short_and_long() {
        let mut bytes = Vec::new();
        let long = "v".repeat(300);
        encode_param(&mut bytes, "SHORT", "x");
        encode_param(&mut bytes, "LONG", &long);
        encode_param(&mut bytes, "EMPTY", "");
        let pairs = decode_params(&bytes).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("SHORT".to_string(), "x".to_string()),
                ("LONG".to_string(), long),
                ("EMPTY".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn merged_configurations_are_cached_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sources = ConfigSources {
            options: vec![("directory".into(), dir.path().display().to_string())],
            env: vec![("FILEUPLOAD_MAX_SIZE".into(), "100".into())],
        };
        let options = ServerOptions {
            workers: 1,
            grace: Duration::ZERO,
            read_timeout: Duration::from_secs(1),
        };
        let server = Server::new(
            Config::default(),
            Some(sources),
            options,
            Arc::new(AtomicBool::new(false)),
        );
        let params = |size: usize| {
            vec![
                ("REQUEST_METHOD".to_string(), "GET".to_string()),
                ("FILEUPLOAD_MAX_SIZE".to_string(), format!("{size}K")),
            ]
        };
        assert!(server.request_config(&params(0)[..1]).unwrap().is_none());
        let first = server.request_config(&params(1)).unwrap().unwrap();
        let again = server.request_config(&params(1)).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "merged once per set");
        assert_eq!(first.max_size, Some(1024));
        assert_eq!(first.directory, dir.path(), "the option beats the default");
        for size in 2..200 {
            let config = server.request_config(&params(size)).unwrap().unwrap();
            assert_eq!(config.max_size, Some(size as u64 * 1024));
            assert!(server.lock_merged().len() <= MAX_MERGED);
        }
    }

    #[test]
    fn malformed_params_are_refused() {
        for bad in [
            &[5u8][..],
            &[2, 2, b'a'],
            &[0x80, 0, 0],
            &[0xff, 0xff, 0xff, 0xff, 1, b'a'],
        ] {
            assert_eq!(decode_params(bad), None, "{bad:?}");
        }
        assert_eq!(decode_params(&[]), Some(vec![]));
    }
}
