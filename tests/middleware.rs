//! Middleware mode: requests that are not ours go to a CGI application
//! unchanged; a completed upload reaches it as a JSON POST.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A CGI application that reports what it was given.
const ECHO_APP: &str = r#"#!/bin/sh
printf 'Status: 201 Created\r\nContent-Type: text/plain\r\nX-App: yes\r\n\r\n'
echo "method=$REQUEST_METHOD"
echo "path=$PATH_INFO"
echo "query=$QUERY_STRING"
echo "ctype=$CONTENT_TYPE"
echo "length=$CONTENT_LENGTH"
echo "id=$FILEUPLOAD_IDENTIFIER"
echo "file=$FILEUPLOAD_FILE"
echo "url=$FILEUPLOAD_UPLOAD_URL"
echo "key=${FILEUPLOAD_UPLOAD_KEY:-withheld}"
echo "cwd=$(pwd)"
echo "body:"
cat
"#;

fn app(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
}

struct Setup {
    pool: TestPool,
    apps: tempfile::TempDir,
    echo: PathBuf,
}

fn setup() -> Setup {
    let pool = TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let echo = app(apps.path(), "echo.cgi", ECHO_APP);
    Setup { pool, apps, echo }
}

impl Setup {
    fn cgi(&self) -> Cgi {
        self.pool
            .cgi()
            .env("FILEUPLOAD_APP", self.echo.to_str().unwrap())
    }
}

#[test]
fn other_requests_reach_the_application_unchanged() {
    let s = setup();
    let reply = s
        .cgi()
        .request("POST", "/app/page?a=1&b=2")
        .env("CONTENT_TYPE", "application/x-www-form-urlencoded")
        .env("CONTENT_LENGTH", "11")
        .run(b"hello=world");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("X-App"), Some("yes"));
    let text = reply.text();
    assert_eq!(value(&text, "method"), "POST");
    assert_eq!(value(&text, "path"), "/app/page");
    assert_eq!(value(&text, "query"), "a=1&b=2");
    assert_eq!(value(&text, "length"), "11");
    assert_eq!(
        value(&text, "cwd"),
        s.apps.path().canonicalize().unwrap().to_str().unwrap()
    );
    assert!(text.ends_with("body:\nhello=world"), "{text}");
}

#[test]
fn a_completed_upload_is_handed_over_as_json() {
    let s = setup();
    let data = random_bytes(200_000, 1);
    let form = Form::new().file("f", "doc.pdf", "application/pdf", &data);
    let reply = s.cgi().post_form("/upload?X-Progress-ID=mw-1", &form);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let text = reply.text();
    assert_eq!(value(&text, "method"), "POST");
    assert_eq!(value(&text, "ctype"), "application/json");
    assert_eq!(value(&text, "id"), "mw-1");
    let file = value(&text, "file");
    assert_eq!(Path::new(file), s.pool.path().join("mw-1/file-1"));
    assert_eq!(std::fs::read(file).unwrap(), data);
    let body = text.split_once("body:\n").unwrap().1;
    assert_eq!(value(&text, "length"), body.len().to_string());
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["state"], "done");
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data));
}

