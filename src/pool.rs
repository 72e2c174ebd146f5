//! The pool directory: one folder ("bucket") per upload, shared by every
//! process and host that serves the same uploads.
//!
//! This module owns every path and every lock. The layout is a stable
//! contract that other programs may read:
//!
//! ```text
//! <pool>/                     mode 0700 (see `file_mode`)
//!   <name>/                   one bucket per upload, named by the unsigned identifier
//!     status.json             the status document; always replaced whole (rename)
//!     lock                    flock()ed exclusively by the receiving process
//!     release                 a later request asks the lock's holder to let go (resumable uploads)
//!     status.reserve          space held for the final status while a request on the upload runs
//!     file-1, file-2, ...     the stored files, in the order they arrived (mode 0600);
//!                             a resumable upload has one, file-1, that grows chunk by chunk
//!     sha256.state            a resumable upload's SHA-256 so far (and SHA-1, MD5, CRC-32C when
//!                             listed) and the offset it covers, between its requests; replaced
//!                             whole (sha256.state.tmp, renamed) and removed once the upload is
//!                             done; never a stored file
//!   .trash/<name>-<random>/   a bucket being deleted (clear, gc); safe to remove
//!   .trash-<name>-<random>/   the same, as earlier versions (and a pool whose
//!                             `.trash` is unusable) leave it; gc sweeps both
//!   .gc                       its modification time is when automatic gc last ran
//! ```
//!
//! Why it is safe to share:
//! - Readers never see a torn status: it is written to `status.json.tmp`
//!   and renamed over `status.json`, which is atomic on local file systems
//!   and NFS alike.
//! - The receiving process holds an exclusive lock on `lock` for the whole
//!   upload. A second upload under the same identifier cannot take it (409),
//!   and a reader that finds `uploading` but *can* take a shared lock knows
//!   the receiver died: the upload is reported as interrupted, not
//!   `uploading` forever. A separate lock file is needed because
//!   `status.json` is replaced (a lock on it would be on the old file), and
//!   NFS cannot lock a directory.
//! - A lock can be lost while its holder runs (a host cut off from a shared
//!   file system past its lock server's timeout gets its descriptors back
//!   without it), so the holder checks it still has it before every status
//!   write, data file open or cut, and finish ([`Upload::still_holds_lock`]),
//!   and stops without writing or removing anything when it has not.
//! - Clearing renames the bucket away first (atomic), so a running upload
//!   notices within one progress interval that its folder is no longer in
//!   the pool and stops.
//! - Inside the pool nothing is opened by path: buckets are opened with
//!   `O_NOFOLLOW | O_DIRECTORY` relative to the pool's descriptor, and files
//!   relative to the bucket's, created with `O_EXCL | O_NOFOLLOW`, so a
//!   planted symlink or a renamed folder cannot redirect a write. Files that
//!   are read or locked are opened with `O_NONBLOCK` and must be regular
//!   files: a FIFO or a device planted in a bucket is refused, not waited on.
//! - The outcome is told truthfully even on a full disk: while an upload
//!   runs, `status.reserve` holds the room its final status needs, and is
//!   given back just before that status is written; the lock is held until
//!   the final status is in place.
//! - With `fsync` on (the default), `done` is only written once every
//!   stored file is on disk, and the status itself and the folder entries
//!   that lead to it are synced before the answer goes out.
//!
//! # Resumable uploads
//!
//! An upload that arrives in several requests (tus, the IETF resumable
//! upload draft) uses the same buckets, locks and files, in the way tusd
//! splits its work: the protocol's handler validates and decides, the pool
//! only stores. A request claims the bucket ([`Pool::create_resumable`] for
//! the first, [`Pool::resume_upload`] for each later one), which takes the
//! lock exactly as a form upload does, so two requests never write one
//! upload at once, whichever process or host they reach. It appends to the
//! one data file through [`Upload::open_data_at`], which refuses an offset
//! other than the stored one, and ends the request with [`Upload::pause`]
//! (the upload goes on in a later request), [`Upload::finish`] (it is
//! complete) or [`Upload::fail`] (it is over, its bytes removed).
//!
//! Between requests the status says [`State::Incomplete`] and the lock is
//! free. That is an upload at rest, not a dead receiver: the liveness rule
//! (`uploading` with a free lock means interrupted) is only ever applied to
//! `uploading`. A receiver that dies in the middle of a chunk leaves
//! `incomplete` behind too, so the upload stays resumable; the stored offset
//! is the data file's length ([`Pool::offset`]), which is right after any
//! crash, while a number in the status would only be as fresh as its last
//! rewrite.

use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::checksums::{Checksums, Sums};
use crate::error_code::ErrorCode;
use crate::identifier::{self, Identifier};
use crate::live_statuses::{Live, LiveStatuses};
use crate::status::{FileInfo, State, Status};

const STATUS: &str = "status.json";
const STATUS_TMP: &str = "status.json.tmp";
const RESERVE: &str = "status.reserve";
const LOCK: &str = "lock";
/// Made by a request that wants a resumable upload another request holds
/// (see [`Pool::take_over`]); the holder looks for it at each progress tick.
const RELEASE: &str = "release";
const FILE_PREFIX: &str = "file-";
/// A resumable upload's saved hash state (see [`Upload::save_hash_state`]).
/// Not `file-...`: nothing that lists stored files may take it for one.
const HASH_STATE: &str = "sha256.state";
const HASH_STATE_TMP: &str = "sha256.state.tmp";
/// A saved hash state is 125 bytes (see
/// [`crate::hashing::ResumableSha256::to_bytes`]); this leaves room for
/// another layout, and anything bigger is not one.
pub const MAX_HASH_STATE_BYTES: usize = 4096;
/// The one data file of a resumable upload: the name a form upload's first
/// file has, so a complete resumable upload looks like any one-file upload
/// to everything that reads the pool (`fileupload path`, [`Bucket::paths`],
/// middleware mode, other programs) and the layout gains no name.
const DATA_FILE: &str = "file-1";
/// Where a bucket is moved to be deleted. Deleting a folder (`rmdir`)
/// frees its block while the kernel still holds the lock of the folder it
/// was in (Linux evicts the inode before it unlocks the parent), and on a
/// file system with online discard that is a round trip to the device.
/// Every status poll for a name the kernel has not cached (a bucket just
/// made or cleared) looks it up under the pool folder's lock, so an `rmdir`
/// in the pool itself made those polls wait tens of milliseconds under the
/// load test; in here it holds up no one.
const TRASH_DIR: &str = ".trash";
/// Where earlier versions put a bucket being deleted (and this one does
/// when `.trash` cannot be used): `.trash-<name>-<random>` in the pool.
const TRASH_PREFIX: &str = ".trash-";
const GC_STAMP: &str = ".gc";
/// A status document is small (the upload driver keeps ours under
/// [`crate::upload::MAX_STATUS_DOCUMENT`]); anything bigger is not ours.
const MAX_STATUS_BYTES: u64 = 16 << 20;
/// Room held for an upload's final status: a failed upload's status lists
/// no files, so it is a few hundred bytes; this leaves a wide margin, and
/// covers a done status of a few hundred files.
const RESERVE_BYTES: u64 = 64 * 1024;
/// How long a new upload waits for a lock held by someone else before it
/// concludes an upload is running. Status readers hold a shared lock for a
/// few microseconds while they check for a dead receiver; a real upload
/// holds it for its whole life.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// What went wrong in the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "pool directory {0} does not exist; create it (owned by the user this program runs as) \
         or set FILEUPLOAD_DIRECTORY to one that does"
    )]
    Missing(PathBuf),
    #[error("pool directory {path} is not usable: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("an upload is already running under this identifier")]
    Busy,
    #[error(
        "an upload under this identifier is already complete; clear it or use a new identifier"
    )]
    Complete,
    /// A new upload under the identifier of an incomplete resumable one:
    /// refused, like one under a running upload, since replacing it would
    /// throw away what its client will come back to continue.
    #[error(
        "a resumable upload under this identifier is incomplete; continue it, \
         or clear it or use a new identifier"
    )]
    InProgress,
    /// Nothing to continue: no bucket, or one whose upload is not an
    /// incomplete resumable one (it failed, was interrupted or was a form
    /// upload: its bytes are gone or were never resumable).
    #[error("no resumable upload to continue under this identifier; start a new one")]
    NotFound,
    /// A chunk does not start where the stored bytes end. Nothing was
    /// written: the client asks for the offset and continues from there.
    #[error("the upload has {stored} bytes stored, not {given}; continue from {stored}")]
    OffsetMismatch { stored: u64, given: u64 },
    /// A call the upload's kind does not allow (a bug in the protocol code
    /// that made it, never the client's doing).
    #[error("internal error: {0}")]
    Misuse(&'static str),
    #[error("the upload was cancelled by a clear request")]
    Cancelled,
    /// A later request for this resumable upload asked for it (see
    /// [`Pool::take_over`]): this one stopped, its bytes kept.
    #[error(
        "a later request for this upload took it over; this one stopped, and what it stored is kept"
    )]
    Superseded,
    /// The request holding the upload did not let go in time.
    #[error("another request holds this upload and did not let go of it in time; retry")]
    Locked,
    /// This request no longer holds the bucket's lock (see
    /// [`Upload::still_holds_lock`]): on a shared file system, the lock
    /// server dropped it (this host was cut off for longer than its
    /// timeout) and another host may own the upload now. Nothing more was
    /// written through this request, and nothing it stored was removed.
    #[error(
        "this server lost the lock of the upload (its shared file system dropped it, as after \
         a network partition); another server may own the upload now, so this request stopped \
         without writing its status; ask for the upload's status, and retry"
    )]
    LockLost,
    #[error(
        "the status of this upload cannot be read ({0}); nothing was changed: \
         clear it or use a new identifier"
    )]
    Unreadable(String),
    /// A partial upload named for a concatenation cannot go into it
    /// (see [`Pool::concatenate`]); nothing was changed.
    #[error("partial upload {identifier}: {problem}")]
    Partial {
        identifier: String,
        problem: PartialProblem,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// Why a partial upload cannot go into a concatenation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartialProblem {
    /// No upload under it: never made, cleared, expired, or failed (whose
    /// bytes are gone).
    #[error("there is no complete upload under this identifier")]
    Missing,
    /// It is not complete yet (or it was interrupted).
    #[error("it is not complete")]
    Incomplete,
    /// A request holds it (a chunk is being written, or another
    /// concatenation takes it).
    #[error("a request is writing it")]
    Running,
    /// Named twice, or it is the final upload itself.
    #[error("it is named twice, or it is the final upload itself")]
    Repeated,
    /// Its status cannot be read.
    #[error("its status cannot be read ({0})")]
    Unreadable(String),
    /// Its stored bytes do not agree with its status (not one file of the
    /// size the status says), or cannot be read.
    #[error("its stored data cannot be used ({0})")]
    Damaged(String),
}

impl PoolError {
    /// The stable error code; the mapping is in [`crate::error_code`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from(self)
    }

    /// 409 for a conflict with another upload (or with a status that cannot
    /// be read, which may be a complete upload's), 410 for a cancelled one,
    /// 507 when the disk is full, 500 otherwise: the status of its
    /// [`code`](PoolError::code).
    pub fn http_status(&self) -> u16 {
        self.code().status()
    }
}

/// Whether an I/O error means "no room": a full disk, a quota, or a file
/// size limit.
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOSPC | Errno::DQUOT | Errno::FBIG)
    )
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PoolError {
    let context = context.into();
    move |source| PoolError::Io { context, source }
}

