//! The README's first command, `scripts/try`: a CGI round trip with no
//! configuration. Run here against the test build, so the walkthrough the
//! README promises is checked on every run.

mod common;

use std::process::Command;

#[test]
fn scripts_try_uploads_watches_progress_and_clears() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/try"))
        .env("FILEUPLOAD_BIN", common::bin())
        .env("TMPDIR", tmp.path())
        .env("TRY_RATE", "8")
        .output()
        .expect("run scripts/try");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mid_upload = text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(words.as_slice(), ["progress:", "uploading", received, size]
            if received.parse::<u64>().unwrap() > 0 && received < size)
    });
    assert!(mid_upload, "no progress seen mid-upload:\n{text}");
    assert!(text.contains("progress: done 8388"), "{text}");
    let sha = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
    };
    assert_eq!(sha("sha256 sent:"), sha("sha256 stored:"));
    assert!(sha("sha256 sent:").is_some_and(|s| s.len() == 64));
    assert!(text.contains(r#"clear: {"success":true}"#), "{text}");
    assert!(
        text.contains(r#"status after clear: {"state":"starting"}"#),
        "{text}"
    );
    // The default pool was made under TMPDIR, and is empty again but for
    // the folder deletions happen in, itself empty.
    let pool = tmp.path().join("fileupload");
    let left: Vec<_> = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty() || left == [".trash"], "{left:?}");
    let trash = pool.join(".trash");
    assert!(!trash.exists() || std::fs::read_dir(trash).unwrap().count() == 0);
}
