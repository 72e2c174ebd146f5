//! The `on_create` and `on_complete` hooks, through the CGI program and the
//! FastCGI daemon, for forms and tus: refusals, failures of every kind
//! (fail closed), what they are given on stdin, and that `on_complete`
//! neither changes an upload nor delays its answer.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fcgi::Daemon;
use common::{Form, Reply, TestPool, parse_cgi, sha256_hex};
use serde_json::Value;

/// A folder of hook scripts.
struct Hooks {
    dir: tempfile::TempDir,
}

impl Hooks {
    fn new() -> Hooks {
        Hooks {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An executable `/bin/sh` script; `$D` in `body` is this folder.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.path(name);
        let text = format!("#!/bin/sh\nD='{}'\n{body}\n", self.dir.path().display());
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Waits (at most 20 s) for a file a hook writes, and returns it.
    fn wait_for(&self, name: &str) -> String {
        let path = self.path(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The hook writes `name.tmp` and renames it: complete or absent.
            if let Ok(text) = fs::read_to_string(&path) {
                return text;
            }
            assert!(Instant::now() < deadline, "{name} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts as a PDF does, as its declared type says (an upload policy
/// checks the first bytes).
const DATA: &[u8] = b"%PDF-1.7 hook test payload 8c1f0e\n";

fn form() -> Form {
    Form::new()
        .field("title", "t")
        .file("file", "report.pdf", "application/pdf", DATA)
}

/// Nothing of `DATA` is anywhere in the pool.
fn assert_nothing_stored(pool: &TestPool) {
    let digest = sha256_hex(DATA);
    let snapshot = pool.snapshot();
    assert!(
        snapshot.values().all(|(_, sha)| *sha != digest),
        "the file was stored: {snapshot:?}"
    );
}

fn assert_stored(pool: &TestPool) {
    let digest = sha256_hex(DATA);
    assert!(
        pool.snapshot().values().any(|(_, sha)| *sha == digest),
        "the file is not in the pool"
    );
}

fn cgi_post(pool: &TestPool, env: &[(&str, &str)], id: &str) -> Reply {
    let mut cgi = pool
        .cgi()
        .env("REMOTE_ADDR", "192.0.2.7")
        .env("HTTP_X_TEST", "yes");
    for (k, v) in env {
        cgi = cgi.env(k, v);
    }
    cgi.post_form(&format!("/upload?X-Progress-ID={id}"), &form())
}

#[test]
fn on_create_refusal_is_403_with_the_first_line_and_stores_nothing() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "no.sh",
        "cat >/dev/null; printf 'no uploads\\033 today\\nsecond line\\n'; exit 1",
    );
    let reply = cgi_post(&pool, &[("FILEUPLOAD_ON_CREATE", &hook)], "refused1");
    reply.assert_error_code(403, "ERR_REFUSED", "no uploads  today");
    assert!(!reply.text().contains("second line"), "{}", reply.text());
    assert_nothing_stored(&pool);
    // Recorded as any refused upload is: its status says why.
    let status = pool
        .cgi()
        .get("/upload/status?X-Progress-ID=refused1")
        .json();
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["code"], "ERR_REFUSED", "{status}");

    // A long first line is cut to 200 characters; none gives a plain one.
    let long = hooks.script("long.sh", "cat >/dev/null; printf '%0300d\\n' 0; exit 1");
    let reply = cgi_post(&pool, &[("FILEUPLOAD_ON_CREATE", &long)], "refused2");
    reply.assert_error_code(403, "ERR_REFUSED", &"0".repeat(200));
    assert_eq!(reply.json()["error"].as_str().unwrap().len(), 200);
    let silent = hooks.script("silent.sh", "exit 1");
    let reply = cgi_post(&pool, &[("FILEUPLOAD_ON_CREATE", &silent)], "refused3");
    reply.assert_error_code(403, "ERR_REFUSED", "the upload was refused");
    assert_nothing_stored(&pool);
}

#[test]
fn on_create_exit_0_accepts_and_is_given_the_upload_as_json() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "yes.sh",
        "cat > \"$D/in.tmp\"; echo \"$FILEUPLOAD_HOOK\" > \"$D/kind\"; env > \"$D/env\"; \
         mv \"$D/in.tmp\" \"$D/in.json\"",
    );
    let reply = cgi_post(
        &pool,
        &[("FILEUPLOAD_ON_CREATE", &hook), ("FILEUPLOAD_SHA256", "on")],
        "accepted1",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "done");
    assert_stored(&pool);
    let input: Value = serde_json::from_str(&hooks.wait_for("in.json")).unwrap();
    let body_length = form().body().len() as u64;
    assert_eq!(input["Type"], "pre-create");
    let upload = &input["Event"]["Upload"];
    assert_eq!(upload["ID"], "accepted1");
    assert_eq!(upload["Size"], Value::Null);
    assert_eq!(upload["SizeIsDeferred"], true);
    assert_eq!(upload["MetaData"]["filename"], "report.pdf");
    assert_eq!(upload["MetaData"]["filetype"], "application/pdf");
    let http = &input["Event"]["HTTPRequest"];
    assert_eq!(http["Method"], "POST");
    assert_eq!(http["URI"], "/upload?X-Progress-ID=accepted1");
    assert_eq!(http["RemoteAddr"], "192.0.2.7");
    assert_eq!(http["Header"]["X-Test"][0], "yes");
    assert_eq!(input["identifier"], "accepted1");
    assert_eq!(input["protocol"], "form");
    assert_eq!(input["length"], body_length);
    assert_eq!(input["remote_addr"], "192.0.2.7");
    assert_eq!(input["filename"], "report.pdf");
    assert_eq!(input["content_type"], "application/pdf");
    assert_eq!(input["policy"], Value::Null);
    assert_eq!(hooks.wait_for("kind").trim(), "pre-create");
    // Nothing of ours (settings, the request's variables) reaches it: only
    // PATH, FILEUPLOAD_HOOK, and what sh sets itself.
    let env = fs::read_to_string(hooks.path("env")).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| !matches!(*name, "PWD" | "SHLVL" | "_" | "OLDPWD"))
        .collect();
    names.sort();
    assert_eq!(names, ["FILEUPLOAD_HOOK", "PATH"], "{env}");
}

