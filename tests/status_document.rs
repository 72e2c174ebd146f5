//! The status document stays small, cheap to keep up to date, readable,
//! and true: a form cannot make it huge, progress rewrites cost no more
//! than the body brings in, an unreadable status is never taken for a
//! failed upload, and a failed upload's status points at no file.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// Runs the program, then prints on stderr the bytes it wrote in all
/// (`wchar` of the shell, which counts the children it waited for).
const COUNT_WRITES: &str = r#""$0"; code=$?; grep '^wchar:' /proc/$$/io >&2; exit $code"#;

fn bytes_written(reply: &Reply) -> u64 {
    reply
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no write count in stderr: {}", reply.stderr))
}

/// `parts` files, each named by `name_len` control characters (six bytes
/// each in JSON) and holding `data_len` bytes.
fn form_with_long_names(parts: usize, name_len: usize, data_len: usize) -> Form {
    let name = "\u{1}".repeat(name_len);
    let data = random_bytes(data_len, 9);
    (0..parts).fold(Form::new(), |form, n| {
        form.file(&format!("f{n}"), &name, "application/octet-stream", &data)
    })
}

/// Posts `body`, all but its last `slow` bytes at once and those one every
/// 50 ms, with progress published every 50 ms.
fn post_trickling(pool: &TestPool, id: &str, form: &Form, slow: usize) -> Reply {
    let body = form.body();
    let mut child = pool
        .cgi()
        .env("FILEUPLOAD_PROGRESS_INTERVAL", "50ms")
        .request("POST", &format!("/upload?X-Progress-ID={id}"))
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &body.len().to_string())
        .prelude(COUNT_WRITES)
        .spawn();
    let mut stdin = child.stdin.take().unwrap();
    let (fast, trickle) = body.split_at(body.len() - slow);
    // The program may refuse early and stop reading: ignore EPIPE.
    let _ = stdin.write_all(fast);
    for byte in trickle {
        std::thread::sleep(Duration::from_millis(50));
        if stdin.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
    }
    drop(stdin);
    finish(child)
}

#[test]
fn a_form_that_would_make_a_huge_status_is_refused_cheaply() {
    let pool = TestPool::new();
    // The attack of issue 10: a thousand file parts with names of control
    // characters. Each name is within the name limit; together they would
    // make a status of about 6 MB.
    let form = form_with_long_names(1000, 1000, 100);
    let body_len = form.body().len() as u64;
    let reply = post_trickling(&pool, "huge", &form, 50);
    reply.assert_error_code(413, "ERR_FORM_TOO_LARGE", "too many or too long");
    let status = status_of(&pool.cgi(), "huge");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["status"], 413);
    assert_eq!(status["files"], serde_json::json!([]));
    assert_eq!(pool.bucket_files("huge"), ["lock", "status.json"]);
    let document = std::fs::metadata(pool.path().join("huge/status.json")).unwrap();
    assert!(document.len() < 1 << 20, "{} bytes", document.len());
    // Before the bound it wrote over a gigabyte for a body of a few MB.
    let written = bytes_written(&reply);
    assert!(
        written < body_len + (2 << 20),
        "{written} bytes written for a {body_len}-byte body"
    );
}

#[test]
fn a_file_name_or_type_over_its_limit_is_refused() {
    let pool = TestPool::new();
    let long_name = "n".repeat(1025);
    let form = Form::new().file("f", &long_name, "text/plain", b"x");
    pool.cgi()
        .post_form("/upload?X-Progress-ID=name", &form)
        .assert_error_code(400, "ERR_BAD_PART_HEADER", "file name is 1025 bytes long");
    let long_type = format!("text/{}", "t".repeat(252));
    let form = Form::new().file("f", "a.txt", &long_type, b"x");
    pool.cgi()
        .post_form("/upload?X-Progress-ID=type", &form)
        .assert_error_code(400, "ERR_BAD_PART_HEADER", "Content-Type is 257 bytes long");
    for id in ["name", "type"] {
        assert_eq!(pool.bucket_files(id), ["lock", "status.json"], "{id}");
    }
    // At the limits, both are kept.
    let name = "n".repeat(1024);
    let kind = format!("text/{}", "t".repeat(251));
    let form = Form::new().file("f", &name, &kind, b"x");
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=fits", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["files"][0]["filename"], name.as_str());
}

