//! What every upload protocol needs while a body streams into a claimed
//! bucket, whatever the body's framing: a reader that counts the body and
//! stops it at the size limit, a watcher thread that publishes progress and
//! notices a clear, the SHA-256 pipeline, and bulk priority.
//!
//! A protocol (the multipart receiver in [`crate::upload`] today, a
//! resumable one next) claims the bucket, then hands [`run`] the body and a
//! closure that does the protocol's own work: parsing, storing, keeping its
//! part of the status. [`run`] starts the watcher (and the hasher) around
//! the closure and stops them after it, so no protocol repeats the thread
//! handling or gets it subtly different.
//!
//! The request's thread parses and writes; it never waits for the status
//! file. The watcher wakes every `progress_interval`, has the protocol
//! store what a stalled client left in its write buffer (see `flush` on
//! [`run`]), publishes the status as the protocol last left it (so a
//! stalled client still shows its last progress), and checks whether the
//! upload was cleared. Publishing on a
//! timer rather than every N bytes keeps the cost fixed, a few small
//! writes a second, whatever the upload's speed.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::checksums::Checksums;
use crate::error_code::ErrorCode;
use crate::hashing::Hashing;
use crate::http::{Body, HttpError};
use crate::pool::{PoolError, Upload, unix_now};
use crate::status::Status;

/// Progress rewrites of the status may write this much more than the body
/// brought in, in all: the cost of progress stays proportional to the
/// upload's bytes, whatever the number of parts or the speed of the client.
pub const STATUS_WRITE_ALLOWANCE: u64 = 1 << 20;
/// A body's average rate is held to `min_body_rate` only once it is this
/// old: a client's first seconds (a TCP slow start, a phone waking its
/// radio) say little about its rate.
pub const MIN_RATE_AFTER: Duration = Duration::from_secs(60);
/// Progress rewrites a second, at most, for all the uploads a process
/// receives: each running upload's watcher waits its share of a second
/// (with a thousand uploads, two seconds), never less than
/// `progress_interval`. A rewrite creates a file and renames it over
/// `status.json`; at five a second for each of a thousand trickling
/// uploads, the file system's inode churn took most of the daemon's CPU
/// and the polls' latency with it (measured: p99 from 2 ms to over 800 ms).
pub const PROGRESS_WRITES_PER_SECOND: u32 = 500;
/// Watchers running in this process: what the budget is shared by.
static WATCHING: AtomicUsize = AtomicUsize::new(0);
/// How often a clear is looked for when progress is off.
const CANCEL_CHECK: Duration = Duration::from_millis(200);
/// Room left in the document estimate for the numbers still to come
/// (size, received, times, an error).
const DOCUMENT_MARGIN: usize = 256;

/// What an upload may do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest request body, in bytes.
    pub max_size: Option<u64>,
    /// The checksums each stored file gets (none: no hashing thread).
    pub checksums: Checksums,
    /// How often progress is published; `None`: only at the end.
    pub progress_interval: Option<Duration>,
    /// Slowest average rate of the body, in bytes a second, once it is
    /// `min_rate_after` old; `None` or 0: no floor.
    pub min_rate: Option<u64>,
    /// How long a body may take before its average rate is held to
    /// `min_rate` ([`MIN_RATE_AFTER`] in service; tests use milliseconds).
    pub min_rate_after: Duration,
    /// The `on_create` hook, run before the first file byte is stored
    /// (set by the handler, which knows the request).
    pub on_create: Option<crate::hooks::Gate>,
}

