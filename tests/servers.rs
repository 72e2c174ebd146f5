//! End to end through real web servers. Each configuration in
//! `conf-examples/` is rendered into a temporary directory (its documented
//! paths, port and size limits replaced by the test's), run by the server it
//! configures, the way Debian runs it (workers and programs as www-data),
//! on a free loopback port, and driven with curl:
//!
//! - a rate-limited upload is polled while in flight: `0 < received < size`
//!   at least once, then `done`, with the stored file's SHA-256 the sent one;
//! - an over-size upload gets 413 with the JSON error, and its status says so;
//! - a clear during an upload cancels it;
//! - two uploads at once both succeed; a second under a running id gets 409.
//!
//! Every server is stopped by its own pid. A missing server fails the test
//! with the package to install (scripts/test installs them).

mod common;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::sha256_hex;
use common::site::*;

/// What a configuration can do.
#[derive(Clone, Copy)]
struct Expect {
    /// The server hands the body over while it arrives.
    streams: bool,
}

fn exercise(site: &Site, expect: Expect) {
    progress_mid_upload(site, expect);
    over_size(site);
    if expect.streams {
        clear_cancels(site);
        concurrent_and_conflict(site);
    } else {
        two_at_once(site);
    }
}

fn progress_mid_upload(site: &Site, expect: Expect) {
    let (file, sha) = site.data_file("progress.bin", 3 << 20, 1);
    let mut curl = site.upload("progress", &file, Some("1M"));
    let mut seen_mid = None;
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl.running() && Instant::now() < deadline {
        let status = site.status("progress");
        let state = status["state"].as_str().unwrap_or("").to_owned();
        if states.last() != Some(&state) {
            states.push(state);
        }
        let received = status["received"].as_u64().unwrap_or(0);
        let size = status["size"].as_u64().unwrap_or(0);
        if received > 0 && received < size {
            seen_mid.get_or_insert(received);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = curl.finish();
    assert_eq!(code, 200, "upload answer: {body}\n{}", site.logs_text());
    let status = site.status("progress");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        status["files"][0]["sha256"],
        sha.as_str(),
        "stored file differs from the sent one"
    );
    let stored = std::fs::read(status["files"][0]["path"].as_str().unwrap()).unwrap();
    assert_eq!(sha256_hex(&stored), sha);
    if expect.streams {
        assert!(
            seen_mid.is_some(),
            "progress never seen mid-upload; states: {states:?}"
        );
    } else {
        // The server buffers the body: the program sees nothing until the
        // end, so progress cannot move. This is what the example warns of.
        assert_eq!(
            seen_mid, None,
            "progress moved: this server streams after all"
        );
        assert_eq!(
            states.first().map(String::as_str),
            Some("starting"),
            "{states:?}"
        );
        assert!(!states.iter().any(|s| s == "uploading"), "{states:?}");
    }
}

fn over_size(site: &Site) {
    let (file, _) = site.data_file("big.bin", (MAX_SIZE_MIB as usize) * (1 << 20) + 300_000, 2);
    let (code, body) = site.upload("oversize", &file, None).finish();
    assert_eq!(code, 413, "{body}\n{}", site.logs_text());
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("413 body is not our JSON ({e}): {body}"));
    assert_eq!(json["state"], "error");
    assert_eq!(json["status"], 413);
    let status = site.status("oversize");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["status"], 413, "{status}");
}

