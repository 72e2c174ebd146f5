//! CORS: which other origins' pages may talk to this server from a
//! browser, for a dedicated upload server on an origin of its own.
//!
//! Without `allowed_origins` nothing here acts: no CORS header is sent and
//! no `Origin` is checked, as before the setting existed, so a same-site
//! installation keeps working untouched. With it, every request that
//! carries an `Origin` is decided before anything else happens to it
//! ([`guard`], called once by the handler for every transport):
//!
//! - a listed origin: the answer (ours, an error, or the application's
//!   after a hand-over) gets `Access-Control-Allow-Origin: <origin>`,
//!   `Vary: Origin`, the headers a client must read exposed, and with
//!   `allow_credentials` `Access-Control-Allow-Credentials: true`; a
//!   preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
//!   204 here, for every route. tus's own `OPTIONS` (without that header)
//!   still goes to tus.
//! - any other origin, `null` included: 403 `ERR_ORIGIN_NOT_ALLOWED`,
//!   before a byte of the body is read. A form post or a simple XHR comes
//!   without a preflight, so the browser's own refusal (it hides the answer
//!   from the page) would come after the bytes were stored; refusing here is
//!   what keeps an unlisted page from uploading at all.
//!
//! CORS is about browsers. It does not authenticate anyone: a program can
//! send any `Origin`, or none. Signed identifiers (`upload_key`) are what
//! say who may upload.

use std::io::{self, Write};

use crate::config::Config;
use crate::error_code::ErrorCode;
use crate::http::{HttpError, Request, Response, ResponseWriter};

/// The origins whose pages may call this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: any page. Only for uploads that carry no credentials, so it
    /// cannot be combined with `allow_credentials` (browsers refuse that
    /// pair anyway).
    Any,
    /// Exact origins, as browsers serialize them (`https://app.example`,
    /// `http://127.0.0.1:8080`): lower-case, no default port, no path.
    List(Vec<String>),
}

/// Request headers a page may send, as the preflight answers them: ours
/// (`X-Progress-ID`), tus's and the IETF draft's, and what the common
/// clients add (jQuery's `X-Requested-With`, tus-js-client's
/// `X-HTTP-Method-Override`).
pub const ALLOW_HEADERS: &str = "X-Progress-ID, Content-Type, Tus-Resumable, Upload-Length, \
     Upload-Offset, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, \
     Upload-Complete, Upload-Draft-Interop-Version, X-HTTP-Method-Override, X-Requested-With";

/// Response headers a page must be able to read: a browser hides every
/// header but a few simple ones unless they are listed, and tus clients
/// need `Location` and `Upload-Offset` to resume at all.
pub const EXPOSE_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Expires, \
     Upload-Metadata, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
     Tus-Checksum-Algorithm, Upload-Complete, Upload-Draft-Interop-Version, Upload-Limit";

/// How long a browser may reuse a preflight's answer, in seconds. An hour
/// spares a resumable upload a preflight per chunk; Chromium caps it at
/// two hours anyway.
pub const MAX_AGE: &str = "3600";

/// Parses `allowed_origins`: `*`, or comma-separated exact origins. The
/// error is the message for the person who wrote the setting.
pub fn parse_origins(text: &str) -> Result<AllowedOrigins, String> {
    let entries: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("no origin given: list origins such as https://app.example".into());
    }
    if entries.contains(&"*") {
        if entries.len() > 1 {
            return Err("* means every origin; give it alone or list origins".into());
        }
        return Ok(AllowedOrigins::Any);
    }
    entries
        .into_iter()
        .map(parse_origin)
        .collect::<Result<Vec<_>, _>>()
        .map(AllowedOrigins::List)
}

/// One origin, normalized as a browser sends it, or why it is not one.
fn parse_origin(entry: &str) -> Result<String, String> {
    if entry.eq_ignore_ascii_case("null") {
        return Err(
            "null cannot be listed: sandboxed frames, file: pages and some redirects all send \
             Origin: null, so listing it would let any page in"
                .into(),
        );
    }
    let lower = entry.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("{entry:?} is not an origin: write scheme://host[:port]"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(format!("{entry:?}: the scheme must be http or https")),
    };
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "{entry:?}: an origin has no path, not even a trailing /: write {scheme}://{}",
            rest.split(['/', '?', '#']).next().unwrap_or("")
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal has colons of its own: the port follows the `]`.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok || rest.contains('@') {
        return Err(format!("{entry:?}: {host:?} is not a host name or address"));
    }
    match port {
        None => Ok(lower),
        Some(port) if port == default_port => Err(format!(
            "{entry:?}: browsers leave out the default port; write {scheme}://{host}"
        )),
        Some(port) if !port.is_empty() && port.len() <= 5 && port.parse::<u16>().is_ok() => {
            Ok(lower)
        }
        Some(port) => Err(format!("{entry:?}: {port:?} is not a port")),
    }
}