impl Options {
    /// The options a configuration gives every protocol's uploads.
    pub fn from_config(config: &crate::config::Config) -> Options {
        Options {
            max_size: config.max_size,
            checksums: config.checksums(),
            progress_interval: config.progress_interval,
            min_rate: config.min_body_rate,
            min_rate_after: config.min_body_rate_after,
            on_create: None,
        }
    }
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

/// Streams one body into `upload`: runs `work` with the counted body and
/// the [`Session`], with the watcher (and, with `options.checksums`, the
/// hasher) running around it. Returns the status as `work` left it, with
/// `received` set to the bytes read and, if `work` succeeded, each hashed
/// file's checksums; and what `work` returned.
///
/// When the body failed for a reason it knows (the size limit, the rate
/// floor, or the transport's own, see [`Body::failure`]), that reason is
/// the error returned, whatever `work` made of the read error it saw: a
/// protocol only has to stop at a read error, not to tell one from
/// another.
///
/// The state is left to the protocol: for one it is `done` when the body
/// ends, for a resumable one only when the last piece arrived. Nothing is
/// written to the bucket after the watcher stops: finishing or failing the
/// upload is the caller's, with the status returned.
///
/// `flush` is the protocol's tick hook: the watcher calls it at each tick,
/// with the status locked, before it decides whether to publish. A
/// protocol that holds written bytes back ([`crate::blocks`]) stores there
/// what a slow client's last bytes left held, and raises `received` to
/// match, so that progress keeps moving and a crash loses little while the
/// request's own thread waits for more of the body.
pub fn run<R: Body, T>(
    upload: &Upload,
    status: Status,
    body: R,
    options: &Options,
    flush: &Flush<'_>,
    work: impl FnOnce(Counted<'_, R>, &Session<'_>) -> Result<T, HttpError>,
) -> (Status, Result<T, HttpError>) {
    let document = status.to_json().len() + DOCUMENT_MARGIN;
    let shared = Shared {
        status: Mutex::new(status),
        cancelled: AtomicBool::new(false),
        superseded: AtomicBool::new(false),
        lock_lost: AtomicBool::new(false),
        document: AtomicUsize::new(document),
    };
    let received = Cell::new(0);
    let failure = RefCell::new(None);
    let counted = Counted {
        inner: body,
        count: &received,
        max: options.max_size,
        floor: options
            .min_rate
            .filter(|&rate| rate > 0)
            .map(|rate| (rate, options.min_rate_after)),
        started: Instant::now(),
        failure: &failure,
    };
    let outcome = thread::scope(|scope| {
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = &shared;
        let interval = options.progress_interval;
        scope.spawn(move || watch(upload, shared, stopped, interval, flush));
        let hashing = (!options.checksums.is_empty()).then(|| Hashing::new(options.checksums));
        let session = Session {
            shared,
            received: &received,
            failure: &failure,
            hashing: hashing.as_ref(),
        };
        let outcome = work(counted, &session);
        drop(stop);
        if let (Ok(_), Some(hashing)) = (&outcome, hashing) {
            let mut status = shared.status();
            for (index, sums) in hashing.finish() {
                if let Some(info) = status.files.as_mut().and_then(|f| f.get_mut(index)) {
                    sums.apply_to(info);
                }
            }
        }
        outcome
    });
    let mut status = shared
        .status
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    status.received = Some(received.get());
    let outcome = match (outcome, failure.into_inner()) {
        (Err(_), Some(reason)) => Err(reason),
        (outcome, _) => outcome,
    };
    (status, outcome)
}

/// The watcher's tick hook (see [`run`]): given the locked status.
pub type Flush<'a> = dyn Fn(&mut Status) + Sync + 'a;

/// The hook of a protocol that holds nothing back.
pub fn no_flush(_: &mut Status) {}

/// How long bytes may be held back before a tick stores them: one
/// progress interval, or the clear check's when progress is off (nothing
/// is published then, but a crash or a takeover loses less).
pub fn hold_limit(options: &Options) -> Duration {
    options.progress_interval.unwrap_or(CANCEL_CHECK)
}

/// The status while the body streams: shared with the watcher thread.
struct Shared {
    status: Mutex<Status>,
    cancelled: AtomicBool,
    /// A later request asked for the (resumable) upload.
    superseded: AtomicBool,
    /// The watcher found this request's lock lost (see
    /// [`crate::pool::Upload::still_holds_lock`]).
    lock_lost: AtomicBool,
    /// An upper bound of the status document's length as JSON.
    document: AtomicUsize,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic elsewhere must not hide the status from the cleanup.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a protocol's work sees of the running upload, besides its body.
pub struct Session<'a> {
    shared: &'a Shared,
    received: &'a Cell<u64>,
    failure: &'a RefCell<Option<HttpError>>,
    hashing: Option<&'a Hashing>,
}

impl Session<'_> {
    /// Body bytes read so far (counted before any decoding).
    pub fn received(&self) -> u64 {
        self.received.get()
    }

