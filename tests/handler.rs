//! The handler and the upload driver in-process: a request made in memory,
//! a pool in a temporary directory, the answer collected. No binary and no
//! transport, so a failure points at the handler, the driver or the pool.

mod common;

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fileupload::http::{Body, Request};
use fileupload::identifier::verify_identifier;
use fileupload::status::State;
use fileupload::{Config, handler, upload};
use serde_json::Value;

use common::in_process::{Answer as Collected, Fed};
use common::{Form, random_bytes, sha256_hex, wait_for};

impl Collected {
    fn assert_error(&self, status: u16, code: &str) {
        let json = self.json();
        assert_eq!(
            (self.status, &json["code"]),
            (status, &Value::from(code)),
            "{json}"
        );
        assert_eq!(json["state"], "error");
    }
}

fn config(pool: &tempfile::TempDir, extra: &[(&str, &str)]) -> Config {
    let mut options = vec![
        ("directory", pool.path().to_str().unwrap().to_owned()),
        ("progress_interval", "20ms".to_owned()),
    ];
    options.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Config::load(&options, |_| None).unwrap()
}

/// The CGI variables of a request (`target` is path and query).
fn cgi_vars(
    method: &str,
    target: &str,
    form: Option<(&Form, Option<usize>)>,
) -> Vec<(String, String)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut vars = vec![
        ("REQUEST_METHOD".to_owned(), method.to_owned()),
        ("PATH_INFO".to_owned(), path.to_owned()),
        ("QUERY_STRING".to_owned(), query.to_owned()),
    ];
    if let Some((form, length)) = form {
        vars.push(("CONTENT_TYPE".into(), form.content_type()));
        if let Some(length) = length {
            vars.push(("CONTENT_LENGTH".into(), length.to_string()));
        }
    }
    vars
}

fn handle(
    config: &Config,
    vars: Vec<(String, String)>,
    body: &mut dyn Body,
    chunked: bool,
) -> Collected {
    let mut request = Request::new(vars, body, chunked);
    let mut answer = Collected::default();
    // A service per request here: the tests change the config between
    // requests.
    let service = fileupload::Service::new(config.clone());
    handler::handle(&service, &mut request, &mut answer).unwrap();
    answer
}

fn post(config: &Config, id: &str, form: &Form) -> Collected {
    let body = form.body();
    let vars = cgi_vars(
        "POST",
        &format!("/upload?X-Progress-ID={id}"),
        Some((form, Some(body.len()))),
    );
    handle(config, vars, &mut &body[..], false)
}

fn status(config: &Config, id: &str) -> Value {
    let answer = handle(
        config,
        cgi_vars("GET", &format!("/upload/status?X-Progress-ID={id}"), None),
        &mut io::empty(),
        false,
    );
    assert_eq!(answer.status, 200);
    answer.json()
}

/// Feeds `body` into a [`Fed`] reader `chunk` bytes every `pause`, on a
/// thread; it stops once the reader is gone.
fn trickle(body: Vec<u8>, chunk: usize, pause: Duration) -> Fed {
    let (feed, fed) = mpsc::channel();
    std::thread::spawn(move || {
        for piece in body.chunks(chunk) {
            std::thread::sleep(pause);
            if feed.send(Ok(piece.to_vec())).is_err() {
                return;
            }
        }
    });
    Fed(fed, Vec::new())
}

/// The files left in an upload's bucket.
fn bucket(dir: &tempfile::TempDir, id: &str) -> Vec<String> {
    let mut left: Vec<_> = std::fs::read_dir(dir.path().join(id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    left
}

#[test]
fn an_upload_is_stored_and_answered_done() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &[]);
    let (a, b) = (random_bytes(300_000, 1), random_bytes(5_000, 2));
    let form = Form::new()
        .file("a", "one.bin", "application/octet-stream", &a)
        .field("title", "Holiday")
        .file("b", "two.txt", "text/plain", &b);
    let answer = post(&config, "direct", &form);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let json = answer.json();
    assert_eq!(json["state"], "done");
    assert_eq!(json["fields"]["title"], "Holiday");
    for (n, data) in [&a, &b].into_iter().enumerate() {
        let file = &json["files"][n];
        assert_eq!(
            std::fs::read(file["path"].as_str().unwrap()).unwrap(),
            *data
        );
        assert_eq!(file["sha256"], sha256_hex(data).as_str());
    }
    assert_eq!(status(&config, "direct"), json);
    // Done is kept: a second upload under the identifier changes nothing.
    post(&config, "direct", &form).assert_error(409, "ERR_UPLOAD_COMPLETE");
}

