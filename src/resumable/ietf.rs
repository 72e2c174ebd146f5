//! The IETF draft "Resumable Uploads for HTTP"
//! (draft-ietf-httpbis-resumable-upload) over [`crate::resumable`], in the
//! two interop versions real clients speak: 5 (tus-js-client's
//! `protocol: 'ietf-draft-03'`) and 6 (`'ietf-draft-05'`; the draft's -04
//! and -05 share it). The headers read and written, nothing stored: the
//! uploads are the same pool uploads tus makes, so a status query, a clear
//! or gc sees no difference.
//!
//! | request                         | does                                   |
//! |---------------------------------|----------------------------------------|
//! | `OPTIONS .../upload/files[/id]` | the limits (`Upload-Limit`)            |
//! | `POST .../upload/files`         | creation; a body is the first bytes    |
//! | `HEAD .../upload/files/<id>`    | offset retrieval                       |
//! | `PATCH .../upload/files/<id>`   | append                                 |
//! | `DELETE .../upload/files/<id>`  | cancellation                           |
//!
//! A request is an IETF-draft request by its `Upload-Draft-Interop-Version`
//! (the router asks [`is_ietf`]); it needs no `Tus-Resumable`. Every answer
//! echoes the interop version.
//!
//! Completion: the drafts complete an upload when a request says
//! `Upload-Complete: ?1` and its content all arrived. This server also
//! completes it when the offset reaches the length known from creation
//! (`Upload-Length`), as tusd does, because tus-js-client 4.x says `?1`
//! only on an append of the whole file from offset 0: chunked or resumed,
//! its last append says `?0`, and an upload waiting for a `?1` would never
//! end. A `?1` is then held to its word: it gives the length
//! (offset + `Content-Length`), and a body that ends short of the length is
//! an error (the bytes it brought are kept).
//!
//! What this module cannot do: send `104 (Upload Resumption Supported)`.
//! Under CGI and FastCGI the program gives the web server one response
//! head; interim responses are the web server's to send, and none of the
//! servers in `conf-examples/` lets a program ask for one. The client
//! learns the upload's URL from the `201` instead, which is why
//! tus-js-client creates with an empty `Upload-Complete: ?0` request first.
//!
//! Errors are the JSON error body with its stable code, as everywhere; the
//! draft's problem types (`application/problem+json`) are optional and not
//! used.

use crate::error_code::ErrorCode;
use crate::hooks;
use crate::http::{BodyLength, HttpError, Request, Response};
use crate::identifier::Identifier;
use crate::pool::unix_now;
use crate::resumable::tus::{self, Answered, Failure, wrong_method};
use crate::resumable::{self, Chunk, NewUpload, Progress, Settings};
use crate::service::Service;
use crate::status::Status;
use crate::upload::{MAX_CONTENT_TYPE_BYTES, MAX_FILENAME_BYTES};

/// The header that makes a request an IETF-draft one.
pub const INTEROP_HEADER: &str = "Upload-Draft-Interop-Version";
/// The media type of an append (required from interop version 6).
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// An interop version this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interop {
    /// Interop version 5: draft-ietf-httpbis-resumable-upload-03.
    V5,
    /// Interop version 6: drafts -04 and -05.
    V6,
}

impl Interop {
    pub fn number(self) -> &'static str {
        match self {
            Interop::V5 => "5",
            Interop::V6 => "6",
        }
    }
}

/// Whether a request is an IETF-draft request: it carries
/// `Upload-Draft-Interop-Version`, whatever its value (an unsupported one
/// is refused by this module, not taken for tus).
pub fn is_ietf(request: &Request<'_>) -> bool {
    request.header(INTEROP_HEADER).is_some()
}

/// `.../upload/files`: `OPTIONS`, `POST`.
pub fn collection(service: &Service, request: &mut Request<'_>) -> Answered {
    const ALLOWED: &str = "OPTIONS, POST";
    let version = interop(request);
    let known = version.as_ref().ok().copied();
    let mut completed = None;
    let answer = match version {
        Err(error) => Err(error.into()),
        Ok(_) => match &*tus::method(request) {
            "OPTIONS" => Ok(options(service)),
            "POST" => create(service, request, &mut completed),
            _ => Err(wrong_method(request, ALLOWED)),
        },
    };
    Answered {
        response: finish(request, known, answer, ALLOWED),
        completed,
    }
}

