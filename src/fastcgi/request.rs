//! One request on a connection, once its parameters are assembled (see
//! [`super::assembly`]): running the handler on it (`respond`), its body
//! as a reader of STDIN records ([`Body`]) and its answer as a writer of
//! STDOUT records ([`Stdout`]).
//!
//! A kept connection (`FCGI_KEEP_CONN`) serves its next request only once
//! the current one's STDIN has ended. An answer may come first (a 413
//! from `Content-Length`, a malformed form, a clear); the reader is then
//! inside a STDIN record whose rest is the client's bytes, and reading
//! those as record headers would serve whatever request a client hid in
//! its upload. So the rest is read and discarded record by record, at most
//! 4 MiB within about a second (`DISCARD_LIMIT`, `DISCARD_TIME`), or the
//! connection is closed.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::assembly::Begun;
use super::connection::{Output, Reader};
use super::record::{
    ABORT_REQUEST, BEGIN_REQUEST, CANT_MPX_CONN, END_REQUEST, MAX_CONTENT, Malformed, Next,
    REQUEST_COMPLETE, STDIN, STDOUT, encode_record, end_request_body,
};
use super::server::Server;
use crate::error_code::ErrorCode;
use crate::handler;
use crate::http::{HttpError, Request, Response, ResponseWriter, write_cgi_head};

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

/// Runs the handler for one request. Returns whether the connection may
/// serve another: only when it answered the request, the peer asked to
/// keep the connection, and the request's STDIN has ended, so the next
/// byte read is the header of a record the web server wrote, never a byte
/// of a client's body.
pub(super) fn respond(
    server: &Server,
    records: &mut Reader,
    output: &Output,
    begun: Begun,
    refusal: Option<HttpError>,
) -> bool {
    let mut body = Body {
        records,
        output,
        server,
        id: begun.id,
        left: 0,
        padding: 0,
        state: BodyState::Open,
        failure: None,
    };
    let mut response = Stdout {
        output,
        id: begun.id,
        buffer: Vec::new(),
    };
    let refused = refusal.is_some();
    let config = match refusal {
        Some(err) => Err(err),
        None => server.settings.request_config(&begun.params, &server.log),
    };
    let mut request = Request::new(begun.params, &mut body, true);
    let outcome = handler::guarded(&mut response, |response| match &config {
        Ok(None) => handler::answer(&server.service, &mut request, response),
        Ok(Some(merged)) => handler::answer(merged, &mut request, response),
        Err(err) => {
            let head_only = request.method() == "HEAD";
            Response::error(err).send(response, head_only)
        }
    });
    drop(request);
    let answered = outcome.is_ok();
    let clean = body.state != BodyState::Broken;
    let finished = answered && response.finish(REQUEST_COMPLETE).is_ok();
    // An answer may come before the body has ended (a 413 from
    // Content-Length, a malformed form, a clear): the reader may then be in
    // the middle of a STDIN record, whose rest is the client's bytes. Read
    // as record headers, they would be a request the client wrote itself
    // (request smuggling). So the rest of STDIN is read, record by record,
    // and discarded first; the answer is already on its way.
    // A refused request's body is not waited for: the connection closes.
    finished && clean && !refused && begun.keep_conn && body.discard_rest()
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
    records: &'a mut Reader,
    output: &'a Output,
    server: &'a Server,
    id: u16,
    left: usize,
    padding: usize,
    state: BodyState,
    /// Why the body broke, for the upload's answer and status.
    failure: Option<HttpError>,
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
            if self.records.buffered() < needed {
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
                .set_read_timeout(self.server.options.body_timeout)
                .is_err()
        {
            return false;
        }
        ended
    }

    /// Breaks the body: records why, as the error the upload answers and
    /// records (see [`Body::failure`](crate::http::Body::failure)), and
    /// returns the `io::Error` that stops the reader, which carries only
    /// the message.
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
        let signal = io::Error::other(err.message.clone());
        self.failure.get_or_insert(err);
        signal
    }

    fn closed(&mut self) -> io::Error {
        self.fail(
            ErrorCode::Truncated,
            "the web server closed the connection before the body was complete",
        )
    }

    /// A failed read of the socket, as the upload reports it: a wait past
    /// the read timeout is the client's slowness, anything else a cut.
    fn broken(&mut self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::Interrupted => e,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                let waited = self.server.options.body_timeout.as_secs_f64();
                self.fail(
                    ErrorCode::TooSlow,
                    &format!("no bytes of the body came for {waited} s (body_timeout)"),
                )
            }
            io::ErrorKind::UnexpectedEof => self.closed(),
            _ => self.fail(
                ErrorCode::Truncated,
                &format!("reading the body from the web server failed: {e}"),
            ),
        }
    }

    /// Skips `n` bytes of the stream, failing the body as a read would.
    fn skip(&mut self, n: usize) -> io::Result<()> {
        self.records.skip(n).map_err(|e| self.broken(e))
    }

    /// Moves to the next STDIN record of this request; false at the end.
    fn next_record(&mut self) -> io::Result<bool> {
        loop {
            let header = match self.records.header() {
                Ok(Ok(Next::Record(header))) => header,
                Ok(Ok(Next::Closed)) => return Err(self.closed()),
                Err(e) => return Err(self.broken(e)),
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
                        self.skip(header.padding)?;
                        self.state = BodyState::Ended;
                        return Ok(false);
                    }
                    self.left = header.length;
                    self.padding = header.padding;
                    return Ok(true);
                }
                ABORT_REQUEST if header.id == self.id => {
                    self.skip(header.length + header.padding)?;
                    return Err(self.fail(ErrorCode::Aborted, "the web server aborted the request"));
                }
                BEGIN_REQUEST if header.id != self.id => {
                    self.skip(header.length + header.padding)?;
                    self.output.end_request(header.id, CANT_MPX_CONN)?;
                }
                _ => self.skip(header.length + header.padding)?,
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
        let n = match self.records.read_raw(&mut buf[..want]) {
            Ok(0) => return Err(self.closed()),
            Ok(n) => n,
            Err(e) => return Err(self.broken(e)),
        };
        self.left -= n;
        if self.left == 0 {
            let padding = std::mem::take(&mut self.padding);
            self.skip(padding)?;
        }
        Ok(n)
    }
}

