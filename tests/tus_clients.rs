//! Resumable uploads with real clients: tus-js-client 4.x under Node and
//! tuspy (tests/clients/, installed by scripts/install-clients at the
//! versions pinned there), each through the three ways fileupload is run:
//!
//! - `fileupload serve`, the development server;
//! - nginx + the FastCGI daemon (conf-examples/nginx-fastcgi.conf and the
//!   systemd units, as the README sets them up);
//! - nginx + fcgiwrap (conf-examples/nginx-fcgiwrap.conf with Debian's
//!   fcgiwrap units and the README's drop-in): a CGI process per request,
//!   so per PATCH, and no process remembers anything between two.
//!
//! After every upload the stored file is compared with the client's byte
//! for byte, and the status (`.../upload/status?X-Progress-ID=<id>`) must
//! say `done`, `"resumable": true`, the file name the client's metadata
//! gave, and the client's SHA-256. Each client prints every request it sent,
//! so a test also checks how the upload went: the number of PATCHes, their
//! offsets, where a resumed run went on from.
//!
//! A missing client fails the test, naming the install command; none is
//! ever skipped.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::site::*;

const MIB: usize = 1 << 20;

// ---- the clients -------------------------------------------------------------

/// Where scripts/install-clients puts the clients: the target directory
/// this test binary was built in (`${CARGO_TARGET_DIR:-target}`).
fn target_dir() -> PathBuf {
    Path::new(common::bin())
        .parent()
        .and_then(Path::parent)
        .expect("the binary's target directory")
        .to_path_buf()
}

fn clients_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Fails unless `installed` is a copy of the pin file `pins`, which
/// scripts/install-clients writes only after a successful install.
fn require_installed(client: &str, pins: &str, installed: &Path) {
    let wanted = std::fs::read(clients_source().join(pins)).unwrap();
    let have = std::fs::read(installed).unwrap_or_default();
    assert!(
        have == wanted,
        "{client}, as pinned in tests/clients/{pins}, is not installed in {} (or another \
         version is): run scripts/install-clients (scripts/test runs it)",
        installed.parent().unwrap_or(installed).display()
    );
}

fn tus_js_dir() -> PathBuf {
    let dir = target_dir().join("tus-clients");
    require_installed(
        "tus-js-client",
        "package-lock.json",
        &dir.join(".installed-package-lock.json"),
    );
    dir
}

fn tuspy_python() -> PathBuf {
    let venv = target_dir().join("tus-venv");
    require_installed(
        "tuspy",
        "requirements.txt",
        &venv.join(".installed-requirements.txt"),
    );
    venv.join("bin/python3")
}

/// A client's run: how it ended and the JSON it printed last.
struct Run {
    status: ExitStatus,
    json: Value,
    stderr: String,
}

/// Runs a client for at most `limit`; a run past it is killed (by its own
/// pid) and fails the test.
fn run_client(mut command: Command, what: &str, limit: Duration) -> Run {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {limit:?}: {}{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let json = last
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("{what} ({status}) printed no JSON: stdout {stdout:?}, stderr {stderr:?}")
        });
    Run {
        status,
        json,
        stderr,
    }
}

/// tests/clients/tus-js-upload.js with `args`, uploading `file` to the
/// site's tus endpoint.
fn tus_js(site: &Site, file: &Path, args: &[&str]) -> Run {
    let mut command = Command::new(require("node", "nodejs"));
    command
        .env("TUS_CLIENTS_DIR", tus_js_dir())
        .arg(clients_source().join("tus-js-upload.js"))
        .arg(site.url("/upload/files"))
        .arg(file)
        .args(args);
    run_client(command, "tus-js-client", Duration::from_secs(120))
}

/// tests/clients/tuspy-upload.py with `args`.
fn tuspy(site: &Site, file: &Path, args: &[&str]) -> Run {
    let mut command = Command::new(tuspy_python());
    command
        .arg(clients_source().join("tuspy-upload.py"))
        .arg(site.url("/upload/files"))
        .arg(file)
        .args(args);
    run_client(command, "tuspy", Duration::from_secs(120))
}

