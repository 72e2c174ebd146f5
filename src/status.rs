//! The status document: what `status.json` holds and what a status query
//! answers.
//!
//! The keys are the Python original's (`identifier`, `filename`,
//! `content-type`, `state`, `size`, `received`, `error`) plus `status`, the
//! HTTP status of a failed upload under the key nginx's upload-progress
//! module uses, so its existing clients can read it, and `code`, its stable
//! error code (see [`crate::error_code`]). Everything a client
//! needs for a progress bar is here: `received` against `size` and the
//! `started`/`updated` times for rate and ETA.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Nothing is known under this identifier yet: the upload may not have
    /// begun.
    Starting,
    /// Bytes are arriving.
    Uploading,
    /// A resumable upload that has some (maybe none) of its bytes and waits
    /// for the rest: `received` is the stored offset. It is not running and
    /// not dead, whether or not a request is adding to it right now.
    ///
    /// A state of its own, not `uploading` with a flag, because the pool
    /// reads `uploading` with a free lock as "the receiver died"
    /// (interrupted, its files replaceable by the next upload), and a paused
    /// resumable upload has a free lock by design. A program that only knows
    /// the four older states, reading a pool shared with this one, fails to
    /// parse `incomplete` and so refuses to touch the bucket (its status is
    /// unreadable) instead of taking it for a dead upload and wiping it.
    /// An upload in this state is only ever made by a resumable protocol;
    /// form uploads never show it.
    Incomplete,
    /// All files are stored.
    Done,
    /// The upload failed; `error` says why.
    Error,
}

/// One stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The form field the file came in.
    pub field: String,
    /// The file name the client sent, kept as metadata only (never a path).
    pub filename: String,
    /// The part's `Content-Type`, `application/octet-stream` when absent.
    #[serde(rename = "content-type")]
    pub content_type: String,
    /// Bytes stored so far.
    pub size: u64,
    /// Lowercase hex SHA-256 of the stored bytes, once the file is complete
    /// (absent while uploading, or when hashing is turned off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The other checksums the `checksums` setting lists, lowercase hex
    /// like `sha256` (CRC-32C as its four bytes big-endian), once the file
    /// is complete; absent when not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Absolute path of the stored data.
    pub path: String,
}

/// The status of one upload.
///
/// An unknown identifier has the status `{"state": "starting"}`: every
/// optional key is left out. Once an upload has begun, `files` and `fields`
/// are always present (possibly empty) so a client can index them without
/// checking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    pub state: State,
    /// Why the upload failed (state `error` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The HTTP status the failed upload was answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The stable error code (an [`ErrorCode`]'s text) the failed upload
    /// was answered with. Text, not the enum: a status written by a newer
    /// version sharing the pool may hold a code this one does not know,
    /// and must still be readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Name of the first file, as the original reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Content type of the first file.
    #[serde(
        rename = "content-type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    /// Length of the whole request body, when the client announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Request body bytes received so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    /// Unix time (seconds) the upload began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Unix time (seconds) of the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// The upload arrives in several requests (tus): kept in the stored
    /// status, so that the protocol can tell its uploads from form uploads
    /// under the same identifiers, and a deferred length (`size` absent)
    /// from a form whose length was never known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumable: bool,
    /// A resumable upload's stored offset, in a status answer only (see
    /// [`crate::resumable::public_status`]): the data file's length, which
    /// is the truth after a crash, where `received` on disk is only as
    /// fresh as its last rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// When an incomplete resumable upload expires (Unix seconds: its last
    /// change plus `max_age`), in a status answer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// A part of a concatenated upload (tus `Upload-Concat: partial`):
    /// complete when its bytes are, but never handed to an application,
    /// and removed once a final upload is made of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// The identifiers of the partial uploads a final (concatenated)
    /// upload was made of, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileInfo>>,
    /// Ordinary (non-file) form fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
}

impl Status {
    /// The answer for an identifier nothing is known about.
    pub fn starting() -> Status {
        Status {
            identifier: None,
            state: State::Starting,
            error: None,
            status: None,
            code: None,
            filename: None,
            content_type: None,
            size: None,
            received: None,
            started: None,
            updated: None,
            resumable: false,
            offset: None,
            expires: None,
            partial: false,
            parts: None,
            files: None,
            fields: None,
        }
    }

    /// A fresh upload: nothing received yet.
    pub fn uploading(identifier: &str, size: Option<u64>, now: u64) -> Status {
        Status {
            identifier: Some(identifier.to_owned()),
            state: State::Uploading,
            size,
            received: Some(0),
            started: Some(now),
            updated: Some(now),
            files: Some(Vec::new()),
            fields: Some(BTreeMap::new()),
            ..Status::starting()
        }
    }

    /// A new resumable upload: nothing stored yet. `size` is the length the
    /// client announced (absent while it defers it).
    pub fn incomplete(identifier: &str, size: Option<u64>, now: u64) -> Status {
        Status {
            state: State::Incomplete,
            resumable: true,
            ..Status::uploading(identifier, size, now)
        }
    }

    /// Marks the upload failed, with the code (and so the HTTP status)
    /// its request got.
    pub fn fail(&mut self, code: ErrorCode, message: impl Into<String>, now: u64) {
        self.state = State::Error;
        self.error = Some(message.into());
        self.status = Some(code.status());
        self.code = Some(code.as_str().to_owned());
        self.updated = Some(now);
    }

    /// The stored files (empty for an upload that has not begun).
    pub fn files(&self) -> &[FileInfo] {
        self.files.as_deref().unwrap_or_default()
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("status serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_is_just_the_state() {
        assert_eq!(Status::starting().to_json(), r#"{"state":"starting"}"#);
    }

    #[test]
    fn uploading_has_every_key_a_progress_bar_needs() {
        let status = Status::uploading("abc", Some(10), 1700000000);
        let value: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        for key in [
            "identifier",
            "state",
            "size",
            "received",
            "started",
            "updated",
        ] {
            assert!(value.get(key).is_some(), "{key} missing in {value}");
        }
        assert_eq!(value["files"], serde_json::json!([]));
        assert_eq!(value["fields"], serde_json::json!({}));
    }

    #[test]
    fn incomplete_is_its_own_state_in_the_json() {
        let status = Status::incomplete("abc", None, 5);
        let json = status.to_json();
        assert!(json.contains(r#""state":"incomplete""#), "{json}");
        assert!(json.contains(r#""received":0"#), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }

    #[test]
    fn round_trips_with_original_key_names() {
        let mut status = Status::uploading("abc", None, 5);
        status.filename = Some("a.txt".into());
        status.content_type = Some("text/plain".into());
        status.fail(ErrorCode::TooLarge, "too large", 6);
        let json = status.to_json();
        assert!(json.contains(r#""content-type":"text/plain""#), "{json}");
        assert!(json.contains(r#""status":413"#), "{json}");
        assert!(json.contains(r#""code":"ERR_TOO_LARGE""#), "{json}");
        assert!(json.contains(r#""state":"error""#), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }
}