/// `.../upload/files/<id>`: `OPTIONS`, `HEAD`, `PATCH`, `DELETE`.
pub fn upload(service: &Service, request: &mut Request<'_>, param: &str) -> Answered {
    const ALLOWED: &str = "OPTIONS, HEAD, PATCH, DELETE";
    let mut completed = None;
    let version = interop(request);
    let known = version.as_ref().ok().copied();
    let method = tus::method(request).into_owned();
    let answer = version.map_err(Failure::from).and_then(|version| {
        if method == "OPTIONS" {
            return Ok(options(service));
        }
        let id = tus::path_identifier(service, param)?;
        let settings = Settings::from_config(service.config());
        match method.as_str() {
            "HEAD" => {
                no_upload_state(request, "an offset retrieval (HEAD)")?;
                let progress = resumable::info(service.pool(), &id, &settings)?;
                Ok(described(service, &id, &progress))
            }
            "PATCH" => append(service, request, &id, &settings, version, &mut completed),
            "DELETE" => {
                no_upload_state(request, "a cancellation (DELETE)")?;
                resumable::terminate(service.pool(), &id)?;
                Ok(empty(204))
            }
            _ => Err(wrong_method(request, ALLOWED)),
        }
    });
    Answered {
        response: finish(request, known, answer, ALLOWED),
        completed,
    }
}

fn finish(
    request: &Request<'_>,
    version: Option<Interop>,
    answer: Result<Response, Failure>,
    allowed: &str,
) -> Response {
    let response = match answer {
        Ok(response) => response,
        Err(failure) => failure.into_response(request, allowed),
    };
    match version {
        Some(version) => response.with_header(INTEROP_HEADER, version.number()),
        None => response,
    }
}

/// The request's interop version: 5 or 6, else 412 (a later draft's
/// client must not be answered as if this server spoke its version).
fn interop(request: &Request<'_>) -> Result<Interop, HttpError> {
    let text = request.header(INTEROP_HEADER).unwrap_or("");
    match integer(text) {
        Some(5) => Ok(Interop::V5),
        Some(6) => Ok(Interop::V6),
        _ => Err(HttpError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "{INTEROP_HEADER} {:?} is not supported; this server speaks interop versions \
                 5 (draft-ietf-httpbis-resumable-upload-03) and 6 (-04, -05), or tus 1.0.0",
                text.trim()
            ),
        )),
    }
}

/// A structured-field Integer (RFC 8941 section 3.3.1) that cannot be
/// negative: 1 to 15 digits. Parameters are not accepted: none of these
/// fields defines any.
fn integer(text: &str) -> Option<u64> {
    let text = text.trim_matches([' ', '\t']);
    if (1..=15).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// A structured-field Integer header, or 400 with `code`.
fn integer_header(
    request: &Request<'_>,
    name: &str,
    code: ErrorCode,
) -> Result<Option<u64>, HttpError> {
    request
        .header(name)
        .map(|text| {
            integer(text).ok_or_else(|| {
                HttpError::new(
                    code,
                    format!(
                        "{name} must be a structured-field integer (1 to 15 digits), not {:?}",
                        text.trim()
                    ),
                )
            })
        })
        .transpose()
}

/// `Upload-Complete`, a structured-field Boolean: `?1` or `?0`. Absent,
/// the request does not complete the upload (as tusd reads it).
fn complete(request: &Request<'_>) -> Result<bool, HttpError> {
    match request
        .header("Upload-Complete")
        .map(|t| t.trim_matches([' ', '\t']))
    {
        None | Some("?0") => Ok(false),
        Some("?1") => Ok(true),
        Some(other) => Err(HttpError::new(
            ErrorCode::InvalidUploadComplete,
            format!("Upload-Complete must be ?1 or ?0, not {other:?}"),
        )),
    }
}

/// Offset retrieval and cancellation must carry neither `Upload-Offset`
/// nor `Upload-Complete` (400, the draft's rule): a client sending one
/// mistakes the request for an append.
fn no_upload_state(request: &Request<'_>, what: &str) -> Result<(), HttpError> {
    if request.header("Upload-Offset").is_some() {
        return Err(HttpError::new(
            ErrorCode::InvalidOffset,
            format!("{what} must not carry Upload-Offset"),
        ));
    }
    if request.header("Upload-Complete").is_some() {
        return Err(HttpError::new(
            ErrorCode::InvalidUploadComplete,
            format!("{what} must not carry Upload-Complete"),
        ));
    }
    Ok(())
}

fn empty(status: u16) -> Response {
    Response {
        status,
        headers: vec![("Cache-Control".into(), "no-store".into())],
        body: Vec::new(),
    }
}

fn flag(complete: bool) -> &'static str {
    if complete { "?1" } else { "?0" }
}

