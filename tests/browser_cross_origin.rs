//! A dedicated upload server on another origin, in headless Chromium:
//! conf-examples/upload-server/ as its comments set it up (nginx serving the
//! application's page and its identifier-minting CGI through fcgiwrap on
//! one origin, the FastCGI daemon with a key and `allowed_origins` on
//! another). The page on `http://127.0.0.1:A` uploads by XHR to
//! `http://localhost:B`, polls progress there (preflighted: the poll sends
//! `X-Progress-ID` as a header), and uploads resumably with tus-js-client;
//! the same page on an origin that is not listed (`http://localhost:A`) is
//! refused, by the server before any byte is stored, and by the browser.
//! Bytes are checked on disk; what reached the server is read from nginx's
//! access log.
//!
//! Under an upload policy (mint-id given `new-id` options, as its comment
//! says), an over-size file, a refused type and an expired identifier each
//! end in the page with the server's error code, shown in `#error`, and
//! nothing stored.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::site::{
    EXAMPLES, Site, free_port, run, run_chown, start_fcgiwrap, start_nginx_with,
    start_systemd_daemon,
};
use common::webdriver::Browser;
use common::*;

/// The example deployed, and a browser.
struct CrossOrigin {
    site: Site,
    upload_port: u16,
    access_log: PathBuf,
    browser: Browser,
}

/// Which button of the page.
#[derive(Clone, Copy)]
enum Mode {
    /// XHR with a form, progress polled.
    Form,
    /// tus-js-client.
    Resumable,
}

impl CrossOrigin {
    /// Deploys conf-examples/upload-server/; `policy`: the options its
    /// mint-id passes to `fileupload new-id` (empty: none, as shipped).
    fn start(policy: &str) -> CrossOrigin {
        let mut site = Site::new();
        let upload_port = free_port();
        let app_origin = format!("http://127.0.0.1:{}", site.port);
        let upload_origin = format!("http://localhost:{upload_port}");

        let key = site.write("upload.key", "a key for the cross-origin test\n");
        run_chown(&key);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let key_substitution = ("/etc/fileupload/upload.key", key.display().to_string());

        // The daemon's environment file, as the example gives it.
        let env = site.render(
            "upload-server/fileupload.env",
            &[
                key_substitution.clone(),
                ("http://127.0.0.1:8080", app_origin.clone()),
            ],
        );
        for line in env
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.split_once('=').expect("NAME=value");
            site.daemon_env.push((name.to_owned(), value.to_owned()));
        }
        let daemon_socket = start_systemd_daemon(&mut site);
        let fcgiwrap_socket = start_fcgiwrap(&mut site);

