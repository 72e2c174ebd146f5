//! Routes: what each request path and method does.
//!
//! | path ends with   | method / flag          | does                          |
//! |------------------|------------------------|-------------------------------|
//! | `/upload`        | `clear` flag           | clear                         |
//! | `/upload`        | `status` flag          | status                        |
//! | `/upload`        | POST                   | upload                        |
//! | `/upload/status` | GET, HEAD              | status (`clear` flag: clear)  |
//! | `/upload/status` | DELETE                 | clear                         |
//! | `/upload/new`    | GET, HEAD, POST        | a fresh identifier (no key)   |
//! | `/upload/files`  | OPTIONS, POST          | tus, IETF draft: creation     |
//! | `/upload/files/<id>` | OPTIONS, HEAD, PATCH, DELETE | tus, IETF draft: offset, chunk, termination |
//! | anything else    |                        | 404, or the application       |
//!
//! Every answer of ours is JSON (JSONP with a valid `callback`, HTML after
//! an upload when the client prefers it). Errors carry
//! `{"state": "error", "error": ..., "status": ..., "code": ...}` and the
//! matching HTTP status (the code's, see [`crate::error_code`]); server-side errors (5xx) are also logged on stderr, which is the
//! web server's error log.

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};

use serde_json::json;

use crate::app;
use crate::config::Config;
use crate::error_code::ErrorCode;
use crate::hooks;
use crate::http::{HttpError, Request, Response, ResponseWriter};
use crate::identifier::{Identifier, create_identifier, verify_identifier};
use crate::resumable::{self, ietf, tus};
use crate::service::Service;
use crate::status::Status;
use crate::upload;

/// The endpoints, by the end of the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Upload,
    Status,
    New,
    /// tus: the collection uploads are created in.
    Files,
    /// tus: one upload, by the identifier in the path.
    File,
}

/// One segment of a route's path pattern.
#[derive(Clone, Copy, Debug)]
enum Segment {
    /// This text exactly.
    Fixed(&'static str),
    /// Any non-empty segment, handed to the endpoint (an identifier in the
    /// path, as resumable-upload protocols put it).
    Param,
}

use Segment::{Fixed, Param};

/// Every endpoint, by the segments the request path ends with, so that the
/// program answers wherever the web server mounts it
/// (`/cgi-bin/fileupload/upload`, `ScriptAlias /upload`, `location /upload`).
/// A new protocol adds its rows here.
const ROUTES: &[(&[Segment], Route)] = &[
    (&[Fixed("upload")], Route::Upload),
    (&[Fixed("upload"), Fixed("status")], Route::Status),
    (&[Fixed("upload"), Fixed("new")], Route::New),
    (&[Fixed("upload"), Fixed("files")], Route::Files),
    (&[Fixed("upload"), Fixed("files"), Param], Route::File),
];

impl Route {
    /// The route a path ends in, with the path parameters it captured.
    fn of(path: &str) -> Option<(Route, Vec<&str>)> {
        ROUTES
            .iter()
            .find_map(|(pattern, route)| Some((*route, match_end(path, pattern)?)))
    }
}

/// Matches the last segments of `path` against `pattern`; returns the
/// `Param` segments. The match starts at a segment boundary: `/myupload`
/// does not end in `upload`.
fn match_end<'a>(path: &'a str, pattern: &[Segment]) -> Option<Vec<&'a str>> {
    // From the end, without collecting the segments: this runs for every
    // status poll.
    let mut segments = path.rsplit('/');
    let mut params = Vec::new();
    for expected in pattern.iter().rev() {
        let segment = segments.next()?;
        match expected {
            Fixed(text) if segment == *text => {}
            Param if !segment.is_empty() => params.push(segment),
            _ => return None,
        }
    }
    params.reverse();
    Some(params)
}

/// What a route produced.
enum Answer {
    Response(Response),
    /// A completed upload: answered by us, or handed to the application.
    /// (Boxed: a status is several times the size of a response.)
    Uploaded(Box<Status>),
    /// A resumable upload's answer; the upload, if the request completed it.
    Resumable(Response, Option<Box<Status>>),
}

