//! tus 1.0 (<https://tus.io/protocols/resumable-upload>) over
//! [`crate::resumable`]: the headers read and written, nothing stored.
//!
//! | request                         | does                                   |
//! |---------------------------------|----------------------------------------|
//! | `OPTIONS .../upload/files[/id]` | what the server supports               |
//! | `POST .../upload/files`         | creation (with a first chunk: creation-with-upload) |
//! | `HEAD .../upload/files/<id>`    | the offset, length, metadata, expiry   |
//! | `PATCH .../upload/files/<id>`   | a chunk                                |
//! | `DELETE .../upload/files/<id>`  | termination                            |
//!
//! Every request but `OPTIONS` must say `Tus-Resumable: 1.0.0` (412
//! otherwise), and every answer does. `X-HTTP-Method-Override` stands for
//! the method, for clients behind proxies that pass only GET and POST.
//! Errors are the JSON error body with its stable code, as everywhere.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::checksum::TUS_CHECKSUM_ALGORITHMS;
use crate::digest_fields;
use crate::error_code::ErrorCode;
use crate::hooks;
use crate::http::{HttpError, Request, Response, percent_decode};
use crate::identifier::{Identifier, create_identifier, verify_identifier};
use crate::resumable::{self, Chunk, NewUpload, Progress, Settings};
use crate::service::Service;
use crate::status::Status;
use crate::transfer_encoding::{Decoder, TransferEncoding};
use crate::upload::{MAX_CONTENT_TYPE_BYTES, MAX_FIELD_BYTES, MAX_FILENAME_BYTES};

/// The protocol version this server speaks.
pub const VERSION: &str = "1.0.0";
/// The extensions implemented, as `Tus-Extension` lists them.
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,\
     expiration,checksum,concatenation";
/// The media type of a chunk.
pub const CHUNK_TYPE: &str = "application/offset+octet-stream";

/// The method a tus request stands for: `X-HTTP-Method-Override` when
/// given, else the request's own.
pub fn method<'r>(request: &'r Request<'_>) -> Cow<'r, str> {
    match request.header("X-HTTP-Method-Override") {
        Some(method) => Cow::Owned(method.trim().to_ascii_uppercase()),
        None => Cow::Borrowed(request.method()),
    }
}

/// Whether a tus request may carry an upload's bytes (creation with a
/// first chunk, a chunk): bulk work. The rest is quick.
pub fn is_bulk(request: &Request<'_>) -> bool {
    matches!(&*method(request), "POST" | "PATCH")
}

/// A resumable protocol's answer (tus's, or the IETF draft's), and the
/// upload the request completed (never a partial one): in middleware mode
/// the application gets it, as it gets a completed form upload, and its
/// answer goes out with this one's headers.
pub struct Answered {
    pub response: Response,
    pub completed: Option<Box<Status>>,
}

/// `.../upload/files`: `OPTIONS`, `POST`.
pub fn collection(service: &Service, request: &mut Request<'_>) -> Answered {
    let mut completed = None;
    let answer = match &*method(request) {
        "OPTIONS" => Ok(options(service)),
        "POST" => checked(request).and_then(|()| create(service, request, &mut completed)),
        _ => Err(wrong_method(request, "OPTIONS, POST")),
    };
    Answered {
        response: finish(request, answer, "OPTIONS, POST"),
        completed,
    }
}

/// `.../upload/files/<id>`: `OPTIONS`, `HEAD`, `PATCH`, `DELETE`.
pub fn upload(service: &Service, request: &mut Request<'_>, param: &str) -> Answered {
    const ALLOWED: &str = "OPTIONS, HEAD, PATCH, DELETE";
    let method = method(request).into_owned();
    let mut completed = None;
    let answer = if method == "OPTIONS" {
        Ok(options(service))
    } else {
        checked(request).and_then(|()| {
            let id = path_identifier(service, param)?;
            let settings = Settings::from_config(service.config());
            match method.as_str() {
                "HEAD" => {
                    let progress = resumable::info(service.pool(), &id, &settings)?;
                    let path = request.path();
                    let collection = path.rsplit_once('/').map_or("", |(c, _)| c);
                    Ok(described(&progress, collection))
                }
                "PATCH" => patch(service, request, &id, &settings, &mut completed),
                "DELETE" => {
                    resumable::terminate(service.pool(), &id)?;
                    Ok(empty(204))
                }
                _ => Err(wrong_method(request, ALLOWED)),
            }
        })
    };
    Answered {
        response: finish(request, answer, ALLOWED),
        completed,
    }
}

