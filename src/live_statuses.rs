//! The statuses of the form uploads this process is receiving, kept in
//! memory beside `status.json`, so that a status poll for one of them
//! reads no file.
//!
//! Why: polls are the most frequent request, and the common one asks about
//! an upload in flight on the same host, usually in the same daemon (one
//! per host behind the web server). Read from the pool, such a poll opens,
//! checks and reads `status.json`, then opens and tries the lock to tell a
//! live upload from one whose receiver died: ten system calls, most of the
//! poll's cost. The receiver already knows both answers: the status it
//! last wrote, and that it is alive.
//!
//! What is answered stays what the pool says, only cheaper:
//! - the status kept is the one last written to `status.json`, replaced
//!   only once the file is, so a poll here and a poll on another host read
//!   the same document;
//! - the pool answers with it only after looking at the bucket by its path
//!   (one `lstat`): if it is gone or another folder (cleared by any process
//!   or host, or made anew since), the poll reads the pool as before;
//! - the entry is dropped when its upload ends (after its last status is
//!   written) and when it finds its lock lost: from then on the pool,
//!   where another host may have taken over, is the answer.
//!
//! Resumable uploads are not kept: their stored offset is the data file's
//! length, which a poll must read anyway. Each [`crate::pool::Pool`] has
//! its own table (its clones share it), so a second `Pool` on the same
//! folder sees only the files, as another process does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::status::Status;

/// The kept statuses, by bucket name.
///
/// The writers are uploads' threads, which run at nice 19 and may lose the
/// CPU for long on a busy machine; the readers are polls. So a lock a
/// writer takes must never be one a poll then waits on for a whole time
/// slice: the table is locked for writing only when an upload starts and
/// ends, and each progress update replaces one upload's status by swapping
/// a pointer under that upload's own lock (the old status is freed after).
#[derive(Debug, Default)]
pub(crate) struct LiveStatuses {
    entries: RwLock<HashMap<String, Arc<Live>>>,
}

/// One upload's kept status.
#[derive(Debug)]
pub(crate) struct Live {
    /// The bucket's (device, inode) when the upload claimed it.
    identity: (u64, u64),
    status: Mutex<Arc<Status>>,
}

impl LiveStatuses {
    /// Starts keeping `status`, just written to `status.json` of the
    /// bucket `name` claimed as `identity`; the upload then replaces it
    /// through [`Live::wrote`] and ends it with [`LiveStatuses::forget`].
    pub(crate) fn keep(&self, name: &str, identity: (u64, u64), status: &Status) -> Arc<Live> {
        let live = Arc::new(Live {
            identity,
            status: Mutex::new(Arc::new(status.clone())),
        });
        let key = name.to_owned();
        let replaced = self.write().insert(key, Arc::clone(&live));
        drop(replaced);
        live
    }

    /// Forgets the bucket `name` if it is still the one claimed as
    /// `identity` (a later claim in this process has its own entry).
    pub(crate) fn forget(&self, name: &str, identity: (u64, u64)) {
        let removed = {
            let mut entries = self.write();
            match entries.get(name) {
                Some(live) if live.identity == identity => entries.remove(name),
                _ => None,
            }
        };
        drop(removed);
    }

    /// The kept status of the bucket `name`, if this process is receiving
    /// it, with the (device, inode) of the folder it claimed: the caller
    /// must check the folder at that name is still that one.
    pub(crate) fn status(&self, name: &str) -> Option<((u64, u64), Arc<Status>)> {
        let live = Arc::clone(
            self.entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)?,
        );
        let status = Arc::clone(&live.status.lock().unwrap_or_else(PoisonError::into_inner));
        Some((live.identity, status))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Live>>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Live {
    /// Replaces the kept status with `status`, just written to the file.
    pub(crate) fn wrote(&self, status: &Status) {
        let new = Arc::new(status.clone());
        let old = std::mem::replace(
            &mut *self.status.lock().unwrap_or_else(PoisonError::into_inner),
            new,
        );
        drop(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(live: &LiveStatuses, name: &str) -> Option<((u64, u64), Status)> {
        live.status(name)
            .map(|(identity, status)| (identity, Status::clone(&status)))
    }

    #[test]
    fn a_kept_status_is_replaced_by_each_write_and_gone_when_forgotten() {
        let live = LiveStatuses::default();
        let status = Status::uploading("b", Some(10), 1);
        assert_eq!(kept(&live, "b"), None, "nothing kept yet");
        let entry = live.keep("b", (1, 2), &status);
        assert_eq!(kept(&live, "b"), Some(((1, 2), status.clone())));
        let mut later = status.clone();
        later.received = Some(5);
        entry.wrote(&later);
        assert_eq!(kept(&live, "b"), Some(((1, 2), later)));
        assert_eq!(kept(&live, "other"), None);
        live.forget("b", (1, 2));
        assert_eq!(kept(&live, "b"), None);
    }

    #[test]
    fn forgetting_leaves_a_later_claim_alone() {
        let live = LiveStatuses::default();
        let status = Status::uploading("b", None, 1);
        live.keep("b", (1, 2), &status);
        live.forget("b", (1, 3));
        assert_eq!(kept(&live, "b"), Some(((1, 2), status)), "not that claim's");
    }
}
