//! Signed identifiers: with an upload key, only identifiers the application
//! issued (through the CLI or the library) are accepted.

mod common;

use std::process::Command;

use common::*;

struct Keyed {
    pool: TestPool,
    key_file: std::path::PathBuf,
}

impl Keyed {
    fn new(key: &str) -> Keyed {
        let pool = TestPool::new();
        let key_file = pool.path().with_extension("key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        Keyed { pool, key_file }
    }

    fn cgi(&self) -> Cgi {
        self.pool.cgi().env(
            "FILEUPLOAD_UPLOAD_KEY_FILE",
            self.key_file.to_str().unwrap(),
        )
    }

    fn new_id(&self) -> String {
        let out = Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", self.pool.path())
            .env("FILEUPLOAD_UPLOAD_KEY_FILE", &self.key_file)
            .arg("new-id")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Keyed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

#[test]
fn issued_identifiers_work_and_others_are_refused() {
    let keyed = Keyed::new("correct horse battery staple");
    let id = keyed.new_id();
    let (name, signature) = id.split_once(':').expect("signed form");
    assert_eq!(name.len(), 36);
    assert_eq!(signature.len(), 64);
    let form = Form::new().file("f", "a", "text/plain", b"signed");
    let reply = keyed
        .cgi()
        .post_form(&format!("/upload?X-Progress-ID={id}"), &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["identifier"], id.as_str());
    // The folder is named by the unsigned part only.
    assert!(keyed.pool.path().join(name).join("file-1").exists());
    assert_eq!(status_of(&keyed.cgi(), &id)["state"], "done");

    let other_key = Keyed::new("another key");
    let foreign = other_key.new_id();
    let forged = format!("{name}:{}", "0".repeat(64));
    let cases: &[(&str, u16, &str)] = &[
        (name, 403, "not signed"),
        (&forged, 403, "signature does not match"),
        (&foreign, 403, "signature does not match"),
        (
            &format!("{name}:{}", signature.to_uppercase()),
            400,
            "malformed",
        ),
    ];
    for (candidate, status, message) in cases {
        let code = match status {
            403 => "ERR_SIGNATURE",
            _ => "ERR_BAD_IDENTIFIER",
        };
        keyed
            .cgi()
            .post_form(&format!("/upload?X-Progress-ID={candidate}"), &form)
            .assert_error_code(*status, code, message);
        keyed
            .cgi()
            .get(&format!("/upload/status?X-Progress-ID={candidate}"))
            .assert_error_code(*status, code, message);
        keyed
            .cgi()
            .get(&format!("/upload?X-Progress-ID={candidate}&clear"))
            .assert_error_code(*status, code, message);
    }
    // None of that touched the upload.
    assert_eq!(status_of(&keyed.cgi(), &id)["state"], "done");
    // A signed identifier means nothing to a server without a key.
    keyed
        .pool
        .cgi()
        .get(&format!("/upload/status?X-Progress-ID={id}"))
        .assert_error_code(400, "ERR_BAD_IDENTIFIER", "no upload key");
}

#[test]
fn identifiers_are_not_handed_out_over_http_when_keyed() {
    let keyed = Keyed::new("k");
    keyed.cgi().get("/upload/new").assert_error_code(
        403,
        "ERR_NEW_ID_REFUSED",
        "the application issues them",
    );
}

#[test]
fn the_key_is_never_echoed_or_logged() {
    let key = "very-secret-key-value-1234";
    let pool = TestPool::new();
    let cgi = pool.cgi().env("FILEUPLOAD_UPLOAD_KEY", key);
    let replies = [
        cgi.get("/upload/status?X-Progress-ID=unsigned"),
        cgi.get("/upload/new"),
        cgi.clone()
            .env("FILEUPLOAD_MAX_SIZE", "bogus")
            .get("/upload/status?X-Progress-ID=x"),
    ];
    for reply in replies {
        assert!(!reply.text().contains(key), "{}", reply.text());
        assert!(!reply.stderr.contains(key), "{}", reply.stderr);
    }
    // verify-id's explanations do not carry it either.
    let out = Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_UPLOAD_KEY", key)
        .args(["verify-id", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(key));
}
