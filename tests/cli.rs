//! The command line: the original's API for applications in any language.

mod common;

use std::process::Output;

use common::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let pool = TestPool::new();
    let out = pool.cli(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for word in [
        "new-id",
        "verify-id",
        "status ID",
        "path ID",
        "clear ID",
        "gc",
        "--directory",
        "--max-size",
        "--upload-key-file",
        "--config",
    ] {
        assert!(help.contains(word), "help lacks {word}");
    }
    assert!(
        !help.contains("--upload-key "),
        "the key itself is not an option"
    );
    let out = pool.cli(&["--version"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("fileupload {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let pool = TestPool::new();
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["frobnicate"], "unknown command \"frobnicate\""),
        (&["status"], "status takes 1 argument(s), got 0"),
        (&["new-id", "extra"], "new-id takes 0 argument(s)"),
        (&["--bogus", "new-id"], "Unrecognized option"),
        (
            &["--max-size", "huge", "new-id"],
            "option --max-size: invalid size",
        ),
        (&["gc"], "gc needs --max-age"),
        (&["status", "../x"], "malformed upload identifier"),
    ];
    for (args, message) in cases {
        let out = pool.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
}

#[test]
fn identifiers() {
    let pool = TestPool::new();
    let out = pool.cli(&["new-id"]);
    assert!(out.status.success());
    let id = stdout(&out).trim().to_owned();
    assert_eq!(id.len(), 36);
    assert!(pool.cli(&["verify-id", &id]).status.success());
    let out = pool.cli(&["verify-id", "../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("malformed upload identifier"));
}

#[test]
fn status_path_and_clear_of_an_upload() {
    let pool = TestPool::new();
    let out = pool.cli(&["status", "cli-1"]);
    assert_eq!(stdout(&out).trim(), r#"{"state":"starting"}"#);
    let out = pool.cli(&["path", "cli-1"]);
    assert_eq!(out.status.code(), Some(1), "not complete yet");
    assert!(stderr(&out).contains("not complete"));

    let form = Form::new().file("a", "one.txt", "text/plain", b"one").file(
        "b",
        "two.txt",
        "text/plain",
        b"two",
    );
    assert_eq!(
        pool.cgi()
            .post_form("/upload?X-Progress-ID=cli-1", &form)
            .status,
        200
    );
    let out = pool.cli(&["status", "cli-1"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "done");
    let out = pool.cli(&["path", "cli-1"]);
    assert!(out.status.success());
    let bucket = pool.path().join("cli-1");
    let expected = format!(
        "{}\n{}\n",
        bucket.join("file-1").display(),
        bucket.join("file-2").display()
    );
    assert_eq!(stdout(&out), expected);
    let out = pool.cli(&["clear", "cli-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!bucket.exists());
}

#[test]
fn options_win_over_the_environment() {
    let pool = TestPool::new();
    let other = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"x");
    assert_eq!(
        other
            .cgi()
            .post_form("/upload?X-Progress-ID=elsewhere", &form)
            .status,
        200
    );
    // The environment points at `pool`; the option at `other`.
    let out = pool.cli(&[
        "--directory",
        other.path().to_str().unwrap(),
        "status",
        "elsewhere",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "done");
}
