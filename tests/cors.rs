//! CORS (`allowed_origins`, `allow_credentials`) through CGI and the
//! FastCGI daemon: the headers on every answer, a preflight on every
//! endpoint, tus's own OPTIONS, refusals that store nothing and leave a
//! kept FastCGI connection usable, no `Origin` as before, and the settings'
//! validation.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fcgi::*;
use common::*;

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";
const CHUNK: &str = "application/offset+octet-stream";
const FILES: &str = "/cgi-bin/fileupload/upload/files";

const EXPOSED: &[&str] = &[
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Upload-Limit",
];

const REQUEST_HEADERS: &[&str] = &[
    "X-Progress-ID",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "X-HTTP-Method-Override",
    "X-Requested-With",
];

/// The CGI variable a request header travels in.
fn var_of(header: &str) -> String {
    match header {
        "Content-Type" => "CONTENT_TYPE".into(),
        "Content-Length" => "CONTENT_LENGTH".into(),
        _ => format!("HTTP_{}", header.to_ascii_uppercase().replace('-', "_")),
    }
}

/// One way of running the program, configured by `settings`
/// (`FILEUPLOAD_*` variables).
enum Transport {
    Cgi(Cgi),
    Daemon(Daemon),
    Serve(Serve),
}

/// `fileupload serve`, the development server, on a port of its own.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(pool: &TestPool, settings: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool.path())
            .envs(settings.iter().copied())
            .args(["serve", "--http", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fileupload serve");
        let mut first_line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first_line)
            .unwrap();
        let port = first_line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first_line:?}"));
        Serve { child, port }
    }

    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        if !headers.iter().any(|(h, _)| *h == "Content-Length") {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        head += "\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        // It may answer (a refusal) before taking the body.
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no answer: {}", String::from_utf8_lossy(&response)));
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: response[split + 4..].to_vec(),
            stderr: String::new(),
            exit: std::process::ExitStatus::default(),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Transport {
    fn cgi(pool: &TestPool, settings: &[(&str, &str)]) -> Transport {
        let mut cgi = pool.cgi();
        for (name, value) in settings {
            cgi = cgi.env(name, value);
        }
        Transport::Cgi(cgi)
    }

    fn daemon(pool: &TestPool, settings: &[(&str, &str)]) -> Transport {
        Transport::Daemon(Daemon::start(pool.path(), settings))
    }

    /// CGI, the FastCGI daemon and the development server: each reads the
    /// headers its own way (`HTTP_ORIGIN` in the environment, FastCGI
    /// parameters, HTTP).
    fn all(pool: &TestPool, settings: &[(&str, &str)]) -> [(&'static str, Transport); 3] {
        [
            ("CGI", Transport::cgi(pool, settings)),
            ("FastCGI", Transport::daemon(pool, settings)),
            ("serve", Transport::Serve(Serve::start(pool, settings))),
        ]
    }

    /// A request to `target` with these HTTP headers and body.
    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut vars: Vec<(String, &str)> = headers.iter().map(|(h, v)| (var_of(h), *v)).collect();
        if !body.is_empty() && !headers.iter().any(|(h, _)| *h == "Content-Length") {
            vars.push(("CONTENT_LENGTH".into(), ""));
        }
        let length = body.len().to_string();
        for (var, value) in &mut vars {
            if var == "CONTENT_LENGTH" && value.is_empty() {
                *value = &length;
            }
        }
        match self {
            Transport::Cgi(cgi) => {
                let mut cgi = cgi.clone().request(method, target);
                for (var, value) in &vars {
                    cgi = cgi.env(var, value);
                }
                cgi.run(body)
            }
            Transport::Daemon(daemon) => {
                let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                daemon.request(method, target, &vars, body)
            }
            Transport::Serve(serve) => serve.send(method, target, headers, body),
        }
    }

    fn form(&self, target: &str, origin: Option<&str>, form: &Form) -> Reply {
        let content_type = form.content_type();
        let mut headers = vec![("Content-Type", content_type.as_str())];
        headers.extend(origin.map(|o| ("Origin", o)));
        self.send("POST", target, &headers, &form.body())
    }

    fn preflight(&self, target: &str, origin: &str, method: &str) -> Reply {
        self.send(
            "OPTIONS",
            target,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", "x-progress-id"),
            ],
            b"",
        )
    }
}

