//! The checksums of the stored files (SHA-256 by default, see
//! [`crate::checksums`]): on a second thread for a fast body, on the
//! request's thread for a slow one.
//!
//! SHA-256 is the slowest step of a large upload: about 1.8 GB/s on a core
//! with SHA extensions, against twice that for copying the bytes to the
//! page cache. Hashing on the request's thread would add the two; with a
//! second thread the request thread hands each chunk over (a memcpy into
//! a recycled buffer, a sixth of the hash's cost) and goes on reading and
//! writing, so a large upload takes about as long as the hash alone. A
//! bounded queue keeps memory flat: when the hasher falls behind, the
//! request thread waits.
//!
//! But many uploads are slow (a phone's link is far below the hash's
//! speed), and for them a second thread buys nothing and costs a thread's
//! creation, its stack and the chunks in its queue. With a thousand slow
//! uploads that was a thousand more threads, and creating threads takes
//! the process's memory-map lock, which every thread's page faults wait
//! behind: status polls stalled for up to a second while a burst of
//! uploads began. So hashing starts on the request's thread, and moves to
//! a second one, with the hash state so far, once the body proves fast:
//! [`FAST_BYTES`] within [`FAST_WITHIN`]. (By size instead, the first
//! 8 MiB of every body inline, fast uploads hashed inline: the load test's
//! poll p99 went from 4-6 ms to 13-24 ms, against 7-15 ms as a rule by
//! speed.)
//!
//! A resumable upload arrives in many requests, possibly in many processes
//! on many hosts, and its SHA-256 is wanted when the last one ends. Reading
//! the whole file again then would cost as much as the upload's slowest
//! step once more, on a request whose client is waiting. So each request
//! goes on from the state the one before it left: [`ResumableSha256`] is
//! the hash state and the number of bytes it covers, saved beside the
//! data (see the pool's `Upload::save_hash_state`), and after a crash it
//! catches up only the bytes that reached the file but not the state.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use md5::Md5;
use sha1::Sha1;

use crate::checksums::{self, Checksums, Sum, Sums};
use crate::identifier::hex;
use crate::spares::Spares;

/// A body that brings this many bytes within [`FAST_WITHIN`] of the
/// upload's start is fast: its hashing moves to a thread of its own.
pub const FAST_BYTES: u64 = 1 << 20;
pub const FAST_WITHIN: Duration = Duration::from_secs(1);
/// Jobs in flight at most: with [`BATCH`]-sized jobs, a body holds about
/// a megabyte in flight (eight of them made the daemon's peak RSS grow by
/// 2 MiB for each upload at once), and the thread still never waits for
/// the reader when it is behind by less than that.
const QUEUE: usize = 3;
/// Bytes gathered into one job for the hashing thread. A transport hands
/// over what the web server forwards, 8 KiB pieces through FastCGI: one
/// job each cost the daemon a wake-up of the hashing thread per piece,
/// about a second of CPU per GiB. Gathered, that is one per 256 KiB.
const BATCH: usize = 256 << 10;
/// Batches the process keeps between bodies (see [`crate::spares`]): what
/// one upload's thread has in flight, [`QUEUE`] jobs, the one it hashes and
/// the one being gathered, for two uploads; 2.5 MiB when the process is
/// idle.
static SPARE_BATCHES: Spares = Spares::new(BATCH, 2 * (QUEUE + 2));

/// State that is fed a body's bytes in order: one hash or several. `Tag`
/// says which of its files the bytes belong to, where there are several.
pub trait Feed: Default + Send + 'static {
    type Tag: Copy + PartialEq + Send + 'static;
    fn feed(&mut self, tag: Self::Tag, bytes: &[u8]);
}

enum Job<S: Feed> {
    Data(S::Tag, Vec<u8>),
    /// Runs on the state after every job queued before it.
    Run(Box<dyn FnOnce(&mut S) + Send>),
}

enum Mode<S: Feed> {
    /// On the request's thread; `fed` bytes so far, and until when the
    /// body may still prove fast (`None`: it did not).
    Inline {
        state: S,
        fed: u64,
        until: Option<Instant>,
    },
    Thread(Worker<S>),
}

/// The hashing thread, and the way to feed it.
struct Worker<S: Feed> {
    jobs: SyncSender<Job<S>>,
    spare: Receiver<Vec<u8>>,
    handle: JoinHandle<S>,
    /// Bytes of one tag not sent yet (see [`BATCH`]).
    gathered: Option<(S::Tag, Vec<u8>)>,
}

impl<S: Feed> Worker<S> {
    /// Starts the thread, going on from `state`; the state back if no
    /// thread can be had (then hashing stays on the request's thread).
    fn start(state: S) -> Result<Worker<S>, S> {
        let (jobs, queue) = mpsc::sync_channel::<Job<S>>(QUEUE);
        let (give_back, spare) = mpsc::channel::<Vec<u8>>();
        // Moved in by the closure only if the thread starts; else handed
        // back through the error below.
        let (seed, seeded) = mpsc::channel::<S>();
        let spawned = thread::Builder::new()
            .name("hashing".into())
            .spawn(move || {
                let mut state = seeded.recv().unwrap_or_default();
                for job in queue {
                    match job {
                        Job::Data(tag, bytes) => {
                            state.feed(tag, &bytes);
                            // The buffer goes back for the next chunk.
                            let _ = give_back.send(bytes);
                        }
                        Job::Run(run) => run(&mut state),
                    }
                }
                state
            });
        match spawned {
            Ok(handle) => {
                let _ = seed.send(state);
                Ok(Worker {
                    jobs,
                    spare,
                    handle,
                    gathered: None,
                })
            }
            Err(_) => Err(state),
        }
    }