/// Answers one request.
///
/// Then, with `max_age` set, collects old uploads if that is due: for the
/// transports without a timer of their own (CGI, the development server).
/// The FastCGI daemon calls [`answer`] and collects on a timer instead, so
/// that no answer waits for a sweep.
pub fn handle(
    service: &Service,
    request: &mut Request<'_>,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    answer(service, request, out)?;
    collect_if_due(service);
    Ok(())
}

/// Runs `serve` (which answers on `out`) so that a panic, should the
/// handler ever have one, still gives the client JSON, a 500, rather than
/// a cut connection, when nothing was sent yet. Every transport serves
/// through this, so the rule is written once.
pub fn guarded(
    out: &mut dyn ResponseWriter,
    serve: impl FnOnce(&mut dyn ResponseWriter) -> io::Result<()>,
) -> io::Result<()> {
    let mut tracked = Tracked {
        inner: out,
        started: false,
    };
    match panic::catch_unwind(AssertUnwindSafe(|| serve(&mut tracked))) {
        Ok(result) => result,
        // The head is out: the client sees a cut answer, as it must.
        Err(_) if tracked.started => Err(io::Error::other("the handler panicked")),
        Err(_) => {
            let err = HttpError::new(
                ErrorCode::Internal,
                "internal error; the details are in the server's log",
            );
            Response::error(&err).send(tracked.inner, false)
        }
    }
}

/// A response writer that remembers whether the answer has begun.
struct Tracked<'a> {
    inner: &'a mut dyn ResponseWriter,
    started: bool,
}

impl ResponseWriter for Tracked<'_> {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        self.started = true;
        self.inner.start(status, headers)
    }
}

/// Whether a request is quick work: it reads or clears a status, or makes
/// an identifier; it has no body to receive and no application to wait
/// for. Everything else (an upload, a request for the application) is
/// bulk work, which may take as long as its client does.
///
/// Decided here, once, for every transport: CGI lowers a bulk request's
/// priority, and the FastCGI daemon serves quick requests on threads that
/// bulk ones never hold. `config` is the one the request would run with
/// as far as the transport knows it (the daemon's own, before any
/// `FILEUPLOAD_*` parameters).
pub fn is_quick(config: &Config, request: &Request<'_>) -> bool {
    let Some((route, _)) = Route::of(&request.path()) else {
        return false;
    };
    if config.app.is_some() && config.upload_url.is_some() {
        return false; // everything goes to the application
    }
    match route {
        // A creation may carry a first chunk, a PATCH is one.
        Route::Files | Route::File => !tus::is_bulk(request),
        _ => !receives_body(route, request),
    }
}

/// Whether `dispatch` would receive an upload for this request.
fn receives_body(route: Route, request: &Request<'_>) -> bool {
    route == Route::Upload
        && request.method() == "POST"
        && !request.query_flag("clear")
        && !request.query_flag("status")
}

/// Runs automatic gc (`max_age`) if it is due; see [`crate::Pool::maybe_gc`].
pub fn collect_if_due(service: &Service) {
    if let Some(max_age) = service.config().max_age
        && let Err(err) = service.pool().maybe_gc(max_age)
    {
        crate::log!("automatic gc: {err}");
    }
}

/// Answers one request, and does nothing else.
pub fn answer(
    service: &Service,
    request: &mut Request<'_>,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    let config = service.config();
    let path = request.path();
    let matched = Route::of(&path).map(|(route, params)| {
        let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
        (route, params)
    });
    drop(path);
    let route = matched.as_ref().map(|(route, _)| *route);
    let params = matched.map(|(_, params)| params).unwrap_or_default();
    if let Some(program) = &config.app
        && (route.is_none() || config.upload_url.is_some())
    {
        // The application's own requests: its CORS is its own business.
        return app::forward(program, config, request, out);
    }
    // Decided here, before any route reads a byte of the body.
    let methods = route.map(|route| allowed_methods(Some(route)));
    crate::cors::guard(config, request, methods, out, |request, out| {
        answer_route(service, route, &params, request, out)
    })
}

