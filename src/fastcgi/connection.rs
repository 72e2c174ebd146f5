//! One connection from the web server, from accept to close: its requests
//! one after another (while the web server keeps it and each request's
//! body has ended), its writing side, and the lingering close.
//!
//! Apart from the request because a connection outlives its requests
//! (`FCGI_KEEP_CONN`) and owns what they share: the record reader, the
//! writing side, and its entry in the server's registry, which shutdown
//! uses to cut it.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::listener::{Incoming, Stream};
use super::record::{
    self, END_REQUEST, GET_VALUES_RESULT, Malformed, Records, decode_params, encode_param,
};
use super::request::{next_request, respond};
use super::server::Server;

/// The record reader's buffer. Small: record headers and parameters go
/// through it, while body reads larger than it go straight to the socket.
/// (A large one per connection costs more than it saves: std zero-fills it
/// on first use, and glibc consolidates its heap for every allocation of
/// 64 KiB or more.)
const READ_BUFFER: usize = 8 * 1024;

/// A connection's records, as the request code reads them.
pub(super) type Reader = Records<Incoming>;

/// The writing side, shared by the body reader (which may have to refuse a
/// second request on the connection) and the response.
pub(super) struct Output {
    pub(super) stream: Arc<Stream>,
}

impl Output {
    pub(super) fn record(&self, kind: u8, id: u16, content: &[u8]) -> io::Result<()> {
        (&*self.stream).write_all(&record::encode_record(kind, id, content))
    }

    pub(super) fn end_request(&self, id: u16, protocol_status: u8) -> io::Result<()> {
        self.record(END_REQUEST, id, &record::end_request_body(protocol_status))
    }

    /// Answers FCGI_GET_VALUES: we take one request per connection, and as
    /// many connections as there are workers.
    pub(super) fn get_values(&self, workers: usize, query: &[u8]) -> io::Result<()> {
        let workers = workers.to_string();
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

/// Serves one connection until it closes, breaks, or the server stops.
pub(super) fn serve_connection(server: &Server, stream: Stream) {
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
    let mut records = Records::new(READ_BUFFER, Incoming(Arc::clone(&stream)));
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
fn linger(records: &mut Reader, output: &Output) {
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
        match records.read_raw(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n as u64,
        }
    }
}
