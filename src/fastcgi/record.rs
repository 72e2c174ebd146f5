//! The FastCGI record layer: record headers, the record types and flags
//! this responder uses, name-value pairs, and a reader that takes records
//! one at a time from any byte stream.
//!
//! Kept apart from sockets and requests so that it is pure: every function
//! here works on bytes in memory (or any `Read`), and its unit tests feed
//! it malformed input directly instead of through a connection. Nothing a
//! peer sends can make it panic: a bad record is a [`Malformed`] value, and
//! the connection above decides what that costs.

use std::io::{self, BufRead, BufReader, Read};

use crate::vars::Vars;

pub(super) const VERSION_1: u8 = 1;
pub(super) const BEGIN_REQUEST: u8 = 1;
pub(super) const ABORT_REQUEST: u8 = 2;
pub(super) const END_REQUEST: u8 = 3;
pub(super) const PARAMS: u8 = 4;
pub(super) const STDIN: u8 = 5;
pub(super) const STDOUT: u8 = 6;
pub(super) const GET_VALUES: u8 = 9;
pub(super) const GET_VALUES_RESULT: u8 = 10;
pub(super) const UNKNOWN_TYPE: u8 = 11;
pub(super) const RESPONDER: u16 = 1;
pub(super) const KEEP_CONN: u8 = 1;
pub(super) const REQUEST_COMPLETE: u8 = 0;
pub(super) const CANT_MPX_CONN: u8 = 1;
pub(super) const UNKNOWN_ROLE: u8 = 3;
/// Largest record content.
pub(super) const MAX_CONTENT: usize = 65535;
/// A record header's length.
pub(super) const HEADER_LEN: usize = 8;

/// A protocol violation: the connection cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(pub(super) String);

/// A record's header: its type, request id, and how many content and
/// padding bytes follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: u8,
    pub(super) id: u16,
    pub(super) length: usize,
    pub(super) padding: usize,
}

impl Header {
    /// Decodes a header; only version 1 exists, anything else is
    /// malformed. The reserved byte is ignored, as the specification asks.
    pub(super) fn decode(bytes: [u8; HEADER_LEN]) -> Result<Header, Malformed> {
        if bytes[0] != VERSION_1 {
            return Err(Malformed(format!(
                "unsupported FastCGI version {}",
                bytes[0]
            )));
        }
        Ok(Header {
            kind: bytes[1],
            id: u16::from_be_bytes([bytes[2], bytes[3]]),
            length: usize::from(u16::from_be_bytes([bytes[4], bytes[5]])),
            padding: usize::from(bytes[6]),
        })
    }
}

/// One whole record: header, `content`, and padding to a multiple of 8
/// bytes (the alignment the specification recommends). `content` must be
/// at most [`MAX_CONTENT`] bytes; the callers cut longer data into records.
pub(super) fn encode_record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    debug_assert!(content.len() <= MAX_CONTENT, "record content too long");
    let padding = (8 - content.len() % 8) % 8;
    let [id_hi, id_lo] = id.to_be_bytes();
    let [len_hi, len_lo] = (content.len() as u16).to_be_bytes();
    let mut record = Vec::with_capacity(HEADER_LEN + content.len() + padding);
    record.extend_from_slice(&[
        VERSION_1,
        kind,
        id_hi,
        id_lo,
        len_hi,
        len_lo,
        padding as u8,
        0,
    ]);
    record.extend_from_slice(content);
    record.resize(record.len() + padding, 0);
    record
}

/// The content of an `FCGI_END_REQUEST` record.
pub(super) fn end_request_body(protocol_status: u8) -> [u8; 8] {
    [0, 0, 0, 0, protocol_status, 0, 0, 0]
}

/// The content of an `FCGI_UNKNOWN_TYPE` record answering a `kind`.
pub(super) fn unknown_type_body(kind: u8) -> [u8; 8] {
    [kind, 0, 0, 0, 0, 0, 0, 0]
}

/// What an `FCGI_BEGIN_REQUEST` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BeginRequest {
    pub(super) role: u16,
    pub(super) keep_conn: bool,
}

impl BeginRequest {
    pub(super) fn decode(content: &[u8]) -> Result<BeginRequest, Malformed> {
        match content {
            [role_hi, role_lo, flags, _, _, _, _, _, ..] => Ok(BeginRequest {
                role: u16::from_be_bytes([*role_hi, *role_lo]),
                keep_conn: flags & KEEP_CONN != 0,
            }),
            _ => Err(Malformed("short FCGI_BEGIN_REQUEST".into())),
        }
    }
}