/// The run ended well; its JSON.
fn succeeded(site: &Site, run: &Run) -> Value {
    assert!(
        run.status.success() && run.json.get("error").is_none(),
        "the client failed ({}): {}\n{}\n{}",
        run.status,
        run.json,
        run.stderr,
        site.logs_text()
    );
    run.json.clone()
}

/// The requests a tus-js-client run sent with `method`.
fn sent<'a>(json: &'a Value, method: &str) -> Vec<&'a Value> {
    json["requests"]
        .as_array()
        .expect("the client's request list")
        .iter()
        .filter(|r| r["method"] == method)
        .collect()
}

fn offset(request: &Value, field: &str) -> Option<u64> {
    request[field].as_str().and_then(|v| v.parse().ok())
}

// ---- the transports ----------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Transport {
    Serve,
    NginxDaemon,
    NginxFcgiwrap,
}

/// A deployment on `transport`, with room for the tests' files (64 MiB,
/// the web server's body limit a MiB above, as the examples set it).
fn deploy(transport: Transport) -> Site {
    deploy_with(transport, None)
}

/// The same, with `key_file` as the upload key (`upload_key_file`), set
/// where the README says: the daemon's and the development server's
/// environment, and the fcgiwrap example's commented `fastcgi_param`.
fn deploy_with(transport: Transport, key_file: Option<&Path>) -> Site {
    let mut site = Site::new();
    site.max_size_mib = 64;
    site.server_limit_mib = 65;
    if let Some(key) = key_file {
        site.daemon_env.push((
            "FILEUPLOAD_UPLOAD_KEY_FILE".into(),
            key.display().to_string(),
        ));
    }
    match transport {
        Transport::Serve => start_serve(&mut site),
        Transport::NginxDaemon => {
            start_nginx_with_the_daemon(&mut site);
        }
        Transport::NginxFcgiwrap => {
            let extra: Vec<(&str, String)> = key_file
                .map(|key| {
                    (
                        "# fastcgi_param FILEUPLOAD_UPLOAD_KEY_FILE /etc/fileupload/key;",
                        format!(
                            "fastcgi_param FILEUPLOAD_UPLOAD_KEY_FILE {};",
                            key.display()
                        ),
                    )
                })
                .into_iter()
                .collect();
            start_nginx_fcgiwrap(&mut site, Some(&children_dropin()), &extra)
        }
    }
    site
}

/// A file of `len` pseudo-random bytes; its path and bytes.
fn data(site: &Site, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let bytes = common::random_bytes(len, seed);
    let path = site.path(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// The identifier in an upload URL, which must be an absolute
/// `.../upload/files/<identifier>` under the site.
fn identifier(site: &Site, url: &str) -> String {
    let base = site.url("/upload/files/");
    let id = url
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("upload URL {url:?} is not under {base:?}"));
    assert!(
        !id.is_empty() && !id.contains('/') && !id.contains('?'),
        "upload URL {url:?}"
    );
    id.to_owned()
}

/// The upload at `url` is complete: the status says so with the client's
/// SHA-256 and file name, and the stored file is the client's, byte for
/// byte.
fn assert_stored(site: &Site, url: &str, file: &Path, bytes: &[u8]) {
    let id = identifier(site, url);
    let status = site.status(&id);
    assert_eq!(status["state"], "done", "{status}\n{}", site.logs_text());
    assert_eq!(status["resumable"], true, "{status}");
    let entry = &status["files"][0];
    assert_eq!(
        entry["sha256"],
        common::sha256_hex(bytes).as_str(),
        "{status}"
    );
    assert_eq!(entry["size"], bytes.len() as u64, "{status}");
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_eq!(entry["filename"], name, "the metadata's filename: {status}");
    let path = entry["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path: {status}"));
    let stored = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(stored.len(), bytes.len(), "stored length");
    if let Some(at) = stored.iter().zip(bytes).position(|(a, b)| a != b) {
        panic!("the stored file differs from the client's at byte {at}");
    }
}