/// `Upload-Limit`, a Dictionary: `max-size` from `max_size`, or the
/// upload's policy's size limit when it is smaller (`min-size=0` without
/// either, as the draft asks for "no limits"), and `max-age`, the seconds
/// left before an incomplete upload expires.
fn limits(service: &Service, expires: Option<u64>, id: Option<&Identifier>) -> String {
    let max_size = crate::policy::limited(
        &crate::receiving::Options::from_config(service.config()),
        id.and_then(Identifier::policy),
    )
    .max_size;
    let mut limits = match max_size {
        Some(max) => format!("max-size={max}"),
        None => "min-size=0".to_owned(),
    };
    if let Some(expires) = expires {
        limits.push_str(&format!(",max-age={}", expires.saturating_sub(unix_now())));
    }
    limits
}

fn options(service: &Service) -> Response {
    empty(204)
        .with_header("Upload-Limit", &limits(service, None, None))
        .with_header("Accept-Patch", PARTIAL_UPLOAD)
}

/// Where the upload stands, as a creation or an append answers it.
fn state_headers(
    service: &Service,
    id: &Identifier,
    mut response: Response,
    progress: &Progress,
    complete: bool,
) -> Response {
    response = response
        .with_header("Upload-Offset", &progress.offset.to_string())
        .with_header("Upload-Complete", flag(complete))
        .with_header("Upload-Limit", &limits(service, progress.expires, Some(id)));
    if let Some(length) = progress.length {
        response = response.with_header("Upload-Length", &length.to_string());
    }
    response
}

/// The answer to `HEAD`: 204, as tusd answers (the drafts allow 200 too).
fn described(service: &Service, id: &Identifier, progress: &Progress) -> Response {
    state_headers(service, id, empty(204), progress, progress.complete)
}

/// The answer to a request that completed the upload: its status, as a
/// form upload's answer gives it (the file's size and SHA-256).
fn complete_answer(
    service: &Service,
    id: &Identifier,
    status: u16,
    progress: &Progress,
) -> Response {
    state_headers(
        service,
        id,
        Response::json(status, &progress.status),
        progress,
        true,
    )
}

/// The length a request declares: `Upload-Length`, and with
/// `Upload-Complete: ?1` the offset plus `Content-Length`. Both must agree.
fn declared_length(
    request: &Request<'_>,
    offset: u64,
    complete: bool,
    body_length: BodyLength,
) -> Result<Option<u64>, HttpError> {
    let given = integer_header(request, "Upload-Length", ErrorCode::InvalidUploadLength)?;
    let from_content = match (complete, body_length) {
        (true, BodyLength::Known(n)) => Some(offset.saturating_add(n)),
        // RFC 3875: no length, no body.
        (true, BodyLength::Absent) => Some(offset),
        _ => None,
    };
    match (given, from_content) {
        (Some(given), Some(implied)) if given != implied => Err(HttpError::new(
            ErrorCode::InvalidUploadLength,
            format!(
                "Upload-Length says {given} bytes, but Upload-Complete: ?1 with this \
                 Content-Length makes the upload {implied} bytes"
            ),
        )),
        (given, implied) => Ok(given.or(implied)),
    }
}