    /// Why the body failed, if it failed for a reason it knows (see
    /// [`run`], which returns it in place of `work`'s error).
    pub fn body_failure(&self) -> Option<HttpError> {
        self.failure.borrow().clone()
    }

    /// The status the watcher publishes. Hold it briefly: the watcher takes
    /// it on every interval.
    ///
    /// The watcher publishes only when `received` in it changed, so a
    /// protocol sets that when it has stored bytes the status can vouch
    /// for, not merely read them.
    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.shared.status()
    }

    /// Whether the watcher saw a reason to stop: the upload was cleared,
    /// a later request asked for it (a resumable upload), or this request
    /// lost its lock.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::Relaxed)
            || self.shared.superseded.load(Ordering::Relaxed)
            || self.shared.lock_lost.load(Ordering::Relaxed)
    }

    /// That reason as the error that ends the request: 410 for a clear,
    /// 400 `ERR_UPLOAD_INTERRUPTED` for a takeover (see
    /// [`crate::Pool::take_over`]).
    pub fn check_cancelled(&self) -> Result<(), HttpError> {
        if self.shared.cancelled.load(Ordering::Relaxed) {
            return Err(PoolError::Cancelled.into());
        }
        if self.shared.superseded.load(Ordering::Relaxed) {
            return Err(PoolError::Superseded.into());
        }
        if self.shared.lock_lost.load(Ordering::Relaxed) {
            return Err(PoolError::LockLost.into());
        }
        Ok(())
    }

    /// The hasher, if any checksum is listed: feed it each stored file's bytes by
    /// the file's index in the status's `files`, and end each file.
    pub fn hashing(&self) -> Option<&Hashing> {
        self.hashing
    }

    /// Adds `bytes` to the estimate of the status document's length, and
    /// returns the new estimate. The watcher uses it to price a rewrite;
    /// the protocol may refuse a document past its own limit.
    pub fn grow_document(&self, bytes: usize) -> usize {
        self.shared.document.fetch_add(bytes, Ordering::Relaxed) + bytes
    }
}

/// The watcher: publishes progress and looks for a clear.
///
/// A rewrite costs the whole document, so it is skipped while the
/// rewrites so far plus this one would exceed the body's bytes received
/// plus [`STATUS_WRITE_ALLOWANCE`]: a small status is rewritten every
/// interval, a large one only as often as the body pays for it.
fn watch(
    upload: &Upload,
    shared: &Shared,
    stop: mpsc::Receiver<()>,
    interval: Option<Duration>,
    flush: &Flush<'_>,
) {
    let _counted = Watching::enter();
    let mut published = Some(0);
    let mut written = 0u64;
    // Every tick checks the lock, whether or not it writes the status (a
    // status write checks it itself): a request that goes on writing data
    // after its lock was lost would append to an upload another host holds.
    let lost = |checked: Result<(), PoolError>| {
        let lost = matches!(checked, Err(PoolError::LockLost));
        if lost {
            shared.lock_lost.store(true, Ordering::Relaxed);
        }
        lost
    };
    loop {
        match stop.recv_timeout(Watching::wait(interval.unwrap_or(CANCEL_CHECK))) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if upload.is_cancelled() {
            shared.cancelled.store(true, Ordering::Relaxed);
            return;
        }
        if upload.release_requested() {
            shared.superseded.store(true, Ordering::Relaxed);
            return;
        }
        // Checked before the held bytes are stored: after a lost lock
        // nothing more is this request's to write, data included.
        if lost(upload.still_holds_lock()) {
            return;
        }
        let cost = shared.document.load(Ordering::Relaxed) as u64;
        let snapshot = {
            let mut status = shared.status();
            flush(&mut status);
            let received = status.received.unwrap_or(0);
            if interval.is_none()
                || status.received == published
                || written + cost > received.saturating_add(STATUS_WRITE_ALLOWANCE)
            {
                None
            } else {
                status.updated = Some(unix_now());
                Some(status.clone())
            }
        };
        let Some(snapshot) = snapshot else {
            continue;
        };
        // A failed write (disk full) is the data writer's to report; a
        // lost lock is this request's end: nothing more is ours to write.
        if lost(upload.write_status(&snapshot)) {
            return;
        }
        written += cost;
        published = snapshot.received;
    }
}

/// One running watcher, counted in [`WATCHING`] while it lives.
struct Watching;

