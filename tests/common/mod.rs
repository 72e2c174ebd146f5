//! Helpers for running the built binary as a CGI program (environment +
//! stdin in, CGI response out), building multipart bodies, and looking at
//! the pool on disk.

#![allow(dead_code)] // each test file uses its own subset

pub mod fcgi;
pub mod in_process;
pub mod load;
pub mod site;
pub mod webdriver;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fileupload")
}

/// The program, or with `prelude` the program through
/// `bash -c "PRELUDE; exec fileupload ARGS"` (limits, wrappers, counters).
pub fn launcher(prelude: Option<&str>) -> Command {
    match prelude {
        Some(prelude) => {
            let mut command = Command::new("bash");
            command
                .arg("-c")
                .arg(format!("{prelude}; exec \"$0\" \"$@\""))
                .arg(bin());
            command
        }
        None => Command::new(bin()),
    }
}

/// A temporary pool directory.
pub struct TestPool {
    pub dir: tempfile::TempDir,
}

impl TestPool {
    pub fn new() -> TestPool {
        TestPool {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A CGI runner configured for this pool.
    pub fn cgi(&self) -> Cgi {
        Cgi::new().env("FILEUPLOAD_DIRECTORY", self.path().to_str().unwrap())
    }

    /// The CLI, configured for this pool.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", self.path())
            .args(args)
            .output()
            .expect("run fileupload")
    }

    /// Every file in the pool, with its size and SHA-256.
    pub fn snapshot(&self) -> BTreeMap<String, (u64, String)> {
        let mut out = BTreeMap::new();
        walk(self.path(), self.path(), &mut out);
        out
    }

    /// The names in one bucket.
    pub fn bucket_files(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.path().join(name)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// The entries at the top of the pool. The `.trash` folder, where
    /// deletions happen, counts only while something is left in it.
    pub fn top_level(&self) -> Vec<String> {
        let trash = self.path().join(".trash");
        let trash_is_empty = std::fs::symlink_metadata(&trash).is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none());
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !(name == ".trash" && trash_is_empty))
            .collect();
        names.sort();
        names
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            walk(root, &path, out);
        } else {
            let data = std::fs::read(&path).unwrap_or_default();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, (data.len() as u64, sha256_hex(&data)));
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A CGI invocation's environment.
#[derive(Clone)]
pub struct Cgi {
    env: Vec<(String, String)>,
    /// Shell commands run before the program (e.g. `ulimit -f 100`).
    prelude: Option<String>,
}

/// A parsed CGI response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
    pub exit: ExitStatus,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks the error answer: status, JSON shape, message, and that its
    /// `code` is well-formed and one of ours with this status.
    pub fn assert_error(&self, status: u16, message_part: &str) {
        assert_eq!(self.status, status, "status of {}", self.text());
        let json = self.json();
        assert_eq!(json["state"], "error", "{json}");
        assert_eq!(json["status"], status, "{json}");
        let message = json["error"].as_str().expect("error message");
        assert!(
            message.contains(message_part),
            "message {message:?} should contain {message_part:?}"
        );
        assert_code_shape(&json, status);
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        assert!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
    }

    /// [`Reply::assert_error`], and the answer's code is `code`.
    pub fn assert_error_code(&self, status: u16, code: &str, message_part: &str) {
        self.assert_error(status, message_part);
        assert_eq!(self.json()["code"], code, "{}", self.text());
    }

    /// The error answer's code.
    pub fn code(&self) -> String {
        let json = self.json();
        json["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {json}"))
            .to_owned()
    }
}

/// An error document's (answer's or status's) `code` matches
/// `^ERR_[A-Z_]+$`, is a code the program knows, and is the one for
/// `status`.
pub fn assert_code_shape(json: &Value, status: u16) {
    let code = json["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {json}"));
    let shape_ok = code.strip_prefix("ERR_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
    });
    assert!(shape_ok, "code {code:?} is not ERR_[A-Z_]+: {json}");
    let known = fileupload::ErrorCode::parse(code)
        .unwrap_or_else(|| panic!("code {code:?} is not one of the program's: {json}"));
    assert_eq!(known.status(), status, "{code} has another status: {json}");
}

