//! Which of the event loop's threads wait in epoll.
//!
//! Every thread waiting on the one epoll instance costs each event: with
//! 16 waiting on two cores, the kernel's epoll lock and the switches
//! between threads took the daemon's CPU for a status poll from 22 µs to
//! 33-43 µs (the floors in `bench/run`). With as many waiting as there
//! are cores, a thread that finishes an event usually finds the next one
//! ready. So only `width` threads (the cores, at most `workers`) take part
//! at a time; the others stand by.
//!
//! They are there for a thread held up on one event: a status read on a
//! slow network file system, or an answer to a peer that does not read
//! it. A thread that has spent [`STUCK`] on one event is not counted, and
//! a standing-by thread takes its place, so `width` threads are free to
//! wait as long as fewer than `workers` are held up. One standing-by
//! thread, the watchman, looks every [`WATCH`]; the rest sleep until it
//! calls one. When the held-up thread comes back, the rotation is wider
//! than it needs, and a thread leaves it after its next event.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Time on one event after which a thread counts as held up.
pub(super) const STUCK: Duration = Duration::from_millis(10);
/// How often the watchman looks for held-up threads.
const WATCH: Duration = Duration::from_millis(10);

pub(super) struct Rotation {
    width: usize,
    /// Threads taking part (waiting in epoll or on an event); under
    /// `state`'s lock, mirrored in `taking_part` for a check without it.
    state: Mutex<State>,
    taking_part: AtomicUsize,
    standby: Condvar,
    /// For each thread, when it began the event it is on, in nanoseconds
    /// after `origin` plus one; 0 while it is not on one.
    busy_since: Vec<AtomicU64>,
    origin: Instant,
}

struct State {
    taking_part: usize,
    watchman: bool,
}

impl Rotation {
    /// A rotation of `threads` threads, `width` of them at a time.
    pub(super) fn new(threads: usize, width: usize) -> Rotation {
        Rotation {
            width: width.clamp(1, threads.max(1)),
            state: Mutex::new(State {
                taking_part: 0,
                watchman: false,
            }),
            taking_part: AtomicUsize::new(0),
            standby: Condvar::new(),
            busy_since: (0..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
        }
    }

    /// The cores this process may run on, the width for `threads`.
    pub(super) fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held_up(&self) -> usize {
        let now = self.nanos();
        let stuck = STUCK.as_nanos() as u64;
        self.busy_since
            .iter()
            .map(|since| since.load(Ordering::Relaxed))
            .filter(|&since| since != 0 && now.saturating_sub(since - 1) >= stuck)
            .count()
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits until the calling thread may take part; false once `stopping` says
    /// so (checked at least every [`WATCH`] by the watchman, who wakes the
    /// others to see it).
    pub(super) fn join(&self, stopping: impl Fn() -> bool) -> bool {
        let mut state = self.state();
        let mut watching = false;
        loop {
            if stopping() {
                if watching {
                    state.watchman = false;
                }
                self.standby.notify_all();
                return false;
            }
            if state.taking_part < self.width + self.held_up() {
                state.taking_part += 1;
                self.taking_part.store(state.taking_part, Ordering::Relaxed);
                if watching {
                    // Someone else watches now; they look at once, so
                    // that several held up are replaced without a wait
                    // each.
                    state.watchman = false;
                    self.standby.notify_one();
                }
                return true;
            }
            if !state.watchman {
                state.watchman = true;
                watching = true;
            }
            state = if watching {
                self.standby
                    .wait_timeout(state, WATCH)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            } else {
                self.standby
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner)
            };
        }
    }

    /// Thread `me` begins an event.
    pub(super) fn begin(&self, me: usize) {
        if let Some(since) = self.busy_since.get(me) {
            since.store(self.nanos().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Thread `me` is done with its event; true if it has left the
    /// rotation (it was wider than it needs) and must [`Rotation::join`]
    /// again before it waits for events.
    pub(super) fn end(&self, me: usize) -> bool {
        if let Some(since) = self.busy_since.get(me) {
            since.store(0, Ordering::Relaxed);
        }
        // The usual case, without the lock: no wider than the width.
        if self.taking_part.load(Ordering::Relaxed) <= self.width {
            return false;
        }
        let mut state = self.state();
        if state.taking_part <= self.width + self.held_up() {
            return false;
        }
        state.taking_part -= 1;
        self.taking_part.store(state.taking_part, Ordering::Relaxed);
        true
    }

    #[cfg(test)]
    fn taking_part(&self) -> usize {
        self.state().taking_part
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn only_the_width_takes_part_and_a_held_up_thread_is_replaced() {
        // Slot 4 is this test's, standing for a thread held up.
        let rotation = Arc::new(Rotation::new(5, 2));
        let stop = Arc::new(AtomicBool::new(false));
        let joined = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rotation, stop, joined) = (
                    Arc::clone(&rotation),
                    Arc::clone(&stop),
                    Arc::clone(&joined),
                );
                thread::spawn(move || {
                    let took_part = rotation.join(|| stop.load(Ordering::Relaxed));
                    joined.fetch_add(usize::from(took_part), Ordering::Relaxed);
                    took_part
                })
            })
            .collect();
        wait_for("two to take part", || joined.load(Ordering::Relaxed) == 2);
        thread::sleep(WATCH * 5);
        assert_eq!(joined.load(Ordering::Relaxed), 2, "two stand by");

        // One of those taking part is held up on an event: a third joins.
        let main = 4;
        rotation.begin(main);
        wait_for("a third to join", || joined.load(Ordering::Relaxed) == 3);
        assert_eq!(rotation.taking_part(), 3);
        // Back: the rotation is wider than it needs, and the first thread
        // done with an event leaves.
        assert!(rotation.end(main), "one leaves");
        assert!(!rotation.end(main), "only one");
        assert_eq!(rotation.taking_part(), 2);

        stop.store(true, Ordering::Relaxed);
        let took_part: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            took_part.iter().filter(|&&t| !t).count(),
            1,
            "the one still standing by ends at the stop"
        );
    }

    #[test]
    fn the_width_is_at_least_one_and_at_most_the_threads() {
        assert_eq!(Rotation::new(2, 8).width, 2);
        assert_eq!(Rotation::new(0, 0).width, 1);
        assert!(Rotation::cores() >= 1);
    }
}