/// The limits the application signed into the identifier reach the hook,
/// so that it can judge the upload by them too.
#[test]
fn on_create_is_given_the_identifiers_upload_policy() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "yes.sh",
        "cat > \"$D/in.tmp\"; mv \"$D/in.tmp\" \"$D/in.json\"",
    );
    let minted = std::process::Command::new(common::bin())
        .env_clear()
        .env("FILEUPLOAD_UPLOAD_KEY", "hook policy key")
        .args([
            "new-id",
            "--size-limit",
            "1M",
            "--accept",
            "application/pdf",
            "--file-limit",
            "2",
        ])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let id = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let reply = cgi_post(
        &pool,
        &[
            ("FILEUPLOAD_ON_CREATE", &hook),
            ("FILEUPLOAD_UPLOAD_KEY", "hook policy key"),
        ],
        &id,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let input: Value = serde_json::from_str(&hooks.wait_for("in.json")).unwrap();
    assert_eq!(input["identifier"], id.as_str());
    assert_eq!(
        input["policy"],
        serde_json::json!({"size_limit": 1 << 20, "accept": ["application/pdf"], "file_limit": 2}),
        "{input}"
    );
}

#[test]
fn on_create_runs_once_for_a_form_with_two_files() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script("count.sh", "cat >/dev/null; echo run >> \"$D/runs\"");
    let form = form().file("second", "b.txt", "text/plain", b"bbb");
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_ON_CREATE", &hook)
        .post_form("/upload?X-Progress-ID=twofiles", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["files"].as_array().unwrap().len(), 2);
    assert_eq!(fs::read_to_string(hooks.path("runs")).unwrap(), "run\n");
}

/// A hook's pid, from the file it wrote it to.
fn hook_pid(hooks: &Hooks) -> u32 {
    hooks.wait_for("pid").trim().parse().unwrap()
}

