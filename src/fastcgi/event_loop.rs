//! The event loop: `workers` threads share one epoll instance that holds
//! every connection not running a bulk request. Each thread accepts, reads
//! whatever a peer has sent, assembles requests (see [`super::assembly`]),
//! answers quick requests (status polls, clears, `/upload/new`) itself,
//! and hands bulk ones (uploads) to [`super::bulk`]; a connection comes
//! back here after its upload.
//!
//! So a connection that sends nothing, or sends its parameters a byte at a
//! time, holds no thread: only its socket, its entry here (about a hundred
//! bytes) and the bytes it has sent. Its time is bounded all the same: an
//! idle kept-alive connection is closed after [`IDLE_TIMEOUT`], a request
//! whose parameters (or, for a quick request, whose short body) are not
//! complete within `header_timeout` of its first byte is closed.
//!
//! A quick request is read whole, body included (up to [`QUICK_BODY`]),
//! before it is answered: answering never waits on a peer's bytes, only
//! on the pool (a status read) and on writing the answer. Several threads
//! rather than one so that a slow pool (a network file system) or a stuck
//! writer holds up one of them, not every connection; only as many as
//! there are cores wait at a time, the others standing by to replace a
//! held-up one (see [`super::rotation`]). Each connection is
//! registered `EPOLLONESHOT`, so exactly one thread at a time has it, and
//! a poll is answered by the thread that read it: one wake-up, as with a
//! thread per connection, where a loop handing requests to a pool would
//! add a second (measured: twice the poll p99 under the load test).
//!
//! Closing after an answer given early (the peer may still be sending a
//! body) lingers here too, like nginx's lingering close: the writing side
//! is shut, and what arrives is read and discarded until the peer closes,
//! for at most [`LINGER_TIME`] and [`LINGER_LIMIT`] bytes. Closing on
//! unread bytes would make the kernel reset the connection, and the web
//! server could lose the answer.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};

use super::assembly::{Assembly, Begun};
use super::bulk;
use super::connection::{self, After, Connection, Kind};
use super::listener::{Listener, Stream};
use super::record::{HEADER_LEN, Header, Malformed, STDIN};
use super::rotation::Rotation;
use super::server::Server;
use crate::handler;
use crate::http::Request;

/// How long a kept-alive connection may wait for its next request. Longer
/// than nginx's upstream `keepalive_timeout` (60 s), so that nginx, not
/// the daemon, closes idle connections: a connection closed under nginx
/// as it sends a request costs that request a 502.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A quick request's body is read here whole up to this; a longer one
/// runs as bulk work instead.
const QUICK_BODY: usize = 64 * 1024;
/// Lingering after a close: at most this long, and this much.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_LIMIT: u64 = 64 << 20;
/// How often timeouts are looked at, and the longest wait in epoll.
const TICK: Duration = Duration::from_millis(100);
/// Reads per readiness event: a peer that sends without pause does not
/// keep its thread from the others.
const READS_PER_EVENT: usize = 4;
const READ_CHUNK: usize = 64 * 1024;

/// The epoll keys of the listener and the waker; connections are keyed by
/// their id, which counts up from 0 and never reaches these.
const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;

/// A connection in the loop, and what it is waiting for.
struct Waiting {
    connection: Connection,
    assembly: Assembly,
    phase: Phase,
}

enum Phase {
    /// Between requests.
    Idle { since: Instant },
    /// A request has begun: its parameters are owed by `deadline`.
    Header { deadline: Instant },
    /// A quick request's parameters are complete; its body is owed.
    Collect { begun: Begun, deadline: Instant },
    /// Closing: read and discard until the peer closes.
    Linger { deadline: Instant, drained: u64 },
}

impl Waiting {
    fn new(connection: Connection) -> Waiting {
        Waiting {
            connection,
            assembly: Assembly::default(),
            phase: Phase::Idle {
                since: Instant::now(),
            },
        }
    }

    fn lingering(connection: Connection) -> Waiting {
        Waiting {
            connection,
            assembly: Assembly::default(),
            phase: Phase::Linger {
                deadline: Instant::now() + LINGER_TIME,
                drained: 0,
            },
        }
    }
}

/// The loop's state, shared by its threads.
pub(super) struct EventLoop {
    server: Arc<Server>,
    listener: Arc<Listener>,
    epoll: OwnedFd,
    /// The connections no thread has now (each is armed in epoll).
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Connections the bulk threads give back.
    returns: Mutex<Receiver<After>>,
    /// While accept fails for want of descriptors, the listener is not
    /// armed until then.
    listener_paused: Mutex<Option<Instant>>,
    last_sweep: Mutex<Instant>,
    /// Which threads wait for events (see [`super::rotation`]).
    rotation: Rotation,
}

