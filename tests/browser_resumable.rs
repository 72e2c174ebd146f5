//! The demo page's resumable mode in headless Chromium, on the copy of
//! tus-js-client's browser build that ships next to the page: a connection
//! cut mid-upload by a proxy between the browser and `fileupload serve`,
//! then restored, resumes from the server's offset; a reload mid-upload,
//! then the same file chosen again, resumes it; drag and drop, a row per
//! file, the size check before sending, cancel and retry. Every upload is
//! checked byte for byte on disk and by its SHA-256 in the status.
//!
//! The scenarios that lean on the network and the server (a cut, a held
//! upload taken over, a reload) run through each transport the README
//! offers: `fileupload serve`, nginx in front of the FastCGI daemon, and
//! nginx in front of fcgiwrap (a CGI process per request), each as its
//! example in conf-examples/ says, the page installed as its comment says;
//! the proxy sits between the browser and the web server.
//!
//! The proxy is here because nothing in the browser can take a network
//! away from an upload already under way: DevTools "offline" leaves a
//! running request's bytes flowing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::site::{Site, children_dropin, start_nginx_fcgiwrap, start_nginx_with_the_daemon};
use common::webdriver::Browser;
use common::*;

/// What serves the page and its uploads.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Serve,
    NginxDaemon,
    NginxFcgiwrap,
}

/// A running deployment, and where its uploads' status and files are read.
enum Deployment {
    Serve { serve: Serve, pool: TestPool },
    Nginx(Site),
}

impl Deployment {
    fn start(transport: Transport) -> Deployment {
        let nginx = |start: fn(&mut Site)| {
            let mut site = Site::new();
            // Room for the test files, with the examples' margin between
            // fileupload's limit and nginx's.
            site.max_size_mib = 64;
            site.server_limit_mib = 65;
            start(&mut site);
            // The example serves what the page loads next to it, as it is
            // in conf-examples/demo/, with the types a browser wants.
            let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf-examples/demo");
            for (name, content_type) in [
                ("tus.min.js", "application/javascript"),
                ("tus-js-client-LICENSE", "text/plain"),
            ] {
                let answer = site.request("GET", &format!("/{name}"), &[], b"");
                assert_eq!(answer.status, 200, "/{name}\n{}", site.logs_text());
                assert_eq!(answer.header("Content-Type"), Some(content_type), "/{name}");
                assert!(
                    answer.body == std::fs::read(demo.join(name)).unwrap(),
                    "/{name} is not conf-examples/demo/{name}"
                );
            }
            Deployment::Nginx(site)
        };
        match transport {
            Transport::Serve => {
                let pool = TestPool::new();
                let serve = Serve::start(pool.path(), &[]);
                Deployment::Serve { serve, pool }
            }
            Transport::NginxDaemon => nginx(|site| {
                start_nginx_with_the_daemon(site);
            }),
            // With the drop-in the README gives fcgiwrap: a held request
            // and its successor each need a process.
            Transport::NginxFcgiwrap => {
                nginx(|site| start_nginx_fcgiwrap(site, Some(&children_dropin()), &[]))
            }
        }
    }

    /// Where the browser's requests go (through the proxy).
    fn addr(&self) -> SocketAddr {
        match self {
            Deployment::Serve { serve, .. } => serve.addr(),
            Deployment::Nginx(site) => SocketAddr::from(([127, 0, 0, 1], site.port)),
        }
    }

    /// The status of `id`: from the pool for the development server, from
    /// the web server's status URL behind nginx.
    fn status(&self, id: &str) -> Value {
        match self {
            Deployment::Serve { pool, .. } => status_of(&pool.cgi(), id),
            Deployment::Nginx(site) => site.status(id),
        }
    }

    /// The uploads in the pool.
    fn buckets(&self) -> Vec<String> {
        let names = match self {
            Deployment::Serve { pool, .. } => pool.top_level(),
            Deployment::Nginx(site) => std::fs::read_dir(&site.pool)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
        };
        names.into_iter().filter(|n| !n.starts_with('.')).collect()
    }

