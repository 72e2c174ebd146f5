//! SHA-256 of the stored files, computed on a second thread.
//!
//! SHA-256 is the slowest step of an upload: about 1.8 GB/s on a core with
//! SHA extensions, against twice that for copying the bytes to the page
//! cache. Hashing on the request's thread would add the two; here the
//! request thread hands each chunk over (a memcpy into a recycled buffer,
//! a sixth of the hash's cost) and goes on reading and writing, so an
//! upload takes about as long as the hash alone. A bounded queue keeps
//! memory flat: when the hasher falls behind, the request thread waits.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};

use crate::identifier::hex;

/// Chunks in flight at most (each up to the parser's 256 KiB buffer).
const QUEUE: usize = 8;

enum Job {
    /// Bytes of file `index`, in order.
    Data(usize, Vec<u8>),
    /// File `index` is complete.
    End(usize),
}

/// The hashing thread, and the way to feed it.
pub struct Hashing<'scope> {
    jobs: SyncSender<Job>,
    spare: Receiver<Vec<u8>>,
    worker: ScopedJoinHandle<'scope, Vec<(usize, String)>>,
}

impl<'scope> Hashing<'scope> {
    /// Starts the thread inside `scope` (which joins it if we do not).
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>) -> Hashing<'scope> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let (give_back, spare) = mpsc::channel::<Vec<u8>>();
        let worker = scope.spawn(move || {
            let mut digests = Vec::new();
            let mut current: Option<(usize, Sha256)> = None;
            for job in queue {
                match job {
                    Job::Data(index, bytes) => {
                        match &mut current {
                            Some((i, hasher)) if *i == index => hasher.update(&bytes),
                            _ => {
                                let mut hasher = Sha256::new();
                                hasher.update(&bytes);
                                current = Some((index, hasher));
                            }
                        }
                        // The buffer goes back for the next chunk.
                        let _ = give_back.send(bytes);
                    }
                    Job::End(index) => {
                        let hasher = match current.take() {
                            Some((i, hasher)) if i == index => hasher,
                            _ => Sha256::new(), // an empty file
                        };
                        digests.push((index, hex(&hasher.finalize())));
                    }
                }
            }
            digests
        });
        Hashing {
            jobs,
            spare,
            worker,
        }
    }

    /// Queues bytes of file `index`; waits if the hasher is behind.
    pub fn update(&self, index: usize, bytes: &[u8]) {
        let mut buffer = self.spare.try_recv().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        // The worker only stops when we drop `jobs`.
        let _ = self.jobs.send(Job::Data(index, buffer));
    }

    /// Marks file `index` complete.
    pub fn end(&self, index: usize) {
        let _ = self.jobs.send(Job::End(index));
    }

    /// Waits for the hasher; returns each completed file's digest.
    pub fn finish(self) -> Vec<(usize, String)> {
        drop(self.jobs);
        self.worker.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_several_files_in_order() {
        let digests = std::thread::scope(|scope| {
            let hashing = Hashing::start(scope);
            hashing.update(0, b"hello ");
            hashing.update(0, b"world");
            hashing.end(0);
            hashing.end(1); // empty
            for chunk in vec![7u8; 1 << 20].chunks(100_000) {
                hashing.update(2, chunk);
            }
            hashing.end(2);
            hashing.finish()
        });
        let expected = |data: &[u8]| hex(&Sha256::digest(data));
        assert_eq!(
            digests,
            vec![
                (0, expected(b"hello world")),
                (1, expected(b"")),
                (2, expected(&vec![7u8; 1 << 20]))
            ]
        );
    }
}
