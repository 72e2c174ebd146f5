//! Headless Chromium driven through chromedriver's WebDriver protocol
//! (W3C WebDriver over HTTP, plus chromedriver's route to the DevTools
//! protocol for network throttling). Debian's `chromium` and
//! `chromium-driver`; a missing one fails the test, naming the package.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
    /// One browser at a time in a test binary: the tests pace uploads and
    /// time stalls, and several Chromiums at once on two cores made the
    /// pages miss their own timers (a reconnect that never came within the
    /// test's wait).
    _turn: MutexGuard<'static, ()>,
}

static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Browser {
    pub fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: apt-get install -y {package} (scripts/test installs it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A test that failed while holding it poisoned it; the next may go.
        let turn = ONE_BROWSER_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let profile = tempfile::tempdir().unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser goes with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
            _turn: turn,
        };
        // The flags a closed network needs (no background traffic), and
        // --no-sandbox because the tests run as root.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
                    "--window-size=1000,760",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ]
            }
        }}});
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; returns its `value`, panics on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to chromedriver");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then
        // exactly Content-Length bytes.
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        while !response.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("chromedriver answer");
            response.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length from chromedriver: {head}"));
        let mut body = vec![0u8; length];
        stream
            .read_exact(&mut body)
            .expect("chromedriver answer body");
        let text = String::from_utf8_lossy(&body);
        let json_text: &str = &text;
        let json: Value = serde_json::from_str(json_text.trim()).unwrap_or_else(|e| {
            panic!("chromedriver answered {method} {path} with non-JSON ({e}): {text}")
        });
        if let Some(error) = json["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                json["value"]["message"]
            );
        }
        json["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({"url": url})),
        );
    }

    pub fn find(&self, css: &str) -> String {
        let value = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        value[ELEMENT_KEY].as_str().unwrap().to_owned()
    }

    /// Types into an element; for a file input, the text is a file's path.
    pub fn send_keys(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(json!({"text": text})),
        );
    }

    pub fn click(&self, element: &str) {
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            Some(json!({})),
        );
    }

    /// Runs JavaScript in the page and returns what it returns.
    pub fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    pub fn screenshot(&self, path: &Path) {
        let value = self.call("GET", &self.session_path("/screenshot"), None);
        let png = base64_decode(value.as_str().expect("screenshot data"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Limits how fast the page may send (DevTools network conditions).
    pub fn throttle_upload(&self, bytes_per_second: u64) {
        self.call(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            Some(json!({"cmd": "Network.enable", "params": {}})),
        );
        self.call(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            Some(
                json!({"cmd": "Network.emulateNetworkConditions", "params": {
                    "offline": false, "latency": 0,
                    "downloadThroughput": -1, "uploadThroughput": bytes_per_second
                }}),
            ),
        );
    }

    /// The handle of the current window (tab).
    pub fn window(&self) -> String {
        self.call("GET", &self.session_path("/window"), None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Opens a new tab and returns its handle (it does not switch to it).
    pub fn new_tab(&self) -> String {
        let value = self.call(
            "POST",
            &self.session_path("/window/new"),
            Some(json!({"type": "tab"})),
        );
        value["handle"].as_str().unwrap().to_owned()
    }

    pub fn switch_to(&self, handle: &str) {
        self.call(
            "POST",
            &self.session_path("/window"),
            Some(json!({"handle": handle})),
        );
    }

    /// Polls `check` (a JavaScript expression) until it is truthy.
    pub fn wait_for(&self, check: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.script(&format!("return ({check});"));
            if !(value.is_null() || value == false || value == "" || value == 0) {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText.slice(0, 600);");
                let trace =
                    self.script("return JSON.stringify(window.fileuploadProgress || null);");
                panic!("timed out waiting for {check}\npage: {page}\nbar values: {trace}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = self.session_path("");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &path, None)
            }));
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