/// Answers a request for one of our routes (or a 404), once CORS let it in.
fn answer_route(
    service: &Service,
    route: Option<Route>,
    params: &[String],
    request: &mut Request<'_>,
    out: &mut dyn ResponseWriter,
) -> io::Result<()> {
    let head_only = request.method() == "HEAD";
    let answer = check_callback(request).and_then(|()| match route {
        Some(route) => dispatch(service, route, params, request),
        None => Err(HttpError::new(
            ErrorCode::NotFound,
            format!(
                "no such endpoint: {}; use .../upload, .../upload/status, .../upload/new \
                 or .../upload/files",
                request.path()
            ),
        )),
    });
    // The hook runs once the answer is out, whoever gave it.
    let done = match &answer {
        Ok(Answer::Uploaded(status)) | Ok(Answer::Resumable(_, Some(status))) => {
            status.identifier.clone()
        }
        _ => None,
    };
    let sent = send_answer(service, request, route, answer, out, head_only);
    if let Some(id) = done {
        completed(service, &id);
    }
    sent
}

/// Hands the status document of the upload `id` just completed to the
/// `on_complete` hook: what a status query would answer now.
fn completed(service: &Service, id: &str) {
    if service.config().on_complete.is_none() {
        return;
    }
    let document = verify_identifier(id, service.config().upload_key.as_ref())
        .map_err(HttpError::from)
        .and_then(|id| status_document(service, &id));
    match document {
        Ok(status) => hooks::upload_done(service, Response::json(200, &status).body),
        Err(err) => crate::log!(
            "on_complete: the status of {id} cannot be read: {}",
            err.message
        ),
    }
}

fn send_answer(
    service: &Service,
    request: &mut Request<'_>,
    route: Option<Route>,
    answer: Result<Answer, HttpError>,
    out: &mut dyn ResponseWriter,
    head_only: bool,
) -> io::Result<()> {
    let config = service.config();
    let response = match answer {
        Ok(Answer::Uploaded(status)) => match &config.app {
            Some(program) => return app::hand_over(program, config, request, &status, out),
            None => upload_response(request, &status),
        },
        Ok(Answer::Resumable(response, completed)) => match (&config.app, completed) {
            (Some(program), Some(status)) => {
                return app::hand_over_resumable(program, config, request, &status, &response, out);
            }
            _ => response,
        },
        Ok(Answer::Response(response)) => response,
        Err(err) => {
            if err.status() >= 500 {
                crate::log!("{} {}: {}", request.method(), request.path(), err.message);
            }
            let response = Response::error(&err);
            match err.code {
                ErrorCode::Method => response.with_header("Allow", allowed_methods(route)),
                _ => response,
            }
        }
    };
    wrap_jsonp(request, response).send(out, head_only)
}

fn dispatch(
    service: &Service,
    route: Route,
    params: &[String],
    request: &mut Request<'_>,
) -> Result<Answer, HttpError> {
    let config = service.config();
    let method = request.method();
    let wrong_method = || {
        HttpError::new(
            ErrorCode::Method,
            format!(
                "method {method} is not allowed here; use {}",
                allowed_methods(Some(route))
            ),
        )
    };
    let clearing = request.query_flag("clear");
    match route {
        Route::Upload if clearing => match method {
            "GET" | "POST" | "DELETE" => clear(service, request),
            _ => Err(wrong_method()),
        },
        Route::Upload if request.query_flag("status") => match method {
            "GET" | "HEAD" => status(service, request),
            _ => Err(wrong_method()),
        },
        Route::Upload => match method {
            "POST" => {
                let id = identifier(config, request)?;
                let mut options = upload::Options::from_config(config);
                options.on_create = hooks::Gate::for_request(config, request);
                upload::receive(service.pool(), &id, request, &options)
                    .map(|status| Answer::Uploaded(Box::new(status)))
            }
            _ => Err(wrong_method()),
        },
        Route::Status => match method {
            "GET" | "HEAD" if clearing => clear(service, request),
            "GET" | "HEAD" => status(service, request),
            "DELETE" => clear(service, request),
            _ => Err(wrong_method()),
        },
        Route::New => match method {
            "GET" | "HEAD" | "POST" => new_identifier(config),
            _ => Err(wrong_method()),
        },
        // The IETF draft shares the endpoints: its requests say their
        // interop version, tus requests their Tus-Resumable.
        Route::Files => {
            let answered = if ietf::is_ietf(request) {
                ietf::collection(service, request)
            } else {
                tus::collection(service, request)
            };
            Ok(Answer::Resumable(answered.response, answered.completed))
        }
        Route::File => {
            let param = params.first().map(String::as_str).unwrap_or_default();
            let answered = if ietf::is_ietf(request) {
                ietf::upload(service, request, param)
            } else {
                tus::upload(service, request, param)
            };
            Ok(Answer::Resumable(answered.response, answered.completed))
        }
    }
}

