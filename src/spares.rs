//! Buffers kept between requests, so that a body's large buffers are not
//! new memory for every request.
//!
//! A resumable upload sent in chunks is a request per chunk, and each
//! request wanted a fresh write block ([`crate::blocks::BLOCK`]) and fresh
//! batches for the hashing thread. glibc gives memory that size back to
//! the kernel when it is freed (its arenas trim their tops), so every chunk
//! faulted it in again: the daemon took 44,000 to 57,000 page faults for
//! 1 GiB in 8 MiB chunks, against 1,000 to 1,600 as one `PATCH`, and a
//! fault costs about 1.5 µs on this machine's virtual CPUs (a mebibyte
//! allocated, touched and freed: 0.4 ms). With a [`Spares`] shelf for each
//! kind of buffer, 0 to 170 a scenario (the benchmark's
//! `tus.daemon.*.daemon_page_faults`).
//!
//! The shelf is small and bounded ([`Spares::new`]'s `keep`): an idle
//! process holds at most `keep` buffers of each kind, and a busy one counts
//! a buffer taken from the shelf as it counts a new one (the write blocks'
//! budget, [`crate::blocks::Budget`]).

use std::sync::{Mutex, PoisonError};

/// Spare buffers of one capacity, shared by every thread of the process.
#[derive(Debug)]
pub struct Spares {
    shelf: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl Spares {
    /// A shelf of at most `keep` buffers of `capacity` bytes.
    pub const fn new(capacity: usize, keep: usize) -> Spares {
        Spares {
            shelf: Mutex::new(Vec::new()),
            capacity,
            keep,
        }
    }

    /// An empty buffer of the shelf's capacity, if one is kept.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.shelf().pop()
    }

    /// An empty buffer of the shelf's capacity: a kept one or a new one.
    pub fn take_or_new(&self) -> Vec<u8> {
        self.take()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    /// Keeps `buffer` for a later [`take`](Spares::take) if it has the
    /// shelf's capacity and the shelf has room; frees it otherwise.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() != self.capacity {
            return;
        }
        buffer.clear();
        let mut shelf = self.shelf();
        if shelf.len() < self.keep {
            shelf.push(buffer);
        }
    }

    /// Buffers on the shelf now.
    pub fn kept(&self) -> usize {
        self.shelf().len()
    }

    fn shelf(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A thread that panicked holding the lock left a list of buffers,
        // nothing half done.
        self.shelf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_allocation() {
        let spares = Spares::new(4096, 2);
        let mut buffer = Vec::with_capacity(4096);
        buffer.extend_from_slice(b"held bytes");
        let address = buffer.as_ptr();
        spares.give(buffer);
        let again = spares.take().expect("the buffer was kept");
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 4096);
        assert_eq!(
            again.as_ptr(),
            address,
            "the same allocation, not a new one"
        );
        assert!(spares.take().is_none());
    }

    #[test]
    fn the_shelf_keeps_at_most_its_count() {
        let spares = Spares::new(64, 2);
        for _ in 0..5 {
            spares.give(Vec::with_capacity(64));
        }
        assert_eq!(spares.kept(), 2);
    }

    #[test]
    fn a_buffer_of_another_capacity_is_not_kept() {
        let spares = Spares::new(64, 4);
        spares.give(Vec::with_capacity(32));
        spares.give(Vec::with_capacity(128));
        assert_eq!(spares.kept(), 0);
        assert_eq!(spares.take_or_new().capacity(), 64);
    }
}
