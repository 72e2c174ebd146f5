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
//!     status.reserve          space held for the final status while an upload runs
//!     file-1, file-2, ...     the stored files, in the order they arrived (mode 0600)
//!   .trash-<name>-<random>/   a bucket being deleted (clear, gc); safe to remove
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

use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error_code::ErrorCode;
use crate::identifier::{self, Identifier};
use crate::status::{State, Status};

const STATUS: &str = "status.json";
const STATUS_TMP: &str = "status.json.tmp";
const RESERVE: &str = "status.reserve";
const LOCK: &str = "lock";
const FILE_PREFIX: &str = "file-";
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
    #[error("the upload was cancelled by a clear request")]
    Cancelled,
    #[error(
        "the status of this upload cannot be read ({0}); nothing was changed: \
         clear it or use a new identifier"
    )]
    Unreadable(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
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
    /// unknown upload from a missing pool. The default pool, in the shared
    /// temp directory, always goes through `open_root` and its owner check.
    fn find_bucket(&self, name: &str) -> Result<Option<OwnedFd>, PoolError> {
        if self.create {
            let root = self.open_root()?;
            return self.open_bucket(&root, name);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(self.dir.join(name), flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT | Errno::NOTDIR) => {
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
    /// whose receiver died is `error` ("interrupted").
    pub fn status(&self, id: &Identifier) -> Result<Status, PoolError> {
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
        let trash = trash_name(id.name());
        match rustix::fs::renameat(&root, id.name(), &root, &trash) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(errno_error(format!("cannot remove upload {id}"))(e)),
        }
        // A receiver still writing into it may keep it from going at once;
        // the next gc sweeps what is left.
        let _ = fs::remove_dir_all(self.dir.join(&trash));
        Ok(true)
    }

    /// Claims the bucket for a new upload: creates it if needed, takes its
    /// lock, and clears what an earlier failed attempt left.
    ///
    /// Fails with [`PoolError::Busy`] if an upload is running under this
    /// identifier (it is not disturbed), and [`PoolError::Complete`] if one
    /// finished there: stored files are never overwritten.
    pub fn begin_upload(&self, id: &Identifier) -> Result<Upload, PoolError> {
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
                settled: false,
            });
        }
        Err(PoolError::Busy)
    }

    /// Removes finished, failed and abandoned uploads whose last change is
    /// older than `max_age`, and leftovers of earlier deletions. Running
    /// uploads are never touched.
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
                if fs::remove_dir_all(entry.path()).is_ok() {
                    report.trash += 1;
                }
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
            let trash = trash_name(name);
            if rustix::fs::renameat(&root, name, &root, &trash).is_ok() {
                let _ = fs::remove_dir_all(self.dir.join(&trash));
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
}

/// A bucket claimed for receiving: holds the lock until it is finished,
/// failed or dropped.
///
/// Dropping it unfinished (an early return, a panic) removes the files it
/// stored and records the upload as failed, so nothing half-written stays
/// behind looking complete.
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
    settled: bool,
}

impl Upload {
    /// Creates the next data file (`file-1`, `file-2`, ...) and returns it
    /// with its absolute path.
    pub fn create_file(&self) -> Result<(File, PathBuf), PoolError> {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{FILE_PREFIX}{n}");
        let fd = create_new(&self.bucket, &name, self.file_mode)
            .map_err(errno_error(format!(
                "cannot create {name} in upload folder"
            )))
            .map_err(|e| self.explain(e))?;
        Ok((File::from(fd), self.path.join(name)))
    }

    /// Replaces the status document atomically (a progress update: not
    /// synced to disk).
    pub fn write_status(&self, status: &Status) -> Result<(), PoolError> {
        self.replace_status(status, false)
    }

