//! The event loop: one thread, with epoll, holds every connection that is
//! not running a request. It accepts, reads whatever each peer has sent,
//! assembles requests (see [`super::assembly`]), and hands each one whose
//! parameters are complete to the threads that run requests (see
//! [`super::workers`]); a connection comes back here after its request.
//!
//! So a connection that sends nothing, or sends its parameters a byte at a
//! time, holds no thread: only its socket, its entry here (about a hundred
//! bytes) and the bytes it has sent. Its time is bounded all the same: an
//! idle kept-alive connection is closed after [`IDLE_TIMEOUT`], a request
//! whose parameters (or, for a quick request, whose short body) are not
//! complete within `header_timeout` of its first byte is closed.
//!
//! A quick request (a status poll) is taken here whole, body included (up
//! to [`QUICK_BODY`]), before a worker sees it: the workers that answer
//! polls never wait on a peer's bytes. The loop itself never blocks: it
//! reads and writes with `MSG_DONTWAIT`, and never touches the pool.
//!
//! Closing after an answer given early (the peer may still be sending a
//! body) lingers here too, like nginx's lingering close: the writing side
//! is shut, and what arrives is read and discarded until the peer closes,
//! for at most [`LINGER_TIME`] and [`LINGER_LIMIT`] bytes. Closing on
//! unread bytes would make the kernel reset the connection, and the web
//! server could lose the answer.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};

use super::assembly::{Assembly, Begun};
use super::connection::{After, Connection};
use super::listener::{Listener, Stream};
use super::record::{HEADER_LEN, Header, STDIN};
use super::server::Server;
use super::workers;
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
/// keep the loop from the others.
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

/// The loop's state.
pub(super) struct EventLoop {
    server: Arc<Server>,
    listener: Arc<Listener>,
    epoll: std::os::fd::OwnedFd,
    waiting: HashMap<u64, Waiting>,
    /// While accept fails for want of descriptors, the listener is out of
    /// epoll until then.
    listener_paused: Option<Instant>,
    scratch: Vec<u8>,
    /// Connections the threads give back.
    returns: Receiver<After>,
}