    fn pool_path(&self) -> &Path {
        match self {
            Deployment::Serve { pool, .. } => pool.path(),
            Deployment::Nginx(site) => &site.pool,
        }
    }
}

/// One `#[test]` per transport for a scenario `fn(Transport)`, named
/// `scenario::serve`, `scenario::nginx_daemon`, `scenario::nginx_fcgiwrap`.
macro_rules! through_each_transport {
    ($scenario:ident) => {
        mod $scenario {
            use super::Transport;

            #[test]
            fn serve() {
                super::$scenario(Transport::Serve);
            }

            #[test]
            fn nginx_daemon() {
                super::$scenario(Transport::NginxDaemon);
            }

            #[test]
            fn nginx_fcgiwrap() {
                super::$scenario(Transport::NginxFcgiwrap);
            }
        }
    };
}

/// `fileupload serve` on a free port.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(pool: &Path, settings: &[(&str, &str)]) -> Serve {
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
        let mut line = String::new();
        let mut log = BufReader::new(child.stderr.take().expect("stderr"));
        log.read_line(&mut line)
            .expect("fileupload serve says where it listens");
        // The rest of its log goes to the test's output, shown when the
        // test fails.
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                eprintln!("fileupload serve: {line}");
            }
        });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        Serve { child, url }
    }

    fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("an address")
    }

    /// One GET; the status and the body. HTTP/1.0, so that the body comes
    /// whole, not chunked.
    fn get(&self, target: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.addr()).unwrap();
        write!(stream, "GET {target} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head");
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        (status, answer[split + 4..].to_vec())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy shares with its connections.
struct ProxyState {
    /// Bytes per second each connection may carry from the browser.
    rate: u64,
    /// While set, new connections are reset at once.
    down: AtomicBool,
    /// While set, new connections carry nothing from the browser yet.
    holding: AtomicBool,
    /// One flag per connection: once set, it carries nothing more and is
    /// never closed, like a connection whose network went away unnoticed.
    frozen: Mutex<Vec<Arc<AtomicBool>>>,
    /// Every socket of every open connection, to reset them on a cut.
    sockets: Mutex<Vec<TcpStream>>,
    /// Bytes carried from the browser to the server, in all.
    upstream: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 between the browser and the server. It paces
/// what the browser sends (so an upload is mid-way when the test acts),
/// and on command cuts the network: every open connection reset, every
/// new one reset as it arrives, until it is restored.
struct Proxy {
    url: String,
    state: Arc<ProxyState>,
}

/// Closes with a reset (RST), as a dropped network or a dying middlebox
/// does, rather than an orderly FIN.
fn reset(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Both);
}

impl Proxy {
    fn start(upstream: SocketAddr, rate: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let state = Arc::new(ProxyState {
            rate,
            down: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            frozen: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            upstream: AtomicU64::new(0),
        });
        let shared = Arc::clone(&state);
        // Lives as long as the test process; each connection's threads end
        // when either side closes.
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if shared.down.load(Ordering::SeqCst) {
                    reset(&client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    reset(&client);
                    continue;
                };
                let (Ok(client_read), Ok(server_read), Ok(client_keep), Ok(server_keep)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                shared
                    .sockets
                    .lock()
                    .unwrap()
                    .extend([client_keep, server_keep]);
                let frozen = Arc::new(AtomicBool::new(false));
                shared.frozen.lock().unwrap().push(Arc::clone(&frozen));
                let state = Arc::clone(&shared);
                let mut to_server = server;
                let mut from_client = client_read;
                thread::spawn(move || {
                    let mut buf = vec![0u8; 8 * 1024];
                    let began = Instant::now();
                    let mut carried = 0u64;
                    // Bounded: a held or frozen connection is let go after
                    // two minutes, whatever the test does.
                    let hold = |s: &ProxyState| {
                        let limit = Instant::now() + Duration::from_secs(120);
                        while (s.holding.load(Ordering::SeqCst) || frozen.load(Ordering::SeqCst))
                            && Instant::now() < limit
                        {
                            thread::sleep(Duration::from_millis(20));
                        }
                    };
                    hold(&state);
                    while let Ok(n) = from_client.read(&mut buf) {
                        hold(&state);
                        if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        carried += n as u64;
                        state.upstream.fetch_add(n as u64, Ordering::SeqCst);
                        // Paced: no further ahead than `rate` allows.
                        let due = Duration::from_secs_f64(carried as f64 / state.rate as f64);
                        if let Some(wait) = due.checked_sub(began.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let mut to_client = client;
                let mut from_server = server_read;
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Write);
                });
            }
        });
        Proxy { url, state }
    }

