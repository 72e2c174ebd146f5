//! A streaming `multipart/form-data` parser (RFC 7578, RFC 2046).
//!
//! [`Parser`] pulls the body through one fixed buffer and hands out
//! [`Event`]s whose data borrows that buffer, so a file's bytes are copied
//! once (from the kernel into the buffer) before they are written out, and
//! memory stays the same whatever the body's size. The delimiter is found
//! with `memchr`'s SIMD substring search.
//!
//! It is written for bodies from the open internet: every header block is
//! bounded, a body that ends before the closing delimiter is an error (never
//! a silently short file), and nothing in the input can make it panic.
//!
//! Why not a crate: `multipart` is archived (RUSTSEC-2023-0050), and
//! `multiparty` 0.1's sans-IO decoder joins buffers without bound while a
//! part's headers are incomplete, splits `filename` at `;` and `=`, refuses
//! non-UTF-8 names, and ends a body cut inside a part as if it had finished.

use std::io::{self, Read};

use memchr::memmem;

/// Longest header block a part may have.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY_LEN: usize = 70;
/// How much may come before the first boundary line (RFC 2046's preamble).
/// Browsers send none; a long one is a body of something else.
const MAX_PREAMBLE: usize = 8 * 1024;
/// Spaces allowed between a boundary and its line end ("transport padding").
const MAX_PADDING: usize = 64;
/// Default buffer size: large enough that a pipe or socket read fills it in
/// one call at most, small enough to keep memory flat.
pub const DEFAULT_BUFFER: usize = 256 * 1024;

/// Why a body could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error("the body does not start with the multipart boundary given in Content-Type")]
    NoBoundary,
    #[error("the body ended before the closing multipart boundary")]
    Truncated,
    #[error("malformed multipart boundary line")]
    BadDelimiter,
    #[error("a part's header block is longer than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong,
    #[error("malformed part header line")]
    BadHeader,
    #[error("a part has no Content-Disposition header")]
    NoDisposition,
    #[error("a part's Content-Disposition is not form-data")]
    NotFormData,
    #[error("malformed Content-Disposition header")]
    BadDisposition,
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a `Content-Type` does not announce a usable multipart body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentTypeError {
    #[error("expected a multipart/form-data body, got {0:?}")]
    NotMultipart(String),
    #[error("the multipart/form-data Content-Type has no boundary parameter")]
    NoBoundary,
    #[error(
        "the multipart boundary must be 1 to {MAX_BOUNDARY_LEN} characters \
         from RFC 2046's set (letters, digits and '()+_,-./:=? )"
    )]
    BadBoundary,
}

/// Takes the boundary out of a `multipart/form-data` `Content-Type`.
///
/// ```
/// use fileupload::multipart::boundary;
/// assert_eq!(boundary("multipart/form-data; boundary=xyz").unwrap(), "xyz");
/// assert!(boundary("text/plain").is_err());
/// ```
pub fn boundary(content_type: &str) -> Result<String, ContentTypeError> {
    let not_multipart = || ContentTypeError::NotMultipart(content_type.to_owned());
    let (kind, params) = parse_params(content_type.as_bytes()).map_err(|_| not_multipart())?;
    if !kind.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(not_multipart());
    }
    let value = params
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"boundary"))
        .map(|(_, value)| value)
        .ok_or(ContentTypeError::NoBoundary)?;
    let bchar = |b: &u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(b);
    let valid = (1..=MAX_BOUNDARY_LEN).contains(&value.len())
        && value.iter().all(bchar)
        && !value.ends_with(b" ");
    if !valid {
        return Err(ContentTypeError::BadBoundary);
    }
    // All bchars are ASCII.
    Ok(String::from_utf8_lossy(&value).into_owned())
}

/// A part's description, from its `Content-Disposition` and `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartHeaders {
    /// The form field name (empty when the client sent none).
    pub name: String,
    /// Present for file parts. Bytes that are not UTF-8 are replaced, so the
    /// name is always safe to put in JSON; it is never used as a path.
    pub filename: Option<String>,
    pub content_type: Option<String>,
}

