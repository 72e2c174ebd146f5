//! Stable error codes, and the one place where domain errors become HTTP
//! errors.
//!
//! Every error answer and every failed upload's status carries a `code`
//! beside its English `error`: clients match the code, which never changes
//! meaning, and may show the sentence. Each code has exactly one HTTP
//! status, so a code decides the status and the two cannot disagree.
//!
//! The pool, the identifier check, the multipart parser and its decoders
//! each have their own error type and know nothing of HTTP; the `From`
//! impls below are where each variant gets its code (and so its status).
//! Errors that exist only at the HTTP layer (an unknown path, a wrong
//! method) are made with [`HttpError::new`] where they are found, with
//! their code.

use std::fmt;
use std::io;

use crate::http::HttpError;
use crate::identifier::IdError;
use crate::multipart::{ContentTypeError, MultipartError};
use crate::pool::{PartialProblem, PoolError, is_disk_full};
use crate::transfer_encoding::DecodeError;

/// A stable, machine-readable reason for an error, as `"ERR_..."` text.
///
/// The granularity is what a client can act on: "the identifier is wrong"
/// and "the signature is wrong" need different fixes, while the dozen ways
/// a part's headers can be malformed all need the same one (fix the
/// client's form encoder), so they share [`ErrorCode::BadPartHeader`] and
/// the sentence says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No `X-Progress-ID` in the query or the headers.
    NoIdentifier,
    /// The identifier is malformed, or signed where the server has no key.
    BadIdentifier,
    /// The signature is wrong, or missing where the server requires one.
    Signature,
    /// `/upload/new` on a server that signs identifiers.
    NewIdRefused,
    /// An invalid JSONP `callback`.
    BadCallback,
    /// No endpoint at this path.
    NotFound,
    /// A method the endpoint does not take.
    Method,
    /// An upload is running under this identifier, or a resumable one is
    /// incomplete there (a new upload must not replace it).
    UploadRunning,
    /// An upload under this identifier is already complete.
    UploadComplete,
    /// The status under this identifier cannot be read.
    StatusUnreadable,
    /// No resumable upload to continue under this identifier: none was
    /// made, or it was cleared, expired or failed. Not [`ErrorCode::NotFound`]:
    /// both are 404, and a resumable client must tell "start the upload
    /// again" from "this endpoint does not exist" (where starting again
    /// would loop).
    UploadNotFound,
    /// A chunk of a resumable upload says it starts at another offset than
    /// the stored one; nothing was written.
    MismatchedOffset,
    /// A later request for the same resumable upload took it over (a
    /// client that reconnected while its old request still ran); this
    /// request stopped and kept what it had stored. tusd's code, and its
    /// status (400): the client that sent this one has gone on with the
    /// later request, which must not be fought for.
    UploadInterrupted,
    /// The request holding a resumable upload did not let go of it in
    /// time for this one (see [`crate::Pool::take_over`]); retry. 423, as
    /// tusd answers a locked upload.
    UploadLocked,
    /// A chunk's `Upload-Checksum` (or RFC 9530 `Content-Digest`) does not
    /// match its bytes; the chunk was
    /// discarded. 460, the status tusd answers it with, so that tus clients
    /// that know it retry the chunk.
    ChecksumMismatch,
    /// `Upload-Checksum` names an algorithm this server does not compute.
    UnsupportedChecksumAlgorithm,
    /// `Upload-Checksum` is not `<algorithm> <base64 digest>`, or the
    /// digest has the wrong length for its algorithm.
    BadChecksum,
    /// A form's body does not have the digest its RFC 9530 `Repr-Digest`
    /// (or `Content-Digest`) gives, or a resumable upload's whole file the
    /// one its completing request's `Repr-Digest` gives; the upload was
    /// removed. 400: nothing of it is kept to retry from.
    DigestMismatch,
    /// A final (concatenated) upload names a partial upload that is not in
    /// the pool (never made, cleared, expired).
    PartialNotFound,
    /// A final upload names a partial upload that is not complete.
    PartialIncomplete,
    /// A final upload names a partial upload that a request is writing.
    PartialRunning,
    /// A final upload names the same partial upload twice, or itself.
    PartialRepeated,
    /// A resumable upload that existed is gone: it expired (`max_age`
    /// after its last chunk) or failed. 410, where a never-made or deleted
    /// one is [`ErrorCode::UploadNotFound`] (404).
    UploadGone,
    /// A tus request without `Tus-Resumable: 1.0.0`.
    UnsupportedVersion,
    /// A chunk whose `Content-Type` is not `application/offset+octet-stream`.
    InvalidContentType,
    /// `Upload-Length` (or `Upload-Defer-Length`) missing, malformed, both
    /// given, or changed once known.
    InvalidUploadLength,
    /// `Upload-Offset` missing or malformed.
    InvalidOffset,
    /// IETF draft: `Upload-Complete` is not a structured boolean (`?0`,
    /// `?1`), or is given where the draft forbids it (offset retrieval,
    /// cancellation), or says complete where the bytes fall short.
    InvalidUploadComplete,
    /// `Upload-Metadata` malformed (a key twice, a value that is not
    /// base64 of UTF-8 text) or too large.
    InvalidMetadata,
    /// A chunk that goes past the upload's `Upload-Length`; nothing of it
    /// is kept.
    UploadSizeExceeded,
    /// A clear cancelled the upload while it ran.
    Cancelled,
    /// No `Content-Length` and not chunked.
    LengthRequired,
    /// `Content-Length` is not a non-negative integer.
    BadLength,
    /// The body is larger than `max_size`.
    TooLarge,
    /// The form's text fields, file names and types are too large.
    FormTooLarge,
    /// Not `multipart/form-data`.
    NotMultipart,
    /// The `Content-Type` has no usable boundary.
    BadBoundary,
    /// The body is not framed by the boundary.
    BadMultipart,
    /// A part's headers are malformed, contradictory or too long.
    BadPartHeader,
    /// A part's `Content-Transfer-Encoding` is unknown or its data does not
    /// decode.
    BadTransferEncoding,
    /// More parts than allowed.
    TooManyParts,
    /// The form has no file part.
    NoFile,
    /// The body ended, or could not be read, before the form was complete.
    Truncated,
    /// The web server aborted the request.
    Aborted,
    /// The body stalled longer than `body_timeout`, or came slower than
    /// `min_body_rate`.
    TooSlow,
    /// The web server's FastCGI records are malformed.
    BadFastcgi,
    /// The disk (or a quota, or a file size limit) is full.
    DiskFull,
    /// The pool cannot be used, or an I/O error in it.
    Storage,
    /// The service's settings are invalid.
    Config,
    /// The middleware application could not be started.
    AppStart,
    /// The middleware application's answer is not a CGI response.
    App,
    /// The process receiving the upload stopped before it finished.
    Interrupted,
    /// The daemon shut down before the upload finished.
    Shutdown,
    /// The daemon is receiving `max_uploads` uploads already.
    Busy,
    /// This server lost the upload's lock while it ran (a shared file
    /// system dropped it, as after a network partition): it stopped
    /// without writing the status, since another server may own the upload
    /// now. 503: the fault is this server's and passing; the client asks
    /// for the status (or a resumable upload's offset) and retries.
    LockLost,
    /// CORS: the request's `Origin` is not in `allowed_origins`.
    OriginNotAllowed,
    // Upload policies (src/policy.rs).
    /// The identifier's policy expired: no new upload or chunk under it.
    Expired,
    /// A file's declared type (or its first bytes) is not one the
    /// identifier's policy accepts.
    TypeNotAccepted,
    /// A form has more files than the identifier's policy allows.
    TooManyFiles,
    // Hooks (issue 13).
    /// The `on_create` hook refused the upload, or could not be run.
    Refused,
    /// A bug, or a system without randomness. (Keep it last: see the
    /// test `all_lists_every_variant`.)
    Internal,
}

