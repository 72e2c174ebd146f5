//! Expiry: `gc --max-age` by hand, and `max_age` doing it now and then on
//! its own.

mod common;

use std::fs::File;
use std::time::{Duration, SystemTime};

use common::*;

/// An upload whose last change is `age` ago.
fn aged_upload(pool: &TestPool, id: &str, age: Duration) {
    let form = Form::new().file("f", "a", "text/plain", b"old");
    assert_eq!(
        pool.cgi()
            .post_form(&format!("/upload?X-Progress-ID={id}"), &form)
            .status,
        200
    );
    let path = pool.path().join(id).join("status.json");
    let mut status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let then = SystemTime::now() - age;
    status["updated"] = then
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .into();
    std::fs::write(&path, status.to_string()).unwrap();
}

fn set_age(path: &std::path::Path, age: Duration) {
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn max_age_collects_on_its_own_at_most_so_often() {
    let pool = TestPool::new();
    aged_upload(&pool, "old", Duration::from_secs(7200));
    aged_upload(&pool, "young", Duration::from_secs(60));
    let cgi = pool.cgi().env("FILEUPLOAD_MAX_AGE", "1h");
    // The last automatic gc was a moment ago: nothing happens yet.
    set_age(&pool.path().join(".gc"), Duration::from_secs(10));
    cgi.get("/upload/status?X-Progress-ID=young");
    assert!(pool.path().join("old").exists());
    // Long enough ago (a quarter of max_age, at least a minute): it runs.
    set_age(&pool.path().join(".gc"), Duration::from_secs(1000));
    let reply = cgi.get("/upload/status?X-Progress-ID=young");
    assert_eq!(reply.status, 200);
    assert!(
        !pool.path().join("old").exists(),
        "old upload should be collected"
    );
    assert!(pool.path().join("young/file-1").exists());
    let stamp_age = std::fs::metadata(pool.path().join(".gc"))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap();
    assert!(
        stamp_age < Duration::from_secs(60),
        "the stamp records the run"
    );
}

#[test]
fn gc_by_hand() {
    let pool = TestPool::new();
    aged_upload(&pool, "a", Duration::from_secs(100));
    aged_upload(&pool, "b", Duration::from_secs(10));
    let out = pool.cli(&["gc", "--max-age", "1m"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"removed": 1, "kept": 1, "running": 0, "trash": 0})
    );
    assert_eq!(pool.top_level(), ["b"]);
}

#[test]
fn gc_max_age_0_removes_every_upload_that_is_not_running() {
    let pool = TestPool::new();
    // Done a moment ago: young, but finished.
    let form = Form::new().file("f", "a", "text/plain", b"done");
    let cgi = pool.cgi();
    assert_eq!(
        cgi.post_form("/upload?X-Progress-ID=done", &form).status,
        200
    );
    // Failed: over max_size, refused from its Content-Length.
    let big = Form::new().file("f", "b", "text/plain", &[b'x'; 4096]);
    let refused = cgi
        .clone()
        .env("FILEUPLOAD_MAX_SIZE", "1K")
        .post_form("/upload?X-Progress-ID=failed", &big);
    assert_eq!(refused.status, 413);
    assert_eq!(status_of(&cgi, "failed")["state"], "error");
    // Running: half its body sent, the rest held back.
    let body = Form::new()
        .file("f", "c", "text/plain", &[b'y'; 64 * 1024])
        .body();
    let mut running = cgi
        .clone()
        .request("POST", "/upload?X-Progress-ID=running")
        .env("CONTENT_TYPE", &Form::new().content_type())
        .env("CONTENT_LENGTH", &body.len().to_string())
        .env("FILEUPLOAD_PROGRESS_INTERVAL", "50ms")
        .spawn();
    let mut stdin = running.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &body[..body.len() / 2]).unwrap();
    let started = wait_for(Duration::from_secs(10), || {
        (status_of(&cgi, "running")["state"] == "uploading").then_some(())
    });
    assert!(started.is_some(), "{}", status_of(&cgi, "running"));

    let out = pool.cli(&["gc", "--max-age", "0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"removed": 2, "kept": 0, "running": 1, "trash": 0})
    );
    assert_eq!(pool.top_level(), ["running"]);

    // The running upload goes on, untouched.
    std::io::Write::write_all(&mut stdin, &body[body.len() / 2..]).unwrap();
    running.stdin = Some(stdin);
    let reply = finish(running);
    assert_eq!(reply.status, 200, "{}", reply.stderr);
    assert_eq!(status_of(&cgi, "running")["state"], "done");

    // Without --max-age and without the setting, gc still asks for one.
    let out = pool.cli(&["gc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gc needs --max-age DURATION"));
    // The setting's 0 is "no automatic gc", not "collect everything".
    let out = std::process::Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .env("FILEUPLOAD_MAX_AGE", "0")
        .arg("gc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(pool.path().join("running").exists());
}

#[test]
fn the_daemon_collects_on_a_timer_not_in_requests() {
    // No request reaches the daemon: the old upload still goes, because
    // the daemon collects on a timer of its own (so that no answer waits
    // for a sweep).
    let pool = TestPool::new();
    aged_upload(&pool, "old", Duration::from_secs(7200));
    aged_upload(&pool, "young", Duration::from_secs(60));
    set_age(&pool.path().join(".gc"), Duration::from_secs(1000));
    let _daemon = common::fcgi::Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_AGE", "1h")]);
    wait_for(Duration::from_secs(20), || {
        (!pool.path().join("old").exists()).then_some(())
    })
    .expect("the daemon never collected the old upload");
    assert!(pool.path().join("young/file-1").exists());
}
