//! Hooks: programs the operator names, run at two moments of an upload,
//! for an upload server that the application does not sit behind (no
//! `app` to hand uploads to).
//!
//! - `on_create` runs once per upload before any byte of a file is stored
//!   (a form: when its first file part's headers have been read; a
//!   resumable upload: at its creation). It gets JSON about the upload on
//!   stdin; exit status 0 lets the upload go on, any other refuses it
//!   (403 `ERR_REFUSED`, the first line of its stdout as the message).
//!   A hook that cannot be run, runs past `hook_timeout`, dies of a signal
//!   or writes more than [`MAX_OUTPUT`] refuses too: a gate that fails
//!   must stay shut.
//! - `on_complete` runs after an upload is `done`, with the status
//!   document on stdin (what `/upload/status` answers). Nothing it does
//!   changes the upload, and the client's answer never waits for it.
//!
//! Names and the `on_create` JSON follow tusd's `pre-create` and
//! `post-finish` file hooks, for people who know them.
//!
//! Hooks are run as `app` is: no shell, an environment of `PATH` and
//! `FILEUPLOAD_HOOK` only (so never the upload key), the program's folder
//! as working directory. Each runs in a process group of its own, which
//! is killed (by the hook's pid, as group leader) when it must stop, and
//! every hook process is reaped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Config;
use crate::error_code::ErrorCode;
use crate::http::{HttpError, Request};
use crate::identifier::Identifier;
use crate::service::Service;

/// Most bytes read from a hook's stdout, and from its stderr. More is a
/// hook gone wrong: it is killed, and an `on_create` refuses.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Longest refusal message taken from a hook's first line, in characters.
pub const MAX_MESSAGE: usize = 200;
/// Longest excerpt of a hook's stderr put in our log, in characters.
const MAX_LOGGED: usize = 500;

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot be run: {0}")]
    Start(io::Error),
    #[error("did not finish within {0:?}, so it was killed")]
    TimedOut(Duration),
    #[error("was killed by signal {0}")]
    Signal(i32),
    #[error("wrote more than {MAX_OUTPUT} bytes to its {0}, so it was killed")]
    TooMuchOutput(&'static str),
    #[error("cannot be waited for: {0}")]
    Wait(io::Error),
    /// It ran and said no.
    #[error("exited with status {code}")]
    Exit { code: i32, stdout: Vec<u8> },
}

/// What a hook that exited wrote.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A started hook, its input being fed and its output collected.
pub struct Running {
    child: Child,
    program: PathBuf,
    output: mpsc::Receiver<(&'static str, Vec<u8>, bool)>,
    /// Says when the input is written (or cannot be).
    input: mpsc::Receiver<()>,
}

/// Starts `program` with `input` on its stdin. `kind` is its name in
/// `FILEUPLOAD_HOOK` (`pre-create`, `post-finish`).
pub fn start(program: &Path, kind: &str, input: Vec<u8>) -> Result<Running, HookError> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", path)
        .env("FILEUPLOAD_HOOK", kind)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: what it starts can be stopped with it, and a
        // signal meant for us (a terminal's Ctrl-C) is not its.
        .process_group(0);
    if let Some(dir) = program.parent() {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(HookError::Start)?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_and_reap(&mut child);
        return Err(HookError::Start(io::Error::other("no pipes to the hook")));
    };
    // Threads of their own: a hook may write before it has read its input,
    // and one that never reads must not block us. They end when the pipes
    // do, which killing the hook's group ensures.
    let (written, input_done) = mpsc::channel();
    thread::spawn(move || {
        // A hook need not read its input (EPIPE): fine.
        let _ = stdin.write_all(&input);
        drop(stdin);
        let _ = written.send(());
    });
    let (sender, output) = mpsc::channel();
    let pipes: [(&'static str, Box<dyn Read + Send>); 2] =
        [("stdout", Box::new(stdout)), ("stderr", Box::new(stderr))];
    for (name, pipe) in pipes {
        let sender = sender.clone();
        thread::spawn(move || {
            let (bytes, overflow) = read_bounded(pipe);
            let _ = sender.send((name, bytes, overflow));
        });
    }
    Ok(Running {
        child,
        program: program.to_owned(),
        output,
        input: input_done,
    })
}

/// Reads up to [`MAX_OUTPUT`] bytes; `true` if there was more (then it
/// stops reading at once, so that the hook can be killed at once).
fn read_bounded(pipe: impl Read) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let read = pipe.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut bytes);
    let overflow = bytes.len() > MAX_OUTPUT;
    bytes.truncate(MAX_OUTPUT);
    if read.is_err() {
        return (bytes, false);
    }
    (bytes, overflow)
}

