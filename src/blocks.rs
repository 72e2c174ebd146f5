//! Writes of about a mebibyte, whatever sizes the transport hands over.
//!
//! A body arrives in the pieces its transport forwards: nginx's FastCGI
//! records carry 8 KiB at most (4.3 KiB on average under strace), a CGI
//! pipe what the kernel had. Written as they come, each piece is a system
//! call, and on a network file system a round trip: onto a GlusterFS
//! mount with write-behind off, 11-16 MiB/s where `dd` with 1 MiB blocks
//! does 184 MB/s. [`Blocks`] gathers the pieces and writes whole blocks of
//! [`BLOCK`] bytes.
//!
//! Bytes held here are not stored: whoever publishes a count of stored
//! bytes (a status's `received`, a resumable upload's offset) counts only
//! [`Blocks::stored`], and flushes first where the count must be whole
//! (the end of a part or chunk, a takeover, before a sync). Held bytes are
//! at most one block, so one open file costs [`BLOCK`] of memory at most,
//! an upload has one file open at a time, and all the buffers of a process
//! share a [`BUDGET`].
//!
//! A slow client must not leave its bytes held for long: its progress
//! would stand still and a crash or a takeover would lose them. The
//! receivers hold bytes at most one progress interval
//! ([`crate::receiving::hold_limit`]): the writer stores what has been held
//! that long at the next piece ([`Blocks::holding`]), and the watcher's
//! tick stores it when no piece comes ([`Blocks::flush_older`]). A client
//! slower than a block per interval costs a write per interval and holds
//! what it sends in one; a fast one costs a write per block.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::spares::Spares;

/// The size of one write: large enough that a network file system's round
/// trip per write is paid once a mebibyte, small enough that a thousand
/// uploads in one daemon hold a gibibyte at most.
pub const BLOCK: usize = 1 << 20;

/// Most memory the write buffers of one process may take together. A
/// thousand trickling uploads on a busy machine each found a backlog of a
/// few hundred KiB in their sockets when their threads got the CPU, and
/// held it: the daemon's peak RSS went from about 100 MiB to 263 MiB
/// (`slow_clients::a_thousand_trickling_uploads_and_500_polls_a_second`).
/// Past this budget a writer writes what it is given at once, as before
/// writes were gathered.
pub const BUDGET: usize = 64 << 20;

/// Whole blocks a process keeps between requests (see [`crate::spares`]):
/// enough for the uploads of a busy moment to start without new memory,
/// and 4 MiB at most when the process is idle.
const SPARE_BLOCKS: usize = 4;

/// The process's write buffers, counted against a limit, and the whole
/// blocks it keeps between requests.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    taken: AtomicUsize,
    spares: Spares,
}

impl Budget {
    pub const fn new(limit: usize) -> Budget {
        Budget {
            limit,
            taken: AtomicUsize::new(0),
            spares: Spares::new(BLOCK, SPARE_BLOCKS),
        }
    }