/// What the parser found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A part begins.
    Part(PartHeaders),
    /// Bytes of the current part's body; a part's body may come in many.
    Data(&'a [u8]),
    /// The current part is complete.
    PartEnd,
    /// The closing delimiter was read: the form is complete.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Done,
}

/// What one step of the state machine found, as buffer positions so that the
/// borrow of the buffer is taken only once, in [`Parser::next`].
enum Found {
    Part(PartHeaders),
    Data(usize, usize),
    PartEnd,
    End,
}

/// Pulls a multipart body from `R` and yields its [`Event`]s.
///
/// ```
/// use fileupload::multipart::{Event, Parser};
///
/// let body = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nhello\r\n--b--\r\n";
/// let mut parser = Parser::new(&body[..], "b");
/// let mut data = Vec::new();
/// loop {
///     match parser.next().unwrap() {
///         Event::Part(headers) => assert_eq!(headers.filename.as_deref(), Some("a.txt")),
///         Event::Data(bytes) => data.extend_from_slice(bytes),
///         Event::PartEnd => {}
///         Event::End => break,
///     }
/// }
/// assert_eq!(data, b"hello");
/// ```
pub struct Parser<R> {
    reader: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    state: State,
    /// `\r\n--boundary`: what ends a part's body.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    consumed: u64,
    preamble: usize,
}

impl<R: Read> Parser<R> {
    /// A parser with the default buffer size.
    pub fn new(reader: R, boundary: &str) -> Self {
        Self::with_buffer(reader, boundary, DEFAULT_BUFFER)
    }

