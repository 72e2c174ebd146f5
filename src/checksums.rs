//! The whole-file checksums a stored file gets in its status: which ones
//! (the `checksums` setting) and one hasher that computes them all in the
//! same pass over the bytes.
//!
//! Object stores, tus clients and RFC 9530 digests each ask for their own:
//! S3's SHA-1/MD5/CRC32C, Google Cloud Storage's CRC32C and MD5, tools that
//! compare with `b3sum`. Computing them while the bytes stream spares the
//! application a second read of every file; each costs what its own speed
//! costs (see the README's performance section), so only the listed ones
//! are computed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::identifier::hex;
use crate::status::FileInfo;

/// One checksum a stored file may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sum {
    Sha256,
    Sha1,
    Md5,
    /// CRC-32C (Castagnoli), as S3 and Google Cloud Storage give it: the
    /// four bytes big-endian, in hex here like the others.
    Crc32c,
    Blake3,
}

impl Sum {
    /// Every checksum, in the order the setting's documentation lists them.
    pub const ALL: [Sum; 5] = [Sum::Sha256, Sum::Sha1, Sum::Md5, Sum::Crc32c, Sum::Blake3];

    /// Its name in the setting and its key in the status.
    pub fn name(self) -> &'static str {
        match self {
            Sum::Sha256 => "sha256",
            Sum::Sha1 => "sha1",
            Sum::Md5 => "md5",
            Sum::Crc32c => "crc32c",
            Sum::Blake3 => "blake3",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of checksums: the `checksums` setting.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Checksums(u8);

impl Default for Checksums {
    /// SHA-256 alone, as before the setting existed.
    fn default() -> Checksums {
        Checksums::NONE.with(Sum::Sha256)
    }
}

impl std::fmt::Debug for Checksums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Sum::name)).finish()
    }
}

impl Checksums {
    pub const NONE: Checksums = Checksums(0);

