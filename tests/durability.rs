//! A durable `done`: with `fsync` on (the default) every stored file is
//! synced, then the status is written, synced and renamed into place, then
//! the folders holding it are synced, and only then does the answer go
//! out. Shown by tracing the system calls of one upload.

mod common;

use std::path::Path;

use common::site::require;
use common::*;

/// Uploads two files through CGI under strace and returns the main
/// thread's calls (fsync, renames, writes) with the paths of their
/// descriptors.
fn traced_upload(pool: &TestPool, id: &str, fsync: Option<&str>) -> (Reply, Vec<String>) {
    let strace = require("strace", "strace");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join(format!("{id}.trace"));
    let form = Form::new()
        .file(
            "a",
            "one.bin",
            "application/octet-stream",
            &random_bytes(3000, 1),
        )
        .file(
            "b",
            "two.bin",
            "application/octet-stream",
            &random_bytes(3000, 2),
        );
    let mut cgi = pool.cgi().prelude(&format!(
        "exec {} -qq -y -o {} -e trace=fsync,fdatasync,rename,renameat,renameat2,write -- \"$0\"",
        strace.display(),
        trace.display()
    ));
    if let Some(value) = fsync {
        cgi = cgi.env("FILEUPLOAD_FSYNC", value);
    }
    let reply = cgi.post_form(&format!("/upload?X-Progress-ID={id}"), &form);
    let lines = std::fs::read_to_string(&trace)
        .unwrap_or_else(|e| panic!("no trace at {}: {e}", trace.display()))
        .lines()
        .map(str::to_owned)
        .collect();
    (reply, lines)
}

/// The index of the first line matching `what`, after `from`.
fn position(lines: &[String], from: usize, what: impl Fn(&str) -> bool, name: &str) -> usize {
    lines
        .iter()
        .skip(from)
        .position(|l| what(l))
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no {name} after line {from} in:\n{}", lines.join("\n")))
}

fn fsync_of(path: &Path) -> impl Fn(&str) -> bool {
    let call = format!("<{}>)", path.display());
    move |line: &str| {
        (line.starts_with("fsync(") || line.starts_with("fdatasync(")) && line.contains(&call)
    }
}

fn is_status_rename(line: &str) -> bool {
    line.starts_with("rename")
        && line.contains("\"status.json.tmp\"")
        && line.contains("\"status.json\"")
}

fn is_answer(line: &str) -> bool {
    line.starts_with("write(1<") && line.contains("Status: 200")
}

