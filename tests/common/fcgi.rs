//! A FastCGI client for tests, and a daemon started on a temporary socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Form, Reply, TestPool, launcher, parse_cgi, random_bytes, status_of, wait_for};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    assert!(
        content.len() <= 65535,
        "a FastCGI record carries at most 65535 bytes"
    );
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

pub fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
    let mut body = role.to_be_bytes().to_vec();
    body.extend_from_slice(&[u8::from(keep_conn), 0, 0, 0, 0, 0]);
    record(BEGIN_REQUEST, id, &body)
}

pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        for len in [name.len(), value.len()] {
            if len < 128 {
                out.push(len as u8);
            } else {
                out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// BEGIN_REQUEST and PARAMS for one request.
pub fn request_head(id: u16, params: &[(&str, &str)], keep_conn: bool) -> Vec<u8> {
    let mut out = begin(id, 1, keep_conn);
    for chunk in encode_pairs(params).chunks(65535) {
        out.extend(record(PARAMS, id, chunk));
    }
    out.extend(record(PARAMS, id, &[]));
    out
}

/// STDIN records carrying `body`, and the empty one that ends it.
pub fn stdin_records(id: u16, body: &[u8]) -> Vec<u8> {
    let mut out = stdin_data(id, body);
    out.extend(record(STDIN, id, &[]));
    out
}

/// STDIN records carrying `body`, without the end.
pub fn stdin_data(id: u16, body: &[u8]) -> Vec<u8> {
    body.chunks(65535)
        .flat_map(|chunk| record(STDIN, id, chunk))
        .collect()
}

#[derive(Debug)]
pub struct Record {
    pub kind: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Reads one record; `None` at end of stream.
pub fn read_record(stream: &mut impl Read) -> Option<Record> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).ok()?;
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut content = vec![0u8; len + usize::from(header[6])];
    stream.read_exact(&mut content).ok()?;
    content.truncate(len);
    Some(Record {
        kind: header[1],
        id: u16::from_be_bytes([header[2], header[3]]),
        content,
    })
}

/// Reads STDOUT up to END_REQUEST; returns the CGI response and the
/// END_REQUEST protocol status.
pub fn read_response(stream: &mut impl Read, id: u16) -> (Reply, u8) {
    let mut stdout = Vec::new();
    loop {
        let record = read_record(stream).expect("connection ended before END_REQUEST");
        assert_eq!(record.id, id, "record for another request: {record:?}");
        match record.kind {
            STDOUT => stdout.extend_from_slice(&record.content),
            END_REQUEST => {
                let (status, headers, body) = parse_cgi(&stdout);
                let reply = Reply {
                    status,
                    headers,
                    body,
                    stderr: String::new(),
                    exit: std::process::ExitStatus::default(),
                };
                return (reply, record.content[4]);
            }
            other => panic!("unexpected record type {other}"),
        }
    }
}

/// CGI-style parameters for a request to `target` (path and query).
pub fn params_for(method: &str, target: &str) -> Vec<(String, String)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("REQUEST_METHOD".into(), method.into()),
        ("SCRIPT_NAME".into(), path.into()),
        ("REQUEST_URI".into(), target.into()),
        ("QUERY_STRING".into(), query.into()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
    ]
}

/// The daemon: `fileupload --listen unix:<dir>/fcgi.sock`, stopped on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(pool: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(pool, env, None)
    }

    /// With `prelude`, through `bash -c "PRELUDE; exec fileupload ..."`.
    pub fn start_with(pool: &Path, env: &[(&str, &str)], prelude: Option<&str>) -> Daemon {
        Daemon::start_full(pool, env, prelude, &[])
    }

    /// With more command-line options before `--listen`.
    pub fn start_with_args(pool: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        Daemon::start_full(pool, env, None, args)
    }

    fn start_full(
        pool: &Path,
        env: &[(&str, &str)],
        prelude: Option<&str>,
        args: &[&str],
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fcgi.sock");
        let log = dir.path().join("daemon.log");
        let listen = format!("unix:{}", socket.display());
        let mut command = launcher(prelude);
        command
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool)
            .envs(env.iter().copied())
            .args(args)
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("start fileupload --listen");
        Daemon::adopt(child, socket, log, dir)
    }

    /// Starts a 1 MiB upload under `id` on a new connection, sends the first
    /// `sent` bytes of its body and returns once the pool's status counts
    /// them: the point at which fault tests cut, abort or kill.
    pub fn begin_partial_upload(
        &self,
        pool: &TestPool,
        id: &str,
        seed: u64,
        sent: usize,
    ) -> UnixStream {
        let form = Form::new().file(
            "f",
            "partial.bin",
            "application/octet-stream",
            &random_bytes(1 << 20, seed),
        );
        let body = form.body();
        let mut stream = self.connect();
        let target = format!("/upload?X-Progress-ID={id}");
        let mut bytes = upload_head(&form, &target, body.len(), false);
        bytes.extend(stdin_data(1, &body[..sent]));
        stream.write_all(&bytes).unwrap();
        wait_for(Duration::from_secs(10), || {
            (status_of(&pool.cgi(), id)["received"] == sent).then_some(())
        })
        .expect("upload never started");
        stream
    }

    /// Adopts a daemon started otherwise (e.g. with a socket on stdin).
    pub fn adopt(child: Child, socket: PathBuf, log: PathBuf, dir: tempfile::TempDir) -> Daemon {
        let daemon = Daemon {
            child,
            socket,
            log,
            _dir: dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon never listened: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("connect to daemon");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines after the start-up line.
    pub fn log_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| !l.starts_with("fileupload: serving FastCGI"))
            .map(str::to_owned)
            .collect()
    }

    /// One complete request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut params = params_for(method, target);
        for (k, v) in extra {
            params.push((k.to_string(), v.to_string()));
        }
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut stream = self.connect();
        let mut bytes = request_head(1, &pairs, false);
        bytes.extend(stdin_records(1, body));
        // The server may answer (413) and close before taking the whole
        // body, as a web server also allows: write from a thread.
        let mut writer = stream.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        });
        let reply = read_response(&mut stream, 1).0;
        drop(stream);
        let _ = feeder.join();
        reply
    }

    /// POSTs a form with its Content-Type and Content-Length.
    pub fn post_form(&self, target: &str, form: &Form) -> Reply {
        let body = form.body();
        let length = body.len().to_string();
        self.request(
            "POST",
            target,
            &[
                ("CONTENT_TYPE", &form.content_type()),
                ("CONTENT_LENGTH", &length),
            ],
            &body,
        )
    }

    pub fn get(&self, target: &str) -> Reply {
        self.request("GET", target, &[], b"")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Started through a prelude that execs a tracer (`strace -f`),
            // the child is the tracer and fileupload its child: a tracer
            // that is killed lets its tracee go on running, so the tracee
            // is stopped first, by its pid.
            let pid = self.child.id();
            let tracees = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for tracee in tracees.split_whitespace().filter_map(|t| t.parse().ok()) {
                if let Some(tracee) = rustix::process::Pid::from_raw(tracee) {
                    let _ = rustix::process::kill_process(tracee, rustix::process::Signal::KILL);
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// BEGIN_REQUEST and PARAMS of a POST of `form` (whose body is `body_len`
/// bytes) to `target`, as request 1.
pub fn upload_head(form: &Form, target: &str, body_len: usize, keep_conn: bool) -> Vec<u8> {
    let mut params = params_for("POST", target);
    params.push(("CONTENT_TYPE".into(), form.content_type()));
    params.push(("CONTENT_LENGTH".into(), body_len.to_string()));
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    request_head(1, &pairs, keep_conn)
}