impl EventLoop {
    pub(super) fn new(server: Arc<Server>, listener: Arc<Listener>) -> io::Result<EventLoop> {
        listener.set_nonblocking()?;
        let returns = server
            .take_returns()
            .ok_or_else(|| io::Error::other("the event loop runs once"))?;
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            listener.as_fd(),
            EventData::new_u64(LISTENER),
            EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &server.waker,
            EventData::new_u64(WAKER),
            EventFlags::IN,
        )?;
        Ok(EventLoop {
            server,
            listener,
            epoll,
            waiting: HashMap::new(),
            listener_paused: None,
            scratch: vec![0; READ_CHUNK],
            returns,
        })
    }

    /// Runs until the server stops; the connections still here are then
    /// closed.
    pub(super) fn run(mut self) {
        let mut events: Vec<Event> = Vec::with_capacity(256);
        let tick = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: TICK.subsec_nanos().into(),
        };
        let mut last_sweep = Instant::now();
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
            for event in &events {
                match event.data.u64() {
                    LISTENER => self.accept_all(),
                    WAKER => self.take_back(),
                    id => self.readable(id),
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= TICK {
                last_sweep = now;
                self.sweep(now);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok(stream) => self.adopt(Waiting::new(self.new_connection(stream))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
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
                    let _ = epoll::delete(&self.epoll, self.listener.as_fd());
                    self.listener_paused = Some(Instant::now() + TICK);
                    return;
                }
            }
        }
    }

    fn new_connection(&self, stream: Stream) -> Connection {
        // Writes wait for the web server at most this long (it reads its
        // upstreams at once; only a stuck peer waits).
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

    /// Connections back from a request.
    fn take_back(&mut self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.server.waker, &mut counter);
        while let Ok(after) = self.returns.try_recv() {
            let waiting = match after {
                After::Keep(connection) => Waiting::new(connection),
                After::Linger(connection) => Waiting {
                    connection,
                    assembly: Assembly::default(),
                    phase: Phase::Linger {
                        deadline: Instant::now() + LINGER_TIME,
                        drained: 0,
                    },
                },
            };
            let id = waiting.connection.id;
            let has_bytes = !waiting.connection.pending.is_empty();
            self.adopt(waiting);
            // The next request may have come with the last one's end.
            if has_bytes {
                self.advance(id);
            }
        }
    }

    fn adopt(&mut self, waiting: Waiting) {
        let id = waiting.connection.id;
        let added = epoll::add(
            &self.epoll,
            waiting.connection.stream.as_fd(),
            EventData::new_u64(id),
            EventFlags::IN | EventFlags::RDHUP,
        );
        if added.is_ok() {
            self.waiting.insert(id, waiting);
        }
    }

    fn readable(&mut self, id: u64) {
        let Some(waiting) = self.waiting.get_mut(&id) else {
            return;
        };
        let mut ended = false;
        for _ in 0..READS_PER_EVENT {
            match waiting.connection.stream.read_now(&mut self.scratch) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => match &mut waiting.phase {
                    Phase::Linger { drained, .. } => *drained += n as u64,
                    _ => waiting
                        .connection
                        .pending
                        .extend_from_slice(&self.scratch[..n]),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // A reset: the peer is gone, with nothing owed to it.
                    self.waiting.remove(&id);
                    return;
                }
            }
        }
        if !ended {
            self.advance(id);
            return;
        }
        // The peer closed. What it sent before still counts: a request
        // and its end may come just before a close.
        self.advance(id);
        if let Some(waiting) = self.waiting.remove(&id) {
            let clean = match &waiting.phase {
                Phase::Idle { .. } => waiting.assembly.closed(&waiting.connection.pending),
                Phase::Linger { .. } => Ok(()),
                Phase::Header { .. } | Phase::Collect { .. } => waiting
                    .assembly
                    .closed(&waiting.connection.pending)
                    .and(Err(super::record::Malformed(
                        "connection closed before the request was complete".into(),
                    ))),
            };
            if let Err(why) = clean {
                self.server.log.log(
                    "malformed",
                    &format!("closing a FastCGI connection: {}", why.0),
                );
            }
        }
    }

    /// Takes what a connection's bytes allow: management records answered,
    /// a request begun, a quick request's body collected, a complete
    /// request handed to a thread.
    fn advance(&mut self, id: u64) {
        let Some(waiting) = self.waiting.get_mut(&id) else {
            return;
        };
        if let Phase::Linger { .. } = waiting.phase {
            waiting.connection.pending.clear();
            return;
        }
        if let Phase::Idle { .. } | Phase::Header { .. } = waiting.phase {
            let mut replies = Vec::new();
            let step = waiting.assembly.step(
                &mut waiting.connection.pending,
                &mut replies,
                self.server.options.workers + self.server.options.max_uploads,
            );
            if !replies.is_empty() && !write_all_now(&waiting.connection.stream, &replies) {
                self.waiting.remove(&id);
                return;
            }
            let begun = match step {
                Err(why) => {
                    self.server.log.log(
                        "malformed",
                        &format!("closing a FastCGI connection: {}", why.0),
                    );
                    self.waiting.remove(&id);
                    return;
                }
                Ok(begun) => begun,
            };
            let owed = waiting.assembly.in_request() || !waiting.connection.pending.is_empty();
            let now = Instant::now();
            let deadline = match waiting.phase {
                Phase::Header { deadline } => deadline,
                _ => now + self.server.options.header_timeout,
            };
            match begun {
                None if owed => waiting.phase = Phase::Header { deadline },
                None => waiting.phase = Phase::Idle { since: now },
                Some(begun) => {
                    let (begun, quick) = classify(&self.server, begun);
                    if !quick {
                        return self.hand_over(id, begun, false);
                    }
                    waiting.phase = Phase::Collect { begun, deadline };
                }
            }
        }
        let Some(waiting) = self.waiting.get(&id) else {
            return;
        };
        if let Phase::Collect { begun, .. } = &waiting.phase {
            let pending = &waiting.connection.pending;
            match body_end(pending, begun.id) {
                Some(_) => self.take_collected(id, true),
                None if pending.len() > QUICK_BODY => self.take_collected(id, false),
                None => {}
            }
        }
    }

    /// Hands a connection in `Collect` to a thread.
    fn take_collected(&mut self, id: u64, quick: bool) {
        let Some(waiting) = self.waiting.get_mut(&id) else {
            return;
        };
        let idle = Phase::Idle {
            since: Instant::now(),
        };
        if let Phase::Collect { begun, .. } = std::mem::replace(&mut waiting.phase, idle) {
            self.hand_over(id, begun, quick);
        }
    }

    /// Takes a connection out of the loop and runs its request.
    fn hand_over(&mut self, id: u64, begun: Begun, quick: bool) {
        let Some(waiting) = self.waiting.remove(&id) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, waiting.connection.stream.as_fd());
        workers::dispatch(&self.server, waiting.connection, begun, quick);
    }

    /// Closes connections whose time is up, and lets the listener in again.
    fn sweep(&mut self, now: Instant) {
        if self.listener_paused.is_some_and(|until| now >= until) {
            self.listener_paused = None;
            let _ = epoll::add(
                &self.epoll,
                self.listener.as_fd(),
                EventData::new_u64(LISTENER),
                EventFlags::IN,
            );
        }
        let mut late = 0usize;
        self.waiting.retain(|_, waiting| match &waiting.phase {
            Phase::Idle { since } => now.duration_since(*since) < IDLE_TIMEOUT,
            Phase::Header { deadline } | Phase::Collect { deadline, .. } => {
                let keep = now < *deadline;
                late += usize::from(!keep);
                keep
            }
            Phase::Linger { deadline, drained } => now < *deadline && *drained < LINGER_LIMIT,
        });
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