/// The upload is paused between two runs: resumable, `uploading` (never
/// `interrupted` or an error), holding `received` bytes of `size`, at
/// most `at_most`. Waits (15 s at most) until the server has seen the dead
/// request end: the same count twice, half a second apart.
fn assert_paused(site: &Site, url: &str, size: usize, at_most: usize) -> u64 {
    let id = identifier(site, url);
    let mut last = None;
    let seen = common::wait_for(Duration::from_secs(15), || {
        thread::sleep(Duration::from_millis(500));
        let status = site.status(&id);
        let received = status["received"].as_u64().unwrap_or(0);
        let settled = status["state"] == "uploading" && received > 0 && last == Some(received);
        last = Some(received);
        settled.then_some((status, received))
    });
    let (status, received) = seen.unwrap_or_else(|| {
        panic!(
            "the paused upload's status: {}\n{}",
            site.status(&id),
            site.logs_text()
        )
    });
    assert_eq!(status["resumable"], true, "{status}");
    assert_eq!(status["size"], size as u64, "{status}");
    assert!(received <= at_most as u64, "{status}");
    received
}

// ---- the cases ---------------------------------------------------------------

/// tus 1.0, the whole file in one PATCH (tus-js-client's default).
fn tus_v1_one_patch(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "one-patch.bin", 5 * MIB + 123, 1);
    let json = succeeded(&site, &tus_js(&site, &file, &[]));
    let posts = sent(&json, "POST");
    assert_eq!(posts.len(), 1, "{json}");
    assert_eq!(posts[0]["status"], 201, "{json}");
    assert_eq!(offset(posts[0], "length"), Some(bytes.len() as u64));
    let patches = sent(&json, "PATCH");
    assert_eq!(patches.len(), 1, "{json}");
    assert_eq!(patches[0]["status"], 204, "{json}");
    assert_eq!(offset(patches[0], "offset"), Some(0));
    assert_eq!(
        offset(patches[0], "responseOffset"),
        Some(bytes.len() as u64)
    );
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// `chunkSize: 8 MiB`: a PATCH per chunk, each from the offset the last
/// one's answer gave.
fn chunks_of_8_mib(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "chunks.bin", 20 * MIB + 4321, 2);
    let chunk = 8 * MIB;
    let json = succeeded(
        &site,
        &tus_js(&site, &file, &["--chunk-size", &chunk.to_string()]),
    );
    let patches = sent(&json, "PATCH");
    let offsets: Vec<Option<u64>> = patches.iter().map(|p| offset(p, "offset")).collect();
    let expected: Vec<Option<u64>> = (0..3).map(|i| Some((i * chunk) as u64)).collect();
    assert_eq!(offsets, expected, "{json}");
    for (i, patch) in patches.iter().enumerate() {
        assert_eq!(patch["status"], 204, "{json}");
        let end = ((i + 1) * chunk).min(bytes.len()) as u64;
        assert_eq!(offset(patch, "responseOffset"), Some(end), "{json}");
    }
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// `parallelUploads: 4`, over the concatenation extension: four partial
/// uploads (`Upload-Concat: partial`), then a final one that names them
/// (`Upload-Concat: final;<url> <url> ...`), which must become ONE file in
/// the pool while the partial ones are removed.
fn parallel_uploads_4(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "parallel.bin", 6 * MIB + 77, 3);
    let json = succeeded(&site, &tus_js(&site, &file, &["--parallel", "4"]));
    let posts = sent(&json, "POST");
    let partial: Vec<&&Value> = posts.iter().filter(|p| p["concat"] == "partial").collect();
    assert_eq!(partial.len(), 4, "{json}");
    let finals: Vec<&&Value> = posts
        .iter()
        .filter(|p| {
            p["concat"]
                .as_str()
                .is_some_and(|c| c.starts_with("final;"))
        })
        .collect();
    assert_eq!(finals.len(), 1, "{json}");
    assert_eq!(finals[0]["status"], 201, "{json}");
    assert_eq!(sent(&json, "PATCH").len(), 4, "{json}");
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
    for part in &partial {
        // The Location header as sent: an absolute path.
        let location = part["location"]
            .as_str()
            .unwrap_or_else(|| panic!("{json}"));
        let url = format!("http://127.0.0.1:{}{location}", site.port);
        let id = identifier(&site, &url);
        assert!(
            !site.pool.join(&id).exists(),
            "the partial upload {id} is still in the pool"
        );
    }
}

