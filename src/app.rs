//! Middleware mode: the application behind us is a CGI program.
//!
//! The Python original wrapped a WSGI application: requests that were not
//! uploads went to it untouched, and a completed upload reached it as a new
//! request whose body described the stored file. Here the application is
//! any CGI program (`FILEUPLOAD_APP`), run once per request the way
//! fcgiwrap would run it: same meta-variables, same body, its CGI answer
//! relayed to the client as it is produced.
//!
//! The upload key is never passed on: `FILEUPLOAD_UPLOAD_KEY` is removed
//! from the child's environment. (The application may read the key from
//! `FILEUPLOAD_UPLOAD_KEY_FILE`, which only names a file.)

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::config::Config;
use crate::error_code::ErrorCode;
use crate::http::{HttpError, Request, Response, ResponseWriter};
use crate::status::Status;

/// Longest CGI header block accepted from the application.
const MAX_HEAD: u64 = 64 * 1024;
/// Variables the application never sees.
const WITHHELD: &[&str] = &["FILEUPLOAD_UPLOAD_KEY"];

/// Hands the request to the application unchanged (with
/// `FILEUPLOAD_UPLOAD_URL` added when uploads go elsewhere).
pub fn forward(
    program: &Path,
    config: &Config,
    request: &mut Request<'_>,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    let mut env = request.vars().to_pairs();
    if let Some(url) = &config.upload_url {
        set(&mut env, "FILEUPLOAD_UPLOAD_URL", url);
    }
    let head_only = request.method() == "HEAD";
    run_or_answer(program, env, request.body(), out, head_only)
}

/// Hands a completed upload to the application: a POST whose body is the
/// status JSON, with `FILEUPLOAD_IDENTIFIER` and `FILEUPLOAD_FILE` (the
/// first stored file) set.
pub fn hand_over(
    program: &Path,
    config: &Config,
    request: &Request<'_>,
    status: &Status,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    let body = status.to_json();
    let mut env: Vec<(String, String)> = request
        .vars()
        .iter()
        .filter(|(name, _)| *name != "HTTP_TRANSFER_ENCODING")
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    set(&mut env, "REQUEST_METHOD", "POST");
    set(&mut env, "CONTENT_TYPE", "application/json");
    set(&mut env, "CONTENT_LENGTH", &body.len().to_string());
    set(
        &mut env,
        "FILEUPLOAD_IDENTIFIER",
        status.identifier.as_deref().unwrap_or(""),
    );
    let first = status
        .files()
        .first()
        .map(|f| f.path.as_str())
        .unwrap_or("");
    set(&mut env, "FILEUPLOAD_FILE", first);
    if let Some(url) = &config.upload_url {
        set(&mut env, "FILEUPLOAD_UPLOAD_URL", url);
    }
    let mut body = body.as_bytes();
    run_or_answer(program, env, &mut body, out, false)
}

/// Hands a resumable upload that a request just completed to the
/// application, as [`hand_over`] does a form upload, and sends its answer
/// with the protocol's own headers added (`Tus-Resumable`,
/// `Upload-Offset`, a creation's `Location`): the client is a tus client,
/// and it learns from them that its upload is complete. An application
/// should answer it with a 2xx status.
pub fn hand_over_resumable(
    program: &Path,
    config: &Config,
    request: &Request<'_>,
    status: &Status,
    protocol: &Response,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    let headers = protocol
        .headers
        .iter()
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case("Content-Length")
                && !name.eq_ignore_ascii_case("Content-Type")
        })
        .cloned()
        .collect();
    let mut out = WithHeaders {
        inner: out,
        headers,
    };
    hand_over(program, config, request, status, &mut out)
}

/// A writer that adds headers to the answer it starts (replacing the
/// application's of the same name).
struct WithHeaders<'a> {
    inner: &'a mut dyn ResponseWriter,
    headers: Vec<(String, String)>,
}

