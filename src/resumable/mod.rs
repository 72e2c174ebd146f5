//! Resumable uploads over the pool, whatever the protocol that carries
//! them: create one, tell its offset, append a chunk streamed from a
//! request body, terminate it, complete it.
//!
//! The split is tusd's: a protocol module ([`tus`], and [`ietf`] for the
//! IETF draft) parses and validates its headers and shapes its answers; this
//! module decides what an upload may do (limits, offsets, expiry,
//! completion) and the pool ([`crate::pool`]) only stores. Nothing here
//! knows a header name, so a second protocol uses it unchanged.
//!
//! A chunk is streamed through [`receiving::run`], as a form's body is: the
//! same counted body (the size limit enforced while streaming, the rate
//! floor, the transport's own failure reasons), the same watcher thread
//! (progress rewrites of the status, cancellation by a clear or a
//! termination). What a failed chunk leaves depends on why it failed:
//!
//! - refused (it goes past `Upload-Length` or `max_size`): cut back, so the
//!   stored bytes are what they were before the request;
//! - cut short (the connection dropped, the body stalled, the disk filled):
//!   the bytes that reached the file stay, and the upload stays resumable
//!   from there, which is the point of a resumable upload;
//! - cancelled (cleared or terminated while it ran): the bucket is gone
//!   already, nothing is written;
//! - taken over (a later request for the upload asked for it): what it
//!   stored stays, the offset and hash state are recorded, and the lock is
//!   let go of from a thread beside the reader, which a silent client may
//!   block for good;
//! - a chunk with a checksum that does not match, or that does not arrive
//!   whole: cut back, as a refused one.
//!
//! Between requests the stored state is [`State::Incomplete`] (the pool's
//! liveness rule depends on it); status answers show such an upload as
//! `uploading` ([`public_status`]).

pub mod ietf;
pub mod tus;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crate::blocks::Blocks;
use crate::checksum::{Algorithm, Expected, Hasher};
use crate::checksums::{self, Checksums};
use crate::config::Config;
use crate::digest_fields;
use crate::error_code::{ErrorCode, store_error};
use crate::hashing::{Feed, Offload, ResumableSha256, SAVED};
use crate::http::{Body, BodyLength, HttpError};
use crate::identifier::Identifier;
use crate::policy::{self, Policy, Signature};
use crate::pool::{Fenced, Pool, PoolError, Upload, unix_now};
use crate::receiving::{self, Options};
use crate::status::{FileInfo, State, Status};

/// The form field name a resumable upload's one file is listed under in
/// its status (a form gives each file its field; a resumable upload has
/// none, and middleware applications find the file under this name).
pub const FILE_FIELD: &str = "file";
/// Bytes read from a chunk's body at once.
const CHUNK_BUFFER: usize = 256 * 1024;
/// How often a chunk's request looks for a takeover when progress
/// publishing is off (the watcher's own cancellation check).
const RELEASE_CHECK: Duration = Duration::from_millis(200);
/// What a takeover waits beyond two progress intervals: the old request
/// syncs its data, hash state and status before it lets go, and a busy
/// machine stretches its ticks.
pub const TAKEOVER_MARGIN: Duration = Duration::from_secs(2);

/// How long a request for an upload that another request holds waits for
/// that one to let go (see [`crate::Pool::take_over`]): the holder looks
/// for the request at each progress tick, so two intervals and
/// [`TAKEOVER_MARGIN`] cover a tick just missed and the holder's syncs.
pub fn takeover_patience(options: &Options) -> Duration {
    options.progress_interval.unwrap_or(RELEASE_CHECK) * 2 + TAKEOVER_MARGIN
}

/// What resumable uploads may do: the form upload's options (`max_size`,
/// progress, the rate floor, whether to hash) and `max_age`, after which
/// an incomplete upload expires.
#[derive(Clone, Debug)]
pub struct Settings {
    pub options: Options,
    pub max_age: Option<Duration>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            options: Options::from_config(config),
            max_age: config.max_age,
        }
    }

    /// These settings under the identifier's policy: its size limit folded
    /// into `max_size` (see [`policy::limited`]).
    fn under(&self, policy: Option<&Policy>) -> Settings {
        Settings {
            options: policy::limited(&self.options, policy),
            max_age: self.max_age,
        }
    }

    /// When an incomplete upload last changed at `updated` expires: gc's
    /// rule (`updated` plus `max_age`), so what a client is told is when gc
    /// may remove it.
    fn expires(&self, status: &Status) -> Option<u64> {
        let max_age = self.max_age?;
        (status.state == State::Incomplete)
            .then_some(status.updated?.saturating_add(max_age.as_secs()))
    }
}

/// A new upload, as its protocol understood the creation request.
#[derive(Clone, Debug, Default)]
pub struct NewUpload {
    /// The whole upload's length; `None` while the client defers it.
    pub length: Option<u64>,
    /// The status's file name and content type.
    pub filename: Option<String>,
    pub content_type: Option<String>,
    /// The protocol's metadata, kept in the status's `fields` (as a form's
    /// text fields are) and given back by [`info`].
    pub metadata: BTreeMap<String, String>,
}

/// One chunk: where the client says it starts, a length it declares with
/// it (once, for an upload created without one), and its body.
pub struct Chunk<'r> {
    pub offset: u64,
    pub length: Option<u64>,
    pub body: &'r mut dyn Body,
    pub body_length: BodyLength,
    /// The digest the chunk's own bytes must have (tus's `Upload-Checksum`
    /// or RFC 9530's `Content-Digest`): they are hashed as they stream, and
    /// a chunk that does not match (or that ends early or is stopped, since
    /// its bytes cannot be checked then) is cut away, the offset and the
    /// saved hash state what they were before it; a mismatch is 460
    /// ([`Expected::mismatch`]).
    pub checksum: Option<Expected>,
    /// The whole upload's RFC 9530 `Repr-Digest`, checked when this chunk
    /// completes the upload (ignored otherwise).
    pub repr: Option<Expected>,
}

/// Where an upload stands after a request, for the protocol's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The stored offset.
    pub offset: u64,
    /// The whole length, once known.
    pub length: Option<u64>,
    /// When it expires, while incomplete and `max_age` is set (Unix seconds).
    pub expires: Option<u64>,
    pub complete: bool,
    /// The upload's status as a status query would answer it.
    pub status: Status,
}

