//! Upload policies: limits the application signs into an identifier.
//!
//! A plain signed identifier says only "the application issued this"; one
//! copied out of a page could upload anything, of any size, forever. A
//! policy adds what the application allows (an expiry, a size, the
//! accepted media types, a number of files), and because the signature
//! covers it, a client cannot loosen it without the key.
//!
//! # Encoding
//!
//! A policy identifier is `<name>.<policy>:<signature>`: `<name>` is the
//! upload's folder as for any identifier, `<policy>` the policy's bytes in
//! unpadded base64url (`[A-Za-z0-9_-]`, so the identifier stays safe in a
//! path, a query and a header without escaping), and the signature the
//! HMAC-SHA256 of `<name>.<policy>`. The bytes are a small stable format,
//! not JSON, so that one encoding only is ever signed and the identifier
//! stays short:
//!
//! ```text
//! version (1 byte, = 1) | fields present (1 byte: 1 expires, 2 size_limit,
//! 4 file_limit, 8 accept) | expires (u64 BE) | size_limit (u64 BE) |
//! file_limit (u32 BE) | accept (1 byte length, then the comma-joined list)
//! ```
//!
//! each field only when its bit is set, in that order. Decoding refuses an
//! unknown version or bit, a missing or extra byte and any field out of
//! range, so a policy has one encoding and a reader never guesses.
//! [`MAX_POLICY_BYTES`] bounds the whole, and with it the identifier
//! ([`MAX_POLICY_TEXT`], [`crate::identifier::MAX_IDENTIFIER_LEN`]).
//!
//! # Enforcement
//!
//! The protocols enforce a policy ([`crate::upload`] for forms,
//! [`crate::resumable`] for tus and the IETF draft), never the transports,
//! with the helpers here: [`check_expiry`] at the start of each upload and
//! chunk, [`limited`] to fold `size_limit` into the server's `max_size`
//! (the smaller applies, through the same code), [`Policy::check_type`] for
//! a declared type and [`Signature`] for a file's first bytes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error_code::ErrorCode;
use crate::http::HttpError;
use crate::receiving::Options;

/// The format's version byte. A new format gets a new number, and this
/// server refuses what it does not know rather than misreading it.
const VERSION: u8 = 1;
const HAS_EXPIRES: u8 = 1;
const HAS_SIZE_LIMIT: u8 = 2;
const HAS_FILE_LIMIT: u8 = 4;
const HAS_ACCEPT: u8 = 8;
const KNOWN_FIELDS: u8 = HAS_EXPIRES | HAS_SIZE_LIMIT | HAS_FILE_LIMIT | HAS_ACCEPT;

/// Largest policy, in bytes before base64: the fixed fields (22 bytes) and
/// an accept list of up to [`MAX_ACCEPT_BYTES`].
pub const MAX_POLICY_BYTES: usize = 2 + 8 + 8 + 4 + 1 + MAX_ACCEPT_BYTES;
/// Longest accept list, comma-joined: a dozen media types fit.
pub const MAX_ACCEPT_BYTES: usize = 160;
/// Longest policy text in an identifier (unpadded base64 of
/// [`MAX_POLICY_BYTES`]).
pub const MAX_POLICY_TEXT: usize = (MAX_POLICY_BYTES * 4).div_ceil(3);

/// What the application allows one upload.
///
/// `None` is "no limit of this kind" (the server's own settings still
/// apply). It serializes as JSON with only the limits it sets, for a
/// program that is told about an upload (a hook, a log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Policy {
    /// Unix seconds from which the identifier no longer starts an upload
    /// or a chunk: expired when `now >= expires`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Most bytes, counted as `max_size` counts them (a form's whole body,
    /// a resumable upload's length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<u64>,
    /// Accepted media types, lowercase: `type/subtype` or `type/*`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<String>,
    /// Most files in the upload (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_limit: Option<u32>,
}