/// No process (not even a zombie) has this pid.
fn assert_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "hook {pid} is still there: {stat}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn on_create_past_its_timeout_is_killed_reaped_and_refuses() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "slow.sh",
        "sleep 60 & echo $! > \"$D/child\"; echo $$ > \"$D/pid.tmp\"; mv \"$D/pid.tmp\" \"$D/pid\"; \
         exec sleep 60",
    );
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_ON_CREATE", &hook),
            ("FILEUPLOAD_HOOK_TIMEOUT", "500ms"),
        ],
    );
    let reply = daemon.post_form("/upload?X-Progress-ID=slow1", &form());
    reply.assert_error_code(403, "ERR_REFUSED", "on_create hook failed");
    assert_nothing_stored(&pool);
    // Reaped by the daemon, which is still running: no zombie left.
    assert_gone(hook_pid(&hooks));
    // What it started went with it (its process group was killed); it is
    // not ours to reap, so a zombie of it may wait for init.
    let child = hooks.wait_for("child").trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook's child runs on: {stat}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        daemon.log_text().contains("did not finish within 500ms"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn on_create_that_cannot_run_refuses_and_a_relative_one_is_a_config_error() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let missing = hooks.path("missing.sh");
    let reply = cgi_post(
        &pool,
        &[("FILEUPLOAD_ON_CREATE", missing.to_str().unwrap())],
        "m1",
    );
    reply.assert_error_code(403, "ERR_REFUSED", "on_create hook failed");
    assert!(reply.stderr.contains("cannot be run"), "{}", reply.stderr);

    let plain = hooks.path("plain.sh");
    fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let reply = cgi_post(
        &pool,
        &[("FILEUPLOAD_ON_CREATE", plain.to_str().unwrap())],
        "m2",
    );
    reply.assert_error_code(403, "ERR_REFUSED", "on_create hook failed");
    assert!(
        reply.stderr.contains("ermission denied"),
        "{}",
        reply.stderr
    );
    assert_nothing_stored(&pool);

    let reply = cgi_post(&pool, &[("FILEUPLOAD_ON_CREATE", "hooks/yes.sh")], "m3");
    reply.assert_error_code(500, "ERR_CONFIG", "misconfigured");
    assert!(
        reply.stderr.contains("must be an absolute path"),
        "{}",
        reply.stderr
    );
}

#[test]
fn on_create_killed_by_a_signal_refuses() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script("killed.sh", "kill -9 $$");
    let reply = cgi_post(&pool, &[("FILEUPLOAD_ON_CREATE", &hook)], "sig1");
    reply.assert_error_code(403, "ERR_REFUSED", "on_create hook failed");
    assert!(
        reply.stderr.contains("killed by signal 9"),
        "{}",
        reply.stderr
    );
    assert_nothing_stored(&pool);
}

#[test]
fn on_create_writing_megabytes_is_stopped_and_refuses() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    for (name, redirect, stream) in [("out.sh", "", "stdout"), ("err.sh", ">&2", "stderr")] {
        // Long enough a timeout that only the output limit can stop it.
        let hook = hooks.script(name, &format!("exec head -c 8000000 /dev/zero {redirect}"));
        let daemon = Daemon::start(
            pool.path(),
            &[
                ("FILEUPLOAD_ON_CREATE", &hook),
                ("FILEUPLOAD_HOOK_TIMEOUT", "60s"),
            ],
        );
        let reply = daemon.post_form(&format!("/upload?X-Progress-ID=lots-{stream}"), &form());
        reply.assert_error_code(403, "ERR_REFUSED", "on_create hook failed");
        let wanted = format!("wrote more than 65536 bytes to its {stream}");
        assert!(daemon.log_text().contains(&wanted), "{}", daemon.log_text());
    }
    assert_nothing_stored(&pool);
}