impl ErrorCode {
    /// Every code, in the README's order.
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::NoIdentifier,
        ErrorCode::BadIdentifier,
        ErrorCode::Signature,
        ErrorCode::NewIdRefused,
        ErrorCode::BadCallback,
        ErrorCode::NotFound,
        ErrorCode::Method,
        ErrorCode::UploadRunning,
        ErrorCode::UploadComplete,
        ErrorCode::StatusUnreadable,
        ErrorCode::UploadNotFound,
        ErrorCode::MismatchedOffset,
        ErrorCode::UploadInterrupted,
        ErrorCode::UploadLocked,
        ErrorCode::ChecksumMismatch,
        ErrorCode::UnsupportedChecksumAlgorithm,
        ErrorCode::BadChecksum,
        ErrorCode::DigestMismatch,
        ErrorCode::PartialNotFound,
        ErrorCode::PartialIncomplete,
        ErrorCode::PartialRunning,
        ErrorCode::PartialRepeated,
        ErrorCode::UploadGone,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidContentType,
        ErrorCode::InvalidUploadLength,
        ErrorCode::InvalidOffset,
        ErrorCode::InvalidUploadComplete,
        ErrorCode::InvalidMetadata,
        ErrorCode::UploadSizeExceeded,
        ErrorCode::Cancelled,
        ErrorCode::LengthRequired,
        ErrorCode::BadLength,
        ErrorCode::TooLarge,
        ErrorCode::FormTooLarge,
        ErrorCode::NotMultipart,
        ErrorCode::BadBoundary,
        ErrorCode::BadMultipart,
        ErrorCode::BadPartHeader,
        ErrorCode::BadTransferEncoding,
        ErrorCode::TooManyParts,
        ErrorCode::NoFile,
        ErrorCode::Truncated,
        ErrorCode::Aborted,
        ErrorCode::TooSlow,
        ErrorCode::BadFastcgi,
        ErrorCode::DiskFull,
        ErrorCode::Storage,
        ErrorCode::Config,
        ErrorCode::AppStart,
        ErrorCode::App,
        ErrorCode::Interrupted,
        ErrorCode::Shutdown,
        ErrorCode::Busy,
        ErrorCode::LockLost,
        ErrorCode::OriginNotAllowed,
        ErrorCode::Expired,
        ErrorCode::TypeNotAccepted,
        ErrorCode::TooManyFiles,
        ErrorCode::Refused,
        ErrorCode::Internal,
    ];

    /// The code as clients see it: never changed once published.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoIdentifier => "ERR_NO_IDENTIFIER",
            ErrorCode::BadIdentifier => "ERR_BAD_IDENTIFIER",
            ErrorCode::Signature => "ERR_SIGNATURE",
            ErrorCode::NewIdRefused => "ERR_NEW_ID_REFUSED",
            ErrorCode::BadCallback => "ERR_BAD_CALLBACK",
            ErrorCode::NotFound => "ERR_NOT_FOUND",
            ErrorCode::Method => "ERR_METHOD",
            ErrorCode::UploadRunning => "ERR_UPLOAD_RUNNING",
            ErrorCode::UploadComplete => "ERR_UPLOAD_COMPLETE",
            ErrorCode::StatusUnreadable => "ERR_STATUS_UNREADABLE",
            ErrorCode::UploadNotFound => "ERR_UPLOAD_NOT_FOUND",
            ErrorCode::MismatchedOffset => "ERR_MISMATCHED_OFFSET",
            ErrorCode::UploadInterrupted => "ERR_UPLOAD_INTERRUPTED",
            ErrorCode::UploadLocked => "ERR_UPLOAD_LOCKED",
            ErrorCode::ChecksumMismatch => "ERR_CHECKSUM_MISMATCH",
            ErrorCode::UnsupportedChecksumAlgorithm => "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM",
            ErrorCode::BadChecksum => "ERR_BAD_CHECKSUM",
            ErrorCode::DigestMismatch => "ERR_DIGEST_MISMATCH",
            ErrorCode::PartialNotFound => "ERR_PARTIAL_NOT_FOUND",
            ErrorCode::PartialIncomplete => "ERR_PARTIAL_INCOMPLETE",
            ErrorCode::PartialRunning => "ERR_PARTIAL_RUNNING",
            ErrorCode::PartialRepeated => "ERR_PARTIAL_REPEATED",
            ErrorCode::UploadGone => "ERR_UPLOAD_GONE",
            ErrorCode::UnsupportedVersion => "ERR_UNSUPPORTED_VERSION",
            ErrorCode::InvalidContentType => "ERR_INVALID_CONTENT_TYPE",
            ErrorCode::InvalidUploadLength => "ERR_INVALID_UPLOAD_LENGTH",
            ErrorCode::InvalidOffset => "ERR_INVALID_OFFSET",
            ErrorCode::InvalidUploadComplete => "ERR_INVALID_UPLOAD_COMPLETE",
            ErrorCode::InvalidMetadata => "ERR_INVALID_METADATA",
            ErrorCode::UploadSizeExceeded => "ERR_UPLOAD_SIZE_EXCEEDED",
            ErrorCode::Cancelled => "ERR_CANCELLED",
            ErrorCode::LengthRequired => "ERR_LENGTH_REQUIRED",
            ErrorCode::BadLength => "ERR_BAD_LENGTH",
            ErrorCode::TooLarge => "ERR_TOO_LARGE",
            ErrorCode::FormTooLarge => "ERR_FORM_TOO_LARGE",
            ErrorCode::NotMultipart => "ERR_NOT_MULTIPART",
            ErrorCode::BadBoundary => "ERR_BAD_BOUNDARY",
            ErrorCode::BadMultipart => "ERR_BAD_MULTIPART",
            ErrorCode::BadPartHeader => "ERR_BAD_PART_HEADER",
            ErrorCode::BadTransferEncoding => "ERR_BAD_TRANSFER_ENCODING",
            ErrorCode::TooManyParts => "ERR_TOO_MANY_PARTS",
            ErrorCode::NoFile => "ERR_NO_FILE",
            ErrorCode::Truncated => "ERR_TRUNCATED",
            ErrorCode::Aborted => "ERR_ABORTED",
            ErrorCode::TooSlow => "ERR_TOO_SLOW",
            ErrorCode::BadFastcgi => "ERR_BAD_FASTCGI",
            ErrorCode::DiskFull => "ERR_DISK_FULL",
            ErrorCode::Storage => "ERR_STORAGE",
            ErrorCode::Config => "ERR_CONFIG",
            ErrorCode::AppStart => "ERR_APP_START",
            ErrorCode::App => "ERR_APP",
            ErrorCode::Interrupted => "ERR_INTERRUPTED",
            ErrorCode::Shutdown => "ERR_SHUTDOWN",
            ErrorCode::Busy => "ERR_BUSY",
            ErrorCode::LockLost => "ERR_LOCK_LOST",
            ErrorCode::OriginNotAllowed => "ERR_ORIGIN_NOT_ALLOWED",
            ErrorCode::Expired => "ERR_EXPIRED",
            ErrorCode::TypeNotAccepted => "ERR_TYPE_NOT_ACCEPTED",
            ErrorCode::TooManyFiles => "ERR_TOO_MANY_FILES",
            ErrorCode::Refused => "ERR_REFUSED",
            ErrorCode::Internal => "ERR_INTERNAL",
        }
    }

    /// The HTTP status this code is answered with (and recorded under
    /// `status` in a failed upload's status).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::NoIdentifier
            | ErrorCode::BadIdentifier
            | ErrorCode::BadCallback
            | ErrorCode::BadLength
            | ErrorCode::BadBoundary
            | ErrorCode::BadMultipart
            | ErrorCode::BadPartHeader
            | ErrorCode::BadTransferEncoding
            | ErrorCode::TooManyParts
            | ErrorCode::NoFile
            | ErrorCode::Truncated
            | ErrorCode::Aborted
            | ErrorCode::BadFastcgi
            | ErrorCode::UnsupportedChecksumAlgorithm
            | ErrorCode::BadChecksum
            | ErrorCode::DigestMismatch
            | ErrorCode::PartialNotFound
            | ErrorCode::PartialIncomplete
            | ErrorCode::PartialRepeated
            | ErrorCode::UploadInterrupted
            | ErrorCode::InvalidUploadLength
            | ErrorCode::InvalidOffset
            | ErrorCode::InvalidUploadComplete
            | ErrorCode::InvalidMetadata => 400,
            ErrorCode::Signature | ErrorCode::NewIdRefused => 403,
            ErrorCode::OriginNotAllowed => 403,
            ErrorCode::NotFound | ErrorCode::UploadNotFound => 404,
            ErrorCode::Method => 405,
            ErrorCode::UploadRunning
            | ErrorCode::UploadComplete
            | ErrorCode::StatusUnreadable
            | ErrorCode::MismatchedOffset
            | ErrorCode::PartialRunning => 409,
            ErrorCode::TooSlow => 408,
            ErrorCode::Cancelled | ErrorCode::UploadGone => 410,
            ErrorCode::UnsupportedVersion => 412,
            ErrorCode::LengthRequired => 411,
            ErrorCode::TooLarge | ErrorCode::FormTooLarge | ErrorCode::UploadSizeExceeded => 413,
            ErrorCode::NotMultipart | ErrorCode::InvalidContentType => 415,
            ErrorCode::UploadLocked => 423,
            // Not an IANA status: tus's checksum extension defines it.
            ErrorCode::ChecksumMismatch => 460,
            ErrorCode::Storage
            | ErrorCode::Config
            | ErrorCode::AppStart
            | ErrorCode::Interrupted
            | ErrorCode::Internal => 500,
            ErrorCode::App => 502,
            ErrorCode::Shutdown | ErrorCode::Busy | ErrorCode::LockLost => 503,
            ErrorCode::Refused => 403,
            ErrorCode::DiskFull => 507,
            ErrorCode::Expired => 403,
            ErrorCode::TypeNotAccepted => 415,
            ErrorCode::TooManyFiles => 400,
        }
    }

    /// The code named by `text`, if it is one of ours.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&PoolError> for ErrorCode {
    /// A conflict with another upload (or with a status that cannot be
    /// read, which may be a complete upload's, or with the stored offset)
    /// is 409, nothing to resume 404, a cancelled upload 410, a full disk
    /// 507; a pool call the upload's kind does not allow is a bug (500);
    /// anything else is the pool's setup or an I/O error (500).
    fn from(err: &PoolError) -> ErrorCode {
        match err {
            PoolError::Busy | PoolError::InProgress => ErrorCode::UploadRunning,
            PoolError::Complete => ErrorCode::UploadComplete,
            PoolError::NotFound => ErrorCode::UploadNotFound,
            PoolError::OffsetMismatch { .. } => ErrorCode::MismatchedOffset,
            PoolError::Misuse(_) => ErrorCode::Internal,
            PoolError::Unreadable(_) => ErrorCode::StatusUnreadable,
            PoolError::Cancelled => ErrorCode::Cancelled,
            PoolError::Superseded => ErrorCode::UploadInterrupted,
            PoolError::Locked => ErrorCode::UploadLocked,
            PoolError::LockLost => ErrorCode::LockLost,
            PoolError::Partial { problem, .. } => match problem {
                PartialProblem::Missing => ErrorCode::PartialNotFound,
                PartialProblem::Incomplete => ErrorCode::PartialIncomplete,
                PartialProblem::Running => ErrorCode::PartialRunning,
                PartialProblem::Repeated => ErrorCode::PartialRepeated,
                PartialProblem::Unreadable(_) => ErrorCode::StatusUnreadable,
                PartialProblem::Damaged(_) => ErrorCode::Storage,
            },
            PoolError::Io { source, .. } if is_disk_full(source) => ErrorCode::DiskFull,
            PoolError::Missing(_) | PoolError::Unusable { .. } | PoolError::Io { .. } => {
                ErrorCode::Storage
            }
        }
    }
}

