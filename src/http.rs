//! The one request and response abstraction every transport feeds.
//!
//! A [`Request`] is the CGI meta-variables of RFC 3875 (`REQUEST_METHOD`,
//! `PATH_INFO`, `QUERY_STRING`, `CONTENT_LENGTH`, `HTTP_*`, ...) plus a body
//! reader. CGI gets them from its environment, FastCGI from its `PARAMS`
//! records, the development server makes them from the HTTP request: so
//! there is one place where they are interpreted, here, and the handler
//! never knows which transport it runs behind. Keeping the variables whole
//! also lets middleware mode hand a request to the application unchanged.
//!
//! The response goes out through a [`ResponseWriter`]: the handler gives
//! the status and headers once, then writes the body, so an application's
//! output can be streamed through without being held in memory.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::io::{self, Read, Write};

use serde::Serialize;

use crate::error_code::ErrorCode;
use crate::vars::Vars;

/// An error answered with an HTTP status and a JSON body. The status is
/// the code's: a code always has the same one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// A request body as a transport hands it over: bytes, and why it failed
/// when it knows.
///
/// A read error is only the signal to stop reading: the parser (or any
/// other consumer) sees an `io::Error` and ends. A body that failed for a
/// reason of its own (the web server aborted the request, its records are
/// malformed, the daemon is shutting down) says which through
/// [`Body::failure`], as a typed error, so the upload is answered and
/// recorded with that code rather than as a plain truncation. Nothing is
/// smuggled inside the `io::Error`.
pub trait Body: Read {
    /// Why the last failed read failed, when the body knows better than
    /// "it could not be read" (which is `ERR_TRUNCATED`). Asked after a
    /// read returned an error; `None` for a plain I/O error.
    fn failure(&mut self) -> Option<HttpError>;
}

impl<B: Body + ?Sized> Body for &mut B {
    fn failure(&mut self) -> Option<HttpError> {
        (**self).failure()
    }
}

/// A body cut at its announced length fails as the body inside it does.
impl<B: Body> Body for io::Take<B> {
    fn failure(&mut self) -> Option<HttpError> {
        self.get_mut().failure()
    }
}

/// A body in memory (tests, the fuzzer) cannot fail.
impl Body for &[u8] {
    fn failure(&mut self) -> Option<HttpError> {
        None
    }
}

/// No body at all (a status poll's).
impl Body for io::Empty {
    fn failure(&mut self) -> Option<HttpError> {
        None
    }
}

/// How long the request body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// `CONTENT_LENGTH` says.
    Known(u64),
    /// No length, but the transport marks the end (a chunked body streamed
    /// through FastCGI, or a CGI body the server ends by closing stdin).
    UntilEnd,
    /// No length and no way to tell where a body would end: RFC 3875 says
    /// there is none.
    Absent,
}

impl BodyLength {
    pub fn known(self) -> Option<u64> {
        match self {
            BodyLength::Known(n) => Some(n),
            _ => None,
        }
    }
}

/// A request: CGI meta-variables and a body.
pub struct Request<'a> {
    vars: Vars,
    body: &'a mut dyn Body,
    end_is_marked: bool,
    /// The query string's pairs, decoded on first use.
    query: OnceCell<Vec<(String, String)>>,
}

impl<'a> Request<'a> {
    /// `end_is_marked`: the transport signals the end of the body (FastCGI's
    /// empty `STDIN` record, a chunked request's last chunk), so a body
    /// without `CONTENT_LENGTH` can be read to its end.
    pub fn new(vars: impl Into<Vars>, body: &'a mut dyn Body, end_is_marked: bool) -> Request<'a> {
        Request {
            vars: vars.into(),
            body,
            end_is_marked,
            query: OnceCell::new(),
        }
    }

    /// A meta-variable; an empty value counts as unset, as RFC 3875 allows.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).filter(|v| !v.is_empty())
    }

    /// Every meta-variable, for handing the request to another program.
    /// The CGI variables, given back.
    pub fn into_vars(self) -> Vars {
        self.vars
    }

    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    pub fn method(&self) -> &str {
        self.var("REQUEST_METHOD").unwrap_or("GET")
    }

