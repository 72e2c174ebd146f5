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
//! - a poll first looks at the bucket by its path (one `lstat`): if it is
//!   gone or another folder (cleared by any process or host, or made anew
//!   since), the poll reads the pool as before;
//! - the entry is dropped when its upload ends (after its last status is
//!   written) and when it finds its lock lost: from then on the pool,
//!   where another host may have taken over, is the answer.
//!
//! Resumable uploads are not kept: their stored offset is the data file's
//! length, which a poll must read anyway. Each [`crate::pool::Pool`] has
//! its own table (its clones share it), so a second `Pool` on the same
//! folder sees only the files, as another process does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustix::fs::{AtFlags, CWD};

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

    /// The kept status of the bucket `name` in the pool at `dir`, if this
    /// process is receiving it and the folder at that path is still the one
    /// it claimed.
    pub(crate) fn status(&self, dir: &Path, name: &str) -> Option<Status> {
        let live = Arc::clone(
            self.entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)?,
        );
        let status = Arc::clone(&live.status.lock().unwrap_or_else(PoisonError::into_inner));
        let found = rustix::fs::statat(CWD, dir.join(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        let found = (found.st_dev as u64, found.st_ino as u64);
        (found == live.identity).then(|| Status::clone(&status))
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

    fn identity(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.dev(), meta.ino())
    }

    #[test]
    fn a_kept_status_is_answered_only_while_its_folder_is_the_one_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("b");
        std::fs::create_dir(&bucket).unwrap();
        let live = LiveStatuses::default();
        let claimed = identity(&bucket);
        let status = Status::uploading("b", Some(10), 1);
        assert_eq!(live.status(dir.path(), "b"), None, "nothing kept yet");
        let kept = live.keep("b", claimed, &status);
        assert_eq!(live.status(dir.path(), "b"), Some(status.clone()));
        let mut later = status.clone();
        later.received = Some(5);
        kept.wrote(&later);
        assert_eq!(live.status(dir.path(), "b"), Some(later));
        assert_eq!(live.status(dir.path(), "other"), None);

        // Cleared (renamed away) and made anew: another folder.
        std::fs::rename(&bucket, dir.path().join("trash")).unwrap();
        assert_eq!(live.status(dir.path(), "b"), None, "folder gone");
        std::fs::create_dir(&bucket).unwrap();
        assert_eq!(live.status(dir.path(), "b"), None, "another folder");

        // A link put in its place is not followed to the claimed folder.
        std::fs::remove_dir(&bucket).unwrap();
        std::os::unix::fs::symlink(dir.path().join("trash"), &bucket).unwrap();
        assert_eq!(live.status(dir.path(), "b"), None, "a link");
    }

    #[test]
    fn forgetting_leaves_a_later_claim_alone() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("b");
        std::fs::create_dir(&bucket).unwrap();
        let live = LiveStatuses::default();
        let now = identity(&bucket);
        let status = Status::uploading("b", None, 1);
        live.keep("b", now, &status);
        live.forget("b", (now.0, now.1 + 1));
        assert_eq!(
            live.status(dir.path(), "b"),
            Some(status),
            "not that claim's"
        );
        live.forget("b", now);
        assert_eq!(live.status(dir.path(), "b"), None);
    }
}
