//! A deliberate, documented way into the server for tests and fuzzing:
//! one whole connection, served in memory.
//!
//! Public because the fuzz target (fuzz/fuzz_targets/fastcgi_stream.rs)
//! and the property tests (tests/properties.rs) are other crates; in its
//! own module so that it is plainly not part of running a daemon. Nothing
//! here is needed to serve FastCGI.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use super::assembly::Assembly;
use super::connection::{self, After, Connection, Kind};
use super::listener::Stream;
use super::server::{Server, ServerOptions};
use crate::config::Config;

/// Serves one connection on which the peer sends `input` and then closes
/// its side; returns everything the peer received. For fuzzing and
/// property tests of the record stream: whatever `input` is, the answer
/// must be whole records, and nothing may panic or hang.
///
/// It runs the daemon's code for a connection (request assembly, the
/// request, the body reader, the answer) on this thread, in place of the
/// event loop and the workers, with 5 s timeouts and no log. Requests may
/// not bring settings here (they are answered 500): a fuzzer's parameters
/// could name any directory or program. An `Err` is only a failure to set
/// up the socket pair or the peer thread, never something `input` caused.
pub fn serve_bytes(config: Config, input: &[u8]) -> io::Result<Vec<u8>> {
    let (ours, mut theirs) = UnixStream::pair()?;
    let options = ServerOptions {
        workers: 1,
        max_uploads: 1,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        grace: Duration::ZERO,
    };
    let server = Server::new(
        config,
        None,
        options,
        Arc::new(AtomicBool::new(false)),
        true,
    )?;
    ours.set_read_timeout(Some(Duration::from_secs(5)))?;
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

/// The event loop's part, with blocking reads: assemble, run, repeat.
fn serve_connection(server: &Server, stream: Stream) {
    let mut connection = Connection {
        id: 0,
        stream: Arc::new(stream),
        pending: Vec::new(),
    };
    let mut assembly = Assembly::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut replies = Vec::new();
        let step = assembly.step(&mut connection.pending, &mut replies, 1);
        if !replies.is_empty() && (&*connection.stream).write_all(&replies).is_err() {
            return;
        }
        match step {
            Err(_) => return,
            Ok(Some(begun)) => {
                match connection::run(server, connection, begun, None, Kind::Quick) {
                    After::Keep(kept) => {
                        connection = kept;
                        continue;
                    }
                    After::Linger(closing) => {
                        while let Ok(1..) = (&*closing.stream).read(&mut buf) {}
                        return;
                    }
                }
            }
            Ok(None) => {}
        }
        match (&*connection.stream).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => connection.pending.extend_from_slice(&buf[..n]),
        }
    }
}