/// The file name in a `Content-Disposition` (`filename="..."` or a bare
/// token), the draft's way of naming the upload.
fn disposition_filename(header: &str) -> Option<String> {
    let (_, params) = header.split_once(';')?;
    let mut rest = params;
    while !rest.is_empty() {
        let trimmed = rest.trim_start_matches([' ', '\t', ';']);
        let (name, after) = trimmed.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end?..])
            }
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        if name.trim().eq_ignore_ascii_case("filename") {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// The file's name and type: from `Upload-Metadata` (tus-js-client sends
/// it in every protocol), else from the draft's representation metadata,
/// `Content-Disposition` and `Content-Type` (but for the append types,
/// which describe the request, not the file).
fn file_metadata(request: &Request<'_>) -> Result<NewUpload, HttpError> {
    let metadata = tus::parse_metadata(request.header("Upload-Metadata").unwrap_or(""))?;
    let bad = |message: String| HttpError::new(ErrorCode::InvalidMetadata, message);
    let filename = match metadata.get("filename") {
        Some(name) => Some(name.clone()),
        None => request
            .header("Content-Disposition")
            .and_then(disposition_filename),
    };
    if let Some(name) = &filename
        && name.len() > MAX_FILENAME_BYTES
    {
        return Err(bad(format!(
            "the file name is {} bytes long, more than the {MAX_FILENAME_BYTES} allowed",
            name.len()
        )));
    }
    let content_type = match metadata.get("filetype") {
        Some(kind) => Some(kind.clone()),
        None => request
            .content_type()
            .map(str::trim)
            .filter(|kind| !kind.is_empty() && !is_append_type(Some(kind)))
            .map(str::to_owned),
    };
    if let Some(kind) = &content_type
        && kind.len() > MAX_CONTENT_TYPE_BYTES
    {
        return Err(bad(format!(
            "the content type is {} bytes long, more than the {MAX_CONTENT_TYPE_BYTES} allowed",
            kind.len()
        )));
    }
    Ok(NewUpload {
        length: None,
        filename,
        content_type,
        metadata,
    })
}

fn is_append_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            let media = media.trim();
            media.eq_ignore_ascii_case(PARTIAL_UPLOAD)
                || media.eq_ignore_ascii_case(tus::CHUNK_TYPE)
        })
}

fn has_body(body_length: BodyLength) -> bool {
    match body_length {
        BodyLength::Known(n) => n > 0,
        BodyLength::UntilEnd => true,
        BodyLength::Absent => false,
    }
}

/// The request said `?1` but the upload is not complete: its body ended
/// before the length. What arrived is kept.
fn short_of_complete(progress: &Progress) -> HttpError {
    HttpError::new(
        ErrorCode::InvalidUploadComplete,
        format!(
            "Upload-Complete: ?1, but the upload holds {} of its {} bytes; \
             the bytes are kept and the upload continues from offset {}",
            progress.offset,
            progress
                .length
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            progress.offset
        ),
    )
}

fn create(
    service: &Service,
    request: &mut Request<'_>,
    completed: &mut Option<Box<Status>>,
) -> Result<Response, Failure> {
    let complete = complete(request)?;
    if request.header("Upload-Offset").is_some() {
        return Err(HttpError::new(
            ErrorCode::InvalidOffset,
            "a creation request must not carry Upload-Offset: it starts at 0",
        )
        .into());
    }
    let body_length = request.body_length()?;
    let length = declared_length(request, 0, complete, body_length)?;
    if complete && length.is_none() {
        return Err(HttpError::new(
            ErrorCode::LengthRequired,
            "Upload-Complete: ?1 without Content-Length needs Upload-Length",
        )
        .into());
    }
    // The first part's digests, as an append's: its own (Content-Digest)
    // and the whole upload's (Repr-Digest, checked when it completes).
    let checksum = crate::digest_fields::chunk_checksum(None, request.header("Content-Digest"))?;
    let repr = crate::digest_fields::repr_digest(request.header("Repr-Digest"))?;
    let mut new = file_metadata(request)?;
    new.length = length;
    let id = tus::new_identifier(service, request)?;
    hooks::before_create(
        service.config(),
        request,
        &hooks::Creation::resumable(&id, "ietf", &new),
    )?;
    let location = format!("{}/{}", request.path(), id.as_str());
    let settings = Settings::from_config(service.config());
    let first = has_body(body_length).then(|| Chunk {
        offset: 0,
        length: None,
        body: request.body(),
        body_length,
        checksum,
        repr,
    });
    let failed = |error: HttpError| {
        // A first part that failed leaves the upload made: the client may
        // continue it from the offset given.
        let mut headers = vec![("Upload-Complete", "?0".to_owned())];
        // An identifier already in use is someone's upload, not this one.
        let ours = !matches!(
            error.code,
            ErrorCode::UploadRunning | ErrorCode::UploadComplete | ErrorCode::StatusUnreadable
        );
        if ours && let Ok(progress) = resumable::info(service.pool(), &id, &settings) {
            headers.push(("Location", location.clone()));
            headers.push(("Upload-Offset", progress.offset.to_string()));
        }
        Failure { error, headers }
    };
    let progress = resumable::create(service.pool(), &id, new, first, &settings).map_err(failed)?;
    if complete && !progress.complete {
        return Err(failed(short_of_complete(&progress)));
    }
    let response = if progress.complete {
        *completed = Some(Box::new(progress.status.clone()));
        complete_answer(service, &id, 201, &progress)
    } else {
        state_headers(service, &id, empty(201), &progress, false)
    };
    Ok(response.with_header("Location", &location))
}