    /// Cuts the network: open connections reset, new ones refused.
    fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for socket in self.state.sockets.lock().unwrap().drain(..) {
            reset(&socket);
        }
    }

    /// Stalls the network: open connections freeze (they carry nothing
    /// more and stay open, so the server still holds their requests), new
    /// ones wait.
    fn stall(&self) {
        self.state.holding.store(true, Ordering::SeqCst);
        for frozen in self.state.frozen.lock().unwrap().drain(..) {
            frozen.store(true, Ordering::SeqCst);
        }
    }

    /// The network back: new connections carry again (frozen ones stay
    /// frozen).
    fn restore(&self) {
        self.state.down.store(false, Ordering::SeqCst);
        self.state.holding.store(false, Ordering::SeqCst);
    }

    fn upstream_bytes(&self) -> u64 {
        self.state.upstream.load(Ordering::SeqCst)
    }
}

fn output_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-resumable")
}

fn write_file(name: &str, data: &[u8]) -> PathBuf {
    std::fs::create_dir_all(output_dir()).unwrap();
    let path = output_dir().join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// The page at `url` in resumable mode, with `file` chosen and sent;
/// with `throttle`, the browser held to that many bytes a second.
fn send_resumable(browser: &Browser, url: &str, file: &Path, throttle: Option<u64>) {
    browser.goto(url);
    if let Some(rate) = throttle {
        browser.throttle_upload(rate);
    }
    browser.click(&browser.find("#mode-resumable"));
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));
}

const ROW: &str = "document.querySelector('#queue li')";

/// The identifier of the page's first row, once the server gave one.
fn row_identifier(browser: &Browser) -> String {
    browser
        .wait_for(
            &format!("{ROW} && {ROW}.dataset.id"),
            Duration::from_secs(30),
        )
        .as_str()
        .unwrap()
        .to_owned()
}

/// The offset the server holds for `id`, once it has at least `at_least`.
fn wait_received(server: &Deployment, id: &str, at_least: u64) -> u64 {
    wait_for(Duration::from_secs(60), || {
        let status = server.status(id);
        status["received"].as_u64().filter(|&r| r >= at_least)
    })
    .unwrap_or_else(|| {
        panic!(
            "the server never held {at_least} bytes: {}",
            server.status(id)
        )
    })
}

/// The offset once it stops moving: what a cut left on the server.
fn settled_offset(server: &Deployment, id: &str) -> u64 {
    let mut last = u64::MAX;
    let mut same = 0;
    for _ in 0..50 {
        let status = server.status(id);
        assert_eq!(status["state"], "uploading", "{status}");
        assert_eq!(status["resumable"], true, "{status}");
        let now = status["received"].as_u64().expect("received");
        same = if now == last { same + 1 } else { 0 };
        // The same for 900 ms: bytes a request still held in memory are
        // stored (and counted) within two progress intervals, 400 ms.
        if same == 3 {
            return now;
        }
        last = now;
        thread::sleep(Duration::from_millis(300));
    }
    panic!("the stored offset never settled");
}