/// What CORS makes of one request.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// No `Origin`, or CORS is off: as if this module did not exist.
    Untouched,
    /// An allowed origin: these headers go on the answer.
    Allowed(Vec<(String, String)>),
    /// Answered here: a preflight, or a refusal.
    Answered(Response),
}

fn decide(config: &Config, request: &Request<'_>, methods: Option<&str>) -> Decision {
    let Some(allowed) = &config.allowed_origins else {
        return Decision::Untouched;
    };
    let Some(origin) = request.header("Origin") else {
        return Decision::Untouched;
    };
    let listed = match allowed {
        AllowedOrigins::Any => true,
        AllowedOrigins::List(list) => list.iter().any(|o| o == origin),
    };
    if !listed {
        let err = HttpError::new(
            ErrorCode::OriginNotAllowed,
            format!(
                "pages on {origin:?} may not use this upload server: the origin is not in its \
                 allowed_origins"
            ),
        );
        return Decision::Answered(Response::error(&err).with_header("Vary", "Origin"));
    }
    let allow_origin = match allowed {
        AllowedOrigins::Any => "*",
        AllowedOrigins::List(_) => origin,
    };
    let mut headers = vec![
        (
            "Access-Control-Allow-Origin".to_owned(),
            allow_origin.to_owned(),
        ),
        ("Vary".to_owned(), "Origin".to_owned()),
    ];
    if config.allow_credentials {
        headers.push(("Access-Control-Allow-Credentials".into(), "true".into()));
    }
    let preflight =
        request.method() == "OPTIONS" && request.header("Access-Control-Request-Method").is_some();
    match methods {
        Some(methods) if preflight => {
            let methods = if methods.contains("OPTIONS") {
                methods.to_owned()
            } else {
                format!("{methods}, OPTIONS")
            };
            let mut response = Response {
                status: 204,
                headers: vec![("Cache-Control".into(), "no-store".into())],
                body: Vec::new(),
            };
            response.headers.extend(headers);
            Decision::Answered(
                response
                    .with_header("Access-Control-Allow-Methods", &methods)
                    .with_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
                    .with_header("Access-Control-Max-Age", MAX_AGE),
            )
        }
        _ => {
            headers.push((
                "Access-Control-Expose-Headers".into(),
                EXPOSE_HEADERS.into(),
            ));
            Decision::Allowed(headers)
        }
    }
}

/// Decides `request` by its `Origin` and, unless that answers it (a
/// preflight, a refusal), runs `serve` with an answer writer that adds the
/// CORS headers to whatever answer `serve` gives: ours, an error, or the
/// application's after a hand-over. `methods`: the route's methods, for a
/// preflight; `None` where the request is no route of ours.
///
/// A refusal reads nothing of the body; each transport deals with the
/// unread rest as it does for every early answer (CGI exits, the FastCGI
/// daemon discards it and keeps the connection).
pub fn guard<'a>(
    config: &Config,
    request: &mut Request<'a>,
    methods: Option<&str>,
    out: &mut dyn ResponseWriter,
    serve: impl FnOnce(&mut Request<'a>, &mut dyn ResponseWriter) -> io::Result<()>,
) -> io::Result<()> {
    match decide(config, request, methods) {
        Decision::Untouched => serve(request, out),
        Decision::Answered(response) => response.send(out, request.method() == "HEAD"),
        Decision::Allowed(headers) => serve(
            request,
            &mut WithHeaders {
                inner: out,
                headers,
            },
        ),
    }
}

/// An answer writer that puts the CORS headers on the answer. An
/// application's own `Access-Control-*` headers are dropped: on our routes
/// this module decides, and two `Access-Control-Allow-Origin` headers make
/// a browser refuse the answer.
struct WithHeaders<'a> {
    inner: &'a mut dyn ResponseWriter,
    headers: Vec<(String, String)>,
}