fn errno_error(context: impl Into<String>) -> impl FnOnce(Errno) -> PoolError {
    let context = context.into();
    move |errno| PoolError::Io {
        context,
        source: errno.into(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Buckets removed because they were older than the age limit.
    pub removed: usize,
    /// Buckets young enough to keep.
    pub kept: usize,
    /// Buckets skipped because an upload is running in them.
    pub running: usize,
    /// Leftovers of earlier deletions swept away.
    pub trash: usize,
}

/// A pool directory.
#[derive(Clone, Debug)]
pub struct Pool {
    dir: PathBuf,
    file_mode: u32,
    create: bool,
    fsync: bool,
    /// The statuses of the form uploads this pool (and its clones) is
    /// receiving, answered to polls without reading the files.
    live: Arc<LiveStatuses>,
}

impl Pool {
    /// A pool at `dir`. With `create`, the directory is made on first use
    /// (and must then be owned by this user); otherwise it must exist.
    /// Uploads are durable (see [`Pool::with_fsync`]).
    pub fn new(dir: impl Into<PathBuf>, file_mode: u32, create: bool) -> Pool {
        Pool {
            dir: dir.into(),
            file_mode,
            create,
            fsync: true,
            live: Arc::default(),
        }
    }

    /// With `fsync` (the default), an upload is only marked `done` once its
    /// files, its status and the folder entries leading to them are on
    /// disk, so a power cut after the answer loses nothing the client was
    /// told is stored. Without it, `done` may still be in the page cache.
    pub fn with_fsync(mut self, fsync: bool) -> Pool {
        self.fsync = fsync;
        self
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Whether the pool can be opened (and, for the default pool, made):
    /// for a server to say at start what every request would fail with.
    pub fn check(&self) -> Result<(), PoolError> {
        self.open_root().map(drop)
    }

    /// The folder of the upload with this identifier.
    pub fn bucket_path(&self, id: &Identifier) -> PathBuf {
        self.dir.join(id.name())
    }

    /// Folders get a search bit wherever files get a read bit.
    fn dir_mode(&self) -> u32 {
        self.file_mode | ((self.file_mode & 0o444) >> 2)
    }

    fn open_root(&self) -> Result<OwnedFd, PoolError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let unusable = |reason: String| PoolError::Unusable {
            path: self.dir.clone(),
            reason,
        };
        let fd = match rustix::fs::open(&self.dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if self.create => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(self.dir_mode())
                    .create(&self.dir)
                    .map_err(io_error(format!(
                        "cannot create pool directory {}",
                        self.dir.display()
                    )))?;
                rustix::fs::open(&self.dir, flags, Mode::empty()).map_err(errno_error(format!(
                    "cannot open pool directory {}",
                    self.dir.display()
                )))?
            }
            Err(Errno::NOENT) => return Err(PoolError::Missing(self.dir.clone())),
            Err(Errno::NOTDIR) => return Err(unusable("it is not a directory".into())),
            Err(e) => {
                return Err(errno_error(format!(
                    "cannot open pool directory {}",
                    self.dir.display()
                ))(e));
            }
        };
        if self.create {
            // The default pool lives in the shared temp directory, where
            // another user could have made it first to read or plant files.
            let owner = rustix::fs::fstat(&fd)
                .map_err(errno_error(format!(
                    "cannot inspect pool directory {}",
                    self.dir.display()
                )))?
                .st_uid;
            if owner != rustix::process::geteuid().as_raw() {
                return Err(unusable(format!(
                    "it belongs to user id {owner}, not to this user; remove it or set FILEUPLOAD_DIRECTORY"
                )));
            }
        }
        Ok(fd)
    }

    /// Opens a bucket folder without following a link; `None` if absent.
    fn open_bucket(&self, root: &OwnedFd, name: &str) -> Result<Option<OwnedFd>, PoolError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(root, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => Err(PoolError::Unusable {
                path: self.dir.clone(),
                reason: format!("{name} is not a folder (a link or a file was put in its place)"),
            }),
            Err(e) => Err(errno_error(format!("cannot open upload folder {name}"))(e)),
        }
    }

    /// Opens an existing bucket, for reading. Status polls are the most
    /// frequent request, so a configured pool is not opened first: the
    /// bucket is opened by its full path in one step (`O_NOFOLLOW` still
    /// guards its last component, the only one a client names), and the
    /// pool itself is only looked at when the bucket is missing, to tell an
    /// unknown upload from a missing pool: with a `stat`, not an `open`, a
    /// second try and a `close` (two system calls, not four, for every
    /// poll of an identifier not begun yet). Should the bucket appear
    /// between the two, it was unknown when the poll looked, which is the
    /// answer. The default pool, in the shared temp directory, always goes
    /// through `open_root` and its owner check.
    fn find_bucket(&self, name: &str) -> Result<Option<OwnedFd>, PoolError> {
        if self.create {
            let root = self.open_root()?;
            return self.open_bucket(&root, name);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(self.dir.join(name), flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => match rustix::fs::stat(&self.dir) {
                Ok(pool) if rustix::fs::FileType::from_raw_mode(pool.st_mode).is_dir() => Ok(None),
                Ok(_) => Err(PoolError::Unusable {
                    path: self.dir.clone(),
                    reason: "it is not a directory".into(),
                }),
                Err(Errno::NOENT) => Err(PoolError::Missing(self.dir.clone())),
                // Anything else (no permission on the pool, say) is told
                // the way opening it tells it.
                Err(_) => self
                    .open_root()
                    .and_then(|root| self.open_bucket(&root, name)),
            },
            // The pool is not a folder, or the identifier names a file in
            // it: said by the way the pool and the bucket are opened.
            Err(Errno::NOTDIR) => {
                let root = self.open_root()?;
                self.open_bucket(&root, name)
            }
            Err(Errno::LOOP) => Err(PoolError::Unusable {
                path: self.dir.clone(),
                reason: format!("{name} is not a folder (a link or a file was put in its place)"),
            }),
            Err(e) => Err(errno_error(format!("cannot open upload folder {name}"))(e)),
        }
    }

    /// The upload's status. An unknown identifier is `starting`; an upload
    /// whose receiver died is `error` ("interrupted"). Only `uploading` is
    /// checked against the lock: an `incomplete` (resumable) upload is told
    /// as stored, since its lock is free between requests by design and a
    /// request that dies mid-chunk leaves it resumable, not interrupted.
    ///
    /// A form upload this pool (or a clone) is receiving is answered with
    /// the status its receiver last wrote, kept in memory, once an `lstat`
    /// shows its folder is still the one claimed: the same document, read
    /// without opening a file (see [`crate::live_statuses`]).
    pub fn status(&self, id: &Identifier) -> Result<Status, PoolError> {
        if let Some(status) = self.kept_status(id.name()) {
            return Ok(status);
        }
        let Some(bucket) = self.find_bucket(id.name())? else {
            return Ok(Status::starting());
        };
        let Some(status) = read_status(&bucket, id)? else {
            return Ok(Status::starting());
        };
        if status.state != State::Uploading {
            return Ok(status);
        }
        let lock = match open_regular(&bucket, LOCK, OFlags::RDONLY, 0) {
            Ok(fd) => File::from(fd),
            // The receiver makes the lock before it writes `uploading`.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(interrupted(status)),
            Err(e) => return Err(io_error(format!("cannot open lock of upload {id}"))(e)),
        };
        match lock.try_lock_shared() {
            Err(TryLockError::WouldBlock) => Ok(status),
            Err(TryLockError::Error(e)) => {
                Err(io_error(format!("cannot check lock of upload {id}"))(e))
            }
            Ok(()) => {
                // Nobody holds it. Read again: the upload may have finished
                // between our first read and the lock.
                let status = read_status(&bucket, id)?.unwrap_or_else(Status::starting);
                if status.state == State::Uploading {
                    Ok(interrupted(status))
                } else {
                    Ok(status)
                }
            }
        }
    }

    /// The status this pool keeps for the form upload it receives in the
    /// bucket `name`, if the folder at that name is still the one the
    /// upload claimed: one `lstat`, no link followed. Cleared, or made
    /// anew, by any process or host, it is another folder or none, and the
    /// pool is read instead.
    fn kept_status(&self, name: &str) -> Option<Status> {
        let (claimed, status) = self.live.status(name)?;
        let found = rustix::fs::statat(
            rustix::fs::CWD,
            self.dir.join(name),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok()?;
        (identity(&found) == claimed).then(|| Status::clone(&status))
    }

    /// The library's view of one upload, as the original's
    /// `access_upload_bucket(id)`.
    pub fn bucket(&self, id: &Identifier) -> Bucket<'_> {
        Bucket {
            pool: self,
            id: id.clone(),
        }
    }

    /// Deletes the upload (cancelling it if it is running). Returns whether
    /// there was anything to delete.
    pub fn clear(&self, id: &Identifier) -> Result<bool, PoolError> {
        let root = self.open_root()?;
        self.remove_bucket(&root, id.name())
            .map_err(errno_error(format!("cannot remove upload {id}")))
    }

    /// Moves bucket `name` out of the pool (atomic: from then on it is
    /// gone for every reader, and a receiver still writing into it notices
    /// at its next progress tick), then deletes it. Returns whether there
    /// was one. A receiver still writing may keep it from going at once;
    /// the next gc sweeps what is left.
    fn remove_bucket(&self, root: &OwnedFd, name: &str) -> Result<bool, Errno> {
        let nonce =
            getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()) << 20 ^ unix_now());
        let trash = open_trash(root, self.dir_mode());
        let (dir, entry) = match &trash {
            Some(trash) => (trash, format!("{name}-{nonce:016x}")),
            None => (root, format!("{TRASH_PREFIX}{name}-{nonce:016x}")),
        };
        match rustix::fs::renameat(root, name, dir, &entry) {
            Ok(()) => {
                let _ = remove_tree(dir, entry.as_str());
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Claims the bucket for a new upload: creates it if needed, takes its
    /// lock, and clears what an earlier failed attempt left.
    ///
    /// Fails with [`PoolError::Busy`] if an upload is running under this
    /// identifier (it is not disturbed), [`PoolError::Complete`] if one
    /// finished there (stored files are never overwritten), and
    /// [`PoolError::InProgress`] if a resumable one is incomplete there.
    pub fn begin_upload(&self, id: &Identifier) -> Result<Upload, PoolError> {
        let mut upload = self.claim_new(id)?;
        upload.live = Some((Arc::clone(&self.live), OnceLock::new()));
        Ok(upload)
    }

    /// Claims the bucket for a new resumable upload, as
    /// [`Pool::begin_upload`] does (and refused in the same cases), and
    /// records `status` in state [`State::Incomplete`] with nothing received
    /// before it returns: from then on, whatever happens to this request
    /// (a chunk fails, the process is killed), the upload is resumable and
    /// never taken for an interrupted one. With `fsync`, that status and the
    /// folder entries leading to it are on disk, so an upload whose creation
    /// was answered survives a power cut.
    ///
    /// The data file is made by the first [`Upload::open_data_at`]; the
    /// request ends with [`Upload::pause`] (a first chunk may come in the
    /// same request), [`Upload::finish`] or [`Upload::fail`].
    pub fn create_resumable(&self, id: &Identifier, status: &Status) -> Result<Upload, PoolError> {
        let mut upload = self.claim_new(id)?;
        let mut recorded = status.clone();
        recorded.state = State::Incomplete;
        recorded.received = Some(0);
        let written = upload
            .replace_status(&recorded, self.fsync)
            .and_then(|()| upload.sync_root_if_new());
        if let Err(err) = written {
            let mut failed = recorded;
            failed.fail(err.code(), err.to_string(), unix_now());
            upload.fail(&failed);
            return Err(err);
        }
        upload.resumable = true;
        Ok(upload)
    }

    /// Claims a resumable upload as [`Pool::resume_upload`] does, but when
    /// another request holds it, asks that one to let go instead of
    /// refusing: a client that reconnects after a network drop finds its
    /// old request still running on the server (a half-open connection
    /// that no timeout has ended yet), and must not be locked out of its
    /// own upload until one does.
    ///
    /// The request is a file in the bucket, so it reaches a holder in any
    /// process on any host that shares the pool. The holder sees it at its
    /// next progress tick ([`Upload::release_requested`]), stops, keeps
    /// what it stored, and lets go of the lock; this call then holds it,
    /// within about one progress interval plus the 100 ms a claim waits for a lock. It gives
    /// up with [`PoolError::Locked`] after `patience`. When several
    /// requests want one upload, the last to ask gets it: each renews its
    /// request while it waits, and each holder lets go when asked. Whoever
    /// ends up holding the upload must check the stored offset again: the
    /// old request may have stored more before it stopped.
    pub fn take_over(&self, id: &Identifier, patience: Duration) -> Result<Upload, PoolError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.resume_upload(id) {
                Err(PoolError::Busy) => {}
                other => return other,
            }
            if Instant::now() >= deadline {
                return Err(PoolError::Locked);
            }
            // Made again each round: the request that took the upload
            // before this one removed it when it did.
            let Some(bucket) = self.find_bucket(id.name())? else {
                return Err(PoolError::NotFound);
            };
            drop(self.create_file(&bucket, RELEASE, false)?);
        }
    }

    /// Claims the bucket of an incomplete resumable upload for a request
    /// that continues it, from any process or host sharing the pool.
    ///
    /// Fails with [`PoolError::Busy`] while another request holds it (after
    /// the same short wait as [`Pool::begin_upload`]), with
    /// [`PoolError::Complete`] once it is done, and with
    /// [`PoolError::NotFound`] when there is nothing to continue: no bucket
    /// (never made, cleared, expired), no status, or a status in any other
    /// state (a failed upload's bytes are removed; an interrupted or form
    /// upload never was resumable). A status that cannot be read is
    /// [`PoolError::Unreadable`], as for a new upload. A refusal changes
    /// nothing the bucket holds (it makes an empty `lock` where there was
    /// none, as any claim does), and never makes a bucket.
    ///
    /// The bytes stored so far stay as they are: the caller compares the
    /// client's offset with them through [`Upload::open_data_at`].
    pub fn resume_upload(&self, id: &Identifier) -> Result<Upload, PoolError> {
        let root = self.open_root()?;
        let name = id.name();
        let Some(bucket) = self.open_bucket(&root, name)? else {
            return Err(PoolError::NotFound);
        };
        let lock = match self.create_file(&bucket, LOCK, false) {
            Ok(lock) => lock,
            // Removed (cleared) since we opened it.
            Err(PoolError::Io { source, .. })
                if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
            {
                return Err(PoolError::NotFound);
            }
            Err(e) => return Err(e),
        };
        lock_exclusive(&lock)?;
        let identity = identity_of(&bucket)?;
        if self.identity_at(&root, name) != Some(identity) {
            // Cleared or replaced between our open and the lock.
            return Err(PoolError::NotFound);
        }
        // Granted: a request to let go, ours or an earlier one's, is
        // answered (a later one's is made again by its asker).
        let _ = rustix::fs::unlinkat(&bucket, RELEASE, AtFlags::empty());
        match read_status_file(&bucket) {
            Ok(Some(stored)) if stored.state == State::Incomplete => {}
            Ok(Some(stored)) if stored.state == State::Done => return Err(PoolError::Complete),
            Ok(_) => return Err(PoolError::NotFound),
            Err(e) => return Err(PoolError::Unreadable(e.to_string())),
        }
        // A request that died (killed mid-chunk) left its reserve behind.
        let _ = rustix::fs::unlinkat(&bucket, RESERVE, AtFlags::empty());
        match reserve_space(&bucket, self.file_mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PoolError::NotFound),
            Err(e) => return Err(io_error("cannot reserve room for the upload's status")(e)),
        }
        let stored = data_length(&bucket)?.is_some();
        Ok(Upload {
            root,
            bucket,
            _lock: lock,
            identity,
            name: name.to_owned(),
            identifier: id.as_str().to_owned(),
            path: self.dir.join(name),
            file_mode: self.file_mode,
            files: AtomicU32::new(u32::from(stored)),
            fsync: self.fsync,
            created: false,
            resumable: true,
            settled: false,
            let_go: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            probe: Mutex::new(None),
            checked: Mutex::new(None),
            live: None,
        })
    }

    /// The stored offset of a resumable upload: the length of its data
    /// file (0 before the first chunk), read without taking the lock, so a
    /// `HEAD` is never queued behind a running chunk (the answer may then be
    /// a moment old, as any answer about a running upload is).
    ///
    /// The file, not `received` in the status, is the truth: the status is
    /// rewritten only every progress interval and at the end of a request,
    /// so after a crash in the middle of a chunk the file holds bytes the
    /// status never counted. Those bytes did arrive, in order, after the
    /// ones before them (one writer at a time, always at the end), so the
    /// client may continue after them. The state is not checked here: read
    /// the status for that. [`PoolError::NotFound`] when there is no bucket.
    pub fn offset(&self, id: &Identifier) -> Result<u64, PoolError> {
        let Some(bucket) = self.find_bucket(id.name())? else {
            return Err(PoolError::NotFound);
        };
        Ok(data_length(&bucket)?.unwrap_or(0))
    }

    fn claim_new(&self, id: &Identifier) -> Result<Upload, PoolError> {
        let root = self.open_root()?;
        let name = id.name();
        // A concurrent clear or gc can remove the bucket between our steps;
        // start over then. Three rounds lose only to a pathological race.
        for _ in 0..3 {
            let created =
                match rustix::fs::mkdirat(&root, name, Mode::from_raw_mode(self.dir_mode())) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false,
                    Err(e) => {
                        return Err(errno_error(format!(
                            "cannot create upload folder in pool {}",
                            self.dir.display()
                        ))(e));
                    }
                };
            let Some(bucket) = self.open_bucket(&root, name)? else {
                continue;
            };
            if created {
                // Exact permissions whatever the umask.
                rustix::fs::fchmod(&bucket, Mode::from_raw_mode(self.dir_mode()))
                    .map_err(errno_error("cannot set upload folder permissions"))?;
            }
            let lock = match self.create_file(&bucket, LOCK, false) {
                Ok(lock) => lock,
                // Removed between our open and this create: start over.
                Err(PoolError::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            lock_exclusive(&lock)?;
            let identity = identity_of(&bucket)?;
            if self.identity_at(&root, name) != Some(identity) {
                continue;
            }
            // A status that cannot be read may be a complete upload's:
            // never treat it as a failed one, whose files may be replaced.
            match read_status_file(&bucket) {
                Ok(Some(previous)) if previous.state == State::Done => {
                    return Err(PoolError::Complete);
                }
                Ok(Some(previous)) if previous.state == State::Incomplete => {
                    return Err(PoolError::InProgress);
                }
                Ok(_) => {}
                Err(e) => return Err(PoolError::Unreadable(e.to_string())),
            }
            remove_leftovers(&bucket)?;
            match reserve_space(&bucket, self.file_mode) {
                Ok(()) => {}
                // Cleared since our check (the folder is gone): start over.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io_error("cannot reserve room for the upload's status")(e));
                }
            }
            return Ok(Upload {
                root,
                bucket,
                _lock: lock,
                identity,
                name: name.to_owned(),
                identifier: id.as_str().to_owned(),
                path: self.dir.join(name),
                file_mode: self.file_mode,
                files: AtomicU32::new(0),
                fsync: self.fsync,
                created,
                resumable: false,
                settled: false,
                let_go: AtomicBool::new(false),
                lost: AtomicBool::new(false),
                probe: Mutex::new(None),
                checked: Mutex::new(None),
                live: None,
            });
        }
        Err(PoolError::Busy)
    }

    /// Removes finished, failed, abandoned and incomplete (resumable)
    /// uploads whose last change (`updated`) is older than `max_age`, and
    /// leftovers of earlier deletions. Uploads with a request running (the
    /// lock held) are never touched. An incomplete upload with a free lock
    /// is kept while it is young, like any other: it is at rest, not
    /// abandoned, until its client has left it alone for `max_age`; a
    /// resumable protocol can tell its clients when that is (`updated` plus
    /// `max_age`).
    pub fn gc(&self, max_age: Duration) -> Result<GcReport, PoolError> {
        let root = self.open_root()?;
        let now = unix_now();
        let mut report = GcReport::default();
        let entries = fs::read_dir(&self.dir).map_err(io_error(format!(
            "cannot list pool directory {}",
            self.dir.display()
        )))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TRASH_PREFIX) {
                if remove_tree(&root, name).is_ok() {
                    report.trash += 1;
                }
                continue;
            }
            if name == TRASH_DIR {
                report.trash += sweep_trash(&root);
                continue;
            }
            if !identifier::is_valid_name(name) {
                continue; // not ours
            }
            let Ok(Some(bucket)) = self.open_bucket(&root, name) else {
                continue;
            };
            let Ok(lock) = self.create_file(&bucket, LOCK, false) else {
                continue;
            };
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    report.running += 1;
                    continue;
                }
                Err(TryLockError::Error(_)) => continue,
            }
            let last_change = read_status_file(&bucket)
                .ok()
                .flatten()
                .and_then(|s| s.updated)
                .or_else(|| {
                    Some(
                        rustix::fs::fstat(&bucket)
                            .ok()?
                            .st_mtime
                            .try_into()
                            .unwrap_or(0),
                    )
                })
                .unwrap_or(0);
            if Duration::from_secs(now.saturating_sub(last_change)) < max_age {
                report.kept += 1;
                continue;
            }
            let Ok(identity) = identity_of(&bucket) else {
                continue;
            };
            if self.identity_at(&root, name) != Some(identity) {
                continue;
            }
            if self.remove_bucket(&root, name) == Ok(true) {
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Runs [`Pool::gc`] if it has not run for a while (a quarter of
    /// `max_age`, between a minute and an hour), in at most one process at a
    /// time. Returns the report if it ran.
    pub fn maybe_gc(&self, max_age: Duration) -> Result<Option<GcReport>, PoolError> {
        let interval = (max_age / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        let root = self.open_root()?;
        let stamp = self.create_file(&root, GC_STAMP, false)?;
        let due = |stamp: &File| {
            stamp
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= interval)
        };
        if !due(&stamp) || stamp.try_lock().is_err() || !due(&stamp) {
            return Ok(None);
        }
        stamp
            .set_modified(SystemTime::now())
            .map_err(io_error("cannot update the gc time stamp"))?;
        self.gc(max_age).map(Some)
    }

    /// Makes the final upload of tus's concatenation: one file, in the
    /// bucket of `final_id`, holding the data of each of `partials` in
    /// order; then removes the partial uploads. Returns the final length.
    ///
    /// It is done whole or not at all. First every partial upload is taken
    /// with its lock (so no request writes it and no gc removes it while it
    /// is read) and checked: it must be `done` with one data file of the
    /// size its status says. A partial that is running, missing (or
    /// failed), incomplete, named twice or is `final_id` itself is refused
    /// with [`PoolError::Partial`] before anything is changed; so is a final
    /// bucket that [`Pool::create_resumable`] would refuse (a running,
    /// complete or incomplete upload there), with the same errors. Then the
    /// final bucket is claimed, its status set to `uploading` (a poller
    /// sees progress, and a killed process leaves an interrupted upload,
    /// never an `incomplete` one a client could append to), and each data
    /// file is appended with `copy_file_range`: the kernel copies without
    /// the bytes passing through this process, and a file system with
    /// reflinks (Btrfs, XFS) may share the extents instead of copying
    /// them. Only where the kernel or the file system cannot
    /// (`EXDEV`, `ENOSYS`, `EOPNOTSUPP`) are the bytes read and written.
    /// With `checksums`, the final file is then read once for all of them.
    ///
    /// The final status is `status` in state `done`, with `size` and
    /// `received` the final length and one file, `file-1`: the first of
    /// `status.files` if it has one (its `field`, `filename` and
    /// `content-type` are kept), else one named by `status.filename` and
    /// `status.content_type`; its `size`, `path` and checksums are set here.
    /// It is recorded as [`Upload::finish`] does, durably with `fsync`. A
    /// failure after the claim records the final upload failed, its file
    /// removed; the partial uploads are removed only once the final one is
    /// `done`, and are untouched until then. (A crash between the two
    /// leaves them for gc.) A partial cleared while it was copied fails the
    /// concatenation.
    ///
    /// What a partial upload is, and whether the final length is allowed,
    /// is the protocol's to decide before it calls this: the pool knows
    /// only complete uploads of one file.
    pub fn concatenate(
        &self,
        final_id: &Identifier,
        partials: &[Identifier],
        status: &Status,
        checksums: Checksums,
    ) -> Result<u64, PoolError> {
        if partials.is_empty() {
            return Err(PoolError::Misuse("concatenate with no partial upload"));
        }
        let mut seen = vec![final_id.name()];
        for partial in partials {
            if seen.contains(&partial.name()) {
                return Err(PoolError::Partial {
                    identifier: partial.as_str().to_owned(),
                    problem: PartialProblem::Repeated,
                });
            }
            seen.push(partial.name());
        }
        let root = self.open_root()?;
        let taken = partials
            .iter()
            .map(|id| self.take_partial(&root, id))
            .collect::<Result<Vec<_>, _>>()?;
        let total = taken
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.length))
            .ok_or(PoolError::Misuse("partial uploads longer than 2^64 bytes"))?;
        let upload = self.claim_new(final_id)?;
        let mut running = status.clone();
        running.state = State::Uploading;
        running.size = Some(total);
        running.received = Some(0);
        running.files = Some(Vec::new());
        let copied = upload
            .write_status(&running)
            .and_then(|()| self.assemble(&upload, &taken, &mut running, checksums));
        let (path, sums) = match copied {
            Ok(done) => done,
            Err(err) => {
                running.fail(err.code(), err.to_string(), unix_now());
                upload.fail(&running);
                return Err(err);
            }
        };
        let mut done = status.clone();
        let mut file = status.files().first().cloned().unwrap_or_else(|| FileInfo {
            field: String::new(),
            filename: status.filename.clone().unwrap_or_default(),
            content_type: status
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            size: 0,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: String::new(),
        });
        file.size = total;
        sums.apply_to(&mut file);
        file.path = path.to_string_lossy().into_owned();
        done.state = State::Done;
        done.size = Some(total);
        done.received = Some(total);
        done.updated = Some(unix_now());
        done.files = Some(vec![file]);
        done.error = None;
        done.status = None;
        done.code = None;
        upload.finish(&done)?;
        for partial in &taken {
            if self.identity_at(&root, &partial.name) != Some(partial.identity) {
                continue; // cleared meanwhile: nothing of it to remove
            }
            if let Err(e) = self.remove_bucket(&root, &partial.name) {
                crate::log!(
                    "cannot remove partial upload {} after its concatenation: {e}; gc will",
                    partial.identifier
                );
            }
        }
        Ok(total)
    }

    /// Takes a partial upload for [`Pool::concatenate`]: its lock, and its
    /// data file checked against its status.
    fn take_partial(&self, root: &OwnedFd, id: &Identifier) -> Result<Partial, PoolError> {
        let refuse = |problem| PoolError::Partial {
            identifier: id.as_str().to_owned(),
            problem,
        };
        let name = id.name();
        let Some(bucket) = self.open_bucket(root, name)? else {
            return Err(refuse(PartialProblem::Missing));
        };
        // Opened, not made: a bucket without a lock never held an upload.
        let lock = match open_regular(&bucket, LOCK, OFlags::RDWR, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refuse(PartialProblem::Missing));
            }
            Err(e) => return Err(io_error(format!("cannot open lock of upload {id}"))(e)),
        };
        match lock_exclusive(&lock) {
            Ok(()) => {}
            Err(PoolError::Busy) => return Err(refuse(PartialProblem::Running)),
            Err(e) => return Err(e),
        }
        let identity = identity_of(&bucket)?;
        if self.identity_at(root, name) != Some(identity) {
            return Err(refuse(PartialProblem::Missing));
        }
        let stored = match read_status_file(&bucket) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(refuse(PartialProblem::Missing)),
            Err(e) => return Err(refuse(PartialProblem::Unreadable(e.to_string()))),
        };
        match stored.state {
            State::Done => {}
            // Uploading with the lock ours: its receiver died.
            State::Incomplete | State::Uploading => {
                return Err(refuse(PartialProblem::Incomplete));
            }
            State::Starting | State::Error => return Err(refuse(PartialProblem::Missing)),
        }
        let damaged = |why: String| refuse(PartialProblem::Damaged(why));
        let [info] = stored.files() else {
            return Err(damaged(format!(
                "it holds {} files, not one",
                stored.files().len()
            )));
        };
        let data =
            open_data(&bucket, OFlags::RDONLY).map_err(|e| damaged(format!("{DATA_FILE}: {e}")))?;
        let length = file_length(&data)?;
        if length != info.size || stored.size.is_some_and(|size| size != length) {
            return Err(damaged(format!(
                "{DATA_FILE} has {length} bytes, and its status says {}",
                info.size
            )));
        }
        Ok(Partial {
            name: name.to_owned(),
            identifier: id.as_str().to_owned(),
            _bucket: bucket,
            _lock: lock,
            identity,
            data: File::from(data),
            length,
        })
    }

    /// The copying and hashing of [`Pool::concatenate`], into the claimed
    /// final upload; the data file's path and digest.
    fn assemble(
        &self,
        upload: &Upload,
        partials: &[Partial],
        running: &mut Status,
        checksums: Checksums,
    ) -> Result<(PathBuf, Sums), PoolError> {
        let (file, path) = upload.create_file()?;
        let mut at = 0u64;
        for partial in partials {
            copy_data(&partial.data, &file, partial.length, at, true, || {
                upload.is_cancelled()
            })
            .map_err(io_error(format!(
                "cannot copy partial upload {} into the final one",
                partial.identifier
            )))
            .map_err(|e| upload.explain(e))?;
            at += partial.length;
            running.received = Some(at);
            running.updated = Some(unix_now());
            upload.write_status(running)?;
        }
        // Cleared while it was copied: its client was told it is gone, so
        // the final upload must not hold it.
        for partial in partials {
            if self.identity_at(&upload.root, &partial.name) != Some(partial.identity) {
                return Err(PoolError::Partial {
                    identifier: partial.identifier.clone(),
                    problem: PartialProblem::Missing,
                });
            }
        }
        let sums = if checksums.is_empty() {
            Sums::default()
        } else {
            let reader = open_regular(&upload.bucket, DATA_FILE, OFlags::RDONLY, 0)
                .map_err(io_error(format!("cannot open {DATA_FILE} to hash it")))?;
            crate::checksums::of_file(checksums, &File::from(reader), at)
                .map_err(io_error(format!("cannot read {DATA_FILE} to hash it")))
                .map_err(|e| upload.explain(e))?
        };
        Ok((path, sums))
    }

    /// Opens (creating if needed) a regular file relative to `dir` with the
    /// pool's permissions, never following a link.
    fn create_file(&self, dir: &OwnedFd, name: &str, exclusive: bool) -> Result<File, PoolError> {
        let mut flags = OFlags::RDWR | OFlags::CREATE;
        if exclusive {
            flags |= OFlags::EXCL;
        }
        let fd = open_regular(dir, name, flags, self.file_mode)
            .map_err(io_error(format!("cannot create {name}")))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.file_mode))
            .map_err(errno_error(format!("cannot set permissions of {name}")))?;
        Ok(File::from(fd))
    }

    /// Device and inode of the entry `name` in the pool, if it is there.
    fn identity_at(&self, root: &OwnedFd, name: &str) -> Option<(u64, u64)> {
        identity_at(root, name).ok()
    }
}

