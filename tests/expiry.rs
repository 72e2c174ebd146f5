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