impl Progress {
    fn of(status: Status) -> Progress {
        Progress {
            offset: status.offset.unwrap_or(0),
            length: status.size,
            expires: status.expires,
            complete: status.state == State::Done,
            status,
        }
    }

    /// The metadata given at creation.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.status.fields.as_ref().unwrap_or(&EMPTY)
    }
}

/// Creates an upload under `id`, with `first` as its first chunk when the
/// creation request carries one, held to its digests as an appended chunk
/// is. A length over `max_size` is refused (413) before anything is
/// made; an identifier in use is 409, as for a form. An upload of length 0
/// is complete at once.
pub fn create(
    pool: &Pool,
    id: &Identifier,
    new: NewUpload,
    first: Option<Chunk<'_>>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    create_upload(pool, id, new, false, first, settings)
}

/// Creates a partial upload, a part of a later concatenation (see
/// [`concatenate`]), as [`create`] does otherwise. It completes when its
/// offset reaches its length (state `done`, with `"partial": true` in its
/// status) but is never handed to an application: only a final upload made
/// of it is a file the application gets. It is removed once concatenated;
/// one never used stays until it is cleared or gc removes it.
pub fn create_partial(
    pool: &Pool,
    id: &Identifier,
    new: NewUpload,
    first: Option<Chunk<'_>>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    create_upload(pool, id, new, true, first, settings)
}

fn create_upload(
    pool: &Pool,
    id: &Identifier,
    new: NewUpload,
    partial: bool,
    first: Option<Chunk<'_>>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    // The policy, checked before anything is made: an expired identifier,
    // a type it does not accept, a length over its size (below), or too
    // short to hold the declared type's signature, leave nothing.
    let policy = id.policy();
    policy::check_expiry(policy, unix_now())?;
    let settings = &settings.under(policy);
    if let Some(policy) = policy {
        policy.check_type(new.content_type.as_deref())?;
        check_short(policy, new.content_type.as_deref(), new.length)?;
    }
    if let (Some(length), Some(max)) = (new.length, settings.options.max_size)
        && length > max
    {
        return Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the upload is {length} bytes, more than the limit of {max} bytes"),
        ));
    }
    let mut status = Status::incomplete(id.as_str(), new.length, unix_now());
    status.filename = new.filename;
    status.content_type = new.content_type;
    status.fields = Some(new.metadata);
    status.partial = partial;
    let upload = pool.create_resumable(id, &status)?;
    match first {
        Some(chunk) if chunk.offset != 0 => Err(PoolError::OffsetMismatch {
            stored: 0,
            given: chunk.offset,
        }
        .into()),
        // A first chunk that fails its checksum is cut away as an append's
        // is: the upload stays, at offset 0.
        Some(chunk) => proceed(pool, id, upload, status, chunk, settings),
        None if new.length == Some(0) => finish(pool, id, upload, status, None, None, settings),
        None => {
            upload.pause(&status)?;
            info(pool, id, settings)
        }
    }
}

/// Where the upload under `id` stands, without taking its lock (so never
/// queued behind a running chunk). 404 [`ErrorCode::UploadNotFound`] for
/// none (never made, terminated, cleared, or a form upload), 410
/// [`ErrorCode::UploadGone`] for one that failed or expired.
pub fn info(pool: &Pool, id: &Identifier, settings: &Settings) -> Result<Progress, HttpError> {
    let stored = pool.status(id)?;
    check_usable(&stored, settings)?;
    Ok(Progress::of(public_status(pool, id, stored, settings)))
}

/// Appends `chunk` to the upload under `id`, from any process or host
/// sharing the pool.
///
/// Checked under the upload's lock, before a byte is written: the offset
/// (409, with the stored one in the message), a declared length (only on
/// an upload without one, not below the offset, not over `max_size`), and
/// an announced body that would go past the length (413) or `max_size`.
/// The body is then held to the same limits while it streams. The upload
/// is complete when its offset reaches its length.
///
/// A request that finds the upload held by another (the client's previous
/// request, still running on a half-open connection) takes it over: the
/// holder is asked to let go at its next progress tick, keeps what it
/// stored and is answered 400 `ERR_UPLOAD_INTERRUPTED`; this one waits
/// [`takeover_patience`] for it (423 `ERR_UPLOAD_LOCKED` after that), then
/// checks the offset against what is stored now (409 if the old request
/// stored more meanwhile). The chunk's [`Chunk::checksum`], when given, is
/// checked as its bytes stream.
pub fn append(
    pool: &Pool,
    id: &Identifier,
    chunk: Chunk<'_>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    // Before the takeover: a chunk refused for expiry disturbs no request
    // still running (one started before the expiry may finish).
    policy::check_expiry(id.policy(), unix_now())?;
    let settings = &settings.under(id.policy());
    let upload = pool.take_over(id, takeover_patience(&settings.options))?;
    let mut status = pool.status(id)?;
    check_usable(&status, settings)?;
    if let Some(length) = chunk.length {
        match status.size {
            Some(known) if known != length => {
                return Err(HttpError::new(
                    ErrorCode::InvalidUploadLength,
                    format!("the upload's length is {known} already, not {length}"),
                ));
            }
            Some(_) => {}
            None => {
                check_length(length, chunk.offset, &settings.options)?;
                if let Some(policy) = id.policy() {
                    check_short(policy, status.content_type.as_deref(), Some(length))?;
                }
                status.size = Some(length);
            }
        }
    }
    proceed(pool, id, upload, status, chunk, settings)
}