/// Decodes FastCGI name-value pairs; `None` if they are malformed (a
/// length running past the end, a cut four-byte length). Names and values
/// that are not UTF-8 are decoded lossily: CGI variables are text.
pub(super) fn decode_params(mut bytes: &[u8]) -> Option<Vars> {
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        let first = *bytes.first()?;
        if first & 0x80 == 0 {
            *bytes = &bytes[1..];
            Some(usize::from(first))
        } else {
            let four: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            *bytes = &bytes[4..];
            Some((u32::from_be_bytes(four) & 0x7fff_ffff) as usize)
        }
    }
    // Names and values take less room than their encoding; nginx sends
    // about 30 pairs.
    let mut vars = Vars::with_capacity(bytes.len(), 32);
    while !bytes.is_empty() {
        let name_len = length(&mut bytes)?;
        let value_len = length(&mut bytes)?;
        let name = bytes.get(..name_len)?;
        let value = bytes.get(name_len..name_len.checked_add(value_len)?)?;
        vars.push(
            &String::from_utf8_lossy(name),
            &String::from_utf8_lossy(value),
        );
        bytes = &bytes[name_len + value_len..];
    }
    Some(vars)
}

/// Encodes one name-value pair: lengths under 128 in one byte, longer ones
/// in four with the high bit set.
pub(super) fn encode_param(out: &mut Vec<u8>, name: &str, value: &str) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// What came next on the stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Record(Header),
    /// The peer closed the connection between records: a normal end.
    Closed,
}

/// The reading half of a connection: records, one at a time. Generic over
/// the byte source so that tests read from a slice; the server reads from
/// a socket.
pub(super) struct Records<R> {
    reader: BufReader<R>,
}

impl<R: Read> Records<R> {
    pub(super) fn new(capacity: usize, inner: R) -> Records<R> {
        Records {
            reader: BufReader::with_capacity(capacity, inner),
        }
    }

    /// Reads a record header; `Closed` if the stream ended first. A stream
    /// cut inside a header is an `UnexpectedEof` error.
    pub(super) fn header(&mut self) -> io::Result<Result<Next, Malformed>> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(Ok(Next::Closed));
        }
        let mut bytes = [0u8; HEADER_LEN];
        self.reader.read_exact(&mut bytes)?;
        Ok(Header::decode(bytes).map(Next::Record))
    }

    /// Reads a record's whole content and skips its padding.
    #[cfg(test)]
    pub(super) fn content(&mut self, header: &Header) -> io::Result<Vec<u8>> {
        let mut content = vec![0u8; header.length];
        self.reader.read_exact(&mut content)?;
        self.skip(header.padding)?;
        Ok(content)
    }

    /// Skips `n` bytes (padding, or a record nobody needs).
    pub(super) fn skip(&mut self, n: usize) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.reader).take(n as u64), &mut io::sink())?;
        if copied < n as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Reads raw bytes (a record's content, piece by piece).
    pub(super) fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }

    /// The bytes read ahead and not yet taken, and the source: what the
    /// next reader of the stream must start with.
    pub(super) fn into_parts(self) -> (Vec<u8>, R) {
        let buffered = self.reader.buffer().to_vec();
        (buffered, self.reader.into_inner())
    }
}

/// A byte source that may hold bytes it read ahead of its socket.
pub(super) trait ReadAhead {
    /// How many it holds: bytes a read gets without a system call.
    fn read_ahead(&self) -> usize;
}