/// The answer carries the CORS headers of an allowed request from `origin`.
fn assert_allowed(reply: &Reply, origin: &str, credentials: bool, context: &str) {
    assert_eq!(
        reply.header("Access-Control-Allow-Origin"),
        Some(origin),
        "{context}: {:?}",
        reply.headers
    );
    let vary: Vec<&str> = reply
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Vary"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(vary.contains(&"Origin"), "{context}: Vary {vary:?}");
    let exposed = reply
        .header("Access-Control-Expose-Headers")
        .unwrap_or_else(|| panic!("{context}: nothing exposed: {:?}", reply.headers));
    for header in EXPOSED {
        assert!(
            exposed.split(", ").any(|h| h == *header),
            "{context}: {header} not exposed in {exposed}"
        );
    }
    assert_eq!(
        reply.header("Access-Control-Allow-Credentials"),
        credentials.then_some("true"),
        "{context}"
    );
}

fn assert_no_cors(reply: &Reply, context: &str) {
    let cors: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{context}: {cors:?}");
}

fn file_form(data: &[u8]) -> Form {
    Form::new().file("f", "a.bin", "application/octet-stream", data)
}

#[test]
fn a_listed_origin_uploads_and_polls_with_every_header_on_every_answer() {
    let pool = TestPool::new();
    for (name, transport) in Transport::all(&pool, &[("FILEUPLOAD_ALLOWED_ORIGINS", APP)]) {
        let id = format!("listed-{name}");
        let data = random_bytes(100_000, 7);
        let reply = transport.form(
            &format!("/upload?X-Progress-ID={id}"),
            Some(APP),
            &file_form(&data),
        );
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_allowed(&reply, APP, false, name);
        assert_eq!(
            std::fs::read(path_of(&reply.json(), 0)).unwrap(),
            data,
            "{name}"
        );

        let status = transport.send(
            "GET",
            "/upload/status",
            &[("Origin", APP), ("X-Progress-ID", &id)],
            b"",
        );
        assert_eq!(status.status, 200, "{name}: {}", status.text());
        assert_eq!(status.json()["state"], "done", "{name}");
        assert_allowed(&status, APP, false, name);

        // Errors too: a page must be able to read why it failed.
        let error = transport.send(
            "GET",
            "/upload/status?X-Progress-ID=..",
            &[("Origin", APP)],
            b"",
        );
        error.assert_error_code(400, "ERR_BAD_IDENTIFIER", "");
        assert_allowed(&error, APP, false, &format!("{name} error"));
        let missing = transport.send("GET", "/nothing-here", &[("Origin", APP)], b"");
        missing.assert_error_code(404, "ERR_NOT_FOUND", "no such endpoint");
        assert_allowed(&missing, APP, false, &format!("{name} 404"));
    }
}