/// Makes the final upload under `id` of the partial uploads `parts`, in
/// order: one file in the pool, the partial uploads removed (see
/// [`Pool::concatenate`], which copies in the kernel). Each part must be a
/// complete partial upload ([`create_partial`]): anything else, a form
/// upload or an ordinary resumable one included, is refused, so that an
/// upload a client completed on its own is never swallowed into another.
/// The total is held to `max_size` (413). The final upload is complete at
/// once, with its listed checksums, and its `parts` listed.
pub fn concatenate(
    pool: &Pool,
    id: &Identifier,
    new: NewUpload,
    parts: &[Identifier],
    settings: &Settings,
) -> Result<Progress, HttpError> {
    policy::check_expiry(id.policy(), unix_now())?;
    let settings = &settings.under(id.policy());
    if let Some(policy) = id.policy() {
        policy.check_type(new.content_type.as_deref())?;
    }
    let mut total = 0u64;
    for part in parts {
        let stored = pool.status(part)?;
        let refuse = |code, why: &str| {
            HttpError::new(code, format!("upload {part} cannot be concatenated: {why}"))
        };
        if !stored.resumable || !stored.partial || stored.state == State::Starting {
            return Err(refuse(
                ErrorCode::PartialNotFound,
                "there is no partial upload under it (created with Upload-Concat: partial)",
            ));
        }
        if stored.state != State::Done {
            return Err(refuse(ErrorCode::PartialIncomplete, "it is not complete"));
        }
        total = total.saturating_add(stored.size.unwrap_or(0));
    }
    if let Some(max) = settings.options.max_size
        && total > max
    {
        return Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the parts are {total} bytes together, more than the limit of {max} bytes"),
        ));
    }
    let mut status = Status::incomplete(id.as_str(), Some(total), unix_now());
    status.filename = new.filename;
    status.content_type = new.content_type;
    status.fields = Some(new.metadata);
    status.parts = Some(parts.iter().map(|p| p.as_str().to_owned()).collect());
    pool.concatenate(id, parts, &status, settings.options.checksums)?;
    let progress = info(pool, id, settings)?;
    // The parts' bytes were never checked as this type (a part declares its
    // own, or none): the final file's first bytes are, now that it exists.
    if let Some(signature) = id
        .policy()
        .and_then(|p| p.signature_for(progress.status.content_type.as_deref()))
    {
        let first = progress
            .status
            .files()
            .first()
            .map(|file| first_bytes(&file.path, signature.needed()))
            .unwrap_or_default();
        if !signature.matches_file(&first, total) {
            if let Err(cleared) = pool.clear(id) {
                crate::log!("cannot remove upload {id} of the wrong type: {cleared}");
            }
            return Err(signature.mismatch());
        }
    }
    Ok(progress)
}

/// Up to `n` first bytes of the stored file at `path` (none if it cannot be
/// read, which then fails the check it is read for). Opened without
/// following a link, and without blocking on anything but a file.
fn first_bytes(path: &str, n: usize) -> Vec<u8> {
    use rustix::fs::{Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut first = Vec::with_capacity(n);
    let _ = std::fs::File::from(fd)
        .take(n as u64)
        .read_to_end(&mut first);
    first
}

/// Terminates the upload under `id`: it is removed for every process (a
/// chunk running in another one stops at its next progress tick) and the
/// identifier is unknown again, as after a clear. 404 when there is no
/// resumable upload under it: a form upload is not this API's to delete.
pub fn terminate(pool: &Pool, id: &Identifier) -> Result<(), HttpError> {
    let stored = pool.status(id)?;
    if !stored.resumable || !pool.clear(id)? {
        return Err(PoolError::NotFound.into());
    }
    Ok(())
}

/// The status of a resumable upload as status queries answer it: an
/// incomplete one is `uploading`, whether or not a request is adding to it
/// right now, with `received` and `offset` the stored offset (the data
/// file's length) and `expires`; a complete one has its `offset` too.
/// Anything else is given back as it is.
///
/// Only the answer says `uploading`: on disk the state stays `incomplete`,
/// which the pool never takes for a dead receiver, so a paused upload is
/// never reported interrupted.
pub fn public_status(pool: &Pool, id: &Identifier, stored: Status, settings: &Settings) -> Status {
    if !stored.resumable {
        return stored;
    }
    let mut status = stored;
    match status.state {
        State::Incomplete => {
            status.expires = settings.expires(&status);
            let offset = pool
                .offset(id)
                .unwrap_or_else(|_| status.received.unwrap_or(0));
            status.state = State::Uploading;
            status.received = Some(offset);
            status.offset = Some(offset);
        }
        State::Done => status.offset = status.size,
        _ => {}
    }
    status
}

/// Refuses what no request may continue or describe.
fn check_usable(status: &Status, settings: &Settings) -> Result<(), HttpError> {
    match status.state {
        _ if !status.resumable => Err(PoolError::NotFound.into()),
        State::Starting => Err(PoolError::NotFound.into()),
        State::Error => Err(HttpError::new(
            ErrorCode::UploadGone,
            format!(
                "the upload failed ({}); its bytes are gone: start a new one",
                status.error.as_deref().unwrap_or("no reason recorded")
            ),
        )),
        State::Incomplete
            if settings
                .expires(status)
                .is_some_and(|expires| expires <= unix_now()) =>
        {
            Err(HttpError::new(
                ErrorCode::UploadGone,
                "the upload expired (max_age after its last chunk): start a new one",
            ))
        }
        _ => Ok(()),
    }
}

/// A length declared after creation: at least what is stored, at most
/// `max_size`.
fn check_length(length: u64, offset: u64, options: &Options) -> Result<(), HttpError> {
    if length < offset {
        return Err(HttpError::new(
            ErrorCode::InvalidUploadLength,
            format!("the length {length} is less than the {offset} bytes stored"),
        ));
    }
    if let Some(max) = options.max_size
        && length > max
    {
        return Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the upload is {length} bytes, more than the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// The limit a chunk starting at `offset` is held to, and what going past
/// it means: the upload's length once known (past it, the client is wrong
/// about its own file), `max_size` while it is deferred.
fn room(status: &Status, offset: u64, options: &Options) -> Option<(u64, ErrorCode)> {
    match status.size {
        Some(length) => Some((length.saturating_sub(offset), ErrorCode::UploadSizeExceeded)),
        None => options
            .max_size
            .map(|max| (max.saturating_sub(offset), ErrorCode::TooLarge)),
    }
}

fn past_the_end(code: ErrorCode, status: &Status, offset: u64, options: &Options) -> HttpError {
    match (code, status.size, options.max_size) {
        (ErrorCode::UploadSizeExceeded, Some(length), _) => HttpError::new(
            code,
            format!(
                "the chunk goes past the upload's length of {length} bytes \
                 (it starts at {offset}); nothing of it was kept"
            ),
        ),
        (_, _, Some(max)) => HttpError::new(
            ErrorCode::TooLarge,
            format!(
                "the upload is larger than the limit of {max} bytes \
                 (the chunk starts at {offset}); nothing of it was kept"
            ),
        ),
        _ => HttpError::new(code, "the chunk goes past the upload's end"),
    }
}

/// What a chunk's request has stored, shared between its reader and the
/// thread that lets go of the upload on a takeover (see [`let_go_when_asked`]).
struct Written<'a> {
    /// Fed every byte stored, in order: on the reader's thread while the
    /// chunk may be slow, on a thread of their own once it proves fast, as
    /// a form's files are (see [`crate::hashing`]).
    hashes: Offload<Hashes>,
    /// The data file, written in blocks ([`crate::blocks`]): the hashes are
    /// fed each block once it is written, so their state never covers a
    /// byte that is only held.
    out: Blocks<Fenced<'a>>,
    /// Let go of: nothing more may be written.
    released: bool,
}

impl Written<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Written { hashes, out, .. } = self;
        out.write(bytes, |stored| hashes.feed((), stored))
    }

    fn flush(&mut self) -> io::Result<()> {
        let Written { hashes, out, .. } = self;
        out.flush(|stored| hashes.feed((), stored))
    }

    /// The tick's flush (see [`receiving::run`]): stores bytes held for
    /// `age` or longer and raises `received` to what is stored.
    fn flush_older(&mut self, age: Duration, start: u64, status: &mut Status) {
        if self.released {
            return;
        }
        let Written { hashes, out, .. } = self;
        // A failure is the reader's to report at its next write: the
        // writer keeps it.
        if let Ok(true) = out.flush_older(age, |stored| hashes.feed((), stored)) {
            status.received = status.received.max(Some(start + out.stored()));
        }
    }
}