/// What reading a connection came to.
enum Read {
    More,
    /// The peer closed its side.
    Ended,
    /// Reset, or failed: nothing is owed to it.
    Broken,
}

impl EventLoop {
    pub(super) fn new(server: Arc<Server>, listener: Arc<Listener>) -> io::Result<EventLoop> {
        listener.set_nonblocking()?;
        let returns = server
            .take_returns()
            .ok_or_else(|| io::Error::other("the event loop is made once"))?;
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let once = EventFlags::IN | EventFlags::ONESHOT;
        epoll::add(&epoll, listener.as_fd(), EventData::new_u64(LISTENER), once)?;
        epoll::add(&epoll, &server.waker, EventData::new_u64(WAKER), once)?;
        Ok(EventLoop {
            listener,
            epoll,
            waiting: Mutex::new(HashMap::new()),
            returns: Mutex::new(returns),
            listener_paused: Mutex::new(None),
            last_sweep: Mutex::new(Instant::now()),
            rotation: Rotation::new(server.options.workers, Rotation::cores()),
            server,
        })
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of the loop's threads: runs until the server stops.
    pub(super) fn run(&self, me: usize) {
        let stopping = || self.server.is_stopping();
        if !self.rotation.join(stopping) {
            return;
        }
        // One event a wait: a thread handles what it took in turn, so a
        // batch would leave the rest waiting behind a poll that waits on a
        // slow file system, while the other threads sit idle.
        let mut events: Vec<Event> = Vec::with_capacity(1);
        let mut scratch = vec![0u8; READ_CHUNK];
        let tick = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: TICK.subsec_nanos().into(),
        };
        while !self.server.is_stopping() {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&tick),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    self.server
                        .log
                        .log("epoll", &format!("waiting for connections failed: {e}"));
                    std::thread::sleep(TICK);
                    continue;
                }
            }
            self.rotation.begin(me);
            for event in &events {
                match event.data.u64() {
                    LISTENER => self.accept_all(),
                    WAKER => self.take_back(&mut scratch),
                    id => self.ready(id, &mut scratch),
                }
            }
            self.sweep_if_due();
            if self.rotation.end(me) && !self.rotation.join(stopping) {
                return;
            }
        }
    }

    /// Closes every connection still here (at shutdown).
    pub(super) fn close_all(&self) {
        self.waiting().clear();
    }

    fn accept_all(&self) {
        loop {
            match self.listener.accept() {
                Ok(stream) => {
                    let connection = self.new_connection(stream);
                    self.arm(Waiting::new(connection), true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE): stop
                    // accepting for a moment, while requests finish and
                    // free some, and go on.
                    self.server
                        .log
                        .log("accept", &format!("cannot accept a connection: {e}"));
                    *self
                        .listener_paused
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + TICK);
                    return;
                }
            }
        }
        self.rearm_listener();
    }

    fn rearm_listener(&self) {
        let _ = epoll::modify(
            &self.epoll,
            self.listener.as_fd(),
            EventData::new_u64(LISTENER),
            EventFlags::IN | EventFlags::ONESHOT,
        );
    }

    fn new_connection(&self, stream: Stream) -> Connection {
        // A blocking read (a body, on a bulk thread) or write waits for the
        // web server at most this long; set once here, not per request (a
        // system call each, on every poll). The body reader's discard may
        // shorten it for a moment and sets it back.
        let _ = stream.set_read_timeout(self.server.options.body_timeout);
        let _ = stream.set_write_timeout(self.server.options.body_timeout);
        Connection {
            id: self
                .server
                .next_connection
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stream: Arc::new(stream),
            pending: Vec::new(),
        }
    }

    /// Connections back from bulk requests.
    fn take_back(&self, scratch: &mut [u8]) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.server.waker, &mut counter);
        let back: Vec<After> = {
            let returns = self.returns.lock().unwrap_or_else(PoisonError::into_inner);
            returns.try_iter().collect()
        };
        let _ = epoll::modify(
            &self.epoll,
            &self.server.waker,
            EventData::new_u64(WAKER),
            EventFlags::IN | EventFlags::ONESHOT,
        );
        for after in back {
            // Out of epoll while its request ran: added again. The next
            // request may have come with the last one's end.
            let waiting = match after {
                After::Keep(connection) => Waiting::new(connection),
                After::Linger(connection) => Waiting::lingering(connection),
            };
            if let Some(waiting) = self.registered(waiting) {
                self.advance(waiting, Read::More, scratch);
            }
        }
    }

    /// Adds a connection back from a bulk request to epoll, disarmed, for
    /// the caller to go on with; `None` if it cannot be added (closed).
    fn registered(&self, waiting: Waiting) -> Option<Waiting> {
        epoll::add(
            &self.epoll,
            waiting.connection.stream.as_fd(),
            EventData::new_u64(waiting.connection.id),
            EventFlags::ONESHOT,
        )
        .ok()?;
        Some(waiting)
    }

    /// Puts a connection in the map and arms it, so that the next thread
    /// its peer wakes finds it (`add`: a new one, else it is registered).
    fn arm(&self, waiting: Waiting, add: bool) {
        let id = waiting.connection.id;
        // Held across the insert: a sweep may close the map's copy at once,
        // and the descriptor must not be reused before epoll is told.
        let stream = Arc::clone(&waiting.connection.stream);
        self.waiting().insert(id, waiting);
        let flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ONESHOT;
        let data = EventData::new_u64(id);
        let armed = if add {
            epoll::add(&self.epoll, stream.as_fd(), data, flags)
        } else {
            epoll::modify(&self.epoll, stream.as_fd(), data, flags)
        };
        if armed.is_err() {
            self.waiting().remove(&id);
        }
    }

    /// A connection's peer sent something (or closed).
    fn ready(&self, id: u64, scratch: &mut [u8]) {
        let Some(mut waiting) = self.waiting().remove(&id) else {
            return;
        };
        let mut read = Read::More;
        for _ in 0..READS_PER_EVENT {
            match waiting.connection.stream.read_now(scratch) {
                Ok(0) => {
                    read = Read::Ended;
                    break;
                }
                Ok(n) => {
                    match &mut waiting.phase {
                        Phase::Linger { drained, .. } => *drained += n as u64,
                        _ => waiting.connection.pending.extend_from_slice(&scratch[..n]),
                    }
                    // A short read took all there was: asking again would
                    // only find `WouldBlock`, a system call on every poll.
                    // Whatever comes later wakes the connection once it is
                    // armed again (level-triggered), as would an end.
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    read = Read::Broken;
                    break;
                }
            }
        }
        if let Read::Broken = read {
            return; // dropped: closed
        }
        self.advance(waiting, read, scratch);
    }

    /// Takes what a connection's bytes allow: management records answered,
    /// a request begun, a quick request's body collected and the request
    /// answered, a bulk request handed over; then arms the connection
    /// again, or closes it.
    fn advance(&self, mut waiting: Waiting, read: Read, scratch: &mut [u8]) {
        let ended = matches!(read, Read::Ended);
        loop {
            let now = Instant::now();
            match &mut waiting.phase {
                Phase::Linger { drained, .. } => {
                    waiting.connection.pending.clear();
                    if ended || *drained >= LINGER_LIMIT {
                        return;
                    }
                    return self.arm(waiting, false);
                }
                Phase::Idle { .. } | Phase::Header { .. } => {
                    let mut replies = Vec::new();
                    let step = waiting.assembly.step(
                        &mut waiting.connection.pending,
                        &mut replies,
                        self.server.options.workers + self.server.options.max_uploads,
                    );
                    if !replies.is_empty() && !write_all_now(&waiting.connection.stream, &replies) {
                        return;
                    }
                    let begun = match step {
                        Ok(begun) => begun,
                        Err(why) => return self.malformed(&why),
                    };
                    let owed =
                        waiting.assembly.in_request() || !waiting.connection.pending.is_empty();
                    let deadline = match waiting.phase {
                        Phase::Header { deadline } => deadline,
                        _ => now + self.server.options.header_timeout,
                    };
                    match begun {
                        None if ended => {
                            if let Err(why) = waiting.assembly.closed(&waiting.connection.pending) {
                                self.malformed(&why);
                            }
                            return;
                        }
                        None => {
                            waiting.phase = if owed {
                                Phase::Header { deadline }
                            } else {
                                Phase::Idle { since: now }
                            };
                            return self.arm(waiting, false);
                        }
                        Some(begun) => {
                            let (begun, quick) = classify(&self.server, begun);
                            if !quick {
                                return self.hand_over(waiting, begun, scratch);
                            }
                            waiting.phase = Phase::Collect { begun, deadline };
                        }
                    }
                }
                Phase::Collect { begun, .. } => {
                    let id = begun.id;
                    let complete = body_end(&waiting.connection.pending, id).is_some();
                    let too_long = waiting.connection.pending.len() > QUICK_BODY;
                    if !complete && !too_long {
                        if ended {
                            return self.malformed(&Malformed(
                                "connection closed before the request's body ended".into(),
                            ));
                        }
                        return self.arm(waiting, false);
                    }
                    let idle = Phase::Idle { since: now };
                    let Phase::Collect { begun, .. } = std::mem::replace(&mut waiting.phase, idle)
                    else {
                        return;
                    };
                    if !complete {
                        return self.hand_over(waiting, begun, scratch);
                    }
                    let after =
                        connection::run(&self.server, waiting.connection, begun, None, Kind::Quick);
                    waiting = match after {
                        After::Keep(_) if ended => return,
                        After::Keep(connection) => Waiting::new(connection),
                        After::Linger(connection) => Waiting::lingering(connection),
                    };
                    // Go on: the next request may be read already.
                }
            }
        }
    }

    fn malformed(&self, why: &Malformed) {
        self.server.log.log(
            "malformed",
            &format!("closing a FastCGI connection: {}", why.0),
        );
    }

    /// Takes a connection out of epoll and gives its request to a bulk
    /// thread; one refused (`max_uploads`) is answered here.
    fn hand_over(&self, waiting: Waiting, begun: Begun, scratch: &mut [u8]) {
        let _ = epoll::delete(&self.epoll, waiting.connection.stream.as_fd());
        let Some(refused) = bulk::dispatch(&self.server, waiting.connection, begun) else {
            return;
        };
        let after = connection::run(
            &self.server,
            refused.connection,
            refused.begun,
            refused.refusal,
            Kind::Quick,
        );
        if let Some(waiting) = self.registered(match after {
            After::Keep(connection) => Waiting::new(connection),
            After::Linger(connection) => Waiting::lingering(connection),
        }) {
            self.advance(waiting, Read::More, scratch);
        }
    }

    /// Closes connections whose time is up, and arms the listener again;
    /// one thread does it each tick.
    fn sweep_if_due(&self) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_sweep.try_lock() else {
                return;
            };
            if now.duration_since(*last) < TICK {
                return;
            }
            *last = now;
        }
        let resume = {
            let mut paused = self
                .listener_paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let resume = paused.is_some_and(|until| now >= until);
            if resume {
                *paused = None;
            }
            resume
        };
        if resume {
            self.rearm_listener();
        }
        let mut late = 0usize;
        // Dropped outside the lock: closing takes a system call each.
        let mut closed = Vec::new();
        self.waiting().retain(|_, waiting| {
            let keep = match &waiting.phase {
                Phase::Idle { since } => now.duration_since(*since) < IDLE_TIMEOUT,
                Phase::Header { deadline } | Phase::Collect { deadline, .. } => {
                    let keep = now < *deadline;
                    late += usize::from(!keep);
                    keep
                }
                Phase::Linger { deadline, drained } => now < *deadline && *drained < LINGER_LIMIT,
            };
            if !keep {
                closed.push(Arc::clone(&waiting.connection.stream));
            }
            keep
        });
        drop(closed);
        if late > 0 {
            self.server.log.log(
                "slow",
                &format!(
                    "closed {late} FastCGI connection(s) that did not send a whole request \
                     within header_timeout ({} s)",
                    self.server.options.header_timeout.as_secs_f64()
                ),
            );
        }
    }
}