/// The upload `id` is done: the stored file is `data` byte for byte, the
/// status and the page's row show its SHA-256.
fn assert_stored(browser: &Browser, server: &Deployment, id: &str, data: &[u8]) {
    browser.wait_for(
        &format!("{ROW}.dataset.state === 'done' && {ROW}.dataset.sha256"),
        Duration::from_secs(90),
    );
    let status = server.status(id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(data).as_str());
    let stored = std::fs::read(path_of(&status, 0)).unwrap();
    assert!(stored == data, "the stored file differs from the one sent");
    assert_eq!(
        browser.script(&format!("return {ROW}.dataset.sha256;")),
        sha256_hex(data).as_str(),
        "the page shows another SHA-256"
    );
}

/// How many unfinished uploads tus-js-client keeps in localStorage.
fn stored_uploads(browser: &Browser) -> u64 {
    browser
        .script("return Object.keys(localStorage).filter((k) => k.startsWith('tus::')).length;")
        .as_u64()
        .expect("a count")
}

fn events(browser: &Browser) -> Vec<Value> {
    browser
        .script("return window.fileuploadEvents;")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_vendored_tus_js_client_is_the_pinned_npm_package() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/clients/package-lock.json")).unwrap(),
    )
    .unwrap();
    let pinned = lock["packages"]["node_modules/tus-js-client"]["version"]
        .as_str()
        .expect("tus-js-client in tests/clients/package-lock.json");
    // scripts/install-clients installs exactly the lock (npm ci checks
    // each package's integrity against it) and then copies the lock.
    let target = Path::new(bin())
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    let installed = target.join("tus-clients");
    assert!(
        std::fs::read(installed.join(".installed-package-lock.json")).unwrap_or_default()
            == std::fs::read(root.join("tests/clients/package-lock.json")).unwrap(),
        "tus-js-client {pinned} is not installed in {}: run scripts/install-clients",
        installed.display()
    );
    let package = installed.join("node_modules/tus-js-client");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(package.join("package.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], pinned);
    assert_eq!(manifest["license"], "MIT");
    for (ours, theirs) in [
        ("tus.min.js", "dist/tus.min.js"),
        ("tus-js-client-LICENSE", "LICENSE"),
    ] {
        let vendored = std::fs::read(root.join("conf-examples/demo").join(ours)).unwrap();
        let upstream = std::fs::read(package.join(theirs)).unwrap();
        assert!(
            vendored == upstream,
            "conf-examples/demo/{ours} is not tus-js-client {pinned}'s {theirs}: \
             run scripts/vendor-tus-js-client"
        );
    }
    // The development server serves that copy next to the page.
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[]);
    let (status, body) = serve.get("/tus.min.js");
    assert_eq!(status, 200);
    assert!(body == std::fs::read(package.join("dist/tus.min.js")).unwrap());
    let (status, body) = serve.get("/tus-js-client-LICENSE");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("The MIT License"));
}

through_each_transport!(a_cut_connection_resumes_from_the_servers_offset);

