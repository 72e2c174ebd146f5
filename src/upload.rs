//! Receiving one multipart upload: the form's body streamed into a claimed
//! bucket, one file per file part, the text fields into the status.
//!
//! Only what is multipart lives here: the checks of the content type and
//! length, the parser loop, where each part's bytes go, the limits on the
//! form (parts, fields, names, the status document) and the final status.
//! The machinery any protocol shares (the counted body, the progress
//! watcher, cancellation by clear, hashing, bulk priority) is in
//! [`crate::receiving`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::blocks::Blocks;
use crate::checksum::{Expected, Hasher};
use crate::digest_fields;
use crate::error_code::{ErrorCode, store_error};
use crate::http::{Body, BodyLength, HttpError, Request};
use crate::identifier::Identifier;
use crate::multipart::{self, Event, MultipartError, Parser, PartHeaders};
use crate::policy::{self, Policy, Signature};
use crate::pool::{Fenced, Pool, Upload, unix_now};
use crate::receiving::{self, Session};
use crate::status::{FileInfo, State, Status};

/// What an upload may do (shared by every protocol).
pub use crate::receiving::Options;

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
/// What a file entry's checksums (all of them, at most) and a growing
/// size add to its JSON later.
const FILE_ENTRY_GROWTH: usize =
    r#","sha256":"","sha1":"","md5":"","crc32c":"","blake3":""#.len() + 64 + 40 + 32 + 8 + 64 + 20;
/// Most bytes read after the closing boundary before answering.
const MAX_EPILOGUE: u64 = 64 * 1024;

/// Receives the request's multipart body into the bucket of `id`, and
/// returns the final status.
///
/// Every failure after the bucket is claimed is recorded in its status
/// (state `error`, with the answer's HTTP status and code), and the files stored so far are
/// removed. A conflict with a running upload (409) changes nothing.
///
/// The identifier's policy ([`crate::policy`]) applies: expired, the
/// upload is refused before a bucket is claimed (a form already running
/// when it expires finishes: the check is here, at its start); its size
/// limit lowers `max_size`; each file's type and number are checked when
/// its part's headers arrive, and for a few types its first bytes before
/// the file is made.
pub fn receive(
    pool: &Pool,
    id: &Identifier,
    request: &mut Request<'_>,
    options: &Options,
) -> Result<Status, HttpError> {
    policy::check_expiry(id.policy(), unix_now())?;
    let options = &policy::limited(options, id.policy());
    let upload = pool.begin_upload(id)?;
    let mut status = Status::uploading(id.as_str(), None, unix_now());
    let (boundary, length, digests) = match check(request, options) {
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
    let hashers = RefCell::new(digests.iter().map(Expected::hasher).collect::<Vec<_>>());
    let body = Digested {
        inner: request.body().take(limit),
        hashers: &hashers,
    };
    let (mut status, mut outcome) = stream(&upload, id, status, &boundary, body, options);
    if outcome.is_ok() {
        // Checked once the form is read, before it is recorded done: a body
        // that does not match is removed as a failed form is.
        let hashers = hashers.into_inner();
        if let Some(expected) = digests
            .iter()
            .zip(hashers)
            .find_map(|(expected, hasher)| (!hasher.matches(expected)).then_some(expected))
        {
            let err = digest_fields::mismatch(expected, "request body");
            status.fail(err.code, &err.message, unix_now());
            outcome = Err(err);
        }
    }
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

/// What can be decided before reading the body: the content type, the
/// announced length and the digests the body must have.
///
/// For a form, RFC 9530's `Repr-Digest` and `Content-Digest` both cover
/// the request body as sent, boundaries and all: the representation a
/// POST encloses is that body (this server applies no content coding), and
/// the message's content is the same bytes. So each one given is checked
/// against the body, not against the files in it.
fn check(
    request: &Request<'_>,
    options: &Options,
) -> Result<(String, BodyLength, Vec<Expected>), HttpError> {
    let content_type = request.content_type().unwrap_or("");
    let boundary = multipart::boundary(content_type)?;
    let length = request.body_length()?;
    let mut digests = Vec::new();
    for field in ["Repr-Digest", "Content-Digest"] {
        if let Some(value) = request.header(field) {
            digests.extend(digest_fields::parse(field, value)?);
        }
    }
    match (length, options.max_size) {
        (BodyLength::Absent, _) => Err(HttpError::new(
            ErrorCode::LengthRequired,
            "the request has no Content-Length and is not chunked, so its body cannot be read",
        )),
        (BodyLength::Known(n), Some(max)) if n > max => Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the upload is {n} bytes, more than the limit of {max} bytes"),
        )),
        _ => Ok((boundary, length, digests)),
    }
}