    /// A parser whose buffer holds `capacity` bytes (raised to what the
    /// longest header block needs).
    pub fn with_buffer(reader: R, boundary: &str, capacity: usize) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let capacity = capacity.max(MAX_HEADER_BYTES + MAX_PREAMBLE + 2 * delimiter.len());
        let finder = memmem::Finder::new(&delimiter).into_owned();
        let mut buf = vec![0u8; capacity].into_boxed_slice();
        // The first delimiter needs no line break before it: pretend there
        // was one, so a single search finds the first and every later one.
        buf[..2].copy_from_slice(b"\r\n");
        Parser {
            reader,
            buf,
            start: 0,
            end: 2,
            eof: false,
            state: State::Preamble,
            delimiter,
            finder,
            consumed: 0,
            preamble: 0,
        }
    }

    /// Bytes read from the body so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next event. After [`Event::End`] every call returns `End` again.
    #[allow(clippy::should_implement_trait)] // a lending iterator: `Iterator` cannot express it
    pub fn next(&mut self) -> Result<Event<'_>, MultipartError> {
        let found = loop {
            if let Some(found) = self.step()? {
                break found;
            }
        };
        Ok(match found {
            Found::Part(headers) => Event::Part(headers),
            Found::Data(from, to) => Event::Data(&self.buf[from..to]),
            Found::PartEnd => Event::PartEnd,
            Found::End => Event::End,
        })
    }

    /// Reads and discards what follows the closing delimiter (RFC 2046's
    /// epilogue), at most `limit` bytes, so that the sender sees its body
    /// taken. Returns whether the end of the body was reached.
    pub fn drain(&mut self, limit: u64) -> Result<bool, MultipartError> {
        let mut left = limit;
        self.start = self.end;
        while !self.eof && left > 0 {
            let before = self.consumed;
            self.fill()?;
            left = left.saturating_sub(self.consumed - before);
            self.start = self.end;
        }
        Ok(self.eof)
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// One step of the state machine: `Some` when it found an event, `None`
    /// when it read more input and wants to look again.
    fn step(&mut self) -> Result<Option<Found>, MultipartError> {
        let dlen = self.delimiter.len();
        match self.state {
            State::Done => Ok(Some(Found::End)),
            State::Preamble => {
                if let Some(i) = self.finder.find(self.available()) {
                    self.start += i + dlen;
                    self.state = State::AfterDelimiter;
                    return Ok(None);
                }
                // Keep only what could still be the start of a delimiter.
                let skip = self.available().len().saturating_sub(dlen - 1);
                self.start += skip;
                self.preamble += skip;
                if self.preamble > MAX_PREAMBLE {
                    return Err(MultipartError::NoBoundary);
                }
                self.fill_or(MultipartError::NoBoundary)
            }
            State::AfterDelimiter => {
                let avail = self.available();
                if avail.starts_with(b"--") {
                    self.start += 2;
                    self.state = State::Done;
                    return Ok(Some(Found::End));
                }
                let padding = avail
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                if padding > MAX_PADDING {
                    return Err(MultipartError::BadDelimiter);
                }
                let rest = &avail[padding..];
                if rest.starts_with(b"\r\n") {
                    self.start += padding + 2;
                    self.state = State::Headers;
                    return Ok(None);
                }
                // Could still become "--" or padding + CRLF with more input.
                let undecided = rest.is_empty() || rest == b"\r" || (padding == 0 && avail == b"-");
                if undecided {
                    self.fill_or(MultipartError::Truncated)
                } else {
                    Err(MultipartError::BadDelimiter)
                }
            }
            State::Headers => {
                let avail = self.available();
                let block_end = if avail.starts_with(b"\r\n") {
                    // No headers at all: the blank line comes first.
                    Some((0, 2))
                } else {
                    let window = &avail[..avail.len().min(MAX_HEADER_BYTES + 4)];
                    memmem::find(window, b"\r\n\r\n").map(|i| (i, i + 4))
                };
                match block_end {
                    Some((len, skip)) => {
                        let headers = parse_part_headers(&avail[..len])?;
                        self.start += skip;
                        self.state = State::Body;
                        Ok(Some(Found::Part(headers)))
                    }
                    None if avail.len() >= MAX_HEADER_BYTES + 4 => {
                        Err(MultipartError::HeaderTooLong)
                    }
                    None => self.fill_or(MultipartError::Truncated),
                }
            }
            State::Body => {
                let avail_len = self.end - self.start;
                match self.finder.find(self.available()) {
                    Some(0) => {
                        self.start += dlen;
                        self.state = State::AfterDelimiter;
                        Ok(Some(Found::PartEnd))
                    }
                    Some(i) => {
                        let from = self.start;
                        self.start += i;
                        Ok(Some(Found::Data(from, from + i)))
                    }
                    // All but a possible delimiter prefix at the end is data.
                    None if avail_len >= dlen => {
                        let from = self.start;
                        self.start = self.end - (dlen - 1);
                        Ok(Some(Found::Data(from, self.start)))
                    }
                    None => self.fill_or(MultipartError::Truncated),
                }
            }
        }
    }

    /// Reads more input; at the end of the body, fails with `at_eof`.
    fn fill_or(&mut self, at_eof: MultipartError) -> Result<Option<Found>, MultipartError> {
        if self.eof {
            return Err(at_eof);
        }
        self.fill()?;
        Ok(None)
    }

    fn fill(&mut self) -> Result<(), MultipartError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.buf.len() / 2 {
            // Move the unread tail to the front. The tail is never longer
            // than a header block or a delimiter, so this copy is small.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    self.consumed += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MultipartError::Io(e)),
            }
        }
    }
}