impl From<PoolError> for HttpError {
    fn from(err: PoolError) -> HttpError {
        HttpError::new(ErrorCode::from(&err), err.to_string())
    }
}

impl From<&IdError> for ErrorCode {
    /// 403 when the signature is wrong or missing, 400 when the text itself
    /// is (a signature the server cannot check is the client's mistake).
    fn from(err: &IdError) -> ErrorCode {
        match err {
            IdError::Malformed
            | IdError::UnexpectedSignature
            | IdError::PolicyWithoutKey
            | IdError::BadPolicy(_) => ErrorCode::BadIdentifier,
            IdError::Unsigned | IdError::BadSignature | IdError::UnsignedPolicy => {
                ErrorCode::Signature
            }
        }
    }
}

impl From<IdError> for HttpError {
    fn from(err: IdError) -> HttpError {
        HttpError::new(ErrorCode::from(&err), err.to_string())
    }
}

impl From<&ContentTypeError> for ErrorCode {
    fn from(err: &ContentTypeError) -> ErrorCode {
        match err {
            ContentTypeError::NotMultipart(_) => ErrorCode::NotMultipart,
            ContentTypeError::NoBoundary | ContentTypeError::BadBoundary => ErrorCode::BadBoundary,
        }
    }
}

impl From<ContentTypeError> for HttpError {
    fn from(err: ContentTypeError) -> HttpError {
        HttpError::new(ErrorCode::from(&err), err.to_string())
    }
}