/// `uploadLengthDeferred`: created with `Upload-Defer-Length: 1` from a
/// stream whose length the client learns only at its end; the last PATCH
/// carries `Upload-Length`.
fn upload_length_deferred(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "deferred.bin", 3 * MIB + 999, 4);
    let json = succeeded(
        &site,
        &tus_js(
            &site,
            &file,
            &["--defer-length", "--chunk-size", &MIB.to_string()],
        ),
    );
    let posts = sent(&json, "POST");
    assert_eq!(posts.len(), 1, "{json}");
    assert_eq!(posts[0]["length"], Value::Null, "{json}");
    let patches = sent(&json, "PATCH");
    assert_eq!(patches.len(), 4, "{json}");
    let lengths: Vec<Option<u64>> = patches.iter().map(|p| offset(p, "length")).collect();
    assert_eq!(
        lengths,
        [None, None, None, Some(bytes.len() as u64)],
        "{json}"
    );
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// A run killed mid-PATCH (SIGKILL, nothing cleaned up), then a new run of
/// the client that finds the upload in its file-based URL storage
/// (`findPreviousUploads`) and resumes it (`resumeFromPreviousUpload`):
/// HEAD for the server's offset, then PATCH from there.
fn killed_mid_upload_then_resumed(transport: Transport, protocol: &str) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "killed.bin", 24 * MIB + 5, 5);
    let storage = site.path("url-storage");
    std::fs::create_dir(&storage).unwrap();
    let storage = storage.to_str().unwrap();
    let stop = 6 * MIB;
    let stop_arg = stop.to_string();
    let common_args = ["--protocol", protocol, "--storage", storage];
    let first = tus_js(
        &site,
        &file,
        &[&common_args[..], &["--stop-after", &stop_arg]].concat(),
    );
    assert_eq!(
        first.status.signal(),
        Some(9),
        "the first run should have been killed: {} {}\n{}",
        first.json,
        first.stderr,
        site.logs_text()
    );
    assert_eq!(first.json["stopped"], true, "{}", first.json);
    assert_eq!(first.json["sent"], stop as u64, "{}", first.json);
    let url = first.json["url"].as_str().unwrap().to_owned();
    let held = assert_paused(&site, &url, bytes.len(), stop);

    let json = succeeded(
        &site,
        &tus_js(&site, &file, &[&common_args[..], &["--resume"]].concat()),
    );
    assert_eq!(json["resumed"], true, "{json}");
    assert_eq!(json["url"], url.as_str(), "the same upload, resumed");
    let requests = json["requests"].as_array().unwrap();
    assert_eq!(requests[0]["method"], "HEAD", "{json}");
    assert_eq!(
        offset(&requests[0], "responseOffset"),
        Some(held),
        "HEAD's offset is the one the status gave: {json}"
    );
    assert!(sent(&json, "POST").is_empty(), "no new upload: {json}");
    let patches = sent(&json, "PATCH");
    assert_eq!(patches.len(), 1, "{json}");
    assert_eq!(offset(patches[0], "offset"), Some(held), "{json}");
    assert_stored(&site, &url, &file, &bytes);
}