/// One upload seen through the library, as the original's bucket object.
///
/// ```
/// use fileupload::{identifier::verify_identifier, Pool, State};
///
/// let dir = tempfile::tempdir().unwrap();
/// let pool = Pool::new(dir.path(), 0o600, false);
/// let id = verify_identifier("example-1", None).unwrap();
/// let bucket = pool.bucket(&id);
/// assert_eq!(bucket.status().unwrap().state, State::Starting);
/// assert!(!bucket.is_complete().unwrap());
/// assert_eq!(bucket.filename().unwrap(), None);
/// ```
#[derive(Clone, Debug)]
pub struct Bucket<'a> {
    pool: &'a Pool,
    id: Identifier,
}

impl Bucket<'_> {
    /// The status document (`get_status()`).
    pub fn status(&self) -> Result<Status, PoolError> {
        self.pool.status(&self.id)
    }

    /// Whether every file is stored (`is_complete()`).
    pub fn is_complete(&self) -> Result<bool, PoolError> {
        Ok(self.status()?.state == State::Done)
    }

    /// Path of the first stored file, once the upload is complete
    /// (`get_filename()`).
    pub fn filename(&self) -> Result<Option<PathBuf>, PoolError> {
        Ok(self.paths()?.into_iter().next())
    }

    /// Paths of every stored file, once the upload is complete; empty before.
    pub fn paths(&self) -> Result<Vec<PathBuf>, PoolError> {
        let status = self.status()?;
        if status.state != State::Done {
            return Ok(Vec::new());
        }
        Ok(status
            .files()
            .iter()
            .map(|f| PathBuf::from(&f.path))
            .collect())
    }

    /// Deletes the upload (`clear_upload()`).
    pub fn clear(&self) -> Result<bool, PoolError> {
        self.pool.clear(&self.id)
    }

    /// The stored offset of a resumable upload (see [`Pool::offset`]).
    pub fn offset(&self) -> Result<u64, PoolError> {
        self.pool.offset(&self.id)
    }
}

/// A bucket claimed for receiving: holds the lock until it is finished,
/// failed or dropped.
///
/// Dropping it unfinished (an early return, a panic) removes the files it
/// stored and records the upload as failed, so nothing half-written stays
/// behind looking complete. A resumable upload dropped so keeps its bytes
/// and stays `incomplete`: its status never says more than is stored (the
/// offset is the data file's length), and its client can continue.
#[derive(Debug)]
pub struct Upload {
    root: OwnedFd,
    bucket: OwnedFd,
    _lock: File,
    identity: (u64, u64),
    name: String,
    identifier: String,
    path: PathBuf,
    file_mode: u32,
    files: AtomicU32,
    fsync: bool,
    /// This upload made the bucket, so the pool's entry for it is new too.
    created: bool,
    /// Claimed by [`Pool::create_resumable`] or [`Pool::resume_upload`]:
    /// one data file, appended to; its state stays `incomplete` until it
    /// is finished or failed, and a request that ends any other way leaves
    /// it resumable.
    resumable: bool,
    settled: bool,
    /// Let go of by [`Upload::let_go`]: the bucket is another request's
    /// now, so nothing is written through this claim any more.
    let_go: AtomicBool,
    /// The lock was found lost ([`Upload::still_holds_lock`]): as after
    /// [`Upload::let_go`], nothing in the bucket is ours to write or remove.
    lost: AtomicBool,
    /// A second descriptor of `lock`, opened at the first check and kept
    /// for the next ones (it holds the lock only for the instant a check
    /// finds it lost). The mutex also makes each check one step: two
    /// threads probing at once could each see the other's probe as the
    /// holder.
    probe: Mutex<Option<(File, (u64, u64))>>,
    /// When a check last found the lock held (see [`Upload::fence`]).
    checked: Mutex<Option<Instant>>,
    /// Where a form upload keeps each status it writes for polls in this
    /// process (see [`crate::live_statuses`]), and its entry there once
    /// its first status is written; `None` for a resumable one.
    live: Option<(Arc<LiveStatuses>, OnceLock<Arc<Live>>)>,
}

/// How long a check that found the lock held vouches for the data writes
/// after it ([`Fenced`]).
///
/// A lock is lost only through an outage: the host cut off from the
/// storage past the brick's timeout (5.6 s with the options of the
/// README's "Several hosts"), the brick restarted, the lock file replaced.
/// While the storage is out of reach nothing succeeds, checks and writes
/// alike (a write caught in flight fails with the dead connection), so
/// the first write after any outage longer than this is checked first.
/// Short enough for that, long enough that a fast upload pays one check
/// (three round trips on a network file system) per 100 ms, not one per
/// block.
pub const FENCE_AGE: Duration = Duration::from_millis(100);

/// A data file whose writes stop once its upload's lock is lost.
///
/// Why: the status writes and the finish check the lock (see
/// [`Upload::still_holds_lock`]), and the progress tick checks it, but the
/// data goes on between ticks. A host whose network comes back after its
/// lock was dropped would append a block to a resumable upload that
/// another host has been continuing since: its `O_APPEND` write would land
/// after that host's bytes. So each write is preceded by a check, unless
/// one found the lock held less than [`FENCE_AGE`] ago. A lost lock fails
/// the write with an error that carries [`PoolError::LockLost`], which
/// [`crate::error_code::store_error`] answers as such.
#[derive(Debug)]
pub struct Fenced<'a> {
    file: File,
    upload: &'a Upload,
}

