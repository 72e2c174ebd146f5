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

use crate::transfer_encoding::{DecodeError, Decoder, TransferEncoding};

/// Longest header block a part may have.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY_LEN: usize = 70;
/// How much may come before the first boundary line (RFC 2046's preamble).
/// Browsers send none; a long one is a body of something else.
const MAX_PREAMBLE: usize = 8 * 1024;
/// Spaces allowed between a boundary and its line end ("transport padding").
const MAX_PADDING: usize = 64;
/// Most pieces an RFC 2231 continued file name (`filename*0`,
/// `filename*1`, ...) may have. The header block's own bound (8 KiB) already
/// limits their length; this bounds the bookkeeping.
pub const MAX_FILENAME_PIECES: usize = 64;
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
    /// Two headers that say different things about one part: a front end
    /// that reads the first would see another form than this receiver.
    #[error("a part has more than one {0} header")]
    DuplicateHeader(&'static str),
    #[error("a part's Content-Disposition has more than one {0:?} parameter")]
    DuplicateParameter(String),
    #[error(
        "a part's file name continuations (filename*0, filename*1, ...) are not numbered \
         0, 1, 2, ... without gaps or repeats, or are more than {MAX_FILENAME_PIECES}"
    )]
    BadContinuation,
    #[error(
        "a part's Content-Transfer-Encoding is {0:?}; accepted are 7bit, 8bit, binary, \
         base64 and quoted-printable"
    )]
    UnknownTransferEncoding(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
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
        "the multipart boundary must be 1 to {MAX_BOUNDARY_LEN} bytes long, \
         with no CR, LF or NUL"
    )]
    BadBoundary,
}

/// Takes the boundary out of a `multipart/form-data` `Content-Type`.
///
/// Any boundary of 1 to 70 bytes without CR, LF or NUL is accepted, quoted
/// or not, although RFC 2046 allows fewer characters: old clients and some
/// libraries send `\`, `$` and the like, every widely used parser takes
/// them, and refusing a real client's upload fails its user. Only what
/// cannot be matched on a line (a line break) or is surely not text (NUL)
/// is refused, and a boundary longer than RFC 2046's 70.
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
    let valid = (1..=MAX_BOUNDARY_LEN).contains(&value.len())
        && !value.iter().any(|b| matches!(b, b'\r' | b'\n' | b'\0'));
    if !valid {
        return Err(ContentTypeError::BadBoundary);
    }
    // The value is a piece of a `&str` with ASCII escapes removed, so it is
    // UTF-8; a boundary that were not could not be matched faithfully.
    String::from_utf8(value).map_err(|_| ContentTypeError::BadBoundary)
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
    /// From `Content-Transfer-Encoding`. The parser decodes the body, so
    /// [`Event::Data`] always carries the content, never its encoding.
    pub transfer_encoding: TransferEncoding,
}

/// What the parser found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A part begins.
    Part(PartHeaders),
    /// Bytes of the current part's body (decoded, when the part has a
    /// transfer encoding); a part's body may come in many, never empty.
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
    /// After a header block, at the CRLF of its blank line: that CRLF may
    /// also be the one that begins the next delimiter (an empty body).
    BodyStart,
    Body,
    Done,
}

/// What one step of the state machine found, as buffer positions so that the
/// borrow of the buffer is taken only once, in [`Parser::next`].
enum Found {
    Part(PartHeaders),
    Data(usize, usize),
    /// The current part's decoded bytes are in `Parser::decoded`.
    Decoded,
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
    /// Starts at the least a header block needs and doubles, up to
    /// `max_buf`, each time a read fills all of its free room: a fast body
    /// gets large reads within a few, and a slow one (a phone, a trickle)
    /// never costs more than that least. A thousand slow uploads would
    /// otherwise hold a thousand full buffers (glibc zeroes a reused
    /// one on allocation, so even the unread part is resident).
    buf: Vec<u8>,
    max_buf: usize,
    start: usize,
    end: usize,
    eof: bool,
    state: State,
    /// `\r\n--boundary`: what ends a part's body.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    consumed: u64,
    preamble: usize,
    /// The current part's transfer decoding, and where it puts its output
    /// (never longer than the slice of the buffer it decodes).
    decoder: Decoder,
    decoded: Vec<u8>,
}

