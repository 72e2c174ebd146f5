//! Attacks on the pool and on the answers, each a test of its defence.
//! SECURITY.md lists them.
//!
//! Whoever can write into the pool can plant links where fileupload will
//! write: a bucket that is a symlink to elsewhere, and inside a bucket a
//! symlink or a hard link named `status.json.tmp`, `file-1` or `lock`. None
//! of them may make fileupload write outside the pool or change the file
//! the link points to.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};

use common::*;

/// A file outside the pool that links will point at.
struct Target {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Target {
    fn new() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"do not touch").unwrap();
        Target { _dir: dir, path }
    }

    fn assert_untouched(&self, context: &str) {
        assert_eq!(
            std::fs::read(&self.path).unwrap(),
            b"do not touch",
            "{context}"
        );
    }
}

fn upload(pool: &TestPool, id: &str) -> Reply {
    let form = Form::new().file(
        "f",
        "a.bin",
        "application/octet-stream",
        &random_bytes(50_000, 1),
    );
    pool.cgi()
        .post_form(&format!("/upload?X-Progress-ID={id}"), &form)
}

#[test]
fn a_symlinked_bucket_is_never_followed() {
    let pool = TestPool::new();
    let target = Target::new();
    let outside = target.path.parent().unwrap().to_owned();
    symlink(&outside, pool.path().join("evil")).unwrap();
    let reply = upload(&pool, "evil");
    reply.assert_error(500, "not a folder");
    pool.cgi()
        .get("/upload/status?X-Progress-ID=evil")
        .assert_error(500, "not a folder");
    let listing: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        listing,
        ["precious"],
        "nothing may be written through the link"
    );
    target.assert_untouched("symlinked bucket");
    // clear removes the link, not what it points to.
    pool.cgi().get("/upload?X-Progress-ID=evil&clear");
    assert!(!pool.path().join("evil").exists());
    target.assert_untouched("after clear");
}

#[test]
fn links_planted_inside_a_bucket_are_replaced_not_followed() {
    let pool = TestPool::new();
    let target = Target::new();
    // A failed upload leaves a bucket; an attacker then plants links.
    let form = Form::new().file("f", "a", "text/plain", b"x");
    let mut body = form.body();
    body.truncate(body.len() - 5);
    let reply = pool
        .cgi()
        .request("POST", "/upload?X-Progress-ID=planted")
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &form.body().len().to_string())
        .run(&body);
    assert_eq!(reply.status, 400);
    let bucket = pool.path().join("planted");
    symlink(&target.path, bucket.join("status.json.tmp")).unwrap();
    symlink(&target.path, bucket.join("file-1")).unwrap();
    std::fs::hard_link(&target.path, bucket.join("file-2")).unwrap();
    // A new upload under the identifier (the old one failed) writes only
    // fresh files of its own.
    let reply = upload(&pool, "planted");
    assert_eq!(reply.status, 200, "{}", reply.text());
    target.assert_untouched("planted status.json.tmp, file-1, file-2");
    let stored = path_of(&reply.json(), 0);
    assert!(!stored.is_symlink());
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::symlink_metadata(&stored).unwrap().len(), 50_000);
}

#[test]
fn a_symlinked_lock_refuses_the_upload() {
    let pool = TestPool::new();
    let target = Target::new();
    let bucket = pool.path().join("locked");
    std::fs::create_dir(&bucket).unwrap();
    symlink(&target.path, bucket.join("lock")).unwrap();
    let reply = upload(&pool, "locked");
    assert_eq!(reply.status, 500, "{}", reply.text());
    target.assert_untouched("symlinked lock");
}

#[test]
fn a_hard_linked_status_is_replaced_not_written_through() {
    // status.json is only ever renamed over, never written in place: a hard
    // link to a file elsewhere keeps that file's content.
    let pool = TestPool::new();
    let target = Target::new();
    assert_eq!(upload(&pool, "hard").status, 200);
    let status = pool.path().join("hard/status.json");
    std::fs::remove_file(&status).unwrap();
    std::fs::hard_link(&target.path, &status).unwrap();
    pool.cgi().get("/upload?X-Progress-ID=hard&clear");
    assert_eq!(upload(&pool, "hard").status, 200);
    target.assert_untouched("hard-linked status.json");
}