impl<R: Read + ReadAhead> Records<R> {
    /// How many bytes are buffered, here and in the source: whether a read
    /// would have to wait. The event loop reads a request's first bytes
    /// itself and hands over the rest: counting only this reader's buffer
    /// took a status poll's end record, waiting in the source, for one that
    /// had not arrived, and set and restored the socket's read timeout for
    /// nothing (two system calls of a poll's eleven).
    pub(super) fn buffered(&self) -> usize {
        self.reader.buffer().len() + self.reader.get_ref().read_ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(bytes: &[u8]) -> Records<&[u8]> {
        Records::new(16, bytes)
    }

    #[test]
    fn params_round_trip_short_and_long() {
        let mut bytes = Vec::new();
        let long = "v".repeat(300);
        encode_param(&mut bytes, "SHORT", "x");
        encode_param(&mut bytes, "LONG", &long);
        encode_param(&mut bytes, "EMPTY", "");
        let vars = decode_params(&bytes).unwrap();
        assert_eq!(
            vars.iter().collect::<Vec<_>>(),
            [("SHORT", "x"), ("LONG", long.as_str()), ("EMPTY", "")]
        );
    }

    #[test]
    fn param_lengths_switch_to_four_bytes_at_128() {
        for (len, width) in [(0, 1), (127, 1), (128, 4), (1000, 4)] {
            let name = "n".repeat(len);
            let mut bytes = Vec::new();
            encode_param(&mut bytes, &name, "");
            assert_eq!(bytes.len(), width + 1 + len, "name of {len} bytes");
            if width == 4 {
                assert_eq!(bytes[0] & 0x80, 0x80, "the long form's high bit");
                assert_eq!(
                    u32::from_be_bytes(bytes[..4].try_into().unwrap()) & 0x7fff_ffff,
                    len as u32
                );
            } else {
                assert_eq!(usize::from(bytes[0]), len);
            }
            assert_eq!(
                decode_params(&bytes),
                Some([(name, "")].into_iter().collect())
            );
        }
    }

    #[test]
    fn malformed_params_are_refused() {
        for bad in [
            &[5u8][..],
            &[2, 2, b'a'],
            &[0x80, 0, 0],
            &[0xff, 0xff, 0xff, 0xff, 1, b'a'],
        ] {
            assert_eq!(decode_params(bad), None, "{bad:?}");
        }
        assert_eq!(decode_params(&[]), Some(Vars::default()));
    }

    #[test]
    fn params_that_are_not_utf8_decode_lossily() {
        let vars = decode_params(&[1, 1, 0xff, b'v']).unwrap();
        assert_eq!(vars.iter().collect::<Vec<_>>(), [("\u{fffd}", "v")]);
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        for len in [0usize, 1, 7, 8, 9, 300] {
            let content = vec![0xab; len];
            let record = encode_record(STDOUT, 0x0102, &content);
            assert_eq!(record.len() % 8, 0, "{len} bytes of content");
            assert_eq!(record[..4], [VERSION_1, STDOUT, 0x01, 0x02]);
            assert_eq!(usize::from(u16::from_be_bytes([record[4], record[5]])), len);
            assert_eq!(usize::from(record[6]), record.len() - 8 - len);
            assert_eq!(&record[8..8 + len], &content[..]);
            assert!(record[8 + len..].iter().all(|&b| b == 0), "zero padding");
        }
        let full = encode_record(STDOUT, 1, &vec![0; MAX_CONTENT]);
        assert_eq!(full.len(), 8 + MAX_CONTENT + 1);
    }

    #[test]
    fn records_round_trip_through_the_reader() {
        let mut stream = Vec::new();
        stream.extend(encode_record(PARAMS, 7, b"abc"));
        stream.extend(encode_record(STDIN, 7, &[]));
        stream.extend(encode_record(STDIN, 65535, &vec![9; 1000]));
        let mut records = records(&stream);
        let mut seen = Vec::new();
        loop {
            match records.header().unwrap() {
                Ok(Next::Record(header)) => {
                    let content = records.content(&header).unwrap();
                    seen.push((header.kind, header.id, content));
                }
                Ok(Next::Closed) => break,
                Err(malformed) => panic!("{malformed:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (PARAMS, 7, b"abc".to_vec()),
                (STDIN, 7, vec![]),
                (STDIN, 65535, vec![9; 1000])
            ]
        );
    }

    #[test]
    fn a_header_with_another_version_is_malformed() {
        let mut record = encode_record(STDIN, 1, b"x");
        record[0] = 2;
        assert_eq!(
            records(&record).header().unwrap(),
            Err(Malformed("unsupported FastCGI version 2".into()))
        );
    }

    #[test]
    fn a_cut_record_is_an_unexpected_end() {
        let record = encode_record(STDIN, 1, b"0123456789");
        // Cut inside the header.
        let err = records(&record[..5]).header().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // Cut inside the content, and inside the padding.
        for cut in [12, record.len() - 1] {
            let mut records = records(&record[..cut]);
            let Ok(Next::Record(header)) = records.header().unwrap() else {
                panic!("a whole header");
            };
            let err = records.content(&header).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[test]
    fn an_empty_stream_is_closed_not_malformed() {
        assert_eq!(records(&[]).header().unwrap(), Ok(Next::Closed));
    }

    #[test]
    fn begin_request_decodes_role_and_keep_conn() {
        assert_eq!(
            BeginRequest::decode(&[0, 1, 1, 0, 0, 0, 0, 0]),
            Ok(BeginRequest {
                role: RESPONDER,
                keep_conn: true
            })
        );
        assert_eq!(
            BeginRequest::decode(&[0, 2, 0, 0, 0, 0, 0, 0]),
            Ok(BeginRequest {
                role: 2,
                keep_conn: false
            })
        );
        assert_eq!(
            BeginRequest::decode(&[0, 1, 1]),
            Err(Malformed("short FCGI_BEGIN_REQUEST".into()))
        );
    }
}
