//! Faults, each leaving the pool consistent: every other upload intact,
//! no stray file, and a status that tells the truth.
//!
//! - the client disappears at 50 offsets of the body (inside boundary
//!   lines, part headers and data), through CGI and through the daemon;
//! - the disk fills mid-upload (a 1 MiB tmpfs);
//! - the pool is missing, read-only, or full when the program starts;
//! - the FastCGI daemon is killed with SIGKILL mid-upload;
//! - clear, status and gc race a running upload from several processes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::fcgi::*;
use common::*;

/// The body the sweeps cut: a field and two files, small enough that 50
/// offsets land in every part of the grammar.
fn sweep_form() -> Form {
    Form::new()
        .field("title", "fault sweep")
        .file(
            "first",
            "one.bin",
            "application/octet-stream",
            &random_bytes(3000, 1),
        )
        .file("second", "two.txt", "text/plain", &random_bytes(2000, 2))
}

/// 50 cut points: every place where a boundary line or a part header
/// begins and ends (and the bytes around them), then evenly spread ones.
fn cut_points(body: &[u8], boundary: &str) -> Vec<usize> {
    let mut cuts = std::collections::BTreeSet::new();
    let delimiter = format!("--{boundary}");
    let mut at = 0;
    while let Some(i) = find(&body[at..], delimiter.as_bytes()) {
        let start = at + i;
        for offset in [
            0,
            1,
            2,
            delimiter.len() / 2,
            delimiter.len(),
            delimiter.len() + 1,
        ] {
            cuts.insert(start + offset);
        }
        // Inside the part's header block, if one follows.
        if let Some(end) = find(&body[start..], b"\r\n\r\n") {
            cuts.insert(start + end / 2);
            cuts.insert(start + end + 2);
        }
        at = start + 1;
    }
    let step = body.len() / 20;
    let mut n = 1;
    while cuts.len() < 50 {
        cuts.insert((n * step + n * 7) % body.len());
        n += 1;
    }
    cuts.into_iter()
        .filter(|&c| c < body.len())
        .take(50)
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Everything in the pool except `bystander`'s files must be a status or a
/// lock: no data file survives a failed upload.
fn assert_no_stray_files(pool: &TestPool, context: &str) {
    for (path, _) in pool.snapshot() {
        if path.starts_with("bystander/") {
            continue;
        }
        assert!(
            path.ends_with("/status.json") || path.ends_with("/lock"),
            "{context}: stray {path}"
        );
    }
}

fn with_bystander() -> (TestPool, std::collections::BTreeMap<String, (u64, String)>) {
    let pool = TestPool::new();
    let form = Form::new().file(
        "f",
        "keep.bin",
        "application/octet-stream",
        &random_bytes(10_000, 9),
    );
    assert_eq!(
        pool.cgi()
            .post_form("/upload?X-Progress-ID=bystander", &form)
            .status,
        200
    );
    let before = pool.snapshot();
    (pool, before)
}

#[test]
fn the_client_disappears_at_50_offsets_through_cgi() {
    let (pool, before) = with_bystander();
    let form = sweep_form();
    let body = form.body();
    let cuts = cut_points(&body, &form.boundary);
    assert_eq!(cuts.len(), 50);
    for (n, cut) in cuts.iter().enumerate() {
        let id = format!("cut-{n}");
        let reply = pool
            .cgi()
            .request("POST", &format!("/upload?X-Progress-ID={id}"))
            .env("CONTENT_TYPE", &form.content_type())
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(&body[..*cut]);
        reply.assert_error(400, "");
        let status = status_of(&pool.cgi(), &id);
        assert_eq!(status["state"], "error", "cut at {cut}: {status}");
        assert_eq!(status["received"], *cut, "cut at {cut}: {status}");
        assert_no_stray_files(&pool, &format!("cut at {cut}"));
    }
    let after = pool.snapshot();
    for (path, entry) in &before {
        assert_eq!(after.get(path), Some(entry), "{path} changed");
    }
}

#[test]
fn the_client_disappears_at_50_offsets_through_the_daemon() {
    let (pool, before) = with_bystander();
    let daemon = Daemon::start(pool.path(), &[]);
    let form = sweep_form();
    let body = form.body();
    for (n, cut) in cut_points(&body, &form.boundary).into_iter().enumerate() {
        let id = format!("fcut-{n}");
        let mut stream = daemon.connect();
        let mut bytes = upload_head(
            &form,
            &format!("/upload?X-Progress-ID={id}"),
            body.len(),
            false,
        );
        bytes.extend(stdin_data(1, &body[..cut]));
        stream.write_all(&bytes).unwrap();
        drop(stream); // the web server's connection goes
        let status = wait_for(Duration::from_secs(10), || {
            let status = status_of(&pool.cgi(), &id);
            (status["state"] == "error").then_some(status)
        })
        .unwrap_or_else(|| {
            panic!(
                "cut at {cut}: never failed: {}",
                status_of(&pool.cgi(), &id)
            )
        });
        assert!(
            status["error"]
                .as_str()
                .unwrap()
                .contains("closed the connection"),
            "{status}"
        );
        assert_no_stray_files(&pool, &format!("daemon cut at {cut}"));
    }
    let after = pool.snapshot();
    for (path, entry) in &before {
        assert_eq!(after.get(path), Some(entry), "{path} changed");
    }
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

/// A tmpfs of `size`, mounted for the test and unmounted after.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str, read_only: bool) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mut options = format!("size={size},mode=0700");
        if read_only {
            options.push_str(",ro");
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "fileupload-test"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the test suite runs as root in CI)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn the_disk_fills_mid_upload() {
    let disk = Tmpfs::mount("1M", false);
    let cgi = Cgi::new().env("FILEUPLOAD_DIRECTORY", disk.path().to_str().unwrap());
    let data = random_bytes(2 << 20, 3);
    let form = Form::new().file("f", "big.bin", "application/octet-stream", &data);
    let reply = cgi.post_form("/upload?X-Progress-ID=full", &form);
    reply.assert_error(507, "the disk is full");
    let status = status_of(&cgi, "full");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["status"], 507);
    let files: Vec<_> = std::fs::read_dir(disk.path().join("full"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files.iter().all(|f| f == "lock" || f == "status.json"),
        "{files:?}"
    );
    assert!(
        disk.used() < 64 * 1024,
        "the partial file's space is back: {} bytes used",
        disk.used()
    );
    // And the next, smaller upload fits.
    let small = Form::new().file(
        "f",
        "small.bin",
        "application/octet-stream",
        &random_bytes(100_000, 4),
    );
    assert_eq!(
        cgi.post_form("/upload?X-Progress-ID=fits", &small).status,
        200
    );
}

#[test]
fn a_disk_filled_by_someone_else_mid_upload_still_gets_a_true_status() {
    // Another writer takes the last free byte while our upload has stored
    // nothing yet, so removing our partial file frees nothing: the error
    // status must still be written (from the room reserved for it), and
    // the upload must not be reported as interrupted.
    let disk = Tmpfs::mount("1M", false);
    let pool = disk.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let cgi = Cgi::new().env("FILEUPLOAD_DIRECTORY", pool.to_str().unwrap());
    let data = random_bytes(200_000, 8);
    let form = Form::new().file("f", "victim.bin", "application/octet-stream", &data);
    let body = form.body();
    let head = find(&body, b"\r\n\r\n").unwrap() + 4;
    let mut child = cgi
        .clone()
        .request("POST", "/upload?X-Progress-ID=victim")
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &body.len().to_string())
        .spawn();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body[..head]).unwrap();
    stdin.flush().unwrap();
    wait_for(Duration::from_secs(10), || {
        pool.join("victim/file-1").exists().then_some(())
    })
    .expect("the upload never created its file");
    let mut filler = std::fs::File::create(disk.path().join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    while filler.write_all(&[0u8; 1]).is_ok() {}
    drop(filler);
    let _ = stdin.write_all(&body[head..]);
    drop(stdin);
    let reply = finish(child);
    reply.assert_error(507, "the disk is full");
    let status = status_of(&cgi, "victim");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["status"], 507, "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("disk is full"),
        "{status}"
    );
    let mut left: Vec<_> = std::fs::read_dir(pool.join("victim"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["lock", "status.json"],
        "no temporary file or reserve left"
    );
}

#[test]
fn a_missing_read_only_or_full_pool_is_a_clear_error() {
    let form = Form::new().file(
        "f",
        "a.bin",
        "application/octet-stream",
        &random_bytes(10_000, 5),
    );
    // Missing.
    let gone = tempfile::tempdir().unwrap();
    let missing = gone.path().join("not-there");
    let cgi = Cgi::new().env("FILEUPLOAD_DIRECTORY", missing.to_str().unwrap());
    cgi.post_form("/upload?X-Progress-ID=a", &form)
        .assert_error(500, "does not exist");
    cgi.get("/upload/status?X-Progress-ID=a")
        .assert_error(500, "does not exist");
    // Read-only.
    let read_only = Tmpfs::mount("1M", true);
    let cgi = Cgi::new().env("FILEUPLOAD_DIRECTORY", read_only.path().to_str().unwrap());
    let reply = cgi.post_form("/upload?X-Progress-ID=a", &form);
    reply.assert_error(500, "Read-only file system");
    assert!(
        reply.stderr.contains("Read-only file system"),
        "{}",
        reply.stderr
    );
    assert_eq!(
        cgi.get("/upload/status?X-Progress-ID=a").json()["state"],
        "starting"
    );
    // Full before we start.
    let full = Tmpfs::mount("64k", false);
    let filler = full.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0u8; 4096]).is_ok() {}
    drop(file);
    let cgi = Cgi::new().env("FILEUPLOAD_DIRECTORY", full.path().to_str().unwrap());
    let reply = cgi.post_form("/upload?X-Progress-ID=a", &form);
    reply.assert_error(507, "");
    assert!(!reply.stderr.contains("panicked"));
    // The daemon starts anyway, says what is wrong, and answers with it.
    let daemon = Daemon::start_with(&missing, &[], None);
    daemon
        .get("/upload/status?X-Progress-ID=a")
        .assert_error(500, "does not exist");
    assert!(
        daemon.log_text().contains("does not exist"),
        "the daemon should warn at start: {}",
        daemon.log_text()
    );
}

