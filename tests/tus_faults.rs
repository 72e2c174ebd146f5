//! The resumable-upload faults of issue 12 through the CGI program, a
//! process per request as under fcgiwrap: a client that went silent
//! mid-PATCH and reconnects, two PATCHes at once, and the `fsync` setting.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::site::require;
use common::{Cgi, Reply, TestPool, random_bytes, sha256_hex, status_of, wait_for};

const CHUNK: &str = "application/offset+octet-stream";
/// The progress interval of these tests: the takeover is measured in it.
const INTERVAL: Duration = Duration::from_millis(200);

fn tus(pool: &TestPool, method: &str, target: &str) -> Cgi {
    pool.cgi()
        .request(method, target)
        .env("HTTP_TUS_RESUMABLE", "1.0.0")
        .env("FILEUPLOAD_PROGRESS_INTERVAL", "200ms")
}

/// A new upload of `length` bytes: its location and identifier.
fn create(pool: &TestPool, length: usize) -> (String, String) {
    let created = tus(pool, "POST", "/upload/files")
        .env("HTTP_UPLOAD_LENGTH", &length.to_string())
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    (location, id)
}

fn patch(pool: &TestPool, location: &str, offset: usize, body_length: usize) -> Cgi {
    tus(pool, "PATCH", location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", &offset.to_string())
        .env("CONTENT_LENGTH", &body_length.to_string())
}

fn head_offset(pool: &TestPool, location: &str) -> usize {
    let head = tus(pool, "HEAD", location).run(b"");
    assert_eq!(head.status, 200, "{}", head.text());
    head.header("Upload-Offset").unwrap().parse().unwrap()
}

fn data_file(pool: &TestPool, id: &str) -> PathBuf {
    pool.path().join(id).join("file-1")
}

fn stored_length(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn finish(child: Child) -> Reply {
    common::finish(child)
}

/// The client's connection went silent mid-PATCH (its socket open, no
/// FIN: the process reading it stays blocked). The reconnected client's
/// HEAD and PATCH proceed within about two progress intervals, the old
/// request stores nothing more, and the file ends byte for byte right.
#[test]
fn a_reconnected_client_takes_over_from_its_silent_request() {
    let pool = TestPool::new();
    let data = random_bytes(1 << 20, 31);
    let (location, id) = create(&pool, data.len());
    let mut silent = patch(&pool, &location, 0, data.len()).spawn();
    let mut stdin = silent.stdin.take().unwrap();
    stdin.write_all(&data[..300_000]).unwrap();
    stdin.flush().unwrap();
    let path = data_file(&pool, &id);
    wait_for(Duration::from_secs(10), || {
        (stored_length(&path) == 300_000).then_some(())
    })
    .expect("the first bytes never reached the file");
    // The network dropped: nothing more arrives, and nothing says so.
    let reconnected = Instant::now();
    let offset = head_offset(&pool, &location);
    assert_eq!(offset, 300_000);
    let rest = patch(&pool, &location, offset, data.len() - offset).run(&data[offset..]);
    let took = reconnected.elapsed();
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(rest.header("Upload-Offset"), Some("1048576"));
    println!("reconnect to 204 (HEAD, takeover, 748 KiB): {took:?}");
    assert!(
        took < INTERVAL * 2 + Duration::from_secs(1),
        "the takeover took {took:?}"
    );
    // The old request wakes at last: it stores nothing, and says why.
    let _ = stdin.write_all(&[0xAA; 50_000]);
    drop(stdin);
    let old = finish(silent);
    old.assert_error_code(400, "ERR_UPLOAD_INTERRUPTED", "took it over");
    assert_eq!(std::fs::read(&path).unwrap(), data, "byte for byte");
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
}

/// Two PATCHes at once, both streaming: the later takes the upload over,
/// the earlier is answered ERR_UPLOAD_INTERRUPTED; the later, whose offset
/// no longer matches once it holds the lock, gets 409. The stored bytes
/// are a prefix of the client's at every step, never interleaved.
#[test]
fn two_patches_at_once_the_later_takes_over_and_bytes_stay_a_prefix() {
    let pool = TestPool::new();
    let data = random_bytes(4 << 20, 32);
    let (location, id) = create(&pool, data.len());
    let path = data_file(&pool, &id);
    let mut first = patch(&pool, &location, 0, data.len()).spawn();
    let mut stdin = first.stdin.take().unwrap();
    let body = data.clone();
    // Streams steadily until the program stops reading.
    let feeder = std::thread::spawn(move || {
        let started = Instant::now();
        for piece in body.chunks(32 * 1024) {
            if stdin.write_all(piece).is_err() || started.elapsed() > Duration::from_secs(20) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    wait_for(Duration::from_secs(10), || {
        (stored_length(&path) >= 100_000).then_some(())
    })
    .expect("the first PATCH never stored its bytes");
    // The later PATCH, from a stale offset: it takes over, then finds the
    // offset moved on.
    let later = patch(&pool, &location, 0, 1000).run(&data[..1000]);
    later.assert_error_code(409, "ERR_MISMATCHED_OFFSET", "");
    let earlier = finish(first);
    earlier.assert_error_code(400, "ERR_UPLOAD_INTERRUPTED", "");
    feeder.join().unwrap();
    let stored = std::fs::read(&path).unwrap();
    assert!(!stored.is_empty() && stored.len() < data.len());
    assert_eq!(
        stored,
        data[..stored.len()],
        "a prefix of the client's bytes"
    );
    let offset = head_offset(&pool, &location);
    assert_eq!(offset, stored.len());
    let rest = patch(&pool, &location, offset, data.len() - offset).run(&data[offset..]);
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
}

/// With `fsync` on (the default), the data file is synced before the 204
/// that acknowledges its offset is written; with it off, it is not.
#[test]
fn an_acknowledged_offset_is_synced_first_with_fsync_on() {
    let strace = require("strace", "strace");
    for fsync in ["on", "off"] {
        let pool = TestPool::new();
        let root = std::fs::canonicalize(pool.path()).unwrap();
        let (location, id) = create(&pool, 100_000);
        let trace = root.join("trace");
        let data = random_bytes(60_000, 33);
        let reply = patch(&pool, &location, 0, data.len())
            .env("FILEUPLOAD_FSYNC", fsync)
            .prelude(&format!(
                "exec {} -f -qq -y -o {} -e trace=fsync,fdatasync,write -- \"$0\"",
                strace.display(),
                trace.display()
            ))
            .run(&data);
        assert_eq!(reply.status, 204, "{}", reply.text());
        let lines: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let file = format!("<{}>)", root.join(&id).join("file-1").display());
        let synced = lines
            .iter()
            .position(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&file));
        let answered = lines
            .iter()
            .position(|l| l.contains("write(1<") && l.contains("Status: 204"))
            .unwrap_or_else(|| panic!("no answer in:\n{}", lines.join("\n")));
        match fsync {
            "on" => {
                let synced =
                    synced.unwrap_or_else(|| panic!("file-1 never synced:\n{}", lines.join("\n")));
                assert!(synced < answered, "{}", lines.join("\n"));
            }
            _ => assert_eq!(synced, None, "{}", lines.join("\n")),
        }
    }
}