fn append(
    service: &Service,
    request: &mut Request<'_>,
    id: &Identifier,
    settings: &Settings,
    version: Interop,
    completed: &mut Option<Box<Status>>,
) -> Result<Response, Failure> {
    // Version 5's clients (tus-js-client's 'ietf-draft-03') send no type;
    // the media type became a requirement with version 6.
    if version == Interop::V6 && !is_partial_upload(request.content_type()) {
        return Err(HttpError::new(
            ErrorCode::InvalidContentType,
            format!(
                "an append's Content-Type must be {PARTIAL_UPLOAD}, not {:?}",
                request.content_type().unwrap_or("")
            ),
        )
        .into());
    }
    let failed = |error: HttpError| {
        // The draft: a response that did not complete the upload says so,
        // and a 409 gives the offset to go on from.
        let mut headers = vec![("Upload-Complete", "?0".to_owned())];
        if let Ok(progress) = resumable::info(service.pool(), id, settings) {
            headers.push(("Upload-Offset", progress.offset.to_string()));
        }
        Failure { error, headers }
    };
    let complete = complete(request).map_err(failed)?;
    let offset = integer_header(request, "Upload-Offset", ErrorCode::InvalidOffset)
        .map_err(failed)?
        .ok_or_else(|| {
            failed(HttpError::new(
                ErrorCode::InvalidOffset,
                "an append needs Upload-Offset: where its bytes start",
            ))
        })?;
    let body_length = request.body_length().map_err(failed)?;
    let length = declared_length(request, offset, complete, body_length).map_err(failed)?;
    // The draft's appends carry RFC 9530's Content-Digest, not tus's
    // Upload-Checksum.
    let checksum = crate::digest_fields::chunk_checksum(None, request.header("Content-Digest"))
        .map_err(failed)?;
    let repr = crate::digest_fields::repr_digest(request.header("Repr-Digest")).map_err(failed)?;
    let chunk = Chunk {
        offset,
        length,
        body: request.body(),
        body_length,
        checksum,
        repr,
    };
    let progress = resumable::append(service.pool(), id, chunk, settings).map_err(failed)?;
    if complete && !progress.complete {
        return Err(failed(short_of_complete(&progress)));
    }
    if progress.complete {
        *completed = Some(Box::new(progress.status.clone()));
        Ok(complete_answer(service, id, 201, &progress))
    } else {
        Ok(state_headers(service, id, empty(204), &progress, false))
    }
}

fn is_partial_upload(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(PARTIAL_UPLOAD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_structured_field_integers() {
        assert_eq!(integer("0"), Some(0));
        assert_eq!(integer(" 42\t"), Some(42));
        assert_eq!(integer("999999999999999"), Some(999_999_999_999_999));
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "1;a",
            "0x1",
            "1000000000000000",
            "?1",
        ] {
            assert_eq!(integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dispositions_name_the_file() {
        let name = |h| disposition_filename(h);
        assert_eq!(
            name(r#"attachment; filename="a b.txt""#).as_deref(),
            Some("a b.txt")
        );
        assert_eq!(name("inline; filename=x.bin").as_deref(), Some("x.bin"));
        assert_eq!(
            name(r#"attachment; size=3; filename="q\"uote.txt""#).as_deref(),
            Some("q\"uote.txt")
        );
        assert_eq!(name("attachment").as_deref(), None);
        assert_eq!(name(r#"attachment; filename="open"#).as_deref(), None);
    }
}
