//! Several hosts, one pool, on a real distributed file system: each test
//! brings up its own GlusterFS volume, three client hosts (network
//! namespaces, each with its FUSE mount, its fileupload FastCGI daemon) and
//! a round-robin nginx in front (`scripts/multihost`), and talks to it as a
//! browser would, through the balancer. Host faults are real: a daemon
//! SIGKILLed, a host's gluster client killed, a host's network cut, the
//! brick restarted.
//!
//! Run by `scripts/test-multihost` (as root, with FUSE): every test fails
//! loudly when the harness cannot come up; none is skipped.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::site::free_port;
use common::{random_bytes, sha256_hex, wait_for};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/multihost");
/// The volume's `server.tcp-user-timeout`: how long a host that vanished
/// without a word keeps its locks.
const DEAD_CLIENT_SECS: u64 = 5;
const HOSTS: [char; 3] = ['a', 'b', 'c'];

/// One answer over HTTP/1.0 (so nothing comes chunked).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The host whose daemon answered (nginx's `$upstream_addr`).
    fn host(&self) -> char {
        upstream_host(self.header("X-Upstream").unwrap_or(""))
    }
}

fn upstream_host(upstream: &str) -> char {
    // `unix:/…/run/b.sock` (after a failed try: `unix:/…/a.sock, unix:/…/b.sock`)
    let last = upstream.rsplit(", ").next().unwrap_or("");
    last.strip_suffix(".sock")
        .and_then(|s| s.chars().last())
        .unwrap_or_else(|| panic!("no daemon named in X-Upstream: {upstream:?}"))
}

/// The storage host, three client hosts, their daemons and the balancer.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    host_ports: HashMap<char, u16>,
    env: HashMap<String, String>,
}