impl From<&DecodeError> for ErrorCode {
    fn from(_: &DecodeError) -> ErrorCode {
        ErrorCode::BadTransferEncoding
    }
}

impl From<&MultipartError> for ErrorCode {
    /// A read error means the body could not be had in full. (A body that
    /// failed for a reason of its own, such as the size limit or a FastCGI
    /// abort, records that reason as a typed error beside the read error:
    /// see [`crate::http::Body::failure`] and [`crate::receiving::run`].)
    fn from(err: &MultipartError) -> ErrorCode {
        match err {
            MultipartError::NoBoundary | MultipartError::BadDelimiter => ErrorCode::BadMultipart,
            MultipartError::Truncated => ErrorCode::Truncated,
            MultipartError::HeaderTooLong
            | MultipartError::BadHeader
            | MultipartError::NoDisposition
            | MultipartError::NotFormData
            | MultipartError::BadDisposition
            | MultipartError::DuplicateHeader(_)
            | MultipartError::DuplicateParameter(_)
            | MultipartError::BadContinuation => ErrorCode::BadPartHeader,
            MultipartError::UnknownTransferEncoding(_) => ErrorCode::BadTransferEncoding,
            MultipartError::Decode(err) => ErrorCode::from(err),
            MultipartError::Io(_) => ErrorCode::Truncated,
        }
    }
}