#[test]
fn a_preflight_on_every_endpoint_gets_its_methods_headers_and_max_age() {
    let pool = TestPool::new();
    let settings = [
        (
            "FILEUPLOAD_ALLOWED_ORIGINS",
            "http://127.0.0.1:8080, https://app.example",
        ),
        ("FILEUPLOAD_ALLOW_CREDENTIALS", "on"),
    ];
    let endpoints = [
        (
            "/upload?X-Progress-ID=abc",
            "POST",
            "POST, GET, HEAD, DELETE, OPTIONS",
        ),
        (
            "/upload?X-Progress-ID=abc&status",
            "GET",
            "POST, GET, HEAD, DELETE, OPTIONS",
        ),
        (
            "/upload?X-Progress-ID=abc&clear",
            "DELETE",
            "POST, GET, HEAD, DELETE, OPTIONS",
        ),
        ("/upload/status", "GET", "GET, HEAD, DELETE, OPTIONS"),
        ("/upload/new", "GET", "GET, HEAD, POST, OPTIONS"),
        (FILES, "POST", "OPTIONS, POST"),
        ("/upload/files/abc", "PATCH", "OPTIONS, HEAD, PATCH, DELETE"),
    ];
    for (name, transport) in Transport::all(&pool, &settings) {
        let before = pool.snapshot();
        for (target, method, methods) in endpoints {
            let context = format!("{name} {target}");
            let reply = transport.preflight(target, APP, method);
            assert_eq!(reply.status, 204, "{context}: {}", reply.text());
            assert!(reply.body.is_empty(), "{context}");
            assert_eq!(
                reply.header("Access-Control-Allow-Origin"),
                Some(APP),
                "{context}"
            );
            assert_eq!(
                reply.header("Access-Control-Allow-Credentials"),
                Some("true"),
                "{context}"
            );
            assert_eq!(reply.header("Vary"), Some("Origin"), "{context}");
            assert_eq!(
                reply.header("Access-Control-Allow-Methods"),
                Some(methods),
                "{context}"
            );
            assert_eq!(
                reply.header("Access-Control-Max-Age"),
                Some("3600"),
                "{context}"
            );
            let allowed = reply.header("Access-Control-Allow-Headers").unwrap_or("");
            for header in REQUEST_HEADERS {
                assert!(
                    allowed.split(", ").any(|h| h == *header),
                    "{context}: {header} not in {allowed}"
                );
            }
            // A preflight is no tus OPTIONS: tus's headers are not its.
            assert_eq!(reply.header("Tus-Version"), None, "{context}");
        }
        // The other listed origin, exactly as a browser writes it.
        let other = transport.preflight("/upload", "http://127.0.0.1:8080", "POST");
        assert_eq!(other.status, 204, "{name}");
        assert_eq!(
            other.header("Access-Control-Allow-Origin"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            pool.snapshot(),
            before,
            "{name}: a preflight stored something"
        );
    }
}

#[test]
fn tus_options_without_a_request_method_still_answers_as_tus() {
    let pool = TestPool::new();
    for (name, transport) in Transport::all(&pool, &[("FILEUPLOAD_ALLOWED_ORIGINS", APP)]) {
        let reply = transport.send("OPTIONS", FILES, &[("Origin", APP)], b"");
        assert_eq!(reply.status, 204, "{name}: {}", reply.text());
        assert_eq!(reply.header("Tus-Version"), Some("1.0.0"), "{name}");
        assert!(reply.header("Tus-Extension").is_some(), "{name}");
        assert_allowed(&reply, APP, false, name);
    }
}

#[test]
fn a_resumable_upload_from_a_listed_origin_exposes_location_and_offset() {
    let pool = TestPool::new();
    for (name, transport) in Transport::all(&pool, &[("FILEUPLOAD_ALLOWED_ORIGINS", APP)]) {
        let data = random_bytes(30_000, 3);
        let created = transport.send(
            "POST",
            FILES,
            &[
                ("Origin", APP),
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "30000"),
                ("Content-Type", CHUNK),
            ],
            &data[..10_000],
        );
        assert_eq!(created.status, 201, "{name}: {}", created.text());
        assert_allowed(&created, APP, false, name);
        let location = created.header("Location").expect("Location").to_owned();
        let patched = transport.send(
            "PATCH",
            &location,
            &[
                ("Origin", APP),
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "10000"),
                ("Content-Type", CHUNK),
            ],
            &data[10_000..],
        );
        assert_eq!(patched.status, 204, "{name}: {}", patched.text());
        assert_eq!(patched.header("Upload-Offset"), Some("30000"));
        assert_allowed(&patched, APP, false, name);
        let folder = location.rsplit('/').next().unwrap();
        assert_eq!(
            std::fs::read(pool.path().join(folder).join("file-1")).unwrap(),
            data,
            "{name}"
        );
    }
}

/// Refused: 403 with the code, no CORS header that would let the page read
/// it, and the pool exactly as before.
fn assert_refused(
    reply: &Reply,
    pool: &TestPool,
    before: &BTreeMap<String, (u64, String)>,
    context: &str,
) {
    reply.assert_error_code(403, "ERR_ORIGIN_NOT_ALLOWED", "allowed_origins");
    assert_no_cors(reply, context);
    assert_eq!(&pool.snapshot(), before, "{context}: the pool changed");
}

#[test]
fn an_unlisted_origin_is_refused_before_anything_is_stored() {
    let pool = TestPool::new();
    for (name, transport) in Transport::all(&pool, &[("FILEUPLOAD_ALLOWED_ORIGINS", APP)]) {
        // A resumable upload of the listed origin, for the PATCH to aim at.
        let created = transport.send(
            "POST",
            FILES,
            &[
                ("Origin", APP),
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "10"),
            ],
            b"",
        );
        assert_eq!(created.status, 201, "{name}: {}", created.text());
        let location = created.header("Location").expect("Location").to_owned();
        let before = pool.snapshot();
        let data = random_bytes(200_000, 9);
        for origin in [
            EVIL,
            "null",
            "https://app.example.evil.example",
            "http://app.example",
        ] {
            let context = format!("{name} {origin}");
            let form = transport.form(
                &format!("/upload?X-Progress-ID=refused-{name}"),
                Some(origin),
                &file_form(&data),
            );
            assert_refused(&form, &pool, &before, &format!("{context} form"));
            let tus_post = transport.send(
                "POST",
                FILES,
                &[
                    ("Origin", origin),
                    ("Tus-Resumable", "1.0.0"),
                    ("Upload-Length", "200000"),
                    ("Content-Type", CHUNK),
                ],
                &data,
            );
            assert_refused(&tus_post, &pool, &before, &format!("{context} tus POST"));
            let patch = transport.send(
                "PATCH",
                &location,
                &[
                    ("Origin", origin),
                    ("Tus-Resumable", "1.0.0"),
                    ("Upload-Offset", "0"),
                    ("Content-Type", CHUNK),
                ],
                b"0123456789",
            );
            assert_refused(&patch, &pool, &before, &format!("{context} PATCH"));
            let preflight = transport.preflight("/upload", origin, "POST");
            assert_refused(&preflight, &pool, &before, &format!("{context} preflight"));
            let poll = transport.send(
                "GET",
                "/upload/status?X-Progress-ID=abc",
                &[("Origin", origin)],
                b"",
            );
            assert_refused(&poll, &pool, &before, &format!("{context} poll"));
        }
    }
}