impl Cluster {
    fn up() -> Cluster {
        assert!(
            rustix::process::geteuid().is_root(),
            "the multi-host tests need root (namespaces, FUSE mounts): run scripts/test-multihost as root"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let host_ports: HashMap<char, u16> = HOSTS.iter().map(|h| (*h, free_port())).collect();
        let mut command = Command::new(SCRIPT);
        command
            .arg("up")
            .arg(dir.path())
            .env("MH_BIN", env!("CARGO_BIN_EXE_fileupload"))
            .env("MH_PORT", port.to_string())
            .env("MH_DEAD_CLIENT_SECS", DEAD_CLIENT_SECS.to_string());
        for (h, p) in &host_ports {
            command.env(format!("MH_PORT_{}", h.to_ascii_uppercase()), p.to_string());
        }
        let out = command.output().expect("run scripts/multihost");
        assert!(
            out.status.success(),
            "scripts/multihost up failed (it needs root, /dev/fuse, nginx and Debian's glusterfs packages):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("env")).expect("the harness's env file");
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Cluster {
            dir,
            port,
            host_ports,
            env,
        }
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the harness's env"))
    }

    fn pool(&self, host: char) -> PathBuf {
        PathBuf::from(self.var(&format!("POOL_{}", host.to_ascii_uppercase())))
    }

    fn pid(&self, what: &str, host: char) -> i32 {
        self.var(&format!("{what}_{}_PID", host.to_ascii_uppercase()))
            .parse()
            .expect("a pid")
    }

    /// `scripts/multihost CMD DIR ARGS...`, which must succeed.
    fn script(&self, cmd: &str, args: &[&str]) -> Output {
        let out = Command::new(SCRIPT)
            .arg(cmd)
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("run scripts/multihost");
        assert!(
            out.status.success(),
            "scripts/multihost {cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The balancer's port, or with `host` that host's own.
    fn port_of(&self, host: Option<char>) -> u16 {
        host.map_or(self.port, |h| self.host_ports[&h])
    }

    fn request(
        &self,
        host: Option<char>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port_of(host))).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut head = format!("{method} {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += &format!("Content-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).expect("send");
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(response.len());
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        Answer {
            status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
            headers: head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            body: response.get(split + 4..).unwrap_or_default().to_vec(),
        }
    }

    /// A status poll through the balancer (`None`) or one host.
    fn poll(&self, host: Option<char>, id: &str) -> Answer {
        let answer = self.request(
            host,
            "GET",
            &format!("/upload/status?X-Progress-ID={id}"),
            &[],
            b"",
        );
        assert_eq!(
            answer.status,
            200,
            "status of {id}: {answer:?}\n{}",
            self.logs()
        );
        answer
    }

    fn status(&self, host: Option<char>, id: &str) -> Value {
        self.poll(host, id).json()
    }

    /// Makes the balancer's next request go to `host`: nginx's round-robin
    /// (one worker, equal weights) goes a, b, c, a, ...; harmless polls
    /// move it on. The request itself still says where it went
    /// (`X-Upstream`), and the tests check that.
    fn steer(&self, host: char) {
        let next = |h: char| HOSTS[(HOSTS.iter().position(|x| *x == h).unwrap_or(0) + 1) % 3];
        for _ in 0..6 {
            if next(self.poll(None, "steering").host()) == host {
                return;
            }
        }
        panic!("the balancer's round-robin never came round to host {host}");
    }

    /// A form upload by curl, through the balancer or to one host.
    fn upload(&self, host: Option<char>, id: &str, file: &Path, rate: &str) -> Upload {
        let out = self.dir.path().join(format!("curl-{id}.out"));
        let headers = self.dir.path().join(format!("curl-{id}.headers"));
        let child = Command::new("curl")
            .args(["-s", "-o"])
            .arg(&out)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}", "--limit-rate", rate, "-F"])
            .arg(format!(
                "file=@{};type=application/octet-stream",
                file.display()
            ))
            .arg(format!(
                "http://127.0.0.1:{}/upload?X-Progress-ID={id}",
                self.port_of(host)
            ))
            .stdout(Stdio::piped())
            .spawn()
            .expect("run curl (apt-get install -y curl)");
        Upload {
            child,
            out,
            headers,
        }
    }

    fn data(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let data = random_bytes(len, seed);
        let path = self.dir.path().join(name);
        std::fs::write(&path, &data).expect("write data");
        (path, data)
    }

    /// Waits until the upload has stored some bytes, as seen from `host`.
    fn wait_receiving(&self, host: char, id: &str) -> u64 {
        wait_for(Duration::from_secs(20), || {
            let s = self.status(Some(host), id);
            let received = s["received"].as_u64().unwrap_or(0);
            (s["state"] == "uploading" && received > 0).then_some(received)
        })
        .unwrap_or_else(|| panic!("{id} never showed progress on host {host}\n{}", self.logs()))
    }

    /// Waits until `host` reports the upload interrupted; how long it took.
    fn wait_interrupted(&self, host: char, id: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        let last = wait_for(limit, || {
            let s = self.status(Some(host), id);
            (s["state"] == "error").then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "host {host} did not report {id} interrupted within {limit:?}: {}\n{}",
                self.status(Some(host), id),
                self.logs()
            )
        });
        assert_eq!(last["code"], "ERR_INTERRUPTED", "host {host}: {last}");
        assert!(
            last["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("interrupted")),
            "host {host}: {last}"
        );
        start.elapsed()
    }

    /// Waits until every host answers a status poll again: each gluster
    /// client reconnects on its own (it retries every 3 s), and until then
    /// its host answers 500 ERR_STORAGE, never a wrong status.
    fn wait_all_answer(&self, id: &str) {
        let back = wait_for(Duration::from_secs(30), || {
            HOSTS
                .iter()
                .all(|h| {
                    let answer = self.request(
                        Some(*h),
                        "GET",
                        &format!("/upload/status?X-Progress-ID={id}"),
                        &[],
                        b"",
                    );
                    assert!(
                        answer.status == 200
                            || (answer.status == 500 && answer.json()["code"] == "ERR_STORAGE"),
                        "host {h}: {answer:?}"
                    );
                    answer.status == 200
                })
                .then_some(())
        });
        assert!(back.is_some(), "a host never came back\n{}", self.logs());
    }

    /// gc as an operator runs it on `host`: its own network, its own
    /// mount, as the daemons' user.
    fn gc_on(&self, host: char) -> String {
        let pool = self.pool(host);
        let bin = self.dir.path().join("fileupload");
        let out = self.script(
            "on",
            &[
                &host.to_string(),
                "setpriv",
                "--reuid=www-data",
                "--regid=www-data",
                "--init-groups",
                "env",
                &format!("FILEUPLOAD_DIRECTORY={}", pool.display()),
                &bin.display().to_string(),
                "gc",
                "--max-age",
                "0",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "run/daemon-a.log",
            "run/daemon-b.log",
            "run/daemon-c.log",
            "nginx/error.log",
        ] {
            let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            text += &format!(
                "--- {name}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        text
    }

    /// tus: a creation through the balancer; the identifier and who made it.
    fn tus_create(&self, headers: &[(&str, &str)]) -> (String, char) {
        let mut all = vec![("Tus-Resumable", "1.0.0")];
        all.extend_from_slice(headers);
        let answer = self.request(None, "POST", "/upload/files", &all, b"");
        assert_eq!(answer.status, 201, "creation: {answer:?}");
        let location = answer.header("Location").expect("a Location");
        let id = location.rsplit('/').next().unwrap_or("").to_owned();
        assert!(!id.is_empty(), "{location}");
        (id, answer.host())
    }

    fn tus_patch(&self, host: Option<char>, id: &str, offset: u64, chunk: &[u8]) -> Answer {
        self.request(
            host,
            "PATCH",
            &format!("/upload/files/{id}"),
            &[
                ("Tus-Resumable", "1.0.0"),
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", &offset.to_string()),
            ],
            chunk,
        )
    }

    fn tus_offset(&self, host: Option<char>, id: &str) -> u64 {
        let head = self.request(
            host,
            "HEAD",
            &format!("/upload/files/{id}"),
            &[("Tus-Resumable", "1.0.0")],
            b"",
        );
        assert_eq!(head.status, 200, "HEAD {id}: {head:?}");
        head.header("Upload-Offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("no Upload-Offset: {head:?}"))
    }

    /// The upload's one file as stored, read through `host`'s mount.
    fn stored(&self, host: char, id: &str) -> Vec<u8> {
        std::fs::read(self.pool(host).join(id).join("file-1"))
            .unwrap_or_else(|e| panic!("{id}/file-1 on host {host}: {e}"))
    }

    /// The upload is done, as every host sees it, with this file.
    fn assert_done(&self, id: &str, data: &[u8]) {
        self.assert_done_on(&HOSTS, id, data);
    }

    /// The same, as the hosts still up see it.
    fn assert_done_on(&self, hosts: &[char], id: &str, data: &[u8]) {
        for &host in hosts {
            let s = self.status(Some(host), id);
            assert_eq!(s["state"], "done", "host {host}: {s}");
            assert_eq!(
                s["files"][0]["sha256"],
                sha256_hex(data),
                "host {host}: {s}"
            );
            assert!(
                self.stored(host, id) == data,
                "{id}'s bytes as host {host} reads them differ from what was sent"
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Everything by pid; namespaces and mounts gone before the temp
        // dir is removed.
        let out = Command::new(SCRIPT)
            .arg("down")
            .arg(self.dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/multihost down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("scripts/multihost down: {e}"),
        }
    }
}

/// A curl upload running.
struct Upload {
    child: Child,
    out: PathBuf,
    headers: PathBuf,
}

impl Upload {
    /// Its HTTP status (0: no answer), body and answering daemon
    /// (`None` when nginx gave no X-Upstream).
    fn finish(self, limit: Duration) -> (u16, String, Option<char>) {
        let mut child = self.child;
        let deadline = Instant::now() + limit;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("curl did not finish within {limit:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("curl");
        let code = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let headers = std::fs::read_to_string(&self.headers).unwrap_or_default();
        let host = headers
            .lines()
            .rev()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("X-Upstream"))
            .map(|(_, v)| upstream_host(v.trim()));
        (
            code,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            host,
        )
    }
}

fn sigkill(pid: i32) {
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL");
}

// ---- end to end, through the balancer ----------------------------------------

#[test]
fn progress_of_an_upload_on_a_polled_through_the_balancer_moves_then_done() {
    let cluster = Cluster::up();
    let (file, data) = cluster.data("progress.bin", 6 << 20, 1);
    cluster.steer('a');
    let upload = cluster.upload(None, "progress", &file, "1500k");
    // On b's own port: a poll through the balancer before curl's request
    // reached it would take a's turn.
    let mut seen = vec![cluster.wait_receiving('b', "progress")];
    let mut answered_by = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = cluster.poll(None, "progress");
        answered_by.insert(answer.host());
        let s = answer.json();
        if s["state"] == "done" {
            break;
        }
        if s["state"] == "uploading" {
            seen.push(s["received"].as_u64().unwrap_or(0));
        }
        assert_ne!(s["state"], "error", "{s}");
        assert!(Instant::now() < deadline, "never done: {s}");
        thread::sleep(Duration::from_millis(100));
    }
    let (code, body, host) = upload.finish(Duration::from_secs(10));
    assert_eq!(code, 200, "{body}");
    assert_eq!(host, Some('a'), "the upload went to host a");
    assert!(
        answered_by.contains(&'b') && answered_by.contains(&'c'),
        "the polls were answered by {answered_by:?}"
    );
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && distinct.len() >= 5,
        "received never went backwards and moved at least five times: {seen:?}"
    );
    cluster.assert_done("progress", &data);
}

#[test]
fn a_clear_landing_on_b_cancels_a_running_upload_on_a() {
    let cluster = Cluster::up();
    let (file, _) = cluster.data("cancel.bin", 8 << 20, 2);
    cluster.steer('a');
    let upload = cluster.upload(None, "cancel", &file, "1m");
    cluster.wait_receiving('b', "cancel");
    cluster.steer('b');
    let clear = cluster.request(
        None,
        "DELETE",
        "/upload/status?X-Progress-ID=cancel",
        &[],
        b"",
    );
    assert_eq!(clear.status, 200, "{clear:?}");
    assert_eq!(clear.host(), 'b', "the clear went to host b");
    let started = Instant::now();
    let (code, body, host) = upload.finish(Duration::from_secs(10));
    assert_eq!(host, Some('a'));
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("ERR_CANCELLED"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for host in HOSTS {
        assert_eq!(cluster.status(Some(host), "cancel")["state"], "starting");
        assert!(!cluster.pool(host).join("cancel").exists(), "host {host}");
    }
}

#[test]
fn a_second_upload_under_a_running_identifier_landing_on_b_gets_409() {
    let cluster = Cluster::up();
    let (file, data) = cluster.data("first.bin", 4 << 20, 3);
    cluster.steer('a');
    let upload = cluster.upload(None, "twice", &file, "1m");
    cluster.wait_receiving('c', "twice");
    let (other, _) = cluster.data("second.bin", 1000, 4);
    cluster.steer('b');
    let second = cluster.upload(None, "twice", &other, "10m");
    let (code, body, host) = second.finish(Duration::from_secs(20));
    assert_eq!(host, Some('b'), "the second upload went to host b");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("ERR_UPLOAD_RUNNING"), "{body}");
    let (code, body, host) = upload.finish(Duration::from_secs(20));
    assert_eq!((code, host), (200, Some('a')), "{body}");
    cluster.assert_done("twice", &data);
}

#[test]
fn gc_on_b_never_touches_a_running_upload_on_a() {
    let cluster = Cluster::up();
    // Something gc must remove, so that it is seen working.
    let (small, _) = cluster.data("old.bin", 1000, 5);
    let (code, body, _) = cluster
        .upload(None, "old", &small, "10m")
        .finish(Duration::from_secs(10));
    assert_eq!(code, 200, "{body}");
    let (file, data) = cluster.data("running.bin", 4 << 20, 6);
    cluster.steer('a');
    let upload = cluster.upload(None, "running", &file, "1m");
    cluster.wait_receiving('b', "running");
    let report = cluster.gc_on('b');
    assert!(
        !cluster.pool('a').join("old").exists(),
        "gc on b left old: {report}"
    );
    assert_eq!(cluster.status(None, "old")["state"], "starting");
    assert_eq!(
        cluster.status(Some('c'), "running")["state"],
        "uploading",
        "{report}"
    );
    let (code, body, host) = upload.finish(Duration::from_secs(20));
    assert_eq!((code, host), (200, Some('a')), "{body}");
    cluster.assert_done("running", &data);
}

#[test]
fn a_resumable_upload_whose_chunks_land_on_different_hosts_completes() {
    let cluster = Cluster::up();
    let data = random_bytes(3 << 20, 7);
    let (id, _) = cluster.tus_create(&[("Upload-Length", &data.len().to_string())]);
    let mut hosts = BTreeSet::new();
    let mut offset = 0;
    for chunk in data.chunks(256 << 10) {
        let answer = cluster.tus_patch(None, &id, offset, chunk);
        assert_eq!(answer.status, 204, "{answer:?}");
        offset += chunk.len() as u64;
        assert_eq!(
            answer.header("Upload-Offset"),
            Some(offset.to_string().as_str())
        );
        hosts.insert(answer.host());
    }
    assert_eq!(hosts.len(), 3, "the chunks landed on {hosts:?}");
    cluster.assert_done(&id, &data);
}

#[test]
fn parallel_partial_uploads_on_different_hosts_concatenate_byte_for_byte() {
    let cluster = Cluster::up();
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes((1 << 20) + i * 977, 8 + i as u64))
        .collect();
    let ids: Vec<String> = parts
        .iter()
        .map(|p| {
            cluster
                .tus_create(&[
                    ("Upload-Length", &p.len().to_string()),
                    ("Upload-Concat", "partial"),
                ])
                .0
        })
        .collect();
    // Each part in its own thread, as tus-js-client's parallelUploads does.
    let hosts: BTreeSet<char> = thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .zip(&ids)
            .map(|(part, id)| {
                let cluster = &cluster;
                scope.spawn(move || {
                    let mut hosts = Vec::new();
                    let mut offset = 0;
                    for chunk in part.chunks(128 << 10) {
                        let answer = cluster.tus_patch(None, id, offset, chunk);
                        assert_eq!(answer.status, 204, "{answer:?}");
                        offset += chunk.len() as u64;
                        hosts.push(answer.host());
                    }
                    hosts
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a part's thread"))
            .collect()
    });
    assert_eq!(hosts.len(), 3, "the parts' chunks landed on {hosts:?}");
    let urls: Vec<String> = ids.iter().map(|id| format!("/upload/files/{id}")).collect();
    let (final_id, _) =
        cluster.tus_create(&[("Upload-Concat", &format!("final;{}", urls.join(" ")))]);
    let whole: Vec<u8> = parts.concat();
    cluster.assert_done(&final_id, &whole);
}

// ---- faults ----------------------------------------------------------------

#[test]
fn daemon_on_a_sigkilled_mid_form_upload_b_reports_interrupted() {
    let cluster = Cluster::up();
    let (file, _) = cluster.data("killed.bin", 8 << 20, 11);
    cluster.steer('a');
    let upload = cluster.upload(None, "killed", &file, "1m");
    cluster.wait_receiving('b', "killed");
    sigkill(cluster.pid("DAEMON", 'a'));
    let took = cluster.wait_interrupted('b', "killed", Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (code, body, _) = upload.finish(Duration::from_secs(20));
    assert_ne!(code, 200, "{body}");
    // The balancer carries on with the hosts left.
    assert_eq!(cluster.status(None, "killed")["state"], "error");
    let (small, data) = cluster.data("after.bin", 100_000, 12);
    let (code, body, host) = cluster
        .upload(None, "after", &small, "10m")
        .finish(Duration::from_secs(20));
    assert_eq!(code, 200, "{body}");
    assert_ne!(host, Some('a'));
    assert_eq!(
        cluster.status(Some('c'), "after")["files"][0]["sha256"],
        sha256_hex(&data)
    );
}

#[test]
fn daemon_on_a_sigkilled_mid_resumable_upload_continues_on_b_from_the_stored_offset() {
    let cluster = Cluster::up();
    let (file, data) = cluster.data("tus.bin", 6 << 20, 13);
    let (id, _) = cluster.tus_create(&[("Upload-Length", &data.len().to_string())]);
    // The whole file in one PATCH to host a, slowly.
    let mut patch = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-X", "PATCH", "--limit-rate", "1m"])
        .args(["-H", "Tus-Resumable: 1.0.0"])
        .args(["-H", "Content-Type: application/offset+octet-stream"])
        .args(["-H", "Upload-Offset: 0"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "http://127.0.0.1:{}/upload/files/{id}",
            cluster.port_of(Some('a'))
        ))
        .spawn()
        .expect("curl");
    wait_for(Duration::from_secs(20), || {
        (cluster.tus_offset(Some('b'), &id) > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("no bytes stored\n{}", cluster.logs()));
    thread::sleep(Duration::from_millis(500));
    sigkill(cluster.pid("DAEMON", 'a'));
    let _ = patch.wait();
    // Not interrupted: resumable, from what reached the file.
    let s = cluster.status(Some('b'), &id);
    assert_eq!(s["state"], "uploading", "{s}");
    let offset = cluster.tus_offset(Some('b'), &id);
    assert!(offset > 0 && offset < data.len() as u64, "{offset}");
    assert!(
        cluster.stored('b', &id) == data[..offset as usize],
        "the stored bytes are the first {offset} sent"
    );
    let answer = cluster.tus_patch(Some('b'), &id, offset, &data[offset as usize..]);
    assert_eq!(answer.status, 204, "{answer:?}");
    cluster.assert_done_on(&['b', 'c'], &id, &data);
}

#[test]
fn gluster_client_of_a_killed_mid_upload_b_reports_interrupted() {
    let cluster = Cluster::up();
    let (file, _) = cluster.data("crash.bin", 8 << 20, 14);
    cluster.steer('a');
    let upload = cluster.upload(None, "crash", &file, "1m");
    cluster.wait_receiving('b', "crash");
    cluster.script("kill-client", &["a"]);
    let took = cluster.wait_interrupted('b', "crash", Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (code, body, _) = upload.finish(Duration::from_secs(30));
    assert_ne!(code, 200, "host a, its mount gone, cannot finish: {body}");
    assert_eq!(cluster.status(Some('c'), "crash")["state"], "error");
    let (small, data) = cluster.data("after.bin", 100_000, 15);
    let (code, body, _) = cluster
        .upload(Some('b'), "after", &small, "10m")
        .finish(Duration::from_secs(20));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        cluster.status(Some('c'), "after")["files"][0]["sha256"],
        sha256_hex(&data)
    );
}

/// The split brain of issue 14. A's client pauses mid-body (a phone in a
/// tunnel) while A's network is cut; the brick drops A's lock after
/// DEAD_CLIENT_SECS and B declares the upload interrupted; the network
/// comes back and A's gluster client reconnects, reopening A's descriptors
/// without the lock; then the client sends the rest. A must fail that
/// request rather than finish: no 200, no `done`, no status written.
#[test]
fn network_of_a_cut_mid_upload_b_takes_over_and_a_never_finishes_after_the_heal() {
    let cluster = Cluster::up();
    let data = random_bytes(2 << 20, 16);
    let form = common::Form::new().file("file", "cut.bin", "application/octet-stream", &data);
    let body = form.body();
    let half = body.len() / 2;
    cluster.steer('a');
    let mut stream = TcpStream::connect(("127.0.0.1", cluster.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST /upload?X-Progress-ID=cut HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(&body[..half]).expect("send");
    wait_for(Duration::from_secs(20), || {
        let s = cluster.status(Some('b'), "cut");
        (s["received"].as_u64().unwrap_or(0) >= half as u64 - 200_000).then_some(())
    })
    .unwrap_or_else(|| panic!("the first half never arrived\n{}", cluster.logs()));
    cluster.script("cut", &["a"]);
    let took = cluster.wait_interrupted('b', "cut", Duration::from_secs(DEAD_CLIENT_SECS + 10));
    assert!(
        took < Duration::from_secs(DEAD_CLIENT_SECS + 5),
        "B took over after {took:?}"
    );
    let declared = std::fs::read(cluster.pool('b').join("cut/status.json")).unwrap_or_default();
    cluster.script("heal", &["a"]);
    // A's client notices the dead connection at its next request, and
    // reconnects.
    cluster.wait_all_answer("cut");
    stream.write_all(&body[half..]).expect("send the rest");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let answer = String::from_utf8_lossy(&response).into_owned();
    let code: u16 = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    // A lost its lock: it must not answer done...
    assert_ne!(
        code, 200,
        "host a finished an upload host b had declared interrupted: {answer}"
    );
    // ... nor mark it done or write its status.
    for host in HOSTS {
        let s = cluster.status(Some(host), "cut");
        assert_eq!(s["state"], "error", "host {host} after the heal: {s}");
        assert_eq!(
            s["code"], "ERR_INTERRUPTED",
            "host {host} after the heal: {s}"
        );
    }
    let after = std::fs::read(cluster.pool('b').join("cut/status.json")).unwrap_or_default();
    assert!(
        after == declared,
        "host a rewrote status.json after losing its lock:\nbefore: {}\nafter: {}",
        String::from_utf8_lossy(&declared),
        String::from_utf8_lossy(&after)
    );
}

#[test]
fn brick_restarted_mid_upload_the_pool_stays_consistent_and_serves_on() {
    let cluster = Cluster::up();
    let (file, data) = cluster.data("brick.bin", 4 << 20, 17);
    cluster.steer('a');
    let upload = cluster.upload(None, "brick", &file, "1m");
    cluster.wait_receiving('b', "brick");
    cluster.script("restart-brick", &[]);
    let (code, body, _) = upload.finish(Duration::from_secs(90));
    cluster.wait_all_answer("brick");
    // However the upload ended, every host tells the same story, and a
    // done upload has exactly the bytes sent.
    let states: Vec<Value> = HOSTS
        .iter()
        .map(|h| cluster.status(Some(*h), "brick"))
        .collect();
    for s in &states {
        assert_eq!(s["state"], states[0]["state"], "{states:?}");
    }
    if code == 200 {
        cluster.assert_done("brick", &data);
    } else {
        assert_eq!(states[0]["state"], "error", "{code} {body}: {states:?}");
    }
    // After the restart the volume serves every host again.
    for host in HOSTS {
        let (small, data) = cluster.data(&format!("after-{host}.bin"), 200_000, 18);
        let id = format!("after-{host}");
        let (code, body, answered) = cluster
            .upload(Some(host), &id, &small, "10m")
            .finish(Duration::from_secs(30));
        assert_eq!((code, answered), (200, Some(host)), "{body}");
        cluster.assert_done(&id, &data);
    }
}