#[test]
fn an_application_cannot_split_our_answer() {
    // A header value with a bare CR (or any line break) would let an
    // application (or whoever controls its output) smuggle a header in.
    let pool = TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("split.cgi");
    std::fs::write(
        &app,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\nX-Evil: a\\rSet-Cookie: stolen=1\\r\\nX-Fine: yes\\r\\n\\r\\nbody'\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_APP", app.to_str().unwrap())
        .get("/page");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("X-Fine"), Some("yes"));
    assert!(reply.header("Set-Cookie").is_none(), "{:?}", reply.headers);
    assert!(reply.header("X-Evil").is_none(), "{:?}", reply.headers);
}

#[test]
fn pool_and_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let cgi = Cgi::new().env("TMPDIR", tmp.path().to_str().unwrap());
    let form = Form::new().file("f", "a", "text/plain", b"secret");
    let json = cgi.post_form("/upload?X-Progress-ID=private", &form).json();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let stored = path_of(&json, 0);
    assert_eq!(mode(&tmp.path().join("fileupload")), 0o700);
    assert_eq!(mode(stored.parent().unwrap()), 0o700);
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(&stored.parent().unwrap().join("status.json")), 0o600);
}

/// Runs `command` and fails the test if it has not ended within 10 s (it
/// is then stopped by its pid).
fn within_10s(mut child: std::process::Child, what: &str) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung on a planted FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_planted_in_a_bucket_is_refused_not_waited_on() {
    let pool = TestPool::new();
    // A FIFO in place of the status, and one in place of the lock of an
    // upload whose status says it is running.
    let status_fifo = pool.path().join("fifo-status");
    std::fs::create_dir(&status_fifo).unwrap();
    mkfifo(&status_fifo.join("status.json"));
    let lock_fifo = pool.path().join("fifo-lock");
    std::fs::create_dir(&lock_fifo).unwrap();
    std::fs::write(
        lock_fifo.join("status.json"),
        r#"{"identifier":"fifo-lock","state":"uploading","received":0,"files":[],"fields":{}}"#,
    )
    .unwrap();
    mkfifo(&lock_fifo.join("lock"));
    let form = Form::new().file("f", "a.bin", "application/octet-stream", b"data");
    let body = form.body();
    for id in ["fifo-status", "fifo-lock"] {
        let status = pool
            .cgi()
            .request("GET", &format!("/upload/status?X-Progress-ID={id}"))
            .spawn();
        let answer = reply(within_10s(status, "a status query"));
        answer.assert_error(500, "not a regular file");
        let mut upload = pool
            .cgi()
            .request("POST", &format!("/upload?X-Progress-ID={id}"))
            .env("CONTENT_TYPE", &form.content_type())
            .env("CONTENT_LENGTH", &body.len().to_string())
            .spawn();
        let mut stdin = upload.stdin.take().unwrap();
        let _ = std::io::Write::write_all(&mut stdin, &body);
        drop(stdin);
        let answer = reply(within_10s(upload, "an upload"));
        assert!(
            matches!(answer.status, 409 | 500) && answer.text().contains("not a regular file"),
            "{id}: {} {}",
            answer.status,
            answer.text()
        );
    }
    let gc = std::process::Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .args(["gc", "--max-age", "1d"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(within_10s(gc, "gc").status.success());
    // The daemon: more polls of the planted upload than it has workers,
    // then a poll of another upload is still answered.
    let daemon = common::fcgi::Daemon::start(pool.path(), &[("FILEUPLOAD_WORKERS", "2")]);
    for _ in 0..4 {
        daemon
            .get("/upload/status?X-Progress-ID=fifo-status")
            .assert_error(500, "not a regular file");
    }
    assert_eq!(
        daemon.get("/upload/status?X-Progress-ID=other").json()["state"],
        "starting"
    );
    assert!(
        status_fifo.join("status.json").exists(),
        "the FIFO stays put"
    );
}