/// Parses a part's header block (without its final blank line).
fn parse_part_headers(block: &[u8]) -> Result<PartHeaders, MultipartError> {
    let mut disposition: Option<Vec<u8>> = None;
    let mut content_type: Option<Vec<u8>> = None;
    // Which of the two the previous line set, for folded continuation lines.
    let mut last: Option<&mut Option<Vec<u8>>> = None;
    // Lines end in CRLF only: a bare LF (or CR) inside a quoted file name
    // is part of the name, kept as metadata like any other byte.
    for line in split_crlf(block) {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold: a continuation of the previous header's value.
            if let Some(Some(value)) = last.as_deref_mut() {
                value.push(b' ');
                value.extend_from_slice(trim(line));
            }
            continue;
        }
        let colon = memchr::memchr(b':', line).ok_or(MultipartError::BadHeader)?;
        let name = trim(&line[..colon]);
        if name.is_empty() || name.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(MultipartError::BadHeader);
        }
        let value = trim(&line[colon + 1..]).to_vec();
        last = if name.eq_ignore_ascii_case(b"content-disposition") {
            disposition = Some(value);
            Some(&mut disposition)
        } else if name.eq_ignore_ascii_case(b"content-type") {
            content_type = Some(value);
            Some(&mut content_type)
        } else {
            None
        };
    }
    let disposition = disposition.ok_or(MultipartError::NoDisposition)?;
    let (kind, params) = parse_params(&disposition).map_err(|_| MultipartError::BadDisposition)?;
    if !kind.eq_ignore_ascii_case(b"form-data") {
        return Err(MultipartError::NotFormData);
    }
    let mut name = None;
    let mut filename = None;
    let mut filename_ext = None;
    for (key, value) in params {
        if key.eq_ignore_ascii_case(b"name") {
            name = Some(value);
        } else if key.eq_ignore_ascii_case(b"filename") {
            filename = Some(value);
        } else if key.eq_ignore_ascii_case(b"filename*") {
            filename_ext = decode_ext_value(&value);
        }
    }
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok(PartHeaders {
        name: name.map(text).unwrap_or_default(),
        // RFC 6266: the extended form wins when a client sends both.
        filename: filename_ext.or(filename.map(text)),
        content_type: content_type.map(text).filter(|t| !t.is_empty()),
    })
}

fn split_crlf(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let (line, rest) = match memmem::find(bytes, b"\r\n") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, &b""[..]),
        };
        bytes = rest;
        Some(line)
    })
}