impl<R: Read> Parser<R> {
    /// A parser with the default buffer size.
    pub fn new(reader: R, boundary: &str) -> Self {
        Self::with_buffer(reader, boundary, DEFAULT_BUFFER)
    }

    /// A parser whose buffer grows to `capacity` bytes (raised to what the
    /// longest header block needs).
    pub fn with_buffer(reader: R, boundary: &str, capacity: usize) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let least = MAX_HEADER_BYTES + MAX_PREAMBLE + 2 * delimiter.len();
        let finder = memmem::Finder::new(&delimiter).into_owned();
        let mut buf = vec![0u8; least];
        // The first delimiter needs no line break before it: pretend there
        // was one, so a single search finds the first and every later one.
        buf[..2].copy_from_slice(b"\r\n");
        Parser {
            reader,
            buf,
            max_buf: capacity.max(least),
            start: 0,
            end: 2,
            eof: false,
            state: State::Preamble,
            delimiter,
            finder,
            consumed: 0,
            preamble: 0,
            decoder: Decoder::new(TransferEncoding::Identity),
            decoded: Vec::new(),
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
            match self.step()? {
                None => {}
                Some(Found::Data(from, to))
                    if self.decoder.encoding() != TransferEncoding::Identity =>
                {
                    self.decoded.clear();
                    self.decoder.feed(&self.buf[from..to], &mut self.decoded)?;
                    // An encoded slice may yield nothing yet (a carry).
                    if !self.decoded.is_empty() {
                        break Found::Decoded;
                    }
                }
                Some(Found::PartEnd) => {
                    self.decoder.finish()?;
                    break Found::PartEnd;
                }
                Some(found) => break found,
            }
        };
        Ok(match found {
            Found::Part(headers) => Event::Part(headers),
            Found::Data(from, to) => Event::Data(&self.buf[from..to]),
            Found::Decoded => Event::Data(&self.decoded),
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
                // The block's length, and where its blank line starts.
                let block_end = if avail.starts_with(b"\r\n") {
                    // No headers at all: the blank line comes first.
                    Some((0, 0))
                } else {
                    let window = &avail[..avail.len().min(MAX_HEADER_BYTES + 4)];
                    memmem::find(window, b"\r\n\r\n").map(|i| (i, i + 2))
                };
                match block_end {
                    Some((len, blank)) => {
                        let headers = parse_part_headers(&avail[..len])?;
                        self.decoder = Decoder::new(headers.transfer_encoding);
                        self.start += blank;
                        self.state = State::BodyStart;
                        Ok(Some(Found::Part(headers)))
                    }
                    None if avail.len() >= MAX_HEADER_BYTES + 4 => {
                        Err(MultipartError::HeaderTooLong)
                    }
                    None => self.fill_or(MultipartError::Truncated),
                }
            }
            State::BodyStart => {
                // RFC 2046: `body-part := MIME-part-headers [CRLF *OCTET]`.
                // The CRLF before the body is optional, so a blank line
                // followed by `--boundary` is an empty body and the next
                // delimiter. The other reading (a body that begins with
                // `--boundary`) would put a delimiter inside a part, which
                // RFC 2046 forbids.
                let avail = self.available();
                if avail.starts_with(&self.delimiter) {
                    self.start += dlen;
                    self.state = State::AfterDelimiter;
                    return Ok(Some(Found::PartEnd));
                }
                if avail.len() < dlen && self.delimiter.starts_with(avail) {
                    return self.fill_or(MultipartError::Truncated);
                }
                self.start += 2;
                self.state = State::Body;
                Ok(None)
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
            let room = self.buf.len() - self.end;
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    self.consumed += n as u64;
                    if n == room && self.buf.len() < self.max_buf {
                        let grown = (self.buf.len() * 2).min(self.max_buf);
                        self.buf.resize(grown, 0);
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MultipartError::Io(e)),
            }
        }
    }
}