/// The request body, fed to the hashers of its RFC 9530 digests as it is
/// read (on the request's thread: a body with a digest to check is one
/// whose client asked for the cost).
///
/// Only what is read is hashed: a body with more than [`MAX_EPILOGUE`]
/// bytes after its closing boundary is not read to its end, and so fails
/// its digest.
struct Digested<'h, B> {
    inner: B,
    hashers: &'h RefCell<Vec<Hasher>>,
}

impl<B: Read> Read for Digested<'_, B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for hasher in self.hashers.borrow_mut().iter_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<B: Body> Body for Digested<'_, B> {
    fn failure(&mut self) -> Option<HttpError> {
        self.inner.failure()
    }
}

/// Streams the form into the bucket; returns the final status and how it
/// ended.
fn stream(
    upload: &Upload,
    id: &Identifier,
    status: Status,
    boundary: &str,
    body: impl Body,
    options: &Options,
) -> (Status, Result<(), HttpError>) {
    let held = Mutex::new(Held::default());
    let age = receiving::hold_limit(options);
    // The tick stores what a slow client's last bytes left held.
    let flush = |status: &mut Status| {
        let mut held = lock(&held);
        if let Some((blocks, _)) = held.file.as_mut() {
            // A failure is the request's thread's to report, at its next
            // write or at the part's end: the writer keeps it.
            if let Ok(true) = blocks.flush_older(age, |_| {}) {
                held.publish(status);
            }
        }
    };
    let (mut status, outcome) =
        receiving::run(upload, status, body, options, &flush, |body, session| {
            let mut parser = Parser::new(body, boundary);
            Receiver {
                upload,
                session,
                held: &held,
                hold: age,
                parts: 0,
                files: 0,
                field_bytes: 0,
                policy: id.policy(),
                gate: options.on_create.as_ref(),
                id,
            }
            .run(&mut parser)
        });
    let now = unix_now();
    match &outcome {
        Ok(()) => {
            status.state = State::Done;
            status.size = status.size.or(status.received);
            status.updated = Some(now);
        }
        Err(err) => status.fail(err.code, &err.message, now),
    }
    (status, outcome)
}

/// The current file part's writer, shared with the watcher's tick.
///
/// Only what the writer has stored is published: a file's `size` is its
/// stored bytes, and `received` never claims a body byte whose file bytes
/// are still held.
#[derive(Default)]
struct Held<'a> {
    /// The writer and the file's index in the status's `files`.
    file: Option<(Blocks<Fenced<'a>>, usize)>,
    /// Body bytes read when the writer last took bytes: what `received`
    /// may say once nothing is held.
    mark: u64,
}

impl Held<'_> {
    /// What the status may say: the file's stored size, and the body bytes
    /// received up to the first one still held (the held bytes are the
    /// last file bytes read, so at most `mark` less what is held).
    fn stored(&self) -> Option<(usize, u64, u64)> {
        let (blocks, index) = self.file.as_ref()?;
        let vouched = self.mark.saturating_sub(blocks.held() as u64);
        Some((*index, blocks.stored(), vouched))
    }

    fn publish(&self, status: &mut Status) {
        if let Some(stored) = self.stored() {
            publish(status, stored);
        }
    }
}

/// Raises the file's size and `received` to what is stored; never lowers
/// them (the tick and the request's thread publish in either order).
fn publish(status: &mut Status, (index, size, vouched): (usize, u64, u64)) {
    status.received = status.received.max(Some(vouched));
    if let Some(info) = status.files.as_mut().and_then(|f| f.get_mut(index)) {
        info.size = info.size.max(size);
    }
}