/// The hashes a chunk's bytes go through.
#[derive(Default)]
struct Hashes {
    /// The whole file's SHA-256, up to the bytes stored.
    whole: Option<ResumableSha256>,
    /// The chunk's own checksum, when the client gave one.
    check: Option<Hasher>,
}

impl Feed for Hashes {
    type Tag = ();

    fn feed(&mut self, (): (), bytes: &[u8]) {
        if let Some(whole) = self.whole.as_mut() {
            whole.update(bytes);
        }
        if let Some(check) = self.check.as_mut() {
            check.update(bytes);
        }
    }
}

fn lock<'a, 'b>(written: &'a Mutex<Written<'b>>) -> MutexGuard<'a, Written<'b>> {
    written.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Streams `chunk` into the claimed `upload`, then pauses or completes it.
///
/// With `sha256`, the whole file's hash state is loaded (and caught up over
/// bytes a killed request stored but never hashed), fed each byte as it is
/// stored, and saved whenever the request ends with bytes kept, so that
/// completion hashes nothing again. It is only ever saved for bytes that
/// stay: a chunk cut away puts back the state from before it.
fn proceed(
    pool: &Pool,
    id: &Identifier,
    upload: Upload,
    mut status: Status,
    mut chunk: Chunk<'_>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    let start = chunk.offset;
    let repr = chunk.repr.take();
    let checksum = chunk.checksum.take();
    let checksum = checksum.as_ref();
    let file = upload.open_data_at(start)?;
    let limit = room(&status, start, &settings.options);
    let announced = chunk.body_length.known();
    if let (Some(n), Some((room, code))) = (announced, limit)
        && n > room
    {
        // Refused before a byte is read: the upload is as it was (the
        // claim, dropped, leaves the status and the bytes alone).
        return Err(past_the_end(code, &status, start, &settings.options));
    }
    let checksums = settings.options.checksums;
    let hash = match !saved(checksums).is_empty() {
        true => {
            let mut hash = saved_hash(&upload, checksums);
            hash.catch_up(&file, start).map_err(store_error)?;
            Some(hash)
        }
        false => None,
    };
    let before = hash.clone();
    let written = Mutex::new(Written {
        hashes: Offload::new(Hashes {
            whole: hash,
            check: checksum.map(Expected::hasher),
        }),
        out: Blocks::new(upload.fence(file)).holding(receiving::hold_limit(&settings.options)),
        released: false,
    });
    let body_bytes = match chunk.body_length {
        BodyLength::Known(n) => n,
        BodyLength::UntilEnd => u64::MAX,
        // RFC 3875: no length, no body.
        BodyLength::Absent => 0,
    };
    status.received = Some(start);
    let options = Options {
        max_size: limit.map(|(room, _)| room),
        // The whole file is hashed here, across requests (see `Written`).
        checksums: Checksums::NONE,
        ..settings.options.clone()
    };
    // Under a policy that lists types, the bytes of the declared type's
    // signature are checked as they are read, before they are written.
    let signature = id
        .policy()
        .and_then(|p| p.signature_for(status.content_type.as_deref()))
        .filter(|s| start < s.needed() as u64);
    let body = Sniffed {
        inner: chunk.body,
        signature,
        at: start,
        mismatch: false,
    }
    .take(body_bytes);
    let resting = status.clone();
    let unchecked = Unchecked {
        start,
        checksum: checksum.is_some(),
        before: before.as_ref(),
    };
    let age = receiving::hold_limit(&options);
    let flush = |status: &mut Status| lock(&written).flush_older(age, start, status);
    let (status, outcome) = thread::scope(|scope| {
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = settings.options.progress_interval.unwrap_or(RELEASE_CHECK);
        let (upload, written, resting, unchecked) = (&upload, &written, &resting, &unchecked);
        scope.spawn(move || {
            let_go_when_asked(upload, written, resting, unchecked, stopped, interval)
        });
        let ran = receiving::run(upload, status, body, &options, &flush, |body, session| {
            copy_chunk(body, start, announced, session, written)
        });
        drop(stop);
        ran
    });
    let mut status = status;
    // In a block of its own: the data file borrows `upload`, which is
    // moved below.
    let Hashes { whole: hash, check } = {
        let mut written = written.into_inner().unwrap_or_else(PoisonError::into_inner);
        if written.released {
            // The upload is the next request's now: nothing more is written.
            return Err(PoolError::Superseded.into());
        }
        if outcome.is_err() {
            // Cut short: what arrived is stored, as it would have been unheld,
            // and the upload continues after it. (A chunk that is cut away is
            // cut after this; a failure here leaves the file at what did reach
            // it, which the offset below records.)
            if let Err(err) = written.flush() {
                crate::log!("upload {id}: storing the chunk's last bytes: {err}");
            }
        }
        let Written { hashes, out, .. } = written;
        // Closed before the status is recorded and synced.
        drop(out);
        hashes.finish().unwrap_or_else(|lost| {
            // No state for the file: the next request catches up from the
            // saved one. No checksum: the chunk is refused as unproven.
            crate::log!("upload {id}: {lost}");
            Hashes::default()
        })
    };
    match outcome {
        Ok(written) => {
            if let Some(expected) = checksum
                && !check.is_some_and(|check| check.matches(expected))
            {
                unchecked.discard(&upload)?;
                status.received = Some(start);
                upload.pause(&status)?;
                return Err(expected.mismatch());
            }
            let offset = start + written;
            status.received = Some(offset);
            if status.size == Some(offset) {
                finish(pool, id, upload, status, hash, repr.as_ref(), settings)
            } else {
                save_hash(&upload, hash.as_ref());
                upload.pause(&status)?;
                info(pool, id, settings)
            }
        }
        Err(err) if err.code == ErrorCode::Cancelled || upload.is_cancelled() => {
            // Cleared or terminated: the bucket is out of the pool already.
            drop(upload);
            Err(PoolError::Cancelled.into())
        }
        Err(err) if err.code == ErrorCode::TypeNotAccepted => {
            // Not the declared type: the upload goes (nothing of it is
            // kept, as for a refused form), the identifier is free again.
            drop(upload);
            if let Err(cleared) = pool.clear(id) {
                crate::log!("cannot remove upload {id} of the wrong type: {cleared}");
            }
            Err(err)
        }
        Err(err) => {
            let err = match (err.code, limit) {
                (ErrorCode::TooLarge, Some((_, code))) => {
                    // Past the end: the client is wrong about its file, so
                    // nothing of this chunk is kept.
                    unchecked.discard(&upload)?;
                    past_the_end(code, &status, start, &settings.options)
                }
                // Bytes of a checked chunk that ended early cannot be
                // checked: they go, and the client sends the chunk again.
                _ if checksum.is_some() => {
                    unchecked.discard(&upload)?;
                    err
                }
                _ => {
                    save_hash(&upload, hash.as_ref());
                    err
                }
            };
            status.received = Some(upload.offset().unwrap_or(start));
            // What reached the file stays: the client continues after it.
            if let Err(paused) = upload.pause(&status) {
                crate::log!("cannot record the offset of upload {id}: {paused}");
            }
            Err(err)
        }
    }
}

/// 415 for an upload whose whole length is too short to start with its
/// declared type's signature (only a policy that lists types asks).
fn check_short(
    policy: &Policy,
    declared: Option<&str>,
    length: Option<u64>,
) -> Result<(), HttpError> {
    match (policy.signature_for(declared), length) {
        (Some(signature), Some(length)) if length < signature.needed() as u64 => {
            Err(signature.mismatch())
        }
        _ => Ok(()),
    }
}

/// A chunk's body, its bytes checked against the declared type's
/// signature where they fall inside it (`at` is the file offset of the
/// next byte read); past the signature it only passes bytes on.
struct Sniffed<'r> {
    inner: &'r mut dyn Body,
    signature: Option<Signature>,
    at: u64,
    mismatch: bool,
}

