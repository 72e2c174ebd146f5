//! `fileupload serve`: a small HTTP server for trying fileupload in one
//! command, with the demo page at `/`.
//!
//! It is the third transport in front of the same handler (the HTTP request
//! is turned into CGI meta-variables, like the others), built on
//! `tiny_http`. It is for development and trial: it binds to loopback by
//! default, and it holds each answer in memory before sending it (all of
//! fileupload's own answers are small; an application's, in middleware
//! mode, are held whole). In production, run the CGI program or the FastCGI
//! daemon behind a web server (see conf-examples/).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use crate::config::Config;
use crate::handler::{self, escape_html};
use crate::http::{Body, HttpError, Request, ResponseWriter};
use crate::identifier::create_identifier;
use crate::service::Service;

/// The demo page; the same file a web server can serve (conf-examples/demo).
pub const DEMO_PAGE: &str = include_str!("../conf-examples/demo/index.html");

/// tus-js-client's browser build, which the page's resumable mode loads
/// from next to itself: a copy of the pinned npm package's `dist/tus.min.js`
/// (scripts/vendor-tus-js-client), so that the page needs no CDN.
pub const TUS_JS_CLIENT: &[u8] = include_bytes!("../conf-examples/demo/tus.min.js");

/// tus-js-client's MIT licence, which travels with its code.
pub const TUS_JS_CLIENT_LICENSE: &str = include_str!("../conf-examples/demo/tus-js-client-LICENSE");

/// Serves until the process is stopped. Prints where to point a browser.
pub fn run(config: Config, address: &str) -> Result<(), String> {
    let server = tiny_http::Server::http(address).map_err(|e| {
        format!("cannot listen on {address}: {e}; choose another with --http 127.0.0.1:PORT")
    })?;
    let server = Arc::new(server);
    let bound = server.server_addr().to_ip();
    let shown = bound.map_or_else(|| address.to_owned(), |a| a.to_string());
    crate::log!(
        "serving http://{shown}/ — open it in a browser to try an upload (pool {}). \
         This is a development server; in production run fileupload behind a web server.",
        config.directory.display()
    );
    if let Err(err) = config.pool().check() {
        crate::log!("warning: {err}; requests fail until this is fixed");
    }
    if bound.is_some_and(|a| !a.ip().is_loopback()) {
        crate::log!("warning: {shown} is reachable from other machines");
    }
    let workers = config.workers.max(1);
    let service = Arc::new(Service::new(config));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let server = Arc::clone(&server);
            let service = Arc::clone(&service);
            thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    serve_one(&service, bound, request);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// The answer, held until the handler is done with the request body.
#[derive(Default)]
struct Held {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ResponseWriter for Held {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        self.status = status;
        self.headers = headers.to_vec();
        Ok(&mut self.body)
    }
}

fn serve_one(service: &Service, bound: Option<SocketAddr>, mut request: tiny_http::Request) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let method = request.method().as_str().to_owned();
    let mut held = Held::default();
    if matches!(path, "/" | "/index.html") && matches!(method.as_str(), "GET" | "HEAD") {
        held.status = 200;
        held.headers = vec![
            ("Content-Type".into(), "text/html; charset=utf-8".into()),
            ("Cache-Control".into(), "no-store".into()),
        ];
        held.body = demo_page(service.config()).into_bytes();
    } else if let Some((content_type, body)) =
        demo_file(path).filter(|_| method == "GET" || method == "HEAD")
    {
        held.status = 200;
        held.headers = vec![
            ("Content-Type".into(), content_type.into()),
            // The copy changes only with the binary.
            ("Cache-Control".into(), "no-cache".into()),
        ];
        held.body = body.to_vec();
    } else {
        let vars = cgi_vars(&request, &method, path, query, bound);
        // tiny_http decodes a chunked body and marks its end; without a
        // length or chunking there is no body, as in CGI.
        let chunked = vars.iter().any(|(k, v)| {
            k == "HTTP_TRANSFER_ENCODING" && v.to_ascii_lowercase().contains("chunked")
        });
        let mut body = HttpBody(request.as_reader());
        let mut handled = Request::new(vars, &mut body, chunked);
        let served = handler::guarded(&mut held, |out| handler::handle(service, &mut handled, out));
        if let Err(e) = served {
            crate::log!("{method} {path}: {e}");
        }
    }
    let mut response = tiny_http::Response::from_data(held.body).with_status_code(held.status);
    for (name, value) in &held.headers {
        // tiny_http frames the body itself.
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    let _ = request.respond(response);
}

/// The HTTP request's body, as `tiny_http` decodes it.
struct HttpBody<'a>(&'a mut dyn Read);

impl Read for HttpBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// The client's connection is all there is behind it: a read error is the
/// body cut short (`ERR_TRUNCATED`).
impl Body for HttpBody<'_> {
    fn failure(&mut self) -> Option<HttpError> {
        None
    }
}

/// The files the page loads from next to itself.
fn demo_file(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/tus.min.js" => Some(("text/javascript; charset=utf-8", TUS_JS_CLIENT)),
        "/tus-js-client-LICENSE" => Some((
            "text/plain; charset=utf-8",
            TUS_JS_CLIENT_LICENSE.as_bytes(),
        )),
        _ => None,
    }
}

/// The page, with a fresh signed identifier in it when a key is set (then
/// `/upload/new` refuses to hand one out, and a trial still needs one).
fn demo_page(config: &Config) -> String {
    match config
        .upload_key
        .as_ref()
        .map(|key| create_identifier(Some(key)))
    {
        Some(Ok(id)) => DEMO_PAGE.replacen(
            "<body>",
            &format!("<body data-identifier=\"{}\">", escape_html(id.as_str())),
            1,
        ),
        _ => DEMO_PAGE.to_owned(),
    }
}

/// The request as CGI meta-variables (RFC 3875 section 4.1).
fn cgi_vars(
    request: &tiny_http::Request,
    method: &str,
    path: &str,
    query: &str,
    bound: Option<SocketAddr>,
) -> Vec<(String, String)> {
    let mut vars = vec![
        ("GATEWAY_INTERFACE".to_owned(), "CGI/1.1".to_owned()),
        (
            "SERVER_SOFTWARE".to_owned(),
            concat!("fileupload/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        (
            "SERVER_PROTOCOL".to_owned(),
            format!("HTTP/{}", request.http_version()),
        ),
        ("REQUEST_METHOD".to_owned(), method.to_owned()),
        ("REQUEST_URI".to_owned(), request.url().to_owned()),
        ("SCRIPT_NAME".to_owned(), String::new()),
        ("PATH_INFO".to_owned(), path.to_owned()),
        ("QUERY_STRING".to_owned(), query.to_owned()),
    ];
    if let Some(bound) = bound {
        vars.push(("SERVER_NAME".to_owned(), bound.ip().to_string()));
        vars.push(("SERVER_PORT".to_owned(), bound.port().to_string()));
    }
    if let Some(remote) = request.remote_addr() {
        vars.push(("REMOTE_ADDR".to_owned(), remote.ip().to_string()));
    }
    for header in request.headers() {
        let name = header.field.as_str().as_str();
        let value = header.value.as_str().to_owned();
        let var = match name.to_ascii_lowercase().as_str() {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            _ => format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")),
        };
        vars.push((var, value));
    }
    vars
}