fn tus_create(daemon: &Daemon, length: usize, metadata: &str, body: &[u8]) -> Reply {
    let length = length.to_string();
    let body_length = body.len().to_string();
    let mut extra = vec![
        ("HTTP_TUS_RESUMABLE", "1.0.0"),
        ("HTTP_UPLOAD_LENGTH", length.as_str()),
        ("HTTP_UPLOAD_METADATA", metadata),
        ("REMOTE_ADDR", "198.51.100.4"),
    ];
    if !body.is_empty() {
        extra.push(("CONTENT_TYPE", "application/offset+octet-stream"));
        extra.push(("CONTENT_LENGTH", body_length.as_str()));
    }
    daemon.request("POST", "/upload/files", &extra, body)
}

/// `filename` report.pdf, `filetype` application/pdf, in tus's base64.
const TUS_METADATA: &str = "filename cmVwb3J0LnBkZg==,filetype YXBwbGljYXRpb24vcGRm";

#[test]
fn tus_creation_is_refused_by_on_create_and_makes_nothing() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "no.sh",
        "cat > \"$D/in.tmp\"; mv \"$D/in.tmp\" \"$D/in.json\"; echo 'quota exceeded'; exit 2",
    );
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_ON_CREATE", &hook)]);
    let reply = tus_create(&daemon, DATA.len(), TUS_METADATA, DATA);
    reply.assert_error_code(403, "ERR_REFUSED", "quota exceeded");
    assert!(reply.header("Location").is_none(), "{:?}", reply.headers);
    assert_nothing_stored(&pool);
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    let input: Value = serde_json::from_str(&hooks.wait_for("in.json")).unwrap();
    let upload = &input["Event"]["Upload"];
    assert_eq!(upload["Size"], DATA.len() as u64);
    assert_eq!(upload["SizeIsDeferred"], false);
    assert_eq!(upload["MetaData"]["filename"], "report.pdf");
    assert_eq!(input["protocol"], "tus");
    assert_eq!(input["length"], DATA.len() as u64);
    assert_eq!(input["remote_addr"], "198.51.100.4");
    assert_eq!(input["filetype"], Value::Null);
    assert_eq!(input["content_type"], "application/pdf");
    assert_eq!(input["identifier"], upload["ID"]);
}

#[test]
fn ietf_creation_is_refused_by_on_create_and_makes_nothing() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "no.sh",
        "cat > \"$D/in.tmp\"; mv \"$D/in.tmp\" \"$D/in.json\"; echo 'not from here'; exit 1",
    );
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_ON_CREATE", &hook)]);
    let length = DATA.len().to_string();
    let reply = daemon.request(
        "POST",
        "/upload/files",
        &[
            ("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6"),
            ("HTTP_UPLOAD_COMPLETE", "?1"),
            (
                "HTTP_CONTENT_DISPOSITION",
                "attachment; filename=\"report.pdf\"",
            ),
            ("CONTENT_TYPE", "application/pdf"),
            ("CONTENT_LENGTH", length.as_str()),
        ],
        DATA,
    );
    reply.assert_error_code(403, "ERR_REFUSED", "not from here");
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    let input: Value = serde_json::from_str(&hooks.wait_for("in.json")).unwrap();
    assert_eq!(input["protocol"], "ietf");
    assert_eq!(input["filename"], "report.pdf");
    assert_eq!(input["content_type"], "application/pdf");
    assert_eq!(input["length"], DATA.len() as u64);
}

#[test]
fn tus_creation_accepted_by_on_create_completes_and_runs_on_complete() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let create = hooks.script("yes.sh", "cat >/dev/null; exit 0");
    let complete = hooks.script(
        "done.sh",
        "cat > \"$D/done.tmp\"; mv \"$D/done.tmp\" \"$D/done.json\"",
    );
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_ON_CREATE", &create),
            ("FILEUPLOAD_ON_COMPLETE", &complete),
        ],
    );
    let reply = tus_create(&daemon, DATA.len(), TUS_METADATA, DATA);
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_stored(&pool);
    let done: Value = serde_json::from_str(&hooks.wait_for("done.json")).unwrap();
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["filename"], "report.pdf", "{done}");
    let id = done["identifier"].as_str().unwrap();
    let status = daemon.get(&format!("/upload/status?X-Progress-ID={id}"));
    assert_eq!(status.json(), done);
}