#[test]
fn a_refusal_leaves_a_kept_fastcgi_connection_usable() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_ALLOWED_ORIGINS", APP)]);
    let form = file_form(&random_bytes(300_000, 4));
    let body = form.body();
    let mut params = params_for("POST", "/upload?X-Progress-ID=kept");
    params.push(("CONTENT_TYPE".into(), form.content_type()));
    params.push(("CONTENT_LENGTH".into(), body.len().to_string()));
    params.push(("HTTP_ORIGIN".into(), EVIL.into()));
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut stream = daemon.connect();
    let mut bytes = request_head(1, &pairs, true);
    bytes.extend(stdin_records(1, &body));
    let status = params_for("GET", "/upload/status?X-Progress-ID=kept");
    let status: Vec<(&str, &str)> = status
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    bytes.extend(request_head(2, &status, true));
    bytes.extend(stdin_records(2, b""));
    let mut writer = stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || writer.write_all(&bytes));
    let (refused, _) = read_response(&mut stream, 1);
    refused.assert_error_code(403, "ERR_ORIGIN_NOT_ALLOWED", "allowed_origins");
    let (next, _) = read_response(&mut stream, 2);
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, r#"{"state":"starting"}"#)
    );
    feeder
        .join()
        .unwrap()
        .expect("the daemon took the whole body");
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
}

#[test]
fn without_an_origin_or_without_the_setting_nothing_changes() {
    let pool = TestPool::new();
    let data = random_bytes(5_000, 5);
    for settings in [&[("FILEUPLOAD_ALLOWED_ORIGINS", APP)][..], &[][..]] {
        for (name, transport) in Transport::all(&pool, settings) {
            let context = format!("{name} {settings:?}");
            let id = format!("plain-{name}-{}", settings.len());
            let reply = transport.form(
                &format!("/upload?X-Progress-ID={id}"),
                None,
                &file_form(&data),
            );
            assert_eq!(reply.status, 200, "{context}: {}", reply.text());
            assert_no_cors(&reply, &context);
            assert_eq!(reply.header("Vary"), None, "{context}");
            assert_eq!(std::fs::read(path_of(&reply.json(), 0)).unwrap(), data);
            // An OPTIONS that looks like a preflight but has no Origin is
            // no CORS request: the route answers it as before.
            let options = transport.send(
                "OPTIONS",
                "/upload",
                &[("Access-Control-Request-Method", "POST")],
                b"",
            );
            options.assert_error_code(405, "ERR_METHOD", "not allowed");
            assert_no_cors(&options, &context);
        }
    }
    // The setting unset: an Origin is not checked, as before it existed.
    for (name, transport) in Transport::all(&pool, &[]) {
        let id = format!("unset-{name}");
        let reply = transport.form(
            &format!("/upload?X-Progress-ID={id}"),
            Some(EVIL),
            &file_form(&data),
        );
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_no_cors(&reply, name);
        let preflight = transport.preflight("/upload", EVIL, "POST");
        preflight.assert_error_code(405, "ERR_METHOD", "not allowed");
        assert_no_cors(&preflight, name);
    }
}

#[test]
fn star_allows_every_page_without_credentials() {
    let pool = TestPool::new();
    for (name, transport) in Transport::all(&pool, &[("FILEUPLOAD_ALLOWED_ORIGINS", "*")]) {
        for origin in [EVIL, "null"] {
            let reply = transport.form(
                &format!("/upload?X-Progress-ID=star-{name}-{}", origin.len()),
                Some(origin),
                &file_form(b"star"),
            );
            assert_eq!(reply.status, 200, "{name}: {}", reply.text());
            assert_allowed(&reply, "*", false, name);
        }
    }
}