    /// Gathers `bytes`, sending a job once [`BATCH`] bytes of one tag are
    /// together; waits if the thread is behind.
    fn feed(&mut self, tag: S::Tag, bytes: &[u8]) {
        if self.gathered.as_ref().is_some_and(|(t, _)| *t != tag) {
            self.send_gathered();
        }
        // Each job is exactly a batch (the last of a tag less): a buffer
        // filled past it would double its allocation for a few bytes.
        let mut rest = bytes;
        while !rest.is_empty() {
            let (_, buffer) = self.gathered.get_or_insert_with(|| {
                let mut buffer = self
                    .spare
                    .try_recv()
                    .unwrap_or_else(|_| SPARE_BATCHES.take_or_new());
                buffer.clear();
                (tag, buffer)
            });
            let take = (BATCH - buffer.len()).min(rest.len());
            buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buffer.len() >= BATCH {
                self.send_gathered();
            }
        }
    }

    fn send_gathered(&mut self) {
        if let Some((tag, buffer)) = self.gathered.take() {
            // The worker only stops when we drop `jobs`.
            let _ = self.jobs.send(Job::Data(tag, buffer));
        }
    }
}

/// Feeds `S` on the request's thread while the body may be slow, and on a
/// thread of its own once it proves fast (see the module's documentation).
/// Whoever holds it sees one state fed in order, wherever it runs.
pub struct Offload<S: Feed> {
    mode: Mode<S>,
}

/// The hashing thread died (it panicked): its state is lost, and whatever
/// it was to prove must be proven again.
#[derive(Debug, thiserror::Error)]
#[error("the hashing thread stopped before the end of the body")]
pub struct HashingLost;

impl<S: Feed> Offload<S> {
    pub fn new(state: S) -> Offload<S> {
        Offload::fast_within(state, FAST_WITHIN)
    }

    /// As [`Offload::new`], with another time for a body to prove fast.
    fn fast_within(state: S, window: Duration) -> Offload<S> {
        Offload {
            mode: Mode::Inline {
                state,
                fed: 0,
                until: Some(Instant::now() + window),
            },
        }
    }

    /// Feeds (or queues) bytes; waits if the hashing thread is behind.
    pub fn feed(&mut self, tag: S::Tag, bytes: &[u8]) {
        match &mut self.mode {
            Mode::Inline { state, fed, until } => {
                state.feed(tag, bytes);
                *fed += bytes.len() as u64;
                let Some(deadline) = *until else {
                    return;
                };
                if Instant::now() > deadline {
                    *until = None; // slow: it stays here
                } else if *fed >= FAST_BYTES {
                    self.mode = match Worker::start(std::mem::take(state)) {
                        Ok(worker) => Mode::Thread(worker),
                        // No thread: hash here, as fast as it goes.
                        Err(state) => Mode::Inline {
                            state,
                            fed: 0,
                            until: None,
                        },
                    };
                }
            }
            Mode::Thread(worker) => worker.feed(tag, bytes),
        }
    }

    /// Runs `run` on the state once every byte fed so far is in it.
    pub fn then(&mut self, run: impl FnOnce(&mut S) + Send + 'static) {
        match &mut self.mode {
            Mode::Inline { state, .. } => run(state),
            Mode::Thread(worker) => {
                worker.send_gathered();
                let _ = worker.jobs.send(Job::Run(Box::new(run)));
            }
        }
    }

    /// What `look` sees in the state once every byte fed so far is in it;
    /// waits for the hashing thread to get there.
    pub fn peek<R: Send + 'static>(
        &mut self,
        look: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, HashingLost> {
        if let Mode::Inline { state, .. } = &self.mode {
            return Ok(look(state));
        }
        let (answer, answered) = mpsc::channel();
        self.then(move |state| {
            let _ = answer.send(look(state));
        });
        answered.recv().map_err(|_| HashingLost)
    }

    /// The state with every byte fed; waits for the hashing thread, if any.
    pub fn finish(self) -> Result<S, HashingLost> {
        match self.mode {
            Mode::Inline { state, .. } => Ok(state),
            Mode::Thread(mut worker) => {
                worker.send_gathered();
                drop(worker.jobs);
                let state = worker.handle.join().map_err(|_| HashingLost);
                // The thread gave back every batch it hashed: kept for the
                // next body (the next chunk of a resumable upload, most
                // often), not faulted in again.
                for buffer in worker.spare.try_iter() {
                    SPARE_BATCHES.give(buffer);
                }
                state
            }
        }
    }

    /// Whether the hashing thread runs (for tests).
    pub fn threaded(&self) -> bool {
        matches!(self.mode, Mode::Thread(_))
    }
}

/// The checksums of each file of a form, in order: which ones, the file
/// being hashed and its state, and the digests so far. (The default, SHA-256
/// alone, is only ever a placeholder while the state moves between
/// threads.)
#[derive(Default)]
pub struct Digests {
    checksums: Checksums,
    current: Option<(usize, checksums::Hasher)>,
    done: Vec<(usize, Sums)>,
}

impl Feed for Digests {
    type Tag = usize;

    fn feed(&mut self, index: usize, bytes: &[u8]) {
        match &mut self.current {
            Some((i, hasher)) if *i == index => hasher.update(bytes),
            _ => {
                let mut hasher = checksums::Hasher::new(self.checksums);
                hasher.update(bytes);
                self.current = Some((index, hasher));
            }
        }
    }
}

