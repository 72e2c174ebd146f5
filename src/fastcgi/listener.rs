//! Where connections come from and what they are: the listening socket
//! (TCP, a Unix socket file we bind, or the socket a launcher passed as
//! stdin) and one accepted connection.
//!
//! Both kinds of socket behind one type each, so that the server and the
//! request code never ask which one they have; reading, writing and
//! shutting down work through a shared reference, so that one socket serves
//! the record reader, the response and the server's registry of open
//! connections without duplicating its descriptor.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }

    /// Makes `accept` return `WouldBlock` instead of waiting: the event
    /// loop accepts only when epoll says a connection is there.
    pub(super) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
    }

    pub(super) fn accept(&self) -> io::Result<Stream> {
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
    /// Refuses further connections;
    /// removes the socket file we made.
    pub(super) fn stop(&self) {
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
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(super) fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    pub(super) fn shutdown_read(&self) {
        self.shutdown(Shutdown::Read);
    }

    pub(super) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    pub(super) fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_write_timeout(Some(timeout)),
        }
    }

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    /// Reads what has arrived, without waiting (`WouldBlock` if nothing
    /// has), whatever the socket's blocking mode: the event loop reads a
    /// socket that bulk threads read with blocking reads.
    pub(super) fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (_, n) = rustix::net::recv(self.as_fd(), buf, rustix::net::RecvFlags::DONTWAIT)?;
        Ok(n)
    }

    /// Writes what fits in the socket's buffer now, without waiting.
    pub(super) fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        Ok(rustix::net::send(self.as_fd(), bytes, flags)?)
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

/// A connection's reading end, for the record reader: first the bytes the
/// event loop read ahead, then the socket.
pub(super) struct Incoming {
    stream: Arc<Stream>,
    ahead: Vec<u8>,
    taken: usize,
}

impl Incoming {
    pub(super) fn new(stream: Arc<Stream>, ahead: Vec<u8>) -> Incoming {
        Incoming {
            stream,
            ahead,
            taken: 0,
        }
    }

    /// The bytes read ahead that nobody took.
    pub(super) fn into_rest(mut self) -> Vec<u8> {
        self.ahead.drain(..self.taken);
        self.ahead
    }
}

impl super::record::ReadAhead for Incoming {
    fn read_ahead(&self) -> usize {
        self.ahead.len() - self.taken
    }
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ahead = &self.ahead[self.taken..];
        if ahead.is_empty() {
            return (&*self.stream).read(buf);
        }
        let n = ahead.len().min(buf.len());
        buf[..n].copy_from_slice(&ahead[..n]);
        self.taken += n;
        Ok(n)
    }
}