#[test]
fn credentials_are_allowed_only_when_set() {
    let pool = TestPool::new();
    let settings = [
        ("FILEUPLOAD_ALLOWED_ORIGINS", APP),
        ("FILEUPLOAD_ALLOW_CREDENTIALS", "on"),
    ];
    for (name, transport) in Transport::all(&pool, &settings) {
        let reply = transport.form(
            &format!("/upload?X-Progress-ID=cred-{name}"),
            Some(APP),
            &file_form(b"with cookies"),
        );
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_allowed(&reply, APP, true, name);
        let error = transport.send("GET", "/upload/status", &[("Origin", APP)], b"");
        error.assert_error_code(400, "ERR_NO_IDENTIFIER", "");
        assert_allowed(&error, APP, true, name);
    }
    let off = [
        ("FILEUPLOAD_ALLOWED_ORIGINS", APP),
        ("FILEUPLOAD_ALLOW_CREDENTIALS", "off"),
    ];
    let transport = Transport::cgi(&pool, &off);
    let reply = transport.send(
        "GET",
        "/upload/status?X-Progress-ID=x",
        &[("Origin", APP)],
        b"",
    );
    assert_allowed(&reply, APP, false, "off");
}

#[test]
fn bad_cors_settings_are_config_errors_naming_the_problem() {
    let pool = TestPool::new();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "app.example")],
            "scheme://host",
        ),
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "https://app.example/")],
            "no path",
        ),
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "https://app.example:443")],
            "default port",
        ),
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "null")],
            "null cannot be listed",
        ),
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "*, https://a.example")],
            "alone",
        ),
        (
            &[("FILEUPLOAD_ALLOWED_ORIGINS", "ftp://a.example")],
            "http or https",
        ),
        (
            &[("FILEUPLOAD_ALLOW_CREDENTIALS", "on")],
            "needs allowed_origins",
        ),
        (
            &[
                ("FILEUPLOAD_ALLOWED_ORIGINS", "*"),
                ("FILEUPLOAD_ALLOW_CREDENTIALS", "on"),
            ],
            "cannot go with allowed_origins = *",
        ),
        (
            &[
                ("FILEUPLOAD_ALLOWED_ORIGINS", APP),
                ("FILEUPLOAD_ALLOW_CREDENTIALS", "yes please"),
            ],
            "on or off",
        ),
    ];
    for (settings, says) in cases {
        let reply = Transport::cgi(&pool, settings).send(
            "GET",
            "/upload/status?X-Progress-ID=x",
            &[("Origin", APP)],
            b"",
        );
        reply.assert_error_code(500, "ERR_CONFIG", "");
        assert!(
            reply.stderr.contains(says),
            "{settings:?}: {}",
            reply.stderr
        );
        assert!(
            reply.stderr.contains("FILEUPLOAD_ALLOW"),
            "{settings:?}: {}",
            reply.stderr
        );
    }
    assert!(pool.top_level().is_empty());
}

/// Middleware mode: a completed upload's answer is the application's, and
/// carries our CORS headers in place of any of its own; the application's
/// own requests are its business, neither checked nor given headers.
#[test]
fn in_middleware_mode_the_applications_answers_get_the_headers_its_own_requests_do_not() {
    let pool = TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("app.cgi");
    std::fs::write(
        &app,
        "#!/bin/sh\ncat >/dev/null\nprintf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\
         Access-Control-Allow-Origin: *\\r\\n\\r\\nfrom the app\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = [
        ("FILEUPLOAD_ALLOWED_ORIGINS", APP),
        ("FILEUPLOAD_APP", app.to_str().unwrap()),
    ];
    for (name, transport) in Transport::all(&pool, &settings) {
        let uploaded = transport.form(
            &format!("/upload?X-Progress-ID=app-{name}"),
            Some(APP),
            &file_form(b"handed over"),
        );
        assert_eq!(uploaded.status, 200, "{name}: {}", uploaded.text());
        assert_eq!(uploaded.text(), "from the app\n", "{name}");
        assert_allowed(&uploaded, APP, false, name);
        let origins = uploaded
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Access-Control-Allow-Origin"))
            .count();
        assert_eq!(origins, 1, "{name}: {:?}", uploaded.headers);

        let before = pool.snapshot();
        let refused = transport.form(
            &format!("/upload?X-Progress-ID=app-evil-{name}"),
            Some(EVIL),
            &file_form(b"refused"),
        );
        assert_refused(&refused, &pool, &before, name);

        let own = transport.send("GET", "/somewhere/else", &[("Origin", EVIL)], b"");
        assert_eq!(own.status, 200, "{name}: {}", own.text());
        assert_eq!(
            own.header("Access-Control-Allow-Origin"),
            Some("*"),
            "{name}"
        );
    }
}