#[test]
fn the_driver_alone_returns_the_status_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &[]);
    let pool = config.pool();
    let id = verify_identifier("driver", None).unwrap();
    let form = Form::new().file("f", "x.bin", "application/octet-stream", b"12345");
    let body = form.body();
    let mut reader = &body[..];
    let mut request = Request::new(
        cgi_vars("POST", "/upload", Some((&form, Some(body.len())))),
        &mut reader,
        false,
    );
    let options = upload::Options {
        max_size: None,
        checksums: fileupload::checksums::Checksums::NONE,
        progress_interval: None,
        min_rate: None,
        min_rate_after: Duration::ZERO,
        on_create: None,
    };
    let status = upload::receive(&pool, &id, &mut request, &options).unwrap();
    assert_eq!(status.state, State::Done);
    assert_eq!(status.files()[0].size, 5);
    assert_eq!(status.files()[0].sha256, None, "sha256 off");
    assert_eq!(pool.status(&id).unwrap(), status);
}

#[test]
fn a_read_error_mid_body_fails_the_upload_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &[]);
    let form = Form::new().file(
        "f",
        "cut.bin",
        "application/octet-stream",
        &random_bytes(100_000, 3),
    );
    let body = form.body();
    let (feed, fed) = mpsc::channel();
    feed.send(Ok(body[..50_000].to_vec())).unwrap();
    feed.send(Err(io::Error::other("the client went away")))
        .unwrap();
    let vars = cgi_vars(
        "POST",
        "/upload?X-Progress-ID=cut",
        Some((&form, Some(body.len()))),
    );
    let answer = handle(&config, vars, &mut Fed(fed, Vec::new()), false);
    answer.assert_error(400, "ERR_TRUNCATED");
    let recorded = status(&config, "cut");
    assert_eq!(recorded["code"], "ERR_TRUNCATED");
    assert_eq!(recorded["files"], serde_json::json!([]));
    let mut left: Vec<_> = std::fs::read_dir(dir.path().join("cut"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["lock", "status.json"]);
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &[("max_size", "100K")]);
    let form = Form::new().file(
        "f",
        "big.bin",
        "application/octet-stream",
        &random_bytes(300_000, 4),
    );
    let body = form.body();
    // No length: the end of the stream is the end of the body.
    let vars = cgi_vars("POST", "/upload?X-Progress-ID=big", Some((&form, None)));
    handle(&config, vars, &mut &body[..], true).assert_error(413, "ERR_TOO_LARGE");
    assert_eq!(status(&config, "big")["code"], "ERR_TOO_LARGE");
}

#[test]
fn progress_is_published_and_a_clear_cancels_mid_body() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &[]);
    let form = Form::new().file(
        "f",
        "slow.bin",
        "application/octet-stream",
        &random_bytes(400_000, 5),
    );
    let body = form.body();
    let (feed, fed) = mpsc::channel();
    feed.send(Ok(body[..200_000].to_vec())).unwrap();
    let vars = cgi_vars(
        "POST",
        "/upload?X-Progress-ID=slow",
        Some((&form, Some(body.len()))),
    );
    let receiving = {
        let config = config.clone();
        std::thread::spawn(move || handle(&config, vars, &mut Fed(fed, Vec::new()), false))
    };
    // The watcher publishes what arrived while the body waits for more.
    let seen = wait_for(Duration::from_secs(10), || {
        let now = status(&config, "slow");
        (now["state"] == "uploading" && now["received"].as_u64() > Some(0)).then_some(now)
    })
    .expect("progress never published");
    assert!(seen["received"].as_u64().unwrap() <= 200_000, "{seen}");
    let clear = handle(
        &config,
        cgi_vars("DELETE", "/upload/status?X-Progress-ID=slow", None),
        &mut io::empty(),
        false,
    );
    assert_eq!(clear.json(), serde_json::json!({"success": true}));
    // More bytes arrive; the receiver notices the clear and stops.
    let _ = feed.send(Ok(body[200_000..].to_vec()));
    drop(feed);
    receiving.join().unwrap().assert_error(410, "ERR_CANCELLED");
    assert_eq!(
        status(&config, "slow"),
        serde_json::json!({"state": "starting"})
    );
}