impl ResponseWriter for WithHeaders<'_> {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        let mut all: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| {
                !name
                    .get(..15)
                    .is_some_and(|p| p.eq_ignore_ascii_case("access-control-"))
            })
            .cloned()
            .collect();
        all.extend(self.headers.iter().cloned());
        self.inner.start(status, &all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::Vars;

    fn list(origins: &[&str]) -> AllowedOrigins {
        AllowedOrigins::List(origins.iter().map(|o| o.to_string()).collect())
    }

    #[test]
    fn origins_parse_and_normalize() {
        assert_eq!(parse_origins("*"), Ok(AllowedOrigins::Any));
        assert_eq!(parse_origins(" * "), Ok(AllowedOrigins::Any));
        assert_eq!(
            parse_origins("https://App.Example, http://127.0.0.1:8080,"),
            Ok(list(&["https://app.example", "http://127.0.0.1:8080"]))
        );
        assert_eq!(
            parse_origins("http://[::1]:8080,https://[::1]"),
            Ok(list(&["http://[::1]:8080", "https://[::1]"]))
        );
    }

    #[test]
    fn bad_origins_are_refused_with_a_reason() {
        for (bad, says) in [
            ("", "no origin"),
            (" , ", "no origin"),
            ("*,https://a.example", "alone"),
            ("null", "null cannot be listed"),
            ("a.example", "scheme://host"),
            ("ftp://a.example", "http or https"),
            ("https://a.example/", "no path"),
            ("https://a.example/up", "no path"),
            ("https://a.example:443", "default port"),
            ("http://a.example:80", "default port"),
            ("http://a.example:99999", "not a port"),
            ("http://a.example:", "not a port"),
            ("http://a.example:8x", "not a port"),
            ("http://", "not a host"),
            ("http://user@a.example", "not a host"),
            ("http://a_b.example", "not a host"),
        ] {
            let err = parse_origins(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    fn request_with<'a>(vars: &[(&str, &str)], body: &'a mut &'static [u8]) -> Request<'a> {
        let vars: Vars = vars.iter().copied().collect();
        Request::new(vars, body, false)
    }

    fn config(origins: Option<AllowedOrigins>, credentials: bool) -> Config {
        Config {
            allowed_origins: origins,
            allow_credentials: credentials,
            ..Config::default()
        }
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn no_setting_or_no_origin_leaves_the_request_alone() {
        let mut body: &[u8] = b"";
        let from_elsewhere = request_with(&[("HTTP_ORIGIN", "https://evil.example")], &mut body);
        let off = config(None, false);
        assert_eq!(
            decide(&off, &from_elsewhere, Some("POST")),
            Decision::Untouched
        );
        let mut body: &[u8] = b"";
        let no_origin = request_with(&[("REQUEST_METHOD", "POST")], &mut body);
        let on = config(Some(list(&["https://app.example"])), false);
        assert_eq!(decide(&on, &no_origin, Some("POST")), Decision::Untouched);
    }

    #[test]
    fn a_listed_origin_gets_its_headers() {
        let on = config(Some(list(&["https://app.example"])), false);
        let mut body: &[u8] = b"";
        let request = request_with(&[("HTTP_ORIGIN", "https://app.example")], &mut body);
        let Decision::Allowed(headers) = decide(&on, &request, Some("POST")) else {
            panic!("not allowed");
        };
        assert_eq!(
            header(&headers, "Access-Control-Allow-Origin"),
            Some("https://app.example")
        );
        assert_eq!(header(&headers, "Vary"), Some("Origin"));
        assert_eq!(
            header(&headers, "Access-Control-Expose-Headers"),
            Some(EXPOSE_HEADERS)
        );
        assert_eq!(header(&headers, "Access-Control-Allow-Credentials"), None);

        let with_credentials = config(Some(list(&["https://app.example"])), true);
        let Decision::Allowed(headers) = decide(&with_credentials, &request, Some("POST")) else {
            panic!("not allowed");
        };
        assert_eq!(
            header(&headers, "Access-Control-Allow-Credentials"),
            Some("true")
        );
    }

    #[test]
    fn any_origin_is_a_star_even_null() {
        let any = config(Some(AllowedOrigins::Any), false);
        let mut body: &[u8] = b"";
        let request = request_with(&[("HTTP_ORIGIN", "null")], &mut body);
        let Decision::Allowed(headers) = decide(&any, &request, None) else {
            panic!("not allowed");
        };
        assert_eq!(header(&headers, "Access-Control-Allow-Origin"), Some("*"));
    }

    #[test]
    fn unlisted_and_null_origins_are_refused() {
        let on = config(Some(list(&["https://app.example"])), false);
        for origin in [
            "https://evil.example",
            "null",
            "https://app.example.evil.example",
            "http://app.example",
            "https://APP.example",
            "https://app.example:8443",
        ] {
            let mut body: &[u8] = b"";
            let request = request_with(
                &[("HTTP_ORIGIN", origin), ("REQUEST_METHOD", "OPTIONS")],
                &mut body,
            );
            let Decision::Answered(response) = decide(&on, &request, Some("POST")) else {
                panic!("{origin} not refused");
            };
            assert_eq!(response.status, 403, "{origin}");
            let body = String::from_utf8_lossy(&response.body);
            assert!(body.contains("ERR_ORIGIN_NOT_ALLOWED"), "{body}");
            assert_eq!(
                header(&response.headers, "Access-Control-Allow-Origin"),
                None
            );
        }
    }

    #[test]
    fn a_preflight_is_answered_with_the_routes_methods() {
        let on = config(Some(list(&["https://app.example"])), true);
        let mut body: &[u8] = b"";
        let request = request_with(
            &[
                ("HTTP_ORIGIN", "https://app.example"),
                ("REQUEST_METHOD", "OPTIONS"),
                ("HTTP_ACCESS_CONTROL_REQUEST_METHOD", "POST"),
            ],
            &mut body,
        );
        let Decision::Answered(response) = decide(&on, &request, Some("GET, HEAD, DELETE")) else {
            panic!("preflight not answered");
        };
        assert_eq!(response.status, 204);
        let h = |name| header(&response.headers, name);
        assert_eq!(
            h("Access-Control-Allow-Methods"),
            Some("GET, HEAD, DELETE, OPTIONS")
        );
        assert_eq!(h("Access-Control-Allow-Headers"), Some(ALLOW_HEADERS));
        assert_eq!(h("Access-Control-Max-Age"), Some(MAX_AGE));
        assert_eq!(h("Access-Control-Allow-Credentials"), Some("true"));
        assert_eq!(
            h("Access-Control-Allow-Origin"),
            Some("https://app.example")
        );
        // A route that lists OPTIONS already does not get it twice.
        let Decision::Answered(response) = decide(&on, &request, Some("OPTIONS, POST")) else {
            panic!("preflight not answered");
        };
        assert_eq!(
            header(&response.headers, "Access-Control-Allow-Methods"),
            Some("OPTIONS, POST")
        );
        // No route of ours: no preflight answer, the request goes on (to
        // its 404).
        assert!(matches!(decide(&on, &request, None), Decision::Allowed(_)));
    }

    #[test]
    fn tus_options_without_a_request_method_is_not_a_preflight() {
        let on = config(Some(list(&["https://app.example"])), false);
        let mut body: &[u8] = b"";
        let request = request_with(
            &[
                ("HTTP_ORIGIN", "https://app.example"),
                ("REQUEST_METHOD", "OPTIONS"),
            ],
            &mut body,
        );
        assert!(matches!(
            decide(&on, &request, Some("OPTIONS, POST")),
            Decision::Allowed(_)
        ));
    }

    #[test]
    fn the_writer_replaces_an_applications_cors_headers() {
        struct Capture(Vec<(String, String)>, Vec<u8>);
        impl ResponseWriter for Capture {
            fn start(
                &mut self,
                _status: u16,
                headers: &[(String, String)],
            ) -> io::Result<&mut dyn Write> {
                self.0 = headers.to_vec();
                Ok(&mut self.1)
            }
        }
        let mut capture = Capture(Vec::new(), Vec::new());
        let mut writer = WithHeaders {
            inner: &mut capture,
            headers: vec![("Access-Control-Allow-Origin".into(), "https://a".into())],
        };
        let app = [
            ("access-control-allow-origin".to_owned(), "*".to_owned()),
            ("Content-Type".to_owned(), "text/plain".to_owned()),
        ];
        writer.start(200, &app).unwrap();
        assert_eq!(
            capture.0,
            vec![
                ("Content-Type".to_owned(), "text/plain".to_owned()),
                (
                    "Access-Control-Allow-Origin".to_owned(),
                    "https://a".to_owned()
                ),
            ]
        );
    }
}