/// Parses `type; key=value; key="quoted value"` into the type and its
/// parameters. Inside quotes, `\"` and `\\` are escapes (curl sends them);
/// any other backslash is kept, because browsers send Windows paths
/// unescaped.
#[allow(clippy::type_complexity)]
fn parse_params(text: &[u8]) -> Result<(&[u8], Vec<(&[u8], Vec<u8>)>), ()> {
    let is_space = |b: u8| b == b' ' || b == b'\t';
    let split = memchr::memchr(b';', text).unwrap_or(text.len());
    let kind = trim(&text[..split]);
    if kind.is_empty() {
        return Err(());
    }
    let mut params = Vec::new();
    let mut rest = &text[split..];
    loop {
        rest = trim_start(rest);
        match rest.first() {
            None => return Ok((kind, params)),
            Some(b';') => rest = trim_start(&rest[1..]),
            Some(_) => return Err(()),
        }
        if rest.is_empty() {
            return Ok((kind, params)); // a trailing ';'
        }
        let key_len = rest
            .iter()
            .position(|&b| b == b'=' || b == b';' || is_space(b))
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        rest = trim_start(&rest[key_len..]);
        if rest.first() != Some(&b'=') || key.is_empty() {
            return Err(());
        }
        rest = trim_start(&rest[1..]);
        let mut value = Vec::new();
        if rest.first() == Some(&b'"') {
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return Err(()),
                    Some(b'"') => break,
                    Some(b'\\') if matches!(rest.get(i + 1), Some(b'"' | b'\\')) => {
                        value.push(rest[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
            rest = &rest[i + 1..];
        } else {
            let len = rest
                .iter()
                .position(|&b| b == b';' || is_space(b))
                .unwrap_or(rest.len());
            value.extend_from_slice(&rest[..len]);
            rest = &rest[len..];
        }
        params.push((key, value));
    }
}

/// Decodes an RFC 8187 extended value: `charset'language'percent-encoded`.
fn decode_ext_value(value: &[u8]) -> Option<String> {
    let mut pieces = value.splitn(3, |&b| b == b'\'');
    let charset = pieces.next()?;
    let _language = pieces.next()?;
    let encoded = pieces.next()?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(encoded[i]);
            i += 1;
        }
    }
    if charset.eq_ignore_ascii_case(b"utf-8") {
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[n..]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let n = bytes
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[..bytes.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read, to exercise
    /// every split of the input across reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[derive(Debug, PartialEq)]
    struct Part {
        headers: PartHeaders,
        data: Vec<u8>,
    }

    fn parse_with(body: &[u8], boundary: &str, step: usize) -> Result<Vec<Part>, MultipartError> {
        let reader = Trickle { data: body, step };
        let mut parser = Parser::with_buffer(reader, boundary, 0);
        let mut parts: Vec<Part> = Vec::new();
        let mut open = false;
        loop {
            match parser.next()? {
                Event::Part(headers) => {
                    assert!(!open, "part began inside a part");
                    open = true;
                    parts.push(Part {
                        headers,
                        data: Vec::new(),
                    });
                }
                Event::Data(bytes) => {
                    assert!(open && !bytes.is_empty());
                    parts.last_mut().unwrap().data.extend_from_slice(bytes);
                }
                Event::PartEnd => {
                    assert!(open);
                    open = false;
                }
                Event::End => {
                    assert!(!open);
                    assert_eq!(parser.next().unwrap(), Event::End);
                    return Ok(parts);
                }
            }
        }
    }

    /// Parses with every read size from 1 byte up, and checks they agree.
    fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
        let whole = parse_with(body, boundary, usize::MAX).map_err(|e| e.to_string());
        for step in [1, 2, 3, 5, 7, 13, 64, 1000] {
            let split = parse_with(body, boundary, step).map_err(|e| e.to_string());
            assert_eq!(split, whole, "read size {step}");
        }
        whole
    }

    fn file_part(boundary: &str, name: &str, filename: &str, data: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn several_files_and_fields() {
        let b = "XyZ";
        let mut body = file_part(
            b,
            "f1",
            "a.bin",
            b"first\r\nfile with --XyZ inside? no: \r\n--Xy",
        );
        body.extend(b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n");
        body.extend(file_part(b, "f2", "b.bin", b""));
        body.extend(b"--XyZ--\r\n");
        let parts = parse(&body, b).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].headers.filename.as_deref(), Some("a.bin"));
        assert_eq!(
            parts[0].headers.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            parts[0].data,
            b"first\r\nfile with --XyZ inside? no: \r\n--Xy"
        );
        assert_eq!(parts[1].headers.name, "title");
        assert_eq!(parts[1].headers.filename, None);
        assert_eq!(parts[1].data, b"Hello");
        assert_eq!(parts[2].data, b"");
    }

    #[test]
    fn data_that_almost_contains_the_delimiter() {
        // Every prefix of the delimiter, at the end of a part.
        let delimiter = b"\r\n--bound";
        for cut in 0..delimiter.len() {
            let mut data = b"payload".to_vec();
            data.extend_from_slice(&delimiter[..cut]);
            let mut body = file_part("bound", "f", "x", &data);
            body.extend(b"--bound--");
            let parts = parse(&body, "bound").unwrap();
            assert_eq!(parts[0].data, data, "cut {cut}");
        }
    }

    #[test]
    fn preamble_epilogue_padding_and_folding() {
        let body = b"This is a preamble.\r\n--b  \t\r\nContent-Disposition: form-data;\r\n name=\"x\"\r\n\r\nv\r\n--b--\r\nepilogue";
        let parts = parse(body, "b").unwrap();
        assert_eq!(parts[0].headers.name, "x");
        assert_eq!(parts[0].data, b"v");
    }

    #[test]
    fn filename_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"form-data; name="f"; filename="C:\dir\a.txt""#,
                Some(r"C:\dir\a.txt"),
            ),
            (
                r#"form-data; name="f"; filename="a\"b.txt""#,
                Some("a\"b.txt"),
            ),
            (
                r#"form-data; name="f"; filename="a;b=c.txt""#,
                Some("a;b=c.txt"),
            ),
            (
                r#"form-data; name=f; filename=plain.txt"#,
                Some("plain.txt"),
            ),
            (
                r#"form-data; name="f"; filename="x"; filename*=UTF-8''%E2%82%AC.txt"#,
                Some("€.txt"),
            ),
            (
                r#"FORM-DATA; NAME="f"; FILENAME="../../etc/passwd""#,
                Some("../../etc/passwd"),
            ),
            (r#"form-data; name="f""#, None),
        ];
        for (disposition, expected) in cases {
            let body = format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nx\r\n--b--");
            let parts = parse(body.as_bytes(), "b").unwrap();
            assert_eq!(
                parts[0].headers.filename.as_deref(),
                *expected,
                "{disposition}"
            );
            assert_eq!(parts[0].headers.name, "f");
        }
    }

    #[test]
    fn non_utf8_filename_is_kept_lossily() {
        let mut body = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\xff\x00b\"\r\n\r\nx\r\n--b--".to_vec();
        let parts = parse(&body, "b").unwrap();
        assert_eq!(parts[0].headers.filename.as_deref(), Some("a\u{fffd}\0b"));
        body.truncate(0);
    }

    #[test]
    fn malformed_bodies() {
        let big_header = format!(
            "--b\r\nContent-Disposition: form-data; name=\"f\"\r\nX-Pad: {}\r\n\r\nx\r\n--b--",
            "p".repeat(MAX_HEADER_BYTES)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "does not start with the multipart boundary"),
            (
                vec![b'z'; 20_000],
                "does not start with the multipart boundary",
            ),
            (b"--other\r\n".to_vec(), "does not start"),
            (b"--b".to_vec(), "ended before"),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n".to_vec(),
                "ended before",
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\ndata".to_vec(),
                "ended before",
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\ndata\r\n--b".to_vec(),
                "ended before",
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\ndata\r\n--b-".to_vec(),
                "ended before",
            ),
            (b"--bxyz\r\n".to_vec(), "malformed multipart boundary line"),
            (
                b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--".to_vec(),
                "no Content-Disposition",
            ),
            (b"--b\r\n\r\nx\r\n--b--".to_vec(), "no Content-Disposition"),
            (
                b"--b\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nx\r\n--b--".to_vec(),
                "not form-data",
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"f\r\n\r\nx\r\n--b--".to_vec(),
                "malformed Content-Disposition",
            ),
            (
                b"--b\r\nno colon here\r\n\r\nx\r\n--b--".to_vec(),
                "malformed part header",
            ),
            (big_header.into_bytes(), "longer than 8192 bytes"),
        ];
        for (body, expected) in cases {
            let err = parse(&body, "b").unwrap_err();
            assert!(
                err.contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
    }

    #[test]
    fn header_block_at_the_limit_is_accepted() {
        let head = "--b\r\nContent-Disposition: form-data; name=\"f\"\r\nX-Pad: ";
        let fixed = "Content-Disposition: form-data; name=\"f\"\r\nX-Pad: ".len();
        let pad = "p".repeat(MAX_HEADER_BYTES - fixed);
        let body = format!("{head}{pad}\r\n\r\nx\r\n--b--");
        assert_eq!(parse(body.as_bytes(), "b").unwrap()[0].data, b"x");
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data ; charset=utf-8; boundary=\"a b:c\"").unwrap(),
            "a b:c"
        );
        assert_eq!(
            boundary("multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW").unwrap(),
            "----WebKitFormBoundary7MA4YWxkTrZu0gW"
        );
        let not = |t: &str| ContentTypeError::NotMultipart(t.to_owned());
        assert_eq!(boundary("text/plain"), Err(not("text/plain")));
        assert_eq!(boundary(""), Err(not("")));
        assert_eq!(
            boundary("multipart/mixed; boundary=a"),
            Err(not("multipart/mixed; boundary=a"))
        );
        assert_eq!(
            boundary("multipart/form-data"),
            Err(ContentTypeError::NoBoundary)
        );
        assert_eq!(
            boundary("multipart/form-data; boundary="),
            Err(ContentTypeError::BadBoundary)
        );
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert_eq!(boundary(&long), Err(ContentTypeError::BadBoundary));
        let max = format!("multipart/form-data; boundary={}", "a".repeat(70));
        assert!(boundary(&max).is_ok());
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a\r\nb\""),
            Err(ContentTypeError::BadBoundary)
        );
    }

    #[test]
    fn consumed_counts_body_bytes_and_drain_reads_the_rest() {
        let mut body = file_part("b", "f", "x", b"12345");
        body.extend(b"--b--\r\n");
        let total = body.len() as u64;
        body.extend(vec![b'e'; 1000]);
        let mut parser = Parser::new(&body[..], "b");
        while parser.next().unwrap() != Event::End {}
        assert!(parser.consumed() >= total);
        assert!(parser.drain(10_000).unwrap());
        assert_eq!(parser.consumed(), total + 1000);
    }
}
