//! SHA-256 of the stored files: on a second thread for a fast body, on the
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

use std::cell::RefCell;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::identifier::hex;

/// A body that brings this many bytes within [`FAST_WITHIN`] of the
/// upload's start is fast: its hashing moves to a thread of its own.
pub const FAST_BYTES: u64 = 1 << 20;
pub const FAST_WITHIN: Duration = Duration::from_secs(1);
/// Chunks in flight at most (each up to the parser's 256 KiB buffer).
const QUEUE: usize = 8;

enum Job {
    /// Bytes of file `index`, in order.
    Data(usize, Vec<u8>),
    /// File `index` is complete.
    End(usize),
}

/// The file being hashed and its state, and the digests so far.
#[derive(Default)]
struct Digests {
    current: Option<(usize, Sha256)>,
    done: Vec<(usize, String)>,
}

impl Digests {
    fn update(&mut self, index: usize, bytes: &[u8]) {
        match &mut self.current {
            Some((i, hasher)) if *i == index => hasher.update(bytes),
            _ => {
                let mut hasher = Sha256::new();
                hasher.update(bytes);
                self.current = Some((index, hasher));
            }
        }
    }

    fn end(&mut self, index: usize) {
        let hasher = match self.current.take() {
            Some((i, hasher)) if i == index => hasher,
            _ => Sha256::new(), // an empty file
        };
        self.done.push((index, hex(&hasher.finalize())));
    }
}

enum Mode {
    /// On the request's thread; `hashed` bytes so far, and until when the
    /// body may still prove fast (`None`: it did not).
    Inline {
        digests: Digests,
        hashed: u64,
        until: Option<Instant>,
    },
    Thread(Worker),
}

/// The hashing thread, and the way to feed it.
struct Worker {
    jobs: SyncSender<Job>,
    spare: Receiver<Vec<u8>>,
    handle: JoinHandle<Vec<(usize, String)>>,
}

impl Worker {
    /// Starts the thread, going on from `digests`; the digests back if no
    /// thread can be had (then hashing stays on the request's thread).
    fn start(digests: Box<Digests>) -> Result<Worker, Box<Digests>> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let (give_back, spare) = mpsc::channel::<Vec<u8>>();
        // Moved in by the closure only if the thread starts; else handed
        // back through the error below.
        let (seed, seeded) = mpsc::channel::<Box<Digests>>();
        let spawned = thread::Builder::new().name("sha256".into()).spawn(move || {
            let mut digests = seeded.recv().map(|d| *d).unwrap_or_default();
            for job in queue {
                match job {
                    Job::Data(index, bytes) => {
                        digests.update(index, &bytes);
                        // The buffer goes back for the next chunk.
                        let _ = give_back.send(bytes);
                    }
                    Job::End(index) => digests.end(index),
                }
            }
            digests.done
        });
        match spawned {
            Ok(handle) => {
                let _ = seed.send(digests);
                Ok(Worker {
                    jobs,
                    spare,
                    handle,
                })
            }
            Err(_) => Err(digests),
        }
    }
}

/// SHA-256 of each stored file, fed in order.
pub struct Hashing {
    mode: RefCell<Mode>,
}

impl Default for Hashing {
    fn default() -> Self {
        Hashing::new()
    }
}

impl Hashing {
    pub fn new() -> Hashing {
        Hashing::fast_within(FAST_WITHIN)
    }

    /// As [`Hashing::new`], with another time for a body to prove fast.
    fn fast_within(window: Duration) -> Hashing {
        Hashing {
            mode: RefCell::new(Mode::Inline {
                digests: Digests::default(),
                hashed: 0,
                until: Some(Instant::now() + window),
            }),
        }
    }

    /// Hashes (or queues) bytes of file `index`; waits if the hashing
    /// thread is behind.
    pub fn update(&self, index: usize, bytes: &[u8]) {
        let mut mode = self.mode.borrow_mut();
        if let Mode::Inline {
            digests,
            hashed,
            until,
        } = &mut *mode
        {
            digests.update(index, bytes);
            *hashed += bytes.len() as u64;
            let Some(deadline) = *until else {
                return;
            };
            if Instant::now() > deadline {
                *until = None; // slow: it stays here
            } else if *hashed >= FAST_BYTES {
                let digests = Box::new(std::mem::take(digests));
                *mode = match Worker::start(digests) {
                    Ok(worker) => Mode::Thread(worker),
                    // No thread: hash here, as fast as it goes.
                    Err(digests) => Mode::Inline {
                        digests: *digests,
                        hashed: 0,
                        until: None,
                    },
                };
            }
            return;
        }
        if let Mode::Thread(worker) = &*mode {
            let mut buffer = worker.spare.try_recv().unwrap_or_default();
            buffer.clear();
            buffer.extend_from_slice(bytes);
            // The worker only stops when we drop `jobs`.
            let _ = worker.jobs.send(Job::Data(index, buffer));
        }
    }

    /// Marks file `index` complete.
    pub fn end(&self, index: usize) {
        match &mut *self.mode.borrow_mut() {
            Mode::Inline { digests, .. } => digests.end(index),
            Mode::Thread(worker) => {
                let _ = worker.jobs.send(Job::End(index));
            }
        }
    }

    /// Waits for the hashing thread, if any; returns each completed file's
    /// digest.
    pub fn finish(self) -> Vec<(usize, String)> {
        match self.mode.into_inner() {
            Mode::Inline { digests, .. } => digests.done,
            Mode::Thread(worker) => {
                drop(worker.jobs);
                worker.handle.join().unwrap_or_default()
            }
        }
    }

    /// Whether the hashing thread runs (for tests).
    pub fn threaded(&self) -> bool {
        matches!(&*self.mode.borrow(), Mode::Thread(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_several_files_in_order_inline_and_threaded() {
        let expected = |data: &[u8]| hex(&Sha256::digest(data));
        let big = vec![7u8; FAST_BYTES as usize + (1 << 20)];
        let hashing = Hashing::fast_within(Duration::from_secs(3600));
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
        let hashing = Hashing::fast_within(Duration::from_secs(3600));
        let (first, rest) = data.split_at(FAST_BYTES as usize);
        hashing.update(0, first);
        assert!(hashing.threaded());
        hashing.update(0, rest);
        hashing.end(0);
        assert_eq!(hashing.finish(), vec![(0, hex(&Sha256::digest(&data)))]);
    }

    #[test]
    fn a_slow_body_stays_on_the_requests_thread() {
        let data = vec![3u8; 4 * FAST_BYTES as usize];
        let hashing = Hashing::fast_within(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        for chunk in data.chunks(64 << 10) {
            hashing.update(0, chunk);
        }
        assert!(!hashing.threaded(), "too late to prove fast");
        hashing.end(0);
        assert_eq!(hashing.finish(), vec![(0, hex(&Sha256::digest(&data)))]);
    }
}
