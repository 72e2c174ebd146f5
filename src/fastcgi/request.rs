//! One request on a connection: its parameters (`next_request`), running
//! the handler on it (`respond`), its body as a reader of STDIN records
//! ([`Body`]) and its answer as a writer of STDOUT records ([`Stdout`]).
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
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::connection::{Output, Reader};
use super::record::{
    ABORT_REQUEST, BEGIN_REQUEST, BeginRequest, CANT_MPX_CONN, GET_VALUES, MAX_CONTENT, Malformed,
    Next, PARAMS, REQUEST_COMPLETE, RESPONDER, STDIN, STDOUT, UNKNOWN_ROLE, UNKNOWN_TYPE,
    decode_params, unknown_type_body,
};
use super::server::Server;
use crate::error_code::ErrorCode;
use crate::handler;
use crate::http::{HttpError, Request, Response, ResponseWriter, write_cgi_head};

/// Most bytes of `PARAMS` one request may send (nginx sends a few KiB).
const MAX_PARAMS: usize = 1 << 20;
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

/// A request as it begins: its id, and whether the connection stays open.
pub(super) struct Begun {
    id: u16,
    pub(super) keep_conn: bool,
    params: Vec<(String, String)>,
}

/// Reads records up to the end of a request's PARAMS.
pub(super) fn next_request(
    server: &Server,
    records: &mut Reader,
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
            (GET_VALUES, _) if header.id == 0 => {
                output.get_values(server.options.workers, &content)?
            }
            (_, _) if header.id == 0 => {
                output.record(UNKNOWN_TYPE, 0, &unknown_type_body(header.kind))?
            }
            (BEGIN_REQUEST, None) => {
                let begin = match BeginRequest::decode(&content) {
                    Ok(begin) => begin,
                    Err(malformed) => return Ok(Err(malformed)),
                };
                if begin.role != RESPONDER {
                    output.end_request(header.id, UNKNOWN_ROLE)?;
                    continue;
                }
                current = Some((header.id, begin.keep_conn));
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
pub(super) fn respond(
    server: &Server,
    records: &mut Reader,
    output: &Output,
    begun: Begun,
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
        started: false,
    };
    // A request with a body runs on a thread of its own at lower priority
    // (see receiving::lower_priority), so the worker keeps its priority for
    // the status polls it serves next.
    let bulk = begun
        .params
        .iter()
        .any(|(name, value)| name == "REQUEST_METHOD" && value == "POST");
    let config = server.settings.request_config(&begun.params, &server.log);
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
                .set_read_timeout(self.server.options.read_timeout)
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
        let n = match self.records.read_raw(&mut buf[..want]) {
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