impl Digests {
    fn end(&mut self, index: usize) {
        let hasher = match self.current.take() {
            Some((i, hasher)) if i == index => hasher,
            _ => checksums::Hasher::new(self.checksums), // an empty file
        };
        self.done.push((index, hasher.finish()));
    }
}

/// The listed checksums of each stored file of a form, fed in order, all
/// in one pass on the same thread. Shared by the multipart writer's parts,
/// hence `&self`.
pub struct Hashing {
    offload: RefCell<Offload<Digests>>,
}

impl Hashing {
    pub fn new(checksums: Checksums) -> Hashing {
        Hashing::fast_within(checksums, FAST_WITHIN)
    }

    /// As [`Hashing::new`], with another time for a body to prove fast.
    fn fast_within(checksums: Checksums, window: Duration) -> Hashing {
        let digests = Digests {
            checksums,
            ..Digests::default()
        };
        Hashing {
            offload: RefCell::new(Offload::fast_within(digests, window)),
        }
    }

    /// Hashes (or queues) bytes of file `index`; waits if the hashing
    /// thread is behind.
    pub fn update(&self, index: usize, bytes: &[u8]) {
        self.offload.borrow_mut().feed(index, bytes);
    }

    /// Marks file `index` complete.
    pub fn end(&self, index: usize) {
        self.offload
            .borrow_mut()
            .then(move |digests| digests.end(index));
    }

    /// Waits for the hashing thread, if any; returns each completed file's
    /// digest (none, should the thread have died: a file without a digest
    /// is stored as one whose digest was not asked for).
    pub fn finish(self) -> Vec<(usize, Sums)> {
        match self.offload.into_inner().finish() {
            Ok(digests) => digests.done,
            Err(_) => Vec::new(),
        }
    }

    /// Whether the hashing thread runs (for tests).
    pub fn threaded(&self) -> bool {
        self.offload.borrow().threaded()
    }
}

/// A SHA-256 that can be stopped and taken up again in another process:
/// the hash state and the byte offset it covers, saved with
/// [`ResumableSha256::to_bytes`] and restored with
/// [`ResumableSha256::from_bytes`].
///
/// The saved state is only as fresh as its last save, while the data file
/// is the truth about what is stored (a request killed between a write
/// and a save leaves bytes the state never saw). [`ResumableSha256::catch_up`]
/// reconciles the two from the file. The one thing it cannot see is a
/// file cut back and grown again past the state's offset with other bytes:
/// whoever cuts the file (a chunk that failed its checksum) must save the
/// state only for bytes that stay, and throw away a state that saw the
/// bytes it cuts (keep a clone from before the chunk).
///
/// It carries the checksums whose state can be saved ([`SAVED`]: SHA-256,
/// SHA-1, MD5 and CRC-32C) that are asked for ([`ResumableSha256::with`]);
/// SHA-256 alone is [`ResumableSha256::new`]. BLAKE3's cannot be saved:
/// the `blake3` crate's `Hasher` offers no way to save its stack of
/// chaining values, so a resumable upload's BLAKE3 is read from the file at
/// completion.
#[derive(Clone)]
pub struct ResumableSha256 {
    /// `None` when `sha256` is not listed: hashing it anyway cost a
    /// resumable upload a second hash it never reported.
    hasher: Option<Sha256>,
    others: Others,
    offset: u64,
}

impl Default for ResumableSha256 {
    fn default() -> ResumableSha256 {
        ResumableSha256::new()
    }
}

/// The checksums a resumable upload's saved state can carry.
pub const SAVED: [Sum; 4] = [Sum::Sha256, Sum::Sha1, Sum::Md5, Sum::Crc32c];

/// The saved checksums besides SHA-256, each when listed.
#[derive(Clone, Default)]
struct Others {
    sha1: Option<Sha1>,
    md5: Option<Md5>,
    crc32c: Option<u32>,
}

impl Others {
    fn new(checksums: Checksums) -> Others {
        Others {
            sha1: checksums.contains(Sum::Sha1).then(Sha1::new),
            md5: checksums.contains(Sum::Md5).then(Md5::new),
            crc32c: checksums.contains(Sum::Crc32c).then_some(0),
        }
    }

    fn is_empty(&self) -> bool {
        self.sha1.is_none() && self.md5.is_none() && self.crc32c.is_none()
    }

    /// Which it carries, as the flags byte of layout version 2.
    fn flags(&self) -> u8 {
        u8::from(self.sha1.is_some())
            | u8::from(self.md5.is_some()) << 1
            | u8::from(self.crc32c.is_some()) << 2
    }

    fn checksums(&self) -> Checksums {
        let mut set = Checksums::NONE;
        if self.sha1.is_some() {
            set = set.with(Sum::Sha1);
        }
        if self.md5.is_some() {
            set = set.with(Sum::Md5);
        }
        if self.crc32c.is_some() {
            set = set.with(Sum::Crc32c);
        }
        set
    }
}

/// What [`ResumableSha256::catch_up`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The state already covered every byte.
    Current,
    /// It hashed this many bytes that were stored but not hashed.
    Hashed(u64),
    /// The state covered more bytes (`was`) than the file holds: the file
    /// was cut back after the state was saved (or the state was saved and
    /// the data lost in a power cut). The state cannot be rewound, so it
    /// was started again from byte 0 and hashed the whole file.
    Restarted { was: u64 },
}

/// Why a saved hash state was refused. Each means the same to the caller:
/// hash the file from the start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not a saved SHA-256 state of this program")]
    NotOurs,
    /// Saved by a version with another layout (another `sha2` series, say):
    /// its bytes would be misread, so they are not read at all.
    #[error("a saved SHA-256 state of layout version {0}, not {STATE_VERSION}")]
    OtherVersion(u8),
    #[error("the saved SHA-256 state is damaged")]
    Damaged,
}