fn allowed_methods(route: Option<Route>) -> &'static str {
    match route {
        Some(Route::Upload) => "POST, GET, HEAD, DELETE",
        Some(Route::Status) => "GET, HEAD, DELETE",
        Some(Route::New) => "GET, HEAD, POST",
        Some(Route::Files) => "OPTIONS, POST",
        Some(Route::File) => "OPTIONS, HEAD, PATCH, DELETE",
        None => "GET",
    }
}

/// The identifier from `X-Progress-ID` in the query, else in a header.
fn identifier(config: &Config, request: &Request<'_>) -> Result<Identifier, HttpError> {
    let text = request
        .query_param("X-Progress-ID")
        .filter(|id| !id.is_empty())
        .or_else(|| request.header("X-Progress-ID"))
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::NoIdentifier,
                "missing upload identifier: pass X-Progress-ID in the query string or as a header",
            )
        })?;
    Ok(verify_identifier(text, config.upload_key.as_ref())?)
}

fn status(service: &Service, request: &Request<'_>) -> Result<Answer, HttpError> {
    let id = identifier(service.config(), request)?;
    let status = status_document(service, &id)?;
    Ok(Answer::Response(Response::json(200, &status)))
}

/// The status of `id` as a status query answers it (and `on_complete`
/// is given it).
fn status_document(service: &Service, id: &Identifier) -> Result<Status, HttpError> {
    let stored = service.pool().status(id)?;
    // A resumable upload at rest is `incomplete` on disk, `uploading` here.
    let settings = resumable::Settings::from_config(service.config());
    Ok(resumable::public_status(
        service.pool(),
        id,
        stored,
        &settings,
    ))
}

fn clear(service: &Service, request: &Request<'_>) -> Result<Answer, HttpError> {
    let id = identifier(service.config(), request)?;
    service.pool().clear(&id)?;
    Ok(Answer::Response(Response::json(
        200,
        &json!({"success": true}),
    )))
}

fn new_identifier(config: &Config) -> Result<Answer, HttpError> {
    if config.upload_key.is_some() {
        return Err(HttpError::new(
            ErrorCode::NewIdRefused,
            "this server signs upload identifiers, so the application issues them \
             (fileupload new-id, or the library); they are not handed out over HTTP",
        ));
    }
    let id = create_identifier(None).map_err(|e| {
        HttpError::new(
            ErrorCode::Internal,
            format!("no randomness for a new identifier: {e}"),
        )
    })?;
    Ok(Answer::Response(Response::json(
        200,
        &json!({"identifier": id.as_str()}),
    )))
}

/// JSONP callbacks: a JavaScript identifier path, nothing that could close
/// the call or start a tag.
fn valid_callback(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$');
    first_ok
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.')
}

fn check_callback(request: &Request<'_>) -> Result<(), HttpError> {
    match request.query_param("callback") {
        Some(name) if !valid_callback(name) => Err(HttpError::new(
            ErrorCode::BadCallback,
            "invalid JSONP callback: use a JavaScript name of letters, digits, '_', '$' and '.', \
             at most 64 characters",
        )),
        _ => Ok(()),
    }
}

