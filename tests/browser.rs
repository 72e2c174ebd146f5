//! The demo page in headless Chromium: a real browser uploads, the bar
//! moves through values the server's status gave, a second tab watching the
//! same identifier sees the same progress, the SHA-256 shown is the file's,
//! and a cancel clears the upload on the server. The page runs as
//! `fileupload serve` serves it, and unchanged as nginx serves it in front
//! of the FastCGI daemon. Screenshots go to the test output folder
//! (target/tmp/browser/).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::site::{Site, start_nginx_fastcgi, start_systemd_daemon};
use common::webdriver::Browser;
use common::*;

/// `fileupload serve` on a free port.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(pool: &Path) -> Serve {
        Serve::start_with(pool, &[])
    }

    /// With more settings in its environment.
    fn start_with(pool: &Path, settings: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool)
            .env("FILEUPLOAD_PROGRESS_INTERVAL", "100ms")
            .envs(settings.iter().copied())
            .args(["serve", "--http", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fileupload serve");
        // It says where to point the browser.
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        Serve { child, url }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser")
}

const BAR: &str = "document.getElementById('bar').value";

/// The identifier the page is using (from its "watch" link).
fn page_identifier(browser: &Browser) -> String {
    let link = "document.querySelector('#watch a')";
    browser
        .wait_for(
            &format!("{link} && decodeURIComponent({link}.hash.slice('#watch='.length))"),
            Duration::from_secs(20),
        )
        .as_str()
        .unwrap()
        .to_owned()
}

/// Uploads `data` through the page at `page`, throttled to 2 MiB/s, and
/// checks what the page shows against the server (`status`). With
/// `watch_tab`, a second tab follows the upload by its identifier.
fn upload_through_page(
    browser: &Browser,
    page: &str,
    data: &[u8],
    status: &dyn Fn(&str) -> Value,
    watch_tab: bool,
    shots: &str,
) {
    let file = output_dir().join(format!("{shots}.bin"));
    std::fs::create_dir_all(output_dir()).unwrap();
    std::fs::write(&file, data).unwrap();
    browser.goto(page);
    browser.throttle_upload(2 << 20);
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));

    // Well inside the upload: the bar shows a value from the server.
    let mid = browser.wait_for(
        &format!("{BAR} >= 20 && {BAR} < 90 && {BAR}"),
        Duration::from_secs(30),
    );
    // Rate and time left, from successive server samples.
    let rate = browser.wait_for(
        "(() => { const t = document.getElementById('rate').textContent; return /\\/s, \\d+ s left$/.test(t) && t; })()",
        Duration::from_secs(10),
    );
    assert!(rate.as_str().unwrap().contains("iB/s"), "{rate}");
    browser.screenshot(&output_dir().join(format!("{shots}-mid-upload.png")));
    let id = page_identifier(browser);
    assert_eq!(
        status(&id)["state"],
        "uploading",
        "the server should be receiving"
    );

    if watch_tab {
        let uploading = browser.window();
        let watcher = browser.new_tab();
        browser.switch_to(&watcher);
        browser.goto(&format!("{page}#watch={id}"));
        // Progress from the server alone: this tab sent nothing.
        let seen = browser.wait_for(&format!("{BAR} > 0 && {BAR}"), Duration::from_secs(20));
        assert!(
            seen.as_u64().unwrap() >= mid.as_u64().unwrap(),
            "watcher behind: {seen} < {mid}"
        );
        browser.wait_for(
            "document.body.dataset.state === 'done'",
            Duration::from_secs(60),
        );
        let shown = browser.script("return document.querySelector('td.sha').dataset.sha256;");
        assert_eq!(
            shown,
            sha256_hex(data).as_str(),
            "the watching tab shows another SHA-256"
        );
        browser.switch_to(&uploading);
    }

    browser.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(60),
    );
    browser.screenshot(&output_dir().join(format!("{shots}-done.png")));
    let shown = browser.script("return document.querySelector('td.sha').dataset.sha256;");
    assert_eq!(
        shown,
        sha256_hex(data).as_str(),
        "the page shows another SHA-256"
    );
    let message = browser.script("return document.getElementById('message').textContent;");
    assert_eq!(message, "Done: 1 file(s) stored.");
    // Every value the bar showed came from a status answer; some were
    // strictly between 0 and 100, and none went back.
    let history = browser.script("return window.fileuploadProgress;");
    let values: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        values.iter().any(|&v| v > 0 && v < 100),
        "bar values: {values:?}"
    );
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "the bar went back: {values:?}"
    );
    assert_eq!(status(&id)["files"][0]["sha256"], sha256_hex(data).as_str());
    std::fs::remove_file(file).unwrap();
}