impl Running {
    /// Waits until the hook has its whole input, or `deadline`.
    fn wait_for_input(&self, deadline: Instant) {
        let _ = self
            .input
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Waits for the hook, at most `timeout` from now; a hook that must be
    /// stopped is killed and reaped before this returns.
    pub fn finish(mut self, timeout: Duration) -> Result<Output, HookError> {
        let deadline = Instant::now() + timeout;
        let mut output = Output::default();
        let mut open = 2;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            while let Ok((name, bytes, overflow)) = self.output.try_recv() {
                if overflow {
                    kill_and_reap(&mut self.child);
                    return Err(HookError::TooMuchOutput(name));
                }
                open -= 1;
                *output.stream(name) = bytes;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(err) => {
                    kill_and_reap(&mut self.child);
                    return Err(HookError::Wait(err));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                kill_and_reap(&mut self.child);
                return Err(HookError::TimedOut(timeout));
            }
            // Short at first (most hooks take milliseconds), then at most
            // 20 ms: a few wake-ups per hook, and no busy wait.
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        // It exited; what it started may still hold its output open. Wait
        // for that until the deadline, then stop them too.
        while open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok((name, _, true)) => {
                    kill_group(&self.child);
                    return Err(HookError::TooMuchOutput(name));
                }
                Ok((name, bytes, false)) => {
                    open -= 1;
                    *output.stream(name) = bytes;
                }
                Err(_) => {
                    kill_group(&self.child);
                    crate::log!(
                        "hook {}: what it started still held its output after {timeout:?}; stopped",
                        self.program.display()
                    );
                    break;
                }
            }
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(output),
            (Some(code), _) => Err(HookError::Exit {
                code,
                stdout: output.stdout,
            }),
            (None, Some(signal)) => Err(HookError::Signal(signal)),
            (None, None) => Err(HookError::Signal(0)),
        }
    }
}

impl Output {
    fn stream(&mut self, name: &str) -> &mut Vec<u8> {
        match name {
            "stdout" => &mut self.stdout,
            _ => &mut self.stderr,
        }
    }
}

/// Kills the hook's process group (its pid is the group's id) and reaps
/// the hook, so that it never lingers as a zombie.
fn kill_and_reap(child: &mut Child) {
    kill_group(child);
    // Should the group be gone already, the hook itself still is ours.
    let _ = child.kill();
    let _ = child.wait();
}

fn kill_group(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Runs `program` to its end (or its timeout).
pub fn run(
    program: &Path,
    kind: &str,
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Output, HookError> {
    start(program, kind, input)?.finish(timeout)
}

/// The first line of a hook's output, fit for an error message: valid
/// text, no control characters, at most [`MAX_MESSAGE`] characters.
pub fn first_line(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    sanitize(line, MAX_MESSAGE)
}

fn sanitize(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The request an `on_create` hook is told about.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    method: String,
    uri: String,
    remote_addr: String,
    /// By the HTTP name (`Content-Type`, `Cookie`), as tusd gives them.
    headers: BTreeMap<String, Vec<String>>,
}

impl RequestInfo {
    pub fn of(request: &Request<'_>) -> RequestInfo {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in request.vars().iter() {
            let name = match name {
                "CONTENT_TYPE" => "CONTENT_TYPE",
                "CONTENT_LENGTH" => "CONTENT_LENGTH",
                other => match other.strip_prefix("HTTP_") {
                    Some(rest) => rest,
                    None => continue,
                },
            };
            let name = name
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    chars.next().map_or_else(String::new, |first| {
                        first.to_ascii_uppercase().to_string()
                            + &chars.as_str().to_ascii_lowercase()
                    })
                })
                .collect::<Vec<_>>()
                .join("-");
            headers.entry(name).or_default().push(value.to_owned());
        }
        let uri = match request.var("REQUEST_URI") {
            Some(uri) => uri.to_owned(),
            None => match request.query() {
                "" => request.path().into_owned(),
                query => format!("{}?{query}", request.path()),
            },
        };
        RequestInfo {
            method: request.method().to_owned(),
            uri,
            remote_addr: request.var("REMOTE_ADDR").unwrap_or_default().to_owned(),
            headers,
        }
    }
}