impl Read for Sniffed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(signature) = self.signature {
            if !signature.matches_at(self.at, &buf[..n]) {
                self.mismatch = true;
                return Err(io::Error::other("the chunk is not of its declared type"));
            }
            self.at += n as u64;
            if self.at >= signature.needed() as u64 {
                self.signature = None;
            }
        }
        Ok(n)
    }
}

impl Body for Sniffed<'_> {
    fn failure(&mut self) -> Option<HttpError> {
        match (self.mismatch, self.signature) {
            (true, Some(signature)) => Some(signature.mismatch()),
            _ => self.inner.failure(),
        }
    }
}

/// How to undo a chunk: where it started, whether its bytes are unchecked
/// until it ends (a checksum was given), and the hash state from before it.
struct Unchecked<'a> {
    start: u64,
    checksum: bool,
    before: Option<&'a ResumableSha256>,
}

impl Unchecked<'_> {
    /// Cuts the chunk away and puts back the hash state from before it.
    fn discard(&self, upload: &Upload) -> Result<(), PoolError> {
        upload.truncate_data(self.start)?;
        save_hash(upload, self.before);
        Ok(())
    }
}

/// Waits, beside the reader, for a later request's takeover: when one
/// asks ([`Upload::release_requested`]), saves what is stored (the hash
/// state; a checked chunk is cut away instead), records the offset and
/// lets go of the lock at once, without waiting for the reader. The reader
/// may be blocked for good on a client that went silent (a half-open
/// connection), so this thread, not the reader, must be the one to let go;
/// the reader finds `released` set when it wakes and writes nothing more.
fn let_go_when_asked(
    upload: &Upload,
    written: &Mutex<Written<'_>>,
    resting: &Status,
    unchecked: &Unchecked<'_>,
    stopped: mpsc::Receiver<()>,
    interval: Duration,
) {
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if !upload.release_requested() {
            continue;
        }
        let mut state = lock(written);
        // What the reader handed over is stored before the offset is
        // recorded and the hash state saved (a checked chunk is cut away
        // just after: its bytes are written, then discarded).
        if let Err(err) = state.flush() {
            crate::log!("handing over: storing the last bytes read: {err}");
        }
        let kept = match unchecked.checksum {
            true => unchecked.discard(upload),
            false => {
                // Waits for a hashing thread to reach the last byte stored.
                match state.hashes.peek(|hashes| hashes.whole.clone()) {
                    Ok(whole) => save_hash(upload, whole.as_ref()),
                    Err(lost) => crate::log!("handing over: {lost}; the next request catches up"),
                }
                Ok(())
            }
        };
        let released = kept.and_then(|()| upload.let_go(resting));
        state.released = true;
        if let Err(err) = released {
            crate::log!("handing upload {:?} over: {err}", resting.identifier);
        }
        return;
    }
}

/// The checksums `checksums` lists that the saved hash state carries.
fn saved(checksums: Checksums) -> Checksums {
    SAVED
        .into_iter()
        .filter(|sum| checksums.contains(*sum))
        .fold(Checksums::NONE, Checksums::with)
}