/// Parses a part's header block (without its final blank line).
///
/// Refused as ambiguous: a second `Content-Disposition` or
/// `Content-Transfer-Encoding` header, and a repeated `name`, `filename` or
/// `filename*` parameter. Another reader (a front end, a scanner) may take
/// the first where this one would take the last, and see another form.
fn parse_part_headers(block: &[u8]) -> Result<PartHeaders, MultipartError> {
    let mut disposition: Option<Vec<u8>> = None;
    let mut content_type: Option<Vec<u8>> = None;
    let mut encoding: Option<Vec<u8>> = None;
    // Which value the previous line set, for folded continuation lines.
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
        let value = Some(trim(&line[colon + 1..]).to_vec());
        last = if name.eq_ignore_ascii_case(b"content-disposition") {
            if disposition.is_some() {
                return Err(MultipartError::DuplicateHeader("Content-Disposition"));
            }
            disposition = value;
            Some(&mut disposition)
        } else if name.eq_ignore_ascii_case(b"content-type") {
            content_type = value;
            Some(&mut content_type)
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            if encoding.is_some() {
                return Err(MultipartError::DuplicateHeader("Content-Transfer-Encoding"));
            }
            encoding = value;
            Some(&mut encoding)
        } else {
            None
        };
    }
    // A value folded onto the next line after an empty first line got a
    // space in front of it above: trim once the value is whole.
    let header_text = |bytes: Vec<u8>| String::from_utf8_lossy(trim(&bytes)).into_owned();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    let transfer_encoding = match encoding.map(header_text) {
        None => TransferEncoding::Identity,
        Some(value) => {
            TransferEncoding::parse(&value).ok_or(MultipartError::UnknownTransferEncoding(value))?
        }
    };
    let disposition = disposition.ok_or(MultipartError::NoDisposition)?;
    let (kind, params) =
        parse_params(trim(&disposition)).map_err(|_| MultipartError::BadDisposition)?;
    if !kind.eq_ignore_ascii_case(b"form-data") {
        return Err(MultipartError::NotFormData);
    }
    let mut name = None;
    let mut filename = None;
    let mut filename_ext = None;
    let mut pieces = Vec::new();
    for (key, value) in params {
        let once = |slot: &mut Option<Vec<u8>>, value: Vec<u8>| match slot {
            Some(_) => Err(MultipartError::DuplicateParameter(
                String::from_utf8_lossy(key).to_lowercase(),
            )),
            None => {
                *slot = Some(value);
                Ok(())
            }
        };
        if key.eq_ignore_ascii_case(b"name") {
            once(&mut name, value)?;
        } else if key.eq_ignore_ascii_case(b"filename") {
            once(&mut filename, value)?;
        } else if key.eq_ignore_ascii_case(b"filename*") {
            once(&mut filename_ext, value)?;
        } else if let Some(piece) = continuation(key, value)? {
            pieces.push(piece);
        }
    }
    // RFC 6266 4.3: the extended form wins when a client sends both. An
    // extended value that cannot be decoded (an unknown charset, a broken
    // %-escape) is ignored in favour of the plain one, as RFC 6266 asks;
    // with no plain one, its raw text still names the file, so the part
    // stays a file part.
    let filename = match (filename_ext, join_continuations(pieces)?, filename) {
        (Some(ext), _, plain) => match (decode_ext_value(&ext), plain) {
            (Some(decoded), _) => Some(decoded),
            (None, Some(plain)) => Some(text(plain)),
            (None, None) => Some(text(ext)),
        },
        (None, Some(joined), _) => Some(joined),
        (None, None, plain) => plain.map(text),
    };
    Ok(PartHeaders {
        name: name.map(text).unwrap_or_default(),
        filename,
        content_type: content_type.map(header_text).filter(|t| !t.is_empty()),
        transfer_encoding,
    })
}

/// One piece of an RFC 2231 continued file name: its number, whether it
/// is extended (`filename*N*`, %-encoded), and its value.
type Piece = (usize, bool, Vec<u8>);