fn a_cut_connection_resumes_from_the_servers_offset(transport: Transport) {
    let server = Deployment::start(transport);
    let proxy = Proxy::start(server.addr(), 1 << 20);
    let data = random_bytes(6 << 20, 31);
    let file = write_file("cut.bin", &data);
    let browser = Browser::start();
    send_resumable(&browser, &proxy.url, &file, None);
    let id = row_identifier(&browser);
    wait_received(&server, &id, 3 << 19);
    // And the page has had a poll answered with it (on two loaded cores a
    // CGI poll can take longer than the bytes do).
    browser.wait_for(
        &format!("Number({ROW}.dataset.received) > 0"),
        Duration::from_secs(20),
    );

    proxy.cut();
    let said = browser.wait_for(
        &format!(
            "{ROW}.dataset.state === 'reconnecting' && {ROW}.querySelector('.state').textContent"
        ),
        Duration::from_secs(20),
    );
    assert!(
        said.as_str().unwrap().contains("reconnecting"),
        "the row says {said}"
    );
    browser.screenshot(&output_dir().join(format!("reconnecting-{transport:?}.png")));
    let held = settled_offset(&server, &id);
    assert!(
        held > 0 && held < data.len() as u64,
        "the server holds {held}"
    );
    // The bar shows what the server holds, not what the browser pushed
    // into socket buffers (most of the file, by now).
    let shown = browser.script(&format!(
        "return {{ received: Number({ROW}.dataset.received), bar: {ROW}.querySelector('progress').value }};"
    ));
    assert!(
        shown["received"]
            .as_u64()
            .is_some_and(|r| r > 0 && r <= held)
            && shown["bar"].as_u64().is_some_and(|b| b < 100),
        "the row shows {shown}, the server holds {held}"
    );
    // A few refused attempts while the network is gone.
    thread::sleep(Duration::from_secs(3));
    let before = proxy.upstream_bytes();
    proxy.restore();

    assert_stored(&browser, &server, &id, &data);
    browser.screenshot(&output_dir().join(format!("resumed-done-{transport:?}.png")));
    // It asked the server where it stood and went on from there.
    let resumed: Vec<u64> = events(&browser)
        .iter()
        .filter(|e| e["event"] == "resume")
        .filter_map(|e| e["offset"].as_u64())
        .collect();
    assert_eq!(
        resumed.last(),
        Some(&held),
        "resumed from {resumed:?}, the server held {held}"
    );
    // Only what the server lacked was sent again (plus requests' heads).
    let resent = proxy.upstream_bytes() - before;
    let lacking = data.len() as u64 - held;
    assert!(
        resent >= lacking && resent < lacking + (64 << 10),
        "{resent} bytes sent after the cut for {lacking} missing"
    );
}

/// A stall: the browser's request stops moving and no error comes. The
/// page gives it up after 15 s and says it is reconnecting; then the
/// network comes back, with the stalled connection reset (`half_open`
/// false: a middlebox or the server's side saw it die) or still open on
/// the server (`half_open`: the server still holds its request).
fn stall_then_resume(transport: Transport, half_open: bool) {
    let server = Deployment::start(transport);
    let proxy = Proxy::start(server.addr(), 1 << 20);
    // Long enough after the restore (11 s at 1 MiB/s) for the page's
    // status polls to report the server again: a poll left on a connection
    // the stall froze is given up only after 5 s, and behind nginx (which
    // keeps idle connections open) 6 MiB sometimes ended first.
    let data = random_bytes(12 << 20, 34);
    let file = write_file("stall.bin", &data);
    let browser = Browser::start();
    send_resumable(&browser, &proxy.url, &file, None);
    let id = row_identifier(&browser);
    wait_received(&server, &id, 1 << 20);

    proxy.stall();
    let held = settled_offset(&server, &id);
    assert!(held < data.len() as u64, "{held}");
    let said = browser.wait_for(
        &format!(
            "{ROW}.dataset.state === 'reconnecting' && {ROW}.querySelector('.state').textContent"
        ),
        Duration::from_secs(30),
    );
    assert!(
        said.as_str()
            .unwrap()
            .starts_with("No answer for 15 s: reconnecting"),
        "the row says {said}"
    );
    browser.screenshot(&output_dir().join(format!("stalled-{transport:?}.png")));
    if !half_open {
        proxy.cut();
    }
    proxy.restore();
    // The row's bar follows the server again, past what the stall left
    // (1 MiB/s: seconds before the end).
    browser.wait_for(
        &format!("Number({ROW}.dataset.received) > {held}"),
        Duration::from_secs(30),
    );
    assert_stored(&browser, &server, &id, &data);
    let seen = events(&browser);
    assert!(seen.iter().any(|e| e["event"] == "stalled"), "{seen:?}");
    let resumed = seen
        .iter()
        .filter(|e| e["event"] == "resume")
        .filter_map(|e| e["offset"].as_u64())
        .next();
    assert_eq!(resumed, Some(held), "{seen:?}");
}