#[test]
fn on_complete_gets_the_status_document_through_the_daemon() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = hooks.script(
        "done.sh",
        "cat > \"$D/done.tmp\"; echo \"$FILEUPLOAD_HOOK\" > \"$D/kind\"; mv \"$D/done.tmp\" \"$D/done.json\"",
    );
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_ON_COMPLETE", &hook)]);
    let reply = daemon.post_form("/upload?X-Progress-ID=done1", &form());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let document = hooks.wait_for("done.json");
    let status = daemon.get("/upload/status?X-Progress-ID=done1");
    // Byte for byte what a status query answers.
    assert_eq!(document.as_bytes(), status.body.as_slice());
    assert_eq!(status.json()["state"], "done");
    assert_eq!(hooks.wait_for("kind").trim(), "post-finish");
}

#[test]
fn a_failing_on_complete_leaves_the_upload_done() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let cases = [
        (
            "exit.sh",
            "cat >/dev/null; echo 'cannot index'; exit 3",
            "exited with status 3: cannot index",
        ),
        ("signal.sh", "kill -9 $$", "killed by signal 9"),
        ("slow.sh", "exec sleep 60", "did not finish within 300ms"),
        (
            "lots.sh",
            "exec head -c 8000000 /dev/zero",
            "wrote more than 65536 bytes to its stdout",
        ),
    ];
    for (i, (name, body, logged)) in cases.iter().enumerate() {
        let hook = hooks.script(name, body);
        let daemon = Daemon::start(
            pool.path(),
            &[
                ("FILEUPLOAD_ON_COMPLETE", &hook),
                ("FILEUPLOAD_HOOK_TIMEOUT", "300ms"),
            ],
        );
        let id = format!("fail{i}");
        let reply = daemon.post_form(&format!("/upload?X-Progress-ID={id}"), &form());
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.log_text().contains(logged) {
            assert!(Instant::now() < deadline, "{name}: {}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = daemon
            .get(&format!("/upload/status?X-Progress-ID={id}"))
            .json();
        assert_eq!(status["state"], "done", "{name}: {status}");
        assert_eq!(status["files"][0]["size"], DATA.len() as u64);
        assert_stored(&pool);
    }
}

/// A hook that saves its stdin, then waits on a fifo for the test to say it
/// has its answer, and writes what it was told.
fn blocking_hook(hooks: &Hooks) -> String {
    let fifo = hooks.path("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    hooks.script(
        "wait.sh",
        "cat > \"$D/done.tmp\"; mv \"$D/done.tmp\" \"$D/done.json\"; \
         read line < \"$D/fifo\"; echo \"$line\" > \"$D/told.tmp\"; mv \"$D/told.tmp\" \"$D/told\"",
    )
}

/// Tells the blocked hook that the answer is here. Fails if no hook is
/// waiting on the fifo: one that was killed, at its timeout, because the
/// answer waited for it.
fn release(hooks: &Hooks) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fifo = loop {
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000) // O_NONBLOCK: ENXIO while nobody reads
            .open(hooks.path("fifo"))
        {
            Ok(fifo) => break fifo,
            Err(e) if e.raw_os_error() == Some(6) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no hook is waiting on the fifo: {e}"),
        }
    };
    fifo.write_all(b"answered first\n").unwrap();
    drop(fifo);
    assert_eq!(hooks.wait_for("told").trim(), "answered first");
}

#[test]
fn the_daemon_answers_before_on_complete_ends() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = blocking_hook(&hooks);
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_ON_COMPLETE", &hook),
            ("FILEUPLOAD_HOOK_TIMEOUT", "120s"),
        ],
    );
    let reply = daemon.post_form("/upload?X-Progress-ID=early1", &form());
    assert_eq!(reply.status, 200, "{}", reply.text());
    release(&hooks);
    let done: Value = serde_json::from_str(&hooks.wait_for("done.json")).unwrap();
    assert_eq!(done["state"], "done");
}