/// An upload about to be made, as `on_create` is told of it.
#[derive(Debug)]
pub struct Creation<'a> {
    pub id: &'a Identifier,
    /// `form`, `tus` or `ietf`.
    pub protocol: &'static str,
    /// The upload's declared length: a resumable upload's `Upload-Length`,
    /// a form's request body (`Content-Length`, the form's framing
    /// included). `None`: not declared (yet).
    pub length: Option<u64>,
    /// The file's own size is known (a resumable upload's length).
    pub size_known: bool,
    pub filename: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub metadata: Option<&'a BTreeMap<String, String>>,
    /// A part of a later concatenation (tus `Upload-Concat: partial`).
    pub partial: bool,
    /// The parts of a final upload (tus `Upload-Concat: final;...`).
    pub parts: Vec<String>,
}

impl<'a> Creation<'a> {
    /// A resumable upload, from what its creation request said.
    pub fn resumable(
        id: &'a Identifier,
        protocol: &'static str,
        new: &'a crate::resumable::NewUpload,
    ) -> Creation<'a> {
        Creation {
            id,
            protocol,
            length: new.length,
            size_known: true,
            filename: new.filename.as_deref(),
            content_type: new.content_type.as_deref(),
            metadata: Some(&new.metadata),
            partial: false,
            parts: Vec::new(),
        }
    }
}

/// The `on_create` hook of one request: built where the request is known,
/// run where the upload is about to store its first byte.
#[derive(Clone, Debug)]
pub struct Gate {
    program: PathBuf,
    timeout: Duration,
    request: RequestInfo,
}

impl Gate {
    /// The gate for `request`, when `on_create` is set.
    pub fn for_request(config: &Config, request: &Request<'_>) -> Option<Gate> {
        let program = config.on_create.clone()?;
        Some(Gate {
            program,
            timeout: config.hook_timeout,
            request: RequestInfo::of(request),
        })
    }

    /// Runs the hook: `Ok` lets the upload be made, `Err` is the refusal
    /// to answer (nothing may be stored then).
    pub fn check(&self, creation: &Creation<'_>) -> Result<(), HttpError> {
        let input = serde_json::to_vec(&self.document(creation)).unwrap_or_default();
        let refused = |message: String| HttpError::new(ErrorCode::Refused, message);
        match run(&self.program, "pre-create", input, self.timeout) {
            Ok(_) => Ok(()),
            Err(HookError::Exit { stdout, .. }) => {
                let message = first_line(&stdout);
                Err(refused(if message.is_empty() {
                    "the upload was refused".to_owned()
                } else {
                    message
                }))
            }
            Err(err) => {
                crate::log!(
                    "on_create hook {} {err}; upload {} refused",
                    self.program.display(),
                    creation.id.as_str()
                );
                Err(refused(
                    "the upload was refused: the on_create hook failed; the details are in the \
                     server's log"
                        .to_owned(),
                ))
            }
        }
    }

    /// The JSON on the hook's stdin: tusd's `pre-create` shape, then our
    /// own plain fields.
    fn document(&self, creation: &Creation<'_>) -> Value {
        let mut metadata: BTreeMap<&str, &str> = creation
            .metadata
            .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .unwrap_or_default();
        if let Some(name) = creation.filename {
            metadata.entry("filename").or_insert(name);
        }
        if let Some(kind) = creation.content_type {
            metadata.entry("filetype").or_insert(kind);
        }
        let size = creation.length.filter(|_| creation.size_known);
        json!({
            "Type": "pre-create",
            "Event": {
                "Upload": {
                    "ID": creation.id.as_str(),
                    "Size": size,
                    "SizeIsDeferred": size.is_none(),
                    "MetaData": metadata,
                    "IsPartial": creation.partial,
                    "IsFinal": !creation.parts.is_empty(),
                    "PartialUploads": creation.parts,
                },
                "HTTPRequest": {
                    "Method": self.request.method,
                    "URI": self.request.uri,
                    "RemoteAddr": self.request.remote_addr,
                    "Header": self.request.headers,
                },
            },
            "identifier": creation.id.as_str(),
            "protocol": creation.protocol,
            "length": creation.length,
            "remote_addr": self.request.remote_addr,
            "filename": creation.filename,
            "content_type": creation.content_type,
            // The limits the application signed into the identifier.
            "policy": creation.id.policy(),
        })
    }
}

/// Runs `on_create` for a resumable upload about to be created, when it
/// is set.
pub fn before_create(
    config: &Config,
    request: &Request<'_>,
    creation: &Creation<'_>,
) -> Result<(), HttpError> {
    match Gate::for_request(config, request) {
        Some(gate) => gate.check(creation),
        None => Ok(()),
    }
}