#[test]
fn progress_rewrites_cost_no_more_than_the_body_brings_in() {
    let pool = TestPool::new();
    // A legal form with a large status (about 750 KB of JSON), whose last
    // bytes trickle in for 2.5 s while progress is published every 50 ms.
    let form = form_with_long_names(120, 1000, 1000);
    let body_len = form.body().len() as u64;
    let reply = post_trickling(&pool, "big", &form, 50);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = reply.json();
    assert_eq!(status["files"].as_array().unwrap().len(), 120);
    let document = std::fs::metadata(pool.path().join("big/status.json"))
        .unwrap()
        .len();
    // The data, the final status and the answer (the same document), and
    // rewrites bounded by the body's bytes plus 1 MiB; before, each of the
    // fifty intervals rewrote it whole.
    let written = bytes_written(&reply);
    let bound = body_len + 2 * document + body_len + (1 << 20) + (64 << 10);
    assert!(
        written < bound,
        "{written} bytes written, bound {bound} (body {body_len}, status {document})"
    );
    // A small status is still rewritten on every interval.
    let small = Form::new().file("f", "a.bin", "application/octet-stream", &[7u8; 200]);
    let mut child = pool
        .cgi()
        .env("FILEUPLOAD_PROGRESS_INTERVAL", "50ms")
        .request("POST", "/upload?X-Progress-ID=small")
        .env("CONTENT_TYPE", &small.content_type())
        .env("CONTENT_LENGTH", &small.body().len().to_string())
        .spawn();
    let body = small.body();
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (n, byte) in body.iter().enumerate() {
        stdin.write_all(std::slice::from_ref(byte)).unwrap();
        if n % 20 == 0 && n > 150 {
            std::thread::sleep(Duration::from_millis(120));
            seen.insert(status_of(&pool.cgi(), "small")["received"].as_u64());
        }
    }
    drop(stdin);
    assert_eq!(finish(child).status, 200);
    assert!(seen.len() >= 4, "progress seen: {seen:?}");
}

#[test]
fn an_unreadable_status_is_never_taken_for_a_failed_upload() {
    let pool = TestPool::new();
    let data = random_bytes(10_000, 2);
    let form = Form::new().file("f", "kept.bin", "application/octet-stream", &data);
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=kept", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status_file = pool.path().join("kept/status.json");
    for garbage in [&b"{\"state\": \"do"[..], &[0xffu8; 100][..], b""] {
        std::fs::write(&status_file, garbage).unwrap();
        let before = pool.snapshot();
        let again = pool.cgi().post_form("/upload?X-Progress-ID=kept", &form);
        again.assert_error_code(409, "ERR_STATUS_UNREADABLE", "cannot be read");
        assert_eq!(pool.snapshot(), before, "nothing changed");
        assert_eq!(
            std::fs::read(pool.path().join("kept/file-1")).unwrap(),
            data
        );
    }
    // Clearing it lets the identifier be used again.
    assert_eq!(pool.cli(&["clear", "kept"]).status.code(), Some(0));
    let fresh = pool.cgi().post_form("/upload?X-Progress-ID=kept", &form);
    assert_eq!(fresh.status, 200, "{}", fresh.text());
}

#[test]
fn a_failed_upload_lists_no_files() {
    let pool = TestPool::new();
    let form = Form::new()
        .file(
            "a",
            "one.bin",
            "application/octet-stream",
            &random_bytes(5000, 3),
        )
        .file(
            "b",
            "two.bin",
            "application/octet-stream",
            &random_bytes(5000, 4),
        );
    let mut body = form.body();
    body.truncate(body.len() - 100);
    let reply = pool
        .cgi()
        .post_body("/upload?X-Progress-ID=cut", &form, &body);
    reply.assert_error_code(400, "ERR_TRUNCATED", "ended before");
    let status = status_of(&pool.cgi(), "cut");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["files"], serde_json::json!([]), "{status}");
    assert_eq!(status["filename"], "one.bin", "the form is still described");
    assert_eq!(pool.bucket_files("cut"), ["lock", "status.json"]);
}
