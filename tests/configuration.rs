//! Configuration as a CGI program sees it: defaults, environment, config
//! file, and what a mistake looks like (one line in the error log, a 500
//! JSON answer, never a panic).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn runs_with_no_configuration_at_all() {
    // The default pool is <temp dir>/fileupload, made on first use.
    let tmp = tempfile::tempdir().unwrap();
    let cgi = Cgi::new().env("TMPDIR", tmp.path().to_str().unwrap());
    let form = Form::new().file("f", "a.txt", "text/plain", b"zero config");
    let reply = cgi.post_form("/upload?X-Progress-ID=zero", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pool = tmp.path().join("fileupload");
    assert_eq!(path_of(&reply.json(), 0), pool.join("zero/file-1"));
    let mode = std::fs::metadata(&pool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(status_of(&cgi, "zero")["state"], "done");
}

#[test]
fn a_default_pool_owned_by_someone_else_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("fileupload");
    std::fs::create_dir(&pool).unwrap();
    // Give it away (we run as root in CI; elsewhere chown fails and the
    // test cannot say anything, so it insists on being able to).
    let status = std::process::Command::new("chown")
        .arg("65534")
        .arg(&pool)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "chown needs root; the test suite runs as root"
    );
    let reply = Cgi::new()
        .env("TMPDIR", tmp.path().to_str().unwrap())
        .get("/upload/status?X-Progress-ID=x");
    reply.assert_error(500, "belongs to user id 65534");
    assert!(
        reply.stderr.contains("belongs to user id 65534"),
        "{}",
        reply.stderr
    );
}

#[test]
fn bad_configuration_is_one_log_line_and_a_500() {
    let pool = TestPool::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "FILEUPLOAD_MAX_SIZE",
            "ten",
            "FILEUPLOAD_MAX_SIZE: invalid size \"ten\"",
        ),
        (
            "FILEUPLOAD_DIRECTORY",
            "relative",
            "must be an absolute path",
        ),
        (
            "FILEUPLOAD_UPLOAD_KEY_FILE",
            "/nonexistent/key",
            "cannot read upload key file /nonexistent/key",
        ),
        (
            "FILEUPLOAD_CONFIG",
            "/nonexistent.conf",
            "cannot read config file /nonexistent.conf",
        ),
        ("FILEUPLOAD_SHA256", "perhaps", "invalid switch \"perhaps\""),
    ];
    for (var, value, logged) in cases {
        let reply = pool
            .cgi()
            .env(var, value)
            .get("/upload/status?X-Progress-ID=x");
        reply.assert_error(500, "the upload service is misconfigured");
        let lines: Vec<&str> = reply.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{var}: {}", reply.stderr);
        assert!(
            lines[0].starts_with("fileupload: configuration error: "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(logged), "{var}: {}", lines[0]);
        assert!(
            !reply.text().contains(value),
            "details stay in the log: {}",
            reply.text()
        );
    }
}

#[test]
fn a_missing_or_unusable_pool_is_a_clear_500() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let reply = Cgi::new()
        .env("FILEUPLOAD_DIRECTORY", missing.to_str().unwrap())
        .get("/upload/status?X-Progress-ID=x");
    reply.assert_error(500, "does not exist");
    assert!(reply.stderr.contains("does not exist"), "{}", reply.stderr);
    assert!(!missing.exists(), "a configured pool is not created");
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let form = Form::new().file("f", "a", "text/plain", b"x");
    let reply = Cgi::new()
        .env("FILEUPLOAD_DIRECTORY", file.to_str().unwrap())
        .post_form("/upload?X-Progress-ID=x", &form);
    reply.assert_error(500, "not a directory");
}

#[test]
fn config_file_with_original_directive_names() {
    let pool = TestPool::new();
    let conf = pool.path().with_extension("conf");
    std::fs::write(
        &conf,
        format!(
            "# Paster-style file from the Python original\n[filter:fileupload]\ndirectory = {}\nmax_size = 1\n",
            pool.path().display()
        ),
    )
    .unwrap();
    let cgi = Cgi::new().env("FILEUPLOAD_CONFIG", conf.to_str().unwrap());
    let big = Form::new().file(
        "f",
        "a",
        "application/octet-stream",
        &random_bytes(1_100_000, 1),
    );
    cgi.post_form("/upload?X-Progress-ID=big", &big)
        .assert_error(413, "limit of 1048576");
    // The environment wins over the file.
    let reply = cgi
        .env("FILEUPLOAD_MAX_SIZE", "2M")
        .post_form("/upload?X-Progress-ID=big2", &big);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(pool.path().join("big2/file-1").exists());
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn file_mode_is_applied_exactly() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"x");
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_FILE_MODE", "0640")
        .post_form("/upload?X-Progress-ID=modes", &form);
    let path = path_of(&reply.json(), 0);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o640);
    assert_eq!(mode(path.parent().unwrap()), 0o750);
}