/// The start of every saved state.
const STATE_MAGIC: &[u8; 8] = b"FUSHA256";
/// The layout of what follows the magic: 1 is the version byte, the
/// offset (u64, little-endian), the 104 bytes of `sha2` 0.11's
/// `SerializableState` of `Sha256` and a CRC-32 of all that (u32,
/// little-endian). `sha2` promises the serialized state stable only within
/// a `0.x` series, so a new series (or any change here) takes a new number,
/// and the test `the_state_layout_is_the_one_version_1_names` fails until it
/// does.
pub const STATE_VERSION: u8 = 1;
/// Bytes of `sha2`'s serialized `Sha256`: the 8 state words, the count of
/// compressed 64-byte blocks (u64), then the buffer: its fill (one byte,
/// below 64: a full block is compressed at once) and 63 bytes.
const SHA256_STATE_LEN: usize = 104;
const STATE_LEN: usize = STATE_MAGIC.len() + 1 + 8 + SHA256_STATE_LEN + 4;
/// Layout version 2: version 1's fields, then a flags byte (1: SHA-1, 2:
/// MD5, 4: CRC-32C, 8: no SHA-256; at least one set), then each of the
/// first three flagged in that order (`sha1` 0.11's 92 serialized bytes,
/// `md-5` 0.11's 88, the CRC-32C as a u32, little-endian), then the CRC-32
/// of all that. With flag 8 the SHA-256 state is a fresh one's, which has
/// counted no bytes. A state with SHA-256 alone is still saved as version
/// 1, which older versions read.
pub const STATE_VERSION_2: u8 = 2;
const SHA1_STATE_LEN: usize = 92;
const MD5_STATE_LEN: usize = 88;
/// What [`ResumableSha256::catch_up`] reads at a time.
const CATCH_UP_BUFFER: usize = 256 << 10;

impl ResumableSha256 {
    /// A SHA-256 of nothing, at offset 0.
    pub fn new() -> ResumableSha256 {
        ResumableSha256::with(Checksums::default())
    }

    /// A hash of nothing, at offset 0, carrying the [`SAVED`] checksums
    /// `checksums` lists.
    pub fn with(checksums: Checksums) -> ResumableSha256 {
        ResumableSha256 {
            hasher: checksums.contains(Sum::Sha256).then(Sha256::new),
            others: Others::new(checksums),
            offset: 0,
        }
    }

    /// The checksums it carries.
    pub fn carried(&self) -> Checksums {
        match self.hasher {
            Some(_) => self.others.checksums().with(Sum::Sha256),
            None => self.others.checksums(),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = self.hasher.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.others.sha1.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.others.md5.as_mut() {
            h.update(bytes);
        }
        if let Some(crc) = self.others.crc32c.as_mut() {
            *crc = crc32c::crc32c_append(*crc, bytes);
        }
        self.offset += bytes.len() as u64;
    }

    /// Every digest it carries.
    pub fn finish(self) -> Sums {
        let Others { sha1, md5, crc32c } = self.others;
        Sums {
            sha256: self.hasher.map(|h| hex(&h.finalize())),
            sha1: sha1.map(|h| hex(&h.finalize())),
            md5: md5.map(|h| hex(&h.finalize())),
            crc32c: crc32c.map(|crc| hex(&crc.to_be_bytes())),
            blake3: None,
        }
    }

    /// How many bytes of the file the state covers.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The lowercase hex SHA-256 of the bytes fed, for a state that
    /// carries it.
    #[cfg(test)]
    pub fn finish_hex(self) -> String {
        self.finish().sha256.expect("a state that carries SHA-256")
    }

    /// The state as bytes, for [`ResumableSha256::from_bytes`] in any later
    /// request (of any process running this version).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(STATE_LEN);
        bytes.extend_from_slice(STATE_MAGIC);
        let version = match self.others.is_empty() && self.hasher.is_some() {
            true => STATE_VERSION,
            false => STATE_VERSION_2,
        };
        bytes.push(version);
        bytes.extend_from_slice(&self.offset.to_le_bytes());
        match &self.hasher {
            Some(h) => bytes.extend_from_slice(&h.serialize()),
            None => bytes.extend_from_slice(&Sha256::new().serialize()),
        }
        if version == STATE_VERSION_2 {
            bytes.push(self.others.flags() | u8::from(self.hasher.is_none()) << 3);
            if let Some(h) = &self.others.sha1 {
                bytes.extend_from_slice(&h.serialize());
            }
            if let Some(h) = &self.others.md5 {
                bytes.extend_from_slice(&h.serialize());
            }
            if let Some(crc) = self.others.crc32c {
                bytes.extend_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// A state saved by [`ResumableSha256::to_bytes`]. Anything else is
    /// refused rather than misread (a wrong state would give a wrong
    /// digest, which nothing downstream could tell from a right one): bytes
    /// not of this program, another layout version, a failed CRC, a state
    /// `sha2` does not accept, and one whose own count of hashed bytes is
    /// not the offset saved with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<ResumableSha256, StateError> {
        let Some(rest) = bytes.strip_prefix(STATE_MAGIC.as_slice()) else {
            return Err(StateError::NotOurs);
        };
        let version = match rest.first() {
            None => return Err(StateError::NotOurs),
            Some(&v @ (STATE_VERSION | STATE_VERSION_2)) => v,
            Some(&other) => return Err(StateError::OtherVersion(other)),
        };
        if bytes.len() < STATE_LEN || (version == STATE_VERSION && bytes.len() != STATE_LEN) {
            return Err(StateError::Damaged);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(StateError::Damaged);
        }
        let (offset, rest) = body[STATE_MAGIC.len() + 1..].split_at(8);
        let offset = u64::from_le_bytes(offset.try_into().map_err(|_| StateError::Damaged)?);
        let (state, rest) = rest.split_at(SHA256_STATE_LEN);
        let state = SerializedState::<Sha256>::try_from(state).map_err(|_| StateError::Damaged)?;
        let hasher = Sha256::deserialize(&state).map_err(|_| StateError::Damaged)?;
        let (others, with_sha256) = match version {
            STATE_VERSION => (Others::default(), true),
            _ => others_from(rest, offset)?,
        };
        // A SHA-256 not carried is a fresh one's state, which counted none.
        let counts = if with_sha256 { offset } else { 0 };
        if counted(&state) != Some(counts) {
            return Err(StateError::Damaged);
        }
        let hasher = with_sha256.then_some(hasher);
        Ok(ResumableSha256 {
            hasher,
            others,
            offset,
        })
    }

    /// Brings the state up to `upto` bytes of `file` (the stored length of
    /// the data), reading only the bytes past its offset, with positioned
    /// reads that leave the file's position alone. A state ahead of `upto`
    /// starts again from 0 (see [`CatchUp::Restarted`]). A file shorter
    /// than `upto` is an `UnexpectedEof` error; the state then covers what
    /// it could read, and stays usable.
    pub fn catch_up(&mut self, file: &File, upto: u64) -> io::Result<CatchUp> {
        let was = self.offset;
        let outcome = if was > upto {
            *self = ResumableSha256::with(self.carried());
            CatchUp::Restarted { was }
        } else if was == upto {
            return Ok(CatchUp::Current);
        } else {
            CatchUp::Hashed(upto - was)
        };
        let mut buffer = vec![0u8; CATCH_UP_BUFFER];
        while self.offset < upto {
            let want = usize::try_from(upto - self.offset)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let read = match file.read_at(&mut buffer[..want], self.offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the data file ends at {} bytes, before {upto}", self.offset),
                    ));
                }
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.update(&buffer[..read]);
        }
        Ok(outcome)
    }
}

