//! The daemon's log of what peers do wrong: one line per kind of trouble
//! at most once a second.
//!
//! A peer sending garbage, or a full file table failing every accept, would
//! otherwise write a line per record or per try and fill the disk; what an
//! administrator needs is that it happens and how often, which the count of
//! lines held back says.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Prints a line on stderr at most once a second per kind, saying how many
/// were held back.
pub(super) struct RateLimitedLog {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
    /// The test hook ([`super::testing::serve_bytes`], fuzzing) logs
    /// nothing.
    quiet: bool,
}

impl RateLimitedLog {
    pub(super) fn new(quiet: bool) -> RateLimitedLog {
        RateLimitedLog {
            last: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    pub(super) fn log(&self, kind: &'static str, message: &str) {
        if self.quiet {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = last
            .entry(kind)
            .or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) < Duration::from_secs(1) {
            entry.1 += 1;
            return;
        }
        let held_back = std::mem::take(&mut entry.1);
        entry.0 = now;
        if held_back > 0 {
            crate::log!("{message} ({held_back} more like it not shown)");
        } else {
            crate::log!("{message}");
        }
    }
}