/// The saved hash state of the upload, or a new one (from byte 0) when
/// there is none or it cannot be used: a refused state costs a re-read,
/// never a wrong digest. A state carrying other checksums than `checksums`
/// lists (the setting changed during the upload) is one that cannot be
/// used.
fn saved_hash(upload: &Upload, checksums: Checksums) -> ResumableSha256 {
    let wanted = saved(checksums);
    let loaded = upload
        .load_hash_state()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            bytes
                .map(|b| ResumableSha256::from_bytes(&b))
                .transpose()
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(Some(hash)) if hash.carried() == wanted => hash,
        Ok(Some(_)) => {
            crate::log!("hashing the upload from its start: its saved state has other checksums");
            ResumableSha256::with(checksums)
        }
        Ok(None) => ResumableSha256::with(checksums),
        Err(err) => {
            crate::log!("hashing the upload from its start: {err}");
            ResumableSha256::with(checksums)
        }
    }
}

/// Saves the hash state; a failure only costs the next request a re-read.
fn save_hash(upload: &Upload, hash: Option<&ResumableSha256>) {
    if let Some(hash) = hash
        && let Err(err) = upload.save_hash_state(&hash.to_bytes())
    {
        crate::log!("cannot save the hash state: {err}; it will be read again");
    }
}

/// Copies the body to the end of the data file; returns the bytes
/// written. `received` in the status follows the bytes written, not read,
/// so the watcher only publishes what is stored. Each piece goes to the
/// block writer under `written`'s lock, which hands each block to the
/// hashes once it is written, so a takeover lets go between pieces and
/// its hash state covers exactly the bytes stored. Bytes held between
/// blocks are stored at the chunk's end, by a takeover, by the watcher's
/// tick once they are a progress interval old, and, when the chunk is cut
/// short, by [`proceed`].
fn copy_chunk(
    mut body: impl Read,
    start: u64,
    announced: Option<u64>,
    session: &receiving::Session<'_>,
    shared: &Mutex<Written<'_>>,
) -> Result<u64, HttpError> {
    let mut buffer = vec![0; CHUNK_BUFFER];
    let mut written = 0u64;
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(session.body_failure().unwrap_or_else(|| {
                    HttpError::new(
                        ErrorCode::Truncated,
                        format!(
                            "reading the chunk failed after {written} bytes: {e}; \
                             the upload continues from offset {}",
                            start + written
                        ),
                    )
                }));
            }
        };
        session.check_cancelled()?;
        let mut state = lock(shared);
        if state.released {
            return Err(PoolError::Superseded.into());
        }
        state.write(&buffer[..n]).map_err(store_error)?;
        let stored = state.out.stored();
        drop(state);
        written += n as u64;
        // Not under the writer's lock: the tick takes the status first.
        let mut status = session.status();
        status.received = status.received.max(Some(start + stored));
    }
    {
        let mut state = lock(shared);
        if state.released {
            return Err(PoolError::Superseded.into());
        }
        state.flush().map_err(store_error)?;
        let stored = state.out.stored();
        drop(state);
        let mut status = session.status();
        status.received = status.received.max(Some(start + stored));
    }
    if let Some(announced) = announced.filter(|&n| written < n) {
        return Err(HttpError::new(
            ErrorCode::Truncated,
            format!(
                "the chunk ended after {written} of {announced} bytes; \
                 the upload continues from offset {}",
                start + written
            ),
        ));
    }
    Ok(written)
}

