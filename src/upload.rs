//! Receiving one upload: the multipart body streamed into a claimed bucket.
//!
//! The request's thread parses and writes; it never waits for the status
//! file. A watcher thread wakes every `progress_interval`, publishes the
//! bytes received so far (so a stalled client still shows its last
//! progress), and checks whether the upload was cleared. Publishing on a
//! timer rather than every N bytes keeps the cost fixed, a few small
//! writes a second, whatever the upload's speed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crate::error_code::{ErrorCode, carried, store_error};
use crate::hashing::Hashing;
use crate::http::{BodyLength, HttpError, Request};
use crate::identifier::Identifier;
use crate::multipart::{self, Event, MultipartError, Parser, PartHeaders};
use crate::pool::{Pool, PoolError, Upload, unix_now};
use crate::status::{FileInfo, State, Status};

/// Most parts (files and fields) one request may carry.
pub const MAX_PARTS: usize = 1000;
/// Most bytes of field names and values kept in the status.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Longest file name kept (in bytes of UTF-8). Browsers send a base name,
/// old ones a full Windows path; both are far shorter.
pub const MAX_FILENAME_BYTES: usize = 1024;
/// Longest part `Content-Type` kept.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;
/// Largest status document an upload may have, as JSON. Names of control
/// characters take six bytes each in JSON, so a thousand parts could
/// otherwise make one of tens of megabytes, rewritten on every progress
/// update and, past the reader's limit, unreadable for good.
pub const MAX_STATUS_DOCUMENT: usize = 1 << 20;
/// Progress rewrites of the status may write this much more than the body
/// brought in, in all: the cost of progress stays proportional to the
/// upload's bytes, whatever the number of parts or the speed of the client.
pub const STATUS_WRITE_ALLOWANCE: u64 = 1 << 20;
/// What a file entry's SHA-256 and a growing size add to its JSON later.
const FILE_ENTRY_GROWTH: usize = r#","sha256":""#.len() + 64 + 20;
/// Most bytes read after the closing boundary before answering.
const MAX_EPILOGUE: u64 = 64 * 1024;
/// How often a clear is looked for when progress is off.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

/// What an upload may do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest request body, in bytes.
    pub max_size: Option<u64>,
    pub sha256: bool,
    /// How often progress is published; `None`: only at the end.
    pub progress_interval: Option<Duration>,
}

/// Lowers the calling thread's CPU priority to the lowest (nice 19;
/// threads it starts inherit it), for the thread that receives a request
/// body.
///
/// Receiving is bulk work: it copies and hashes as fast as the CPU lets it.
/// Status polls are interactive, and the web server relays both. A nice of
/// 10 is not enough: it lowers each thread's weight, and dozens of
/// receiving and hashing threads still outweigh the web server together.
/// The load test (64 uploads and 500 polls a second on two cores) measured
/// a poll median of 430 ms at nice 0, 12-22 ms at nice 10 and under 1 ms
/// at nice 19, with the uploads' throughput about the same. When nothing
/// else wants the CPU, as usual, it changes nothing. Only ever lowered: a
/// thread that serves more requests afterwards must not call this (raising
/// it again needs privileges).
pub fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, 19);
}

/// Receives the request's multipart body into the bucket of `id`, and
/// returns the final status.
///
/// Every failure after the bucket is claimed is recorded in its status
/// (state `error`, with the answer's HTTP status and code), and the files stored so far are
/// removed. A conflict with a running upload (409) changes nothing.
pub fn receive(
    pool: &Pool,
    id: &Identifier,
    request: &mut Request<'_>,
    options: &Options,
) -> Result<Status, HttpError> {
    let upload = pool.begin_upload(id)?;
    let mut status = Status::uploading(id.as_str(), None, unix_now());
    let (boundary, length) = match check(request, options) {
        Ok(checked) => checked,
        Err(err) => {
            status.fail(err.code, &err.message, unix_now());
            upload.fail(&status);
            return Err(err);
        }
    };
    status.size = length.known();
    if let Err(err) = upload.write_status(&status) {
        let err = HttpError::from(err);
        status.fail(err.code, &err.message, unix_now());
        upload.fail(&status);
        return Err(err);
    }
    let limit = length.known().unwrap_or(u64::MAX);
    let body = request.body().take(limit);
    let (status, outcome) = stream(&upload, status, &boundary, body, options);
    match outcome {
        Ok(()) => {
            upload.finish(&status)?;
            Ok(status)
        }
        Err(err) => {
            upload.fail(&status);
            Err(err)
        }
    }
}

