//! The FastCGI transport: a responder (FastCGI 1.0) in front of the same
//! handler the CGI transport uses.
//!
//! A long-running process saves a process start per status poll. It
//! listens on the socket it was given on stdin (the convention of
//! `spawn-fcgi`, `mod_fcgid` and lighttpd's `bin-path`) or on the address of
//! `--listen`. An event loop (`workers` threads on one epoll instance, as
//! many of them waiting as there are cores) holds every connection
//! between requests and answers status polls; each
//! upload runs on a thread of its own, up to `max_uploads`. So no number of
//! idle, slow or uploading connections keeps a poll waiting.
//!
//! It is written for peers that misbehave: a malformed record ends that
//! connection with one rate-limited line in the log, a connection closed
//! at a record boundary ends silently, a connection cut mid-request or an
//! `FCGI_ABORT_REQUEST` fails only that request, running out of file
//! descriptors on `accept` waits and retries, and a panic in a request is
//! caught and answered with a 500. Nothing here can take the process down.
//!
//! Settings can come with a request: `FILEUPLOAD_*` parameters, which the
//! web server's configuration sets (nginx `fastcgi_param`), are merged
//! between the daemon's options and its environment (see
//! [`ConfigSources`]), with CGI's errors.
//!
//! One job a file, from the bytes up:
//!
//! - `record`: the record layer, pure (bytes in, bytes or values out) and
//!   unit-tested on its own: headers, record types, name-value pairs, the
//!   record reader over any `Read`.
//! - `assembly`: a request from its first records, fed whatever bytes a
//!   socket had; pure and unit-tested.
//! - `listener`: the listening socket ([`Listener`]) and an accepted
//!   connection's socket.
//! - `event_loop`: the connections between requests: accepting, reading,
//!   assembling, answering quick requests, timeouts, the lingering close.
//! - `rotation`: which of the loop's threads wait in epoll (as many as
//!   there are cores), and the standing-by ones that replace a thread
//!   held up on one event.
//! - `bulk`: the threads that run uploads, and their dispatcher.
//! - `connection`: a connection as it passes between the loop and a
//!   thread, and running one request on it.
//! - `request`: one request: its body (a reader of STDIN records), its
//!   answer (a writer of STDOUT records), running the handler.
//! - `settings`: the per-request `FILEUPLOAD_*` settings and their cache.
//! - `server`: starting the threads, the gc timer, signals and shutdown
//!   ([`serve`]).
//! - `log`: the rate-limited log of what peers do wrong.
//! - [`testing`]: one connection served in memory, for fuzzing and
//!   property tests.
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

mod assembly;
mod bulk;
mod connection;
mod event_loop;
mod listener;
mod log;
mod record;
mod request;
mod rotation;
mod server;
mod settings;
pub mod testing;

pub use listener::{Listener, stdin_is_listening_socket};
pub use server::{ServerOptions, serve};
pub use settings::ConfigSources;
