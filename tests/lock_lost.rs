//! A receiver that loses its lock while it runs, through the FastCGI
//! daemon: what a host cut off from a shared file system finds when the
//! network comes back (see README, "The pool").
//!
//! A test cannot make the kernel drop another process's `flock`, so the
//! lock is taken away the one way it can be from outside: a fresh file,
//! which nobody holds, is renamed over the bucket's `lock`. The receiver's
//! check opens `lock` by name, as it does on every check, and finds it
//! free: the same answer it gets after a lock server dropped its lock.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::fcgi::*;
use common::*;

/// Renames a free file over the bucket's `lock` (see the top of this file).
fn take_the_lock_away(bucket: &std::path::Path) {
    fs::write(bucket.join("lock.new"), b"").unwrap();
    fs::rename(bucket.join("lock.new"), bucket.join("lock")).unwrap();
}

/// Sends the rest of request 1's body and reads its answer.
fn send_the_rest(mut stream: std::os::unix::net::UnixStream, rest: &[u8]) -> Reply {
    let mut writer = stream.try_clone().unwrap();
    let rest = stdin_records(1, rest);
    // The daemon may answer before it has read it all.
    let feeder = std::thread::spawn(move || {
        let _ = writer.write_all(&rest);
    });
    let (reply, _) = read_response(&mut stream, 1);
    drop(stream);
    let _ = feeder.join();
    reply
}

#[test]
fn a_daemon_whose_upload_lost_its_lock_answers_503_and_writes_no_status() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let sent = 100_000;
    let stream = daemon.begin_partial_upload(&pool, "lost", 7, sent);
    let bucket = pool.path().join("lost");
    take_the_lock_away(&bucket);
    // The same form begin_partial_upload sends: the rest of its body.
    let form = Form::new().file(
        "f",
        "partial.bin",
        "application/octet-stream",
        &random_bytes(1 << 20, 7),
    );
    let reply = send_the_rest(stream, &form.body()[sent..]);
    reply.assert_error_code(503, "ERR_LOCK_LOST", "lost the lock");
    // No status written after the loss: neither progress nor `done` nor
    // the failure; and nothing removed.
    let raw: serde_json::Value =
        serde_json::from_slice(&fs::read(bucket.join("status.json")).unwrap()).unwrap();
    assert_eq!(raw["state"], "uploading", "{raw}");
    assert_eq!(raw["received"], sent, "{raw}");
    assert!(
        bucket.join("file-1").exists(),
        "{:?}",
        pool.bucket_files("lost")
    );
    assert!(bucket.join("status.reserve").exists());
    // Readers see nobody receiving it.
    let status = status_of(&pool.cgi(), "lost");
    assert_eq!(status["code"], "ERR_INTERRUPTED", "{status}");
    // And the log says why.
    let log = wait_for(Duration::from_secs(5), || {
        let log = daemon.log_text();
        log.contains("lost the lock of its folder").then_some(log)
    });
    assert!(log.is_some(), "{}", daemon.log_text());
}

/// Between progress ticks the data goes on: each block write checks the
/// lock first (`pool::Fenced`), so a receiver that lost its lock stores
/// nothing more even when no tick comes before its next block.
#[test]
fn a_receiver_that_lost_its_lock_writes_no_more_data_before_its_next_tick() {
    let pool = TestPool::new();
    // No tick within the test: only the writes' own check can notice.
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "60s")]);
    let data = random_bytes(3 << 20, 8);
    let form = Form::new().file("f", "fenced.bin", "application/octet-stream", &data);
    let body = form.body();
    let first = (3 << 20) / 2;
    let mut stream = daemon.connect();
    let mut head = upload_head(&form, "/upload?X-Progress-ID=fenced", body.len(), false);
    head.extend(stdin_data(1, &body[..first]));
    stream.write_all(&head).unwrap();
    let bucket = pool.path().join("fenced");
    let data_file = bucket.join("file-1");
    let size = |path: &std::path::Path| fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    // The first mebibyte is one block, written; the rest of what was sent
    // is held.
    wait_for(Duration::from_secs(10), || {
        (size(&data_file) >= 1 << 20).then_some(())
    })
    .unwrap_or_else(|| panic!("no block written\n{}", daemon.log_text()));
    assert_eq!(size(&data_file), 1 << 20);
    take_the_lock_away(&bucket);
    // Past the time a check vouches for (pool::FENCE_AGE, 100 ms).
    std::thread::sleep(Duration::from_millis(300));
    let reply = send_the_rest(stream, &body[first..]);
    reply.assert_error_code(503, "ERR_LOCK_LOST", "lost the lock");
    assert_eq!(
        size(&data_file),
        1 << 20,
        "data written after the lock was lost"
    );
}