    /// Parses the setting: names from [`Sum::ALL`] separated by commas (any
    /// case, spaces around them ignored, a repeated one counted once); an
    /// empty value or `none` is no checksum at all. An unknown name is an
    /// error that lists the known ones.
    pub fn parse(value: &str) -> Result<Checksums, String> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("none") {
            return Ok(Checksums::NONE);
        }
        let mut set = Checksums::NONE;
        for name in value.split(',').map(str::trim) {
            let known = Sum::ALL
                .into_iter()
                .find(|sum| sum.name().eq_ignore_ascii_case(name));
            match known {
                Some(sum) => set = set.with(sum),
                None => {
                    let names: Vec<&str> = Sum::ALL.iter().map(|s| s.name()).collect();
                    return Err(format!(
                        "{name:?} is not a checksum this server computes: list any of {}, \
                         separated by commas, or none",
                        names.join(", ")
                    ));
                }
            }
        }
        Ok(set)
    }

    pub fn with(self, sum: Sum) -> Checksums {
        Checksums(self.0 | sum.bit())
    }

    pub fn without(self, sum: Sum) -> Checksums {
        Checksums(self.0 & !sum.bit())
    }

    pub fn contains(self, sum: Sum) -> bool {
        self.0 & sum.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`Sum::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Sum> {
        Sum::ALL.into_iter().filter(move |sum| self.contains(*sum))
    }
}

/// The hex digests of one file, each present when it was computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub sha256: Option<String>,
    pub sha1: Option<String>,
    pub md5: Option<String>,
    pub crc32c: Option<String>,
    pub blake3: Option<String>,
}

impl Sums {
    /// Sets the file's digests that were computed, leaving the others.
    pub fn apply_to(self, file: &mut FileInfo) {
        let Sums {
            sha256,
            sha1,
            md5,
            crc32c,
            blake3,
        } = self;
        file.sha256 = sha256.or(file.sha256.take());
        file.sha1 = sha1.or(file.sha1.take());
        file.md5 = md5.or(file.md5.take());
        file.crc32c = crc32c.or(file.crc32c.take());
        file.blake3 = blake3.or(file.blake3.take());
    }
}

/// Every listed checksum of one stream of bytes, fed once.
#[derive(Clone)]
pub struct Hasher {
    sha256: Option<Sha256>,
    sha1: Option<Sha1>,
    md5: Option<Md5>,
    crc32c: Option<u32>,
    /// Boxed: its state is about 2 KB, the others' together a few hundred
    /// bytes.
    blake3: Option<Box<blake3::Hasher>>,
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new(Checksums::default())
    }
}

impl Hasher {
    pub fn new(checksums: Checksums) -> Hasher {
        Hasher {
            sha256: checksums.contains(Sum::Sha256).then(Sha256::new),
            sha1: checksums.contains(Sum::Sha1).then(Sha1::new),
            md5: checksums.contains(Sum::Md5).then(Md5::new),
            crc32c: checksums.contains(Sum::Crc32c).then_some(0),
            blake3: checksums
                .contains(Sum::Blake3)
                .then(|| Box::new(blake3::Hasher::new())),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = self.sha256.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.sha1.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.md5.as_mut() {
            h.update(bytes);
        }
        if let Some(crc) = self.crc32c.as_mut() {
            *crc = crc32c::crc32c_append(*crc, bytes);
        }
        if let Some(h) = self.blake3.as_mut() {
            h.update(bytes);
        }
    }

    pub fn finish(self) -> Sums {
        Sums {
            sha256: self.sha256.map(|h| hex(&h.finalize())),
            sha1: self.sha1.map(|h| hex(&h.finalize())),
            md5: self.md5.map(|h| hex(&h.finalize())),
            crc32c: self.crc32c.map(|crc| hex(&crc.to_be_bytes())),
            blake3: self.blake3.map(|h| hex(h.finalize().as_bytes())),
        }
    }
}

/// Bytes read at a time by [`of_file`].
const READ_BUFFER: usize = 1 << 20;

/// The listed checksums of the first `upto` bytes of `file`, read once
/// with positioned reads (the file's position is left alone): for a file
/// whose bytes were not hashed as they arrived (a resumable upload's, for
/// the checksums whose state is not kept between its requests, and a
/// concatenated one). A file shorter than `upto` is an `UnexpectedEof`
/// error, never the digest of fewer bytes.
pub fn of_file(checksums: Checksums, file: &File, upto: u64) -> io::Result<Sums> {
    let mut hasher = Hasher::new(checksums);
    if !checksums.is_empty() {
        read_through(file, upto, |bytes| hasher.update(bytes))?;
    }
    Ok(hasher.finish())
}

/// Hands the first `upto` bytes of `file` to `take`, in order, read with
/// positioned reads; a file shorter than `upto` is an `UnexpectedEof` error.
pub fn read_through(file: &File, upto: u64, mut take: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut at = 0u64;
    while at < upto {
        let want = usize::try_from(upto - at)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        match file.read_at(&mut buffer[..want], at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends at {at} bytes, before {upto}"),
                ));
            }
            Ok(read) => {
                take(&buffer[..read]);
                at += read as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_parses_lists_none_and_refuses_unknown_names() {
        let all = Checksums::parse("sha256,sha1,md5,crc32c,blake3").unwrap();
        assert_eq!(all.iter().collect::<Vec<_>>(), Sum::ALL.to_vec());
        let two = Checksums::parse(" MD5 , blake3,md5").unwrap();
        assert_eq!(two.iter().collect::<Vec<_>>(), vec![Sum::Md5, Sum::Blake3]);
        assert_eq!(Checksums::parse("").unwrap(), Checksums::NONE);
        assert_eq!(Checksums::parse("None").unwrap(), Checksums::NONE);
        assert_eq!(Checksums::parse("sha256").unwrap(), Checksums::default());
        for bad in ["sha512", "crc32", "sha256,,md5", "sha256 md5", "none,md5"] {
            let err = Checksums::parse(bad).unwrap_err();
            assert!(
                err.contains("sha256, sha1, md5, crc32c, blake3"),
                "{bad}: {err}"
            );
        }
    }

    /// Published vectors of "abc" for each, and the empty input.
    #[test]
    fn each_sum_of_known_vectors_in_one_pass() {
        let mut hasher = Hasher::new(Checksums::parse("sha256,sha1,md5,crc32c,blake3").unwrap());
        hasher.update(b"a");
        hasher.update(b"");
        hasher.update(b"bc");
        let sums = hasher.finish();
        assert_eq!(
            sums.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            sums.sha1.as_deref(),
            Some("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            sums.md5.as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        // RFC 3720's CRC32C of "123456789" is e3069283; "abc" is 364b3fb7.
        assert_eq!(sums.crc32c.as_deref(), Some("364b3fb7"));
        assert_eq!(
            sums.blake3.as_deref(),
            Some("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
        );
        let mut check = Hasher::new(Checksums::NONE.with(Sum::Crc32c));
        check.update(b"123456789");
        assert_eq!(check.finish().crc32c.as_deref(), Some("e3069283"));
        assert_eq!(
            Hasher::new(Checksums::NONE).finish(),
            Sums::default(),
            "nothing listed, nothing computed"
        );
    }

    #[test]
    fn a_file_read_once_has_each_sum_and_a_short_one_is_an_error() {
        let data: Vec<u8> = (0..3 * READ_BUFFER + 5)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let all = Checksums::parse("sha256,sha1,md5,crc32c,blake3").unwrap();
        let mut streamed = Hasher::new(all);
        for piece in data.chunks(1000) {
            streamed.update(piece);
        }
        assert_eq!(
            of_file(all, &file, data.len() as u64).unwrap(),
            streamed.finish()
        );
        let err = of_file(all, &file, data.len() as u64 + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