/// The status of an upload this request completed, for middleware mode;
/// a partial upload is only a part, never handed over.
fn completed_by(progress: &Progress) -> Option<Box<Status>> {
    (progress.complete && !progress.status.partial).then(|| Box::new(progress.status.clone()))
}

/// An answer with the headers every tus answer has; errors as JSON.
fn finish(request: &Request<'_>, answer: Result<Response, Failure>, allowed: &str) -> Response {
    let response = match answer {
        Ok(response) => response,
        Err(failure) => {
            let unsupported = failure.error.code == ErrorCode::UnsupportedVersion;
            let response = failure.into_response(request, allowed);
            match unsupported {
                true => response.with_header("Tus-Version", VERSION),
                false => response,
            }
        }
    };
    response.with_header("Tus-Resumable", VERSION)
}

/// An error, with headers the answer needs beside it (the `Location` of
/// an upload whose first chunk failed; for the IETF draft, the offset
/// beside a failed append).
pub(crate) struct Failure {
    pub(crate) error: HttpError,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl From<HttpError> for Failure {
    fn from(error: HttpError) -> Failure {
        Failure {
            error,
            headers: Vec::new(),
        }
    }
}

impl Failure {
    /// The JSON error answer with the failure's headers, and `Allow` for
    /// a wrong method; logged when the fault is the server's.
    pub(crate) fn into_response(self, request: &Request<'_>, allowed: &str) -> Response {
        let Failure { error, headers } = self;
        if error.status() >= 500 {
            crate::log!("{} {}: {}", method(request), request.path(), error.message);
        }
        let mut response = Response::error(&error);
        if error.code == ErrorCode::Method {
            response = response.with_header("Allow", allowed);
        }
        headers
            .into_iter()
            .fold(response, |r, (name, value)| r.with_header(name, &value))
    }
}

pub(crate) fn wrong_method(request: &Request<'_>, allowed: &str) -> Failure {
    HttpError::new(
        ErrorCode::Method,
        format!(
            "method {} is not allowed here; use {allowed}",
            method(request)
        ),
    )
    .into()
}

/// `Tus-Resumable: 1.0.0`, required on every request but `OPTIONS`.
fn checked(request: &Request<'_>) -> Result<(), Failure> {
    match request.header("Tus-Resumable").map(str::trim) {
        Some(VERSION) => Ok(()),
        Some(other) => Err(HttpError::new(
            ErrorCode::UnsupportedVersion,
            format!("tus version {other:?} is not supported; this server speaks {VERSION}"),
        )
        .into()),
        None => Err(HttpError::new(
            ErrorCode::UnsupportedVersion,
            format!("a tus request needs Tus-Resumable: {VERSION}"),
        )
        .into()),
    }
}

fn options(service: &Service) -> Response {
    let mut response = empty(204)
        .with_header("Tus-Version", VERSION)
        .with_header("Tus-Extension", EXTENSIONS)
        .with_header("Tus-Checksum-Algorithm", TUS_CHECKSUM_ALGORITHMS);
    if let Some(max) = service.config().max_size {
        response = response.with_header("Tus-Max-Size", &max.to_string());
    }
    response
}

fn empty(status: u16) -> Response {
    Response {
        status,
        headers: vec![("Cache-Control".into(), "no-store".into())],
        body: Vec::new(),
    }
}

/// The identifier of a new upload: the client's `X-Progress-ID` (query or
/// header) if it gives one, else a fresh one; with an upload key, only a
/// signed one the application issued (403 without).
pub(crate) fn new_identifier(
    service: &Service,
    request: &Request<'_>,
) -> Result<Identifier, HttpError> {
    let key = service.config().upload_key.as_ref();
    let given = request
        .query_param("X-Progress-ID")
        .filter(|id| !id.is_empty())
        .or_else(|| request.header("X-Progress-ID"));
    match (given, key) {
        (Some(text), key) => Ok(verify_identifier(text, key)?),
        (None, Some(_)) => Err(HttpError::new(
            ErrorCode::Signature,
            "this server signs upload identifiers: creation needs X-Progress-ID (in the query \
             or as a header) with an identifier the application issued",
        )),
        (None, None) => create_identifier(None).map_err(|e| {
            HttpError::new(
                ErrorCode::Internal,
                format!("no randomness for a new identifier: {e}"),
            )
        }),
    }
}

pub(crate) fn path_identifier(service: &Service, param: &str) -> Result<Identifier, HttpError> {
    // A client may percent-encode the signature's ':'.
    let text = percent_decode(param);
    Ok(verify_identifier(
        &text,
        service.config().upload_key.as_ref(),
    )?)
}

/// What `Upload-Concat` asks of a creation.
enum Concat {
    None,
    Partial,
    /// The identifiers of the parts, in order.
    Final(Vec<Identifier>),
}

/// `Upload-Concat: partial`, or `final;<url> <url> ...`: each URL absolute
/// or a path, its last segment the part's identifier, verified as any
/// identifier in a path is (signed, when a key is set).
fn concat(service: &Service, request: &Request<'_>) -> Result<Concat, HttpError> {
    let Some(header) = request.header("Upload-Concat").map(str::trim) else {
        return Ok(Concat::None);
    };
    if header == "partial" {
        return Ok(Concat::Partial);
    }
    let bad = |why: String| {
        HttpError::new(
            ErrorCode::PartialNotFound,
            format!("Upload-Concat must be \"partial\" or \"final;<url> <url> ...\": {why}"),
        )
    };
    let Some(urls) = header.strip_prefix("final;") else {
        return Err(bad(format!("not {header:?}")));
    };
    let parts = urls
        .split_ascii_whitespace()
        .map(|url| {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            let last = path.rsplit('/').next().unwrap_or(path);
            path_identifier(service, last)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if parts.is_empty() {
        return Err(bad("no upload named".to_owned()));
    }
    Ok(Concat::Final(parts))
}

fn create(
    service: &Service,
    request: &mut Request<'_>,
    completed: &mut Option<Box<Status>>,
) -> Result<Response, Failure> {
    let concat = concat(service, request)?;
    if let Concat::Final(parts) = concat {
        return create_final(service, request, &parts, completed);
    }
    let length = match (
        request.header("Upload-Length"),
        request.header("Upload-Defer-Length"),
    ) {
        (Some(_), Some(_)) => {
            return Err(HttpError::new(
                ErrorCode::InvalidUploadLength,
                "Upload-Length and Upload-Defer-Length together: give one",
            )
            .into());
        }
        (Some(text), None) => Some(number(
            text,
            ErrorCode::InvalidUploadLength,
            "Upload-Length",
        )?),
        (None, Some(text)) if text.trim() == "1" => None,
        (None, Some(text)) => {
            return Err(HttpError::new(
                ErrorCode::InvalidUploadLength,
                format!("Upload-Defer-Length must be 1, not {text:?}"),
            )
            .into());
        }
        (None, None) => {
            return Err(HttpError::new(
                ErrorCode::InvalidUploadLength,
                "creation needs Upload-Length, or Upload-Defer-Length: 1",
            )
            .into());
        }
    };
    let metadata = parse_metadata(request.header("Upload-Metadata").unwrap_or(""))?;
    let body_length = request.body_length()?;
    let with_chunk = is_chunk_type(request.content_type());
    if !with_chunk && body_length.known().is_some_and(|n| n > 0) {
        return Err(HttpError::new(
            ErrorCode::InvalidContentType,
            format!("a creation request's body is its first chunk, of type {CHUNK_TYPE}"),
        )
        .into());
    }
    // The first chunk's digests, as a PATCH's: its own, and the whole
    // upload's when it is all of it.
    let checksum = digest_fields::chunk_checksum(
        request.header("Upload-Checksum"),
        request.header("Content-Digest"),
    )?;
    let repr = digest_fields::repr_digest(request.header("Repr-Digest"))?;
    let id = new_identifier(service, request)?;
    let new = NewUpload {
        length,
        filename: metadata.get("filename").cloned(),
        content_type: metadata.get("filetype").cloned(),
        metadata,
    };
    let creation = hooks::Creation {
        partial: matches!(concat, Concat::Partial),
        ..hooks::Creation::resumable(&id, "tus", &new)
    };
    hooks::before_create(service.config(), request, &creation)?;
    let location = format!("{}/{}", request.path(), id.as_str());
    let settings = Settings::from_config(service.config());
    let first = with_chunk.then(|| Chunk {
        offset: 0,
        length: None,
        body: request.body(),
        body_length,
        checksum,
        repr,
    });
    let make = match concat {
        Concat::Partial => resumable::create_partial,
        _ => resumable::create,
    };
    let created = make(service.pool(), &id, new, first, &settings);
    match created {
        Ok(progress) => {
            *completed = completed_by(&progress);
            let mut response = empty(201)
                .with_header("Location", &location)
                .with_header("Upload-Offset", &progress.offset.to_string());
            if let Some(expires) = progress.expires {
                response = response.with_header("Upload-Expires", &http_date(expires));
            }
            Ok(response)
        }
        Err(error) => {
            // A first chunk that failed leaves the upload made: the client
            // may continue it.
            let made = resumable::info(service.pool(), &id, &settings).is_ok();
            let headers = if made {
                vec![("Location", location)]
            } else {
                Vec::new()
            };
            Err(Failure { error, headers })
        }
    }
}

/// `Upload-Concat: final;...`: the final upload, made at once of its
/// parts; no length (it is theirs) and no body.
fn create_final(
    service: &Service,
    request: &mut Request<'_>,
    parts: &[Identifier],
    completed: &mut Option<Box<Status>>,
) -> Result<Response, Failure> {
    if request.header("Upload-Length").is_some() || request.header("Upload-Defer-Length").is_some()
    {
        return Err(HttpError::new(
            ErrorCode::InvalidUploadLength,
            "a final upload's length is its parts': give no Upload-Length",
        )
        .into());
    }
    if request.body_length()?.known().is_some_and(|n| n > 0) {
        return Err(HttpError::new(
            ErrorCode::InvalidContentType,
            "a final upload has no body: its bytes are its parts'",
        )
        .into());
    }
    let metadata = parse_metadata(request.header("Upload-Metadata").unwrap_or(""))?;
    let id = new_identifier(service, request)?;
    let new = NewUpload {
        length: None,
        filename: metadata.get("filename").cloned(),
        content_type: metadata.get("filetype").cloned(),
        metadata,
    };
    let creation = hooks::Creation {
        parts: parts.iter().map(|p| p.as_str().to_owned()).collect(),
        ..hooks::Creation::resumable(&id, "tus", &new)
    };
    hooks::before_create(service.config(), request, &creation)?;
    let settings = Settings::from_config(service.config());
    let progress = resumable::concatenate(service.pool(), &id, new, parts, &settings)?;
    *completed = completed_by(&progress);
    Ok(empty(201)
        .with_header("Location", &format!("{}/{}", request.path(), id.as_str()))
        .with_header("Upload-Offset", &progress.offset.to_string()))
}

fn patch(
    service: &Service,
    request: &mut Request<'_>,
    id: &Identifier,
    settings: &Settings,
    completed: &mut Option<Box<Status>>,
) -> Result<Response, Failure> {
    if !is_chunk_type(request.content_type()) {
        return Err(HttpError::new(
            ErrorCode::InvalidContentType,
            format!(
                "a chunk's Content-Type must be {CHUNK_TYPE}, not {:?}",
                request.content_type().unwrap_or("")
            ),
        )
        .into());
    }
    let offset = match request.header("Upload-Offset") {
        Some(text) => number(text, ErrorCode::InvalidOffset, "Upload-Offset")?,
        None => {
            return Err(HttpError::new(
                ErrorCode::InvalidOffset,
                "a chunk needs Upload-Offset: where its bytes start",
            )
            .into());
        }
    };
    let length = request
        .header("Upload-Length")
        .map(|text| number(text, ErrorCode::InvalidUploadLength, "Upload-Length"))
        .transpose()?;
    let checksum = digest_fields::chunk_checksum(
        request.header("Upload-Checksum"),
        request.header("Content-Digest"),
    )?;
    let body_length = request.body_length()?;
    let repr = digest_fields::repr_digest(request.header("Repr-Digest"))?;
    let chunk = Chunk {
        offset,
        length,
        body: request.body(),
        body_length,
        checksum,
        repr,
    };
    let progress = resumable::append(service.pool(), id, chunk, settings)?;
    *completed = completed_by(&progress);
    let mut response = empty(204).with_header("Upload-Offset", &progress.offset.to_string());
    if let Some(expires) = progress.expires {
        response = response.with_header("Upload-Expires", &http_date(expires));
    }
    Ok(response)
}

/// The answer to `HEAD`; `collection` is the path the upload URLs of a
/// final upload's parts are under.
fn described(progress: &Progress, collection: &str) -> Response {
    let mut response = empty(200).with_header("Upload-Offset", &progress.offset.to_string());
    if progress.status.partial {
        response = response.with_header("Upload-Concat", "partial");
    } else if let Some(parts) = &progress.status.parts {
        let urls: Vec<String> = parts.iter().map(|p| format!("{collection}/{p}")).collect();
        response = response.with_header("Upload-Concat", &format!("final;{}", urls.join(" ")));
    }
    response = match progress.length {
        Some(length) => response.with_header("Upload-Length", &length.to_string()),
        None => response.with_header("Upload-Defer-Length", "1"),
    };
    let metadata = encode_metadata(progress.metadata());
    if !metadata.is_empty() {
        response = response.with_header("Upload-Metadata", &metadata);
    }
    if let Some(expires) = progress.expires {
        response = response.with_header("Upload-Expires", &http_date(expires));
    }
    response
}

fn is_chunk_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CHUNK_TYPE))
}