    fn replace_status(&self, status: &Status, durable: bool) -> Result<(), PoolError> {
        write_status_file(&self.bucket, status, self.file_mode, durable)
            .map_err(io_error(format!(
                "cannot write status of upload {}",
                self.identifier
            )))
            .map_err(|e| self.explain(e))
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
    pub fn finish(mut self, status: &Status) -> Result<(), PoolError> {
        self.settled = true;
        self.release_reserve();
        let stored = self.sync_files().and_then(|()| {
            self.replace_status(status, self.fsync)?;
            if self.fsync && self.created {
                rustix::fs::fsync(&self.root)
                    .map_err(errno_error("cannot sync the pool directory"))?;
            }
            Ok(())
        });
        stored.map_err(|e| self.explain(e)).inspect_err(|err| {
            let mut failed = status.clone();
            failed.fail(err.code(), err.to_string(), unix_now());
            self.discard(&failed);
        })
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
    /// was cleared: then there is nothing left to record it in).
    pub fn fail(mut self, status: &Status) {
        self.settled = true;
        self.discard(status);
    }

    /// Gives back the room held for the final status, just before writing it.
    fn release_reserve(&self) {
        let _ = rustix::fs::unlinkat(&self.bucket, RESERVE, AtFlags::empty());
    }

    /// Removes the stored files, then records the failure while the lock is
    /// still held, so no reader can take the upload for interrupted. The
    /// status lists no files: none is there any more. Should even that not
    /// fit on the disk, a status without the form's details is tried; and
    /// should that fail too, the old status goes (the upload then reads as
    /// unknown), so that none is left saying something false.
    fn discard(&self, status: &Status) {
        for n in 1..=self.files.load(Ordering::Relaxed) {
            let _ =
                rustix::fs::unlinkat(&self.bucket, format!("{FILE_PREFIX}{n}"), AtFlags::empty());
        }
        self.release_reserve();
        if self.is_cancelled() {
            return;
        }
        let mut recorded = status.clone();
        recorded.files = recorded.files.map(|_| Vec::new());
        if self.write_status(&recorded).is_ok() {
            return;
        }
        let brief = Status {
            files: None,
            fields: None,
            filename: None,
            content_type: None,
            ..recorded
        };
        if let Err(err) = self.write_status(&brief) {
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
        if !self.settled {
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

fn interrupted(mut status: Status) -> Status {
    status.state = State::Error;
    status.error =
        Some("interrupted: the process receiving the upload stopped before it finished".into());
    status.status = Some(ErrorCode::Interrupted.status());
    status.code = Some(ErrorCode::Interrupted.as_str().to_owned());
    status
}

fn trash_name(name: &str) -> String {
    let nonce =
        getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()) << 20 ^ unix_now());
    format!("{TRASH_PREFIX}{name}-{nonce:016x}")
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
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not a regular file ({kind:?}): something was put in its place"),
        ));
    }
    Ok(fd)
}

/// Creates `name` in `dir`, which must not exist (so nothing planted is
/// written through), with exactly `file_mode`, whatever the umask.
fn create_new(dir: &OwnedFd, name: &str, file_mode: u32) -> Result<OwnedFd, Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(file_mode);
    let fd = rustix::fs::openat(dir, name, flags, mode)?;
    rustix::fs::fchmod(&fd, mode)?;
    Ok(fd)
}

/// Makes `status.reserve`: room on the disk that the final status can have
/// even when the data filled it.
fn reserve_space(bucket: &OwnedFd, file_mode: u32) -> io::Result<()> {
    let fd = create_new(bucket, RESERVE, file_mode)?;
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
    let _ = rustix::fs::unlinkat(bucket, STATUS_TMP, AtFlags::empty());
    let mut file = File::from(create_new(bucket, STATUS_TMP, file_mode)?);
    let written = file
        .write_all(status.to_json().as_bytes())
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
    drop(file);
    if let Err(e) =
        written.and_then(|()| Ok(rustix::fs::renameat(bucket, STATUS_TMP, bucket, STATUS)?))
    {
        // A half-written temporary file helps nobody.
        let _ = rustix::fs::unlinkat(bucket, STATUS_TMP, AtFlags::empty());
        return Err(e);
    }
    if durable {
        rustix::fs::fsync(bucket)?;
    }
    Ok(())
}

/// Reads a bucket's `status.json`; `None` if there is none yet.
fn read_status_file(bucket: &OwnedFd) -> io::Result<Option<Status>> {
    let fd = match open_regular(bucket, STATUS, OFlags::RDONLY, 0) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    File::from(fd)
        .take(MAX_STATUS_BYTES)
        .read_to_string(&mut text)?;
    serde_json::from_str(&text)
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

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
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
    fn missing_configured_pool_is_an_error_and_default_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Pool::new(dir.path().join("nope"), 0o600, false);
        let err = missing.status(&id("a")).unwrap_err();
        assert!(matches!(err, PoolError::Missing(_)));
        assert_eq!(err.http_status(), 500);
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