/// What can be decided before reading the body: the content type and the
/// announced length.
fn check(request: &Request<'_>, options: &Options) -> Result<(String, BodyLength), HttpError> {
    let content_type = request.content_type().unwrap_or("");
    let boundary = multipart::boundary(content_type)?;
    let length = request.body_length()?;
    match (length, options.max_size) {
        (BodyLength::Absent, _) => Err(HttpError::new(
            ErrorCode::LengthRequired,
            "the request has no Content-Length and is not chunked, so its body cannot be read",
        )),
        (BodyLength::Known(n), Some(max)) if n > max => Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the upload is {n} bytes, more than the limit of {max} bytes"),
        )),
        _ => Ok((boundary, length)),
    }
}

/// The status while the body streams: shared with the watcher thread.
struct Shared {
    status: Mutex<Status>,
    cancelled: AtomicBool,
    /// An upper bound of the status document's length as JSON.
    document: AtomicUsize,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic elsewhere must not hide the status from the cleanup.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stream(
    upload: &Upload,
    status: Status,
    boundary: &str,
    body: impl Read,
    options: &Options,
) -> (Status, Result<(), HttpError>) {
    // The numbers still to come (size, received, times, an error) fit in
    // the margin.
    let document = status.to_json().len() + 256;
    let shared = Shared {
        status: Mutex::new(status),
        cancelled: AtomicBool::new(false),
        document: AtomicUsize::new(document),
    };
    let received = Cell::new(0);
    let counted = Counted {
        inner: body,
        count: &received,
        max: options.max_size,
    };
    let mut parser = Parser::new(counted, boundary);
    let outcome = thread::scope(|scope| {
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = &shared;
        let interval = options.progress_interval;
        scope.spawn(move || watch(upload, shared, stopped, interval));
        let hashing = options.sha256.then(|| Hashing::start(scope));
        let mut receiver = Receiver {
            upload,
            shared,
            received: &received,
            hashing: hashing.as_ref(),
            parts: 0,
            field_bytes: 0,
        };
        let outcome = receiver.run(&mut parser);
        drop(stop);
        if let (Ok(()), Some(hashing)) = (&outcome, hashing) {
            let mut status = shared.status();
            for (index, digest) in hashing.finish() {
                if let Some(info) = status.files.as_mut().and_then(|f| f.get_mut(index)) {
                    info.sha256 = Some(digest);
                }
            }
        }
        outcome
    });
    let mut status = shared
        .status
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let now = unix_now();
    status.received = Some(received.get());
    match &outcome {
        Ok(()) => {
            status.state = State::Done;
            status.size = status.size.or(Some(received.get()));
            status.updated = Some(now);
        }
        Err(err) => status.fail(err.code, &err.message, now),
    }
    (status, outcome)
}

/// The watcher: publishes progress and looks for a clear.
///
/// A rewrite costs the whole document, so it is skipped while the
/// rewrites so far plus this one would exceed the body's bytes received
/// plus [`STATUS_WRITE_ALLOWANCE`]: a small status is rewritten every
/// interval, a large one only as often as the body pays for it.
fn watch(upload: &Upload, shared: &Shared, stop: mpsc::Receiver<()>, interval: Option<Duration>) {
    let mut published = Some(0);
    let mut written = 0u64;
    loop {
        match stop.recv_timeout(interval.unwrap_or(CANCEL_CHECK)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if upload.is_cancelled() {
            shared.cancelled.store(true, Ordering::Relaxed);
            return;
        }
        if interval.is_none() {
            continue;
        }
        let cost = shared.document.load(Ordering::Relaxed) as u64;
        let snapshot = {
            let mut status = shared.status();
            let received = status.received.unwrap_or(0);
            if status.received == published
                || written + cost > received.saturating_add(STATUS_WRITE_ALLOWANCE)
            {
                continue;
            }
            status.updated = Some(unix_now());
            status.clone()
        };
        // A failed write (disk full) is the data writer's to report.
        let _ = upload.write_status(&snapshot);
        written += cost;
        published = snapshot.received;
    }
}

/// Counts body bytes, and refuses to read past the size limit.
struct Counted<'a, R> {
    inner: R,
    count: &'a Cell<u64>,
    max: Option<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never ask for more than one byte past the limit: that byte is
        // enough to know the body is too large.
        let room = match self.max {
            Some(max) => {
                usize::try_from(max.saturating_sub(self.count.get()) + 1).unwrap_or(usize::MAX)
            }
            None => usize::MAX,
        };
        let end = buf.len().min(room);
        let n = self.inner.read(&mut buf[..end])?;
        let count = self.count.get() + n as u64;
        self.count.set(count);
        match self.max {
            // Carried inside the io::Error to the parser's caller, code and
            // all (see `error_code::carried`).
            Some(max) if count > max => Err(io::Error::other(HttpError::new(
                ErrorCode::TooLarge,
                format!("the upload is larger than the limit of {max} bytes"),
            ))),
            _ => Ok(n),
        }
    }
}