/// Why a policy cannot be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "an accepted type must be type/subtype or type/*, in lowercase letters, digits and !#$&^_.+-: {0:?}"
    )]
    BadType(String),
    #[error("the accepted types take {0} bytes, more than the {MAX_ACCEPT_BYTES} allowed")]
    AcceptTooLong(usize),
    #[error("the file limit must be at least 1")]
    ZeroFileLimit,
    #[error("the size limit must be at least 1 byte")]
    ZeroSizeLimit,
    #[error("the policy is not valid base64url")]
    Base64,
    #[error("the policy's format version {0} is not one this server knows")]
    Version(u8),
    #[error("the policy is malformed: {0}")]
    Malformed(&'static str),
}

impl Policy {
    /// Checks the fields an encoding would carry.
    fn validate(&self) -> Result<(), PolicyError> {
        if self.file_limit == Some(0) {
            return Err(PolicyError::ZeroFileLimit);
        }
        if self.size_limit == Some(0) {
            return Err(PolicyError::ZeroSizeLimit);
        }
        for entry in &self.accept {
            if !is_media_range(entry) {
                return Err(PolicyError::BadType(entry.clone()));
            }
        }
        let joined = self.accept.join(",").len();
        if joined > MAX_ACCEPT_BYTES {
            return Err(PolicyError::AcceptTooLong(joined));
        }
        Ok(())
    }