fn tus_v1_killed_mid_upload_then_resumed(transport: Transport) {
    killed_mid_upload_then_resumed(transport, "tus-v1");
}

/// tuspy, 1 MiB chunks with an `Upload-Checksum` (sha1) each: a first run
/// stops after two chunks, a second run finds the URL in tuspy's
/// FileStorage, asks the offset (HEAD) and sends the rest.
fn tuspy_chunks_then_resume(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "tuspy.bin", 5 * MIB + 123, 6);
    let storage = site.path("url-storage");
    std::fs::create_dir(&storage).unwrap();
    let storage = storage.to_str().unwrap();
    let chunk = MIB.to_string();
    let args = ["--chunk-size", &chunk, "--checksum", "--storage", storage];
    let two_chunks = (2 * MIB).to_string();
    let first = succeeded(
        &site,
        &tuspy(
            &site,
            &file,
            &[&args[..], &["--stop-after", &two_chunks]].concat(),
        ),
    );
    assert_eq!(first["stopped"], true, "{first}");
    assert_eq!(first["chunks"], 2, "{first}");
    assert_eq!(first["offset"], 2 * MIB as u64, "{first}");
    let url = first["url"].as_str().unwrap().to_owned();
    let held = assert_paused(&site, &url, bytes.len(), 2 * MIB);
    assert_eq!(held, 2 * MIB as u64, "both chunks were acknowledged");

    let second = succeeded(
        &site,
        &tuspy(&site, &file, &[&args[..], &["--resume"]].concat()),
    );
    assert_eq!(second["url"], url.as_str(), "{second}");
    assert_eq!(second["resumed_from"], 2 * MIB as u64, "{second}");
    assert_eq!(second["offset"], bytes.len() as u64, "{second}");
    assert_eq!(second["chunks"], 4, "{second}");
    assert_stored(&site, &url, &file, &bytes);
}

/// tus-js-client's `protocol: 'ietf-draft-03'` or `'ietf-draft-05'`
/// (`Upload-Draft-Interop-Version` 5 or 6, no `Tus-Resumable`), in 2 MiB
/// chunks: created with `Upload-Complete: ?0` and the `Upload-Length`;
/// version 6 appends with `application/partial-upload`, version 5 with no
/// content type. NEEDS the server's IETF-draft support.
///
/// tus-js-client 4.3.1 under Node marks an append `Upload-Complete: ?1`
/// only when it starts at offset 0 and holds the whole file (its file
/// source computes "done" from the slice's size alone): chunked, or after a
/// resume, even the last append says `?0`. The server must end the upload
/// when the offset reaches the `Upload-Length` given at creation, as tusd
/// does, or this client never finishes a chunked IETF upload.
fn ietf_draft(transport: Transport, protocol: &str) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "ietf.bin", 5 * MIB + 321, 7);
    let chunk = 2 * MIB;
    let json = succeeded(
        &site,
        &tus_js(
            &site,
            &file,
            &["--protocol", protocol, "--chunk-size", &chunk.to_string()],
        ),
    );
    let posts = sent(&json, "POST");
    assert_eq!(posts.len(), 1, "{json}");
    assert_eq!(posts[0]["complete"], "?0", "{json}");
    assert_eq!(offset(posts[0], "length"), Some(bytes.len() as u64));
    assert!(
        matches!(posts[0]["status"].as_u64(), Some(200..=299)),
        "{json}"
    );
    let patches = sent(&json, "PATCH");
    assert_eq!(patches.len(), 3, "{json}");
    let content_type = match protocol {
        "ietf-draft-05" => Value::from("application/partial-upload"),
        _ => Value::Null,
    };
    for (i, patch) in patches.iter().enumerate() {
        assert_eq!(offset(patch, "offset"), Some((i * chunk) as u64), "{json}");
        assert_eq!(patch["contentType"], content_type, "{json}");
        assert!(
            matches!(patch["status"].as_u64(), Some(200..=299)),
            "{json}"
        );
    }
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// The same in one append, the whole file: the one case where
/// tus-js-client says `Upload-Complete: ?1`.
fn ietf_draft_one_append(transport: Transport, protocol: &str) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "ietf-one.bin", 3 * MIB + 33, 8);
    let json = succeeded(&site, &tus_js(&site, &file, &["--protocol", protocol]));
    let patches = sent(&json, "PATCH");
    assert_eq!(patches.len(), 1, "{json}");
    assert_eq!(patches[0]["complete"], "?1", "{json}");
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