    /// `SCRIPT_NAME` + `PATH_INFO` when `PATH_INFO` is set, else the path of
    /// `REQUEST_URI`, else `SCRIPT_NAME`. Works as `/cgi-bin/fileupload/upload`
    /// (`PATH_INFO=/upload`), behind Apache's `ScriptAlias /upload`
    /// (`/upload` + `/status`), and behind an nginx `location /upload` that
    /// runs the program directly (no `PATH_INFO`).
    pub fn path(&self) -> Cow<'_, str> {
        if let Some(info) = self.var("PATH_INFO") {
            let script = self.var("SCRIPT_NAME").unwrap_or("");
            return Cow::Owned(format!("{script}{info}"));
        }
        if let Some(uri) = self.var("REQUEST_URI") {
            let path = uri.split(['?', '#']).next().unwrap_or("");
            if !path.is_empty() {
                return Cow::Borrowed(path);
            }
        }
        Cow::Borrowed(self.var("SCRIPT_NAME").unwrap_or("/"))
    }

    pub fn query(&self) -> &str {
        self.var("QUERY_STRING").unwrap_or("")
    }

    /// The first value of a query parameter, percent-decoded. Parameter
    /// names compare without regard to case (`X-Progress-ID`,
    /// `x-progress-id`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .get_or_init(|| query_pairs(self.query()).collect())
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a flag such as `&status` or `&clear` is present.
    pub fn query_flag(&self, name: &str) -> bool {
        self.query_param(name).is_some()
    }

    /// A request header: `X-Progress-ID` is `HTTP_X_PROGRESS_ID`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let var: String = "HTTP_"
            .chars()
            .chain(name.chars().map(|c| match c {
                '-' => '_',
                c => c.to_ascii_uppercase(),
            }))
            .collect();
        self.var(&var)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.var("CONTENT_TYPE")
    }

    /// The body's length from `CONTENT_LENGTH`: 400 if it is not a
    /// non-negative integer.
    pub fn body_length(&self) -> Result<BodyLength, HttpError> {
        match self.var("CONTENT_LENGTH") {
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(BodyLength::Known)
                .map_err(|_| {
                    HttpError::new(
                        ErrorCode::BadLength,
                        format!("invalid Content-Length {text:?}"),
                    )
                }),
            None if self.end_is_marked => Ok(BodyLength::UntilEnd),
            None => Ok(BodyLength::Absent),
        }
    }

    pub fn body(&mut self) -> &mut dyn Body {
        self.body
    }
}

/// Splits a query string into decoded pairs; a bare `flag` has value "".
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Decodes `%XX` and `+`; invalid escapes are kept as they are, and bytes
/// that are not UTF-8 become U+FFFD (which no identifier accepts).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a handler sends its answer.
pub trait ResponseWriter {
    /// Sends the status line and headers; returns where the body goes.
    /// Called once per request.
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write>;
}

/// A complete answer of our own (JSON, JSONP or HTML: always small).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON answer. No answer of ours may be cached: a status changes
    /// from one second to the next.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        // Our values are plain data; serializing cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Response {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body,
        }
    }

    /// The JSON error body:
    /// `{"state": "error", "error": ..., "status": ..., "code": ...}`.
    pub fn error(err: &HttpError) -> Response {
        Response::json(
            err.status(),
            &serde_json::json!({
                "state": "error",
                "error": err.message,
                "status": err.status(),
                "code": err.code.as_str(),
            }),
        )
    }

    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type".into(), "text/html; charset=utf-8".into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body: body.into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends it; for a `HEAD` request, without the body. A 204 has no
    /// `Content-Length` (RFC 9110 section 8.6 forbids one).
    pub fn send(&self, out: &mut dyn ResponseWriter, head_only: bool) -> io::Result<()> {
        let mut headers = self.headers.clone();
        if self.status != 204 {
            headers.push(("Content-Length".into(), self.body.len().to_string()));
        }
        let body = out.start(self.status, &headers)?;
        if !head_only {
            body.write_all(&self.body)?;
        }
        body.flush()
    }
}