#[test]
fn the_page_from_fileupload_serve_with_a_watching_tab() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path());
    let browser = Browser::start();
    let status = |id: &str| status_of(&pool.cgi(), id);
    upload_through_page(
        &browser,
        &serve.url,
        &random_bytes(6 << 20, 11),
        &status,
        true,
        "serve",
    );
}

#[test]
fn the_same_page_served_by_nginx_in_front_of_the_fastcgi_daemon() {
    let mut site = Site::new();
    // As start_nginx_with_the_daemon does, with an access log: the test
    // reads every request the browser made.
    let socket = start_systemd_daemon(&mut site);
    let access_log = site.path("access.log");
    let listen = format!("listen 127.0.0.1:{};", site.port);
    start_nginx_fastcgi(
        &mut site,
        &socket,
        &[(
            listen.as_str(),
            format!("{listen}\n    access_log {};", access_log.display()),
        )],
    );
    let browser = Browser::start();
    let status = |id: &str| site.status(id);
    // Under the harness's 4 MiB max_size.
    upload_through_page(
        &browser,
        &site.url("/"),
        &random_bytes(3 << 20, 13),
        &status,
        false,
        "nginx",
    );
    // The page's icon is inline: the browser never asked for /favicon.ico
    // (which would be a 404 in its console).
    let log = std::fs::read_to_string(&access_log).unwrap();
    assert!(
        log.contains("GET / ") && log.contains("POST /upload?X-Progress-ID="),
        "the access log misses the page's requests:\n{log}"
    );
    assert!(!log.contains("favicon"), "{log}");
    assert!(
        !log.lines().any(|l| l.contains("\" 404 ")),
        "a request answered 404:\n{log}"
    );
}

/// What is left on the page after an upload ends badly: the message only.
fn assert_progress_cleared(browser: &Browser) {
    let shown = browser.script(
        "return { hidden: document.getElementById('progress').hidden, \
                  bar: document.getElementById('bar').value, \
                  amount: document.getElementById('amount').textContent, \
                  rate: document.getElementById('rate').textContent, \
                  starting: document.body.innerText.includes('Starting') };",
    );
    assert_eq!(
        shown,
        serde_json::json!({"hidden": true, "bar": 0, "amount": "", "rate": "", "starting": false}),
        "the old progress is still shown"
    );
}

#[test]
fn an_upload_refused_as_too_large_leaves_only_the_message() {
    let pool = TestPool::new();
    let serve = Serve::start_with(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1M")]);
    let file = output_dir().join("too-large.bin");
    std::fs::create_dir_all(output_dir()).unwrap();
    std::fs::write(&file, random_bytes(2 << 20, 14)).unwrap();
    let browser = Browser::start();
    browser.goto(&serve.url);
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));
    browser.wait_for(
        "document.body.dataset.state === 'error'",
        Duration::from_secs(30),
    );
    browser.screenshot(&output_dir().join("too-large.png"));
    let message = browser.script("return document.getElementById('message').textContent;");
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("Too large: the upload is"),
        "{message}"
    );
    assert_progress_cleared(&browser);
    std::fs::remove_file(file).unwrap();
}