impl std::fmt::Debug for ResumableSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableSha256")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// The bytes a serialized `Sha256` has seen, by its own count: the blocks
/// it compressed and what waits in its buffer (the layout of
/// [`STATE_VERSION`] 1).
fn counted(state: &[u8]) -> Option<u64> {
    counted_after(state, 32)
}

/// As [`counted`], for a serialized state whose block count follows
/// `words` bytes of state words (32 for SHA-256, 20 for SHA-1, 16 for
/// MD5: the three share the layout).
fn counted_after(state: &[u8], words: usize) -> Option<u64> {
    let blocks = u64::from_le_bytes(state.get(words..words + 8)?.try_into().ok()?);
    let buffered = u64::from(*state.get(words + 8)?);
    blocks.checked_mul(64)?.checked_add(buffered)
}

/// A saved SHA-1 or MD5 state (`words` bytes of state words, see
/// [`counted_after`]), which must cover `offset` bytes.
fn restore<D: SerializableState>(state: &[u8], words: usize, offset: u64) -> Result<D, StateError> {
    if counted_after(state, words) != Some(offset) {
        return Err(StateError::Damaged);
    }
    let state = SerializedState::<D>::try_from(state).map_err(|_| StateError::Damaged)?;
    D::deserialize(&state).map_err(|_| StateError::Damaged)
}