fn ietf_draft_03_one_append(transport: Transport) {
    ietf_draft_one_append(transport, "ietf-draft-03");
}

fn ietf_draft_05_one_append(transport: Transport) {
    ietf_draft_one_append(transport, "ietf-draft-05");
}

fn ietf_draft_03(transport: Transport) {
    ietf_draft(transport, "ietf-draft-03");
}

fn ietf_draft_05(transport: Transport) {
    ietf_draft(transport, "ietf-draft-05");
}

/// The IETF draft's offset retrieval (HEAD) after a killed run, as with
/// tus 1.0. NEEDS the server's IETF-draft support.
fn ietf_draft_05_killed_mid_upload_then_resumed(transport: Transport) {
    killed_mid_upload_then_resumed(transport, "ietf-draft-05");
}

/// tus-js-client's `overridePatchMethod`, for servers that cannot pass
/// PATCH: each chunk is a POST with `X-HTTP-Method-Override: PATCH`.
fn tus_v1_patch_method_override(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "override.bin", 3 * MIB + 3, 9);
    let json = succeeded(
        &site,
        &tus_js(
            &site,
            &file,
            &["--override-patch", "--chunk-size", &(2 * MIB).to_string()],
        ),
    );
    assert!(sent(&json, "PATCH").is_empty(), "{json}");
    let overrides: Vec<&Value> = sent(&json, "POST")
        .into_iter()
        .filter(|p| p["methodOverride"] == "PATCH")
        .collect();
    assert_eq!(overrides.len(), 2, "{json}");
    for (i, chunk) in overrides.iter().enumerate() {
        assert_eq!(offset(chunk, "offset"), Some((i * 2 * MIB) as u64));
        assert_eq!(chunk["status"], 204, "{json}");
    }
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// `uploadDataDuringCreation` (creation-with-upload): the first 2 MiB
/// chunk is the creating POST's body, and the PATCHes go on from the
/// offset its answer gave.
fn tus_v1_creation_with_upload(transport: Transport) {
    let site = deploy(transport);
    let (file, bytes) = data(&site, "with-upload.bin", 5 * MIB + 55, 10);
    let chunk = 2 * MIB;
    let json = succeeded(
        &site,
        &tus_js(
            &site,
            &file,
            &[
                "--upload-during-creation",
                "--chunk-size",
                &chunk.to_string(),
            ],
        ),
    );
    let posts = sent(&json, "POST");
    assert_eq!(posts.len(), 1, "{json}");
    assert_eq!(posts[0]["contentType"], "application/offset+octet-stream");
    assert_eq!(posts[0]["status"], 201, "{json}");
    assert_eq!(offset(posts[0], "responseOffset"), Some(chunk as u64));
    let offsets: Vec<Option<u64>> = sent(&json, "PATCH")
        .iter()
        .map(|p| offset(p, "offset"))
        .collect();
    assert_eq!(
        offsets,
        [Some(chunk as u64), Some(2 * chunk as u64)],
        "{json}"
    );
    assert_stored(&site, json["url"].as_str().unwrap(), &file, &bytes);
}