impl Fenced<'_> {
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Write for Fenced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.upload.held_lately().map_err(io::Error::other)?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Upload {
    /// Creates the next data file (`file-1`, `file-2`, ...) and returns it
    /// with its absolute path.
    pub fn create_file(&self) -> Result<(File, PathBuf), PoolError> {
        if self.resumable {
            return Err(PoolError::Misuse(
                "create_file on a resumable upload, whose one data file is opened with open_data_at",
            ));
        }
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{FILE_PREFIX}{n}");
        let fd = create_new(&self.bucket, &name, self.file_mode, OFlags::empty())
            .map_err(errno_error(format!(
                "cannot create {name} in upload folder"
            )))
            .map_err(|e| self.explain(e))?;
        Ok((File::from(fd), self.path.join(name)))
    }

    /// Replaces the status document atomically (a progress update: not
    /// synced to disk).
    ///
    /// On a resumable upload the state recorded is `incomplete` whatever
    /// `status` says: a progress update must never leave `uploading` behind
    /// (a crash would turn it into "interrupted", and the next upload under
    /// the identifier would replace the bytes) nor `done` before
    /// [`Upload::finish`] has synced the data.
    pub fn write_status(&self, status: &Status) -> Result<(), PoolError> {
        if self.resumable && status.state != State::Incomplete {
            let mut recorded = status.clone();
            recorded.state = State::Incomplete;
            return self.replace_status(&recorded, false);
        }
        self.replace_status(status, false)
    }

    /// Opens the data file of a resumable upload for a chunk that starts
    /// at `offset`, positioned at its end, for writing and reading.
    ///
    /// `offset` must be the stored offset (the file's length; 0 before the
    /// first chunk, which creates the file with exactly the pool's file
    /// mode): anything else is [`PoolError::OffsetMismatch`] and nothing is
    /// written. The check is made while this request holds the lock, so it
    /// cannot go stale before the chunk is written; a client that lost the
    /// answer to its last chunk learns the real offset from the error.
    ///
    /// The file is opened with `O_APPEND`: every write lands at the end
    /// whatever the position, so the stored bytes stay a prefix of the
    /// client's (no hole, no overwrite), even after
    /// [`Upload::truncate_data`] through another descriptor. Like every
    /// file in the pool it is opened relative to the bucket, without
    /// following a link and never blocking on a FIFO; and since this is the
    /// one place the pool writes into a file that already exists, one with
    /// a second name (a hard link planted to a file elsewhere) is refused
    /// too. Reading is for catching up a hash over bytes stored but not yet
    /// hashed (after a crash) and for copying the data.
    pub fn open_data_at(&self, offset: u64) -> Result<File, PoolError> {
        self.require_resumable("open_data_at on an upload that is not resumable")?;
        self.still_holds_lock()?;
        if self.is_cancelled() {
            return Err(PoolError::Cancelled);
        }
        let flags = OFlags::RDWR | OFlags::APPEND;
        let fd = match open_data(&self.bucket, flags) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if offset != 0 {
                    return Err(PoolError::OffsetMismatch {
                        stored: 0,
                        given: offset,
                    });
                }
                create_new(&self.bucket, DATA_FILE, self.file_mode, flags)
                    .map_err(errno_error(format!(
                        "cannot create {DATA_FILE} in upload folder"
                    )))
                    .map_err(|e| self.explain(e))?
            }
            Err(e) => {
                return Err(self.explain(io_error(format!("cannot open {DATA_FILE}"))(e)));
            }
        };
        // Known to exist from now on: `finish` syncs it, `fail` removes it.
        self.files.store(1, Ordering::Relaxed);
        let stored = file_length(&fd).map_err(|e| self.explain(e))?;
        if stored != offset {
            return Err(PoolError::OffsetMismatch {
                stored,
                given: offset,
            });
        }
        let mut file = File::from(fd);
        file.seek(SeekFrom::End(0))
            .map_err(io_error(format!("cannot seek in {DATA_FILE}")))?;
        Ok(file)
    }

    /// Cuts the data file of a resumable upload back to `offset`: a chunk
    /// whose checksum failed is discarded, and the stored offset is what
    /// it was before the chunk. `offset` beyond the stored length is
    /// [`PoolError::OffsetMismatch`] (growing the file would store bytes
    /// the client never sent), and nothing changes.
    ///
    /// A receiver killed before it can call this leaves the unchecked bytes
    /// stored; a protocol that must never keep them checks each chunk
    /// before it appends it.
    ///
    /// The saved hash state goes too: it may have seen the bytes cut away,
    /// and a state for bytes that are no longer there, once the file grows
    /// past its offset again, would give a wrong digest that nothing could
    /// tell from a right one (a state merely ahead of the file is caught).
    /// The caller saves its own state from before the chunk again, or the
    /// next request hashes from the start.
    pub fn truncate_data(&self, offset: u64) -> Result<(), PoolError> {
        self.require_resumable("truncate_data on an upload that is not resumable")?;
        self.still_holds_lock()?;
        let fd = match open_data(&self.bucket, OFlags::WRONLY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PoolError::OffsetMismatch {
                    stored: 0,
                    given: offset,
                });
            }
            Err(e) => {
                return Err(self.explain(io_error(format!("cannot open {DATA_FILE}"))(e)));
            }
        };
        let stored = file_length(&fd)?;
        if offset > stored {
            return Err(PoolError::OffsetMismatch {
                stored,
                given: offset,
            });
        }
        // Before the cut: a crash between the two leaves no state at all,
        // never one for bytes that are gone.
        self.remove_hash_state();
        rustix::fs::ftruncate(&fd, offset)
            .map_err(errno_error(format!("cannot truncate {DATA_FILE}")))
            .map_err(|e| self.explain(e))
    }

    /// Saves a resumable upload's hash state (the bytes of
    /// [`crate::hashing::ResumableSha256::to_bytes`], opaque here) as
    /// `sha256.state`, so that the request that completes the upload,
    /// in whatever process or host, goes on from it instead of reading the
    /// whole file again.
    ///
    /// Written whole, as the status is: to `sha256.state.tmp`, then renamed
    /// over the old one, so a reader never sees half of one; with `fsync`,
    /// synced before the rename and the folder after it. A state is only
    /// ever a shortcut: losing it (a crash before the rename) costs a
    /// re-read, never a wrong digest, as long as it was saved for bytes that
    /// stay stored (see [`Upload::truncate_data`]). More than
    /// [`MAX_HASH_STATE_BYTES`] is [`PoolError::Misuse`].
    pub fn save_hash_state(&self, state: &[u8]) -> Result<(), PoolError> {
        self.require_resumable("save_hash_state on an upload that is not resumable")?;
        self.still_ours()?;
        if state.len() > MAX_HASH_STATE_BYTES {
            return Err(PoolError::Misuse(
                "a hash state larger than MAX_HASH_STATE_BYTES",
            ));
        }
        if self.is_cancelled() {
            return Err(PoolError::Cancelled);
        }
        self.still_holds_lock()?;
        write_whole(
            &self.bucket,
            HASH_STATE,
            HASH_STATE_TMP,
            state,
            self.file_mode,
            self.fsync,
        )
        .map_err(io_error(format!(
            "cannot save the hash state of upload {}",
            self.identifier
        )))
        .map_err(|e| self.explain(e))
    }

    /// The hash state saved by [`Upload::save_hash_state`], if any. Read as
    /// every file in the pool is: relative to the claimed bucket, a regular
    /// file only (a planted link, FIFO or device is an error, not followed
    /// or waited on), and at most [`MAX_HASH_STATE_BYTES`] (a larger file is
    /// an error, not read). Whatever it returns, the caller checks it (see
    /// [`crate::hashing::ResumableSha256::from_bytes`]) and hashes from the
    /// start when it is refused.
    pub fn load_hash_state(&self) -> Result<Option<Vec<u8>>, PoolError> {
        self.require_resumable("load_hash_state on an upload that is not resumable")?;
        let context = || format!("cannot read the hash state of upload {}", self.identifier);
        let fd = match open_regular(&self.bucket, HASH_STATE, OFlags::RDONLY, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.explain(io_error(context())(e))),
        };
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_HASH_STATE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error(context()))?;
        if bytes.len() > MAX_HASH_STATE_BYTES {
            return Err(PoolError::Io {
                context: context(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{HASH_STATE} is larger than {MAX_HASH_STATE_BYTES} bytes: not ours"),
                ),
            });
        }
        Ok(Some(bytes))
    }

    /// Removes the saved hash state (through the claimed bucket).
    fn remove_hash_state(&self) {
        for name in [HASH_STATE, HASH_STATE_TMP] {
            let _ = rustix::fs::unlinkat(&self.bucket, name, AtFlags::empty());
        }
    }

    /// The stored offset of this resumable upload (see [`Pool::offset`]);
    /// read through the claimed bucket, so it is exact while this request
    /// holds the lock.
    pub fn offset(&self) -> Result<u64, PoolError> {
        Ok(data_length(&self.bucket)?.unwrap_or(0))
    }

    /// The absolute path of a resumable upload's data file, for the status
    /// of a finished one.
    pub fn data_path(&self) -> PathBuf {
        self.path.join(DATA_FILE)
    }

    /// Ends this request on a resumable upload without ending the upload:
    /// records `status` in state `incomplete`, with `received` set to the
    /// stored offset and `updated` to now (what the pool vouches for,
    /// whatever `status` says: `updated` is what gc's `max_age` counts
    /// from, so an upload expires `max_age` after its last request ended,
    /// not after a time its protocol happened to put there), and releases
    /// the lock when it returns.
    ///
    /// With `fsync`, the data file is synced first and then the status, so
    /// an offset the client is told has been stored survives a power cut.
    /// Any failure leaves the upload resumable, as it was before the
    /// request: the status on disk said `incomplete` already.
    pub fn pause(mut self, status: &Status) -> Result<(), PoolError> {
        self.require_resumable("pause on an upload that is not resumable")?;
        self.settled = true;
        self.record_paused(status).map_err(|e| self.explain(e))
    }

    fn record_paused(&self, status: &Status) -> Result<(), PoolError> {
        let paused = self.sync_files().and_then(|()| {
            let mut recorded = status.clone();
            recorded.state = State::Incomplete;
            recorded.received = Some(self.offset()?);
            recorded.updated = Some(unix_now());
            self.release_reserve();
            self.replace_status(&recorded, self.fsync)?;
            self.sync_root_if_new()
        });
        // Given back whatever happened: the request is over.
        self.release_reserve();
        paused
    }

    fn require_resumable(&self, what: &'static str) -> Result<(), PoolError> {
        if self.resumable {
            Ok(())
        } else {
            Err(PoolError::Misuse(what))
        }
    }

    /// With `fsync`, syncs the pool folder when this upload made the
    /// bucket: its entry there is what leads to everything else.
    fn sync_root_if_new(&self) -> Result<(), PoolError> {
        if self.fsync && self.created {
            rustix::fs::fsync(&self.root).map_err(errno_error("cannot sync the pool directory"))?;
        }
        Ok(())
    }

    fn replace_status(&self, status: &Status, durable: bool) -> Result<(), PoolError> {
        self.still_holds_lock()?;
        write_status_file(&self.bucket, status, self.file_mode, durable)
            .map_err(io_error(format!(
                "cannot write status of upload {}",
                self.identifier
            )))
            .map_err(|e| self.explain(e))?;
        // One thread at a time writes an upload's status (the request's,
        // and the watcher's between the first status and the last), so the
        // kept one follows the file's order.
        if let Some((statuses, entry)) = &self.live {
            let mut kept_now = false;
            let kept = entry.get_or_init(|| {
                kept_now = true;
                statuses.keep(&self.name, self.identity, status)
            });
            if !kept_now {
                kept.wrote(status);
            }
        }
        Ok(())
    }

    /// Polls in this process read the pool again from now on.
    fn forget_live(&self) {
        if let Some((statuses, entry)) = &self.live
            && entry.get().is_some()
        {
            statuses.forget(&self.name, self.identity);
        }
    }

    /// A failure inside a bucket that a clear (or gc) removed is the
    /// cancellation, not an I/O error of its own.
    fn explain(&self, err: PoolError) -> PoolError {
        if self.is_cancelled() {
            PoolError::Cancelled
        } else {
            err
        }
    }

    /// Whether a later request for this resumable upload asks this one to
    /// let go of it ([`Pool::take_over`]): the caller then stops, pauses
    /// the upload (its bytes are kept) and answers
    /// [`PoolError::Superseded`]. Always false for a form upload. One
    /// `fstatat` of a name that is usually absent: cheap enough for every
    /// progress tick.
    pub fn release_requested(&self) -> bool {
        self.resumable
            && rustix::fs::statat(&self.bucket, RELEASE, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Pauses this resumable upload as [`Upload::pause`] does (the status
    /// records the stored offset, synced with `fsync`) and lets go of its
    /// lock at once, from any thread, while the request's reader may still
    /// be blocked on a client that went silent: that is the one case a
    /// progress tick cannot end the request, and the case
    /// [`Pool::take_over`] is for. From then on every write through this
    /// claim is refused with [`PoolError::Superseded`] (the bucket is the
    /// next holder's), and dropping it touches nothing.
    ///
    /// The caller stops writing data first: bytes appended after this
    /// would land in the next holder's upload.
    pub fn let_go(&self, status: &Status) -> Result<(), PoolError> {
        self.require_resumable("let_go on an upload that is not resumable")?;
        self.still_holds_lock()?;
        let paused = self.record_paused(status);
        self.let_go.store(true, Ordering::Release);
        self._lock
            .unlock()
            .map_err(io_error("cannot unlock upload folder"))?;
        paused
    }

    fn still_ours(&self) -> Result<(), PoolError> {
        if self.let_go.load(Ordering::Acquire) {
            return Err(PoolError::Superseded);
        }
        if self.lost.load(Ordering::Acquire) {
            return Err(PoolError::LockLost);
        }
        Ok(())
    }

    /// Let go of or lost: nothing in the bucket is this request's any more.
    fn released(&self) -> bool {
        self.let_go.load(Ordering::Acquire) || self.lost.load(Ordering::Acquire)
    }

    /// Checks that this request still holds the bucket's lock, and fails
    /// with [`PoolError::LockLost`] (for good: every later write through
    /// this claim is refused, and dropping it touches nothing) when it does
    /// not. The pool calls it before every status write, before a chunk's
    /// data file is opened or cut, before it gives back the reserve and
    /// before it finishes; the receiving loop's watcher calls it at every
    /// tick, so a lost lock ends the request within one tick.
    ///
    /// Why: on a shared file system a lock can be lost while its holder
    /// runs. On GlusterFS, a host cut off from the storage for longer than
    /// the brick's timeout loses its locks; when the network comes back
    /// its client reconnects *without* them, and its old descriptors still
    /// write. Another host has meanwhile reported the upload interrupted,
    /// or claimed it (a resumable upload continued there); this host must
    /// not then mark it done, write its status, or remove what is stored.
    ///
    /// How: `flock` locks belong to open file descriptions, so
    /// 1. a non-blocking attempt through a *second* descriptor of the lock
    ///    file is refused while anyone holds the lock, and granted when
    ///    nobody does: granted means lost (the probe lets go at once);
    /// 2. refused, the holder is us or someone else: a non-blocking
    ///    attempt through our own descriptor is granted (a no-op) when it
    ///    is us, and refused when another host holds it.
    ///
    /// Step 1 is needed because step 2 alone proves nothing when nobody
    /// holds the lock: it takes the lock again, silently. The two steps
    /// are not one atomic act: a holder elsewhere that lets go between
    /// them leaves this request holding the lock again, unnoticed, as the
    /// upload's only holder from then on; that needs a loss, a second
    /// holder, and its release within those few microseconds.
    ///
    /// It also finds the lock lost when `lock` is no longer the file this
    /// request locked (see `probe_lock`).
    ///
    /// Cost: one `fstatat` and two `flock` calls (and one `openat` for the
    /// first check) on the lock file; on a network file system each is a
    /// round trip.
    pub fn still_holds_lock(&self) -> Result<(), PoolError> {
        self.still_ours()?;
        let mut probe = self.probe.lock().unwrap_or_else(PoisonError::into_inner);
        let lost = match self.probe_lock(&mut probe)? {
            Some(lost) => lost,
            None => {
                *self.checked.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                return Ok(());
            }
        };
        self.forget_live();
        if !self.lost.swap(true, Ordering::AcqRel) {
            crate::log!(
                "upload {}: this request lost the lock of its folder ({lost}; a shared file \
                 system drops the locks of a host cut off from it for too long); it stops \
                 without writing its status or removing anything: the upload may be another \
                 server's now",
                self.identifier
            );
        }
        Err(PoolError::LockLost)
    }

    /// Wraps a data file of this upload (from [`Upload::create_file`] or
    /// [`Upload::open_data_at`]) so that every write first makes sure the
    /// lock is still held: see [`Fenced`].
    pub fn fence(&self, file: File) -> Fenced<'_> {
        Fenced { file, upload: self }
    }

    /// [`Upload::still_holds_lock`], unless a check found the lock held
    /// less than [`FENCE_AGE`] ago.
    fn held_lately(&self) -> Result<(), PoolError> {
        self.still_ours()?;
        let checked = *self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        match checked {
            Some(at) if at.elapsed() < FENCE_AGE => Ok(()),
            _ => self.still_holds_lock(),
        }
    }

    /// The two steps of [`Upload::still_holds_lock`], with the probe held:
    /// `None` while the lock is ours, else why it is not.
    ///
    /// First, `lock` must still be the file this request locked: every
    /// other claim locks the file of that name, so a lock on a file that
    /// was replaced (by hand, a restore, a bug) keeps nobody out. That
    /// check also keeps the probe, opened once, on the right file.
    fn probe_lock(
        &self,
        probe: &mut Option<(File, (u64, u64))>,
    ) -> Result<Option<&'static str>, PoolError> {
        let check_error = |e: Errno| {
            self.explain(errno_error(format!(
                "cannot check the lock of upload {} is still held",
                self.identifier
            ))(e))
        };
        let held = match probe {
            Some((_, held)) => *held,
            None => rustix::fs::fstat(&self._lock)
                .map(|stat| identity(&stat))
                .map_err(check_error)?,
        };
        if identity_at(&self.bucket, LOCK).map_err(check_error)? != held {
            return Ok(Some("its lock file was replaced"));
        }
        if probe.is_none() {
            let fd = open_regular(&self.bucket, LOCK, OFlags::RDONLY, 0).map_err(|e| {
                self.explain(io_error(format!(
                    "cannot open the lock of upload {} to check it is still held",
                    self.identifier
                ))(e))
            })?;
            if identity_of(&fd)? != held {
                return Ok(Some("its lock file was replaced"));
            }
            *probe = Some((File::from(fd), held));
        }
        let Some((probe, _)) = probe.as_ref() else {
            return Err(PoolError::Misuse("lock probe missing after it was opened"));
        };
        match probe.try_lock() {
            Ok(()) => {
                // Nobody held it: let go at once, or we would be the
                // holder that keeps everyone else out.
                if let Err(e) = probe.unlock() {
                    crate::log!(
                        "cannot let go of the lock probe of upload {}: {e}",
                        self.identifier
                    );
                }
                Ok(Some("nobody holds it"))
            }
            Err(TryLockError::WouldBlock) => match self._lock.try_lock() {
                Ok(()) => Ok(None),
                Err(TryLockError::WouldBlock) => Ok(Some("another process or host holds it")),
                Err(TryLockError::Error(e)) => {
                    Err(io_error("cannot check the lock of the upload folder")(e))
                }
            },
            Err(TryLockError::Error(e)) => {
                Err(io_error("cannot check the lock of the upload folder")(e))
            }
        }
    }

    /// Drops this request's lock while the `Upload` lives, as a lock
    /// server does to a host cut off for too long.
    #[cfg(test)]
    pub(crate) fn lose_lock_for_test(&self) {
        self._lock.unlock().expect("unlock");
    }

    /// Whether the bucket was cleared (renamed out of the pool) since the
    /// upload began.
    pub fn is_cancelled(&self) -> bool {
        match identity_at(&self.root, &self.name) {
            Ok(identity) => identity != self.identity,
            Err(Errno::NOENT) => true,
            Err(_) => false,
        }
    }

    /// Records success; the lock is released when this returns. With
    /// `fsync`, every stored file is synced first, then the status, then
    /// the folders whose entries lead to it: `done` is never on disk before
    /// the data it vouches for. If any of that fails, the upload fails.
    ///
    /// A resumable upload whose finish fails is not failed: its bytes are
    /// all stored, so it is recorded `incomplete` again (as far as the disk
    /// allows; the status on disk said so before) and the request that
    /// completes it may be repeated. A resumable upload finished before
    /// any chunk (an empty one) gets its empty data file, so its status
    /// never names a file that is not there.
    pub fn finish(mut self, status: &Status) -> Result<(), PoolError> {
        self.settled = true;
        // Before anything is made, synced or given back; the status write
        // checks again, after the syncs, which may take long.
        let stored = self
            .still_holds_lock()
            .and_then(|()| {
                self.release_reserve();
                self.make_empty_data()
            })
            .and_then(|()| self.sync_files())
            .and_then(|()| {
                self.replace_status(status, self.fsync)?;
                self.sync_root_if_new()
            });
        if stored.is_ok() && self.resumable {
            // A done upload has its digests in its status; the state would
            // only be a file that is neither data nor status.
            self.remove_hash_state();
        }
        stored.map_err(|e| self.explain(e)).inspect_err(|err| {
            if self.resumable {
                let _ = self.record_paused(status);
                return;
            }
            let mut failed = status.clone();
            failed.fail(err.code(), err.to_string(), unix_now());
            self.discard(&failed);
        })
    }

    fn make_empty_data(&self) -> Result<(), PoolError> {
        if self.resumable && data_length(&self.bucket)?.is_none() {
            self.open_data_at(0)?;
        }
        Ok(())
    }

    fn sync_files(&self) -> Result<(), PoolError> {
        if !self.fsync {
            return Ok(());
        }
        for n in 1..=self.files.load(Ordering::Relaxed) {
            let name = format!("{FILE_PREFIX}{n}");
            // An fsync through any descriptor writes back the file's pages.
            let fd = open_regular(&self.bucket, &name, OFlags::RDONLY, 0)
                .map_err(io_error(format!("cannot open {name} to sync it")))?;
            rustix::fs::fsync(&fd).map_err(errno_error(format!("cannot sync {name} to disk")))?;
        }
        Ok(())
    }

    /// Removes the stored files and records the failure (unless the upload
    /// was cleared: then there is nothing left to record it in). On a
    /// resumable upload that ends the upload, data file and all: to end
    /// only the request, [`Upload::pause`].
    pub fn fail(mut self, status: &Status) {
        self.settled = true;
        self.discard(status);
    }

    /// Gives back the room held for the final status, just before writing it.
    fn release_reserve(&self) {
        if self.released() || self.still_holds_lock().is_err() {
            return; // the reserve there is the new holder's
        }
        let _ = rustix::fs::unlinkat(&self.bucket, RESERVE, AtFlags::empty());
    }

    /// Removes the stored files, then records the failure while the lock is
    /// still held, so no reader can take the upload for interrupted. The
    /// status lists no files: none is there any more. Should even that not
    /// fit on the disk, a status without the form's details is tried; and
    /// should that fail too, the old status goes (the upload then reads as
    /// unknown), so that none is left saying something false.
    fn discard(&self, status: &Status) {
        // A lost lock: the files may be another request's by now (a new
        // upload under the identifier writes `file-1` again).
        if self.still_holds_lock().is_err() && !self.is_cancelled() {
            return;
        }
        for n in 1..=self.files.load(Ordering::Relaxed) {
            let _ =
                rustix::fs::unlinkat(&self.bucket, format!("{FILE_PREFIX}{n}"), AtFlags::empty());
        }
        if self.resumable {
            self.remove_hash_state();
        }
        self.release_reserve();
        if self.is_cancelled() {
            return;
        }
        let mut recorded = status.clone();
        recorded.files = recorded.files.map(|_| Vec::new());
        if self.replace_status(&recorded, false).is_ok() {
            return;
        }
        let brief = Status {
            files: None,
            fields: None,
            filename: None,
            content_type: None,
            ..recorded
        };
        if let Err(err) = self.replace_status(&brief, false) {
            crate::log!(
                "cannot record the failure of upload {}: {err}; removing its status",
                self.identifier
            );
            // Through the bucket's own descriptor: whatever now has this
            // name in the pool (a new upload after a clear) is not touched.
            let _ = rustix::fs::unlinkat(&self.bucket, STATUS, AtFlags::empty());
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Before the lock is let go (the fields are dropped after this).
        self.forget_live();
        if self.released() {
            return;
        }
        if !self.settled && self.resumable {
            // The status on disk says `incomplete` (see `write_status`) and
            // the offset is the file's length: nothing false is left.
            self.release_reserve();
        } else if !self.settled {
            let mut status = Status::uploading(&self.identifier, None, unix_now());
            status.fail(
                ErrorCode::Internal,
                "internal error while receiving the upload",
                unix_now(),
            );
            self.discard(&status);
        }
    }
}

/// A partial upload taken by [`Pool::concatenate`]: held by its lock (and
/// its bucket's descriptor, which the lock's file lives in) until the
/// concatenation is over.
struct Partial {
    name: String,
    identifier: String,
    _bucket: OwnedFd,
    _lock: File,
    identity: (u64, u64),
    data: File,
    length: u64,
}

/// Most bytes asked of one `copy_file_range`: a cancellation (a clear of
/// the final upload) is seen between two calls.
const COPY_CHUNK: usize = 64 << 20;
/// The buffer of the read-and-write fallback.
const COPY_BUFFER: usize = 256 << 10;

/// Copies the first `length` bytes of `from` into `to` at offset `at`.
/// With `in_kernel`, by `copy_file_range`, falling back to reads and
/// writes only where it is not to be had (`EXDEV`: another file system on
/// kernels before 5.3, or one that cannot copy across; `ENOSYS`: no such
/// call; `EOPNOTSUPP`: a file system without it); `in_kernel` false is the
/// fallback alone (for its tests). Offsets are explicit, so neither file's
/// position matters. `cancelled` is asked between calls.
fn copy_data(
    from: &File,
    to: &File,
    length: u64,
    at: u64,
    in_kernel: bool,
    cancelled: impl Fn() -> bool,
) -> io::Result<()> {
    let ended = |copied: u64| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the data file ended after {copied} of {length} bytes"),
        )
    };
    let cancel = || io::Error::new(io::ErrorKind::Interrupted, "the upload was cleared");
    let mut from_offset = 0u64;
    let mut to_offset = at;
    if in_kernel {
        while from_offset < length {
            if cancelled() {
                return Err(cancel());
            }
            let want = usize::try_from(length - from_offset)
                .unwrap_or(usize::MAX)
                .min(COPY_CHUNK);
            match rustix::fs::copy_file_range(
                from,
                Some(&mut from_offset),
                to,
                Some(&mut to_offset),
                want,
            ) {
                Ok(0) => return Err(ended(from_offset)),
                Ok(_) => {}
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut buffer = vec![0u8; COPY_BUFFER.min(usize::try_from(length).unwrap_or(usize::MAX))];
    while from_offset < length {
        if cancelled() {
            return Err(cancel());
        }
        let want = usize::try_from(length - from_offset)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let read = match from.read_at(&mut buffer[..want], from_offset) {
            Ok(0) => return Err(ended(from_offset)),
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all_at(&buffer[..read], to_offset)?;
        from_offset += read as u64;
        to_offset += read as u64;
    }
    Ok(())
}

fn interrupted(mut status: Status) -> Status {
    status.state = State::Error;
    status.error =
        Some("interrupted: the process receiving the upload stopped before it finished".into());
    status.status = Some(ErrorCode::Interrupted.status());
    status.code = Some(ErrorCode::Interrupted.as_str().to_owned());
    status
}

/// Opens the pool's `.trash` folder, making it if it is missing; `None`
/// when it cannot be used (something else was put in its place), and the
/// caller deletes in the pool itself as earlier versions did.
fn open_trash(root: &OwnedFd, mode: u32) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Opened first, made only when missing: `mkdir` of a name that exists
    // takes the pool folder's lock too, on every clear.
    match rustix::fs::openat(root, TRASH_DIR, flags, Mode::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(root, TRASH_DIR, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(_) => return None,
            }
            rustix::fs::openat(root, TRASH_DIR, flags, Mode::empty()).ok()
        }
        Err(_) => None,
    }
}

/// Deletes everything in `.trash`; returns how many entries went.
fn sweep_trash(root: &OwnedFd) -> usize {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(trash) = rustix::fs::openat(root, TRASH_DIR, flags, Mode::empty()) else {
        return 0;
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&trash) else {
        return 0;
    };
    let names: Vec<_> = entries
        .flatten()
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| ![b".".as_slice(), b".."].contains(&name.to_bytes()))
        .collect();
    names
        .iter()
        .filter(|name| remove_tree(&trash, name.as_c_str()).is_ok())
        .count()
}

