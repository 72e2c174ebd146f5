//! Properties, checked on generated inputs in every `cargo test` (the
//! fuzzers in fuzz/ search further; this keeps the same ground covered on
//! every run).

mod common;

use std::io::{self, Read};

use proptest::prelude::*;

use fileupload::multipart::{Event, Parser};
use fileupload::{Key, Status, create_identifier, verify_identifier};

/// Hands out the input in reads of the given sizes, cycling.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A parsed part: name, file name, data.
type Part = (String, Option<String>, Vec<u8>);

/// Parses a whole body into its parts.
fn parse(body: &[u8], boundary: &str, sizes: Vec<usize>) -> Result<Vec<Part>, String> {
    let reader = Chunked {
        data: body,
        sizes,
        next: 0,
    };
    let mut parser = Parser::with_buffer(reader, boundary, 0);
    let mut parts: Vec<Part> = Vec::new();
    loop {
        match parser.next().map_err(|e| e.to_string())? {
            Event::Part(headers) => parts.push((headers.name, headers.filename, Vec::new())),
            Event::Data(bytes) => parts
                .last_mut()
                .expect("data inside a part")
                .2
                .extend_from_slice(bytes),
            Event::PartEnd => {}
            Event::End => return Ok(parts),
        }
    }
}

/// File contents that like to look like the delimiter.
fn tricky_data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>().prop_map(|b| vec![b]),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b"\r\n--".to_vec()),
            1 => Just(b"\r\n--Xy".to_vec()),
            1 => Just(b"\r\n--XYZ".to_vec()),
            1 => Just(b"--XyZ".to_vec()),
        ],
        0..200,
    )
    .prop_map(|pieces| {
        // RFC 2046: the delimiter never occurs in content. Break any the
        // pieces formed by chance, leaving a near miss in its place.
        let mut data = pieces.concat();
        while let Some(i) = data.windows(7).position(|w| w == b"\r\n--XyZ") {
            data[i + 6] = b'z';
        }
        // Nor at the very start: with the blank line's CRLF before it, that
        // is a delimiter too (RFC 2046's `[CRLF *OCTET]`: an empty body).
        if data.starts_with(b"--XyZ") {
            data[4] = b'z';
        }
        data
    })
}

