//! The demo page in headless Chromium: a real browser uploads, the bar
//! moves through values the server's status gave, a second tab watching the
//! same identifier sees the same progress, the SHA-256 shown is the file's,
//! and a cancel clears the upload on the server. The page runs as
//! `fileupload serve` serves it, and unchanged as nginx serves it in front
//! of the FastCGI daemon. Screenshots go to the test output folder
//! (target/tmp/browser/).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::site::{Site, start_nginx_with_the_daemon};
use common::webdriver::Browser;
use common::*;

/// `fileupload serve` on a free port.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(pool: &Path) -> Serve {
        let mut child = Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool)
            .env("FILEUPLOAD_PROGRESS_INTERVAL", "100ms")
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
    start_nginx_with_the_daemon(&mut site);
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