/// Where the current part's bytes go.
enum Sink {
    /// A file part: data goes to disk, and through the hash.
    File {
        file: File,
        index: usize,
    },
    /// A file input left empty sends `filename=""` and no bytes: the file is
    /// only made if a byte arrives.
    Pending(PartHeaders),
    Field {
        name: String,
        value: Vec<u8>,
    },
}

struct Receiver<'a> {
    upload: &'a Upload,
    shared: &'a Shared,
    received: &'a Cell<u64>,
    hashing: Option<&'a Hashing<'a>>,
    parts: usize,
    field_bytes: usize,
}

impl Receiver<'_> {
    fn run<R: Read>(&mut self, parser: &mut Parser<R>) -> Result<(), HttpError> {
        let mut sink = None;
        loop {
            let event = parser.next().map_err(|e| self.parse_error(e))?;
            if self.shared.cancelled.load(Ordering::Relaxed) {
                return Err(PoolError::Cancelled.into());
            }
            match event {
                Event::Part(headers) => {
                    self.parts += 1;
                    if self.parts > MAX_PARTS {
                        return Err(HttpError::new(
                            ErrorCode::TooManyParts,
                            format!("the form has more than {MAX_PARTS} parts"),
                        ));
                    }
                    sink = Some(self.open(headers)?);
                }
                Event::Data(bytes) => {
                    if let Some(sink) = sink.as_mut() {
                        self.write(sink, bytes)?;
                    }
                }
                Event::PartEnd => {
                    if let Some(sink) = sink.take() {
                        self.close(sink)?;
                    }
                }
                Event::End => break,
            }
        }
        // The epilogue: normally just the final line break. A body that
        // ends before its announced length was cut off, even if the form
        // inside looks complete.
        let at_end = parser
            .drain(MAX_EPILOGUE)
            .map_err(|e| self.parse_error(e))?;
        let expected = self.shared.status().size;
        if let Some(expected) = expected.filter(|&n| at_end && self.received.get() < n) {
            return Err(HttpError::new(
                ErrorCode::Truncated,
                format!(
                    "the body ended early: received {} of {expected} bytes",
                    self.received.get()
                ),
            ));
        }
        if self.shared.status().files().is_empty() {
            return Err(HttpError::new(
                ErrorCode::NoFile,
                "the form has no file part: nothing to store",
            ));
        }
        Ok(())
    }

    /// The code comes from the error (`error_code`); the message adds how
    /// far the body got.
    fn parse_error(&self, err: MultipartError) -> HttpError {
        let received = self.received.get();
        let code = ErrorCode::from(&err);
        match err {
            // A reader that knows why it failed (the size limit, a
            // FastCGI abort, a shutdown) says so with an HttpError.
            MultipartError::Io(e) => match carried(&e) {
                Some(err) => err.clone(),
                None => HttpError::new(
                    code,
                    format!("reading the request body failed after {received} bytes: {e}"),
                ),
            },
            MultipartError::Truncated => {
                let expected = self.shared.status().size;
                let of = expected.map(|n| format!(" of {n}")).unwrap_or_default();
                HttpError::new(code, format!("{err} (received {received}{of} bytes)"))
            }
            err => HttpError::new(code, err.to_string()),
        }
    }

    fn open(&mut self, headers: PartHeaders) -> Result<Sink, HttpError> {
        match headers.filename.as_deref() {
            Some("") => Ok(Sink::Pending(headers)),
            Some(_) => self.open_file(headers),
            None => {
                self.count_field_bytes(headers.name.len())?;
                Ok(Sink::Field {
                    name: headers.name,
                    value: Vec::new(),
                })
            }
        }
    }

    fn open_file(&mut self, headers: PartHeaders) -> Result<Sink, HttpError> {
        check_length("file name", headers.filename.as_deref(), MAX_FILENAME_BYTES)?;
        check_length(
            "part Content-Type",
            headers.content_type.as_deref(),
            MAX_CONTENT_TYPE_BYTES,
        )?;
        let (file, path) = self.upload.create_file()?;
        let info = FileInfo {
            field: headers.name,
            filename: headers.filename.unwrap_or_default(),
            content_type: headers
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: 0,
            sha256: None,
            path: path.to_string_lossy().into_owned(),
        };
        let mut status = self.shared.status();
        let first = status.filename.is_none();
        let mut cost = json_len(&info) + FILE_ENTRY_GROWTH + 1;
        if first {
            // The first file's name and type are also at the top.
            cost += json_len(&info.filename) + json_len(&info.content_type) + 32;
        }
        self.grow_document(cost)?;
        if first {
            status.filename = Some(info.filename.clone());
            status.content_type = Some(info.content_type.clone());
        }
        let files = status.files.get_or_insert_with(Vec::new);
        files.push(info);
        Ok(Sink::File {
            file,
            index: files.len() - 1,
        })
    }

    fn write(&mut self, sink: &mut Sink, bytes: &[u8]) -> Result<(), HttpError> {
        match sink {
            Sink::Pending(headers) => {
                *sink = self.open_file(headers.clone())?;
                self.write(sink, bytes)
            }
            Sink::File { file, index } => {
                file.write_all(bytes).map_err(store_error)?;
                if let Some(hashing) = self.hashing {
                    hashing.update(*index, bytes);
                }
                let mut status = self.shared.status();
                status.received = Some(self.received.get());
                if let Some(info) = status.files.as_mut().and_then(|f| f.get_mut(*index)) {
                    info.size += bytes.len() as u64;
                }
                Ok(())
            }
            Sink::Field { value, .. } => {
                self.count_field_bytes(bytes.len())?;
                value.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn close(&mut self, sink: Sink) -> Result<(), HttpError> {
        match sink {
            Sink::File { index, .. } => {
                if let Some(hashing) = self.hashing {
                    hashing.end(index);
                }
            }
            Sink::Pending(_) => {}
            Sink::Field { name, value } => {
                let value = String::from_utf8_lossy(&value).into_owned();
                self.grow_document(json_len(&name) + json_len(&value) + 2)?;
                // As in PHP's $_POST, a repeated name keeps its last value.
                self.shared
                    .status()
                    .fields
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, value);
            }
        }
        Ok(())
    }

    /// Counts `bytes` more of the status document against its limit.
    fn grow_document(&self, bytes: usize) -> Result<(), HttpError> {
        let total = self.shared.document.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > MAX_STATUS_DOCUMENT {
            return Err(HttpError::new(
                ErrorCode::FormTooLarge,
                format!(
                    "the form's file names, types and fields are too many or too long: \
                     their record would exceed {MAX_STATUS_DOCUMENT} bytes"
                ),
            ));
        }
        Ok(())
    }

    fn count_field_bytes(&mut self, n: usize) -> Result<(), HttpError> {
        self.field_bytes += n;
        if self.field_bytes > MAX_FIELD_BYTES {
            return Err(HttpError::new(
                ErrorCode::FormTooLarge,
                format!("the form's text fields are larger than {MAX_FIELD_BYTES} bytes in all"),
            ));
        }
        Ok(())
    }
}

/// Refuses a part header value longer than `max` bytes.
fn check_length(what: &str, value: Option<&str>, max: usize) -> Result<(), HttpError> {
    match value {
        Some(value) if value.len() > max => Err(HttpError::new(
            ErrorCode::BadPartHeader,
            format!(
                "a {what} is {} bytes long, more than the {max} bytes allowed",
                value.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// The length of `value` as JSON.
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_string(value).map_or(0, |text| text.len())
}