/// A storage error while writing an upload's data: 507 when the disk is
/// full, else 500.
pub fn store_error(err: io::Error) -> HttpError {
    // A fenced data file's write refused by the pool (a lost lock).
    if let Some(pool) = err.get_ref().and_then(|e| e.downcast_ref::<PoolError>()) {
        return HttpError::new(ErrorCode::from(pool), pool.to_string());
    }
    if is_disk_full(&err) {
        HttpError::new(ErrorCode::DiskFull, format!("the disk is full: {err}"))
    } else {
        HttpError::new(
            ErrorCode::Storage,
            format!("cannot store the upload: {err}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(text.starts_with("ERR_"), "{text}");
            assert!(
                text[4..]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{text}"
            );
            assert_eq!(ErrorCode::parse(text), Some(*code));
            assert!((400..600).contains(&code.status()), "{text}");
        }
        assert_eq!(ErrorCode::parse("ERR_NOPE"), None);
    }

    /// `ALL` is every variant, in declaration order: with `Internal` kept
    /// last, a variant added anywhere without adding it to `ALL` makes the
    /// lengths differ.
    #[test]
    fn all_lists_every_variant() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
        assert_eq!(ErrorCode::ALL.len(), ErrorCode::Internal as usize + 1);
    }

    #[test]
    fn domain_errors_keep_their_statuses() {
        let pool = |e: PoolError| ErrorCode::from(&e).status();
        assert_eq!(pool(PoolError::Busy), 409);
        assert_eq!(pool(PoolError::Complete), 409);
        assert_eq!(pool(PoolError::Unreadable("x".into())), 409);
        assert_eq!(pool(PoolError::Cancelled), 410);
        assert_eq!(pool(PoolError::InProgress), 409);
        assert_eq!(
            ErrorCode::from(&PoolError::NotFound),
            ErrorCode::UploadNotFound
        );
        assert_eq!(pool(PoolError::NotFound), 404);
        let mismatch = PoolError::OffsetMismatch {
            stored: 3,
            given: 5,
        };
        assert_eq!(ErrorCode::from(&mismatch), ErrorCode::MismatchedOffset);
        assert_eq!(pool(mismatch), 409);
        assert_eq!(pool(PoolError::Misuse("x")), 500);
        assert_eq!(
            ErrorCode::from(&PoolError::LockLost).as_str(),
            "ERR_LOCK_LOST"
        );
        assert_eq!(pool(PoolError::LockLost), 503);
        let full = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let io = |source| PoolError::Io {
            context: "write".into(),
            source,
        };
        assert_eq!(ErrorCode::from(&io(full)), ErrorCode::DiskFull);
        assert_eq!(pool(io(io::Error::other("x"))), 500);
        assert_eq!(ErrorCode::from(&IdError::Malformed).status(), 400);
        assert_eq!(ErrorCode::from(&IdError::UnexpectedSignature).status(), 400);
        assert_eq!(ErrorCode::from(&IdError::Unsigned).status(), 403);
        assert_eq!(ErrorCode::from(&IdError::BadSignature).status(), 403);
        let not = ContentTypeError::NotMultipart("text/plain".into());
        assert_eq!(ErrorCode::from(&not).status(), 415);
        assert_eq!(ErrorCode::from(&ContentTypeError::NoBoundary).status(), 400);
    }

    #[test]
    fn a_read_error_is_a_truncation() {
        // Even one that wraps an HttpError: no code is recovered from an
        // io::Error's payload.
        let inner = HttpError::new(ErrorCode::TooLarge, "too large");
        let err = MultipartError::Io(io::Error::other(inner));
        assert_eq!(ErrorCode::from(&err), ErrorCode::Truncated);
        let plain = MultipartError::Io(io::Error::other("reset"));
        assert_eq!(ErrorCode::from(&plain), ErrorCode::Truncated);
        assert_eq!(
            ErrorCode::from(&MultipartError::Decode(DecodeError::Base64Padding)),
            ErrorCode::BadTransferEncoding
        );
    }
}