    /// Takes `n` bytes of the budget, or nothing if that would pass it.
    fn take(&self, n: usize) -> bool {
        let before = self.taken.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limit {
            self.taken.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        self.taken.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes of buffers counted now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

/// The budget every writer of the process shares.
pub static BUFFERS: Budget = Budget::new(BUDGET);

/// A writer that holds bytes until it has a whole [`BLOCK`].
///
/// After a failed write it holds nothing and refuses every later write and
/// flush with the same error (its OS code kept, so a full disk stays a full
/// disk): the bytes it dropped would otherwise leave a hole that a later
/// success hides.
///
/// Its buffer is a block the process kept from an earlier request
/// ([`crate::spares`]) when there is one, else it grows with what it holds
/// (to a block at most); either way it is counted against a [`Budget`],
/// and given back (a whole block to the shelf) when a slow client's bytes
/// are stored by age: only a fast upload keeps a block's buffer between
/// blocks.
#[derive(Debug)]
pub struct Blocks<W> {
    inner: W,
    buffer: Vec<u8>,
    /// The buffer's allocation as counted in `budget`.
    counted: usize,
    budget: &'static Budget,
    stored: u64,
    /// When the oldest held byte arrived.
    since: Option<Instant>,
    /// How long a write may leave bytes held (see [`Blocks::holding`]).
    hold: Option<Duration>,
    failed: Option<(io::ErrorKind, Option<i32>)>,
}

impl<W: Write> Blocks<W> {
    /// A writer counted against the process's [`BUFFERS`].
    pub fn new(inner: W) -> Blocks<W> {
        Blocks::within(inner, &BUFFERS)
    }

    pub fn within(inner: W, budget: &'static Budget) -> Blocks<W> {
        Blocks {
            inner,
            buffer: Vec::new(),
            counted: 0,
            budget,
            stored: 0,
            since: None,
            hold: None,
            failed: None,
        }
    }

    /// A writer whose [`write`](Blocks::write) also stores what it holds
    /// once the oldest held byte is `hold` old: a client slower than a
    /// block per `hold` then costs a write per `hold`, and holds what it
    /// sends in `hold` (at 64 KiB/s and 200 ms, 13 KiB), not a block.
    pub fn holding(mut self, hold: Duration) -> Blocks<W> {
        self.hold = Some(hold);
        self
    }

    /// Takes `bytes`, writing each block that fills; `stored` is called
    /// with each run of bytes once it is written, in order (a resumable
    /// upload hashes there, so its hash state covers exactly what is
    /// stored).
    pub fn write(&mut self, mut bytes: &[u8], mut stored: impl FnMut(&[u8])) -> io::Result<()> {
        self.check()?;
        if bytes.is_empty() {
            return Ok(());
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        if !self.buffer.is_empty() {
            let take = (BLOCK - self.buffer.len()).min(bytes.len());
            if !self.room(take) {
                return self.write_through(bytes, stored);
            }
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() < BLOCK {
                return self.store_if_old(stored);
            }
            // A whole block: the buffer is kept for the next one.
            self.flush(&mut stored)?;
            if !bytes.is_empty() {
                self.since = Some(Instant::now());
            }
        }
        // Whole blocks of a large piece go out without a copy.
        let whole = bytes.len() - bytes.len() % BLOCK;
        if whole > 0 {
            self.put(&bytes[..whole], &mut stored)?;
            bytes = &bytes[whole..];
        }
        if bytes.is_empty() {
            self.since = None;
            return Ok(());
        }
        if !self.room(bytes.len()) {
            return self.write_through(bytes, stored);
        }
        self.buffer.extend_from_slice(bytes);
        self.store_if_old(stored)
    }

    /// Writes what is held.
    pub fn flush(&mut self, mut stored: impl FnMut(&[u8])) -> io::Result<()> {
        self.check()?;
        self.since = None;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        self.put(&buffer, &mut stored)?;
        // The allocation is kept for the next block.
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    /// Flushes what has been held for `age` or longer: the progress tick's
    /// flush, so that a slow client's bytes are stored (and counted) within
    /// about a tick even while none follow them. Returns whether it wrote.
    /// The buffer is given back: a client this slow needs none between
    /// its pieces.
    pub fn flush_older(&mut self, age: Duration, stored: impl FnMut(&[u8])) -> io::Result<bool> {
        match self.since {
            Some(since) if since.elapsed() >= age => {
                self.flush(stored)?;
                self.release();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Bytes written to the inner writer.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Bytes held, not yet written.
    pub fn held(&self) -> usize {
        self.buffer.len()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// A holding writer's flush of bytes held too long.
    fn store_if_old(&mut self, stored: impl FnMut(&[u8])) -> io::Result<()> {
        match self.hold {
            Some(hold) => self.flush_older(hold, stored).map(drop),
            None => Ok(()),
        }
    }

    /// Room for `more` held bytes: a kept block if the process has one,
    /// else the buffer grows by doubling to a block at most; each growth
    /// taken from the budget. False if the budget is spent.
    fn room(&mut self, more: usize) -> bool {
        let needed = self.buffer.len() + more;
        if needed <= self.counted {
            return true;
        }
        if self.budget.take(BLOCK - self.counted) {
            if let Some(mut block) = self.budget.spares.take() {
                block.extend_from_slice(&self.buffer);
                self.buffer = block;
                self.counted = BLOCK;
                return true;
            }
            self.budget.give_back(BLOCK - self.counted);
        }
        let size = needed.next_power_of_two().clamp(needed, BLOCK);
        if !self.budget.take(size - self.counted) {
            return false;
        }
        self.buffer.reserve_exact(size - self.buffer.len());
        self.counted = size;
        true
    }

    /// Over the budget: what is held and `bytes` are written now, and the
    /// buffer is given back.
    fn write_through(&mut self, bytes: &[u8], mut stored: impl FnMut(&[u8])) -> io::Result<()> {
        self.flush(&mut stored)?;
        self.put(bytes, &mut stored)?;
        self.release();
        Ok(())
    }

    fn release(&mut self) {
        self.budget.spares.give(std::mem::take(&mut self.buffer));
        self.budget.give_back(self.counted);
        self.counted = 0;
    }

    fn put(&mut self, bytes: &[u8], stored: &mut impl FnMut(&[u8])) -> io::Result<()> {
        match self.inner.write_all(bytes) {
            Ok(()) => {
                self.stored += bytes.len() as u64;
                stored(bytes);
                Ok(())
            }
            Err(err) => {
                self.failed = Some((err.kind(), err.raw_os_error()));
                self.release();
                self.since = None;
                Err(err)
            }
        }
    }

    fn check(&self) -> io::Result<()> {
        match self.failed {
            None => Ok(()),
            Some((_, Some(code))) => Err(io::Error::from_raw_os_error(code)),
            Some((kind, None)) => Err(io::Error::new(kind, "an earlier write failed")),
        }
    }
}

impl<W> Drop for Blocks<W> {
    fn drop(&mut self) {
        self.budget.spares.give(std::mem::take(&mut self.buffer));
        self.budget.give_back(self.counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of each write; fails with `fail` once `room` bytes
    /// are taken.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        bytes: Vec<u8>,
        room: Option<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(room) = self.room {
                let left = room.saturating_sub(self.bytes.len());
                if left == 0 {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
                let n = left.min(buf.len());
                self.writes.push(n);
                self.bytes.extend_from_slice(&buf[..n]);
                return Ok(n);
            }
            self.writes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn small_pieces_become_whole_blocks() {
        let mut blocks = Blocks::new(Recorder::default());
        let mut expected = Vec::new();
        let mut seen = Vec::new();
        // Pieces of the sizes nginx forwards, 3 MiB and a bit in all.
        for (i, size) in [8192usize, 4400, 1, 8192, 65535].iter().cycle().enumerate() {
            if expected.len() > 3 * BLOCK + 1000 {
                break;
            }
            let piece = pattern(*size, i as u8);
            expected.extend_from_slice(&piece);
            blocks.write(&piece, |b| seen.extend_from_slice(b)).unwrap();
        }
        let writes = blocks.get_ref().writes.clone();
        assert_eq!(writes, vec![BLOCK; 3], "only whole blocks before the end");
        assert_eq!(blocks.stored(), 3 * BLOCK as u64);
        assert_eq!(blocks.held(), expected.len() - 3 * BLOCK);
        blocks.flush(|b| seen.extend_from_slice(b)).unwrap();
        assert_eq!(blocks.get_ref().writes.len(), 4);
        assert_eq!(blocks.get_ref().bytes, expected);
        assert_eq!(seen, expected, "`stored` saw every byte, in order");
        assert_eq!(blocks.stored(), expected.len() as u64);
        assert_eq!(blocks.held(), 0);
    }

    #[test]
    fn a_large_piece_goes_out_in_whole_blocks_and_keeps_the_rest() {
        let mut blocks = Blocks::new(Recorder::default());
        let first = pattern(100, 1);
        let large = pattern(3 * BLOCK + 5, 2);
        blocks.write(&first, |_| {}).unwrap();
        blocks.write(&large, |_| {}).unwrap();
        // The held 100 bytes fill up to one block; two more go out whole.
        assert_eq!(blocks.get_ref().writes, vec![BLOCK, 2 * BLOCK]);
        assert_eq!(blocks.held(), 105);
        blocks.flush(|_| {}).unwrap();
        let mut expected = first;
        expected.extend_from_slice(&large);
        assert_eq!(blocks.get_ref().bytes, expected);
    }

    #[test]
    fn flushing_nothing_writes_nothing() {
        let mut blocks = Blocks::new(Recorder::default());
        blocks.flush(|_| panic!("nothing was stored")).unwrap();
        blocks.write(b"", |_| {}).unwrap();
        blocks.flush(|_| {}).unwrap();
        assert!(blocks.get_ref().writes.is_empty());
    }

    #[test]
    fn only_bytes_held_long_enough_are_flushed_by_age() {
        let mut blocks = Blocks::new(Recorder::default());
        blocks.write(b"slow client", |_| {}).unwrap();
        assert!(!blocks.flush_older(Duration::from_secs(60), |_| {}).unwrap());
        assert!(blocks.get_ref().writes.is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            blocks
                .flush_older(Duration::from_millis(10), |_| {})
                .unwrap()
        );
        assert_eq!(blocks.get_ref().bytes, b"slow client");
        assert_eq!(blocks.stored(), 11);
        // Nothing held: nothing to flush, however old.
        assert!(!blocks.flush_older(Duration::ZERO, |_| {}).unwrap());
    }

    #[test]
    fn a_holding_writer_stores_old_bytes_at_the_next_write() {
        let mut blocks = Blocks::new(Recorder::default()).holding(Duration::from_millis(30));
        blocks.write(b"first", |_| {}).unwrap();
        blocks.write(b" second", |_| {}).unwrap();
        assert!(blocks.get_ref().writes.is_empty(), "nothing is old yet");
        std::thread::sleep(Duration::from_millis(40));
        blocks.write(b" third", |_| {}).unwrap();
        assert_eq!(blocks.get_ref().bytes, b"first second third");
        assert_eq!(blocks.held(), 0);
        // The clock starts again at the next held byte.
        blocks.write(b" fourth", |_| {}).unwrap();
        assert_eq!(blocks.held(), 7);
        assert_eq!(blocks.get_ref().writes.len(), 1);
    }

    #[test]
    fn past_the_budget_pieces_are_written_at_once_and_buffers_given_back() {
        static SMALL: Budget = Budget::new(3 * BLOCK / 2);
        let mut first = Blocks::within(Recorder::default(), &SMALL);
        let mut second = Blocks::within(Recorder::default(), &SMALL);
        let mut expected = Vec::new();
        for i in 0..100 {
            let piece = pattern(8192, i);
            expected.extend_from_slice(&piece);
            first.write(&piece, |_| {}).unwrap();
        }
        assert!(first.get_ref().writes.is_empty(), "held within the budget");
        assert_eq!(SMALL.taken(), 1 << 20, "grown by doubling to 819200 bytes");
        // The second finds half a block left: it holds what fits, and
        // writes what it holds when the next growth would pass the budget.
        let mut sent = Vec::new();
        for i in 0..100 {
            let piece = pattern(8192, i);
            sent.extend_from_slice(&piece);
            second.write(&piece, |_| {}).unwrap();
            assert!(SMALL.taken() <= 3 * BLOCK / 2, "{} taken", SMALL.taken());
        }
        let writes = second.get_ref().writes.clone();
        assert!(
            writes.len() >= 2,
            "never written past the budget: {writes:?}"
        );
        assert!(
            writes.iter().all(|&w| w <= BLOCK / 2),
            "more held than the budget left: {writes:?}"
        );
        second.flush(|_| {}).unwrap();
        assert_eq!(second.get_ref().bytes, sent);
        first.flush(|_| {}).unwrap();
        assert_eq!(first.get_ref().bytes, expected);
        drop(first);
        drop(second);
        assert_eq!(SMALL.taken(), 0, "every buffer given back");
    }

    #[test]
    fn the_next_writer_takes_the_block_the_last_one_kept() {
        static OWN: Budget = Budget::new(BUDGET);
        let mut first = Blocks::within(Recorder::default(), &OWN);
        first.write(&pattern(BLOCK - 1, 1), |_| {}).unwrap();
        assert_eq!(OWN.taken(), BLOCK, "grown by doubling to a block");
        drop(first);
        assert_eq!(OWN.taken(), 0);
        assert_eq!(OWN.spares.kept(), 1, "its block kept for the next request");
        let mut second = Blocks::within(Recorder::default(), &OWN);
        second.write(b"first bytes", |_| {}).unwrap();
        assert_eq!(OWN.spares.kept(), 0, "the kept block taken");
        assert_eq!(OWN.taken(), BLOCK, "and counted as a block");
        second.write(&pattern(BLOCK, 2), |_| {}).unwrap();
        assert_eq!(second.get_ref().writes, vec![BLOCK]);
        second.flush(|_| {}).unwrap();
        let expected = [b"first bytes".to_vec(), pattern(BLOCK, 2)].concat();
        assert_eq!(second.get_ref().bytes, expected);
        drop(second);
        // With none kept, a buffer grows from what is held, and one smaller
        // than a block is not kept.
        assert!(OWN.spares.take().is_some());
        let mut small = Blocks::within(Recorder::default(), &OWN);
        small.write(b"x", |_| {}).unwrap();
        assert_eq!(OWN.taken(), 1);
        drop(small);
        assert_eq!(OWN.spares.kept(), 0);
    }

    #[test]
    fn a_slow_clients_buffer_is_given_back_when_its_bytes_are_stored_by_age() {
        static OWN: Budget = Budget::new(BUDGET);
        let mut blocks =
            Blocks::within(Recorder::default(), &OWN).holding(Duration::from_millis(5));
        blocks.write(&pattern(20_000, 1), |_| {}).unwrap();
        assert_eq!(
            OWN.taken(),
            32 << 10,
            "the buffer is what is held, rounded up"
        );
        std::thread::sleep(Duration::from_millis(10));
        assert!(
            blocks
                .flush_older(Duration::from_millis(5), |_| {})
                .unwrap()
        );
        assert_eq!(OWN.taken(), 0);
        assert_eq!(blocks.stored(), 20_000);
    }

    #[test]
    fn a_full_disk_stays_full_and_nothing_after_it_is_written() {
        let mut blocks = Blocks::new(Recorder {
            room: Some(BLOCK + 10),
            ..Recorder::default()
        });
        let mut seen = 0;
        blocks
            .write(&pattern(BLOCK, 3), |b| seen += b.len())
            .unwrap();
        blocks.write(&pattern(100, 4), |b| seen += b.len()).unwrap();
        let err = blocks.flush(|b| seen += b.len()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!(seen, BLOCK, "the failed block was never reported stored");
        assert_eq!(blocks.stored(), BLOCK as u64);
        assert_eq!(blocks.held(), 0, "the failed bytes are dropped");
        // Room again (someone freed space): still refused, so the file has
        // no hole that a later write would hide.
        blocks.inner.room = None;
        let again = blocks.write(&pattern(BLOCK, 5), |_| {}).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(28));
        assert_eq!(blocks.flush(|_| {}).unwrap_err().raw_os_error(), Some(28));
        assert_eq!(blocks.get_ref().bytes.len(), BLOCK + 10);
    }
}