/// Deletes `name` in `dir`, a folder with everything in it or a file,
/// without following a link anywhere: everything is reached through
/// descriptors, so a link planted in the pool cannot point a deletion
/// outside it. Buckets hold only files; deeper folders (planted) are
/// deleted to a small depth and refused beyond it.
fn remove_tree<P: rustix::path::Arg + Copy>(dir: &OwnedFd, name: P) -> Result<(), Errno> {
    fn remove(dir: &OwnedFd, name: &std::ffi::CStr, depth: u32) -> Result<(), Errno> {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Err(Errno::ISDIR | Errno::PERM) if depth > 0 => {}
            other => return other,
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let inner = rustix::fs::openat(dir, name, flags, Mode::empty())?;
        let names: Vec<_> = rustix::fs::Dir::read_from(&inner)?
            .flatten()
            .map(|entry| entry.file_name().to_owned())
            .filter(|n| ![b".".as_slice(), b".."].contains(&n.to_bytes()))
            .collect();
        for entry in &names {
            remove(&inner, entry, depth - 1)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
    }
    name.into_with_c_str(|name| remove(dir, name, 4))
}

/// What tells one folder from another that later takes its name.
fn identity(stat: &rustix::fs::Stat) -> (u64, u64) {
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    (stat.st_dev as u64, stat.st_ino as u64)
}

fn identity_of(fd: &OwnedFd) -> Result<(u64, u64), PoolError> {
    let stat = rustix::fs::fstat(fd).map_err(errno_error("cannot inspect upload folder"))?;
    Ok(identity(&stat))
}

/// The identity of the entry `name` in `dir` itself (a link is not followed).
fn identity_at(dir: &OwnedFd, name: &str) -> Result<(u64, u64), Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|stat| identity(&stat))
}

/// Takes the bucket's exclusive lock, waiting briefly for status readers.
fn lock_exclusive(lock: &File) -> Result<(), PoolError> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return Err(PoolError::Busy),
            Err(TryLockError::Error(e)) => return Err(io_error("cannot lock upload folder")(e)),
        }
    }
}

/// Removes everything but the lock and the status from a bucket an earlier
/// attempt left behind.
fn remove_leftovers(bucket: &OwnedFd) -> Result<(), PoolError> {
    let dir =
        rustix::fs::Dir::read_from(bucket).map_err(errno_error("cannot list upload folder"))?;
    for entry in dir {
        let entry = entry.map_err(errno_error("cannot list upload folder"))?;
        let name = entry.file_name().to_bytes();
        if [b".".as_slice(), b"..", LOCK.as_bytes(), STATUS.as_bytes()].contains(&name) {
            continue;
        }
        match rustix::fs::unlinkat(bucket, entry.file_name(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) | Err(Errno::ISDIR) => {}
            Err(e) => return Err(errno_error("cannot remove an earlier attempt's file")(e)),
        }
    }
    Ok(())
}

/// Opens `name` in `dir` as a regular file: never through a link, and
/// never waiting on a FIFO or a device that someone put in its place (those
/// are refused, as a planted link is).
fn open_regular(dir: &OwnedFd, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    open_regular_stat(dir, name, flags, mode).map(|(fd, _)| fd)
}

/// [`open_regular`], with the `fstat` it checked the file by, for a caller
/// that needs more of it (the size, the links): no second call.
fn open_regular_stat(
    dir: &OwnedFd,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> io::Result<(OwnedFd, rustix::fs::Stat)> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    let stat = rustix::fs::fstat(&fd)?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not a regular file ({kind:?}): something was put in its place"),
        ));
    }
    Ok((fd, stat))
}

/// Opens a resumable upload's data file with `flags` (see
/// [`Upload::open_data_at`] for why a second name is refused).
fn open_data(bucket: &OwnedFd, flags: OFlags) -> io::Result<OwnedFd> {
    let (fd, stat) = open_regular_stat(bucket, DATA_FILE, flags, 0)?;
    if stat.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{DATA_FILE} has another name too (a hard link was put in its place)"),
        ));
    }
    Ok(fd)
}

/// The length of a resumable upload's data file; `None` before the first
/// chunk. Read with `statat`, not `open`, as status polls and `HEAD`s are
/// frequent; it must be a regular file with one name, as for writing.
fn data_length(bucket: &OwnedFd) -> Result<Option<u64>, PoolError> {
    let stat = match rustix::fs::statat(bucket, DATA_FILE, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(errno_error(format!("cannot inspect {DATA_FILE}"))(e)),
    };
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile || stat.st_nlink != 1 {
        return Err(PoolError::Io {
            context: format!("cannot use {DATA_FILE}"),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "it is not a regular file with one name: something was put in its place",
            ),
        });
    }
    Ok(Some(u64::try_from(stat.st_size).unwrap_or(0)))
}

fn file_length(fd: &OwnedFd) -> Result<u64, PoolError> {
    let stat = rustix::fs::fstat(fd).map_err(errno_error(format!("cannot inspect {DATA_FILE}")))?;
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// Creates `name` in `dir`, which must not exist (so nothing planted is
/// written through), with exactly `file_mode`, whatever the umask; `extra`
/// adds open flags (`O_APPEND`, `O_RDWR`).
fn create_new(dir: &OwnedFd, name: &str, file_mode: u32, extra: OFlags) -> Result<OwnedFd, Errno> {
    let access = if extra.contains(OFlags::RDWR) {
        OFlags::empty()
    } else {
        OFlags::WRONLY
    };
    let flags = access | extra | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(file_mode);
    let fd = rustix::fs::openat(dir, name, flags, mode)?;
    rustix::fs::fchmod(&fd, mode)?;
    Ok(fd)
}

/// Makes `status.reserve`: room on the disk that the final status can have
/// even when the data filled it.
fn reserve_space(bucket: &OwnedFd, file_mode: u32) -> io::Result<()> {
    let fd = create_new(bucket, RESERVE, file_mode, OFlags::empty())?;
    match rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES) {
        Ok(()) => Ok(()),
        // Not every file system allocates on request (NFS before 4.2):
        // written zeros take the room as well.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            File::from(fd).write_all(&[0u8; RESERVE_BYTES as usize])
        }
        Err(e) => {
            let _ = rustix::fs::unlinkat(bucket, RESERVE, AtFlags::empty());
            Err(e.into())
        }
    }
}

/// Writes the status to `status.json.tmp` and renames it over
/// `status.json`. With `durable`, the new file is synced before the rename
/// and the folder after it, so the status on disk is whole and in place.
fn write_status_file(
    bucket: &OwnedFd,
    status: &Status,
    file_mode: u32,
    durable: bool,
) -> io::Result<()> {
    write_whole(
        bucket,
        STATUS,
        STATUS_TMP,
        status.to_json().as_bytes(),
        file_mode,
        durable,
    )
}

/// Replaces `name` in `bucket` with `bytes`, whole: written to `tmp` and
/// renamed over it. With `durable`, the new file is synced before the
/// rename and the folder after it.
fn write_whole(
    bucket: &OwnedFd,
    name: &str,
    tmp: &str,
    bytes: &[u8],
    file_mode: u32,
    durable: bool,
) -> io::Result<()> {
    let _ = rustix::fs::unlinkat(bucket, tmp, AtFlags::empty());
    let mut file = File::from(create_new(bucket, tmp, file_mode, OFlags::empty())?);
    let written = file
        .write_all(bytes)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
    drop(file);
    if let Err(e) = written.and_then(|()| Ok(rustix::fs::renameat(bucket, tmp, bucket, name)?)) {
        // A half-written temporary file helps nobody.
        let _ = rustix::fs::unlinkat(bucket, tmp, AtFlags::empty());
        return Err(e);
    }
    if durable {
        rustix::fs::fsync(bucket)?;
    }
    Ok(())
}

/// Reads of a status that a network file system may answer `ESTALE`
/// before one is given up: the file was replaced by another host's rename
/// between the lookup and the read, and a new open by name finds the new
/// one. (On GlusterFS with the strict options, a few polls in a thousand
/// under load: `multihost.*.poll_failures` in the benchmark.)
const STALE_ATTEMPTS: usize = 4;

/// Reads a bucket's `status.json`; `None` if there is none yet.
fn read_status_file(bucket: &OwnedFd) -> io::Result<Option<Status>> {
    let stale = Some(rustix::io::Errno::STALE.raw_os_error());
    let mut attempt = 1;
    loop {
        match read_status_once(bucket) {
            Err(e) if e.raw_os_error() == stale && attempt < STALE_ATTEMPTS => attempt += 1,
            read => return read,
        }
    }
}