/// Wraps a JSON answer as `/**/callback(...);` when a callback was given.
/// The leading comment keeps the body from being read as anything but
/// script (the "Rosetta Flash" defence).
fn wrap_jsonp(request: &Request<'_>, mut response: Response) -> Response {
    let Some(callback) = request.query_param("callback") else {
        return response;
    };
    let is_json = response
        .headers
        .iter()
        .any(|(n, v)| n == "Content-Type" && v == "application/json");
    if !is_json || !valid_callback(callback) {
        return response;
    }
    let mut body = format!("/**/{callback}(").into_bytes();
    body.extend_from_slice(&response.body);
    body.extend_from_slice(b");");
    response.body = body;
    for (name, value) in &mut response.headers {
        if name == "Content-Type" {
            *value = "application/javascript".into();
        }
    }
    response.with_header("X-Content-Type-Options", "nosniff")
}

/// After an upload: JSON, or the original's HTML page for a form posted
/// into an iframe (when the client prefers HTML to JSON).
fn upload_response(request: &Request<'_>, status: &Status) -> Response {
    let accept = request.header("Accept").unwrap_or("");
    if quality(accept, "text/html") > quality(accept, "application/json") {
        let page = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Upload complete</title></head>\n\
             <body data-upload-identifier=\"{}\" data-upload-info=\"{}\"></body></html>\n",
            escape_html(status.identifier.as_deref().unwrap_or("")),
            escape_html(&status.to_json()),
        );
        Response::html(200, page)
    } else {
        Response::json(200, status)
    }
}

/// The `q` an `Accept` header gives a media type, by its most specific
/// matching range (RFC 9110 section 12.5.1).
fn quality(accept: &str, media_type: &str) -> f32 {
    let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let name = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let specificity = if name == media_type {
            3
        } else if name.strip_suffix("/*") == Some(kind) {
            2
        } else if name == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// Escapes text for an HTML attribute value or element content.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_captured_at_segment_boundaries() {
        let pattern = [Fixed("upload"), Fixed("files"), Param];
        assert_eq!(
            match_end("/x/upload/files/abc-1", &pattern),
            Some(vec!["abc-1"])
        );
        assert_eq!(match_end("upload/files/abc", &pattern), Some(vec!["abc"]));
        assert_eq!(match_end("/x/upload/files/", &pattern), None);
        assert_eq!(match_end("/x/upload/files", &pattern), None);
        assert_eq!(match_end("/x/myupload/files/abc", &pattern), None);
        assert_eq!(
            match_end("/upload/status", &[Fixed("status")]),
            Some(vec![])
        );
    }

    #[test]
    fn routes_by_suffix() {
        let route = |path| Route::of(path).map(|(route, _)| route);
        assert_eq!(route("/upload"), Some(Route::Upload));
        assert_eq!(route("/cgi-bin/fileupload/upload"), Some(Route::Upload));
        assert_eq!(route("/x/upload/status"), Some(Route::Status));
        assert_eq!(route("/upload/new"), Some(Route::New));
        assert_eq!(route("upload"), Some(Route::Upload));
        assert_eq!(route("/uploads"), None);
        assert_eq!(route("/myupload"), None);
        assert_eq!(route("/upload/"), None);
        assert_eq!(route("/"), None);
        assert_eq!(route("/upload/status/x"), None);
    }

    #[test]
    fn callbacks() {
        for good in ["cb", "$", "_x", "jQuery123_456", "a.b.c", &"a".repeat(64)] {
            assert!(valid_callback(good), "{good}");
        }
        for bad in [
            "",
            "1x",
            "a(b",
            "a<b",
            "a\"",
            "a'b",
            "a\nb",
            "a b",
            "a;b",
            &"a".repeat(65),
            ".a",
        ] {
            assert!(!valid_callback(bad), "{bad:?}");
        }
    }

    #[test]
    fn accept_preferences() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(quality(browser, "text/html") > quality(browser, "application/json"));
        for json_first in [
            "*/*",
            "",
            "application/json",
            "application/json, text/html;q=0.5",
            "text/*;q=0.1, */*",
        ] {
            assert!(
                quality(json_first, "text/html") <= quality(json_first, "application/json"),
                "{json_first}"
            );
        }
        assert_eq!(quality("text/html;q=0", "text/html"), 0.0);
    }

    #[test]
    fn html_escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