#[test]
fn a_body_slower_than_min_body_rate_fails_with_err_too_slow() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, &[("min_body_rate", "100K")]);
    // The window is a minute in service; a test cannot wait that long.
    let window = Duration::from_millis(300);
    config.min_body_rate_after = window;
    let form = Form::new().file(
        "f",
        "slow.bin",
        "application/octet-stream",
        &random_bytes(200_000, 6),
    );
    let body = form.body();
    let vars = cgi_vars(
        "POST",
        "/upload?X-Progress-ID=trickled",
        Some((&form, Some(body.len()))),
    );
    // 1 KB every 20 ms: about 50 KB/s, half the floor; 4 s to send it all.
    let started = Instant::now();
    let mut fed = trickle(body, 1000, Duration::from_millis(20));
    let answer = handle(&config, vars, &mut fed, false);
    let took = started.elapsed();
    answer.assert_error(408, "ERR_TOO_SLOW");
    let message = answer.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("below min_body_rate 102400"), "{message}");
    assert!(took >= window, "cut after {took:?}, inside the window");
    assert!(took < Duration::from_secs(3), "cut only after {took:?}");
    let recorded = status(&config, "trickled");
    assert_eq!(
        (&recorded["state"], &recorded["code"], &recorded["status"]),
        (
            &Value::from("error"),
            &Value::from("ERR_TOO_SLOW"),
            &Value::from(408)
        ),
        "{recorded}"
    );
    assert_eq!(recorded["files"], serde_json::json!([]));
    assert_eq!(bucket(&dir, "trickled"), ["lock", "status.json"]);
}

#[test]
fn a_body_above_min_body_rate_is_stored_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, &[("min_body_rate", "10K")]);
    let window = Duration::from_millis(100);
    config.min_body_rate_after = window;
    let data = random_bytes(300_000, 7);
    let form = Form::new().file("f", "steady.bin", "application/octet-stream", &data);
    let body = form.body();
    let vars = cgi_vars(
        "POST",
        "/upload?X-Progress-ID=steady",
        Some((&form, Some(body.len()))),
    );
    // 20 KB every 20 ms: about 1 MB/s, a hundred times the floor (room for
    // a loaded machine), for 300 ms.
    let started = Instant::now();
    let mut fed = trickle(body, 20_000, Duration::from_millis(20));
    let answer = handle(&config, vars, &mut fed, false);
    assert!(started.elapsed() > window, "done inside the window");
    assert_eq!(answer.status, 200, "{}", answer.json());
    let json = answer.json();
    assert_eq!(json["state"], "done");
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data).as_str());
}

#[test]
fn min_body_rate_0_lets_a_slow_body_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, &[("min_body_rate", "0")]);
    let window = Duration::from_millis(50);
    config.min_body_rate_after = window;
    let data = random_bytes(2_000, 8);
    let form = Form::new().file("f", "slow.bin", "application/octet-stream", &data);
    let body = form.body();
    let vars = cgi_vars(
        "POST",
        "/upload?X-Progress-ID=unhurried",
        Some((&form, Some(body.len()))),
    );
    // 100 bytes every 20 ms: about 5 KB/s, for about 450 ms.
    let started = Instant::now();
    let mut fed = trickle(body, 100, Duration::from_millis(20));
    let answer = handle(&config, vars, &mut fed, false);
    assert!(started.elapsed() > window * 4, "done inside the window");
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(
        answer.json()["files"][0]["sha256"],
        sha256_hex(&data).as_str()
    );
}