/// Hands a done upload's status document to `on_complete`, when it is set,
/// without making the caller wait: on a thread of its own, or, where the
/// process ends with its answer (CGI), kept for [`run_deferred`].
pub fn upload_done(service: &Service, document: Vec<u8>) {
    let Some(program) = service.config().on_complete.clone() else {
        return;
    };
    let Some(document) = service.defer_hook(document) else {
        return;
    };
    let timeout = service.config().hook_timeout;
    let shown = program.display().to_string();
    let spawned = thread::Builder::new()
        .name("on_complete".into())
        .spawn(move || {
            if let Err(err) = run(&program, "post-finish", document, timeout) {
                log_completion_failure(&program, &err);
            }
        });
    if let Err(err) = spawned {
        crate::log!("on_complete hook {shown}: no thread to run it: {err}");
    }
}

fn log_completion_failure(program: &Path, err: &HookError) {
    match err {
        HookError::Exit { code, stdout } => crate::log!(
            "on_complete hook {} exited with status {code}: {}",
            program.display(),
            sanitize(stdout, MAX_LOGGED)
        ),
        err => crate::log!("on_complete hook {} {err}", program.display()),
    }
}

/// Runs the `on_complete` hooks a CGI request kept, after its answer is
/// written and flushed.
///
/// The web server ends the answer only when the CGI program has closed
/// its end of every channel to it: fcgiwrap waits for the end of both
/// stdout and stderr, Apache's mod_cgid for the socket that is both stdin
/// and stdout (each shown by a test in tests/hooks.rs). So the hooks are
/// started first, while a failure to start can still reach the web
/// server's error log, then stdin, stdout and stderr are pointed at
/// `/dev/null`, and then the hooks are waited for (bounded by
/// `hook_timeout`, killed and reaped past it). What they do after that
/// point is not logged.
pub fn run_deferred(service: &Service) {
    let documents = service.take_deferred_hooks();
    let Some(program) = service.config().on_complete.as_deref() else {
        return;
    };
    if documents.is_empty() {
        return;
    }
    let running: Vec<Running> = documents
        .into_iter()
        .filter_map(|document| match start(program, "post-finish", document) {
            Ok(running) => Some(running),
            Err(err) => {
                log_completion_failure(program, &err);
                None
            }
        })
        .collect();
    // Apache's mod_cgid kills a CGI program that still runs once its
    // answer is out (seen by `hooks::apache_cgi_answers_before_on_complete_ends`:
    // the hook's parent was gone, its input unwritten; with SIGTERM caught,
    // Apache held the answer 3 s, until its SIGKILL). So each hook has its
    // input before we let go: a hook reads it at once, and only one that
    // does not can hold the answer, for `hook_timeout` at most.
    let deadline = Instant::now() + service.config().hook_timeout;
    for hook in &running {
        hook.wait_for_input(deadline);
    }
    if let Err(err) = release_stdio() {
        crate::log!("on_complete: cannot let go of stdout and stderr: {err}");
    }
    for hook in running {
        if let Err(err) = hook.finish(service.config().hook_timeout) {
            log_completion_failure(program, &err);
        }
    }
}

/// Points stdin, stdout and stderr at `/dev/null`, which ends the web
/// server's pipes (or socket: Apache's mod_cgid gives one socket as stdin
/// and stdout) from this process.
fn release_stdio() -> io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_first_line_made_safe() {
        assert_eq!(first_line(b"no\r\nmore"), "no");
        assert_eq!(first_line(b"  a\x1b[31mb\x07 \n"), "a [31mb");
        assert_eq!(first_line(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
        assert_eq!(first_line(&[b'x'; 500]).len(), MAX_MESSAGE);
        assert_eq!(first_line(b""), "");
    }

    #[test]
    fn headers_get_their_http_names() {
        let vars = vec![
            ("REQUEST_METHOD".to_owned(), "POST".to_owned()),
            ("HTTP_X_PROGRESS_ID".to_owned(), "a".to_owned()),
            ("CONTENT_TYPE".to_owned(), "text/plain".to_owned()),
            ("HTTP_COOKIE".to_owned(), "s=1".to_owned()),
            ("FILEUPLOAD_UPLOAD_KEY".to_owned(), "secret".to_owned()),
            ("REMOTE_ADDR".to_owned(), "192.0.2.1".to_owned()),
        ];
        let mut body = io::empty();
        let request = Request::new(vars, &mut body, false);
        let info = RequestInfo::of(&request);
        let names: Vec<&str> = info.headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["Content-Type", "Cookie", "X-Progress-Id"]);
        assert_eq!(info.remote_addr, "192.0.2.1");
        assert_eq!(info.method, "POST");
    }
}