#[test]
fn done_is_on_disk_before_it_is_answered() {
    let pool = TestPool::new();
    let root = std::fs::canonicalize(pool.path()).unwrap();
    let bucket = root.join("durable");
    let (reply, lines) = traced_upload(&pool, "durable", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "done");

    let file1 = position(
        &lines,
        0,
        fsync_of(&bucket.join("file-1")),
        "fsync of file-1",
    );
    let file2 = position(
        &lines,
        0,
        fsync_of(&bucket.join("file-2")),
        "fsync of file-2",
    );
    // The last rename of the status is the one that says done.
    let rename = lines
        .iter()
        .rposition(|l| is_status_rename(l))
        .expect("status renamed into place");
    let status_synced = lines[..rename]
        .iter()
        .rposition(|l| fsync_of(&bucket.join("status.json.tmp"))(l))
        .expect("the new status synced before its rename");
    assert!(
        file1 < status_synced && file2 < status_synced,
        "files first:\n{}",
        lines.join("\n")
    );
    let folder = position(&lines, rename, fsync_of(&bucket), "fsync of the bucket");
    let pool_dir = position(
        &lines,
        rename,
        fsync_of(&root),
        "fsync of the pool (bucket is new)",
    );
    let answer = position(&lines, 0, is_answer, "the answer");
    assert!(
        folder < answer && pool_dir < answer && rename < answer,
        "the answer goes out last:\n{}",
        lines.join("\n")
    );

    // Into a bucket that already exists (a failed attempt), the pool's
    // entry is not new: it is not synced again.
    let form = Form::new().file("a", "x.bin", "application/octet-stream", b"12345");
    let mut body = form.body();
    body.truncate(body.len() - 5);
    let failed = pool
        .cgi()
        .post_body("/upload?X-Progress-ID=again", &form, &body);
    assert_eq!(failed.status, 400);
    let (reply, lines) = traced_upload(&pool, "again", Some("on"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    position(
        &lines,
        0,
        fsync_of(&root.join("again")),
        "fsync of the bucket",
    );
    assert!(
        !lines.iter().any(|l| fsync_of(&root)(l)),
        "pool synced for an old bucket:\n{}",
        lines.join("\n")
    );
}

#[test]
fn with_fsync_off_nothing_is_synced() {
    let pool = TestPool::new();
    let (reply, lines) = traced_upload(&pool, "fast", Some("off"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let syncs: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("fsync(") || l.starts_with("fdatasync("))
        .collect();
    assert!(syncs.is_empty(), "{syncs:?}");
    assert!(lines.iter().any(|l| is_status_rename(l)));
    assert!(lines.iter().any(|l| is_answer(l)));
}

/// When set, [`a_saved_hash_state_is_synced_with_fsync_on`] is the traced
/// child: it saves a hash state in the pool this names (`<dir>:on|off`).
const HASH_STATE_CHILD: &str = "FILEUPLOAD_TEST_HASH_STATE_CHILD";

/// A resumable upload's saved hash state is written as the status is: with
/// `fsync` on, the new file is synced before its rename and the bucket
/// after it; with it off, nothing is synced. The test runs itself again
/// under strace, as the child that saves the state.
#[test]
fn a_saved_hash_state_is_synced_with_fsync_on() {
    if let Ok(child) = std::env::var(HASH_STATE_CHILD) {
        let (dir, fsync) = child.rsplit_once(':').expect("<dir>:on|off");
        let pool = fileupload::Pool::new(dir, 0o600, false).with_fsync(fsync == "on");
        let id = fileupload::verify_identifier("hashed", None).unwrap();
        let upload = pool
            .create_resumable(&id, &fileupload::Status::incomplete("hashed", None, 1))
            .unwrap();
        upload.save_hash_state(b"a state").unwrap();
        return;
    }
    let strace = require("strace", "strace");
    let me = std::env::current_exe().unwrap();
    for fsync in ["on", "off"] {
        let pool = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(pool.path()).unwrap();
        let bucket = root.join("hashed");
        let trace = root.join("trace");
        let out = std::process::Command::new(&strace)
            .args(["-f", "-qq", "-y", "-o"])
            .arg(&trace)
            .args([
                "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2",
                "--",
            ])
            .arg(&me)
            .args([
                "--exact",
                "a_saved_hash_state_is_synced_with_fsync_on",
                "--test-threads=1",
            ])
            .env(HASH_STATE_CHILD, format!("{}:{fsync}", root.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(bucket.join("sha256.state")).unwrap(),
            b"a state"
        );
        // strace -f writes "<pid> call(...)": keep the calls.
        let lines: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(|l| {
                l.split_once(' ')
                    .map_or(l, |(_, call)| call)
                    .trim()
                    .to_owned()
            })
            .collect();
        let rename = lines
            .iter()
            .position(|l| {
                l.starts_with("rename")
                    && l.contains("\"sha256.state.tmp\"")
                    && l.contains("\"sha256.state\"")
            })
            .unwrap_or_else(|| panic!("no rename of the state in:\n{}", lines.join("\n")));
        let state_synced = lines[..rename]
            .iter()
            .any(|l| fsync_of(&bucket.join("sha256.state.tmp"))(l));
        let bucket_synced = lines[rename..].iter().any(|l| fsync_of(&bucket)(l));
        if fsync == "on" {
            assert!(state_synced && bucket_synced, "{}", lines.join("\n"));
        } else {
            let syncs: Vec<_> = lines.iter().filter(|l| l.contains("sync(")).collect();
            assert!(syncs.is_empty(), "{syncs:?}");
        }
    }
}