#[test]
fn a_stalled_connection_is_given_up_and_the_upload_resumes() {
    stall_then_resume(Transport::Serve, false);
}

/// The stalled request still held by the server (its connection frozen,
/// not closed): the new one takes the upload over (`Pool::take_over`, the
/// issue's lock release request) rather than waiting for the old
/// connection to time out.
/// Behind nginx the web server holds the frozen connection and keeps the
/// old request open to the program (the daemon's worker, or its own CGI
/// process under fcgiwrap), so the takeover happens across processes.
fn a_stalled_connection_still_held_by_the_server_is_taken_over(transport: Transport) {
    stall_then_resume(transport, true);
}

through_each_transport!(a_stalled_connection_still_held_by_the_server_is_taken_over);

through_each_transport!(reloading_mid_upload_and_choosing_the_same_file_resumes_it);

fn reloading_mid_upload_and_choosing_the_same_file_resumes_it(transport: Transport) {
    let server = Deployment::start(transport);
    let proxy = Proxy::start(server.addr(), 1 << 20);
    let data = random_bytes(5 << 20, 32);
    let file = write_file("reload.bin", &data);
    let browser = Browser::start();
    // Held back in the browser too: what it has already handed to its
    // socket when the page goes away still reaches the server (megabytes,
    // on loopback), and the upload would be over before the reload.
    send_resumable(&browser, &proxy.url, &file, Some(1 << 20));
    let id = row_identifier(&browser);
    wait_received(&server, &id, 1 << 20);

    browser.goto(&proxy.url);
    let held = settled_offset(&server, &id);
    assert!(held >= 1 << 20 && held < data.len() as u64, "{held}");
    // The page came back in the mode it was left in; the same file again.
    assert_eq!(
        browser.script("return document.getElementById('mode-resumable').checked;"),
        true
    );
    assert_eq!(stored_uploads(&browser), 1, "the unfinished upload is kept");
    let before = proxy.upstream_bytes();
    browser.send_keys(&browser.find("#files"), file.to_str().unwrap());
    browser.click(&browser.find("#start"));
    let again = row_identifier(&browser);
    assert_eq!(again, id, "a new upload, not the one left off");
    assert_stored(&browser, &server, &id, &data);
    let seen = events(&browser);
    assert!(
        seen.iter().any(|e| e["event"] == "previous"),
        "no previous upload found: {seen:?}"
    );
    let first_resume = seen
        .iter()
        .find(|e| e["event"] == "resume")
        .and_then(|e| e["offset"].as_u64());
    assert_eq!(first_resume, Some(held), "{seen:?}");
    let resent = proxy.upstream_bytes() - before;
    let lacking = data.len() as u64 - held;
    assert!(
        resent < lacking + (64 << 10),
        "{resent} bytes sent after the reload for {lacking} missing"
    );
    assert_eq!(
        stored_uploads(&browser),
        0,
        "a finished upload is forgotten in localStorage"
    );
    // One upload in the pool: nothing was begun again.
    let buckets = server.buckets();
    assert_eq!(buckets, [id], "{buckets:?}");
}

/// The byte at `i` of the files the page makes itself for the drop tests.
fn made(i: usize) -> u8 {
    ((i * 7) ^ (i >> 9)) as u8
}

/// Drops files of these names and sizes (their bytes from [`made`]) on
/// the page's form, as a file manager's drag does.
fn drop_files(browser: &Browser, files: &[(&str, usize)]) {
    let list = serde_json::to_string(files).unwrap();
    browser.script(&format!(
        "const make = (n) => {{ const a = new Uint8Array(n); \
           for (let i = 0; i < n; i++) a[i] = ((i * 7) ^ (i >> 9)) & 255; return a; }}; \
         const dt = new DataTransfer(); \
         for (const [name, size] of {list}) dt.items.add(new File([make(size)], name)); \
         for (const type of ['dragenter', 'dragover', 'drop']) \
           document.getElementById('form').dispatchEvent(new DragEvent(type, \
             {{ dataTransfer: dt, bubbles: true, cancelable: true }}));"
    ));
}