#[test]
fn the_cgi_program_answers_before_on_complete_ends() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = blocking_hook(&hooks);
    let form = form();
    let body = form.body();
    let mut child = pool
        .cgi()
        .env("FILEUPLOAD_ON_COMPLETE", &hook)
        .env("FILEUPLOAD_HOOK_TIMEOUT", "120s")
        .request("POST", "/upload?X-Progress-ID=early2")
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &body.len().to_string())
        .spawn();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    // To the end of stdout, as a web server reads it, and of stderr, which
    // fcgiwrap also waits for: both end while the hook still runs.
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let (status, _, answer) = parse_cgi(&stdout);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the CGI program did not wait for its hook"
    );
    release(&hooks);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?} {stderr}");
    let done: Value = serde_json::from_str(&hooks.wait_for("done.json")).unwrap();
    assert_eq!(done["state"], "done");
    assert_eq!(done["identifier"], "early2");
}

#[test]
fn hook_settings_are_checked_at_load() {
    let pool = TestPool::new();
    for (var, value, why) in [
        (
            "FILEUPLOAD_ON_COMPLETE",
            "done.sh",
            "must be an absolute path",
        ),
        ("FILEUPLOAD_HOOK_TIMEOUT", "0", "invalid duration"),
        ("FILEUPLOAD_HOOK_TIMEOUT", "soon", "invalid duration"),
    ] {
        let reply = pool
            .cgi()
            .env(var, value)
            .get("/upload/status?X-Progress-ID=a");
        reply.assert_error_code(500, "ERR_CONFIG", "misconfigured");
        assert!(
            reply.stderr.contains(why),
            "{var}={value}: {}",
            reply.stderr
        );
    }
}

