//! Streaming decoders for a part's `Content-Transfer-Encoding` (RFC 2045).
//!
//! RFC 7578 deprecates the header for `multipart/form-data`, but senders
//! that reuse MIME mail code still write `base64` or `quoted-printable`
//! parts. Storing the encoded text as if it were the file would report a
//! size and a SHA-256 of bytes the client never meant to send, so those
//! two are decoded; `7bit`, `8bit` and `binary` mean "as is".
//!
//! The decoders take the body in whatever slices the parser hands out and
//! keep only a small fixed carry between them (at most 3 base64 characters,
//! or a run of up to [`MAX_QP_PADDING`] spaces in quoted-printable), so
//! memory stays flat whatever the part's size. Malformed input is an error,
//! never a guess: a stored file is exactly what the encoding says.

/// How a part's body is encoded on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransferEncoding {
    /// `7bit`, `8bit`, `binary`, or no header: the bytes are the content.
    #[default]
    Identity,
    Base64,
    QuotedPrintable,
}

impl TransferEncoding {
    /// Reads a `Content-Transfer-Encoding` value (case-insensitive, as RFC
    /// 2045 6.1 says). `None` for an encoding this receiver cannot decode.
    ///
    /// ```
    /// use fileupload::transfer_encoding::TransferEncoding;
    /// assert_eq!(TransferEncoding::parse("BASE64"), Some(TransferEncoding::Base64));
    /// assert_eq!(TransferEncoding::parse("8bit"), Some(TransferEncoding::Identity));
    /// assert_eq!(TransferEncoding::parse("x-uuencode"), None);
    /// ```
    pub fn parse(value: &str) -> Option<TransferEncoding> {
        let value = value.trim_matches([' ', '\t']);
        let is = |name: &str| value.eq_ignore_ascii_case(name);
        if is("7bit") || is("8bit") || is("binary") {
            Some(TransferEncoding::Identity)
        } else if is("base64") {
            Some(TransferEncoding::Base64)
        } else if is("quoted-printable") {
            Some(TransferEncoding::QuotedPrintable)
        } else {
            None
        }
    }
}

/// Longest run of spaces and tabs held back in quoted-printable while it is
/// unknown whether a line break follows (RFC 2045 6.7 rule 3: trailing
/// white space is padding, deleted when decoding). RFC 2045 limits encoded
/// lines to 76 characters, so a longer run is not padding; it is kept.
pub const MAX_QP_PADDING: usize = 76;

/// Why an encoded body cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a base64 part holds {0:?}, which is not a base64 character")]
    Base64Character(char),
    #[error("a base64 part has data after its '=' padding")]
    Base64AfterPadding,
    #[error("a base64 part has '=' padding in the wrong place")]
    Base64Padding,
    #[error("a base64 part ends inside a 4-character group")]
    Base64Truncated,
    #[error("a quoted-printable part has '=' not followed by two hex digits or a line break")]
    QuotedPrintableEscape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qp {
    /// Ordinary text; `spaces` holds a run of white space not yet known to
    /// be trailing.
    Text,
    /// After `=`.
    Equals,
    /// After `=` and one hex digit.
    Hex(u8),
    /// After `=` and white space: only more white space and a line break
    /// (a soft line break with transport padding) may follow.
    EqualsSpace,
    /// After `=`, perhaps white space, and CR: LF ends the soft line break.
    EqualsCr,
}

/// A streaming decoder for one part's body.
///
/// ```
/// use fileupload::transfer_encoding::{Decoder, TransferEncoding};
/// let mut decoder = Decoder::new(TransferEncoding::Base64);
/// let mut out = Vec::new();
/// decoder.feed(b"aGVsbG8g", &mut out).unwrap();
/// decoder.feed(b"d29y\r\nbGQ=", &mut out).unwrap();
/// decoder.finish().unwrap();
/// assert_eq!(out, b"hello world");
/// ```
#[derive(Clone, Debug)]
pub struct Decoder {
    encoding: TransferEncoding,
    /// Base64: sextets of the current group; `=` counts in `group_len`.
    group: [u8; 4],
    group_len: usize,
    padding: usize,
    /// Base64: a padded group was complete; only white space may follow.
    ended: bool,
    qp: Qp,
    spaces: [u8; MAX_QP_PADDING],
    spaces_len: usize,
}

impl Decoder {
    pub fn new(encoding: TransferEncoding) -> Decoder {
        Decoder {
            encoding,
            group: [0; 4],
            group_len: 0,
            padding: 0,
            ended: false,
            qp: Qp::Text,
            spaces: [0; MAX_QP_PADDING],
            spaces_len: 0,
        }
    }

    pub fn encoding(&self) -> TransferEncoding {
        self.encoding
    }