fn lock<'a, 'b>(held: &'a Mutex<Held<'b>>) -> MutexGuard<'a, Held<'b>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the current part's bytes go.
enum Sink {
    /// A file part: data goes to disk (through [`Held`]'s writer), and
    /// through the hash.
    File {
        index: usize,
    },
    /// A file input left empty sends `filename=""` and no bytes: the file is
    /// only made if a byte arrives.
    Pending(PartHeaders),
    /// A file whose declared type has a known signature, under a policy
    /// that lists types: its first bytes are held here until they show
    /// the type, so that a file of another kind is never made.
    Sniffing {
        headers: PartHeaders,
        signature: Signature,
        first: Vec<u8>,
    },
    Field {
        name: String,
        value: Vec<u8>,
    },
}

/// `'u` is the claim's: the data files it opens borrow it (see
/// [`crate::pool::Fenced`]).
struct Receiver<'a, 'u> {
    upload: &'u Upload,
    session: &'a Session<'a>,
    held: &'a Mutex<Held<'u>>,
    /// How long written bytes may stay held ([`receiving::hold_limit`]).
    hold: std::time::Duration,
    parts: usize,
    /// File parts begun (the policy's `file_limit` counts these).
    files: usize,
    field_bytes: usize,
    policy: Option<&'a Policy>,
    /// The `on_create` hook, until it has let the first file through.
    gate: Option<&'a crate::hooks::Gate>,
    id: &'a Identifier,
}

