//! Per-chunk checksums, as tus's checksum extension has them: the client
//! sends `Upload-Checksum: <algorithm> <base64 digest>` with a chunk, and
//! the chunk is only kept if its bytes have that digest.
//!
//! This guards against corruption between the client and the file (a
//! proxy that mangles a body, a bad NIC), not against an attacker: whoever
//! can change the bytes can change the header too. So the algorithms are
//! the ones clients already offer (tusd's four), weak ones included, and
//! the comparison need not be constant-time.
//!
//! Nothing here knows HTTP beyond the header's text: the protocol feeds
//! each chunk's bytes to a [`Hasher`] as it stores them, and decides what
//! a mismatch does to the stored bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::error_code::ErrorCode;
use crate::http::HttpError;

/// A checksum algorithm a client may name in `Upload-Checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha1,
    Md5,
    /// CRC-32 (IEEE), its digest the four bytes big-endian, as tusd (Go's
    /// `hash/crc32`) gives them.
    Crc32,
    Sha256,
    /// Only as RFC 9530's `sha-512` names it (see [`crate::digest_fields`]):
    /// tus clients do not offer it, so `Tus-Checksum-Algorithm` leaves it out.
    Sha512,
}

/// The value of `Tus-Checksum-Algorithm`: every algorithm in [`Algorithm::ALL`].
pub const TUS_CHECKSUM_ALGORITHMS: &str = "sha1,md5,crc32,sha256";

/// Longest `Upload-Checksum` worth decoding: a SHA-256 digest is 44
/// base64 characters, and the longest name 6.
const MAX_HEADER: usize = 128;

impl Algorithm {
    /// Every algorithm, in the order `Tus-Checksum-Algorithm` lists them.
    pub const ALL: &[Algorithm] = &[
        Algorithm::Sha1,
        Algorithm::Md5,
        Algorithm::Crc32,
        Algorithm::Sha256,
    ];

    /// The algorithm a client names, in any case (the tus specification
    /// writes them in lowercase, and no client is known to send another
    /// case, but nothing is gained by refusing one).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The name as tus spells it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Md5 => "md5",
            Algorithm::Crc32 => "crc32",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha-512",
        }
    }

    /// The length of its digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Md5 => 16,
            Algorithm::Crc32 => 4,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// What a chunk's bytes must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
    /// The header that gave it (`Upload-Checksum`, `Content-Digest`), for
    /// the message of a mismatch.
    pub header: &'static str,
}

impl Expected {
    /// A hasher for this algorithm, to feed the chunk to.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }

    /// The answer to a chunk that does not match: 460
    /// `ERR_CHECKSUM_MISMATCH`, for the protocol to give once it has cut
    /// the chunk away.
    pub fn mismatch(&self) -> HttpError {
        HttpError::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "the chunk does not have the {} digest its {} gives; it was \
                 discarded: send it again from the same offset",
                self.algorithm.name(),
                self.header
            ),
        )
    }
}

/// Parses `Upload-Checksum: <algorithm> <base64 digest>`.
///
/// An algorithm this server does not have is 400
/// `ERR_UNSUPPORTED_CHECKSUM_ALGORITHM` (tus's rule; the message lists the
/// ones it has); anything else malformed, including a digest of the wrong
/// length for its algorithm, is 400 `ERR_BAD_CHECKSUM`. Both are decided
/// before a byte of the chunk is stored. Padding of the base64 may be left
/// out; the alphabet is the standard one.
pub fn parse_upload_checksum(header: &str) -> Result<Expected, HttpError> {
    let bad = |why: &str| {
        HttpError::new(
            ErrorCode::BadChecksum,
            format!("Upload-Checksum must be \"<algorithm> <base64 digest>\": {why}"),
        )
    };
    if header.len() > MAX_HEADER {
        return Err(bad("it is too long"));
    }
    let mut words = header.split_ascii_whitespace();
    let (Some(name), Some(encoded), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad("it does not have exactly two words"));
    };
    let Some(algorithm) = Algorithm::parse(name) else {
        return Err(HttpError::new(
            ErrorCode::UnsupportedChecksumAlgorithm,
            format!(
                "Upload-Checksum names the algorithm {name:?}, which this server does not \
                 support; it supports {TUS_CHECKSUM_ALGORITHMS}"
            ),
        ));
    };
    let digest = STANDARD_PAD_INDIFFERENT
        .decode(encoded)
        .map_err(|e| bad(&format!("the digest is not base64 ({e})")))?;
    if digest.len() != algorithm.digest_len() {
        return Err(bad(&format!(
            "the digest is {} bytes, and a {} digest is {}",
            digest.len(),
            algorithm.name(),
            algorithm.digest_len()
        )));
    }
    Ok(Expected {
        algorithm,
        digest,
        header: "Upload-Checksum",
    })
}

/// A running checksum of one chunk.
#[derive(Clone)]
pub struct Hasher(State);

#[derive(Clone)]
enum State {
    Sha1(Sha1),
    Md5(Md5),
    Crc32(crc32fast::Hasher),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        Hasher(match algorithm {
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Md5 => State::Md5(Md5::new()),
            Algorithm::Crc32 => State::Crc32(crc32fast::Hasher::new()),
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            State::Sha1(_) => Algorithm::Sha1,
            State::Md5(_) => Algorithm::Md5,
            State::Crc32(_) => Algorithm::Crc32,
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Sha1(h) => h.update(bytes),
            State::Md5(h) => h.update(bytes),
            State::Crc32(h) => h.update(bytes),
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            State::Sha1(h) => h.finalize().to_vec(),
            State::Md5(h) => h.finalize().to_vec(),
            State::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
        }
    }