#[test]
fn a_drop_in_the_form_mode_is_sent_as_a_form() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[]);
    let browser = Browser::start();
    browser.goto(&serve.url);
    drop_files(&browser, &[("form.bin", 200 * 1024)]);
    assert_eq!(
        browser.script("return document.getElementById('message').textContent;"),
        "1 file(s) chosen: press Upload."
    );
    browser.click(&browser.find("#start"));
    browser.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(30),
    );
    let data: Vec<u8> = (0..200 * 1024).map(made).collect();
    let id = browser
        .script("return decodeURIComponent(document.querySelector('#watch a').hash.slice(7));");
    let status = status_of(&pool.cgi(), id.as_str().unwrap());
    assert_eq!(status["resumable"], Value::Null, "a form upload: {status}");
    assert_eq!(status["files"][0]["filename"], "form.bin");
    assert!(std::fs::read(path_of(&status, 0)).unwrap() == data);
    assert_eq!(
        browser.script("return document.querySelector('td.sha').dataset.sha256;"),
        sha256_hex(&data).as_str()
    );
}

#[test]
fn with_a_key_the_printed_identifier_names_the_resumable_upload_and_names_are_text() {
    let pool = TestPool::new();
    let key = [("FILEUPLOAD_UPLOAD_KEY", "trial-key")];
    let serve = Serve::start(pool.path(), &key);
    let browser = Browser::start();
    browser.goto(&serve.url);
    let printed = browser.script("return document.body.dataset.identifier;");
    let printed = printed
        .as_str()
        .expect("an identifier in the page")
        .to_owned();
    assert!(printed.contains(':'), "not signed: {printed}");
    browser.click(&browser.find("#mode-resumable"));
    // A file name that is markup: shown as text, never parsed.
    let name = "<img src=x onerror=\"window.injected=1\">.bin";
    drop_files(&browser, &[(name, 100 * 1024)]);
    browser.click(&browser.find("#start"));
    browser.wait_for(
        &format!("{ROW} && {ROW}.dataset.state === 'done' && {ROW}.dataset.sha256"),
        Duration::from_secs(30),
    );
    assert_eq!(
        browser.script(&format!("return {ROW}.dataset.id;")),
        printed.as_str()
    );
    let status = status_of(&pool.cgi().env(key[0].0, key[0].1), &printed);
    let data: Vec<u8> = (0..100 * 1024).map(made).collect();
    assert_eq!(status["resumable"], true, "{status}");
    assert!(std::fs::read(path_of(&status, 0)).unwrap() == data);
    assert_eq!(status["files"][0]["filename"], name);
    let shown = browser.script(&format!(
        "return {{ injected: window.injected === undefined ? null : window.injected, \
                  images: document.querySelectorAll('#queue img').length, \
                  name: {ROW}.querySelector('.name').textContent }};"
    ));
    assert_eq!(
        shown,
        serde_json::json!({"injected": null, "images": 0, "name": format!("{name} (100.0 KiB)")})
    );
}