/// With an upload key, creation takes the signed identifier the
/// application issued (`fileupload new-id`), given as an `X-Progress-ID`
/// header: the upload URL carries it, and the status answers under it.
/// Without one, creation is refused (403).
fn signed_identifier_in_a_header(transport: Transport) {
    let keys = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        keys.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let key = keys.path().join("key");
    std::fs::write(&key, "a key for the tus client tests\n").unwrap();
    run_chown(&key);
    let site = deploy_with(transport, Some(&key));
    let minted = Command::new(&site.bin)
        .env_clear()
        .env("FILEUPLOAD_UPLOAD_KEY_FILE", &key)
        .arg("new-id")
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let id = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let (file, bytes) = data(&site, "signed.bin", 2 * MIB + 22, 11);

    let refused = tus_js(&site, &file, &[]);
    assert!(!refused.status.success(), "{}", refused.json);
    assert_eq!(
        sent(&refused.json, "POST")[0]["status"],
        403,
        "{}",
        refused.json
    );
    assert!(sent(&refused.json, "PATCH").is_empty(), "{}", refused.json);

    let header = format!("X-Progress-ID: {id}");
    let json = succeeded(&site, &tus_js(&site, &file, &["--header", &header]));
    let url = json["url"].as_str().unwrap();
    assert_eq!(
        identifier(&site, url),
        id,
        "the Location carries the signed identifier"
    );
    assert_stored(&site, url, &file, &bytes);
}

/// Every case through every transport, each its own test
/// (`serve::tus_v1_one_patch`, `nginx_daemon::...`, `nginx_fcgiwrap::...`).
macro_rules! through_each_transport {
    ($($case:ident),* $(,)?) => {
        mod serve {
            $(#[test] fn $case() { super::$case(super::Transport::Serve) })*
        }
        mod nginx_daemon {
            $(#[test] fn $case() { super::$case(super::Transport::NginxDaemon) })*
        }
        mod nginx_fcgiwrap {
            $(#[test] fn $case() { super::$case(super::Transport::NginxFcgiwrap) })*
        }
    };
}

through_each_transport!(
    tus_v1_one_patch,
    chunks_of_8_mib,
    parallel_uploads_4,
    upload_length_deferred,
    tus_v1_killed_mid_upload_then_resumed,
    tus_v1_patch_method_override,
    tus_v1_creation_with_upload,
    signed_identifier_in_a_header,
    tuspy_chunks_then_resume,
    ietf_draft_03,
    ietf_draft_05,
    ietf_draft_03_one_append,
    ietf_draft_05_one_append,
    ietf_draft_05_killed_mid_upload_then_resumed,
);

/// The clients are there at the pinned versions, and they are the ones
/// the scripts load: what the tests above rely on.
#[test]
fn the_clients_are_installed_at_the_pinned_versions() {
    let package: Value = serde_json::from_str(
        &std::fs::read_to_string(clients_source().join("package.json")).unwrap(),
    )
    .unwrap();
    let pinned = package["dependencies"]["tus-js-client"].as_str().unwrap();
    assert!(
        pinned.starts_with("4.") && pinned.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "tus-js-client must be pinned to one 4.x version: {pinned}"
    );
    let installed: Value = serde_json::from_str(
        &std::fs::read_to_string(tus_js_dir().join("node_modules/tus-js-client/package.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(installed["version"], pinned);

    let requirements = std::fs::read_to_string(clients_source().join("requirements.txt")).unwrap();
    let tuspy_pin = requirements
        .lines()
        .find_map(|l| l.strip_prefix("tuspy=="))
        .expect("requirements.txt pins tuspy");
    let out = Command::new(tuspy_python())
        .args([
            "-c",
            "import importlib.metadata as m, tusclient; print(m.version('tuspy'))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tuspy_pin);

    // Run without the install, the scripts say what to do.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(require("node", "nodejs"))
        .env("TUS_CLIENTS_DIR", empty.path())
        .arg(clients_source().join("tus-js-upload.js"))
        .args(["http://127.0.0.1:1/upload/files", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run scripts/install-clients"),
        "{out:?}"
    );
}