impl Receiver<'_, '_> {
    fn run<R: Read>(&mut self, parser: &mut Parser<R>) -> Result<(), HttpError> {
        let mut sink = None;
        loop {
            let event = parser.next().map_err(|e| self.parse_error(e))?;
            self.session.check_cancelled()?;
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
        let expected = self.session.status().size;
        if let Some(expected) = expected.filter(|&n| at_end && self.session.received() < n) {
            return Err(HttpError::new(
                ErrorCode::Truncated,
                format!(
                    "the body ended early: received {} of {expected} bytes",
                    self.session.received()
                ),
            ));
        }
        if self.session.status().files().is_empty() {
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
        let received = self.session.received();
        let code = ErrorCode::from(&err);
        match err {
            // A body that knows why it failed (the size limit, the rate
            // floor, a FastCGI abort, a shutdown) recorded the reason; the
            // read error only stopped the parser.
            MultipartError::Io(e) => self.session.body_failure().unwrap_or_else(|| {
                HttpError::new(
                    code,
                    format!("reading the request body failed after {received} bytes: {e}"),
                )
            }),
            MultipartError::Truncated => {
                let expected = self.session.status().size;
                let of = expected.map(|n| format!(" of {n}")).unwrap_or_default();
                HttpError::new(code, format!("{err} (received {received}{of} bytes)"))
            }
            err => HttpError::new(code, err.to_string()),
        }
    }

    fn open(&mut self, headers: PartHeaders) -> Result<Sink, HttpError> {
        match headers.filename.as_deref() {
            Some("") => Ok(Sink::Pending(headers)),
            Some(_) => self.begin_file(headers),
            None => {
                self.count_field_bytes(headers.name.len())?;
                Ok(Sink::Field {
                    name: headers.name,
                    value: Vec::new(),
                })
            }
        }
    }

    /// A file part's checks (its headers' lengths, the policy's count and
    /// type), then its file, or its first bytes held until they can be
    /// checked.
    fn begin_file(&mut self, headers: PartHeaders) -> Result<Sink, HttpError> {
        check_length("file name", headers.filename.as_deref(), MAX_FILENAME_BYTES)?;
        check_length(
            "part Content-Type",
            headers.content_type.as_deref(),
            MAX_CONTENT_TYPE_BYTES,
        )?;
        self.files += 1;
        policy::check_file_count(self.policy, self.files)?;
        let Some(policy) = self.policy else {
            self.ask_the_gate(&headers)?;
            return self.open_file(headers);
        };
        let declared = headers.content_type.as_deref();
        policy.check_type(declared)?;
        self.ask_the_gate(&headers)?;
        match policy.signature_for(declared) {
            Some(signature) => Ok(Sink::Sniffing {
                headers,
                signature,
                first: Vec::with_capacity(signature.needed()),
            }),
            None => self.open_file(headers),
        }
    }

    /// Runs the `on_create` hook at the upload's first file part that
    /// passed the policy, before any of its bytes are stored.
    fn ask_the_gate(&mut self, headers: &PartHeaders) -> Result<(), HttpError> {
        if let Some(gate) = self.gate.take() {
            let length = self.session.status().size;
            gate.check(&crate::hooks::Creation {
                id: self.id,
                protocol: "form",
                length,
                size_known: false,
                filename: headers.filename.as_deref(),
                content_type: headers.content_type.as_deref(),
                metadata: None,
                partial: false,
                parts: Vec::new(),
            })?;
        }
        Ok(())
    }

    fn open_file(&mut self, headers: PartHeaders) -> Result<Sink, HttpError> {
        let (file, path) = self.upload.create_file()?;
        let info = FileInfo {
            field: headers.name,
            filename: headers.filename.unwrap_or_default(),
            content_type: headers
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: 0,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: path.to_string_lossy().into_owned(),
        };
        let mut status = self.session.status();
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
        let index = files.len() - 1;
        drop(status);
        let mut held = lock(self.held);
        held.file = Some((
            Blocks::new(self.upload.fence(file)).holding(self.hold),
            index,
        ));
        held.mark = self.session.received();
        Ok(Sink::File { index })
    }

    fn write(&mut self, sink: &mut Sink, bytes: &[u8]) -> Result<(), HttpError> {
        match sink {
            Sink::Pending(headers) => {
                *sink = self.begin_file(headers.clone())?;
                self.write(sink, bytes)
            }
            Sink::Sniffing {
                headers,
                signature,
                first,
            } => {
                let take = (signature.needed() - first.len()).min(bytes.len());
                first.extend_from_slice(&bytes[..take]);
                if first.len() < signature.needed() {
                    return Ok(());
                }
                if !signature.matches_file(first, first.len() as u64) {
                    return Err(signature.mismatch());
                }
                let first = std::mem::take(first);
                *sink = self.open_file(headers.clone())?;
                self.write(sink, &first)?;
                self.write(sink, &bytes[take..])
            }
            Sink::File { index } => {
                let stored = {
                    let mut held = lock(self.held);
                    if let Some((blocks, _)) = held.file.as_mut() {
                        blocks.write(bytes, |_| {}).map_err(store_error)?;
                    }
                    held.mark = self.session.received();
                    held.stored()
                };
                if let Some(hashing) = self.session.hashing() {
                    hashing.update(*index, bytes);
                }
                // Not under the writer's lock: the tick takes the status
                // first, then the writer.
                if let Some(stored) = stored {
                    publish(&mut self.session.status(), stored);
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
            Sink::File { index } => {
                // The part's end: everything it brought is stored before
                // the status can call the file whole.
                let stored = {
                    let mut held = lock(self.held);
                    if let Some((blocks, _)) = held.file.as_mut() {
                        blocks.flush(|_| {}).map_err(store_error)?;
                    }
                    let stored = held.stored();
                    held.file = None;
                    stored
                };
                if let Some(stored) = stored {
                    publish(&mut self.session.status(), stored);
                }
                if let Some(hashing) = self.session.hashing() {
                    hashing.end(index);
                }
            }
            Sink::Pending(_) => {}
            // The part ended inside the signature: too short to be a file
            // of its declared type.
            Sink::Sniffing {
                signature, first, ..
            } => {
                if !signature.matches_file(&first, first.len() as u64) {
                    return Err(signature.mismatch());
                }
            }
            Sink::Field { name, value } => {
                let value = String::from_utf8_lossy(&value).into_owned();
                self.grow_document(json_len(&name) + json_len(&value) + 2)?;
                // As in PHP's $_POST, a repeated name keeps its last value.
                self.session
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
        if self.session.grow_document(bytes) > MAX_STATUS_DOCUMENT {
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