/// Whether a request is quick (see [`handler::is_quick`]), by the daemon's
/// own configuration: the loop does not read settings a request brings.
fn classify(server: &Server, begun: Begun) -> (Begun, bool) {
    let Begun {
        id,
        keep_conn,
        params,
    } = begun;
    let mut nothing = io::empty();
    let request = Request::new(params, &mut nothing, true);
    let quick = handler::is_quick(server.service.config(), &request);
    let params = request.into_vars();
    (
        Begun {
            id,
            keep_conn,
            params,
        },
        quick,
    )
}

/// Where request `id`'s body ends in `pending` (just past its empty STDIN
/// record), if it is all there. Other records are stepped over: the body
/// reader skips them too.
fn body_end(pending: &[u8], id: u16) -> Option<usize> {
    let mut at = 0;
    while let Some(head) = pending.get(at..)?.first_chunk::<HEADER_LEN>() {
        let header = Header::decode(*head).ok()?;
        let next = at + HEADER_LEN + header.length + header.padding;
        if pending.len() < next {
            return None;
        }
        if header.kind == STDIN && header.id == id && header.length == 0 {
            return Some(next);
        }
        at = next;
    }
    None
}

/// Writes `bytes` without waiting; false if they do not all fit at once
/// (the peer does not read its answers: it is not worth a thread).
fn write_all_now(stream: &Stream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match stream.write_now(bytes) {
            Ok(0) | Err(_) => return false,
            Ok(n) => bytes = &bytes[n..],
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::record::{PARAMS, encode_record};

    #[test]
    fn a_body_ends_at_its_empty_stdin_record() {
        let mut pending = encode_record(STDIN, 1, b"abc");
        pending.extend(encode_record(PARAMS, 2, b"other")); // skipped
        assert_eq!(body_end(&pending, 1), None);
        pending.extend(encode_record(STDIN, 2, &[])); // another request's
        assert_eq!(body_end(&pending, 1), None);
        let end = encode_record(STDIN, 1, &[]);
        let at = pending.len() + end.len();
        pending.extend(end);
        pending.extend(b"next");
        assert_eq!(body_end(&pending, 1), Some(at));
        assert_eq!(body_end(&pending[..at - 1], 1), None, "a cut end record");
    }
}