/// Reads `filename*N` or `filename*N*`; `None` for any other parameter.
fn continuation(key: &[u8], value: Vec<u8>) -> Result<Option<Piece>, MultipartError> {
    let Some(rest) = key
        .get(..9)
        .filter(|prefix| prefix.eq_ignore_ascii_case(b"filename*"))
        .map(|_| &key[9..])
    else {
        return Ok(None);
    };
    let (digits, extended) = match rest.strip_suffix(b"*") {
        Some(digits) => (digits, true),
        None => (rest, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    // RFC 2231 3: no leading zeros. A number past the bound (or too large
    // for usize) is refused here, so no piece is ever kept for it.
    if digits.len() > 1 && digits[0] == b'0' {
        return Err(MultipartError::BadContinuation);
    }
    let number = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|&n| n < MAX_FILENAME_PIECES)
        .ok_or(MultipartError::BadContinuation)?;
    Ok(Some((number, extended, value)))
}

/// Joins RFC 2231 continuations in the order of their numbers, which must
/// run 0, 1, 2, ... with no gap or repeat (a gap means a lost piece: the
/// name would be wrong). Extended pieces are %-decoded in the charset that
/// piece 0 names (RFC 2231 4.1: only the first piece carries it); plain
/// pieces are taken as they are.
fn join_continuations(mut pieces: Vec<Piece>) -> Result<Option<String>, MultipartError> {
    if pieces.is_empty() {
        return Ok(None);
    }
    pieces.sort_by_key(|piece| piece.0);
    if pieces.iter().enumerate().any(|(i, piece)| piece.0 != i) {
        return Err(MultipartError::BadContinuation);
    }
    let mut charset = Charset::Utf8;
    let mut name = Vec::new();
    for (number, extended, value) in pieces {
        if !extended {
            name.extend_from_slice(&value);
            continue;
        }
        let mut encoded = &value[..];
        if number == 0 {
            let mut parts = value.splitn(3, |&b| b == b'\'');
            let (Some(set), Some(_language), Some(rest)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(MultipartError::BadDisposition);
            };
            // An unknown charset: its bytes are kept as UTF-8 would read
            // them, lossily, rather than losing the file.
            charset = Charset::named(set).unwrap_or(Charset::Utf8);
            encoded = rest;
        }
        let bytes = percent_decode(encoded).ok_or(MultipartError::BadDisposition)?;
        charset.append_utf8(&bytes, &mut name);
    }
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// The charsets RFC 8187 requires recipients to support.
#[derive(Clone, Copy)]
enum Charset {
    Utf8,
    Latin1,
}

impl Charset {
    fn named(name: &[u8]) -> Option<Charset> {
        if name.eq_ignore_ascii_case(b"utf-8") {
            Some(Charset::Utf8)
        } else if name.eq_ignore_ascii_case(b"iso-8859-1") {
            Some(Charset::Latin1)
        } else {
            None
        }
    }

    /// Appends `bytes`, converted to UTF-8.
    fn append_utf8(self, bytes: &[u8], out: &mut Vec<u8>) {
        match self {
            Charset::Utf8 => out.extend_from_slice(bytes),
            Charset::Latin1 => {
                for &b in bytes {
                    let mut utf8 = [0; 2];
                    out.extend_from_slice(char::from(b).encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
    }
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
        // A parameter name is a token: a control character in it (a bare
        // CR, say) is a broken header, not a name to match or ignore.
        let token = !key.is_empty() && key.iter().all(u8::is_ascii_graphic);
        if rest.first() != Some(&b'=') || !token {
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
/// `None` when it is malformed or its charset is not one RFC 8187 requires.
fn decode_ext_value(value: &[u8]) -> Option<String> {
    let mut pieces = value.splitn(3, |&b| b == b'\'');
    let charset = Charset::named(pieces.next()?)?;
    let _language = pieces.next()?;
    let bytes = percent_decode(pieces.next()?)?;
    let mut utf8 = Vec::with_capacity(bytes.len());
    charset.append_utf8(&bytes, &mut utf8);
    Some(String::from_utf8_lossy(&utf8).into_owned())
}

/// `%XX` to bytes; `None` for a `%` without two hex digits.
fn percent_decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            let digit = |b: u8| char::from(b).to_digit(16);
            bytes.push(u8::try_from(digit(hex[0])? << 4 | digit(hex[1])?).ok()?);
            i += 3;
        } else {
            bytes.push(encoded[i]);
            i += 1;
        }
    }
    Some(bytes)
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
    fn the_buffer_grows_for_a_fast_body_and_not_for_a_slow_one() {
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n".to_vec();
        body.extend(vec![b'x'; 1 << 20]);
        body.extend(b"\r\n--b--\r\n");
        let drain = |parser: &mut Parser<Trickle<'_>>| {
            let mut most = 0;
            let mut data = 0;
            loop {
                match parser.next().unwrap() {
                    Event::Data(bytes) => data += bytes.len(),
                    Event::End => break,
                    _ => {}
                }
                most = most.max(parser.buf.len());
            }
            (most, data)
        };
        let mut slow = Parser::new(
            Trickle {
                data: &body,
                step: 4096,
            },
            "b",
        );
        let least = slow.buf.len();
        assert_eq!(
            drain(&mut slow),
            (least, 1 << 20),
            "small reads keep the least"
        );
        let mut fast = Parser::new(
            Trickle {
                data: &body,
                step: usize::MAX,
            },
            "b",
        );
        assert_eq!(
            drain(&mut fast),
            (DEFAULT_BUFFER, 1 << 20),
            "full reads grow it"
        );
        assert!(least < DEFAULT_BUFFER / 8, "{least}");
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
                b"--b\r\nContent-Disposition: form-data; n\rme=\"f\"\r\n\r\nx\r\n--b--".to_vec(),
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

    /// Issue 10, defect 1: the blank line after a header block doubles as
    /// the CRLF of the next delimiter, so the part is empty. The old parser
    /// stored the next part's delimiter, headers and data in the first file
    /// and lost the second; as the last part it said "ended before".
    #[test]
    fn empty_body_whose_blank_line_begins_the_next_delimiter() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"empty.txt\"\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"b\"; filename=\"b.txt\"\r\n\r\nhello world\r\n--XX--\r\n";
        let parts = parse(body, "XX").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].headers.filename.as_deref(), Some("empty.txt"));
        assert_eq!(parts[0].data, b"");
        assert_eq!(parts[1].headers.filename.as_deref(), Some("b.txt"));
        assert_eq!(parts[1].data, b"hello world");

        let last = b"--XX\r\nContent-Disposition: form-data; name=\"b\"; filename=\"b.txt\"\r\n\r\nhello world\r\n--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"empty.txt\"\r\n\r\n--XX--\r\n";
        let parts = parse(last, "XX").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].data, b"hello world");
        assert_eq!(parts[1].headers.filename.as_deref(), Some("empty.txt"));
        assert_eq!(parts[1].data, b"");

        // The usual empty body (blank line, then the delimiter's own CRLF)
        // and a body of one line break are unchanged.
        let usual = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"c\"\r\n\r\n\r\n\r\n--XX--";
        let parts = parse(usual, "XX").unwrap();
        assert_eq!(parts[0].data, b"");
        assert_eq!(parts[1].data, b"\r\n");
        // A body that begins with the whole delimiter line cannot be data
        // (RFC 2046: no delimiter inside a part); one that begins with
        // something else after `--XX` is refused, not stored wrongly.
        let odd = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n--XXjunk\r\n--XX--";
        assert!(
            parse(odd, "XX")
                .unwrap_err()
                .contains("malformed multipart boundary line")
        );
    }

    fn first_filename(disposition: &str) -> Result<Option<String>, String> {
        let body = format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nx\r\n--b--");
        parse(body.as_bytes(), "b").map(|parts| parts[0].headers.filename.clone())
    }

    /// Issue 10, defect 2: any `filename*N` makes a file part, its pieces
    /// joined in order and decoded. The old parser made these text fields.
    #[test]
    fn rfc2231_continued_file_names() {
        let cases: &[(&str, &str)] = &[
            (
                r#"form-data; name="f"; filename*0*=UTF-8''a%20b; filename*1*=.txt"#,
                "a b.txt",
            ),
            (
                r#"form-data; name="f"; filename*0="a b"; filename*1=".txt""#,
                "a b.txt",
            ),
            (
                r#"form-data; name="f"; filename*1=".txt"; filename*0="out of order""#,
                "out of order.txt",
            ),
            (
                r#"form-data; name="f"; filename*0*=utf-8'en'%E2%82; filename*1*=%AC; filename*2=" euro""#,
                "€ euro",
            ),
            (
                r#"form-data; name="f"; filename*0*=iso-8859-1''caf%E9; filename*1*=.txt"#,
                "café.txt",
            ),
            (r#"form-data; name="f"; FILENAME*0=one"#, "one"),
            // Precedence: filename* > filename*N > filename.
            (
                r#"form-data; name="f"; filename="plain"; filename*0="cont""#,
                "cont",
            ),
            (
                r#"form-data; name="f"; filename*=UTF-8''ext; filename*0="cont"; filename="plain""#,
                "ext",
            ),
            // An undecodable filename* gives way to the plain name.
            (
                r#"form-data; name="f"; filename="plain"; filename*=koi8-r''%C1"#,
                "plain",
            ),
            (r#"form-data; name="f"; filename*=no-quotes"#, "no-quotes"),
        ];
        for (disposition, expected) in cases {
            assert_eq!(
                first_filename(disposition).unwrap().as_deref(),
                Some(*expected),
                "{disposition}"
            );
        }
        let refused: &[&str] = &[
            r#"form-data; name="f"; filename*0="a"; filename*2="c""#,
            r#"form-data; name="f"; filename*1="b""#,
            r#"form-data; name="f"; filename*0="a"; filename*0="b""#,
            r#"form-data; name="f"; filename*00="a""#,
            r#"form-data; name="f"; filename*64="a""#,
            r#"form-data; name="f"; filename*99999999999999999999999="a""#,
        ];
        for disposition in refused {
            let err = first_filename(disposition).unwrap_err();
            assert!(
                err.contains("file name continuations"),
                "{disposition}: {err}"
            );
        }
        let mut many = String::from(r#"form-data; name="f""#);
        for i in 0..MAX_FILENAME_PIECES {
            many.push_str(&format!("; filename*{i}=p"));
        }
        assert_eq!(
            first_filename(&many).unwrap(),
            Some("p".repeat(MAX_FILENAME_PIECES))
        );
        assert!(
            first_filename(r#"form-data; name="f"; filename*0*=UTF-8''bad%2"#)
                .unwrap_err()
                .contains("malformed Content-Disposition")
        );
    }

    /// Issue 10, defect 3: base64 and quoted-printable parts are decoded,
    /// for files and fields, whatever the read sizes; the old parser
    /// handed out the encoded text.
    #[test]
    fn transfer_encoded_parts_are_decoded() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8g\r\nd29ybGQ=\r\n--b\r\nContent-Disposition: form-data; name=\"t\"\r\ncontent-transfer-encoding: Quoted-Printable\r\n\r\ncaf=C3=A9 =\r\nau lait\r\n--b\r\nContent-Disposition: form-data; name=\"e\"; filename=\"e\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n--b--";
        let parts = parse(body, "b").unwrap();
        assert_eq!(parts[0].headers.transfer_encoding, TransferEncoding::Base64);
        assert_eq!(parts[0].data, b"hello world");
        assert_eq!(
            parts[1].headers.transfer_encoding,
            TransferEncoding::QuotedPrintable
        );
        assert_eq!(parts[1].data, "café au lait".as_bytes());
        assert_eq!(parts[2].data, b"");
        for name in ["7bit", "8BIT", "Binary"] {
            let body = format!(
                "--b\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: {name}\r\n\r\n=41\r\n--b--"
            );
            let parts = parse(body.as_bytes(), "b").unwrap();
            assert_eq!(parts[0].data, b"=41", "{name}");
            assert_eq!(
                parts[0].headers.transfer_encoding,
                TransferEncoding::Identity
            );
        }
        let refused: &[(&str, &str)] = &[
            ("x-uuencode", "Content-Transfer-Encoding is \"x-uuencode\""),
            (
                "gzip",
                "accepted are 7bit, 8bit, binary, base64 and quoted-printable",
            ),
        ];
        for (name, expected) in refused {
            let body = format!(
                "--b\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: {name}\r\n\r\nx\r\n--b--"
            );
            let err = parse(body.as_bytes(), "b").unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
        for (data, expected) in [
            ("aGVsbG8*", "not a base64 character"),
            ("aGVsbG8", "ends inside a 4-character group"),
            ("aGVsbA==aGVs", "data after its '=' padding"),
        ] {
            let body = format!(
                "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{data}\r\n--b--"
            );
            let err = parse(body.as_bytes(), "b").unwrap_err();
            assert!(err.contains(expected), "{data}: {err}");
        }
    }

    /// A large base64 part comes out exactly, in slices no longer than the
    /// buffer: memory does not grow with the part.
    #[test]
    fn a_large_base64_part_streams() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut encoded = Vec::new();
        for (n, chunk) in data.chunks(3).enumerate() {
            let g = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = u32::from(g[0]) << 16 | u32::from(g[1]) << 8 | u32::from(g[2]);
            for k in 0..4 {
                encoded.push(if k <= chunk.len() {
                    table[(v >> (18 - 6 * k) & 63) as usize]
                } else {
                    b'='
                });
            }
            if n % 19 == 18 {
                encoded.extend_from_slice(b"\r\n");
            }
        }
        let mut body = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        body.extend_from_slice(&encoded);
        body.extend_from_slice(b"\r\n--b--");
        let mut parser = Parser::new(&body[..], "b");
        let mut out = Vec::new();
        let mut longest = 0;
        loop {
            match parser.next().unwrap() {
                Event::Data(bytes) => {
                    longest = longest.max(bytes.len());
                    out.extend_from_slice(bytes);
                }
                Event::End => break,
                _ => {}
            }
        }
        // Not assert_eq: a failure would print megabytes.
        assert!(out == data, "{} bytes out, {} in", out.len(), data.len());
        assert!(longest <= DEFAULT_BUFFER, "{longest}");
        assert!(
            parser.decoded.capacity() <= DEFAULT_BUFFER,
            "{}",
            parser.decoded.capacity()
        );
    }

    /// Issue 10, defect 4: a value folded onto the next line after an empty
    /// first line has no leading space (it was " text/plain").
    #[test]
    fn folded_value_after_an_empty_first_line_is_trimmed() {
        let body = b"--b\r\nContent-Disposition:\r\n form-data; name=\"f\"; filename=\"a\"\r\nContent-Type:\r\n\ttext/plain\r\nContent-Transfer-Encoding:\r\n  base64\r\n\r\naGk=\r\n--b--";
        let parts = parse(body, "b").unwrap();
        assert_eq!(parts[0].headers.content_type.as_deref(), Some("text/plain"));
        assert_eq!(parts[0].headers.filename.as_deref(), Some("a"));
        assert_eq!(parts[0].data, b"hi");
    }

    /// Issue 10, defect 5: boundaries outside RFC 2046's set, which real
    /// clients send, are accepted (they were refused with 400).
    #[test]
    fn boundaries_outside_rfc_2046s_set() {
        for boundary in [
            r"\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/\/",
            "$ome$boundary",
            "a[b]{c}<d>",
            "semi;colon",
            "a\tb",
            "ends with space ",
            "é",
        ] {
            let quoted = boundary.replace('\\', "\\\\").replace('"', "\\\"");
            let got = super::boundary(&format!("multipart/form-data; boundary=\"{quoted}\""));
            assert_eq!(got.as_deref(), Ok(boundary), "{boundary:?}");
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\ndata\r\n--{boundary}--\r\n"
            );
            assert_eq!(parse(body.as_bytes(), boundary).unwrap()[0].data, b"data");
        }
        for unquoted in [r"\/\/", "$$", "a%b"] {
            let got = super::boundary(&format!("multipart/form-data; boundary={unquoted}"));
            assert_eq!(got.as_deref(), Ok(unquoted));
        }
        for refused in ["\"\"", "\"a\rb\"", "\"a\nb\"", "\"a\0b\""] {
            let got = super::boundary(&format!("multipart/form-data; boundary={refused}"));
            assert_eq!(got, Err(ContentTypeError::BadBoundary), "{refused:?}");
        }
    }

    /// Issue 10, defect 6: a second Content-Disposition (the last one won)
    /// and repeated parameters are refused.
    #[test]
    fn duplicate_dispositions_and_parameters_are_refused() {
        let cases: &[(&str, &str)] = &[
            (
                "Content-Disposition: form-data; name=\"a\"; filename=\"a.txt\"\r\nContent-Disposition: form-data; name=\"b\"; filename=\"b.txt\"",
                "more than one Content-Disposition header",
            ),
            (
                "Content-Disposition: form-data; name=\"a\"\r\ncontent-disposition: form-data; name=\"a\"",
                "more than one Content-Disposition header",
            ),
            (
                "Content-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 8bit",
                "more than one Content-Transfer-Encoding header",
            ),
            (
                "Content-Disposition: form-data; name=\"a\"; name=\"b\"",
                "more than one \"name\" parameter",
            ),
            (
                "Content-Disposition: form-data; name=\"a\"; filename=\"x\"; FILENAME=\"y\"",
                "more than one \"filename\" parameter",
            ),
            (
                "Content-Disposition: form-data; name=\"a\"; filename*=UTF-8''x; filename*=UTF-8''y",
                "more than one \"filename*\" parameter",
            ),
        ];
        for (headers, expected) in cases {
            let body = format!("--b\r\n{headers}\r\n\r\nx\r\n--b--");
            let err = parse(body.as_bytes(), "b").unwrap_err();
            assert!(err.contains(expected), "{headers}: {err}");
        }
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