#[test]
fn the_development_server_answers_before_on_complete_ends() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let hook = blocking_hook(&hooks);
    let mut child = Command::new(common::bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .env("FILEUPLOAD_ON_COMPLETE", &hook)
        .env("FILEUPLOAD_HOOK_TIMEOUT", "120s")
        .args(["serve", "--http", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first_line).unwrap();
    let port: u16 = first_line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first_line:?}"));
    let form = form();
    let body = form.body();
    let mut request = format!(
        "POST /upload?X-Progress-ID=early3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    release(&hooks);
    let done: Value = serde_json::from_str(&hooks.wait_for("done.json")).unwrap();
    assert_eq!(done["identifier"], "early3");
    let _ = child.kill();
    let _ = child.wait();
}

/// What the CGI program's early answer is for: a web server that ends a
/// CGI answer only when the program's stdout and stderr are closed. The
/// hook's timeout is under the client's 30 s: an answer that waited for
/// the CGI program to end would come after the hook was killed, and
/// `release` would find no hook.
#[test]
fn nginx_and_fcgiwrap_answer_before_on_complete_ends() {
    use common::site::*;
    let mut site = Site::new();
    let hooks = Hooks::new();
    let hook = blocking_hook_for_www_data(&hooks);
    let limit = format!("FILEUPLOAD_MAX_SIZE {};", site.max_size_mib);
    let with_hook = format!(
        "{limit}\n        fastcgi_param FILEUPLOAD_ON_COMPLETE {hook};\n        \
         fastcgi_param FILEUPLOAD_HOOK_TIMEOUT 20s;"
    );
    start_nginx_fcgiwrap(&mut site, Some(&children_dropin()), &[(&limit, with_hook)]);
    let done = answered_before_the_hook_ends(&site, &hooks, "early4");
    assert_eq!(done["identifier"], "early4");
    assert_eq!(done["state"], "done");
}

/// The blocking hook, where a web server's www-data can run it: the
/// program (and so the hook) runs as that user.
fn blocking_hook_for_www_data(hooks: &Hooks) -> String {
    fs::set_permissions(hooks.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let hook = blocking_hook(hooks);
    fs::set_permissions(hooks.path("fifo"), fs::Permissions::from_mode(0o666)).unwrap();
    hook
}

/// Posts the form as `id` through the site, sees it answered 200 while
/// the blocking hook still waits, then lets the hook go; returns what it
/// was given.
fn answered_before_the_hook_ends(site: &common::site::Site, hooks: &Hooks, id: &str) -> Value {
    let form = form();
    let answer = site.request(
        "POST",
        &format!("/upload?X-Progress-ID={id}"),
        &[("Content-Type", &form.content_type())],
        &form.body(),
    );
    assert_eq!(
        answer.status,
        200,
        "{}\n{}",
        answer.text(),
        site.logs_text()
    );
    release(hooks);
    serde_json::from_str(&hooks.wait_for("done.json")).unwrap()
}

/// The same through Apache running the program as a CGI (Debian's
/// mod_cgid, where stdin and stdout are one socket), configured with
/// SetEnv as the README says.
#[test]
fn apache_cgi_answers_before_on_complete_ends() {
    use common::site::*;
    let mut site = Site::new();
    let hooks = Hooks::new();
    let hook = blocking_hook_for_www_data(&hooks);
    let substitutions = [
        site.program_substitutions(),
        vec![(
            "SetEnv FILEUPLOAD_MAX_SIZE 100",
            format!(
                "SetEnv FILEUPLOAD_MAX_SIZE {}\n        SetEnv FILEUPLOAD_ON_COMPLETE {hook}\n        \
                 SetEnv FILEUPLOAD_HOOK_TIMEOUT 20s",
                site.max_size_mib
            ),
        )],
    ]
    .concat();
    start_apache(&mut site, "apache-cgi.conf", None, &substitutions);
    let done = answered_before_the_hook_ends(&site, &hooks, "early5");
    assert_eq!(done["identifier"], "early5");
}

#[test]
fn on_complete_runs_for_a_concatenation_not_its_parts_and_on_create_for_each() {
    let pool = TestPool::new();
    let hooks = Hooks::new();
    let create = hooks.script(
        "create.sh",
        "tr -d '\\n' >> \"$D/created\"; echo >> \"$D/created\"",
    );
    let complete = hooks.script(
        "done.sh",
        "cat > \"$D/tmp.$$\"; mv \"$D/tmp.$$\" \"$D/completed-$$.json\"",
    );
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_ON_CREATE", &create),
            ("FILEUPLOAD_ON_COMPLETE", &complete),
        ],
    );
    for (id, part) in [("part-a", &DATA[..10]), ("part-b", &DATA[10..])] {
        let length = part.len().to_string();
        let reply = daemon.request(
            "POST",
            &format!("/upload/files?X-Progress-ID={id}"),
            &[
                ("HTTP_TUS_RESUMABLE", "1.0.0"),
                ("HTTP_UPLOAD_LENGTH", &length),
                ("HTTP_UPLOAD_CONCAT", "partial"),
                ("CONTENT_TYPE", "application/offset+octet-stream"),
                ("CONTENT_LENGTH", &length),
            ],
            part,
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let reply = daemon.request(
        "POST",
        "/upload/files?X-Progress-ID=whole",
        &[
            ("HTTP_TUS_RESUMABLE", "1.0.0"),
            (
                "HTTP_UPLOAD_CONCAT",
                "final;/upload/files/part-a /upload/files/part-b",
            ),
        ],
        b"",
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_stored(&pool);
    let documents = || -> Vec<Value> {
        fs::read_dir(hooks.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().contains("/completed-"))
            .map(|p| serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while documents().is_empty() {
        assert!(Instant::now() < deadline, "on_complete never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let created: Vec<Value> = fs::read_to_string(hooks.path("created"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(created.len(), 3);
    assert_eq!(created[0]["Event"]["Upload"]["IsPartial"], true);
    assert_eq!(created[2]["Event"]["Upload"]["IsFinal"], true);
    assert_eq!(
        created[2]["Event"]["Upload"]["PartialUploads"],
        serde_json::json!(["part-a", "part-b"])
    );
    // Only the final upload's hook ran: a part's would have been started
    // before it (each answer starts its hook); give it time to show.
    std::thread::sleep(Duration::from_millis(300));
    let documents = documents();
    assert_eq!(documents.len(), 1, "{documents:?}");
    assert_eq!(documents[0]["identifier"], "whole");
    assert_eq!(documents[0]["state"], "done");
    assert_eq!(
        documents[0]["parts"],
        serde_json::json!(["part-a", "part-b"])
    );
}