impl ResponseWriter for WithHeaders<'_> {
    fn start(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> io::Result<&mut dyn io::Write> {
        let mut all: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| {
                !self
                    .headers
                    .iter()
                    .any(|(ours, _)| ours.eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        all.extend(self.headers.iter().cloned());
        self.inner.start(status, &all)
    }
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(n, _)| n != name);
    env.push((name.to_owned(), value.to_owned()));
}

/// Runs the application; failures before it answered are answered by us.
fn run_or_answer(
    program: &Path,
    env: Vec<(String, String)>,
    body: &mut dyn Read,
    out: &mut dyn ResponseWriter,
    head_only: bool,
) -> io::Result<()> {
    match run(program, env, body, out, head_only) {
        Ok(()) => Ok(()),
        Err(err) => {
            crate::log!("application {}: {}", program.display(), err.message);
            Response::error(&err).send(out, head_only)
        }
    }
}

/// Runs the CGI program with `env` and `body` on its stdin, and relays its
/// answer. An `Err` means nothing was sent yet.
fn run(
    program: &Path,
    env: Vec<(String, String)>,
    body: &mut dyn Read,
    out: &mut dyn ResponseWriter,
    head_only: bool,
) -> Result<(), HttpError> {
    // A web server's FastCGI parameters carry no PATH; a CGI program
    // expects one (fcgiwrap's children get it from fcgiwrap's environment).
    let path = match env.iter().any(|(name, _)| name == "PATH") {
        true => None,
        false => std::env::var("PATH").ok(),
    };
    let mut command = Command::new(program);
    command
        .env_clear()
        .envs(
            env.into_iter()
                .filter(|(name, _)| !WITHHELD.contains(&name.as_str())),
        )
        .envs(path.map(|p| ("PATH".to_owned(), p)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = program.parent() {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|e| {
        HttpError::new(
            ErrorCode::AppStart,
            format!("cannot run the application: {e}"),
        )
    })?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(HttpError::new(
            ErrorCode::AppStart,
            "cannot connect to the application",
        ));
    };
    // This thread feeds the body while another collects the answer: an
    // application may write before it has read all its input, and then
    // neither side must wait for the other. (What it writes that early is
    // held in memory until the body is in.)
    let (sender, chunks) = mpsc::channel::<Vec<u8>>();
    let collector = thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if sender.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // The application may not read its input at all (EPIPE): fine.
    let _ = io::copy(body, &mut stdin);
    drop(stdin);
    let result = relay(
        ChannelReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        },
        out,
        head_only,
    );
    let _ = child.wait();
    let _ = collector.join();
    result
}

/// Reads what the collector thread received from the application.
struct ChannelReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Reads the application's CGI head, then streams its body to `out`.
fn relay(
    stdout: impl Read,
    out: &mut dyn ResponseWriter,
    head_only: bool,
) -> Result<(), HttpError> {
    let bad = |why: &str| {
        HttpError::new(
            ErrorCode::App,
            format!("the application's answer is not a CGI response: {why}"),
        )
    };
    let mut reader = BufReader::new(stdout);
    let mut head = (&mut reader).take(MAX_HEAD);
    let mut status = None;
    let mut headers = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        head.read_until(b'\n', &mut line).map_err(|e| {
            HttpError::new(
                ErrorCode::App,
                format!("reading the application's answer: {e}"),
            )
        })?;
        if !line.ends_with(b"\n") {
            return Err(bad("it ended inside its header block"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| bad("a header line has no ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok());
            status = Some(
                code.filter(|c| (100..600).contains(c))
                    .ok_or_else(|| bad("invalid Status"))?,
            );
        } else {
            headers.push((name.trim().to_owned(), value.to_owned()));
        }
    }
    let has = |wanted: &str| {
        headers
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(wanted))
    };
    let status = match status {
        Some(status) => status,
        None if has("Location") => 302,
        None if has("Content-Type") => 200,
        None => return Err(bad("it has neither Status, Location nor Content-Type")),
    };
    // Past this point the client has our answer's head: errors can only
    // cut it short.
    let Ok(body) = out.start(status, &headers) else {
        return Ok(());
    };
    if !head_only {
        let _ = io::copy(&mut reader, body);
    }
    let _ = body.flush();
    Ok(())
}