/// Completes the upload: state `done`, its one file with the name and type
/// from its metadata and the listed checksums of the whole file.
///
/// The one place an upload becomes `done`, whichever protocol and request
/// brought its last byte. The digest comes from `hash`, the state the
/// completing request carried over every chunk (or the saved one): only
/// bytes it never saw are read, which in the common case is none. The other
/// checksums, whose states are not saved, read the whole file once.
/// Should recording it fail, the upload stays incomplete with all its
/// bytes (see [`Upload::finish`]) and the completing request may be
/// repeated.
fn finish(
    pool: &Pool,
    id: &Identifier,
    upload: Upload,
    mut status: Status,
    hash: Option<ResumableSha256>,
    repr: Option<&Expected>,
    settings: &Settings,
) -> Result<Progress, HttpError> {
    let size = upload.offset()?;
    // Made here for an empty upload, whose path the status gives.
    let file = upload.open_data_at(size)?;
    let checksums = settings.options.checksums;
    let sums = if !saved(checksums).is_empty() {
        let mut hash = hash.unwrap_or_else(|| saved_hash(&upload, checksums));
        hash.catch_up(&file, size).map_err(store_error)?;
        hash.finish()
    } else {
        checksums::Sums::default()
    };
    if let Some(expected) = repr {
        let matches = match (expected.algorithm, &sums.sha256) {
            (Algorithm::Sha256, Some(sha256)) => {
                *sha256 == crate::identifier::hex(&expected.digest)
            }
            _ => {
                let mut hasher = expected.hasher();
                checksums::read_through(&file, size, |bytes| hasher.update(bytes))
                    .map_err(store_error)?;
                hasher.matches(expected)
            }
        };
        if !matches {
            // Not the file the client meant: it goes, as a refused form
            // does, and the identifier is free again.
            drop(file);
            drop(upload);
            if let Err(cleared) = pool.clear(id) {
                crate::log!("cannot remove upload {id}, which failed its Repr-Digest: {cleared}");
            }
            return Err(digest_fields::mismatch(expected, "upload"));
        }
    }
    // BLAKE3's state cannot be saved between requests: it reads the file
    // once, here.
    let unsaved = SAVED.iter().fold(checksums, |set, sum| set.without(*sum));
    let blake3 = checksums::of_file(unsaved, &file, size).map_err(store_error)?;
    drop(file);
    let now = unix_now();
    status.state = State::Done;
    status.size = Some(size);
    status.received = Some(size);
    status.updated = Some(now);
    status.files = Some(vec![FileInfo {
        field: FILE_FIELD.to_owned(),
        filename: status.filename.clone().unwrap_or_default(),
        content_type: status
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        size,
        sha256: sums.sha256,
        sha1: sums.sha1,
        md5: sums.md5,
        crc32c: sums.crc32c,
        blake3: blake3.blake3,
        path: upload.data_path().to_string_lossy().into_owned(),
    }]);
    upload.finish(&status)?;
    Ok(Progress::of(public_status(pool, id, status, settings)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::{hex, verify_identifier};
    use sha2::{Digest, Sha256};
    use std::io::Write;

    fn settings(max_size: Option<u64>) -> Settings {
        Settings {
            options: Options {
                max_size,
                checksums: Checksums::default(),
                progress_interval: None,
                min_rate: None,
                min_rate_after: receiving::MIN_RATE_AFTER,
                on_create: None,
            },
            max_age: Some(Duration::from_secs(3600)),
        }
    }

    fn chunk<'r>(offset: u64, body: &'r mut &[u8]) -> Chunk<'r> {
        let body_length = BodyLength::Known(body.len() as u64);
        Chunk {
            offset,
            length: None,
            body,
            body_length,
            checksum: None,
            repr: None,
        }
    }

    #[test]
    fn chunks_complete_an_upload_with_its_digest_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r1", None).unwrap();
        let settings = settings(None);
        let new = NewUpload {
            length: Some(6),
            filename: Some("a.txt".into()),
            content_type: Some("text/plain".into()),
            metadata: BTreeMap::from([("filename".into(), "a.txt".into())]),
        };
        let created = create(&pool, &id, new, None, &settings).unwrap();
        assert_eq!((created.offset, created.length), (0, Some(6)));
        assert!(created.expires.is_some() && !created.complete);
        let first = append(&pool, &id, chunk(0, &mut &b"abc"[..]), &settings).unwrap();
        assert_eq!((first.offset, first.complete), (3, false));
        assert_eq!(first.status.state, State::Uploading);
        let stored = pool.status(&id).unwrap();
        assert_eq!(stored.state, State::Incomplete, "the disk keeps incomplete");
        let last = append(&pool, &id, chunk(3, &mut &b"def"[..]), &settings).unwrap();
        assert!(last.complete);
        let file = &last.status.files()[0];
        assert_eq!(std::fs::read(&file.path).unwrap(), b"abcdef");
        assert_eq!(
            file.sha256.as_deref(),
            Some(hex(&Sha256::digest(b"abcdef")).as_str())
        );
        assert_eq!(
            (file.filename.as_str(), file.content_type.as_str()),
            ("a.txt", "text/plain")
        );
        assert_eq!(last.metadata()["filename"], "a.txt");
        assert_eq!(
            last.expires, None,
            "a complete upload does not expire as incomplete"
        );
    }

    #[test]
    fn a_chunk_past_the_length_leaves_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r2", None).unwrap();
        let settings = settings(None);
        let new = NewUpload {
            length: Some(4),
            ..NewUpload::default()
        };
        create(&pool, &id, new, None, &settings).unwrap();
        append(&pool, &id, chunk(0, &mut &b"ab"[..]), &settings).unwrap();
        // Streamed without a length: refused at the byte past the end.
        let mut body = &b"cdefgh"[..];
        let streamed = Chunk {
            offset: 2,
            length: None,
            body: &mut body,
            body_length: BodyLength::UntilEnd,
            checksum: None,
            repr: None,
        };
        let err = append(&pool, &id, streamed, &settings).unwrap_err();
        assert_eq!(err.code, ErrorCode::UploadSizeExceeded, "{err}");
        assert_eq!(pool.offset(&id).unwrap(), 2);
        let data = dir.path().join("r2").join("file-1");
        assert_eq!(std::fs::read(data).unwrap(), b"ab");
        // And the upload goes on.
        let done = append(&pool, &id, chunk(2, &mut &b"cd"[..]), &settings).unwrap();
        assert!(done.complete);
    }

    /// Bytes this thread has read through system calls (`rchar`): the
    /// hashing runs in the calling thread, so only its reads are counted.
    fn thread_reads() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|line| line.strip_prefix("rchar: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn completion_reads_back_only_bytes_never_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r3", None).unwrap();
        let settings = settings(None);
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let new = NewUpload {
            length: Some(data.len() as u64),
            ..NewUpload::default()
        };
        create(&pool, &id, new, None, &settings).unwrap();
        append(&pool, &id, chunk(0, &mut &data[..1_500_000]), &settings).unwrap();
        append(
            &pool,
            &id,
            chunk(1_500_000, &mut &data[1_500_000..3_000_000]),
            &settings,
        )
        .unwrap();
        // A request killed after its write, before its save: 500 000 bytes
        // stored that no state saw.
        let path = dir.path().join("r3").join("file-1");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&data[3_000_000..3_500_000]).unwrap();
        drop(file);
        let before = thread_reads();
        let done = append(
            &pool,
            &id,
            chunk(3_500_000, &mut &data[3_500_000..]),
            &settings,
        )
        .unwrap();
        let read = thread_reads() - before;
        assert!(done.complete);
        assert_eq!(
            done.status.files()[0].sha256.as_deref(),
            Some(hex(&Sha256::digest(&data)).as_str())
        );
        // The 500 000 unhashed bytes and a few small files (status, state),
        // never the 4 MB file.
        assert!(
            (500_000..600_000).contains(&read),
            "{read} bytes read to complete"
        );
    }

    /// A fast chunk (hashed on a thread of its own) whose client then goes
    /// silent, taken over by the next request: the state the old request
    /// saves covers exactly the bytes stored, so completing reads nothing
    /// back and the digest is the file's.
    #[test]
    fn a_takeover_mid_chunk_saves_the_hash_of_every_byte_stored() {
        /// Gives `data` in 64 KiB pieces, then blocks until `hold` is
        /// dropped, as a client gone silent with the socket open.
        struct Stalling {
            data: Vec<u8>,
            at: usize,
            hold: mpsc::Receiver<()>,
        }
        impl Read for Stalling {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.at == self.data.len() {
                    let _ = self.hold.recv();
                    return Err(io::ErrorKind::ConnectionReset.into());
                }
                let n = buf.len().min(64 << 10).min(self.data.len() - self.at);
                buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
                self.at += n;
                Ok(n)
            }
        }
        impl Body for Stalling {
            fn failure(&mut self) -> Option<HttpError> {
                None
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r5", None).unwrap();
        let settings = Settings {
            options: Options {
                progress_interval: Some(Duration::from_millis(20)),
                ..settings(None).options
            },
            ..settings(None)
        };
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let sent = 3_000_000;
        let new = NewUpload {
            length: Some(data.len() as u64),
            ..NewUpload::default()
        };
        create(&pool, &id, new, None, &settings).unwrap();
        let (keep, hold) = mpsc::channel::<()>();
        let old = thread::scope(|scope| {
            let old = scope.spawn(|| {
                let mut body = Stalling {
                    data: data[..sent].to_vec(),
                    at: 0,
                    hold,
                };
                let streamed = Chunk {
                    offset: 0,
                    length: None,
                    body: &mut body,
                    body_length: BodyLength::Known(data.len() as u64),
                    checksum: None,
                    repr: None,
                };
                append(&pool, &id, streamed, &settings)
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while pool.offset(&id).unwrap() < sent as u64 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the chunk never arrived"
                );
                thread::sleep(Duration::from_millis(5));
            }
            // The next request asks, the old one lets go: the new one
            // goes on from the offset stored.
            let before = thread_reads();
            let done = append(
                &pool,
                &id,
                chunk(sent as u64, &mut &data[sent..]),
                &settings,
            )
            .unwrap();
            let read = thread_reads() - before;
            assert!(done.complete);
            assert_eq!(
                done.status.files()[0].sha256.as_deref(),
                Some(hex(&Sha256::digest(&data)).as_str())
            );
            assert!(read < 64 * 1024, "{read} bytes read back to complete");
            drop(keep);
            old.join().unwrap()
        });
        let err = old.unwrap_err();
        assert_eq!(err.code, PoolError::Superseded.code(), "{err}");
    }

    /// A chunk cut short with less than a block held: what arrived is
    /// stored (it was only held), the offset says so, and the hash state
    /// saved covers it, so the upload completes with the file's digest
    /// and reads nothing back.
    #[test]
    fn a_chunk_cut_short_keeps_the_bytes_it_held() {
        /// Gives `self.0` in 8 KiB pieces, then fails as a dropped
        /// connection.
        struct Cut(Vec<u8>, usize);
        impl Read for Cut {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 == self.0.len() {
                    return Err(io::ErrorKind::ConnectionReset.into());
                }
                let n = buf.len().min(8 << 10).min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        impl Body for Cut {
            fn failure(&mut self) -> Option<HttpError> {
                None
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r6", None).unwrap();
        let settings = settings(None);
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 11 % 241) as u8).collect();
        let sent = 1_300_000;
        let new = NewUpload {
            length: Some(data.len() as u64),
            ..NewUpload::default()
        };
        create(&pool, &id, new, None, &settings).unwrap();
        let mut body = Cut(data[..sent].to_vec(), 0);
        let cut = Chunk {
            offset: 0,
            length: None,
            body: &mut body,
            body_length: BodyLength::Known(data.len() as u64),
            checksum: None,
            repr: None,
        };
        let err = append(&pool, &id, cut, &settings).unwrap_err();
        assert_eq!(err.code, ErrorCode::Truncated, "{err}");
        assert_eq!(pool.offset(&id).unwrap(), sent as u64);
        let path = dir.path().join("r6").join("file-1");
        assert!(std::fs::read(&path).unwrap() == data[..sent]);
        let before = thread_reads();
        let done = append(
            &pool,
            &id,
            chunk(sent as u64, &mut &data[sent..]),
            &settings,
        )
        .unwrap();
        let read = thread_reads() - before;
        assert!(done.complete);
        assert_eq!(
            done.status.files()[0].sha256.as_deref(),
            Some(hex(&Sha256::digest(&data)).as_str())
        );
        assert!(read < 64 * 1024, "{read} bytes read back to complete");
    }

    #[test]
    fn a_completing_chunk_reads_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier("r4", None).unwrap();
        let settings = settings(None);
        let data = vec![5u8; 3_000_000];
        let new = NewUpload {
            length: Some(data.len() as u64),
            ..NewUpload::default()
        };
        create(&pool, &id, new, None, &settings).unwrap();
        append(&pool, &id, chunk(0, &mut &data[..2_000_000]), &settings).unwrap();
        let before = thread_reads();
        let done = append(
            &pool,
            &id,
            chunk(2_000_000, &mut &data[2_000_000..]),
            &settings,
        )
        .unwrap();
        let read = thread_reads() - before;
        assert_eq!(
            done.status.files()[0].sha256.as_deref(),
            Some(hex(&Sha256::digest(&data)).as_str())
        );
        assert!(read < 64 * 1024, "{read} bytes read to complete");
    }

    /// SHA-1, MD5 and CRC-32C are carried in the saved state as SHA-256
    /// is: completion reads nothing back for them. BLAKE3's state cannot
    /// be saved, so listing it costs one read of the file.
    #[test]
    fn the_saved_checksums_read_nothing_back_and_blake3_reads_the_file_once() {
        let data = vec![6u8; 3_000_000];
        for (name, list, reads_back) in [
            ("r5", "sha256,sha1,md5,crc32c", false),
            ("r6", "md5", false),
            ("r7", "sha256,blake3", true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let pool = Pool::new(dir.path(), 0o600, false);
            let id = verify_identifier(name, None).unwrap();
            let mut settings = settings(None);
            settings.options.checksums = Checksums::parse(list).unwrap();
            let new = NewUpload {
                length: Some(data.len() as u64),
                ..NewUpload::default()
            };
            create(&pool, &id, new, None, &settings).unwrap();
            append(&pool, &id, chunk(0, &mut &data[..2_000_000]), &settings).unwrap();
            let before = thread_reads();
            let done = append(
                &pool,
                &id,
                chunk(2_000_000, &mut &data[2_000_000..]),
                &settings,
            )
            .unwrap();
            let read = thread_reads() - before;
            let mut reference = checksums::Hasher::new(settings.options.checksums);
            reference.update(&data);
            let sums = reference.finish();
            let file = &done.status.files()[0];
            assert_eq!(
                [
                    &file.sha256,
                    &file.sha1,
                    &file.md5,
                    &file.crc32c,
                    &file.blake3
                ],
                [
                    &sums.sha256,
                    &sums.sha1,
                    &sums.md5,
                    &sums.crc32c,
                    &sums.blake3
                ],
                "{list}"
            );
            match reads_back {
                false => assert!(read < 64 * 1024, "{list}: {read} bytes read to complete"),
                true => assert!(read >= data.len() as u64, "{list}: {read} bytes read"),
            }
        }
    }
}
