//! RFC 9530's integrity fields, as a receiver checks them: `Repr-Digest`
//! and `Content-Digest`, a Structured Fields dictionary of an algorithm's
//! key and the digest as a byte sequence (`sha-256=:<base64>:`).
//!
//! Of the algorithms RFC 9530 registers, `sha-256` and `sha-512` are the
//! two it calls active; the rest (`md5`, `sha`, `crc32c`, ...) it
//! deprecates, and members naming them, or any algorithm not registered,
//! are ignored, as the RFC lets a recipient do. A field that names neither
//! active algorithm checks nothing. When it names both, `sha-512` is the
//! one checked (the stronger; one is enough to tell a damaged body).
//!
//! What a digest covers is the protocol's to say (see the README): for a
//! form upload, the request body as sent; for a resumable upload's chunk,
//! that chunk's bytes. Nothing here knows the body.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::checksum::{Algorithm, Expected};
use crate::error_code::ErrorCode;
use crate::http::HttpError;

/// Longest field worth parsing: both active digests with their keys are
/// under 150 bytes; a client listing the deprecated ones too, under 400.
const MAX_FIELD: usize = 1024;

/// The digest `field` (its header name, for messages) asks the bytes to
/// have, of the strongest active algorithm it lists; `None` when it lists
/// none. A value that is not a dictionary of byte sequences, or a digest of
/// the wrong length for its algorithm, is 400 `ERR_BAD_CHECKSUM`.
pub fn parse(field: &'static str, value: &str) -> Result<Option<Expected>, HttpError> {
    let bad = |why: String| {
        HttpError::new(
            ErrorCode::BadChecksum,
            format!("{field} must be a list of <algorithm>=:<base64 digest>: ({why})"),
        )
    };
    if value.len() > MAX_FIELD {
        return Err(bad(format!("it is over {MAX_FIELD} bytes")));
    }
    let mut chosen: Option<Expected> = None;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        let Some((key, rest)) = member.split_once('=') else {
            return Err(bad(format!("{member:?} has no value")));
        };
        let valid_key = key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*')
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c));
        if !valid_key {
            return Err(bad(format!("{key:?} is not a key")));
        }
        // A byte sequence, maybe followed by parameters, which no
        // algorithm here has and which are ignored.
        let Some(encoded) = rest
            .strip_prefix(':')
            .and_then(|r| r.split_once(':'))
            .filter(|(_, after)| after.is_empty() || after.starts_with(';'))
            .map(|(encoded, _)| encoded)
        else {
            return Err(bad(format!("the value of {key} is not a :byte sequence:")));
        };
        let digest = STANDARD
            .decode(encoded)
            .map_err(|e| bad(format!("the value of {key} is not base64 ({e})")))?;
        let algorithm = match key {
            "sha-512" => Algorithm::Sha512,
            "sha-256" => Algorithm::Sha256,
            _ => continue,
        };
        if digest.len() != algorithm.digest_len() {
            return Err(bad(format!(
                "the {key} digest is {} bytes, not {}",
                digest.len(),
                algorithm.digest_len()
            )));
        }
        let stronger = match &chosen {
            None => true,
            Some(held) => held.algorithm == Algorithm::Sha256 && algorithm == Algorithm::Sha512,
        };
        if stronger {
            chosen = Some(Expected {
                algorithm,
                digest,
                header: field,
            });
        }
    }
    Ok(chosen)
}

/// What a resumable upload's chunk must hash to: tus's `Upload-Checksum`
/// or RFC 9530's `Content-Digest` (the chunk is the message's content).
/// Both at once is 400 `ERR_BAD_CHECKSUM`: one chunk, one digest to check,
/// and a client that sends two has no use for hearing which one failed.
pub fn chunk_checksum(
    upload_checksum: Option<&str>,
    content_digest: Option<&str>,
) -> Result<Option<Expected>, HttpError> {
    let checksum = upload_checksum
        .map(crate::checksum::parse_upload_checksum)
        .transpose()?;
    let digest = match content_digest {
        Some(value) => parse("Content-Digest", value)?,
        None => None,
    };
    match (checksum, digest) {
        (Some(_), Some(_)) => Err(HttpError::new(
            ErrorCode::BadChecksum,
            "a chunk may have an Upload-Checksum or a Content-Digest, not both",
        )),
        (checksum, digest) => Ok(checksum.or(digest)),
    }
}

/// The answer to a form's body, or a resumable upload's whole file, that
/// does not have the digest its `Repr-Digest` (or `Content-Digest`) gives:
/// 400 `ERR_DIGEST_MISMATCH`, the upload removed. `what` names it.
pub fn mismatch(expected: &Expected, what: &str) -> HttpError {
    HttpError::new(
        ErrorCode::DigestMismatch,
        format!(
            "the {what} does not have the {} digest its {} gives; the upload was removed",
            expected.algorithm.name(),
            expected.header
        ),
    )
}

/// The `Repr-Digest` a resumable upload's chunk carries for the whole
/// upload, if it names an active algorithm.
pub fn repr_digest(value: Option<&str>) -> Result<Option<Expected>, HttpError> {
    match value {
        Some(value) => parse("Repr-Digest", value),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // base64 of SHA-256("abc") and SHA-512("abc") (FIPS 180-2's vectors).
    const SHA256_ABC: &str = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
    const SHA512_ABC: &str =
        "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==";

    fn digest_of(expected: &Expected) -> String {
        STANDARD.encode(&expected.digest)
    }

    #[test]
    fn the_strongest_active_algorithm_is_chosen_and_others_ignored() {
        let one = parse("Repr-Digest", &format!("sha-256=:{SHA256_ABC}:"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (one.algorithm, digest_of(&one)),
            (Algorithm::Sha256, SHA256_ABC.into())
        );
        let both = parse(
            "Content-Digest",
            &format!(
                "sha-256=:{SHA256_ABC}:, md5=:kAFQmDzST7DWlj99KOF/cg==:,sha-512=:{SHA512_ABC}:;x=1"
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.algorithm, Algorithm::Sha512);
        assert_eq!(both.header, "Content-Digest");
        assert_eq!(digest_of(&both), SHA512_ABC);
        assert_eq!(
            parse(
                "Repr-Digest",
                "md5=:kAFQmDzST7DWlj99KOF/cg==:, crc32c=:NkuGtw==:"
            )
            .unwrap(),
            None,
            "deprecated algorithms check nothing"
        );
    }

    #[test]
    fn malformed_fields_are_400_bad_checksum() {
        for value in [
            "",
            "sha-256",
            &format!("sha-256={SHA256_ABC}"),
            &format!("sha-256=:{SHA256_ABC}"),
            &format!("SHA-256=:{SHA256_ABC}:"),
            "sha-256=:!!!!:",
            "sha-256=:kAFQmDzST7DWlj99KOF/cg==:",
            &format!("sha-512=:{SHA256_ABC}:"),
            &format!("sha-256=:{SHA256_ABC}:x"),
            &"a".repeat(MAX_FIELD + 1),
        ] {
            let err = parse("Repr-Digest", value).unwrap_err();
            assert_eq!(
                (err.code, err.status()),
                (ErrorCode::BadChecksum, 400),
                "{value:?}"
            );
        }
    }
}