        // The page and the CGI, installed by the lines the example's
        // comments give (run from the repository's root, as a reader
        // would), then edited as they say: the upload server's URL in the
        // page; the test's program and key in mint-id.
        let app = site.path("app");
        let app_dir = app.display().to_string();
        let example =
            std::fs::read_to_string(Path::new(EXAMPLES).join("upload-server/nginx.conf")).unwrap();
        let installs: Vec<String> = example
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .map(str::trim)
            .filter(|l| l.starts_with("install ") && l.contains("fileupload-app"))
            .map(|l| {
                l.replace("/usr/local/share/fileupload-app", &app_dir)
                    .replace("/usr/local/lib/fileupload-app", &app_dir)
            })
            .collect();
        assert_eq!(
            installs.len(),
            2,
            "the example no longer says how to install the page and mint-id"
        );
        for line in &installs {
            run(Command::new("sh")
                .arg("-c")
                .arg(line)
                .current_dir(env!("CARGO_MANIFEST_DIR")));
        }
        let edit = |name: &str, substitutions: &[(&str, String)]| {
            let path = app.join(name);
            let mut text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{name} was not installed: {e}"));
            for (from, to) in substitutions {
                assert!(text.contains(from), "{name} no longer contains {from:?}");
                text = text.replace(from, to);
            }
            std::fs::write(&path, text).unwrap();
        };
        edit("index.html", &[("http://127.0.0.1:8081", upload_origin)]);
        assert!(
            app.join("tus.min.js").is_file(),
            "tus.min.js was not installed"
        );
        let mut mint = vec![
            ("/usr/local/bin/fileupload", site.bin.display().to_string()),
            key_substitution,
        ];
        if !policy.is_empty() {
            mint.push(("\nset --\n", format!("\nset -- {policy}\n")));
        }
        edit("mint-id", &mint);
        let mode = std::fs::metadata(app.join("mint-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "mint-id is not installed executable");

        let access_log = site.path("upload-access.log");
        let block = site.render(
            "upload-server/nginx.conf",
            &[
                site.port_substitution(),
                (
                    "listen 127.0.0.1:8081;",
                    format!(
                        "listen 127.0.0.1:{upload_port};\n    access_log {};",
                        access_log.display()
                    ),
                ),
                ("/usr/local/share/fileupload-app", app_dir.clone()),
                ("/usr/local/lib/fileupload-app", app_dir),
                (
                    "unix:/run/fcgiwrap.socket",
                    format!("unix:{}", fcgiwrap_socket.display()),
                ),
                (
                    "unix:/run/fileupload/fileupload.sock",
                    format!("unix:{}", daemon_socket.display()),
                ),
            ],
        );
        start_nginx_with(&mut site, &block);
        let minted = site.request("POST", "/mint-id", &[], b"");
        assert_eq!(
            minted.status,
            200,
            "mint-id: {}\n{}",
            minted.text(),
            site.logs_text()
        );
        let minted: Value = serde_json::from_slice(&minted.body)
            .unwrap_or_else(|e| panic!("mint-id answered no JSON ({e}): {}", minted.text()));
        assert!(
            minted["identifier"]
                .as_str()
                .is_some_and(|id| id.contains(':')),
            "mint-id gave no signed identifier: {minted}"
        );
        CrossOrigin {
            site,
            upload_port,
            access_log,
            browser: Browser::start(),
        }
    }

    /// The page on the listed origin (`http://127.0.0.1:A/`), or on one
    /// that is not (`http://localhost:A/`, the same server by another
    /// name).
    fn page(&self, listed: bool) -> String {
        let host = if listed { "127.0.0.1" } else { "localhost" };
        format!("http://{host}:{}/", self.site.port)
    }

    /// Opens `page`, chooses `file`, presses the button for `mode` and
    /// returns the page's outcome once it has one.
    fn upload(&self, page: &str, mode: Mode, file: &Path) -> Value {
        self.browser.goto(page);
        self.browser
            .send_keys(&self.browser.find("#file"), file.to_str().unwrap());
        let button = match mode {
            Mode::Form => "#form-upload",
            Mode::Resumable => "#resumable-upload",
        };
        self.browser.click(&self.browser.find(button));
        self.browser
            .wait_for("window.outcome", Duration::from_secs(60))
            .clone()
    }

    fn data_file(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let data = random_bytes(len, seed);
        let path = self.site.path(name);
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    /// The upload server's access log: one line a request.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn logged(&self, method_and_path: &str, status: u16) -> bool {
        self.requests().iter().any(|l| {
            l.contains(&format!("\"{method_and_path}")) && l.contains(&format!("\" {status} "))
        })
    }

    fn pool_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.site.pool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    fn context(&self) -> String {
        format!(
            "upload server on port {}\naccess log:\n{}\n{}",
            self.upload_port,
            self.requests().join("\n"),
            self.site.logs_text()
        )
    }
}

#[test]
fn a_page_on_another_origin_uploads_polls_and_resumes_across_origins() {
    let deployment = CrossOrigin::start("");
    let page = deployment.page(true);

    // A form by XHR, slowed so that progress polls happen during it.
    let (file, data) = deployment.data_file("form.bin", 3 << 20, 21);
    deployment.browser.goto(&page);
    deployment.browser.throttle_upload(1 << 20);
    let outcome = deployment.upload(&page, Mode::Form, &file);
    assert_eq!(
        outcome["state"],
        "done",
        "{outcome}\n{}",
        deployment.context()
    );
    let stored = std::fs::read(path_of(&outcome["result"], 0)).unwrap();
    assert!(stored == data, "the stored file differs from the one sent");
    let id = outcome["identifier"].as_str().unwrap();
    assert!(id.contains(':'), "not a signed identifier: {id}");
    assert!(
        outcome["polls"].as_u64().unwrap_or(0) >= 1,
        "no poll was read: {outcome}"
    );
    assert_eq!(outcome["pollErrors"], 0, "{outcome}");
    // The poll's header made the browser ask first; the form post itself
    // is a simple request, sent without.
    assert!(
        deployment.logged("OPTIONS /upload/status", 204),
        "no preflight for the poll reached the server\n{}",
        deployment.context()
    );
    assert!(
        deployment.logged("GET /upload/status", 200),
        "{}",
        deployment.context()
    );
    assert!(
        deployment.logged("POST /upload?X-Progress-ID=", 200),
        "{}",
        deployment.context()
    );

    // Resumable, in chunks of 256 KiB.
    let (file, data) = deployment.data_file("resumable.bin", 1 << 20, 22);
    let outcome = deployment.upload(&page, Mode::Resumable, &file);
    assert_eq!(
        outcome["state"],
        "done",
        "{outcome}\n{}",
        deployment.context()
    );
    assert_eq!(outcome["result"]["state"], "done", "{outcome}");
    let id = outcome["identifier"].as_str().unwrap();
    let folder = id.split(':').next().unwrap();
    let stored = std::fs::read(deployment.site.pool.join(folder).join("file-1")).unwrap();
    assert!(stored == data, "the resumable upload's bytes differ");
    assert!(
        deployment.logged("OPTIONS /upload/files", 204),
        "{}",
        deployment.context()
    );
    assert!(
        deployment.logged("POST /upload/files", 201),
        "{}",
        deployment.context()
    );
    let patches = deployment
        .requests()
        .iter()
        .filter(|l| l.contains("\"PATCH /upload/files/") && l.contains("\" 204 "))
        .count();
    assert!(patches >= 4, "{patches} chunks\n{}", deployment.context());
}

#[test]
fn a_page_on_an_unlisted_origin_is_refused_and_nothing_is_stored() {
    let deployment = CrossOrigin::start("");
    let page = deployment.page(false);
    let (file, _) = deployment.data_file("refused.bin", 200_000, 23);
    assert!(deployment.pool_entries().is_empty());

    // The form post needs no preflight: the server itself must refuse it.
    let outcome = deployment.upload(&page, Mode::Form, &file);
    assert_eq!(
        outcome["state"],
        "error",
        "{outcome}\n{}",
        deployment.context()
    );
    // The browser shows the page nothing of the refusal.
    assert_eq!(outcome["status"], 0, "{outcome}");
    assert!(
        deployment.logged("POST /upload?X-Progress-ID=", 403),
        "the server did not refuse the form post\n{}",
        deployment.context()
    );
    let shown = deployment
        .browser
        .script("return document.getElementById('error').textContent;");
    assert!(
        shown.as_str().unwrap_or("").contains("refused this page"),
        "{shown}"
    );

    let outcome = deployment.upload(&page, Mode::Resumable, &file);
    assert_eq!(
        outcome["state"],
        "error",
        "{outcome}\n{}",
        deployment.context()
    );
    assert!(
        deployment.logged("OPTIONS /upload/files", 403),
        "the preflight was not refused\n{}",
        deployment.context()
    );
    assert!(
        !deployment
            .requests()
            .iter()
            .any(|l| l.contains("\"POST /upload/files")),
        "the browser sent the creation after a refused preflight\n{}",
        deployment.context()
    );
    assert!(
        deployment.pool_entries().is_empty(),
        "stored: {:?}",
        deployment.pool_entries()
    );
}

/// What the page shows after a refused upload: the outcome's code, the
/// HTTP status the page could read, and the `#error` text.
fn refused(deployment: &CrossOrigin, page: &str, mode: Mode, file: &Path) -> (String, u64, String) {
    let outcome = deployment.upload(page, mode, file);
    assert_eq!(
        outcome["state"],
        "error",
        "{outcome}\n{}",
        deployment.context()
    );
    let shown = deployment
        .browser
        .script("return document.getElementById('error').textContent;");
    (
        outcome["code"].as_str().unwrap_or("").to_owned(),
        outcome["status"].as_u64().unwrap_or(0),
        shown.as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn a_policy_refuses_an_over_size_file_a_type_not_accepted_and_an_expired_identifier_in_the_page() {
    let deployment = CrossOrigin::start("--expires 1h --size-limit 100K --accept image/png");
    let page = deployment.page(true);
    let png = |len: usize, seed: u64| {
        let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
        data.extend(random_bytes(len - data.len(), seed));
        data
    };
    let write = |name: &str, data: &[u8]| {
        let path = deployment.site.path(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let big = write("big.png", &png(300_000, 31));
    let text = write("notes.txt", b"plain text, not an image\n");
    let fake = write("fake.png", &random_bytes(20_000, 32));
    let small = write("small.png", &png(20_000, 33));
    let cases = [
        (&big, Mode::Form, "ERR_TOO_LARGE", 413),
        (&big, Mode::Resumable, "ERR_TOO_LARGE", 413),
        (&text, Mode::Form, "ERR_TYPE_NOT_ACCEPTED", 415),
        (&text, Mode::Resumable, "ERR_TYPE_NOT_ACCEPTED", 415),
        // Declared a PNG, but its first bytes are not one.
        (&fake, Mode::Form, "ERR_TYPE_NOT_ACCEPTED", 415),
        (&fake, Mode::Resumable, "ERR_TYPE_NOT_ACCEPTED", 415),
    ];
    for (file, mode, code, status) in cases {
        let (got, got_status, shown) = refused(&deployment, &page, mode, file);
        let what = format!(
            "{} by {}",
            file.display(),
            match mode {
                Mode::Form => "form",
                Mode::Resumable => "tus",
            }
        );
        assert_eq!(got, code, "{what}: {shown}\n{}", deployment.context());
        assert_eq!(got_status, status, "{what}");
        assert!(
            shown.starts_with(&format!("{code}: ")),
            "{what}: the page shows {shown:?}"
        );
    }
    assert_stores_no_file(&deployment);

    // Within the policy, the same page stores the file.
    let outcome = deployment.upload(&page, Mode::Form, &small);
    assert_eq!(
        outcome["state"],
        "done",
        "{outcome}\n{}",
        deployment.context()
    );

    // An identifier used after its policy expired, as one copied out of a
    // page would be: mint-id now hands out one minted to expire in 1 s.
    let minted = Command::new(&deployment.site.bin)
        .args(["new-id", "--expires", "1s", "--accept", "image/png"])
        .env_clear()
        .env(
            "FILEUPLOAD_UPLOAD_KEY_FILE",
            deployment.site.path("upload.key"),
        )
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let id = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let cgi = deployment.site.path("app").join("mint-id");
    std::fs::write(
        &cgi,
        format!(
            "#!/bin/sh\nprintf 'Content-Type: application/json\\r\\n\\r\\n'\n\
             printf '{{\"identifier\":\"%s\"}}\\n' '{id}'\n"
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let before = deployment.pool_entries();
    for mode in [Mode::Form, Mode::Resumable] {
        let (got, got_status, shown) = refused(&deployment, &page, mode, &small);
        assert_eq!(got, "ERR_EXPIRED", "{shown}\n{}", deployment.context());
        assert_eq!(got_status, 403);
        assert!(
            shown.starts_with("ERR_EXPIRED: "),
            "the page shows {shown:?}"
        );
    }
    assert_eq!(
        deployment.pool_entries(),
        before,
        "an expired identifier stored something"
    );
}

/// No upload folder in the pool holds a data file.
fn assert_stores_no_file(deployment: &CrossOrigin) {
    for entry in deployment.pool_entries() {
        let folder = deployment.site.pool.join(&entry);
        let files: Vec<String> = std::fs::read_dir(&folder)
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("file-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(files.is_empty(), "{entry} holds {files:?}");
    }
}