#[test]
fn dropped_files_get_a_row_each_and_the_size_limit_is_checked_first() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1M")]);
    let browser = Browser::start();
    browser.goto(&serve.url);
    browser.click(&browser.find("#mode-resumable"));
    drop_files(
        &browser,
        &[("small.bin", 300 * 1024), ("large.bin", 3 << 20)],
    );
    assert_eq!(
        browser.script("return document.getElementById('files').files.length;"),
        2
    );
    browser.click(&browser.find("#start"));
    let rows = "document.querySelectorAll('#queue li')";
    browser.wait_for(
        &format!(
            "{rows}.length === 2 && {rows}[0].dataset.state === 'done' && {rows}[0].dataset.sha256"
        ),
        Duration::from_secs(30),
    );
    browser.screenshot(&output_dir().join("dropped.png"));
    let small: Vec<u8> = (0..300 * 1024).map(made).collect();
    let id = browser.script(&format!("return {rows}[0].dataset.id;"));
    let status = status_of(&pool.cgi(), id.as_str().unwrap());
    assert_eq!(status["files"][0]["filename"], "small.bin");
    assert!(std::fs::read(path_of(&status, 0)).unwrap() == small);
    assert_eq!(
        browser.script(&format!("return {rows}[0].dataset.sha256;")),
        sha256_hex(&small).as_str()
    );
    // The large one was refused by the page, from the server's
    // Tus-Max-Size, before anything was sent: it has no upload.
    let large = browser.script(&format!(
        "return {{ state: {rows}[1].dataset.state, id: {rows}[1].dataset.id || null, \
                   text: {rows}[1].querySelector('.state').textContent, \
                   live: {rows}[1].querySelector('.state').getAttribute('aria-live') }};"
    ));
    assert_eq!(large["state"], "too-large", "{large}");
    assert_eq!(large["id"], Value::Null, "{large}");
    assert_eq!(large["live"], "polite");
    assert!(
        large["text"]
            .as_str()
            .unwrap()
            .contains("over this server's limit of 1.0 MiB (1048576 bytes)"),
        "{large}"
    );
    let buckets: Vec<String> = pool
        .top_level()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    // What a screen reader is given: a label for the file input, the
    // page's live region with the last news, each row's named buttons.
    let spoken = browser.script(&format!(
        "const a = document.getElementById('announce'); \
         return {{ label: document.querySelector('label[for=files]').textContent, \
                  live: a.getAttribute('aria-live'), news: a.textContent, \
                  cancel: {rows}[0].querySelector('button.cancel').getAttribute('aria-label'), \
                  button: {rows}[0].querySelector('button.cancel').tagName }};"
    ));
    assert_eq!(
        spoken,
        serde_json::json!({"label": "Files to upload", "live": "polite",
            "news": "small.bin uploaded.", "cancel": "Cancel the upload of small.bin",
            "button": "BUTTON"}),
    );
}

#[test]
fn cancel_removes_the_upload_and_retry_sends_it_again() {
    let server = Deployment::start(Transport::Serve);
    let proxy = Proxy::start(server.addr(), 1 << 20);
    let data = random_bytes(4 << 20, 33);
    let file = write_file("cancel-retry.bin", &data);
    let browser = Browser::start();
    send_resumable(&browser, &proxy.url, &file, None);
    let id = row_identifier(&browser);
    wait_received(&server, &id, 1 << 19);
    browser.click(&browser.find("#queue li button.cancel"));
    browser.wait_for(
        &format!("{ROW}.dataset.state === 'cancelled'"),
        Duration::from_secs(20),
    );
    let removed = wait_for(Duration::from_secs(10), || {
        (server.status(&id)["state"] == "starting" && !server.pool_path().join(&id).exists())
            .then_some(())
    });
    assert!(removed.is_some(), "after cancel: {}", server.status(&id));
    assert_eq!(
        stored_uploads(&browser),
        0,
        "a cancelled upload is forgotten in localStorage"
    );
    // Retry: a button with a name a screen reader says, and a new upload.
    let label = browser.script(&format!(
        "const b = {ROW}.querySelector('button.retry'); return !b.hidden && b.getAttribute('aria-label');"
    ));
    assert_eq!(label, "Retry the upload of cancel-retry.bin");
    browser.click(&browser.find("#queue li button.retry"));
    let again = browser
        .wait_for(
            &format!("{ROW}.dataset.id !== '{id}' && {ROW}.dataset.id"),
            Duration::from_secs(30),
        )
        .as_str()
        .unwrap()
        .to_owned();
    assert_stored(&browser, &server, &again, &data);
}