impl Watching {
    fn enter() -> Watching {
        WATCHING.fetch_add(1, Ordering::Relaxed);
        Watching
    }

    /// `interval`, or this watcher's share of the process's budget if
    /// that is longer.
    fn wait(interval: Duration) -> Duration {
        let watching = u32::try_from(WATCHING.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        share(interval, watching)
    }
}

/// `interval`, or one of `watching` watchers' share of the budget.
fn share(interval: Duration, watching: u32) -> Duration {
    interval.max(Duration::from_secs(1) * watching / PROGRESS_WRITES_PER_SECOND)
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body, counted, refusing to read past the size limit or to go on
/// below the rate floor.
///
/// A failure of its own, or of the transport's body, is recorded in the
/// upload's slot (see [`Session::body_failure`]); the `io::Error` it
/// returns only stops the reader.
pub struct Counted<'a, R> {
    inner: R,
    count: &'a Cell<u64>,
    max: Option<u64>,
    /// `min_rate` and after how long it holds; `None`: no floor.
    floor: Option<(u64, Duration)>,
    started: Instant,
    failure: &'a RefCell<Option<HttpError>>,
}

impl<R: Body> Counted<'_, R> {
    /// Records `reason` (the first one stays: it is the cause, later ones
    /// are its consequences) and returns the error that stops the reader.
    fn fail(&self, reason: HttpError) -> io::Error {
        let signal = io::Error::other(reason.message.clone());
        self.failure.borrow_mut().get_or_insert(reason);
        signal
    }

    /// The rate floor: a body older than its window whose average since
    /// the start of receiving is below `min_rate`.
    ///
    /// Checked as bytes arrive, so it costs a clock read per read and no
    /// thread. A body that stops altogether never returns from its read:
    /// that is the transport's read timeout's to end (`body_timeout` in
    /// the daemon, the web server's for CGI).
    fn too_slow(&self, count: u64) -> Option<HttpError> {
        let (rate, after) = self.floor?;
        let elapsed = self.started.elapsed();
        if elapsed < after {
            return None;
        }
        // count / elapsed < rate, in integers: no rounding lets a body
        // just under the floor through.
        let nanos = elapsed.as_nanos();
        if u128::from(count) * 1_000_000_000 >= u128::from(rate) * nanos {
            return None;
        }
        let average = u128::from(count) * 1_000_000_000 / nanos.max(1);
        Some(HttpError::new(
            ErrorCode::TooSlow,
            format!(
                "the body came at {average} bytes a second, below min_body_rate {rate}, \
                 over its first {:.1} s ({count} bytes received)",
                elapsed.as_secs_f64()
            ),
        ))
    }
}