fn clear_cancels(site: &Site) {
    let (file, _) = site.data_file("cancel.bin", 2 << 20, 3);
    let curl = site.upload("cancel", &file, Some("500K"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.status("cancel")["received"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "upload never started");
        thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = site.get("/upload?X-Progress-ID=cancel&clear");
    assert_eq!((code, body.as_str()), (200, r#"{"success":true}"#));
    let (code, body) = curl.finish();
    assert_ne!(code, 200, "a cleared upload must not succeed: {body}");
    if code != 0 {
        assert_eq!(code, 410, "{body}");
        assert!(body.contains("cancelled by a clear request"), "{body}");
    }
    assert_eq!(site.status("cancel")["state"], "starting");
    assert!(
        !site.pool.join("cancel").exists(),
        "the cleared upload's folder is back"
    );
}

fn concurrent_and_conflict(site: &Site) {
    let (a, sha_a) = site.data_file("a.bin", 1 << 20, 4);
    let (b, sha_b) = site.data_file("b.bin", 1 << 20, 5);
    let first = site.upload("first", &a, Some("500K"));
    let second = site.upload("second", &b, Some("500K"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.status("first")["state"] != "uploading" {
        assert!(Instant::now() < deadline, "first upload never started");
        thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = site.upload("first", &b, None).finish();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already running"), "{body}");
    for (curl, id, sha) in [(first, "first", sha_a), (second, "second", sha_b)] {
        let (code, body) = curl.finish();
        assert_eq!(code, 200, "{id}: {body}");
        assert_eq!(site.status(id)["files"][0]["sha256"], sha.as_str(), "{id}");
    }
}

/// For a buffering server: two at once still both succeed.
fn two_at_once(site: &Site) {
    let (a, sha_a) = site.data_file("a.bin", 1 << 20, 4);
    let (b, sha_b) = site.data_file("b.bin", 1 << 20, 5);
    let first = site.upload("first", &a, Some("500K"));
    let second = site.upload("second", &b, Some("500K"));
    for (curl, id, sha) in [(first, "first", sha_a), (second, "second", sha_b)] {
        let (code, body) = curl.finish();
        assert_eq!(code, 200, "{id}: {body}");
        assert_eq!(site.status(id)["files"][0]["sha256"], sha.as_str(), "{id}");
    }
}

// ---- the configurations ------------------------------------------------------

#[test]
fn nginx_with_fcgiwrap() {
    let mut site = Site::new();
    let socket = start_fcgiwrap(&mut site);
    let substitutions = [
        site.program_substitutions(),
        vec![
            (
                "unix:/run/fcgiwrap.socket",
                format!("unix:{}", socket.display()),
            ),
            (
                "FILEUPLOAD_MAX_SIZE 100;",
                format!("FILEUPLOAD_MAX_SIZE {MAX_SIZE_MIB};"),
            ),
        ],
    ]
    .concat();
    start_nginx(&mut site, "nginx-fcgiwrap.conf", &substitutions);
    exercise(&site, Expect { streams: true });
}

#[test]
fn nginx_with_the_fastcgi_daemon() {
    let mut site = Site::new();
    start_nginx_with_the_daemon(&mut site);
    // nginx serves the demo page next to the upload location.
    let (code, page) = site.get("/");
    assert_eq!(code, 200);
    assert_eq!(page, fileupload::serve::DEMO_PAGE);
    exercise(&site, Expect { streams: true });
}

#[test]
fn apache_cgi_with_setenv() {
    let mut site = Site::new();
    let substitutions = [
        site.program_substitutions(),
        vec![
            (
                "SetEnv FILEUPLOAD_MAX_SIZE 100",
                format!("SetEnv FILEUPLOAD_MAX_SIZE {MAX_SIZE_MIB}"),
            ),
            (
                "LimitRequestBody 105906176",
                format!("LimitRequestBody {}", SERVER_LIMIT_MIB << 20),
            ),
        ],
    ]
    .concat();
    start_apache(&mut site, "apache-cgi.conf", None, &substitutions);
    exercise(&site, Expect { streams: true });
}

#[test]
fn apache_shared_hosting_htaccess() {
    let mut site = Site::new();
    // What the host provides: a document root where .htaccess may set
    // Options and FileInfo. The rest is the user's: the folder, the program
    // as fileupload.cgi, and the example .htaccess.
    let www = site.path("www");
    let cgi_bin = www.join("cgi-bin");
    std::fs::create_dir_all(&cgi_bin).unwrap();
    std::fs::copy(&site.bin, cgi_bin.join("fileupload.cgi")).unwrap();
    let htaccess = site.render(
        "shared-hosting/.htaccess",
        &[
            ("/home/user/uploads", site.pool.display().to_string()),
            (
                "SetEnv FILEUPLOAD_MAX_SIZE 100",
                format!("SetEnv FILEUPLOAD_MAX_SIZE {MAX_SIZE_MIB}"),
            ),
        ],
    );
    std::fs::write(cgi_bin.join(".htaccess"), htaccess).unwrap();
    let host = format!(
        "# Modules: cgid env\nListen 127.0.0.1:{port}\nDocumentRoot {www}\nLimitRequestBody {limit}\n\
         <Directory {www}>\n  AllowOverride All\n  Require all granted\n</Directory>\n",
        port = site.port,
        www = www.display(),
        limit = SERVER_LIMIT_MIB << 20
    );
    start_apache(&mut site, "shared-hosting/.htaccess", Some(host), &[]);
    site.prefix = "/cgi-bin/fileupload.cgi".into();
    exercise(&site, Expect { streams: true });
}

#[test]
fn apache_mod_fcgid_buffers_the_body() {
    let mut site = Site::new();
    let substitutions = [
        site.program_substitutions(),
        vec![
            (
                "FcgidInitialEnv FILEUPLOAD_MAX_SIZE 100",
                format!("FcgidInitialEnv FILEUPLOAD_MAX_SIZE {MAX_SIZE_MIB}"),
            ),
            (
                "FcgidMaxRequestLen 105906176",
                format!("FcgidMaxRequestLen {}", SERVER_LIMIT_MIB << 20),
            ),
        ],
    ]
    .concat();
    start_apache(&mut site, "apache-fcgid.conf", None, &substitutions);
    exercise(&site, Expect { streams: false });
}

#[test]
fn apache_mod_proxy_fcgi_with_the_daemon() {
    let mut site = Site::new();
    let socket = start_systemd_daemon(&mut site);
    start_apache(
        &mut site,
        "apache-proxy-fcgi.conf",
        None,
        &[
            (
                "unix:/run/fileupload/fileupload.sock",
                format!("unix:{}", socket.display()),
            ),
            (
                "LimitRequestBody 105906176",
                format!("LimitRequestBody {}", SERVER_LIMIT_MIB << 20),
            ),
        ],
    );
    exercise(&site, Expect { streams: true });
}

#[test]
fn lighttpd_starting_the_fastcgi_backend() {
    let lighttpd = require("lighttpd", "lighttpd");
    let mut site = Site::new();
    let www = site.path("www");
    std::fs::create_dir(&www).unwrap();
    let dir = site.dir.path().display().to_string();
    let mut substitutions = site.program_substitutions();
    substitutions.extend([
        ("server.port = 8080", format!("server.port = {}", site.port)),
        ("\"/var/www/html\"", format!("\"{}\"", www.display())),
        (
            "\"/run/lighttpd.pid\"",
            format!("\"{dir}/run/lighttpd.pid\""),
        ),
        // lighttpd opens its log after it becomes www-data.
        (
            "\"/var/log/lighttpd/error.log\"",
            format!("\"{dir}/run/lighttpd-error.log\""),
        ),
        (
            "\"/run/lighttpd/fileupload.sock\"",
            format!("\"{dir}/run/fileupload.sock\""),
        ),
        (
            "server.max-request-size = 103424",
            format!("server.max-request-size = {}", SERVER_LIMIT_MIB << 10),
        ),
        (
            "\"FILEUPLOAD_MAX_SIZE\" => \"100\"",
            format!("\"FILEUPLOAD_MAX_SIZE\" => \"{MAX_SIZE_MIB}\""),
        ),
    ]);
    let conf = site.write(
        "lighttpd.conf",
        &site.render("lighttpd.conf", &substitutions),
    );
    site.logs.push(site.run.join("lighttpd-error.log"));
    let log = site.path("lighttpd.log");
    site.spawn(
        "lighttpd",
        Command::new(lighttpd).arg("-D").arg("-f").arg(&conf),
        Some(log),
    );
    site.wait_ready();
    exercise(&site, Expect { streams: true });
}

#[test]
fn the_environment_file_lists_every_setting_with_its_default() {
    let text = std::fs::read_to_string(Path::new(EXAMPLES).join("fileupload.env")).unwrap();
    let mut assignments = Vec::new();
    for setting in fileupload::config::SETTINGS {
        let var = setting.env_var();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("#{var}=")))
            .unwrap_or_else(|| panic!("fileupload.env lacks {var}"));
        assert!(
            text.contains(&format!("(default: {})", setting.default)),
            "fileupload.env does not give {var}'s default {:?}",
            setting.default
        );
        assignments.push(line.trim_start_matches('#').to_owned());
    }
    // Uncommented, the example values are all valid settings.
    let env: Vec<(String, String)> = assignments
        .iter()
        // (Not the ones naming files that exist only on a real host.)
        .filter(|a| {
            ![
                "FILEUPLOAD_UPLOAD_KEY",
                "FILEUPLOAD_DIRECTORY",
                "FILEUPLOAD_CONFIG",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .map(|a| {
            let (k, v) = a.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let config = fileupload::Config::load(&[], |var| {
        env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    });
    assert!(config.is_ok(), "{:?}", config.err());
}

/// nginx-fastcgi.conf keeps its connections to the daemon (`keepalive`,
/// `fastcgi_keep_conn on`). An answer given mid-body must leave them
/// sound: the rest of the body is the client's bytes (`v`, 118), and read
/// as a record header it would be "unsupported FastCGI version 118".
#[test]
fn nginx_kept_connections_to_the_daemon_survive_early_answers() {
    let mut site = Site::new();
    start_nginx_with_the_daemon(&mut site);
    let mut body = b"--XX\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\n".to_vec();
    body.resize(200_000, b'v');
    body.extend_from_slice(b"\r\n--XX--\r\n");
    let body_file = site.write("early.body", "");
    std::fs::write(&body_file, &body).unwrap();
    for round in 0..5 {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H"])
            .arg("Content-Type: multipart/form-data; boundary=XX")
            .arg("--data-binary")
            .arg(format!("@{}", body_file.display()))
            .arg(site.url(&format!("/upload?X-Progress-ID=early-{round}")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (answer, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(code, "400", "{text}\n{}", site.logs_text());
        assert!(answer.contains("not form-data"), "{answer}");
        // The connections nginx kept serve the next requests.
        for _ in 0..3 {
            assert_eq!(site.status("never")["state"], "starting");
        }
        assert_eq!(site.status(&format!("early-{round}"))["status"], 400);
    }
    // A client's headers are no settings: they arrive as HTTP_FILEUPLOAD_*.
    let (file, sha) = site.data_file("after.bin", 300_000, 9);
    let mut curl = Command::new("curl");
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args([
            "-H",
            "Fileupload-Max-Size: 100K",
            "-H",
            "Fileupload-Workers: 2",
        ])
        .arg("-F")
        .arg(format!("file=@{}", file.display()))
        .arg(site.url("/upload?X-Progress-ID=after"));
    let code = String::from_utf8(curl.output().unwrap().stdout).unwrap();
    assert_eq!(code, "200", "{}", site.logs_text());
    assert_eq!(site.status("after")["files"][0]["sha256"], sha.as_str());
    let daemon_log = std::fs::read_to_string(site.path("daemon.log")).unwrap();
    let lines: Vec<&str> = daemon_log
        .lines()
        .filter(|l| !l.starts_with("fileupload: serving FastCGI"))
        .collect();
    assert!(lines.is_empty(), "the daemon logged: {lines:#?}");
    let nginx_log = std::fs::read_to_string(site.path("nginx-error.log")).unwrap_or_default();
    assert!(
        !nginx_log.contains("upstream"),
        "nginx logged upstream trouble: {nginx_log}"
    );
}

/// `fastcgi_param FILEUPLOAD_MAX_SIZE` in the location, as the example's
/// comment shows, is the daemon's limit for that location (its own,
/// from fileupload.env, is 4 MiB here).
#[test]
fn nginx_fastcgi_param_settings_reach_the_daemon() {
    let mut site = Site::new();
    let socket = start_systemd_daemon(&mut site);
    let demo = install_demo_page(&site);
    start_nginx(
        &mut site,
        "nginx-fastcgi.conf",
        &[
            (
                "unix:/run/fileupload/fileupload.sock",
                format!("unix:{}", socket.display()),
            ),
            ("/usr/local/share/fileupload", demo.display().to_string()),
            (
                "# fastcgi_param FILEUPLOAD_MAX_SIZE 100;",
                "fastcgi_param FILEUPLOAD_MAX_SIZE 1;".to_owned(),
            ),
        ],
    );
    let (big, _) = site.data_file("big.bin", 2 << 20, 1);
    let (code, body) = site.upload("param-big", &big, None).finish();
    assert_eq!(code, 413, "{body}\n{}", site.logs_text());
    assert!(body.contains("limit of 1048576 bytes"), "{body}");
    assert_eq!(site.status("param-big")["status"], 413);
    let (small, sha) = site.data_file("small.bin", 500_000, 2);
    let (code, body) = site.upload("param-small", &small, None).finish();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        site.status("param-small")["files"][0]["sha256"],
        sha.as_str()
    );
}