/// The other checksums of a [`STATE_VERSION_2`] state, and whether it
/// carries SHA-256: `rest` is what follows the SHA-256 state, CRC
/// excluded. Each must cover `offset` bytes by its own count, and nothing
/// may be left over.
fn others_from(rest: &[u8], offset: u64) -> Result<(Others, bool), StateError> {
    let (&flags, mut rest) = rest.split_first().ok_or(StateError::Damaged)?;
    if flags == 0 || flags > 15 {
        return Err(StateError::Damaged);
    }
    let mut take = |len: usize| -> Result<&[u8], StateError> {
        if rest.len() < len {
            return Err(StateError::Damaged);
        }
        let (taken, left) = rest.split_at(len);
        rest = left;
        Ok(taken)
    };
    let mut others = Others::default();
    if flags & 1 != 0 {
        others.sha1 = Some(restore::<Sha1>(take(SHA1_STATE_LEN)?, 20, offset)?);
    }
    if flags & 2 != 0 {
        others.md5 = Some(restore::<Md5>(take(MD5_STATE_LEN)?, 16, offset)?);
    }
    if flags & 4 != 0 {
        let crc = take(4)?;
        others.crc32c = Some(u32::from_le_bytes(
            crc.try_into().map_err(|_| StateError::Damaged)?,
        ));
    }
    match take(1) {
        Err(_) => Ok((others, flags & 8 == 0)),
        Ok(_) => Err(StateError::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ from position to position, so a misplaced byte
    /// changes the digest.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn hashing_in_pieces_with_a_save_and_restore_between_each_is_sha256() {
        let data = pattern(5000);
        // Pieces that end inside, at, and across 64-byte blocks.
        let pieces = [0, 1, 62, 1, 1, 64, 65, 0, 127, 3000, 500];
        let mut state = ResumableSha256::new();
        let mut at = 0;
        for piece in pieces {
            state.update(&data[at..at + piece]);
            at += piece;
            let saved = state.to_bytes();
            assert_eq!(saved.len(), STATE_LEN);
            state = ResumableSha256::from_bytes(&saved).unwrap();
            assert_eq!(state.offset(), at as u64);
        }
        state.update(&data[at..]);
        assert_eq!(state.offset(), data.len() as u64);
        assert_eq!(state.finish_hex(), hex(&Sha256::digest(&data)));
        assert_eq!(
            ResumableSha256::from_bytes(&ResumableSha256::new().to_bytes())
                .unwrap()
                .finish_hex(),
            // FIPS 180-2's digest of the empty message.
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// What version 1 says the layout is: `sha2`'s state is 104 bytes and
    /// holds its own count of hashed bytes where `counted` reads it. A new
    /// `sha2` series that changes either fails here; then give the layout a
    /// new [`STATE_VERSION`].
    #[test]
    fn the_state_layout_is_the_one_version_1_names() {
        let mut hasher = Sha256::new();
        for len in 0..300u64 {
            let state = hasher.serialize();
            assert_eq!(state.len(), SHA256_STATE_LEN);
            assert_eq!(counted(&state), Some(len), "after {len} bytes");
            hasher.update([len as u8]);
        }
        assert_eq!(STATE_VERSION, 1);
        // The size the README and the pool's limit are written for.
        let saved = ResumableSha256::new().to_bytes().len();
        assert_eq!(saved, 125);
        assert!(saved <= crate::pool::MAX_HASH_STATE_BYTES);
    }

    /// Version 2: SHA-1, MD5 and CRC-32C carried beside SHA-256 through a
    /// save and restore after each piece; their layouts hold their own
    /// counts where `counted_after` reads them; damage is refused.
    #[test]
    fn the_other_saved_checksums_survive_each_save_and_restore() {
        use md5::Md5;
        use sha1::Sha1;
        let data = pattern(5000);
        let all = Checksums::parse("sha256,sha1,md5,crc32c,blake3").unwrap();
        let mut state = ResumableSha256::with(all);
        assert_eq!(
            state.carried(),
            Checksums::parse("sha256,sha1,md5,crc32c").unwrap(),
            "BLAKE3 is not carried"
        );
        let mut at = 0;
        for piece in [0, 1, 62, 1, 1, 64, 65, 0, 127, 3000, 500] {
            state.update(&data[at..at + piece]);
            at += piece;
            let saved = state.to_bytes();
            assert_eq!(saved[STATE_MAGIC.len()], STATE_VERSION_2);
            assert_eq!(
                saved.len(),
                STATE_LEN + 1 + SHA1_STATE_LEN + MD5_STATE_LEN + 4
            );
            state = ResumableSha256::from_bytes(&saved).unwrap();
            assert_eq!(state.offset(), at as u64);
        }
        state.update(&data[at..]);
        let mut reference = checksums::Hasher::new(all.without(Sum::Blake3));
        reference.update(&data);
        assert_eq!(state.finish(), reference.finish());
        let only_md5 = ResumableSha256::with(Checksums::parse("md5").unwrap()).to_bytes();
        assert_eq!(only_md5.len(), STATE_LEN + 1 + MD5_STATE_LEN);
        assert!(ResumableSha256::from_bytes(&only_md5).is_ok());
        assert_eq!(
            ResumableSha256::with(Checksums::default()).to_bytes().len(),
            STATE_LEN,
            "SHA-256 alone stays version 1"
        );
        let (mut sha1, mut md5) = (Sha1::new(), Md5::new());
        for len in 0..300u64 {
            assert_eq!(sha1.serialize().len(), SHA1_STATE_LEN);
            assert_eq!(md5.serialize().len(), MD5_STATE_LEN);
            assert_eq!(counted_after(&sha1.serialize(), 20), Some(len));
            assert_eq!(counted_after(&md5.serialize(), 16), Some(len));
            sha1.update([len as u8]);
            md5.update([len as u8]);
        }
        // Damage with a CRC made to fit: no flags, a byte too many, an MD5
        // count that is not the offset.
        let mut state = ResumableSha256::with(Checksums::parse("sha1,md5").unwrap());
        state.update(&data[..100]);
        let good = state.to_bytes();
        let refit = |mut bytes: Vec<u8>| {
            let len = bytes.len();
            bytes.truncate(len - 4);
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes
        };
        let flags_at = STATE_LEN - 4;
        let mut no_flags = good.clone();
        no_flags[flags_at] = 0;
        let mut longer = good.clone();
        longer.insert(good.len() - 4, 0);
        let mut count = good.clone();
        count[flags_at + 1 + SHA1_STATE_LEN + 16] ^= 1;
        for bad in [no_flags, longer, count] {
            assert_eq!(
                ResumableSha256::from_bytes(&refit(bad)).unwrap_err(),
                StateError::Damaged
            );
        }
        assert!(ResumableSha256::from_bytes(&refit(good)).is_ok());
    }

    /// With `sha256` not listed, the state carries no SHA-256 (flag 8): it
    /// is not computed, survives saves and restores, and a saved SHA-256
    /// that counted bytes under that flag is damage.
    #[test]
    fn a_state_without_sha256_computes_none_and_survives_each_save_and_restore() {
        let data = pattern(5000);
        let listed = Checksums::parse("sha1,crc32c").unwrap();
        let mut state = ResumableSha256::with(listed);
        assert_eq!(state.carried(), listed);
        let mut at = 0;
        for piece in [0, 1, 62, 1, 1, 64, 65, 0, 127, 3000, 500] {
            state.update(&data[at..at + piece]);
            at += piece;
            let saved = state.to_bytes();
            assert_eq!(saved[STATE_MAGIC.len()], STATE_VERSION_2);
            assert_eq!(saved[STATE_LEN - 4], 1 | 4 | 8, "the flags");
            state = ResumableSha256::from_bytes(&saved).unwrap();
            assert_eq!(state.offset(), at as u64);
            assert_eq!(state.carried(), listed);
        }
        state.update(&data[at..]);
        let mut reference = checksums::Hasher::new(listed);
        reference.update(&data);
        let sums = state.finish();
        assert_eq!(sums.sha256, None);
        assert_eq!(sums, reference.finish());
        // The same bytes with a SHA-256 state that counted them: refused.
        let mut with_sha256 = ResumableSha256::with(listed.with(Sum::Sha256));
        with_sha256.update(&data);
        let mut forged = with_sha256.to_bytes();
        forged[STATE_LEN - 4] |= 8;
        forged.truncate(forged.len() - 4);
        let crc = crc32fast::hash(&forged);
        forged.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            ResumableSha256::from_bytes(&forged).unwrap_err(),
            StateError::Damaged
        );
    }

    #[test]
    fn a_state_not_ours_of_another_version_or_damaged_is_refused() {
        let mut state = ResumableSha256::new();
        state.update(&pattern(100));
        let good = state.to_bytes();
        assert!(ResumableSha256::from_bytes(&good).is_ok());
        assert_eq!(
            ResumableSha256::from_bytes(b"").unwrap_err(),
            StateError::NotOurs
        );
        assert_eq!(
            ResumableSha256::from_bytes(b"{\"offset\":100}").unwrap_err(),
            StateError::NotOurs
        );
        assert_eq!(
            ResumableSha256::from_bytes(STATE_MAGIC).unwrap_err(),
            StateError::NotOurs
        );
        let mut other = good.clone();
        other[STATE_MAGIC.len()] = 3;
        assert_eq!(
            ResumableSha256::from_bytes(&other).unwrap_err(),
            StateError::OtherVersion(3)
        );
        assert_eq!(
            ResumableSha256::from_bytes(&good[..good.len() - 1]).unwrap_err(),
            StateError::Damaged
        );
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            ResumableSha256::from_bytes(&longer).unwrap_err(),
            StateError::Damaged
        );
        // Any one byte flipped past the version: the CRC catches it.
        for i in STATE_MAGIC.len() + 1..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x10;
            assert_eq!(
                ResumableSha256::from_bytes(&flipped).unwrap_err(),
                StateError::Damaged,
                "byte {i}"
            );
        }
        // Damage with a CRC made to fit: an offset that is not the state's
        // own count, and a buffer fill `sha2` refuses.
        let refit = |mut bytes: Vec<u8>| {
            bytes.truncate(STATE_LEN - 4);
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes
        };
        let offset_at = STATE_MAGIC.len() + 1;
        let mut offset = good.clone();
        offset[offset_at..offset_at + 8].copy_from_slice(&101u64.to_le_bytes());
        assert_eq!(
            ResumableSha256::from_bytes(&refit(offset)).unwrap_err(),
            StateError::Damaged
        );
        let mut fill = good.clone();
        fill[offset_at + 8 + 40] = 64;
        assert_eq!(
            ResumableSha256::from_bytes(&refit(fill)).unwrap_err(),
            StateError::Damaged
        );
        assert!(ResumableSha256::from_bytes(&refit(good)).is_ok());
    }

    fn file_with(data: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file-1");
        std::fs::write(&path, data).unwrap();
        (dir, File::open(&path).unwrap())
    }

    #[test]
    fn catching_up_hashes_only_the_bytes_the_state_did_not_see() {
        let data = pattern(700_000); // more than one read buffer
        let (_dir, file) = file_with(&data);
        // A crash after 300 bytes were hashed and saved, while the file
        // went on to get them all.
        let mut before = ResumableSha256::new();
        before.update(&data[..300]);
        let mut state = ResumableSha256::from_bytes(&before.to_bytes()).unwrap();
        assert_eq!(
            state.catch_up(&file, data.len() as u64).unwrap(),
            CatchUp::Hashed(data.len() as u64 - 300)
        );
        assert_eq!(state.offset(), data.len() as u64);
        assert_eq!(
            state.catch_up(&file, data.len() as u64).unwrap(),
            CatchUp::Current
        );
        assert_eq!(state.finish_hex(), hex(&Sha256::digest(&data)));
        // Up to a point short of the end: only that far.
        let mut part = ResumableSha256::new();
        assert_eq!(part.catch_up(&file, 1000).unwrap(), CatchUp::Hashed(1000));
        assert_eq!(part.finish_hex(), hex(&Sha256::digest(&data[..1000])));
    }

    /// The file was cut back below what the state covers (a state saved
    /// before a power cut lost the data it saw): it starts again from 0.
    #[test]
    fn a_state_ahead_of_the_file_is_reported_and_rehashed_from_the_start() {
        let data = pattern(5000);
        let (_dir, file) = file_with(&data[..3000]);
        let mut state = ResumableSha256::new();
        // Other bytes than the file's: the restart must not keep any.
        state.update(&[0xff; 4000]);
        assert_eq!(
            state.catch_up(&file, 3000).unwrap(),
            CatchUp::Restarted { was: 4000 }
        );
        assert_eq!(state.offset(), 3000);
        assert_eq!(state.finish_hex(), hex(&Sha256::digest(&data[..3000])));
    }

    #[test]
    fn a_file_shorter_than_promised_is_an_error_and_the_state_stays_usable() {
        let data = pattern(3000);
        let (dir, file) = file_with(&data[..2000]);
        let mut state = ResumableSha256::new();
        let err = state.catch_up(&file, 3000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(state.offset(), 2000, "it covers what it read");
        // The rest arrives; catching up again finishes the job.
        std::fs::write(dir.path().join("file-1"), &data).unwrap();
        assert_eq!(state.catch_up(&file, 3000).unwrap(), CatchUp::Hashed(1000));
        assert_eq!(state.finish_hex(), hex(&Sha256::digest(&data)));
    }

    #[test]
    fn digests_of_several_files_in_order_inline_and_threaded() {
        let expected = |data: &[u8]| Sums {
            sha256: Some(hex(&Sha256::digest(data))),
            ..Sums::default()
        };
        let big = vec![7u8; FAST_BYTES as usize + (1 << 20)];
        let hashing = Hashing::fast_within(Checksums::default(), Duration::from_secs(3600));
        hashing.update(0, b"hello ");
        hashing.update(0, b"world");
        hashing.end(0);
        hashing.end(1); // empty
        assert!(!hashing.threaded(), "small files hash inline");
        for chunk in big.chunks(100_000) {
            hashing.update(2, chunk);
        }
        assert!(hashing.threaded(), "a fast body moves to the thread");
        hashing.end(2);
        hashing.update(3, b"after");
        hashing.end(3);
        assert_eq!(
            hashing.finish(),
            vec![
                (0, expected(b"hello world")),
                (1, expected(b"")),
                (2, expected(&big)),
                (3, expected(b"after"))
            ]
        );
    }

    #[test]
    fn the_switch_to_the_thread_mid_file_keeps_the_state() {
        // The switch happens inside file 0, after exactly FAST_BYTES.
        let data: Vec<u8> = (0..FAST_BYTES as usize + 12_345).map(|i| i as u8).collect();
        let hashing = Hashing::fast_within(Checksums::default(), Duration::from_secs(3600));
        let (first, rest) = data.split_at(FAST_BYTES as usize);
        hashing.update(0, first);
        assert!(hashing.threaded());
        hashing.update(0, rest);
        hashing.end(0);
        assert_eq!(
            hashing.finish(),
            vec![(
                0,
                Sums {
                    sha256: Some(hex(&Sha256::digest(&data))),
                    ..Sums::default()
                }
            )]
        );
    }

    /// A resumable chunk's state, read while the thread runs (a takeover
    /// saves it), covers every byte fed before the look and none after.
    #[test]
    fn a_peek_at_the_threaded_state_sees_every_byte_fed_before_it() {
        #[derive(Default)]
        struct Whole(ResumableSha256);
        impl Feed for Whole {
            type Tag = ();
            fn feed(&mut self, (): (), bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let data = pattern(3 * FAST_BYTES as usize + 777);
        let (first, rest) = data.split_at(2 * FAST_BYTES as usize + 5);
        let mut offload = Offload::fast_within(Whole::default(), Duration::from_secs(3600));
        for piece in first.chunks(60_000) {
            offload.feed((), piece);
        }
        assert!(offload.threaded());
        let seen = offload.peek(|whole| whole.0.clone()).unwrap();
        assert_eq!(seen.offset(), first.len() as u64);
        assert_eq!(seen.finish_hex(), hex(&Sha256::digest(first)));
        offload.feed((), rest);
        let whole = offload.finish().unwrap().0;
        assert_eq!(whole.finish_hex(), hex(&Sha256::digest(&data)));
    }

    #[test]
    fn the_hashing_thread_is_fed_whole_batches_whatever_the_pieces() {
        // Each job's length as the thread sees it, and the bytes, in order.
        #[derive(Default)]
        struct Jobs(Vec<(u8, usize)>, Vec<u8>);
        impl Feed for Jobs {
            type Tag = u8;
            fn feed(&mut self, tag: u8, bytes: &[u8]) {
                self.0.push((tag, bytes.len()));
                self.1.extend_from_slice(bytes);
            }
        }
        let mut offload = Offload::fast_within(Jobs::default(), Duration::from_secs(3600));
        // Past FAST_BYTES on the request's thread, so the rest is threaded.
        let first = pattern(FAST_BYTES as usize);
        offload.feed(0, &first);
        assert!(offload.threaded());
        // Pieces of 4,321 bytes (FastCGI records are of any length) for
        // two batches and a bit of tag 1, then a piece of tag 2.
        let one = pattern(2 * BATCH + 1_000);
        for piece in one.chunks(4_321) {
            offload.feed(1, piece);
        }
        offload.feed(2, b"end");
        let jobs = offload.finish().unwrap();
        assert_eq!(
            jobs.0[1..],
            [(1, BATCH), (1, BATCH), (1, 1_000), (2, 3)],
            "batches of exactly BATCH bytes, the rest of a tag on its own"
        );
        assert_eq!(jobs.1, [first, one, b"end".to_vec()].concat());
    }

    #[test]
    fn a_slow_body_stays_on_the_requests_thread() {
        let data = vec![3u8; 4 * FAST_BYTES as usize];
        let hashing = Hashing::fast_within(Checksums::default(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        for chunk in data.chunks(64 << 10) {
            hashing.update(0, chunk);
        }
        assert!(!hashing.threaded(), "too late to prove fast");
        hashing.end(0);
        assert_eq!(
            hashing.finish(),
            vec![(
                0,
                Sums {
                    sha256: Some(hex(&Sha256::digest(&data))),
                    ..Sums::default()
                }
            )]
        );
    }
}