    /// Whether the bytes fed have the expected digest (and it is one of
    /// this algorithm: a digest of another never matches).
    pub fn matches(self, expected: &Expected) -> bool {
        self.algorithm() == expected.algorithm && self.finish() == expected.digest
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.algorithm()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::hex;

    fn digest(algorithm: Algorithm, data: &[u8]) -> String {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hex(&hasher.finish())
    }

    /// RFC 3174's test strings (section 7.3).
    #[test]
    fn sha1_of_rfc_3174_vectors() {
        let test4 = "01234567".repeat(80);
        let million = vec![b'a'; 1_000_000];
        for (data, expected) in [
            (
                b"abc".as_slice(),
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
            (&million, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
            (test4.as_bytes(), "dea356a2cddd90c7a7ecedc5ebb563934f460452"),
        ] {
            assert_eq!(digest(Algorithm::Sha1, data), expected);
        }
    }

    /// RFC 1321's test suite (appendix A.5).
    #[test]
    fn md5_of_rfc_1321_vectors() {
        for (data, expected) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(
                digest(Algorithm::Md5, data.as_bytes()),
                expected,
                "{data:?}"
            );
        }
    }

    /// The CRC-32 catalogue's check value, big-endian as tusd sends it.
    #[test]
    fn crc32_check_value_and_byte_order() {
        assert_eq!(digest(Algorithm::Crc32, b"123456789"), "cbf43926");
        assert_eq!(digest(Algorithm::Crc32, b""), "00000000");
    }

    /// FIPS 180-2's one-block and two-block examples.
    #[test]
    fn sha256_of_fips_180_vectors() {
        assert_eq!(
            digest(Algorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest(
                Algorithm::Sha256,
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            ),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn names_round_trip_and_the_tus_list_is_all_of_them() {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.join(","), TUS_CHECKSUM_ALGORITHMS);
        for algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::parse(algorithm.name()), Some(*algorithm));
            let upper = algorithm.name().to_ascii_uppercase();
            assert_eq!(Algorithm::parse(&upper), Some(*algorithm));
            assert_eq!(
                Hasher::new(*algorithm).finish().len(),
                algorithm.digest_len()
            );
        }
        for unknown in ["", "sha512", "sha-1", "crc32c", "md5 "] {
            assert_eq!(Algorithm::parse(unknown), None, "{unknown:?}");
        }
    }

    /// A chunk fed in pieces, checked against the header a client would
    /// send for it (the digest encoded here, from the RFC's hex).
    #[test]
    fn a_header_for_the_chunk_matches_and_any_other_does_not() {
        let chunk = b"abc";
        let sha1 = [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d,
        ];
        let encoded = base64::engine::general_purpose::STANDARD.encode(sha1);
        assert_eq!(encoded, "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
        let expected = parse_upload_checksum(&format!("sha1 {encoded}")).unwrap();
        assert_eq!(expected.algorithm, Algorithm::Sha1);
        assert_eq!(expected.digest, sha1);
        let mut hasher = expected.hasher();
        hasher.update(b"a");
        hasher.update(b"bc");
        assert!(hasher.matches(&expected));
        let mut other = expected.hasher();
        other.update(b"abd");
        assert!(!other.matches(&expected));
        // Without padding, with spaces around: the same.
        let unpadded =
            parse_upload_checksum(&format!("  sha1   {}  ", encoded.trim_end_matches('=')))
                .unwrap();
        assert_eq!(unpadded, expected);
        // The same digest under another algorithm's name never matches.
        let mut md5 = Hasher::new(Algorithm::Md5);
        md5.update(chunk);
        assert!(!md5.matches(&expected));
        // Every algorithm, through its header.
        for algorithm in Algorithm::ALL {
            let mut h = Hasher::new(*algorithm);
            h.update(chunk);
            let value = base64::engine::general_purpose::STANDARD.encode(h.clone().finish());
            let expected = parse_upload_checksum(&format!("{} {value}", algorithm.name())).unwrap();
            assert!(h.matches(&expected), "{algorithm:?}");
        }
    }

    #[test]
    fn malformed_headers_are_400_with_their_code() {
        let twenty = base64::engine::general_purpose::STANDARD.encode([0u8; 20]);
        let sixteen = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let unsupported = parse_upload_checksum(&format!("sha512 {twenty}")).unwrap_err();
        assert_eq!(unsupported.code, ErrorCode::UnsupportedChecksumAlgorithm);
        assert_eq!(unsupported.status(), 400);
        assert!(
            unsupported.message.contains(TUS_CHECKSUM_ALGORITHMS),
            "{unsupported}"
        );
        let long = format!("sha1 {}", "A".repeat(200));
        for header in [
            "".to_owned(),
            "sha1".to_owned(),
            format!("sha1 {twenty} extra"),
            "sha1 !!!!".to_owned(),
            "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=x".to_owned(),
            // URL-safe alphabet: not the one tus uses.
            "sha1 qZk-NkcGgWq6PiVxeFDCbJzQ2J0=".to_owned(),
            format!("sha1 {sixteen}"),
            format!("md5 {twenty}"),
            long,
        ] {
            let err = parse_upload_checksum(&header).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadChecksum, "{header:?}: {err}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn mismatch_is_460() {
        let expected = Expected {
            algorithm: Algorithm::Crc32,
            digest: vec![0; 4],
            header: "Upload-Checksum",
        };
        let err = expected.mismatch();
        assert_eq!(err.code, ErrorCode::ChecksumMismatch);
        assert_eq!(err.status(), 460);
        assert_eq!(err.code.as_str(), "ERR_CHECKSUM_MISMATCH");
        assert!(err.message.contains("crc32"), "{err}");
        assert_eq!(crate::http::reason(460), "Checksum Mismatch");
    }
}