#[test]
fn the_daemon_killed_mid_upload_leaves_an_interrupted_upload_that_gc_removes() {
    let pool = TestPool::new();
    let mut daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let _open = daemon.begin_partial_upload(&pool, "killed", 6, 100_000);
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    let status = status_of(&pool.cgi(), "killed");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["code"], "ERR_INTERRUPTED", "{status}");
    assert!(
        status["error"].as_str().unwrap().starts_with("interrupted"),
        "{status}"
    );
    // A new daemon serves a new upload at once.
    let daemon = Daemon::start(pool.path(), &[]);
    let small = Form::new().file("f", "n.bin", "application/octet-stream", b"fresh");
    let reply = daemon.post_form("/upload?X-Progress-ID=after-kill", &small);
    assert_eq!(reply.json()["state"], "done");
    // gc takes what the killed daemon left.
    thread::sleep(Duration::from_millis(1100));
    let out = pool.cli(&["gc", "--max-age", "1s"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["removed"].as_u64().unwrap() >= 1, "{report}");
    assert!(!pool.path().join("killed").exists());
}

#[test]
fn clear_status_and_gc_race_a_running_upload() {
    // For a bounded time, several processes poll, clear and collect while
    // uploads run under the same identifiers. Every status answer must be
    // whole JSON in a known state, nothing may crash, and at the end each
    // identifier is either done with the right bytes or gone.
    let pool = TestPool::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let ids: Vec<String> = (0..3).map(|n| format!("race-{n}")).collect();
    let mut threads = Vec::new();
    for id in ids.clone() {
        let cgi = pool.cgi().env("FILEUPLOAD_PROGRESS_INTERVAL", "10ms");
        threads.push(thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                let data = random_bytes(300_000 + (round as usize % 7) * 50_000, round);
                let form = Form::new().file("f", "r.bin", "application/octet-stream", &data);
                let reply = cgi.post_form(&format!("/upload?X-Progress-ID={id}"), &form);
                assert!(!reply.stderr.contains("panicked"), "{}", reply.stderr);
                if reply.status == 200 {
                    outcomes.push(sha256_hex(&data));
                } else {
                    assert!(
                        [409, 410].contains(&reply.status),
                        "{}: {}",
                        reply.status,
                        reply.text()
                    );
                }
                // Start over under the same identifier.
                cgi.get(&format!("/upload?X-Progress-ID={id}&clear"));
            }
            outcomes
        }));
    }
    let mut pollers = Vec::new();
    for n in 0..3 {
        let cgi = pool.cgi();
        let ids = ids.clone();
        pollers.push(thread::spawn(move || {
            let mut answers = 0;
            while Instant::now() < deadline {
                let id = &ids[answers % ids.len()];
                match n {
                    0 => {
                        let reply = cgi.get(&format!("/upload/status?X-Progress-ID={id}"));
                        assert_eq!(reply.status, 200, "{}", reply.text());
                        let state = reply.json()["state"].as_str().unwrap().to_owned();
                        assert!(
                            ["starting", "uploading", "done", "error"].contains(&state.as_str())
                        );
                    }
                    1 => {
                        let reply = cgi.get(&format!("/upload?X-Progress-ID={id}&clear"));
                        assert_eq!(reply.json(), serde_json::json!({"success": true}));
                    }
                    _ => {
                        let out = Command::new(bin())
                            .env_clear()
                            .env("FILEUPLOAD_DIRECTORY", cgi_pool(&cgi))
                            .args(["gc", "--max-age", "1s"])
                            .output()
                            .unwrap();
                        assert!(
                            out.status.success(),
                            "{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                answers += 1;
            }
            answers
        }));
    }
    let uploaded: usize = threads.into_iter().map(|t| t.join().unwrap().len()).sum();
    let actions: usize = pollers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(actions > 30, "only {actions} racing actions");
    // Whatever is left is consistent: done uploads have their bytes.
    for id in &ids {
        let status = status_of(&pool.cgi(), id);
        match status["state"].as_str().unwrap() {
            "starting" => assert!(
                !pool.path().join(id).exists()
                    || pool
                        .bucket_files(id)
                        .iter()
                        .all(|f| !f.starts_with("file-"))
            ),
            "done" => {
                let stored = std::fs::read(path_of(&status, 0)).unwrap();
                assert_eq!(
                    sha256_hex(&stored),
                    status["files"][0]["sha256"].as_str().unwrap()
                );
            }
            "error" => assert!(
                pool.bucket_files(id)
                    .iter()
                    .all(|f| !f.starts_with("file-")),
                "{status}"
            ),
            other => panic!("{id} ended {other}: {status}"),
        }
    }
    // No leftovers of deletions once everyone is done.
    pool.cli(&["gc", "--max-age", "1h"]);
    assert!(
        pool.top_level().iter().all(|n| !n.starts_with(".trash-")),
        "{:?}",
        pool.top_level()
    );
    let trash = pool.path().join(".trash");
    let left: Vec<_> = std::fs::read_dir(&trash)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in .trash: {left:?}");
    eprintln!("race: {uploaded} uploads completed among {actions} racing status/clear/gc actions");
}

fn cgi_pool(cgi: &Cgi) -> PathBuf {
    PathBuf::from(cgi.var("FILEUPLOAD_DIRECTORY").expect("pool"))
}
