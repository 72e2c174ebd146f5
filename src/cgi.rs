//! The CGI transport (RFC 3875): the request is this process's environment
//! and stdin, the response goes to stdout, and the process ends with it.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use crate::config::{Config, ConfigError};
use crate::error_code::ErrorCode;
use crate::handler;
use crate::http::{Body, BodyLength, HttpError, Request, Response, ResponseWriter, write_cgi_head};
use crate::service::Service;

/// Writes the CGI response to stdout.
struct CgiOutput<W: Write> {
    out: W,
}

impl<W: Write> ResponseWriter for CgiOutput<W> {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        write_cgi_head(&mut self.out, status, headers)?;
        Ok(&mut self.out)
    }
}

/// Stdout, bare: std's `Stdout` is line-buffered, so a buffer holding a
/// head and a body left in two `write`s, split at the head's last line
/// break. Behind our own buffer an answer leaves in one.
struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::write(rustix::stdio::stdout(), buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stdin as the body: never read past `CONTENT_LENGTH` (RFC 3875 does not
/// promise an end-of-file there), and not at all when there is no body
/// (stdin may then be anything, a terminal even). A plain file, unbuffered:
/// the parser has its own buffer.
struct Stdin {
    file: File,
    /// Bytes left to read; `None`: up to end-of-file (a chunked body).
    left: Option<u64>,
}

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.left {
            Some(0) => return Ok(0),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.file.read(&mut buf[..want])?;
        if let Some(left) = &mut self.left {
            *left -= n as u64;
        }
        Ok(n)
    }
}

/// A pipe knows no reason for failing: a read error or an early end of
/// stdin is the body cut short (`ERR_TRUNCATED`).
impl Body for Stdin {
    fn failure(&mut self) -> Option<HttpError> {
        None
    }
}

/// Answers the one request this process was started for. Returns the exit
/// status: 0 once an answer was written, whatever it said.
pub fn run(config: Result<Config, ConfigError>) -> i32 {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    // A chunked request that the server streams to us has no
    // CONTENT_LENGTH; its end is the end of stdin.
    let chunked = vars
        .iter()
        .any(|(k, v)| k == "HTTP_TRANSFER_ENCODING" && v.to_ascii_lowercase().contains("chunked"));
    // Through rustix, not `io::stdin()`: std's handle would set up its
    // buffer and lock for nothing, at every start.
    let file = match rustix::stdio::stdin().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(err) => {
            crate::log!("cannot read stdin: {err}");
            return 1;
        }
    };
    // A web server hands the body over through a pipe of 64 KiB; at 1 MiB
    // it and we wake each other a sixteenth as often. (Allowed up to
    // /proc/sys/fs/pipe-max-size; where it is not, nothing changes.)
    if rustix::fs::fstat(&file)
        .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Fifo)
    {
        let _ = rustix::pipe::fcntl_setpipe_size(&file, 1 << 20);
    }
    let mut stdin = Stdin {
        file,
        left: match Request::new(vars.clone(), &mut io::empty(), chunked).body_length() {
            Ok(BodyLength::Known(n)) => Some(n),
            Ok(BodyLength::UntilEnd) => None,
            Ok(BodyLength::Absent) | Err(_) => Some(0),
        },
    };
    let mut out = CgiOutput {
        out: BufWriter::with_capacity(64 * 1024, RawStdout),
    };
    let mut request = Request::new(vars, &mut stdin, chunked);
    let (result, service) = match config {
        Ok(config) => {
            // This process serves one request; bulk work gives way.
            if !handler::is_quick(&config, &request) {
                crate::receiving::lower_priority();
            }
            let service = Service::deferring_hooks(config);
            let answered =
                handler::guarded(&mut out, |out| handler::handle(&service, &mut request, out));
            (answered, Some(service))
        }
        Err(err) => {
            crate::log!("configuration error: {err}");
            let err = HttpError::new(
                ErrorCode::Config,
                "the upload service is misconfigured; the details are in the web server's error log",
            );
            (Response::error(&err).send(&mut out, false), None)
        }
    };
    // An error here means the client or the server went away: there is
    // nobody left to tell.
    let _ = result.and_then(|()| out.out.flush());
    drop(request);
    // An answer given before the whole body was read (413 from the length,
    // a malformed form) is lost if we exit now: fcgiwrap turns a CGI program
    // that leaves input unread into a 502. So take the rest and discard it;
    // the web server's own body limit bounds how much that can be.
    let _ = io::copy(&mut stdin, &mut io::sink());
    // Only now, the answer flushed: an on_complete hook must not delay it.
    // Our copy of stdin goes first: under Apache's mod_cgid, stdin and
    // stdout are one socket, and the answer ends when every copy is closed.
    drop(stdin);
    if let Some(service) = service {
        crate::hooks::run_deferred(&service);
    }
    0
}