impl crate::http::Body for Body<'_> {
    fn failure(&mut self) -> Option<HttpError> {
        self.failure.clone()
    }
}

/// The response: CGI head and body in STDOUT records.
struct Stdout<'a> {
    output: &'a Output,
    id: u16,
    buffer: Vec<u8>,
}

impl Stdout<'_> {
    fn send_buffered(&mut self) -> io::Result<()> {
        // The head alone may exceed one record (an application's headers).
        for chunk in self.buffer.chunks(MAX_CONTENT) {
            self.output.record(STDOUT, self.id, chunk)?;
        }
        self.buffer.clear();
        Ok(())
    }

    /// Sends what is buffered, the end of STDOUT and `FCGI_END_REQUEST` in
    /// one write: a status poll's whole answer is then one system call
    /// (three before, each a wake-up of the web server's worker).
    fn finish(&mut self, protocol_status: u8) -> io::Result<()> {
        let mut out = Vec::with_capacity(self.buffer.len() + 64);
        for chunk in self.buffer.chunks(MAX_CONTENT) {
            out.extend(encode_record(STDOUT, self.id, chunk));
        }
        out.extend(encode_record(STDOUT, self.id, &[]));
        out.extend(encode_record(
            END_REQUEST,
            self.id,
            &end_request_body(protocol_status),
        ));
        self.buffer.clear();
        self.output.send(&out)
    }
}

impl ResponseWriter for Stdout<'_> {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        write_cgi_head(&mut self.buffer, status, headers)?;
        Ok(self)
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A head longer than a record (see `send_buffered`) goes first.
        if self.buffer.len() >= MAX_CONTENT {
            self.send_buffered()?;
        }
        let room = MAX_CONTENT - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == MAX_CONTENT {
            self.send_buffered()?;
        }
        Ok(n)
    }

    /// Nothing: whole records go out as they fill, and the rest with the
    /// end of the request ([`Stdout::finish`]), in one write with it. A
    /// flush here would split a short answer in two writes again.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