/// A non-negative integer header (digits only, as tus requires).
fn number(text: &str, code: ErrorCode, name: &str) -> Result<u64, HttpError> {
    let text = text.trim();
    if !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse()
    {
        return Ok(n);
    }
    Err(HttpError::new(
        code,
        format!("{name} must be a non-negative integer, not {text:?}"),
    ))
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (a value may
/// be absent). Values must be UTF-8 text, so that `HEAD` gives back exactly
/// what was sent; keys are unique; the whole is held to the limits of a
/// form's fields, and `filename`/`filetype` to a form's file name and type.
pub fn parse_metadata(header: &str) -> Result<BTreeMap<String, String>, HttpError> {
    let bad = |message: String| HttpError::new(ErrorCode::InvalidMetadata, message);
    let mut metadata = BTreeMap::new();
    let mut bytes = 0;
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((key, value)) => (key, value.trim()),
            None => (pair, ""),
        };
        if !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(bad(format!("metadata key {key:?} is not printable ASCII")));
        }
        let mut decoded = Vec::new();
        let mut decoder = Decoder::new(TransferEncoding::Base64);
        decoder
            .feed(value.as_bytes(), &mut decoded)
            .and_then(|()| decoder.finish())
            .map_err(|e| bad(format!("metadata {key}: {e}")))?;
        let value = String::from_utf8(decoded)
            .map_err(|_| bad(format!("metadata {key} is not UTF-8 text")))?;
        let max = match key {
            "filename" => MAX_FILENAME_BYTES,
            "filetype" => MAX_CONTENT_TYPE_BYTES,
            _ => MAX_FIELD_BYTES,
        };
        if value.len() > max {
            return Err(bad(format!(
                "metadata {key} is {} bytes long, more than the {max} allowed",
                value.len()
            )));
        }
        bytes += key.len() + value.len();
        if bytes > MAX_FIELD_BYTES {
            return Err(bad(format!(
                "the metadata is more than {MAX_FIELD_BYTES} bytes"
            )));
        }
        if metadata.insert(key.to_owned(), value).is_some() {
            return Err(bad(format!("metadata key {key} is given twice")));
        }
    }
    Ok(metadata)
}