fn read_status_once(bucket: &OwnedFd) -> io::Result<Option<Status>> {
    // A read must not write. Each rewrite makes a new file, whose first
    // read would update its access time (relatime): a write to the file
    // system's journal in every poll, which waits, seconds at worst, while
    // uploads sync their files. O_NOATIME is only for the file's owner
    // (the pool's user, as a rule); anyone else reads without it.
    let opened = match open_regular_stat(bucket, STATUS, OFlags::RDONLY | OFlags::NOATIME, 0) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            open_regular_stat(bucket, STATUS, OFlags::RDONLY, 0)
        }
        opened => opened,
    };
    let (fd, stat) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // On a network file system each read is a round trip. A status is
    // replaced whole, never rewritten in place, so the size `fstat` gave
    // is all there is: one read, with a byte of room to see a file longer
    // than that, and no second read to find the end. Should the read come
    // short or long, or what it got not parse (a size a cache kept), the
    // rest is read to the end as any file is.
    let mut file = File::from(fd).take(MAX_STATUS_BYTES);
    let size = usize::try_from(stat.st_size)
        .unwrap_or(0)
        .min(MAX_STATUS_BYTES as usize);
    let mut text = vec![0u8; size + 1];
    let got = match file.read(&mut text) {
        Ok(got) => got,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(e) => return Err(e),
    };
    text.truncate(got);
    if got == size
        && let Ok(status) = serde_json::from_slice(&text)
    {
        return Ok(Some(status));
    }
    file.read_to_end(&mut text)?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_status(bucket: &OwnedFd, id: &Identifier) -> Result<Option<Status>, PoolError> {
    read_status_file(bucket).map_err(io_error(format!("cannot read status of upload {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::verify_identifier;
    use std::os::unix::fs::MetadataExt;

    fn pool() -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        (dir, pool)
    }

    fn id(text: &str) -> Identifier {
        verify_identifier(text, None).unwrap()
    }

    /// The names in `dir`, but for the pool's `.trash` folder, which must
    /// be empty: every deletion in these tests has nothing holding it up.
    fn listing(dir: &Path) -> Vec<String> {
        let trash = dir.join(TRASH_DIR);
        if fs::symlink_metadata(&trash).is_ok_and(|m| m.is_dir()) {
            let left: Vec<_> = fs::read_dir(&trash).unwrap().collect();
            assert!(left.is_empty(), "left in .trash: {left:?}");
        }
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| {
                name != TRASH_DIR || fs::symlink_metadata(&trash).is_ok_and(|m| m.is_symlink())
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn lifecycle_and_layout() {
        let (dir, pool) = pool();
        let id = id("abc");
        assert_eq!(pool.status(&id).unwrap(), Status::starting());
        let upload = pool.begin_upload(&id).unwrap();
        let mut status = Status::uploading(id.as_str(), Some(3), unix_now());
        upload.write_status(&status).unwrap();
        let (mut file, path) = upload.create_file().unwrap();
        file.write_all(b"xyz").unwrap();
        assert_eq!(path, dir.path().join("abc/file-1"));
        assert_eq!(pool.status(&id).unwrap().state, State::Uploading);
        // A second receiver cannot start under the same identifier.
        assert!(matches!(pool.begin_upload(&id), Err(PoolError::Busy)));
        status.state = State::Done;
        upload.finish(&status).unwrap();
        assert_eq!(
            listing(&dir.path().join("abc")),
            ["file-1", "lock", "status.json"]
        );
        assert_eq!(pool.status(&id).unwrap().state, State::Done);
        assert!(matches!(pool.begin_upload(&id), Err(PoolError::Complete)));
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(dir.path().join("abc")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(pool.clear(&id).unwrap());
        assert!(!pool.clear(&id).unwrap());
        assert_eq!(listing(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn dropped_upload_leaves_no_files_and_says_error() {
        let (dir, pool) = pool();
        let id = id("dropped");
        {
            let upload = pool.begin_upload(&id).unwrap();
            upload
                .write_status(&Status::uploading("dropped", None, 1))
                .unwrap();
            let (mut file, _) = upload.create_file().unwrap();
            file.write_all(b"partial").unwrap();
        }
        assert_eq!(
            listing(&dir.path().join("dropped")),
            ["lock", "status.json"]
        );
        let status = pool.status(&id).unwrap();
        assert_eq!(status.state, State::Error);
        assert_eq!(status.status, Some(500));
        assert_eq!(status.code.as_deref(), Some("ERR_INTERNAL"));
        // A failed upload may be retried under the same identifier.
        pool.begin_upload(&id).unwrap().fail(&status);
    }

    #[test]
    fn dead_receiver_is_reported_interrupted() {
        let (dir, pool) = pool();
        let id = id("dead");
        // What a killed receiver leaves: `uploading`, and nobody holding the lock.
        let bucket = dir.path().join("dead");
        fs::create_dir(&bucket).unwrap();
        fs::write(bucket.join("lock"), "").unwrap();
        fs::write(
            bucket.join("status.json"),
            Status::uploading("dead", Some(10), 1).to_json(),
        )
        .unwrap();
        let status = pool.status(&id).unwrap();
        assert_eq!(status.state, State::Error);
        assert_eq!(status.status, Some(500));
        assert_eq!(status.code.as_deref(), Some("ERR_INTERRUPTED"));
        assert!(status.error.unwrap().starts_with("interrupted"));
        // Still uploading while somebody holds the lock.
        let lock = File::open(bucket.join("lock")).unwrap();
        lock.lock().unwrap();
        assert_eq!(pool.status(&id).unwrap().state, State::Uploading);
        drop(lock);
        // Without a lock file at all, too.
        fs::remove_file(bucket.join("lock")).unwrap();
        assert_eq!(pool.status(&id).unwrap().state, State::Error);
    }

    #[test]
    fn clear_cancels_a_running_upload() {
        let (dir, pool) = pool();
        let id = id("running");
        let upload = pool.begin_upload(&id).unwrap();
        upload.create_file().unwrap();
        assert!(!upload.is_cancelled());
        assert!(pool.clear(&id).unwrap());
        assert!(upload.is_cancelled());
        // A new upload may start under the identifier while the old
        // receiver is still winding down; the old one must not touch it.
        let second = pool.begin_upload(&id).unwrap();
        assert!(!second.is_cancelled());
        upload.fail(&Status::starting());
        assert_eq!(pool.status(&id).unwrap(), Status::starting());
        drop(second);
        assert_eq!(listing(dir.path()), ["running"]);
    }

    #[test]
    fn symlinked_bucket_is_refused() {
        let (dir, pool) = pool();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), dir.path().join("evil")).unwrap();
        let id = id("evil");
        assert!(matches!(
            pool.begin_upload(&id),
            Err(PoolError::Unusable { .. })
        ));
        assert!(matches!(pool.status(&id), Err(PoolError::Unusable { .. })));
        assert_eq!(listing(target.path()), Vec::<String>::new());
        // clear removes the link itself, not what it points to.
        assert!(pool.clear(&id).unwrap());
        assert!(target.path().exists());
    }

    #[test]
    fn gc_removes_old_and_spares_running() {
        let (dir, pool) = pool();
        let old = id("old");
        let up = pool.begin_upload(&old).unwrap();
        let mut status = Status::uploading("old", None, 1);
        status.state = State::Done;
        up.finish(&status).unwrap();
        let running = id("running");
        let live = pool.begin_upload(&running).unwrap();
        live.write_status(&Status::uploading("running", None, 1))
            .unwrap();
        fs::create_dir(dir.path().join(".trash-x-1")).unwrap();
        fs::create_dir(dir.path().join("not an id")).unwrap();
        let report = pool.gc(Duration::from_secs(60)).unwrap();
        assert_eq!(
            report,
            GcReport {
                removed: 1,
                kept: 0,
                running: 1,
                trash: 1
            }
        );
        assert_eq!(listing(dir.path()), ["not an id", "running"]);
        drop(live);
        // Young enough to keep.
        let report = pool.gc(Duration::from_secs(3600)).unwrap();
        assert_eq!(report.kept, 1);
    }

    #[test]
    fn clear_deletes_in_the_trash_folder_not_in_the_pool() {
        let (dir, pool) = pool();
        let gone = id("gone");
        let up = pool.begin_upload(&gone).unwrap();
        let (mut file, _) = up.create_file().unwrap();
        file.write_all(b"bytes").unwrap();
        let mut status = Status::uploading("gone", None, 1);
        status.state = State::Done;
        up.finish(&status).unwrap();
        assert!(pool.clear(&gone).unwrap());
        assert!(
            dir.path().join(TRASH_DIR).is_dir(),
            "deleted through .trash"
        );
        assert!(listing(dir.path()).is_empty());
        assert!(!pool.clear(&gone).unwrap(), "nothing left to clear");
    }

    #[test]
    fn gc_sweeps_the_trash_folder_and_what_earlier_versions_left() {
        let (dir, pool) = pool();
        fs::create_dir_all(dir.path().join(".trash/a-1")).unwrap();
        fs::write(dir.path().join(".trash/a-1/file-1"), b"x").unwrap();
        fs::create_dir(dir.path().join(".trash-b-1")).unwrap();
        fs::write(dir.path().join(".trash-b-1/status.json"), b"{}").unwrap();
        let report = pool.gc(Duration::from_secs(60)).unwrap();
        assert_eq!(report.trash, 2, "{report:?}");
        assert!(listing(dir.path()).is_empty());
    }

    #[test]
    fn deleting_follows_no_planted_link() {
        let (dir, pool) = pool();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"keep").unwrap();
        // `.trash` itself a link: clears fall back to deleting in the pool.
        std::os::unix::fs::symlink(outside.path(), dir.path().join(".trash")).unwrap();
        let victim = id("victim");
        let up = pool.begin_upload(&victim).unwrap();
        let (mut file, _) = up.create_file().unwrap();
        file.write_all(b"bytes").unwrap();
        drop(file);
        drop(up);
        // A link inside the bucket, to a folder outside.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("victim/file-9")).unwrap();
        assert!(pool.clear(&victim).unwrap());
        assert_eq!(listing(dir.path()), [".trash"]);
        assert_eq!(listing(outside.path()), ["precious"]);
        assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"keep");
        pool.gc(Duration::from_secs(60)).unwrap();
        assert_eq!(listing(outside.path()), ["precious"]);
    }

    /// Pauses `upload` with `data` appended at `at`.
    fn chunk_and_pause(upload: Upload, at: u64, data: &[u8]) {
        let mut file = upload.open_data_at(at).unwrap();
        file.write_all(data).unwrap();
        drop(file);
        // A time in the status that pause must not keep.
        let status = Status::incomplete(&upload.identifier, Some(10), 1);
        upload.pause(&status).unwrap();
    }

    /// Makes an upload at rest look last touched `age` seconds ago.
    fn age(dir: &Path, name: &str, age: u64) {
        let path = dir.join(name).join("status.json");
        let mut status: Status = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        status.updated = Some(unix_now() - age);
        fs::write(&path, status.to_json()).unwrap();
    }

    fn is_free(lock: &Path) -> bool {
        let lock = File::open(lock).unwrap();
        match lock.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => panic!("{e}"),
        }
    }

    fn status_bytes(bucket: &Path) -> Vec<u8> {
        fs::read(bucket.join(STATUS)).unwrap()
    }

    /// Writes `status.json` of `name` by hand, as nothing in the pool does,
    /// to tell an answer read from the file from one kept in memory.
    fn plant_status(dir: &Path, name: &str, status: &Status) {
        fs::write(
            dir.join(name).join(STATUS),
            serde_json::to_vec(status).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn the_receiving_pool_answers_polls_with_the_status_it_last_wrote() {
        let (dir, pool) = pool();
        let elsewhere = Pool::new(dir.path(), 0o600, false);
        let upload = pool.begin_upload(&id("kept")).unwrap();
        let mut status = Status::uploading("kept", Some(100), unix_now());
        status.received = Some(40);
        upload.write_status(&status).unwrap();
        // The same document as another process reads from the pool.
        assert_eq!(pool.status(&id("kept")).unwrap(), status);
        assert_eq!(elsewhere.status(&id("kept")).unwrap(), status);
        // Kept in memory: a file changed behind its back is not read.
        let mut planted = status.clone();
        planted.received = Some(99);
        plant_status(dir.path(), "kept", &planted);
        assert_eq!(pool.status(&id("kept")).unwrap(), status);
        assert_eq!(elsewhere.status(&id("kept")).unwrap(), planted);
        // Its clones share it (the daemon's threads hold one pool).
        assert_eq!(pool.clone().status(&id("kept")).unwrap(), status);
        // Replaced by the next write.
        status.received = Some(70);
        upload.write_status(&status).unwrap();
        assert_eq!(pool.status(&id("kept")).unwrap(), status);
        // Finished: the final status, then the pool again.
        let mut done = status.clone();
        done.state = State::Done;
        upload.finish(&done).unwrap();
        assert_eq!(pool.status(&id("kept")).unwrap(), done);
        let mut after = done.clone();
        after.received = Some(1);
        plant_status(dir.path(), "kept", &after);
        assert_eq!(
            pool.status(&id("kept")).unwrap(),
            after,
            "read from the pool"
        );
    }

    #[test]
    fn a_kept_status_gives_way_to_the_pool_when_cleared_elsewhere_or_the_lock_is_lost() {
        let (dir, pool) = pool();
        let elsewhere = Pool::new(dir.path(), 0o600, false);
        let upload = pool.begin_upload(&id("gone")).unwrap();
        upload
            .write_status(&Status::uploading("gone", None, unix_now()))
            .unwrap();
        assert!(elsewhere.clear(&id("gone")).unwrap());
        assert_eq!(pool.status(&id("gone")).unwrap().state, State::Starting);
        // Made anew by another upload elsewhere: not the folder this
        // upload claimed.
        let other = elsewhere.begin_upload(&id("gone")).unwrap();
        let theirs = Status::uploading("gone", Some(3), unix_now());
        other.write_status(&theirs).unwrap();
        assert_eq!(pool.status(&id("gone")).unwrap(), theirs);
        drop(other);
        drop(upload);

        // The claimed folder moved aside and a link to it put in its
        // place: followed, the link would lead to the claimed folder.
        let upload = pool.begin_upload(&id("linked")).unwrap();
        upload
            .write_status(&Status::uploading("linked", None, unix_now()))
            .unwrap();
        let (bucket, aside) = (dir.path().join("linked"), dir.path().join("aside"));
        fs::rename(&bucket, &aside).unwrap();
        std::os::unix::fs::symlink(&aside, &bucket).unwrap();
        assert!(
            pool.status(&id("linked")).is_err(),
            "a link is refused, not followed"
        );
        fs::remove_file(&bucket).unwrap();
        fs::rename(&aside, &bucket).unwrap();
        drop(upload);

        let upload = pool.begin_upload(&id("lost")).unwrap();
        let status = Status::uploading("lost", None, unix_now());
        upload.write_status(&status).unwrap();
        upload.lose_lock_for_test();
        upload.still_holds_lock().unwrap_err();
        // Nobody holds the lock: the pool tells an interrupted upload.
        let seen = pool.status(&id("lost")).unwrap();
        assert_eq!(seen.state, State::Error, "{seen:?}");
        assert_eq!(seen, elsewhere.status(&id("lost")).unwrap());
    }

    #[test]
    fn resumable_uploads_are_not_kept() {
        let (dir, pool) = pool();
        let mut status = Status::uploading("chunked", Some(10), unix_now());
        status.resumable = true;
        let upload = pool.create_resumable(&id("chunked"), &status).unwrap();
        upload.write_status(&status).unwrap();
        let mut planted = pool.status(&id("chunked")).unwrap();
        planted.received = Some(7);
        plant_status(dir.path(), "chunked", &planted);
        assert_eq!(pool.status(&id("chunked")).unwrap(), planted);
    }

    #[test]
    fn a_fenced_write_after_the_lock_is_lost_is_refused_and_stores_nothing() {
        let (dir, pool) = pool();
        let upload = pool.begin_upload(&id("fenced")).unwrap();
        let (file, path) = upload.create_file().unwrap();
        let mut out = upload.fence(file);
        out.write_all(b"before").unwrap();
        upload.lose_lock_for_test();
        // The tick's check finds it lost, and that is for good: no write
        // goes through, however recent the last good check.
        upload.still_holds_lock().unwrap_err();
        let err = out.write_all(b"after").unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<PoolError>());
        assert!(matches!(inner, Some(PoolError::LockLost)), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), b"before");
        let answer = crate::error_code::store_error(err);
        assert_eq!((answer.code, answer.status()), (ErrorCode::LockLost, 503));
        drop(dir);
    }

    #[test]
    fn a_fenced_write_checks_the_lock_once_its_last_check_is_old() {
        let (_dir, pool) = pool();
        let upload = pool.begin_upload(&id("aged")).unwrap();
        let (file, path) = upload.create_file().unwrap();
        let mut out = upload.fence(file);
        out.write_all(b"held").unwrap();
        // Lost without a check noticing: only the write's own check can.
        upload.lose_lock_for_test();
        thread::sleep(FENCE_AGE + Duration::from_millis(20));
        let err = out.write_all(b"lost").unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<PoolError>());
        assert!(matches!(inner, Some(PoolError::LockLost)), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), b"held");
        assert!(matches!(
            upload.write_status(&Status::uploading("aged", None, unix_now())),
            Err(PoolError::LockLost)
        ));
    }

    #[test]
    fn checking_the_lock_neither_takes_nor_disturbs_it() {
        let (dir, pool) = pool();
        let upload = pool.begin_upload(&id("held")).unwrap();
        let lock = dir.path().join("held").join(LOCK);
        for _ in 0..3 {
            upload.still_holds_lock().unwrap();
        }
        // Still ours alone: the probe let go of nothing it took.
        assert!(!is_free(&lock));
        // Two threads checking at once never take each other's probe for
        // another holder.
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        upload.still_holds_lock().unwrap();
                    }
                });
            }
        });
        assert!(!is_free(&lock));
        let status = Status::uploading("held", None, unix_now());
        upload.write_status(&status).unwrap();
        upload.finish(&status).unwrap();
    }

    #[test]
    fn a_form_upload_that_lost_its_lock_writes_no_status_and_is_not_done() {
        let (dir, pool) = pool();
        let bucket = dir.path().join("lost");
        let upload = pool.begin_upload(&id("lost")).unwrap();
        let (mut file, path) = upload.create_file().unwrap();
        file.write_all(b"abc").unwrap();
        let mut status = Status::uploading("lost", Some(3), unix_now());
        upload.write_status(&status).unwrap();
        let before = status_bytes(&bucket);
        // The lock server drops it; nobody else has taken it.
        upload.lose_lock_for_test();
        status.received = Some(3);
        let err = upload.write_status(&status).unwrap_err();
        assert!(matches!(err, PoolError::LockLost), "{err:?}");
        assert_eq!(err.code().as_str(), "ERR_LOCK_LOST");
        assert_eq!(err.http_status(), 503);
        assert_eq!(status_bytes(&bucket), before, "a status was written");
        // The probe that found it free let go: another host can take it.
        assert!(is_free(&bucket.join(LOCK)));
        let mut done = status.clone();
        done.state = State::Done;
        let err = upload.finish(&done).unwrap_err();
        assert!(matches!(err, PoolError::LockLost), "{err:?}");
        assert_eq!(status_bytes(&bucket), before, "the upload was marked done");
        // Nothing removed either: what is there is no longer ours to judge.
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert!(bucket.join(RESERVE).exists());
        // Any reader sees the truth: nobody is receiving it.
        let seen = pool.status(&id("lost")).unwrap();
        assert_eq!(seen.code.as_deref(), Some("ERR_INTERRUPTED"));
    }

    #[test]
    fn a_lost_lock_another_host_took_is_found_and_its_upload_left_alone() {
        let (dir, pool) = pool();
        let bucket = dir.path().join("split");
        let a = pool.begin_upload(&id("split")).unwrap();
        let (mut a_file, _) = a.create_file().unwrap();
        a_file.write_all(b"from A").unwrap();
        a.write_status(&Status::uploading("split", None, unix_now()))
            .unwrap();
        a.lose_lock_for_test();
        // Host B reports the upload interrupted, and a new upload under
        // the identifier starts there: its own file-1, status and reserve.
        let b_pool = Pool::new(dir.path(), 0o600, false);
        let seen = b_pool.status(&id("split")).unwrap();
        assert_eq!(seen.code.as_deref(), Some("ERR_INTERRUPTED"));
        let b = b_pool.begin_upload(&id("split")).unwrap();
        let (mut file, b_path) = b.create_file().unwrap();
        file.write_all(b"from B").unwrap();
        b.write_status(&Status::uploading("split", Some(6), unix_now()))
            .unwrap();
        let b_status = status_bytes(&bucket);
        // What A's receiver still writes goes to its own file, which B's
        // upload unlinked: B's file-1 is another.
        a_file.write_all(b" again").unwrap();
        drop(a_file);
        assert_eq!(fs::read(&b_path).unwrap(), b"from B");
        // B holds the lock: A's probe is refused as it would be while A
        // held it, and only the attempt through A's own descriptor tells.
        let err = a
            .write_status(&Status::uploading("split", Some(6), unix_now()))
            .unwrap_err();
        assert!(matches!(err, PoolError::LockLost), "{err:?}");
        assert!(!is_free(&bucket.join(LOCK)), "B's lock was let go of");
        // A's request fails, and dropping it removes and records nothing.
        let mut failed = Status::uploading("split", None, unix_now());
        failed.fail(err.code(), err.to_string(), unix_now());
        a.fail(&failed);
        assert_eq!(fs::read(&b_path).unwrap(), b"from B");
        assert_eq!(status_bytes(&bucket), b_status);
        assert!(bucket.join(RESERVE).exists(), "B's reserve was removed");
        let mut done = Status::uploading("split", Some(6), unix_now());
        done.state = State::Done;
        b.finish(&done).unwrap();
        assert_eq!(pool.status(&id("split")).unwrap().state, State::Done);
    }

    #[test]
    fn a_resumable_upload_that_lost_its_lock_changes_nothing_of_the_new_holder() {
        let (dir, pool) = pool();
        let id = id("lostchunk");
        let bucket = dir.path().join("lostchunk");
        let a = pool
            .create_resumable(&id, &Status::incomplete("lostchunk", Some(6), unix_now()))
            .unwrap();
        let mut file = a.open_data_at(0).unwrap();
        file.write_all(b"abc").unwrap();
        drop(file);
        a.save_hash_state(b"state of A").unwrap();
        a.lose_lock_for_test();
        // The client goes on through host B, which continues the upload.
        let b_pool = Pool::new(dir.path(), 0o600, false);
        let b = b_pool.resume_upload(&id).unwrap();
        let mut file = b.open_data_at(3).unwrap();
        file.write_all(b"def").unwrap();
        drop(file);
        b.save_hash_state(b"state of B").unwrap();
        b.write_status(&Status::incomplete("lostchunk", Some(6), unix_now()))
            .unwrap();
        let b_status = status_bytes(&bucket);
        // Every write A could still make is refused while B holds it.
        let lost = |r: Result<(), PoolError>| matches!(r, Err(PoolError::LockLost));
        assert!(lost(a.open_data_at(6).map(drop)));
        assert!(lost(a.truncate_data(3)));
        assert!(lost(a.save_hash_state(b"stale")));
        assert!(lost(a.write_status(&Status::incomplete(
            "lostchunk",
            Some(6),
            unix_now()
        ))));
        b.pause(&Status::incomplete("lostchunk", Some(6), unix_now()))
            .unwrap();
        let paused = status_bytes(&bucket);
        assert_ne!(paused, b_status);
        // With the lock free again, A still knows it is not its own.
        let mut done = Status::incomplete("lostchunk", Some(6), unix_now());
        done.state = State::Done;
        done.received = Some(6);
        let err = a.finish(&done).unwrap_err();
        assert!(matches!(err, PoolError::LockLost), "{err:?}");
        assert_eq!(status_bytes(&bucket), paused, "A wrote the status");
        assert_eq!(pool.status(&id).unwrap().state, State::Incomplete);
        assert_eq!(fs::read(bucket.join(DATA_FILE)).unwrap(), b"abcdef");
        assert_eq!(fs::read(bucket.join(HASH_STATE)).unwrap(), b"state of B");
        assert!(is_free(&bucket.join(LOCK)));
        // And the upload is B's client's to finish.
        let c = pool.resume_upload(&id).unwrap();
        assert_eq!(c.offset().unwrap(), 6);
        c.finish(&done).unwrap();
        assert_eq!(pool.status(&id).unwrap().state, State::Done);
    }

    #[test]
    fn a_resumable_request_that_lost_its_lock_cannot_pause_or_let_go() {
        let (dir, pool) = pool();
        let id = id("lostpause");
        let bucket = dir.path().join("lostpause");
        let a = pool
            .create_resumable(&id, &Status::incomplete("lostpause", Some(6), unix_now()))
            .unwrap();
        let before = status_bytes(&bucket);
        a.lose_lock_for_test();
        let resting = Status::incomplete("lostpause", Some(6), unix_now());
        assert!(matches!(a.let_go(&resting), Err(PoolError::LockLost)));
        assert!(matches!(a.pause(&resting), Err(PoolError::LockLost)));
        assert_eq!(status_bytes(&bucket), before);
        assert!(bucket.join(RESERVE).exists(), "the reserve was given back");
    }

    #[test]
    fn a_replaced_lock_file_is_a_lost_lock() {
        let (dir, pool) = pool();
        let bucket = dir.path().join("replaced");
        let upload = pool.begin_upload(&id("replaced")).unwrap();
        upload
            .write_status(&Status::uploading("replaced", None, unix_now()))
            .unwrap();
        let before = status_bytes(&bucket);
        // Every other claim locks the file of that name: ours keeps nobody out.
        fs::write(bucket.join("lock.new"), b"").unwrap();
        fs::rename(bucket.join("lock.new"), bucket.join(LOCK)).unwrap();
        let mut done = Status::uploading("replaced", None, unix_now());
        done.state = State::Done;
        let err = upload.finish(&done).unwrap_err();
        assert!(matches!(err, PoolError::LockLost), "{err:?}");
        assert_eq!(status_bytes(&bucket), before);
    }

    /// What a check costs on a local disk: progress ticks are budgeted to
    /// 500 a second per process, each with one check.
    #[test]
    fn checking_the_lock_is_cheap() {
        let (_dir, pool) = pool();
        let upload = pool.begin_upload(&id("cost")).unwrap();
        let rounds = 20_000u32;
        let started = Instant::now();
        for _ in 0..rounds {
            upload.still_holds_lock().unwrap();
        }
        let each = started.elapsed() / rounds;
        eprintln!("one lock check: {each:?}");
        // 500 ticks a second at this cost take under 1% of one core.
        assert!(each < Duration::from_micros(20), "one lock check: {each:?}");
        upload.fail(&Status::uploading("cost", None, unix_now()));
    }

    #[test]
    fn a_later_request_takes_a_held_upload_over() {
        let (dir, pool) = pool();
        let id = id("takeover");
        let bucket = dir.path().join("takeover");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("takeover", Some(10), unix_now()))
            .unwrap();
        assert!(!upload.release_requested());
        // The holder, in another process (a second view of the pool), acts
        // as a request's progress ticks do: it looks for a request to let
        // go, and then stores what it has and pauses.
        let holder = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !upload.release_requested() {
                assert!(Instant::now() < deadline, "never asked to let go");
                thread::sleep(Duration::from_millis(20));
            }
            let mut file = upload.open_data_at(0).unwrap();
            file.write_all(b"abc").unwrap();
            drop(file);
            upload
                .pause(&Status::incomplete("takeover", Some(10), 1))
                .unwrap();
        });
        let other = Pool::new(dir.path(), 0o600, false);
        let started = Instant::now();
        let taken = other.take_over(&id, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        holder.join().unwrap();
        // It holds the lock, the request is answered, and the bytes the
        // old one stored before it let go are the offset to continue from.
        assert!(!is_free(&bucket.join("lock")));
        assert!(!bucket.join("release").exists());
        assert!(!taken.release_requested());
        assert_eq!(taken.offset().unwrap(), 3);
        drop(taken);
        // Free: taken at once, no request made.
        let again = pool.take_over(&id, Duration::from_secs(10)).unwrap();
        assert!(!bucket.join("release").exists());
        drop(again);
    }

    #[test]
    fn a_holder_that_does_not_let_go_leaves_the_asker_locked_out() {
        let (dir, pool) = pool();
        let id = id("stuck");
        let _stuck = pool
            .create_resumable(&id, &Status::incomplete("stuck", None, unix_now()))
            .unwrap();
        let other = Pool::new(dir.path(), 0o600, false);
        let started = Instant::now();
        let err = other
            .take_over(&id, Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(err, PoolError::Locked), "{err}");
        assert_eq!(err.code(), ErrorCode::UploadLocked);
        assert_eq!(err.http_status(), 423);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Nothing to take over: not found, nothing made.
        let err = other
            .take_over(&self::id("none"), Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, PoolError::NotFound), "{err}");
        assert!(!dir.path().join("none").exists());
    }

    #[test]
    fn a_form_upload_is_never_asked_to_let_go() {
        let (dir, pool) = pool();
        let id = id("form");
        let upload = pool.begin_upload(&id).unwrap();
        fs::write(dir.path().join("form/release"), b"").unwrap();
        assert!(!upload.release_requested());
        // And a form upload is not one to take over.
        let other = Pool::new(dir.path(), 0o600, false);
        let err = other
            .take_over(&id, Duration::from_millis(200))
            .unwrap_err();
        assert!(
            matches!(err, PoolError::Locked | PoolError::NotFound),
            "{err}"
        );
    }

    #[test]
    fn resumable_upload_from_two_processes_views() {
        let (dir, pool) = pool();
        let id = id("resume");
        let bucket = dir.path().join("resume");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("resume", Some(10), unix_now()))
            .unwrap();
        let stored: Status =
            serde_json::from_slice(&fs::read(bucket.join("status.json")).unwrap()).unwrap();
        assert_eq!(stored.state, State::Incomplete);
        assert_eq!(upload.offset().unwrap(), 0);
        // Nothing else may be created in it: it has one data file.
        let err = upload.create_file().unwrap_err();
        assert!(matches!(err, PoolError::Misuse(_)), "{err}");
        assert_eq!(err.code(), ErrorCode::Internal);
        chunk_and_pause(upload, 0, b"hello");

        // At rest: incomplete, its received the bytes stored, its lock free,
        // and that is not an interrupted upload.
        assert!(is_free(&bucket.join("lock")));
        let status = pool.status(&id).unwrap();
        assert_eq!(status.state, State::Incomplete, "{status:?}");
        assert_eq!(status.received, Some(5));
        assert_eq!(status.code, None);
        // Now, not the time the caller's status had: gc counts from it.
        assert!(status.updated.unwrap() + 60 > unix_now(), "{status:?}");
        assert_eq!(pool.offset(&id).unwrap(), 5);
        assert_eq!(pool.bucket(&id).offset().unwrap(), 5);
        assert_eq!(listing(&bucket), ["file-1", "lock", "status.json"]);

        // The next request reaches another process: a second view of the pool.
        let other = Pool::new(dir.path(), 0o600, false);
        let upload = other.resume_upload(&id).unwrap();
        assert!(!is_free(&bucket.join("lock")));
        for err in [
            pool.resume_upload(&id).unwrap_err(),
            pool.begin_upload(&id).unwrap_err(),
        ] {
            assert!(matches!(err, PoolError::Busy), "{err}");
            assert_eq!(err.code(), ErrorCode::UploadRunning);
        }
        // A poll while the chunk runs is not queued behind it.
        assert_eq!(pool.offset(&id).unwrap(), 5);
        for wrong in [0, 3, 6] {
            let err = upload.open_data_at(wrong).unwrap_err();
            assert!(
                matches!(err, PoolError::OffsetMismatch { stored: 5, given } if given == wrong),
                "{err}"
            );
            assert_eq!(err.code(), ErrorCode::MismatchedOffset);
            assert_eq!(err.http_status(), 409);
        }
        assert_eq!(fs::read(bucket.join("file-1")).unwrap(), b"hello");

        // A chunk whose checksum fails is cut away; the writer's position
        // does not matter, every write lands at the end (no hole).
        let mut file = upload.open_data_at(5).unwrap();
        file.write_all(b"XXXX").unwrap();
        assert_eq!(upload.offset().unwrap(), 9);
        let err = upload.truncate_data(10).unwrap_err();
        assert!(
            matches!(
                err,
                PoolError::OffsetMismatch {
                    stored: 9,
                    given: 10
                }
            ),
            "{err}"
        );
        upload.truncate_data(5).unwrap();
        assert_eq!(pool.offset(&id).unwrap(), 5);
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(b"world").unwrap();
        drop(file);
        assert_eq!(fs::read(bucket.join("file-1")).unwrap(), b"helloworld");

        let mut done = Status::incomplete("resume", Some(10), unix_now());
        done.state = State::Done;
        done.received = Some(10);
        done.files = Some(vec![crate::status::FileInfo {
            field: "file".into(),
            filename: "a.txt".into(),
            content_type: "text/plain".into(),
            size: 10,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: upload.data_path().display().to_string(),
        }]);
        upload.finish(&done).unwrap();
        assert_eq!(pool.status(&id).unwrap().state, State::Done);
        assert_eq!(pool.bucket(&id).paths().unwrap(), [bucket.join("file-1")]);
        let mode = fs::metadata(bucket.join("file-1")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = other.resume_upload(&id).unwrap_err();
        assert!(matches!(err, PoolError::Complete), "{err}");
        assert_eq!(err.code(), ErrorCode::UploadComplete);
    }

    #[test]
    fn resume_refuses_what_it_cannot_continue_and_changes_nothing() {
        let (dir, pool) = pool();
        let refused = |name: &str| {
            let before = fs::read_dir(dir.path().join(name))
                .map(|_| listing(&dir.path().join(name)))
                .ok();
            let status = fs::read(dir.path().join(name).join("status.json")).ok();
            let err = pool.resume_upload(&id(name)).unwrap_err();
            let after = fs::read_dir(dir.path().join(name))
                .map(|_| listing(&dir.path().join(name)))
                .ok();
            assert_eq!(before, after, "{name}");
            let now = fs::read(dir.path().join(name).join("status.json")).ok();
            assert_eq!(now, status, "{name}");
            err
        };
        let missing = refused("missing");
        assert!(matches!(missing, PoolError::NotFound), "{missing}");
        assert_eq!(missing.code(), ErrorCode::UploadNotFound);
        assert_eq!(missing.code().as_str(), "ERR_UPLOAD_NOT_FOUND");
        assert_eq!(missing.http_status(), 404);
        assert!(matches!(
            pool.offset(&id("missing")),
            Err(PoolError::NotFound)
        ));

        // A failed form upload, an interrupted one: nothing to continue.
        let failed = pool.begin_upload(&id("failed")).unwrap();
        let mut status = Status::uploading("failed", None, 1);
        status.fail(ErrorCode::Truncated, "truncated", 2);
        failed.fail(&status);
        assert!(matches!(refused("failed"), PoolError::NotFound));
        let dead = dir.path().join("dead");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), "").unwrap();
        let uploading = Status::uploading("dead", Some(10), 1).to_json();
        fs::write(dead.join("status.json"), uploading).unwrap();
        assert!(matches!(refused("dead"), PoolError::NotFound));

        let done = pool.begin_upload(&id("done")).unwrap();
        let mut status = Status::uploading("done", None, 1);
        status.state = State::Done;
        done.finish(&status).unwrap();
        assert!(matches!(refused("done"), PoolError::Complete));

        let running = pool.begin_upload(&id("running")).unwrap();
        running
            .write_status(&Status::uploading("running", None, 1))
            .unwrap();
        let busy = refused("running");
        assert!(matches!(busy, PoolError::Busy), "{busy}");
        assert_eq!(busy.code().as_str(), "ERR_UPLOAD_RUNNING");
        drop(running);

        let garbled = dir.path().join("garbled");
        fs::create_dir(&garbled).unwrap();
        fs::write(garbled.join("lock"), "").unwrap();
        fs::write(garbled.join("status.json"), "{not json").unwrap();
        assert!(matches!(refused("garbled"), PoolError::Unreadable(_)));

        // A resumable upload misused as a form upload's is refused too.
        let form = pool.begin_upload(&id("form")).unwrap();
        let err = form.open_data_at(0).unwrap_err();
        assert!(matches!(err, PoolError::Misuse(_)), "{err}");
        form.fail(&Status::starting());
    }

    #[test]
    fn new_uploads_do_not_replace_an_incomplete_one() {
        let (dir, pool) = pool();
        let id = id("paused");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("paused", None, 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"abc");
        let status = pool.status(&id).unwrap();
        for err in [
            pool.begin_upload(&id).unwrap_err(),
            pool.create_resumable(&id, &Status::incomplete("paused", None, 1))
                .unwrap_err(),
        ] {
            assert!(matches!(err, PoolError::InProgress), "{err}");
            assert_eq!(err.code(), ErrorCode::UploadRunning);
        }
        assert_eq!(pool.status(&id).unwrap(), status);
        assert_eq!(fs::read(dir.path().join("paused/file-1")).unwrap(), b"abc");
    }

    #[test]
    fn a_request_that_dies_leaves_the_upload_resumable() {
        let (dir, pool) = pool();
        let id = id("crash");
        let bucket = dir.path().join("crash");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("crash", Some(10), 1))
            .unwrap();
        let mut file = upload.open_data_at(0).unwrap();
        file.write_all(b"abcd").unwrap();
        // A progress update in the form upload's words stays incomplete.
        let mut progress = Status::uploading("crash", Some(10), 1);
        progress.received = Some(2);
        upload.write_status(&progress).unwrap();
        let stored: Status =
            serde_json::from_slice(&fs::read(bucket.join("status.json")).unwrap()).unwrap();
        assert_eq!(stored.state, State::Incomplete);
        // The request ends without pause (a panic, an early return).
        drop(file);
        drop(upload);
        let status = pool.status(&id).unwrap();
        assert_eq!(status.state, State::Incomplete, "{status:?}");
        assert_eq!(status.received, Some(2), "the status lags");
        assert_eq!(pool.offset(&id).unwrap(), 4, "the file is the truth");
        assert_eq!(listing(&bucket), ["file-1", "lock", "status.json"]);
        // A killed receiver leaves its reserve as well.
        fs::write(bucket.join("status.reserve"), [0u8; 16]).unwrap();
        let upload = pool.resume_upload(&id).unwrap();
        let mut file = upload.open_data_at(4).unwrap();
        file.write_all(b"efghij").unwrap();
        drop(file);
        upload
            .pause(&Status::incomplete("crash", Some(10), 2))
            .unwrap();
        assert_eq!(pool.status(&id).unwrap().received, Some(10));
        assert_eq!(fs::read(bucket.join("file-1")).unwrap(), b"abcdefghij");
        assert_eq!(listing(&bucket), ["file-1", "lock", "status.json"]);
    }

    #[test]
    fn a_resumable_upload_whose_finish_fails_stays_resumable() {
        let (dir, pool) = pool();
        let id = id("unfinished");
        let bucket = dir.path().join("unfinished");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("unfinished", Some(3), 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"abc");
        let upload = pool.resume_upload(&id).unwrap();
        // Something in the way of the new status (as a full disk would be).
        fs::create_dir(bucket.join("status.json.tmp")).unwrap();
        let mut done = Status::incomplete("unfinished", Some(3), 1);
        done.state = State::Done;
        upload.finish(&done).unwrap_err();
        assert_eq!(pool.status(&id).unwrap().state, State::Incomplete);
        assert_eq!(fs::read(bucket.join("file-1")).unwrap(), b"abc");
        fs::remove_dir(bucket.join("status.json.tmp")).unwrap();
        let upload = pool.resume_upload(&id).unwrap();
        upload.finish(&done).unwrap();
        assert_eq!(pool.status(&id).unwrap().state, State::Done);

        // Empty: finished before any chunk, it still has its data file.
        let empty = verify_identifier("empty", None).unwrap();
        let upload = pool
            .create_resumable(&empty, &Status::incomplete("empty", Some(0), 1))
            .unwrap();
        upload.finish(&done).unwrap();
        assert_eq!(fs::read(dir.path().join("empty/file-1")).unwrap(), b"");
    }

    #[test]
    fn failing_a_resumable_upload_ends_it() {
        let (dir, pool) = pool();
        let id = id("failing");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("failing", None, 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"abc");
        let upload = pool.resume_upload(&id).unwrap();
        let mut status = Status::incomplete("failing", None, 1);
        status.fail(ErrorCode::TooLarge, "too large", 2);
        upload.fail(&status);
        assert_eq!(DATA_FILE, format!("{FILE_PREFIX}1"));
        assert_eq!(
            listing(&dir.path().join("failing")),
            ["lock", "status.json"]
        );
        let recorded = pool.status(&id).unwrap();
        assert_eq!(recorded.state, State::Error);
        assert_eq!(recorded.code.as_deref(), Some("ERR_TOO_LARGE"));
        assert!(matches!(pool.resume_upload(&id), Err(PoolError::NotFound)));
        // Like a failed form upload, it may be started afresh.
        pool.create_resumable(&id, &Status::incomplete("failing", None, 3))
            .unwrap()
            .pause(&Status::incomplete("failing", None, 3))
            .unwrap();
        assert_eq!(pool.offset(&id).unwrap(), 0);
    }

    #[test]
    fn data_file_has_the_exact_mode_and_planted_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A mode the usual umask (022) would cut down.
        let wide = Pool::new(dir.path(), 0o666, false);
        let upload = wide
            .create_resumable(&id("mode"), &Status::incomplete("mode", None, 1))
            .unwrap();
        upload.open_data_at(0).unwrap();
        let mode = fs::metadata(dir.path().join("mode/file-1")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o666);
        upload.pause(&Status::incomplete("mode", None, 1)).unwrap();

        let (dir, pool) = pool();
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"keep").unwrap();
        for (name, plant) in [("hardlink", true), ("symlink", false)] {
            let upload = pool
                .create_resumable(&id(name), &Status::incomplete(name, None, 1))
                .unwrap();
            let data = dir.path().join(name).join("file-1");
            if plant {
                fs::hard_link(&outside, &data).unwrap();
            } else {
                std::os::unix::fs::symlink(&outside, &data).unwrap();
            }
            for offset in [0, 4] {
                let err = upload.open_data_at(offset).unwrap_err();
                assert!(matches!(err, PoolError::Io { .. }), "{name}: {err}");
            }
            assert!(upload.truncate_data(0).is_err(), "{name}");
            assert!(pool.offset(&id(name)).is_err(), "{name}");
            upload
                .pause(&Status::incomplete(name, None, 1))
                .unwrap_err();
            assert_eq!(fs::read(&outside).unwrap(), b"keep", "{name}");
        }
    }

    #[test]
    fn gc_keeps_a_fresh_incomplete_upload_and_expires_an_old_one() {
        let (dir, pool) = pool();
        let now = unix_now();
        let fresh = pool
            .create_resumable(&id("fresh"), &Status::incomplete("fresh", None, now))
            .unwrap();
        chunk_and_pause(fresh, 0, b"new");
        let stale = pool
            .create_resumable(&id("stale"), &Status::incomplete("stale", None, now))
            .unwrap();
        chunk_and_pause(stale, 0, b"old");
        age(dir.path(), "stale", 7200);
        // An old one with a request running in it is not touched.
        let busy = pool
            .create_resumable(&id("busy"), &Status::incomplete("busy", None, now))
            .unwrap();
        chunk_and_pause(busy, 0, b"run");
        age(dir.path(), "busy", 7200);
        let busy = pool.resume_upload(&id("busy")).unwrap();
        let report = pool.gc(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            report,
            GcReport {
                removed: 1,
                kept: 1,
                running: 1,
                trash: 0
            }
        );
        assert_eq!(listing(dir.path()), ["busy", "fresh"]);
        assert_eq!(pool.status(&id("fresh")).unwrap().state, State::Incomplete);
        assert!(matches!(
            pool.resume_upload(&id("stale")),
            Err(PoolError::NotFound)
        ));
        drop(busy);
    }

    #[test]
    fn clear_removes_an_incomplete_upload_and_cancels_its_request() {
        let (dir, pool) = pool();
        let id = id("cleared");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("cleared", None, 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"abc");
        assert!(pool.clear(&id).unwrap());
        assert_eq!(listing(dir.path()), Vec::<String>::new());
        assert_eq!(pool.status(&id).unwrap(), Status::starting());
        assert!(matches!(pool.resume_upload(&id), Err(PoolError::NotFound)));
        assert!(matches!(pool.offset(&id), Err(PoolError::NotFound)));

        let upload = pool
            .create_resumable(&id, &Status::incomplete("cleared", None, 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"abc");
        let upload = pool.resume_upload(&id).unwrap();
        assert!(pool.clear(&id).unwrap());
        assert!(upload.is_cancelled());
        assert!(matches!(upload.open_data_at(3), Err(PoolError::Cancelled)));
        let err = upload
            .pause(&Status::incomplete("cleared", None, 1))
            .unwrap_err();
        assert!(matches!(err, PoolError::Cancelled), "{err}");
        assert_eq!(listing(dir.path()), Vec::<String>::new());
    }

    /// Every file under `dir` with the SHA-256 of its bytes (folders as
    /// names alone): for "nothing changed".
    fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.strip_prefix(base).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.insert(format!("{name}/"), String::new());
                    walk(base, &path, out);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
                    out.insert(name, crate::identifier::hex(&digest));
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    /// A complete resumable upload of `data`, as a tus partial upload is
    /// once its last chunk is in.
    fn complete_resumable(pool: &Pool, name: &str, data: &[u8]) {
        let id = id(name);
        let size = data.len() as u64;
        let upload = pool
            .create_resumable(&id, &Status::incomplete(name, Some(size), 1))
            .unwrap();
        let mut file = upload.open_data_at(0).unwrap();
        file.write_all(data).unwrap();
        drop(file);
        let mut done = Status::incomplete(name, Some(size), 1);
        done.state = State::Done;
        done.received = Some(size);
        done.files = Some(vec![FileInfo {
            field: String::new(),
            filename: format!("{name}.bin"),
            content_type: "application/octet-stream".into(),
            size,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: upload.data_path().to_string_lossy().into_owned(),
        }]);
        upload.finish(&done).unwrap();
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn the_hash_state_is_kept_between_requests_and_never_a_stored_file() {
        let (dir, pool) = pool();
        let id = id("hashed");
        let bucket = dir.path().join("hashed");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("hashed", Some(6), 1))
            .unwrap();
        assert_eq!(upload.load_hash_state().unwrap(), None);
        let mut file = upload.open_data_at(0).unwrap();
        file.write_all(b"abc").unwrap();
        upload.save_hash_state(b"state after abc").unwrap();
        upload.save_hash_state(b"replaced whole").unwrap();
        upload
            .pause(&Status::incomplete("hashed", Some(6), 1))
            .unwrap();
        assert_eq!(
            listing(&bucket),
            ["file-1", "lock", "sha256.state", "status.json"]
        );
        // The next request, from any process, finds it.
        let other = Pool::new(dir.path(), 0o600, false);
        let upload = other.resume_upload(&id).unwrap();
        assert_eq!(
            upload.load_hash_state().unwrap().as_deref(),
            Some(b"replaced whole".as_slice())
        );
        let mode = fs::metadata(bucket.join("sha256.state")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Too large for a state: refused, the old one kept.
        let huge = vec![0u8; MAX_HASH_STATE_BYTES + 1];
        assert!(matches!(
            upload.save_hash_state(&huge),
            Err(PoolError::Misuse(_))
        ));
        let mut file = upload.open_data_at(3).unwrap();
        file.write_all(b"def").unwrap();
        let mut done = Status::incomplete("hashed", Some(6), 1);
        done.state = State::Done;
        done.files = Some(vec![FileInfo {
            field: String::new(),
            filename: "a".into(),
            content_type: "text/plain".into(),
            size: 6,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: upload.data_path().to_string_lossy().into_owned(),
        }]);
        upload.finish(&done).unwrap();
        // Done: the state is gone, and only the data is a stored file.
        assert_eq!(listing(&bucket), ["file-1", "lock", "status.json"]);
        assert_eq!(pool.bucket(&id).paths().unwrap(), [bucket.join("file-1")]);
        // Form uploads have none to save.
        let form = pool
            .begin_upload(&verify_identifier("form", None).unwrap())
            .unwrap();
        assert!(matches!(
            form.save_hash_state(b"x"),
            Err(PoolError::Misuse(_))
        ));
        assert!(matches!(form.load_hash_state(), Err(PoolError::Misuse(_))));
    }

    /// The pieces together, as the protocol uses them: each request loads
    /// the state, catches up, hashes its chunk as it stores it and saves
    /// the state; a request killed after its write but before its save
    /// costs the next one only the bytes it stored. The final digest is
    /// the file's.
    #[test]
    fn a_resumable_sha256_needs_no_reread_of_the_file() {
        use crate::hashing::{CatchUp, ResumableSha256};
        let (dir, pool) = pool();
        let data = pattern(900_000, 6);
        let id = id("whole-hash");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("whole-hash", Some(900_000), 1))
            .unwrap();
        upload
            .pause(&Status::incomplete("whole-hash", Some(900_000), 1))
            .unwrap();
        let mut caught_up = Vec::new();
        for (i, chunk) in data.chunks(200_000).enumerate() {
            let upload = pool.resume_upload(&id).unwrap();
            let offset = upload.offset().unwrap();
            let mut file = upload.open_data_at(offset).unwrap();
            let mut hash = match upload.load_hash_state().unwrap() {
                Some(bytes) => ResumableSha256::from_bytes(&bytes).unwrap(),
                None => ResumableSha256::new(),
            };
            caught_up.push(hash.catch_up(&file, offset).unwrap());
            file.write_all(chunk).unwrap();
            hash.update(chunk);
            if i == 2 {
                // Killed after the write, before the save and the pause.
                drop(upload);
                continue;
            }
            upload.save_hash_state(&hash.to_bytes()).unwrap();
            let status = Status::incomplete("whole-hash", Some(900_000), 1);
            if upload.offset().unwrap() == data.len() as u64 {
                assert_eq!(
                    hash.finish_hex(),
                    crate::identifier::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data))
                );
                let mut done = status;
                done.state = State::Done;
                upload.finish(&done).unwrap();
            } else {
                upload.pause(&status).unwrap();
            }
        }
        assert_eq!(
            caught_up,
            [
                CatchUp::Current,
                CatchUp::Current,
                CatchUp::Current,
                // Only the chunk the killed request stored.
                CatchUp::Hashed(200_000),
                CatchUp::Current,
            ]
        );
        assert_eq!(
            fs::read(dir.path().join("whole-hash/file-1")).unwrap(),
            data
        );
        assert_eq!(
            listing(&dir.path().join("whole-hash")),
            ["file-1", "lock", "status.json"]
        );
    }

    #[test]
    fn the_hash_state_goes_with_a_fail_a_truncation_a_clear_and_gc() {
        let (dir, pool) = pool();
        let start = |name: &str| {
            let upload = pool
                .create_resumable(&id(name), &Status::incomplete(name, Some(9), 1))
                .unwrap();
            let mut file = upload.open_data_at(0).unwrap();
            file.write_all(b"abc").unwrap();
            upload.save_hash_state(b"state").unwrap();
            upload
        };
        // A failed upload: data and state removed, the failure recorded.
        let upload = start("failed");
        let mut failed = Status::incomplete("failed", Some(9), 1);
        failed.fail(ErrorCode::TooLarge, "too large", 2);
        upload.fail(&failed);
        assert_eq!(listing(&dir.path().join("failed")), ["lock", "status.json"]);
        // A chunk cut back: the state may have seen it, so it goes.
        let upload = start("cut");
        upload.truncate_data(1).unwrap();
        assert_eq!(upload.load_hash_state().unwrap(), None);
        upload.save_hash_state(b"state for 1 byte").unwrap();
        upload
            .pause(&Status::incomplete("cut", Some(9), 1))
            .unwrap();
        // Cleared, and expired by gc: the whole bucket.
        assert!(pool.clear(&id("cut")).unwrap());
        let upload = start("old");
        upload
            .pause(&Status::incomplete("old", Some(9), 1))
            .unwrap();
        age(dir.path(), "old", 1000);
        assert_eq!(pool.gc(Duration::from_secs(10)).unwrap().removed, 2);
        assert_eq!(listing(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_planted_hash_state_is_refused_not_followed_or_waited_on() {
        let (dir, pool) = pool();
        let id = id("planted");
        let bucket = dir.path().join("planted");
        let upload = pool
            .create_resumable(&id, &Status::incomplete("planted", None, 1))
            .unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, bucket.join("sha256.state")).unwrap();
        assert!(matches!(
            upload.load_hash_state(),
            Err(PoolError::Io { .. })
        ));
        // Saving replaces the link itself, and writes nothing through it.
        upload.save_hash_state(b"mine").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"secret");
        assert_eq!(
            upload.load_hash_state().unwrap().as_deref(),
            Some(b"mine".as_slice())
        );
        fs::remove_file(bucket.join("sha256.state")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            bucket.join("sha256.state"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            upload.load_hash_state(),
            Err(PoolError::Io { .. })
        ));
        fs::remove_file(bucket.join("sha256.state")).unwrap();
        fs::write(
            bucket.join("sha256.state"),
            vec![1u8; MAX_HASH_STATE_BYTES + 1],
        )
        .unwrap();
        assert!(matches!(
            upload.load_hash_state(),
            Err(PoolError::Io { .. })
        ));
    }

    #[test]
    fn concatenation_makes_one_file_of_the_partials_in_order_and_removes_them() {
        let (dir, pool) = pool();
        let parts = [
            pattern(300_000, 1),
            Vec::new(),
            pattern(1, 2),
            pattern(70_000, 3),
        ];
        let names = ["part-a", "part-b", "part-c", "part-d"];
        for (name, data) in names.iter().zip(&parts) {
            complete_resumable(&pool, name, data);
        }
        // Two of them, also kept apart to check the other order.
        let partials: Vec<Identifier> = names.iter().map(|n| id(n)).collect();
        let mut status = Status::incomplete("whole", None, 7);
        status.filename = Some("whole.bin".into());
        status.content_type = Some("video/mp4".into());
        let total = pool
            .concatenate(&id("whole"), &partials, &status, Checksums::default())
            .unwrap();
        let expected: Vec<u8> = parts.concat();
        assert_eq!(total, expected.len() as u64);
        let bucket = dir.path().join("whole");
        assert_eq!(fs::read(bucket.join("file-1")).unwrap(), expected);
        assert_eq!(listing(&bucket), ["file-1", "lock", "status.json"]);
        assert_eq!(listing(dir.path()), ["whole"], "the partials are gone");
        let done = pool.status(&id("whole")).unwrap();
        assert_eq!(done.state, State::Done);
        assert_eq!(done.size, Some(total));
        assert_eq!(done.received, Some(total));
        assert_eq!(done.started, Some(7));
        let [file] = done.files() else {
            panic!("{done:?}")
        };
        assert_eq!(file.size, total);
        assert_eq!(file.filename, "whole.bin");
        assert_eq!(file.content_type, "video/mp4");
        assert_eq!(
            file.sha256.as_deref(),
            Some(
                crate::identifier::hex(&<sha2::Sha256 as sha2::Digest>::digest(&expected)).as_str()
            )
        );
        assert_eq!(
            pool.bucket(&id("whole")).paths().unwrap(),
            [bucket.join("file-1")]
        );
        assert_eq!(
            fs::metadata(bucket.join("file-1")).unwrap().mode() & 0o777,
            0o600
        );
        // Without hashing, and with a file entry given: its names are kept.
        complete_resumable(&pool, "x1", b"hello ");
        complete_resumable(&pool, "x2", b"world");
        let mut status = Status::incomplete("greeting", None, 7);
        status.files = Some(vec![FileInfo {
            field: "file".into(),
            filename: "hello.txt".into(),
            content_type: "text/plain".into(),
            size: 0,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: String::new(),
        }]);
        pool.concatenate(
            &id("greeting"),
            &[id("x2"), id("x1")],
            &status,
            Checksums::NONE,
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.path().join("greeting/file-1")).unwrap(),
            b"worldhello "
        );
        let done = pool.status(&id("greeting")).unwrap();
        assert_eq!(done.files()[0].field, "file");
        assert_eq!(done.files()[0].filename, "hello.txt");
        assert_eq!(done.files()[0].size, 11);
        assert_eq!(done.files()[0].sha256, None);
    }

    /// Each refusal is typed, and leaves every byte of the pool as it was:
    /// no final bucket, partials untouched.
    #[test]
    fn a_partial_that_cannot_be_used_is_refused_and_nothing_changes() {
        let (dir, pool) = pool();
        complete_resumable(&pool, "good", b"good bytes");
        // Incomplete: a chunk in, more to come.
        let upload = pool
            .create_resumable(&id("half"), &Status::incomplete("half", Some(9), 1))
            .unwrap();
        chunk_and_pause(upload, 0, b"half");
        // Failed: its bytes are gone.
        let upload = pool
            .create_resumable(&id("failed"), &Status::incomplete("failed", Some(9), 1))
            .unwrap();
        let mut failed = Status::incomplete("failed", Some(9), 1);
        failed.fail(ErrorCode::TooLarge, "too large", 2);
        upload.fail(&failed);
        // Done, but its file is not the size its status says.
        complete_resumable(&pool, "damaged", b"twelve bytes");
        fs::write(dir.path().join("damaged/file-1"), b"thirteen byte").unwrap();
        // Running: a request holds it.
        complete_resumable(&pool, "busy", b"busy");
        let status = Status::incomplete("final", None, 1);
        let refused = |partials: &[&str]| {
            let before = tree(dir.path());
            let partials: Vec<Identifier> = partials.iter().map(|n| id(n)).collect();
            let err = pool
                .concatenate(&id("final"), &partials, &status, Checksums::default())
                .unwrap_err();
            assert_eq!(tree(dir.path()), before, "{err}");
            err
        };
        let problem = |err: PoolError| match err {
            PoolError::Partial {
                identifier,
                problem,
            } => (identifier, problem),
            other => panic!("{other}"),
        };
        // A request holds it.
        let half = pool.resume_upload(&id("half")).unwrap();
        assert_eq!(
            problem(refused(&["good", "half"])),
            ("half".into(), PartialProblem::Running)
        );
        drop(half);
        // The lock as another process holds it: running too.
        let busy = File::open(dir.path().join("busy/lock")).unwrap();
        busy.lock().unwrap();
        assert_eq!(
            problem(refused(&["good", "busy"])),
            ("busy".into(), PartialProblem::Running)
        );
        drop(busy);
        let before = tree(dir.path());
        assert_eq!(
            problem(refused(&["good", "half"])),
            ("half".into(), PartialProblem::Incomplete)
        );
        for missing in ["nowhere", "failed"] {
            assert_eq!(
                problem(refused(&[missing, "good"])),
                (missing.into(), PartialProblem::Missing)
            );
        }
        assert!(matches!(
            problem(refused(&["good", "damaged"])),
            (_, PartialProblem::Damaged(_))
        ));
        assert_eq!(
            problem(refused(&["good", "busy", "good"])),
            ("good".into(), PartialProblem::Repeated)
        );
        assert_eq!(
            problem(refused(&["final"])),
            ("final".into(), PartialProblem::Repeated)
        );
        assert!(matches!(refused(&[]), PoolError::Misuse(_)));
        // The final identifier has an upload of its own: refused as a new
        // resumable upload would be.
        assert!(matches!(
            pool.concatenate(&id("half"), &[id("good")], &status, Checksums::default()),
            Err(PoolError::InProgress)
        ));
        assert!(matches!(
            pool.concatenate(&id("busy"), &[id("good")], &status, Checksums::default()),
            Err(PoolError::Complete)
        ));
        assert_eq!(tree(dir.path()), before);
        // The codes a client gets.
        let code = |problem| {
            ErrorCode::from(&PoolError::Partial {
                identifier: "x".into(),
                problem,
            })
        };
        assert_eq!(code(PartialProblem::Missing), ErrorCode::PartialNotFound);
        assert_eq!(
            code(PartialProblem::Incomplete),
            ErrorCode::PartialIncomplete
        );
        assert_eq!(code(PartialProblem::Running).status(), 409);
        assert_eq!(code(PartialProblem::Repeated).status(), 400);
    }

    /// A failure once the final upload is claimed: it is recorded failed,
    /// with no file, and the partials are untouched.
    #[test]
    fn a_concatenation_that_fails_midway_leaves_no_complete_upload() {
        let (dir, pool) = pool();
        complete_resumable(&pool, "p1", b"one");
        complete_resumable(&pool, "p2", b"two");
        // Something in the way of the final's data file.
        fs::create_dir_all(dir.path().join("final/file-1")).unwrap();
        let partials = tree(&dir.path().join("p1"))
            .into_iter()
            .chain(tree(&dir.path().join("p2")))
            .collect::<Vec<_>>();
        let status = Status::incomplete("final", None, 1);
        let err = pool
            .concatenate(
                &id("final"),
                &[id("p1"), id("p2")],
                &status,
                Checksums::default(),
            )
            .unwrap_err();
        assert!(matches!(err, PoolError::Io { .. }), "{err}");
        let failed = pool.status(&id("final")).unwrap();
        assert_eq!(failed.state, State::Error);
        assert_eq!(failed.files(), []);
        let after = tree(&dir.path().join("p1"))
            .into_iter()
            .chain(tree(&dir.path().join("p2")))
            .collect::<Vec<_>>();
        assert_eq!(after, partials);
        // Once out of the way, the same concatenation works.
        fs::remove_dir(dir.path().join("final/file-1")).unwrap();
        assert_eq!(
            pool.concatenate(
                &id("final"),
                &[id("p1"), id("p2")],
                &status,
                Checksums::default()
            )
            .unwrap(),
            6
        );
        assert_eq!(
            fs::read(dir.path().join("final/file-1")).unwrap(),
            b"onetwo"
        );
    }

    /// When set, [`concatenation_copies_in_the_kernel`] is the traced
    /// child: it concatenates in the pool this names.
    const CONCAT_CHILD: &str = "FILEUPLOAD_TEST_CONCAT_CHILD";

    /// The partials' bytes go through `copy_file_range`, not through the
    /// program: the test runs itself again under strace as the child that
    /// concatenates, and finds one call per partial, each for all of its
    /// bytes at its place in the final file.
    #[test]
    fn concatenation_copies_in_the_kernel() {
        if let Ok(dir) = std::env::var(CONCAT_CHILD) {
            let pool = Pool::new(dir, 0o600, false);
            let status = Status::incomplete("joined", None, 1);
            pool.concatenate(
                &id("joined"),
                &[id("k1"), id("k2")],
                &status,
                Checksums::default(),
            )
            .unwrap();
            return;
        }
        let strace = ["/usr/bin/strace", "/bin/strace"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .expect("strace is missing: apt-get install -y strace (scripts/test installs it)");
        let (dir, pool) = pool();
        let (one, two) = (pattern(200_000, 4), pattern(12_345, 5));
        complete_resumable(&pool, "k1", &one);
        complete_resumable(&pool, "k2", &two);
        let trace = dir.path().join("trace");
        let out = std::process::Command::new(strace)
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .args(["-e", "trace=copy_file_range", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pool::tests::concatenation_copies_in_the_kernel",
                "--test-threads=1",
            ])
            .env(CONCAT_CHILD, dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            fs::read(dir.path().join("joined/file-1")).unwrap(),
            [one.as_slice(), &two].concat()
        );
        let calls: Vec<String> = fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .filter(|l| l.contains("copy_file_range("))
            .map(|l| l.split_once("copy_file_range").unwrap().1.to_owned())
            .collect();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls[0].contains(", [0], 200000, 0) = 200000"), "{calls:?}");
        assert!(
            calls[1].contains(", [200000], 12345, 0) = 12345"),
            "{calls:?}"
        );
    }

    /// The read-and-write fallback, and the kernel's copy, give the same
    /// bytes at the same place; a source shorter than promised is an error.
    #[test]
    fn copying_in_the_kernel_and_by_hand_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(COPY_BUFFER * 2 + 12_345, 9);
        let from_path = dir.path().join("from");
        fs::write(&from_path, &data).unwrap();
        let from = File::open(&from_path).unwrap();
        for in_kernel in [true, false] {
            let to_path = dir.path().join(format!("to-{in_kernel}"));
            fs::write(&to_path, b"head").unwrap();
            let to = fs::OpenOptions::new().write(true).open(&to_path).unwrap();
            copy_data(&from, &to, data.len() as u64, 4, in_kernel, || false).unwrap();
            let mut expected = b"head".to_vec();
            expected.extend_from_slice(&data);
            assert_eq!(
                fs::read(&to_path).unwrap(),
                expected,
                "in kernel: {in_kernel}"
            );
            let short =
                copy_data(&from, &to, data.len() as u64 + 1, 0, in_kernel, || false).unwrap_err();
            assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
            let cancelled = copy_data(&from, &to, 10, 0, in_kernel, || true).unwrap_err();
            assert_eq!(cancelled.kind(), io::ErrorKind::Interrupted);
        }
    }

    #[test]
    fn missing_configured_pool_is_an_error_and_default_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Pool::new(dir.path().join("nope"), 0o600, false);
        let err = missing.status(&id("a")).unwrap_err();
        assert!(matches!(err, PoolError::Missing(_)));
        assert_eq!(err.http_status(), 500);
        // An unknown upload in a pool that is there, and a pool that is a
        // file: the `stat` that tells the first from a missing pool.
        let there = Pool::new(dir.path(), 0o600, false);
        assert_eq!(there.status(&id("a")).unwrap(), Status::starting());
        fs::write(dir.path().join("file"), b"").unwrap();
        let file = Pool::new(dir.path().join("file"), 0o600, false);
        let err = file.status(&id("a")).unwrap_err();
        assert!(matches!(err, PoolError::Unusable { .. }), "{err}");
        let created = Pool::new(dir.path().join("made/here"), 0o600, true);
        assert_eq!(created.status(&id("a")).unwrap(), Status::starting());
        let mode = fs::metadata(dir.path().join("made/here")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn disk_full_maps_to_507() {
        let err = io_error("write")(io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()));
        assert_eq!(err.http_status(), 507);
        let err = io_error("write")(io::Error::from_raw_os_error(Errno::ACCESS.raw_os_error()));
        assert_eq!(err.http_status(), 500);
    }
}