impl<R: Body> Read for Counted<'_, R> {
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
        let n = match self.inner.read(&mut buf[..end]) {
            Ok(n) => n,
            Err(err) => {
                if let Some(reason) = self.inner.failure() {
                    self.failure.borrow_mut().get_or_insert(reason);
                }
                return Err(err);
            }
        };
        let count = self.count.get() + n as u64;
        self.count.set(count);
        if let Some(max) = self.max
            && count > max
        {
            return Err(self.fail(HttpError::new(
                ErrorCode::TooLarge,
                format!("the upload is larger than the limit of {max} bytes"),
            )));
        }
        // The end of the body is not held to the floor: it is complete.
        if n > 0
            && let Some(reason) = self.too_slow(count)
        {
            return Err(self.fail(reason));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::identifier::{Identifier, verify_identifier};
    use crate::pool::Pool;

    fn claimed(name: &str) -> (tempfile::TempDir, Pool, Identifier, Upload) {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), 0o600, false);
        let id = verify_identifier(name, None).unwrap();
        let upload = pool.begin_upload(&id).unwrap();
        (dir, pool, id, upload)
    }

    fn options(max_size: Option<u64>, interval: Option<Duration>) -> Options {
        Options {
            max_size,
            checksums: Checksums::NONE,
            progress_interval: interval,
            min_rate: None,
            min_rate_after: MIN_RATE_AFTER,
            on_create: None,
        }
    }

    /// Polls `check` every 5 ms for up to 10 s.
    fn eventually(mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A reader that hands out `self.0` bytes in all, and records the
    /// largest read asked of it.
    struct Source(usize, usize);

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1.max(buf.len());
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    impl Body for Source {
        fn failure(&mut self) -> Option<HttpError> {
            None
        }
    }

    /// A reader that hands out `chunk` bytes every `pause`, `total` in all.
    struct Trickle {
        chunk: usize,
        pause: Duration,
        left: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            thread::sleep(self.pause);
            let n = buf.len().min(self.chunk).min(self.left);
            buf[..n].fill(b't');
            self.left -= n;
            Ok(n)
        }
    }

    impl Body for Trickle {
        fn failure(&mut self) -> Option<HttpError> {
            None
        }
    }

    /// A transport's body that fails after `self.0` bytes, with the reason
    /// `self.1` if it knows one.
    struct Failing(usize, Option<ErrorCode>);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }

    impl Body for Failing {
        fn failure(&mut self) -> Option<HttpError> {
            let code = self.1.filter(|_| self.0 == 0)?;
            Some(HttpError::new(code, "the transport's reason"))
        }
    }

    /// Reads `body` to its end through [`run`] with a rate floor of `rate`
    /// after `after`; returns the outcome (bytes read), the time it took
    /// and the status's `received`.
    fn read_with_floor(
        body: Trickle,
        rate: Option<u64>,
        after: Duration,
    ) -> (Result<usize, HttpError>, Duration, Option<u64>) {
        let (_dir, _pool, id, upload) = claimed("trickle");
        let status = Status::uploading(id.as_str(), None, unix_now());
        let options = Options {
            min_rate: rate,
            min_rate_after: after,
            ..options(None, None)
        };
        let started = Instant::now();
        let (status, outcome) = run(&upload, status, body, &options, &no_flush, |mut body, _| {
            let mut kept = Vec::new();
            body.read_to_end(&mut kept)
                .map_err(|e| HttpError::new(ErrorCode::Truncated, e.to_string()))?;
            Ok(kept.len())
        });
        let took = started.elapsed();
        upload.fail(&status);
        (outcome, took, status.received)
    }

    #[test]
    fn a_body_below_the_rate_floor_is_cut_after_the_window() {
        // 10 bytes every 10 ms: about 1000 bytes a second, for 2 s, against
        // a floor of 100 KB/s held after 200 ms.
        let slow = Trickle {
            chunk: 10,
            pause: Duration::from_millis(10),
            left: 2000,
        };
        let after = Duration::from_millis(200);
        let (outcome, took, received) = read_with_floor(slow, Some(100_000), after);
        let err = outcome.expect_err("a body at 1 KB/s passed a floor of 100 KB/s");
        assert_eq!((err.code, err.status()), (ErrorCode::TooSlow, 408), "{err}");
        assert!(err.message.contains("below min_body_rate 100000"), "{err}");
        assert!(took >= after, "cut after {took:?}, before the window");
        assert!(
            took < Duration::from_millis(1500),
            "cut only after {took:?}"
        );
        let received = received.unwrap_or(0);
        assert!((1..2000).contains(&received), "received {received}");
    }

    #[test]
    fn a_body_above_the_rate_floor_is_read_whole() {
        // 1000 bytes every 5 ms, about 200 KB/s, for about 300 ms, against
        // a floor of 10 KB/s held after 50 ms.
        let fast = Trickle {
            chunk: 1000,
            pause: Duration::from_millis(5),
            left: 60_000,
        };
        let (outcome, took, _) = read_with_floor(fast, Some(10_000), Duration::from_millis(50));
        assert_eq!(outcome, Ok(60_000));
        assert!(took > Duration::from_millis(50), "the window never passed");
    }

    #[test]
    fn no_rate_floor_with_none_or_zero() {
        for rate in [None, Some(0)] {
            // About 1000 bytes a second for 300 ms, past a 20 ms window.
            let slow = Trickle {
                chunk: 10,
                pause: Duration::from_millis(10),
                left: 300,
            };
            let (outcome, took, _) = read_with_floor(slow, rate, Duration::from_millis(20));
            assert_eq!(outcome, Ok(300), "{rate:?}");
            assert!(took > Duration::from_millis(20), "{rate:?}");
        }
    }

    /// Reads a body that fails after 500 bytes, the protocol answering
    /// the read error with `ERR_TRUNCATED`; returns what the session saw
    /// and the outcome's code.
    fn read_failing(reason: Option<ErrorCode>) -> (Option<ErrorCode>, ErrorCode) {
        let (_dir, _pool, id, upload) = claimed("failing");
        let status = Status::uploading(id.as_str(), None, unix_now());
        let mut seen = None;
        let (status, outcome) = run(
            &upload,
            status,
            Failing(500, reason),
            &options(None, None),
            &no_flush,
            |mut body, session| {
                let err = body.read_to_end(&mut Vec::new()).unwrap_err();
                seen = session.body_failure().map(|e| e.code);
                Err::<(), _>(HttpError::new(ErrorCode::Truncated, err.to_string()))
            },
        );
        assert_eq!(status.received, Some(500));
        upload.fail(&status);
        (seen, outcome.unwrap_err().code)
    }

    #[test]
    fn the_transports_reason_is_the_outcome() {
        assert_eq!(
            read_failing(Some(ErrorCode::Aborted)),
            (Some(ErrorCode::Aborted), ErrorCode::Aborted)
        );
        assert_eq!(
            read_failing(Some(ErrorCode::Shutdown)),
            (Some(ErrorCode::Shutdown), ErrorCode::Shutdown)
        );
    }

    #[test]
    fn a_plain_read_error_leaves_the_protocols_error() {
        assert_eq!(read_failing(None), (None, ErrorCode::Truncated));
    }

    #[test]
    fn many_uploads_share_the_progress_budget() {
        let interval = Duration::from_millis(200);
        assert_eq!(share(interval, 1), interval);
        assert_eq!(share(interval, 100), interval, "100 at 5 a second fit");
        assert_eq!(share(interval, 1000), Duration::from_secs(2));
        let per_second =
            |watching: u32| f64::from(watching) / share(interval, watching).as_secs_f64();
        for watching in [1, 10, 100, 500, 1000, 4096] {
            assert!(per_second(watching) <= f64::from(PROGRESS_WRITES_PER_SECOND) + 0.01);
        }
    }

    #[test]
    fn the_counted_body_stops_one_byte_past_the_limit() {
        let (_dir, _pool, id, upload) = claimed("counted");
        let status = Status::uploading(id.as_str(), None, unix_now());
        let mut source = Source(100_000, 0);
        let (status, outcome) = run(
            &upload,
            status,
            &mut source,
            &options(Some(1000), None),
            &no_flush,
            |mut body, session| {
                let mut kept = Vec::new();
                let err = body.read_to_end(&mut kept).unwrap_err();
                assert_eq!(session.received(), 1001);
                let recorded = session.body_failure().expect("the 413 is recorded");
                assert_eq!(recorded.code, ErrorCode::TooLarge);
                // Whatever the protocol makes of the read error, the
                // recorded reason is the outcome.
                Err::<(), _>(HttpError::new(ErrorCode::Internal, err.to_string()))
            },
        );
        let err = outcome.unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(status.received, Some(1001));
        assert_eq!(source.0, 100_000 - 1001, "nothing read past the byte over");
        assert!(source.1 <= 1001, "asked for {} bytes at once", source.1);
        upload.fail(&status);
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read_whole() {
        let (_dir, _pool, id, upload) = claimed("exact");
        let status = Status::uploading(id.as_str(), None, unix_now());
        let (status, outcome) = run(
            &upload,
            status,
            Source(1000, 0),
            &options(Some(1000), None),
            &no_flush,
            |mut body, _| {
                let mut kept = Vec::new();
                body.read_to_end(&mut kept).map_err(|e| {
                    HttpError::new(ErrorCode::Internal, format!("refused at the limit: {e}"))
                })?;
                Ok(kept.len())
            },
        );
        assert_eq!(outcome.unwrap(), 1000);
        assert_eq!(status.received, Some(1000));
        upload.finish(&status).unwrap();
    }

    #[test]
    fn the_watcher_publishes_progress_while_the_body_stalls() {
        let (_dir, pool, id, upload) = claimed("stalled");
        let status = Status::uploading(id.as_str(), None, unix_now());
        upload.write_status(&status).unwrap();
        let (_, outcome) = run(
            &upload,
            status,
            io::empty(),
            &options(None, Some(Duration::from_millis(10))),
            &no_flush,
            |_, session| {
                session.status().received = Some(4242);
                // No more bytes come: only the watcher can publish this.
                Ok(eventually(|| {
                    pool.status(&id).unwrap().received == Some(4242)
                }))
            },
        );
        assert!(outcome.unwrap(), "progress never published");
    }

    #[test]
    fn a_large_document_is_rewritten_only_as_the_body_pays_for_it() {
        let (_dir, pool, id, upload) = claimed("budget");
        let status = Status::uploading(id.as_str(), None, unix_now());
        upload.write_status(&status).unwrap();
        let interval = Duration::from_millis(10);
        let (_, outcome) = run(
            &upload,
            status,
            io::empty(),
            &options(None, Some(interval)),
            &no_flush,
            |_, session| {
                // A rewrite would now cost 2 MiB: more than 10 bytes
                // received plus the allowance.
                session.grow_document(2 << 20);
                session.status().received = Some(10);
                thread::sleep(interval * 30);
                let before = pool.status(&id).unwrap().received;
                // Once the body brought enough, the rewrite is paid for.
                session.status().received = Some(3 << 20);
                let after = eventually(|| pool.status(&id).unwrap().received == Some(3 << 20));
                Ok((before, after))
            },
        );
        let (before, after) = outcome.unwrap();
        // As first written: no rewrite with 10 bytes.
        assert_eq!(before, Some(0), "rewritten before the body paid for it");
        assert!(after, "never rewritten once paid for");
    }

    #[test]
    fn a_lost_lock_is_seen_by_the_receiving_loop_and_no_progress_is_written() {
        for interval in [None, Some(Duration::from_millis(10))] {
            let (_dir, pool, id, upload) = claimed("lostlock");
            let status = Status::uploading(id.as_str(), None, unix_now());
            upload.write_status(&status).unwrap();
            upload.lose_lock_for_test();
            let (_, outcome) = run(
                &upload,
                status,
                io::empty(),
                &options(None, interval),
                &no_flush,
                |_, session| {
                    session.status().received = Some(4242);
                    assert!(
                        eventually(|| session.is_cancelled()),
                        "the lost lock was never seen ({interval:?})"
                    );
                    session.check_cancelled()
                },
            );
            let err = outcome.unwrap_err();
            assert_eq!((err.code, err.status()), (ErrorCode::LockLost, 503));
            assert_eq!(
                pool.status(&id).unwrap().received,
                Some(0),
                "progress written"
            );
        }
    }

    #[test]
    fn a_clear_is_seen_by_the_receiving_loop() {
        let (_dir, pool, id, upload) = claimed("cleared");
        let status = Status::uploading(id.as_str(), None, unix_now());
        upload.write_status(&status).unwrap();
        // Progress off: the clear is still looked for.
        let (_, outcome) = run(
            &upload,
            status,
            io::empty(),
            &options(None, None),
            &no_flush,
            |_, session| {
                session.check_cancelled()?;
                assert!(pool.clear(&id).unwrap());
                assert!(
                    eventually(|| session.is_cancelled()),
                    "the clear was never seen"
                );
                session.check_cancelled()
            },
        );
        let err = outcome.unwrap_err();
        assert_eq!((err.code, err.status()), (ErrorCode::Cancelled, 410));
    }

    #[test]
    fn hashed_files_get_their_digest() {
        let (_dir, _pool, id, upload) = claimed("hashed");
        let mut status = Status::uploading(id.as_str(), None, unix_now());
        status.files = Some(vec![crate::status::FileInfo {
            field: "f".into(),
            filename: "a".into(),
            content_type: "text/plain".into(),
            size: 3,
            sha256: None,
            sha1: None,
            md5: None,
            crc32c: None,
            blake3: None,
            path: String::new(),
        }]);
        let options = Options {
            checksums: Checksums::parse("sha256,md5").unwrap(),
            ..options(None, None)
        };
        let (status, outcome) = run(
            &upload,
            status,
            io::empty(),
            &options,
            &no_flush,
            |_, session| {
                let hashing = session.hashing().expect("sha256 is on");
                hashing.update(0, b"abc");
                hashing.end(0);
                Ok(())
            },
        );
        outcome.unwrap();
        assert_eq!(
            status.files()[0].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            status.files()[0].md5.as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(status.files()[0].sha1, None, "not listed");
    }
}
