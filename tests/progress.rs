//! Uploads in flight: progress seen from other processes, conflicts,
//! cancellation by clear, and a receiver killed mid-upload.

mod common;

use std::io::Write;
use std::process::Child;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::*;

/// An upload whose body is fed by a thread, slowly, and which can be held
/// at a given offset until released.
struct Running {
    child: Child,
    feeder: JoinHandle<()>,
    release: mpsc::Sender<()>,
}

impl Running {
    fn start(cgi: &Cgi, id: &str, body: Vec<u8>, content_type: &str, hold_at: usize) -> Running {
        let mut child = cgi
            .clone()
            .request("POST", &format!("/upload?X-Progress-ID={id}"))
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", &body.len().to_string())
            .env("FILEUPLOAD_PROGRESS_INTERVAL", "50ms")
            .spawn();
        let mut stdin = child.stdin.take().unwrap();
        let (release, released) = mpsc::channel::<()>();
        let feeder = thread::spawn(move || {
            let (first, rest) = body.split_at(hold_at.min(body.len()));
            for chunk in first.chunks(64 * 1024) {
                if stdin.write_all(chunk).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            let _ = stdin.flush();
            // Hold until released (or the test drops the sender).
            let _ = released.recv();
            for chunk in rest.chunks(64 * 1024) {
                if stdin.write_all(chunk).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Running {
            child,
            feeder,
            release,
        }
    }

    fn finish(self) -> Reply {
        let _ = self.release.send(());
        self.feeder.join().unwrap();
        finish(self.child)
    }
}

fn form(len: usize, seed: u64) -> (Vec<u8>, Form) {
    let data = random_bytes(len, seed);
    let form = Form::new().file("f", "data.bin", "application/octet-stream", &data);
    (data, form)
}

#[test]
fn progress_is_visible_mid_upload_and_after_a_stall() {
    let pool = TestPool::new();
    let (data, form) = form(4 << 20, 1);
    let body = form.body();
    let size = body.len() as u64;
    let half = body.len() / 2;
    let running = Running::start(&pool.cgi(), "progress", body, &form.content_type(), half);
    // The client stalls at half: the status must show exactly what arrived.
    let seen = wait_for(Duration::from_secs(10), || {
        let status = status_of(&pool.cgi(), "progress");
        (status["received"] == half).then_some(status)
    })
    .expect("status never showed the bytes received before the stall");
    assert_eq!(seen["state"], "uploading");
    assert_eq!(seen["size"], size);
    assert_eq!(seen["files"][0]["filename"], "data.bin");
    assert!(
        seen["files"][0].get("sha256").is_none(),
        "no hash before the end"
    );
    // Then it goes on, and the status keeps growing until done.
    running.release.send(()).unwrap();
    let mut last = half as u64;
    let done = wait_for(Duration::from_secs(20), || {
        let status = status_of(&pool.cgi(), "progress");
        let received = status["received"].as_u64().unwrap();
        assert!(
            received >= last,
            "received went back from {last} to {received}"
        );
        last = received;
        (status["state"] == "done").then_some(status)
    })
    .expect("upload never finished");
    let reply = running.finish();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(done["received"], size);
    assert_eq!(done["files"][0]["sha256"], sha256_hex(&data));
}

#[test]
fn a_second_upload_under_a_running_id_gets_409() {
    let pool = TestPool::new();
    let (data, form) = form(1 << 20, 2);
    let running = Running::start(
        &pool.cgi(),
        "busy",
        form.body(),
        &form.content_type(),
        300_000,
    );
    wait_for(Duration::from_secs(10), || {
        (status_of(&pool.cgi(), "busy")["state"] == "uploading").then_some(())
    })
    .expect("first upload never started");
    let (_, other) = self::form(1000, 3);
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=busy", &other);
    reply.assert_error_code(409, "ERR_UPLOAD_RUNNING", "already running");
    // The first goes on undisturbed.
    assert_eq!(status_of(&pool.cgi(), "busy")["state"], "uploading");
    let reply = running.finish();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = status_of(&pool.cgi(), "busy");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data));
    assert_eq!(status["files"].as_array().unwrap().len(), 1);
}

#[test]
fn two_uploads_at_once_under_different_ids() {
    let pool = TestPool::new();
    let (a_data, a) = form(2 << 20, 4);
    let (b_data, b) = form(2 << 20, 5);
    let first = Running::start(&pool.cgi(), "first", a.body(), &a.content_type(), 1 << 20);
    let second = Running::start(&pool.cgi(), "second", b.body(), &b.content_type(), 1 << 20);
    for id in ["first", "second"] {
        wait_for(Duration::from_secs(10), || {
            (status_of(&pool.cgi(), id)["received"].as_u64().unwrap_or(0) > 0).then_some(())
        })
        .expect("upload never progressed");
    }
    let (ra, rb) = (first.finish(), second.finish());
    assert_eq!(ra.json()["files"][0]["sha256"], sha256_hex(&a_data));
    assert_eq!(rb.json()["files"][0]["sha256"], sha256_hex(&b_data));
}

#[test]
fn clear_cancels_a_running_upload() {
    let pool = TestPool::new();
    let (_, form) = form(2 << 20, 6);
    let running = Running::start(
        &pool.cgi(),
        "cancel",
        form.body(),
        &form.content_type(),
        500_000,
    );
    let file = wait_for(Duration::from_secs(10), || {
        let status = status_of(&pool.cgi(), "cancel");
        (status["received"] == 500_000).then(|| path_of(&status, 0))
    })
    .expect("upload never progressed");
    assert!(file.exists());
    let reply = pool.cgi().get("/upload?X-Progress-ID=cancel&clear");
    assert_eq!(reply.json(), serde_json::json!({"success": true}));
    assert!(!file.exists(), "files go at once");
    assert_eq!(status_of(&pool.cgi(), "cancel")["state"], "starting");
    // The receiver stops and its request ends with an error.
    let reply = running.finish();
    reply.assert_error_code(410, "ERR_CANCELLED", "cancelled by a clear request");
    assert!(
        pool.top_level().is_empty(),
        "left behind: {:?}",
        pool.top_level()
    );
}

#[test]
fn a_killed_receiver_is_reported_interrupted_and_gc_removes_it() {
    let pool = TestPool::new();
    let (_, form) = form(1 << 20, 7);
    let mut running = Running::start(
        &pool.cgi(),
        "killed",
        form.body(),
        &form.content_type(),
        200_000,
    );
    wait_for(Duration::from_secs(10), || {
        (status_of(&pool.cgi(), "killed")["received"] == 200_000).then_some(())
    })
    .expect("upload never progressed");
    running.child.kill().unwrap(); // SIGKILL
    running.child.wait().unwrap();
    drop(running.release);
    running.feeder.join().unwrap();
    let status = status_of(&pool.cgi(), "killed");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["code"], "ERR_INTERRUPTED", "{status}");
    assert!(
        status["error"].as_str().unwrap().starts_with("interrupted"),
        "{status}"
    );
    assert_eq!(
        status["received"], 200_000,
        "what it got before it died: {status}"
    );
    // A new upload under a new identifier works meanwhile.
    let (_, small) = self::form(1000, 8);
    assert_eq!(
        pool.cgi()
            .post_form("/upload?X-Progress-ID=after", &small)
            .status,
        200
    );
    // gc removes what the dead receiver left, and keeps the fresh upload.
    thread::sleep(Duration::from_millis(2100));
    let fresh = pool.cgi().post_form("/upload?X-Progress-ID=fresh", &small);
    assert_eq!(fresh.status, 200);
    let out = pool.cli(&["gc", "--max-age", "2s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"], 2, "{report}");
    assert_eq!(report["kept"], 1, "{report}");
    assert_eq!(pool.top_level(), ["fresh"]);
}

#[test]
fn status_readers_never_see_a_torn_document() {
    // Several processes poll while an upload rewrites its status every
    // 50 ms; every answer must be whole JSON. Bounded: 2 s at most.
    let pool = TestPool::new();
    let (_, form) = form(8 << 20, 9);
    let running = Running::start(
        &pool.cgi(),
        "torn",
        form.body(),
        &form.content_type(),
        usize::MAX,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let cgi = pool.cgi();
            thread::spawn(move || {
                let mut answers = 0;
                while std::time::Instant::now() < deadline {
                    let reply = cgi.get("/upload/status?X-Progress-ID=torn");
                    assert_eq!(reply.status, 200);
                    let json = reply.json(); // panics on torn JSON
                    assert!(
                        ["starting", "uploading", "done"]
                            .contains(&json["state"].as_str().unwrap()),
                        "{json}"
                    );
                    answers += 1;
                }
                answers
            })
        })
        .collect();
    let answers: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(answers > 20, "only {answers} answers");
    assert_eq!(running.finish().status, 200);
}