/// MIME base64 with a line break every `line` characters.
fn base64(data: &[u8], line: usize) -> Vec<u8> {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(3).enumerate() {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let v = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for k in 0..4 {
            out.push(if k <= chunk.len() {
                table[(v >> (18 - 6 * k) & 63) as usize]
            } else {
                b'='
            });
        }
        if (i + 1) * 4 % line == 0 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Quoted-printable: printable ASCII but `=` as is, anything else as
/// `=XX`, and a soft line break (`=` CRLF) wherever `breaks` says.
fn quoted_printable(data: &[u8], breaks: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        if (b'!'..=b'~').contains(&b) && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
        if breaks.get(i).copied().unwrap_or(false) {
            out.extend_from_slice(b"=\r\n");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the files hold and however the reads fall, the parser gives
    /// back exactly the parts that were sent.
    #[test]
    fn multipart_round_trip(
        files in prop::collection::vec((r"[a-z]{1,8}", r"[ -~]{0,12}", tricky_data()), 1..4),
        sizes in prop::collection::vec(1usize..300, 1..6),
    ) {
        let mut body = Vec::new();
        for (name, filename, data) in &files {
            let filename = filename.replace('\\', "\\\\").replace('"', "\\\"");
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        let parts = parse(&body, "XyZ", sizes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(parts.len(), files.len());
        for ((name, filename, data), (got_name, got_filename, got_data)) in files.iter().zip(&parts) {
            prop_assert_eq!(name, got_name);
            prop_assert_eq!(Some(filename), got_filename.as_ref());
            prop_assert_eq!(data, got_data);
        }
    }

    /// A base64 or quoted-printable part comes out as the bytes that were
    /// encoded, however the reads fall (the decoders' carry across reads).
    #[test]
    fn transfer_encoded_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..600),
        breaks in prop::collection::vec(any::<bool>(), 0..600),
        sizes in prop::collection::vec(1usize..300, 1..6),
    ) {
        for (encoding, encoded) in [("base64", base64(&data, 76)), ("quoted-printable", quoted_printable(&data, &breaks))] {
            let mut body = format!("--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"e\"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n").into_bytes();
            body.extend_from_slice(&encoded);
            body.extend_from_slice(b"\r\n--XyZ--\r\n");
            let parts = parse(&body, "XyZ", sizes.clone()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(parts.len(), 1);
            prop_assert_eq!(&parts[0].2, &data, "{}", encoding);
        }
    }

    /// Any bytes at all: an answer, never a panic, and never more data out
    /// than came in.
    #[test]
    fn multipart_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        boundary in r"[A-Za-z0-9'()+_,./:=?-]{1,70}",
        sizes in prop::collection::vec(1usize..500, 1..4),
    ) {
        if let Ok(parts) = parse(&body, &boundary, sizes) {
            let total: usize = parts.iter().map(|p| p.2.len()).sum();
            prop_assert!(total <= body.len());
        }
    }

    /// Identifiers made with a key verify with it, and with no other.
    #[test]
    fn identifiers_verify_with_their_key_only(
        key in prop::collection::vec(any::<u8>(), 1..64),
        other in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let key = Key::new(key).unwrap();
        let other_key = Key::new(other).unwrap();
        let id = create_identifier(Some(&key)).unwrap();
        prop_assert!(verify_identifier(id.as_str(), Some(&key)).is_ok());
        if other_key != key {
            prop_assert!(verify_identifier(id.as_str(), Some(&other_key)).is_err());
        }
        prop_assert!(verify_identifier(id.as_str(), None).is_err());
    }

    /// Whatever text is offered, an accepted identifier names a folder of
    /// 1 to 64 of [A-Za-z0-9-] and nothing else.
    #[test]
    fn accepted_identifiers_are_safe_names(text in r"\PC{0,80}|[A-Za-z0-9:./%-]{0,80}") {
        if let Ok(id) = verify_identifier(&text, None) {
            prop_assert!((1..=64).contains(&id.name().len()));
            prop_assert!(id.name().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
    }

    /// A status survives JSON whatever its strings hold.
    #[test]
    fn status_json_round_trip(id in r"[A-Za-z0-9-]{1,64}", name in r"\PC{0,40}|[\x00-\x1f\x7f]{0,8}", field in r"\PC{0,20}") {
        let mut status = Status::uploading(&id, Some(10), 1);
        status.filename = Some(name.clone());
        status.fields.as_mut().unwrap().insert(field, name);
        status.fail(fileupload::ErrorCode::BadMultipart, "a \"quoted\"\nmessage", 2);
        let json = status.to_json();
        prop_assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }

    /// Any sequence of FastCGI records: the server's answer is made of whole
    /// records, and it does not panic.
    #[test]
    fn fastcgi_any_records(
        records in prop::collection::vec((1u8..12, 0u16..4, prop::collection::vec(any::<u8>(), 0..64)), 0..12),
    ) {
        let mut input = Vec::new();
        for (kind, id, content) in &records {
            input.extend(common::fcgi::record(*kind, *id, content));
        }
        let dir = tempfile::tempdir().unwrap();
        let config = fileupload::Config {
            directory: dir.path().to_owned(),
            directory_is_default: false,
            ..fileupload::Config::default()
        };
        let received = fileupload::fastcgi::testing::serve_bytes(config, &input).unwrap();
        let mut rest = &received[..];
        while !rest.is_empty() {
            prop_assert!(rest.len() >= 8);
            prop_assert_eq!(rest[0], 1);
            let length = usize::from(u16::from_be_bytes([rest[4], rest[5]])) + usize::from(rest[6]);
            prop_assert!(rest.len() >= 8 + length);
            rest = &rest[8 + length..];
        }
    }
}