    /// Decodes `input`, appending what it yields to `out` (never more bytes
    /// than `input` holds, plus the carry).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self.encoding {
            TransferEncoding::Identity => {
                out.extend_from_slice(input);
                Ok(())
            }
            TransferEncoding::Base64 => input.iter().try_for_each(|&b| self.base64(b, out)),
            TransferEncoding::QuotedPrintable => input
                .iter()
                .try_for_each(|&b| self.quoted_printable(b, out)),
        }
    }

    /// The end of the part: checks that nothing is left half-decoded. Both
    /// encodings yield every byte as soon as it is known, so nothing is
    /// left to hand out here.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        match self.encoding {
            TransferEncoding::Identity => Ok(()),
            TransferEncoding::Base64 if self.group_len != 0 => Err(DecodeError::Base64Truncated),
            TransferEncoding::Base64 => Ok(()),
            TransferEncoding::QuotedPrintable => {
                // White space at the end of the last line is padding; a
                // final `=` (perhaps with padding) is a soft line break
                // with nothing after it.
                self.spaces_len = 0;
                match self.qp {
                    Qp::Hex(_) => Err(DecodeError::QuotedPrintableEscape),
                    _ => {
                        self.qp = Qp::Text;
                        Ok(())
                    }
                }
            }
        }
    }

    fn base64(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            // RFC 2045 6.8: line breaks every 76 characters.
            return Ok(());
        }
        if self.ended {
            return Err(DecodeError::Base64AfterPadding);
        }
        if b == b'=' {
            // `=` may only fill the last one or two places of a group.
            if self.group_len < 2 {
                return Err(DecodeError::Base64Padding);
            }
            self.padding += 1;
        } else {
            if self.padding > 0 {
                return Err(DecodeError::Base64Padding);
            }
            self.group[self.group_len] =
                sextet(b).ok_or(DecodeError::Base64Character(char::from(b)))?;
        }
        self.group_len += 1;
        if self.group_len == 4 {
            let g = self.group;
            let bytes = [
                g[0] << 2 | g[1] >> 4,
                g[1] << 4 | g[2] >> 2,
                g[2] << 6 | g[3],
            ];
            out.extend_from_slice(&bytes[..3 - self.padding]);
            self.ended = self.padding > 0;
            self.group_len = 0;
            self.padding = 0;
        }
        Ok(())
    }

    fn quoted_printable(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let space = b == b' ' || b == b'\t';
        match self.qp {
            Qp::Text if space => {
                if self.spaces_len == MAX_QP_PADDING {
                    // Too long to be padding: it is content.
                    out.extend_from_slice(&self.spaces);
                    self.spaces_len = 0;
                }
                self.spaces[self.spaces_len] = b;
                self.spaces_len += 1;
            }
            Qp::Text => {
                if b == b'\r' || b == b'\n' {
                    // The held white space was trailing: padding.
                    self.spaces_len = 0;
                } else {
                    out.extend_from_slice(&self.spaces[..self.spaces_len]);
                    self.spaces_len = 0;
                }
                if b == b'=' {
                    self.qp = Qp::Equals;
                } else {
                    out.push(b);
                }
            }
            Qp::Equals | Qp::EqualsSpace if b == b'\r' => self.qp = Qp::EqualsCr,
            // A soft line break ended by a bare LF, as some encoders write.
            Qp::Equals | Qp::EqualsSpace if b == b'\n' => {
                self.spaces_len = 0;
                self.qp = Qp::Text;
            }
            Qp::Equals | Qp::EqualsSpace if space => {
                if self.spaces_len == MAX_QP_PADDING {
                    return Err(DecodeError::QuotedPrintableEscape);
                }
                self.spaces_len += 1;
                self.qp = Qp::EqualsSpace;
            }
            Qp::Equals => self.qp = Qp::Hex(hex(b).ok_or(DecodeError::QuotedPrintableEscape)?),
            Qp::EqualsSpace => return Err(DecodeError::QuotedPrintableEscape),
            Qp::Hex(high) => {
                let low = hex(b).ok_or(DecodeError::QuotedPrintableEscape)?;
                out.push(high << 4 | low);
                self.qp = Qp::Text;
            }
            Qp::EqualsCr if b == b'\n' => {
                self.spaces_len = 0;
                self.qp = Qp::Text;
            }
            Qp::EqualsCr => return Err(DecodeError::QuotedPrintableEscape),
        }
        Ok(())
    }
}

fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    // RFC 2045 asks for upper case; lower case is accepted, as it suggests
    // a robust decoder should.
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(encoding: TransferEncoding, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = Decoder::new(encoding);
        let mut out = Vec::new();
        decoder.feed(input, &mut out)?;
        decoder.finish()?;
        Ok(out)
    }

    /// Decodes whole, then split at every pair of positions (three
    /// slices, empty ones included), and checks every split agrees.
    fn decode_every_split(
        encoding: TransferEncoding,
        input: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        let whole = decode(encoding, input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut decoder = Decoder::new(encoding);
                let mut out = Vec::new();
                let split = decoder
                    .feed(&input[..i], &mut out)
                    .and_then(|()| decoder.feed(&input[i..j], &mut out))
                    .and_then(|()| decoder.feed(&input[j..], &mut out))
                    .and_then(|()| decoder.finish())
                    .map(|()| out);
                assert_eq!(split, whole, "split at {i}, {j} of {input:?}");
            }
        }
        whole
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ones_refused() {
        use TransferEncoding::*;
        for (name, expected) in [
            ("7bit", Some(Identity)),
            ("8BIT", Some(Identity)),
            ("Binary", Some(Identity)),
            (" base64 ", Some(Base64)),
            ("Quoted-Printable", Some(QuotedPrintable)),
            ("x-uuencode", None),
            ("gzip", None),
            ("", None),
        ] {
            assert_eq!(TransferEncoding::parse(name), expected, "{name:?}");
        }
    }

    #[test]
    fn base64_decodes_across_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"aGVsbG8gd29ybGQ=", b"hello world"),
            (b"aGVsbG8gd29ybGQh", b"hello world!"),
            (b"aGVsbG8gd29ybA==", b"hello worl"),
            (b"aGVs\r\nbG8g\r\nd29y\r\nbGQ=\r\n", b"hello world"),
            (b" aG Vs\tbG8= \r\n", b"hello"),
            (b"/+8A", &[0xff, 0xef, 0x00]),
        ];
        for (input, expected) in cases {
            let out = decode_every_split(TransferEncoding::Base64, input).unwrap();
            assert_eq!(&out, expected, "{input:?}");
        }
    }

    #[test]
    fn malformed_base64_is_refused_across_every_split() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"aGVs*G8=", DecodeError::Base64Character('*')),
            (b"aGVsbG8", DecodeError::Base64Truncated),
            (b"a", DecodeError::Base64Truncated),
            (b"aGVsbG8=aGVs", DecodeError::Base64AfterPadding),
            (b"aGVsbG8=\r\n=", DecodeError::Base64AfterPadding),
            (b"aG=V", DecodeError::Base64Padding),
            (b"a===", DecodeError::Base64Padding),
            (b"=AAA", DecodeError::Base64Padding),
            (b"-_-_", DecodeError::Base64Character('-')),
        ];
        for (input, expected) in cases {
            let err = decode_every_split(TransferEncoding::Base64, input).unwrap_err();
            assert_eq!(&err, expected, "{input:?}");
        }
    }

    #[test]
    fn quoted_printable_decodes_across_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"plain text", b"plain text"),
            (b"caf=C3=A9", "café".as_bytes()),
            (b"lower =c3=a9", "lower é".as_bytes()),
            (b"a=3Db", b"a=b"),
            (b"soft=\r\nbreak", b"softbreak"),
            (b"soft=\nLF", b"softLF"),
            (b"padded soft=  \t\r\nbreak", b"padded softbreak"),
            (b"hard\r\nbreak", b"hard\r\nbreak"),
            (b"trailing  \t\r\nspace", b"trailing\r\nspace"),
            (b"inner  space", b"inner  space"),
            (b"last line   ", b"last line"),
            (b"ends with soft break=", b"ends with soft break"),
            (b"=0D=0A=00", b"\r\n\0"),
        ];
        for (input, expected) in cases {
            let out = decode_every_split(TransferEncoding::QuotedPrintable, input).unwrap();
            assert_eq!(&out, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn quoted_printable_keeps_a_run_too_long_to_be_padding() {
        let mut input = vec![b'x'];
        input.extend(vec![b' '; MAX_QP_PADDING + 3]);
        input.extend_from_slice(b"y\r\n");
        assert_eq!(
            decode_every_split(TransferEncoding::QuotedPrintable, &input).unwrap(),
            input
        );
        // The same run before a line break: only its last 3 bytes were
        // still held back, so only they are taken for padding.
        let mut input = vec![b'x'];
        input.extend(vec![b' '; MAX_QP_PADDING + 3]);
        input.extend_from_slice(b"\r\n");
        let mut expected = vec![b'x'];
        expected.extend(vec![b' '; MAX_QP_PADDING]);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_every_split(TransferEncoding::QuotedPrintable, &input).unwrap(),
            expected
        );
    }

    #[test]
    fn malformed_quoted_printable_is_refused_across_every_split() {
        for input in [&b"=G0"[..], b"=4", b"a=4x", b"=\rx", b"= x", b"=\x00"] {
            assert_eq!(
                decode_every_split(TransferEncoding::QuotedPrintable, input),
                Err(DecodeError::QuotedPrintableEscape),
                "{input:?}"
            );
        }
    }

    #[test]
    fn identity_passes_bytes_through() {
        let input = b"\r\n--not a boundary\x00\xff";
        assert_eq!(
            decode_every_split(TransferEncoding::Identity, input).unwrap(),
            input
        );
    }
}
