//! One connection from the web server, as it passes between the event
//! loop (while it waits for a request) and a thread (while a request
//! runs): its socket, the bytes read ahead of the request, its writing
//! side, and what happens to it after a request.
//!
//! A connection outlives its requests (`FCGI_KEEP_CONN`); between them it
//! is only a socket and a few bytes in the event loop, so an idle or slow
//! peer costs no thread.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::Arc;

use super::assembly::Begun;
use super::listener::{Incoming, Stream};
use super::record::{self, END_REQUEST, Records};
use super::request::respond;
use super::server::Server;
use crate::http::HttpError;

/// The record reader's buffer. Small: record headers and parameters go
/// through it, while body reads larger than it go straight to the socket.
/// (A large one per connection costs more than it saves: std zero-fills it
/// on first use, and glibc consolidates its heap for every allocation of
/// 64 KiB or more.)
const READ_BUFFER: usize = 8 * 1024;

/// A connection's records, as the request code reads them.
pub(super) type Reader = Records<Incoming>;

/// A connection between requests.
pub(super) struct Connection {
    /// Its key in the event loop and the server's registry.
    pub(super) id: u64,
    pub(super) stream: Arc<Stream>,
    /// Bytes read and not yet taken: the rest of a request's records.
    pub(super) pending: Vec<u8>,
}

/// Which threads run a request: the event loop's (quick requests) or a
/// bulk thread (see [`super::bulk`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Quick,
    Bulk,
}

/// What becomes of a connection after a request.
pub(super) enum After {
    /// It may serve another request: back to the event loop.
    Keep(Connection),
    /// It closes once the web server has read the answer: its writing side
    /// is shut, and the event loop reads and discards until the peer
    /// closes (see [`super::event_loop`], lingering).
    Linger(Connection),
}

/// The writing side, shared by the body reader (which may have to refuse a
/// second request on the connection) and the response.
pub(super) struct Output {
    pub(super) stream: Arc<Stream>,
}

impl Output {
    pub(super) fn record(&self, kind: u8, id: u16, content: &[u8]) -> io::Result<()> {
        self.send(&record::encode_record(kind, id, content))
    }

    /// Writes encoded records.
    pub(super) fn send(&self, records: &[u8]) -> io::Result<()> {
        (&*self.stream).write_all(records)
    }

    pub(super) fn end_request(&self, id: u16, protocol_status: u8) -> io::Result<()> {
        self.record(END_REQUEST, id, &record::end_request_body(protocol_status))
    }
}

/// Runs one request whose parameters are assembled; `refusal`, if any, is
/// the answer instead of the handler's (503 when the uploads are full).
///
/// The connection is in the server's registry while the request runs, so
/// that shutdown can cut it.
pub(super) fn run(
    server: &Server,
    connection: Connection,
    begun: Begun,
    refusal: Option<HttpError>,
    kind: Kind,
) -> After {
    let Connection {
        id,
        stream,
        pending,
    } = connection;
    server.running(kind, id, &stream);
    let mut records = Records::new(READ_BUFFER, Incoming::new(Arc::clone(&stream), pending));
    let output = Output {
        stream: Arc::clone(&stream),
    };
    let keep_conn = begun.keep_conn;
    let answered = respond(server, &mut records, &output, begun, refusal);
    server.done(kind, id);
    let (mut pending, incoming) = records.into_parts();
    pending.extend(incoming.into_rest());
    let mut connection = Connection {
        id,
        stream,
        pending,
    };
    if answered && keep_conn && !server.is_stopping() {
        return After::Keep(connection);
    }
    connection.stream.shutdown(Shutdown::Write);
    connection.pending.clear();
    After::Linger(connection)
}