/// Writes a CGI response head (`Status:` line, headers, blank line), as
/// both CGI and FastCGI send it. A header whose name or value holds a line
/// break is dropped rather than let it split the head (response
/// splitting).
pub fn write_cgi_head(
    out: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
) -> io::Result<()> {
    let mut head = format!("Status: {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let unsafe_text = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if name.is_empty() || unsafe_text(name) || unsafe_text(value) || name.contains(':') {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

/// The reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        // tus's checksum extension (tusd's phrase); not an IANA status.
        460 => "Checksum Mismatch",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(vars: &[(&str, &str)], body: &'a mut dyn Body, marked: bool) -> Request<'a> {
        let vars: Vars = vars.iter().copied().collect();
        Request::new(vars, body, marked)
    }

    #[test]
    fn path_is_script_and_path_info_then_uri_then_script() {
        let mut empty = io::empty();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[
                    ("PATH_INFO", "/upload"),
                    ("REQUEST_URI", "/x/y?z"),
                    ("SCRIPT_NAME", "/s"),
                ],
                "/s/upload",
            ),
            (
                &[("PATH_INFO", "/status"), ("SCRIPT_NAME", "/upload")],
                "/upload/status",
            ),
            (&[("PATH_INFO", "/upload/status")], "/upload/status"),
            (
                &[
                    ("PATH_INFO", ""),
                    ("REQUEST_URI", "/up/upload/status?X-Progress-ID=a"),
                    ("SCRIPT_NAME", "/s"),
                ],
                "/up/upload/status",
            ),
            (&[("SCRIPT_NAME", "/upload")], "/upload"),
            (
                &[("REQUEST_URI", "?only-query"), ("SCRIPT_NAME", "/s")],
                "/s",
            ),
            (&[], "/"),
        ];
        for (vars, expected) in cases {
            assert_eq!(
                request(vars, &mut empty, false).path(),
                *expected,
                "{vars:?}"
            );
        }
    }

    #[test]
    fn query_and_headers() {
        let mut empty = io::empty();
        let req = request(
            &[
                (
                    "QUERY_STRING",
                    "x-progress-id=a%2Db&status&callback=cb&sp=a+b&bad=%zz%4",
                ),
                ("HTTP_X_PROGRESS_ID", "from-header"),
            ],
            &mut empty,
            false,
        );
        assert_eq!(req.query_param("X-Progress-ID"), Some("a-b"));
        assert!(req.query_flag("status"));
        assert!(!req.query_flag("clear"));
        assert_eq!(req.query_param("sp"), Some("a b"));
        assert_eq!(req.query_param("bad"), Some("%zz%4"));
        assert_eq!(req.header("X-Progress-ID"), Some("from-header"));
        assert_eq!(req.method(), "GET");
        assert_eq!(percent_decode("%2e%2e%2F"), "../");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn body_length() {
        let length = |vars: &[(&str, &str)], marked: bool| {
            let mut e = io::empty();
            request(vars, &mut e, marked).body_length()
        };
        assert_eq!(
            length(&[("CONTENT_LENGTH", "12")], false),
            Ok(BodyLength::Known(12))
        );
        assert_eq!(length(&[], true), Ok(BodyLength::UntilEnd));
        assert_eq!(length(&[], false), Ok(BodyLength::Absent));
        assert_eq!(
            length(&[("CONTENT_LENGTH", "")], false),
            Ok(BodyLength::Absent)
        );
        for bad in ["-1", "abc", "1e3", "99999999999999999999999"] {
            assert_eq!(
                length(&[("CONTENT_LENGTH", bad)], false).unwrap_err().code,
                ErrorCode::BadLength,
                "{bad}"
            );
        }
    }

    #[test]
    fn cgi_head_refuses_line_breaks() {
        let mut out = Vec::new();
        let headers = vec![
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("X-Evil".to_string(), "a\r\nSet-Cookie: x=1".to_string()),
            ("Bad\nName".to_string(), "v".to_string()),
        ];
        write_cgi_head(&mut out, 404, &headers).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\n"
        );
    }
}