/// The metadata as `Upload-Metadata` (a key with an empty value is sent
/// as the key alone).
pub fn encode_metadata(metadata: &BTreeMap<String, String>) -> String {
    metadata
        .iter()
        .map(|(key, value)| match value.is_empty() {
            true => key.clone(),
            false => format!("{key} {}", base64(value.as_bytes())),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An HTTP date (RFC 9110 section 5.6.7), as `Upload-Expires` is given.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86400;
    let seconds = unix % 86400;
    // Days to a civil date (Howard Hinnant's algorithm), in unsigned
    // arithmetic: the epoch shifted to 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_403_712_000), "Wed, 25 Jun 2014 16:00:00 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn metadata_round_trips() {
        let parsed = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential, filetype dGV4dC9wbGFpbg==").unwrap();
        assert_eq!(parsed["filename"], "world_domination_plan.pdf");
        assert_eq!(parsed["is_confidential"], "");
        assert_eq!(parsed["filetype"], "text/plain");
        assert_eq!(parse_metadata(&encode_metadata(&parsed)).unwrap(), parsed);
        for n in 0..8 {
            let text = "é".repeat(n) + &"x".repeat(n);
            let one = BTreeMap::from([("k".to_owned(), text)]);
            assert_eq!(parse_metadata(&encode_metadata(&one)).unwrap(), one);
        }
        assert_eq!(
            encode_metadata(&BTreeMap::from([("a".into(), "hi".into())])),
            "a aGk="
        );
    }

    #[test]
    fn bad_metadata_is_refused() {
        for bad in ["a !!!!", "a aGk=,a aGk=", "a /w==", "é aGk="] {
            let err = parse_metadata(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidMetadata, "{bad}: {err}");
        }
    }

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number(" 12 ", ErrorCode::InvalidOffset, "x"), Ok(12));
        for bad in ["", "-1", "+1", "1e3", "0x10", "99999999999999999999999"] {
            assert!(number(bad, ErrorCode::InvalidOffset, "x").is_err(), "{bad}");
        }
    }
}