/// A TCP relay in front of a server that can hold back, on the connection
/// carrying the upload, what the browser sends: a network stall, while the
/// page's status polls (on other connections) still get answers. DevTools
/// throttling cannot do this: changing it mid-request releases the request.
struct StallingRelay {
    url: String,
    paused: Arc<AtomicBool>,
}

impl StallingRelay {
    fn start(upstream: &str) -> StallingRelay {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let paused = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&paused);
        // Lives as long as the test process; each connection's threads end
        // when either side closes.
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut from_server, mut to_client) = (server, client);
                let paused = Arc::clone(&flag);
                thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut upload = false;
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        upload |= buf[..n].windows(12).any(|w| w == b"POST /upload");
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while upload && paused.load(Ordering::SeqCst) && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(20));
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Write);
                });
            }
        });
        StallingRelay { url, paused }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

#[test]
fn a_stalled_upload_says_stalled_then_goes_on() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path());
    let relay = StallingRelay::start(&serve.url);
    let data = random_bytes(4 << 20, 15);
    let file = output_dir().join("stalled.bin");
    std::fs::create_dir_all(output_dir()).unwrap();
    std::fs::write(&file, &data).unwrap();
    let browser = Browser::start();
    browser.goto(&relay.url);
    browser.throttle_upload(1 << 20);
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));
    let rate = "document.getElementById('rate').textContent";
    browser.wait_for(
        &format!("{BAR} > 0 && / s left$/.test({rate})"),
        Duration::from_secs(30),
    );
    relay.pause(true);
    let stalled = browser.wait_for(
        &format!("{rate}.startsWith('stalled') && {rate}"),
        Duration::from_secs(20),
    );
    browser.screenshot(&output_dir().join("stalled.png"));
    assert!(
        stalled.as_str().unwrap().contains("nothing received for"),
        "{stalled}"
    );
    let id = page_identifier(&browser);
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "uploading", "{status}");
    assert!(status["received"].as_u64().unwrap() < data.len() as u64);
    // Bytes again: a rate and a time left again, then done.
    relay.pause(false);
    browser.wait_for(
        &format!("document.body.dataset.state === 'done' || / s left$/.test({rate})"),
        Duration::from_secs(30),
    );
    browser.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(60),
    );
    assert_eq!(
        status_of(&pool.cgi(), &id)["files"][0]["sha256"],
        sha256_hex(&data).as_str()
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn cancel_clears_the_upload_on_the_server() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path());
    let file = output_dir().join("cancel.bin");
    std::fs::create_dir_all(output_dir()).unwrap();
    std::fs::write(&file, random_bytes(6 << 20, 12)).unwrap();

    let browser = Browser::start();
    browser.goto(&serve.url);
    browser.throttle_upload(1 << 20);
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));
    browser.wait_for(&format!("{BAR} > 0"), Duration::from_secs(30));
    let id = page_identifier(&browser);
    assert!(
        pool.path().join(&id).join("file-1").exists(),
        "the upload should be under way"
    );
    browser.click(&browser.find("#cancel"));
    browser.wait_for(
        "document.body.dataset.state === 'error'",
        Duration::from_secs(20),
    );
    browser.screenshot(&output_dir().join("cancelled.png"));
    let message = browser.script("return document.getElementById('message').textContent;");
    assert_eq!(message, "Upload cancelled.");
    assert_progress_cleared(&browser);
    // Cleared on the server: nothing stored, nothing known.
    let cleared = wait_for(Duration::from_secs(10), || {
        (status_of(&pool.cgi(), &id)["state"] == "starting" && !pool.path().join(&id).exists())
            .then_some(())
    });
    assert!(
        cleared.is_some(),
        "status after cancel: {}",
        status_of(&pool.cgi(), &id)
    );
    std::fs::remove_file(file).unwrap();
}