/// Parses CGI output: `Status:` and headers, a blank line, the body.
pub fn parse_cgi(output: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(output)));
    let head = String::from_utf8_lossy(&output[..split]);
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.split("\r\n") {
        let (name, value) = line.split_once(": ").expect("header line");
        if name == "Status" {
            status = value[..3].parse().unwrap();
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    (status, headers, output[split + 4..].to_vec())
}

impl Cgi {
    pub fn new() -> Cgi {
        Cgi {
            env: vec![
                ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
                ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ],
            prelude: None,
        }
    }

    /// Runs the program through `bash -c "PRELUDE; exec fileupload"`.
    pub fn prelude(mut self, commands: &str) -> Cgi {
        self.prelude = Some(commands.to_owned());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Cgi {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// A variable this invocation sets.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn without(mut self, name: &str) -> Cgi {
        self.env.retain(|(n, _)| n != name);
        self
    }

    /// Sets method, PATH_INFO, QUERY_STRING and REQUEST_URI from `target`.
    pub fn request(self, method: &str, target: &str) -> Cgi {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        self.env("REQUEST_METHOD", method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("REQUEST_URI", target)
    }

    fn command(&self) -> Command {
        let mut command = launcher(self.prelude.as_deref());
        command.env_clear();
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Runs with `body` on stdin (CONTENT_LENGTH as set by the caller).
    pub fn run(&self, body: &[u8]) -> Reply {
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fileupload");
        let mut stdin = child.stdin.take().unwrap();
        let body = body.to_vec();
        // The program may answer before reading everything (413): ignore EPIPE.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let output = child.wait_with_output().expect("wait fileupload");
        feeder.join().unwrap();
        reply(output)
    }

    pub fn get(&self, target: &str) -> Reply {
        self.clone().request("GET", target).run(b"")
    }

    /// POSTs a form with its Content-Type and Content-Length.
    pub fn post_form(&self, target: &str, form: &Form) -> Reply {
        let body = form.body();
        self.clone()
            .request("POST", target)
            .env("CONTENT_TYPE", &form.content_type())
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(&body)
    }

    /// POSTs `body` (a form, cut or changed) with the form's Content-Type
    /// and the body's own length.
    pub fn post_body(&self, target: &str, form: &Form, body: &[u8]) -> Reply {
        self.clone()
            .request("POST", target)
            .env("CONTENT_TYPE", &form.content_type())
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(body)
    }

    /// Starts the program with stdin left open for the test to feed.
    pub fn spawn(&self) -> Child {
        self.command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fileupload")
    }
}

pub fn reply(output: Output) -> Reply {
    let (status, headers, body) = parse_cgi(&output.stdout);
    Reply {
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        exit: output.status,
    }
}

/// Waits for a spawned CGI process and parses its answer.
pub fn finish(mut child: Child) -> Reply {
    drop(child.stdin.take());
    // Everything was piped: wait_with_output reads both streams to their
    // ends (at once, so a full stderr cannot stall a large stdout).
    reply(child.wait_with_output().expect("wait fileupload"))
}

/// A multipart/form-data body under construction.
pub struct Form {
    pub boundary: String,
    parts: Vec<Vec<u8>>,
}

impl Form {
    pub fn new() -> Form {
        Form {
            boundary: "----fileuploadTestBoundary7MA4YWxk".into(),
            parts: Vec::new(),
        }
    }

    /// A file part; quotes and backslashes in `filename` are escaped as
    /// curl escapes them.
    pub fn file(mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) -> Form {
        let filename = filename.replace('\\', "\\\\").replace('"', "\\\"");
        let mut part = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n",
            self.boundary
        )
        .into_bytes();
        part.extend_from_slice(data);
        part.extend_from_slice(b"\r\n");
        self.parts.push(part);
        self
    }

    pub fn field(mut self, name: &str, value: &str) -> Form {
        let part = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
            self.boundary
        );
        self.parts.push(part.into_bytes());
        self
    }

    /// A part with raw header lines, for malformed input.
    pub fn raw_part(mut self, headers: &str, data: &[u8]) -> Form {
        let mut part = format!("--{}\r\n{headers}\r\n\r\n", self.boundary).into_bytes();
        part.extend_from_slice(data);
        part.extend_from_slice(b"\r\n");
        self.parts.push(part);
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    pub fn body(&self) -> Vec<u8> {
        let mut body = self.parts.concat();
        body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        body
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status of an upload, through CGI.
pub fn status_of(cgi: &Cgi, id: &str) -> Value {
    let reply = cgi.get(&format!("/upload/status?X-Progress-ID={id}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

pub fn path_of(json: &Value, file: usize) -> PathBuf {
    PathBuf::from(json["files"][file]["path"].as_str().expect("file path"))
}