#[test]
fn our_own_routes_and_errors_stay_ours() {
    let s = setup();
    let reply = s.cgi().get("/upload/status?X-Progress-ID=mine");
    assert_eq!(reply.body, br#"{"state":"starting"}"#);
    let form = Form::new().file("f", "a", "text/plain", b"x");
    s.cgi()
        .post_form("/upload?X-Progress-ID=../bad", &form)
        .assert_error_code(400, "ERR_BAD_IDENTIFIER", "malformed");
}

#[test]
fn the_key_is_withheld_from_the_application() {
    let s = setup();
    let reply = s.cgi().env("FILEUPLOAD_UPLOAD_KEY", "sekrit").get("/app");
    assert_eq!(value(&reply.text(), "key"), "withheld");
    assert!(!reply.text().contains("sekrit"));
}

#[test]
fn a_key_passed_to_the_daemon_as_a_parameter_is_withheld_from_the_application() {
    let s = setup();
    let daemon = common::fcgi::Daemon::start(
        s.pool.path(),
        &[("FILEUPLOAD_APP", s.echo.to_str().unwrap())],
    );
    let key = [("FILEUPLOAD_UPLOAD_KEY", "sekrit")];
    // A request that is not ours, and a completed upload handed over.
    let reply = daemon.request("GET", "/app", &key, b"");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(value(&reply.text(), "key"), "withheld");
    assert!(!reply.text().contains("sekrit"));
    let id = std::process::Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", s.pool.path())
        .env("FILEUPLOAD_UPLOAD_KEY", "sekrit")
        .arg("new-id")
        .output()
        .unwrap();
    let id = String::from_utf8(id.stdout).unwrap().trim().to_owned();
    let form = Form::new().file("f", "a.txt", "text/plain", b"handed over");
    let body = form.body();
    let length = body.len().to_string();
    let content_type = form.content_type();
    let reply = daemon.request(
        "POST",
        &format!("/upload?X-Progress-ID={id}"),
        &[
            ("CONTENT_TYPE", &content_type),
            ("CONTENT_LENGTH", &length),
            key[0],
        ],
        &body,
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(value(&reply.text(), "id"), id);
    assert_eq!(value(&reply.text(), "key"), "withheld");
    assert!(!reply.text().contains("sekrit"));
}

#[test]
fn with_an_upload_url_everything_goes_to_the_application() {
    let s = setup();
    let cgi = s
        .cgi()
        .env("FILEUPLOAD_UPLOAD_URL", "https://uploads.example.com/files");
    for target in [
        "/upload?X-Progress-ID=x",
        "/upload/status?X-Progress-ID=x",
        "/page",
    ] {
        let reply = cgi.get(target);
        assert_eq!(reply.status, 201, "{target}");
        assert_eq!(
            value(&reply.text(), "url"),
            "https://uploads.example.com/files/upload"
        );
    }
    assert!(s.pool.top_level().is_empty());
}

#[test]
fn application_failures_are_answered_by_us() {
    let s = setup();
    let missing = s.apps.path().join("missing.cgi");
    let reply = s
        .pool
        .cgi()
        .env("FILEUPLOAD_APP", missing.to_str().unwrap())
        .get("/page");
    reply.assert_error_code(500, "ERR_APP_START", "cannot run the application");
    assert!(reply.stderr.contains("missing.cgi"), "{}", reply.stderr);
    let cases = [
        (
            "nohead.cgi",
            "#!/bin/sh\necho just text\n",
            "a header line has no ':'",
        ),
        (
            "empty.cgi",
            "#!/bin/sh\nexit 0\n",
            "ended inside its header block",
        ),
        (
            "nocontent.cgi",
            "#!/bin/sh\nprintf 'X-A: b\\r\\n\\r\\n'\n",
            "neither Status, Location nor Content-Type",
        ),
        (
            "badstatus.cgi",
            "#!/bin/sh\nprintf 'Status: abc\\r\\n\\r\\n'\n",
            "invalid Status",
        ),
    ];
    for (name, script, message) in cases {
        let program = app(s.apps.path(), name, script);
        let reply = s
            .pool
            .cgi()
            .env("FILEUPLOAD_APP", program.to_str().unwrap())
            .get("/page");
        reply.assert_error_code(502, "ERR_APP", message);
    }
}

#[test]
fn an_application_that_answers_before_reading_does_not_deadlock() {
    // Writes 1 MiB, more than a pipe holds, before it reads its 1 MiB input.
    let s = setup();
    let program = app(
        s.apps.path(),
        "eager.cgi",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\r\\n\\r\\n'\nhead -c 1048576 /dev/zero\nwc -c\n",
    );
    let body = random_bytes(1 << 20, 2);
    let reply = s
        .pool
        .cgi()
        .env("FILEUPLOAD_APP", program.to_str().unwrap())
        .request("POST", "/page")
        .env("CONTENT_LENGTH", &body.len().to_string())
        .run(&body);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), (1 << 20) + "1048576\n".len());
    assert!(reply.text().ends_with("1048576\n"));
}

#[test]
fn location_without_status_is_a_redirect() {
    let s = setup();
    let program = app(
        s.apps.path(),
        "redirect.cgi",
        "#!/bin/sh\nprintf 'Location: /elsewhere\\r\\n\\r\\n'\n",
    );
    let reply = s
        .pool
        .cgi()
        .env("FILEUPLOAD_APP", program.to_str().unwrap())
        .get("/page");
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("Location"), Some("/elsewhere"));
}