    /// The policy's text in an identifier (see the module's documentation).
    pub fn encode(&self) -> Result<String, PolicyError> {
        self.validate()?;
        let mut bytes = vec![VERSION, 0];
        if let Some(expires) = self.expires {
            bytes[1] |= HAS_EXPIRES;
            bytes.extend_from_slice(&expires.to_be_bytes());
        }
        if let Some(size) = self.size_limit {
            bytes[1] |= HAS_SIZE_LIMIT;
            bytes.extend_from_slice(&size.to_be_bytes());
        }
        if let Some(files) = self.file_limit {
            bytes[1] |= HAS_FILE_LIMIT;
            bytes.extend_from_slice(&files.to_be_bytes());
        }
        if !self.accept.is_empty() {
            bytes[1] |= HAS_ACCEPT;
            let joined = self.accept.join(",");
            // validate() bounded it to MAX_ACCEPT_BYTES, under 256.
            bytes.push(
                u8::try_from(joined.len()).map_err(|_| PolicyError::AcceptTooLong(joined.len()))?,
            );
            bytes.extend_from_slice(joined.as_bytes());
        }
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a policy's text; the exact inverse of [`encode`](Policy::encode).
    pub fn decode(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_TEXT {
            return Err(PolicyError::Malformed("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| PolicyError::Base64)?;
        let mut rest = bytes.as_slice();
        let version = take(&mut rest, 1)?[0];
        if version != VERSION {
            return Err(PolicyError::Version(version));
        }
        let fields = take(&mut rest, 1)?[0];
        if fields & !KNOWN_FIELDS != 0 {
            return Err(PolicyError::Malformed("unknown field"));
        }
        let mut policy = Policy::default();
        if fields & HAS_EXPIRES != 0 {
            policy.expires = Some(u64::from_be_bytes(array(take(&mut rest, 8)?)));
        }
        if fields & HAS_SIZE_LIMIT != 0 {
            policy.size_limit = Some(u64::from_be_bytes(array(take(&mut rest, 8)?)));
        }
        if fields & HAS_FILE_LIMIT != 0 {
            policy.file_limit = Some(u32::from_be_bytes(array(take(&mut rest, 4)?)));
        }
        if fields & HAS_ACCEPT != 0 {
            let len = usize::from(take(&mut rest, 1)?[0]);
            let list = std::str::from_utf8(take(&mut rest, len)?)
                .map_err(|_| PolicyError::Malformed("accept list is not text"))?;
            if list.is_empty() {
                return Err(PolicyError::Malformed("empty accept list"));
            }
            policy.accept = list.split(',').map(str::to_owned).collect();
        }
        if !rest.is_empty() {
            return Err(PolicyError::Malformed("bytes after the last field"));
        }
        policy.validate()?;
        Ok(policy)
    }

    /// Whether the identifier may no longer start an upload or a chunk at
    /// `now` (Unix seconds): from the `expires` second on.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }

    /// Whether `declared` (a media type, parameters allowed) is accepted;
    /// any type is when the policy lists none.
    pub fn accepts(&self, declared: &str) -> bool {
        if self.accept.is_empty() {
            return true;
        }
        let essence = essence(declared);
        self.accept
            .iter()
            .any(|range| match range.strip_suffix("/*") {
                Some("*") => true,
                Some(kind) => essence
                    .split_once('/')
                    .is_some_and(|(k, sub)| k == kind && !sub.is_empty()),
                None => essence == *range,
            })
    }

    /// 415 `ERR_TYPE_NOT_ACCEPTED` for a declared type the policy does not
    /// accept; `None` is what a form or upload without a type declares.
    pub fn check_type(&self, declared: Option<&str>) -> Result<(), HttpError> {
        let declared = declared.unwrap_or("application/octet-stream");
        if self.accepts(declared) {
            return Ok(());
        }
        Err(HttpError::new(
            ErrorCode::TypeNotAccepted,
            format!(
                "a file of type {declared:?} is not accepted here: the upload's policy accepts {}",
                self.accept.join(", ")
            ),
        ))
    }

    /// The signature a file of `declared` type must start with, when the
    /// policy lists types and the type is one of the few with a known one.
    pub fn signature_for(&self, declared: Option<&str>) -> Option<Signature> {
        if self.accept.is_empty() {
            return None;
        }
        Signature::of(declared?)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(e) = self.expires {
            parts.push(format!("expires {e}"));
        }
        if let Some(s) = self.size_limit {
            parts.push(format!("size limit {s} bytes"));
        }
        if !self.accept.is_empty() {
            parts.push(format!("accept {}", self.accept.join(",")));
        }
        if let Some(n) = self.file_limit {
            parts.push(format!("file limit {n}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// 403 `ERR_EXPIRED` when the identifier's policy expired at `now`.
pub fn check_expiry(policy: Option<&Policy>, now: u64) -> Result<(), HttpError> {
    match policy.and_then(|p| p.expires.filter(|_| p.is_expired(now))) {
        Some(expires) => Err(HttpError::new(
            ErrorCode::Expired,
            format!(
                "the upload identifier's policy expired at {expires} (Unix time; it is {now} now): \
                 ask the application for a new one"
            ),
        )),
        None => Ok(()),
    }
}

/// `options` with the policy's size limit folded into `max_size`: the
/// smaller of the two applies, through the code that enforces `max_size`
/// (before reading when the length is known, while streaming otherwise).
pub fn limited(options: &Options, policy: Option<&Policy>) -> Options {
    let mut options = options.clone();
    if let Some(limit) = policy.and_then(|p| p.size_limit) {
        options.max_size = Some(options.max_size.map_or(limit, |max| max.min(limit)));
    }
    options
}

/// 400 `ERR_TOO_MANY_FILES` when a form's `count`th file is past the
/// policy's file limit.
pub fn check_file_count(policy: Option<&Policy>, count: usize) -> Result<(), HttpError> {
    match policy.and_then(|p| p.file_limit) {
        Some(limit) if count > limit as usize => Err(HttpError::new(
            ErrorCode::TooManyFiles,
            format!("the upload's policy allows {limit} file(s), and the form has more"),
        )),
        _ => Ok(()),
    }
}

/// The first bytes a file of a common type starts with: a declared type
/// is checked against the bytes too, so that a renamed program is not
/// taken for a picture. `None` in a pattern is any byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    media_type: &'static str,
    patterns: &'static [&'static [Option<u8>]],
}

const fn b(byte: u8) -> Option<u8> {
    Some(byte)
}
const ANY: Option<u8> = None;

const SIGNATURES: &[Signature] = &[
    Signature {
        media_type: "image/png",
        patterns: &[&[
            b(0x89),
            b(b'P'),
            b(b'N'),
            b(b'G'),
            b(0x0d),
            b(0x0a),
            b(0x1a),
            b(0x0a),
        ]],
    },
    Signature {
        media_type: "image/jpeg",
        patterns: &[&[b(0xff), b(0xd8), b(0xff)]],
    },
    Signature {
        media_type: "image/gif",
        patterns: &[
            &[b(b'G'), b(b'I'), b(b'F'), b(b'8'), b(b'7'), b(b'a')],
            &[b(b'G'), b(b'I'), b(b'F'), b(b'8'), b(b'9'), b(b'a')],
        ],
    },
    Signature {
        media_type: "image/webp",
        patterns: &[&[
            b(b'R'),
            b(b'I'),
            b(b'F'),
            b(b'F'),
            ANY,
            ANY,
            ANY,
            ANY,
            b(b'W'),
            b(b'E'),
            b(b'B'),
            b(b'P'),
        ]],
    },
    Signature {
        media_type: "application/pdf",
        patterns: &[&[b(b'%'), b(b'P'), b(b'D'), b(b'F'), b(b'-')]],
    },
    Signature {
        media_type: "application/zip",
        patterns: &[
            &[b(b'P'), b(b'K'), b(3), b(4)],
            // An empty archive is only its end record.
            &[b(b'P'), b(b'K'), b(5), b(6)],
        ],
    },
];

impl Signature {
    /// The signature of `declared`, if it is one of the types known here.
    pub fn of(declared: &str) -> Option<Signature> {
        let essence = essence(declared);
        SIGNATURES.iter().copied().find(|s| s.media_type == essence)
    }

    /// How many first bytes the check needs.
    pub fn needed(&self) -> usize {
        self.patterns.iter().map(|p| p.len()).max().unwrap_or(0)
    }

    /// Whether `bytes`, found at `offset` in the file, can belong to a file
    /// of this type. Bytes past the signature are not looked at, so a
    /// chunk that starts inside it is checked on the part it covers.
    pub fn matches_at(&self, offset: u64, bytes: &[u8]) -> bool {
        self.patterns.iter().any(|pattern| {
            bytes.iter().enumerate().all(|(i, &byte)| {
                let at = offset.saturating_add(i as u64);
                usize::try_from(at)
                    .ok()
                    .and_then(|at| pattern.get(at))
                    .is_none_or(|want| want.is_none_or(|want| want == byte))
            })
        })
    }

    /// Whether a whole file of `length` bytes starting with `bytes` is of
    /// this type: long enough to hold the signature, and matching it.
    pub fn matches_file(&self, bytes: &[u8], length: u64) -> bool {
        self.patterns
            .iter()
            .any(|p| length >= p.len() as u64 && bytes.len() >= p.len())
            && self.matches_at(0, bytes)
    }

    /// 415 `ERR_TYPE_NOT_ACCEPTED` for bytes that are not of the declared
    /// type.
    pub fn mismatch(&self) -> HttpError {
        HttpError::new(
            ErrorCode::TypeNotAccepted,
            format!(
                "the file is declared {} but its first bytes are not those of a {} file",
                self.media_type, self.media_type
            ),
        )
    }
}

/// The media type without parameters, lowercase: `Image/PNG; x=y` is
/// `image/png`.
fn essence(declared: &str) -> String {
    declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `type/subtype` or `type/*` (or `*/*`), lowercase token characters.
fn is_media_range(text: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&^_.+-".contains(&b))
    };
    match text.split_once('/') {
        Some(("*", "*")) => true,
        Some((kind, "*")) => token(kind),
        Some((kind, sub)) => token(kind) && token(sub),
        None => false,
    }
}

/// Parses the CLI's `image/*,application/pdf` list.
pub fn parse_accept(text: &str) -> Result<Vec<String>, PolicyError> {
    text.split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            if is_media_range(&entry) {
                Ok(entry)
            } else {
                Err(PolicyError::BadType(entry))
            }
        })
        .collect()
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], PolicyError> {
    if rest.len() < n {
        return Err(PolicyError::Malformed("ends inside a field"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Policy {
        Policy {
            expires: Some(1_800_000_000),
            size_limit: Some(100 << 20),
            accept: vec!["image/*".into(), "application/pdf".into()],
            file_limit: Some(3),
        }
    }

    #[test]
    fn encoding_round_trips_each_combination_of_fields() {
        let all = full();
        for mask in 0..16u8 {
            let policy = Policy {
                expires: all.expires.filter(|_| mask & 1 != 0),
                size_limit: all.size_limit.filter(|_| mask & 2 != 0),
                file_limit: all.file_limit.filter(|_| mask & 4 != 0),
                accept: if mask & 8 != 0 {
                    all.accept.clone()
                } else {
                    Vec::new()
                },
            };
            let text = policy.encode().unwrap();
            assert!(text.len() <= MAX_POLICY_TEXT, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{text}"
            );
            assert_eq!(Policy::decode(&text), Ok(policy), "{text}");
        }
    }

    #[test]
    fn json_names_only_the_limits_set() {
        let json = serde_json::to_string(&full()).unwrap();
        assert_eq!(
            json,
            r#"{"expires":1800000000,"size_limit":104857600,"accept":["image/*","application/pdf"],"file_limit":3}"#
        );
        assert_eq!(serde_json::to_string(&Policy::default()).unwrap(), "{}");
    }

    #[test]
    fn the_format_is_stable() {
        // The bytes a policy has been signed as must never change: an
        // identifier minted by an older release stays valid.
        let policy = Policy {
            expires: Some(0x0102),
            size_limit: None,
            accept: vec!["image/png".into()],
            file_limit: Some(2),
        };
        let bytes = URL_SAFE_NO_PAD.decode(policy.encode().unwrap()).unwrap();
        let mut expected = vec![1, 1 | 4 | 8, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 2, 9];
        expected.extend_from_slice(b"image/png");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn malformed_policies_are_refused() {
        let good = URL_SAFE_NO_PAD.decode(full().encode().unwrap()).unwrap();
        let enc = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(Policy::decode(&enc(&version)), Err(PolicyError::Version(2)));
        let mut unknown = good.clone();
        unknown[1] |= 0x10;
        assert!(matches!(
            Policy::decode(&enc(&unknown)),
            Err(PolicyError::Malformed(_))
        ));
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            Policy::decode(&enc(&extra)),
            Err(PolicyError::Malformed(_))
        ));
        assert!(matches!(
            Policy::decode(&enc(&good[..good.len() - 1])),
            Err(PolicyError::Malformed(_))
        ));
        assert!(Policy::decode(&enc(&[1])).is_err());
        assert_eq!(Policy::decode("a+b/"), Err(PolicyError::Base64));
        assert_eq!(
            Policy::decode(&format!("{}=", enc(&good))),
            Err(PolicyError::Base64)
        );
        // A zero file limit, an empty or malformed accept list.
        assert_eq!(
            Policy::decode(&enc(&[1, 4, 0, 0, 0, 0])),
            Err(PolicyError::ZeroFileLimit)
        );
        assert!(Policy::decode(&enc(&[1, 8, 0])).is_err());
        assert!(Policy::decode(&enc(&[1, 8, 3, b'a', b'/', b' '])).is_err());
        assert!(Policy::decode(&"A".repeat(MAX_POLICY_TEXT + 1)).is_err());
    }

    #[test]
    fn bad_fields_cannot_be_encoded() {
        let bad = |f: fn(&mut Policy)| {
            let mut p = full();
            f(&mut p);
            p.encode()
        };
        assert_eq!(
            bad(|p| p.file_limit = Some(0)),
            Err(PolicyError::ZeroFileLimit)
        );
        assert_eq!(
            bad(|p| p.size_limit = Some(0)),
            Err(PolicyError::ZeroSizeLimit)
        );
        assert!(matches!(
            bad(|p| p.accept = vec!["image".into()]),
            Err(PolicyError::BadType(_))
        ));
        assert!(matches!(
            bad(|p| p.accept = vec!["Image/PNG".into()]),
            Err(PolicyError::BadType(_))
        ));
        assert!(matches!(
            bad(|p| p.accept = vec!["a/b,c".into()]),
            Err(PolicyError::BadType(_))
        ));
        assert!(matches!(
            bad(|p| p.accept = vec!["application/x-a-very-long-type-name".into(); 6]),
            Err(PolicyError::AcceptTooLong(_))
        ));
        // The longest allowed list still fits the bound.
        let mut longest = full();
        longest.accept = vec![format!("a/{}", "b".repeat(MAX_ACCEPT_BYTES - 2))];
        assert!(longest.encode().unwrap().len() <= MAX_POLICY_TEXT);
    }

    #[test]
    fn expiry_boundary() {
        let policy = Policy {
            expires: Some(1000),
            ..Policy::default()
        };
        assert!(!policy.is_expired(999));
        assert!(policy.is_expired(1000));
        assert!(policy.is_expired(1001));
        assert!(check_expiry(Some(&policy), 999).is_ok());
        let err = check_expiry(Some(&policy), 1000).unwrap_err();
        assert_eq!(err.code, ErrorCode::Expired);
        assert_eq!(err.code.status(), 403);
        assert!(check_expiry(Some(&Policy::default()), u64::MAX).is_ok());
        assert!(check_expiry(None, u64::MAX).is_ok());
    }

    #[test]
    fn accepted_types() {
        let policy = full();
        for yes in ["image/png", "IMAGE/Jpeg; q=1", "application/pdf"] {
            assert!(policy.accepts(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/pdfx",
            "image",
            "image/",
            "imagex/png",
            "",
        ] {
            assert!(!policy.accepts(no), "{no}");
        }
        assert!(Policy::default().accepts("anything/at-all"));
        let err = policy.check_type(None).unwrap_err();
        assert_eq!(
            (err.code, err.code.status()),
            (ErrorCode::TypeNotAccepted, 415)
        );
        assert_eq!(
            parse_accept(" image/*, Application/PDF ,").unwrap(),
            ["image/*", "application/pdf"]
        );
        assert!(parse_accept("image/png;x=y").is_err());
    }

    #[test]
    fn signatures() {
        let png = Signature::of("image/png").unwrap();
        let header = b"\x89PNG\r\n\x1a\nrest";
        assert!(png.matches_file(header, 100));
        assert!(!png.matches_file(b"GIF89a", 100));
        assert!(!png.matches_file(&header[..4], 4));
        assert!(png.matches_at(4, b"\r\n\x1a\nanything"));
        assert!(!png.matches_at(4, b"xx"));
        assert!(png.matches_at(8, b"past the signature"));
        let gif = Signature::of("image/gif").unwrap();
        assert!(gif.matches_file(b"GIF87a..", 8) && gif.matches_file(b"GIF89a", 6));
        assert!(!gif.matches_file(b"GIF88a", 6));
        let webp = Signature::of("image/webp").unwrap();
        assert!(webp.matches_file(b"RIFF\x01\x02\x03\x04WEBPVP8 ", 20));
        assert!(!webp.matches_file(b"RIFF\x01\x02\x03\x04WAVE", 20));
        assert!(Signature::of("text/plain").is_none());
        assert!(full().signature_for(Some("application/pdf")).is_some());
        assert!(
            Policy::default()
                .signature_for(Some("application/pdf"))
                .is_none()
        );
        assert_eq!(png.mismatch().code, ErrorCode::TypeNotAccepted);
    }

    #[test]
    fn the_size_limit_lowers_max_size_only() {
        let options = |max| Options {
            max_size: max,
            checksums: crate::checksums::Checksums::NONE,
            progress_interval: None,
            min_rate: None,
            min_rate_after: std::time::Duration::ZERO,
            on_create: None,
        };
        let policy = Policy {
            size_limit: Some(100),
            ..Policy::default()
        };
        assert_eq!(limited(&options(None), Some(&policy)).max_size, Some(100));
        assert_eq!(
            limited(&options(Some(50)), Some(&policy)).max_size,
            Some(50)
        );
        assert_eq!(
            limited(&options(Some(500)), Some(&policy)).max_size,
            Some(100)
        );
        assert_eq!(limited(&options(Some(500)), None).max_size, Some(500));
        assert!(check_file_count(Some(&full()), 3).is_ok());
        let err = check_file_count(Some(&full()), 4).unwrap_err();
        assert_eq!(
            (err.code, err.code.status()),
            (ErrorCode::TooManyFiles, 400)
        );
    }
}
