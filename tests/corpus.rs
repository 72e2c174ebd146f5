//! The project's multipart corpus, `tests/corpus/`: hand-made bodies in the
//! shapes real clients send (Chrome, Safari, Firefox old and new, curl,
//! Internet Explorer), the parser defects of issue 10, RFC 2231 names,
//! transfer encodings, folded headers, odd boundaries, empty parts,
//! preambles and epilogues, data dense with line breaks or almost the
//! delimiter, and bodies that must be refused.
//!
//! Each `NAME.body` has a `NAME.json`: the `Content-Type` to send, the HTTP
//! status, and for a stored upload every file (field, name, content type,
//! exact bytes) and every text field; for a refused one, its stable error
//! `code` (which the recorded status must carry too) and part of the error
//! message. Each body goes through the built binary as a CGI program, and
//! the bytes are checked on disk. The corpus is the project's own; nothing
//! here reads other projects' vectors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

struct Case {
    name: String,
    body: Vec<u8>,
    expect: Value,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every case, checking that each body has its expectations and each
/// expectation its body (a stray file must not silently skip a case).
fn cases() -> Vec<Case> {
    let mut bodies = Vec::new();
    let mut expectations = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).expect("tests/corpus") {
        let path = entry.expect("corpus entry").path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        match path.extension().and_then(|e| e.to_str()) {
            Some("body") => bodies.push(stem),
            Some("json") => expectations.push(stem),
            _ => panic!("unexpected file in tests/corpus: {}", path.display()),
        }
    }
    bodies.sort();
    expectations.sort();
    assert_eq!(bodies, expectations, "every .body needs a .json and back");
    bodies
        .into_iter()
        .map(|name| {
            let dir = corpus_dir();
            let body = std::fs::read(dir.join(format!("{name}.body"))).unwrap();
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let expect = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}.json is not JSON: {e}"));
            Case { name, body, expect }
        })
        .collect()
}

/// The bytes an expectation gives: `data` (text) or `data_hex`.
fn expected_bytes(file: &Value, case: &str) -> Vec<u8> {
    if let Some(text) = file["data"].as_str() {
        return text.as_bytes().to_vec();
    }
    let hex = file["data_hex"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: a file needs data or data_hex"));
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn str_field<'a>(value: &'a Value, key: &str, case: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: {key} should be a string in {value}"))
}

#[test]
fn every_corpus_body_is_stored_exactly_or_refused_with_nothing_stored() {
    let cases = cases();
    // A corpus that lost its files must not pass by checking nothing.
    assert!(cases.len() >= 51, "only {} corpus cases", cases.len());
    let pool = TestPool::new();
    let mut stored = 0;
    let mut refused = 0;
    for (i, case) in cases.iter().enumerate() {
        let name = &case.name;
        let id = format!("corpus-{i}");
        let reply = pool
            .cgi()
            .request("POST", &format!("/upload?X-Progress-ID={id}"))
            .env(
                "CONTENT_TYPE",
                str_field(&case.expect, "content_type", name),
            )
            .env("CONTENT_LENGTH", &case.body.len().to_string())
            .run(&case.body);
        let status = case.expect["status"].as_u64().expect("status") as u16;
        assert_eq!(reply.status, status, "{name}: {}", reply.text());
        assert!(
            !reply.stderr.contains("panicked"),
            "{name}: {}",
            reply.stderr
        );
        let on_disk: Vec<String> = pool
            .bucket_files(&id)
            .into_iter()
            .filter(|f| f.starts_with("file-"))
            .collect();
        if status != 200 {
            reply.assert_error_code(
                status,
                str_field(&case.expect, "code", name),
                str_field(&case.expect, "error", name),
            );
            assert!(
                on_disk.is_empty(),
                "{name}: refused, but {on_disk:?} stored"
            );
            let recorded = status_of(&pool.cgi(), &id);
            assert_eq!(recorded["state"], "error", "{name}: {recorded}");
            assert_eq!(recorded["status"], status, "{name}: {recorded}");
            assert_eq!(recorded["code"], reply.code(), "{name}: {recorded}");
            refused += 1;
            continue;
        }
        let json = reply.json();
        assert_eq!(json["state"], "done", "{name}: {json}");
        let files = json["files"].as_array().cloned().unwrap_or_default();
        let want = case.expect["files"].as_array().expect("files");
        assert_eq!(files.len(), want.len(), "{name}: files {json}");
        assert_eq!(on_disk.len(), want.len(), "{name}: on disk {on_disk:?}");
        for (index, (got, want)) in files.iter().zip(want).enumerate() {
            let what = format!("{name}: file {}", want["field"]);
            assert_eq!(got["field"], want["field"], "{what}");
            assert_eq!(got["filename"], want["filename"], "{what}");
            assert_eq!(got["content-type"], want["content_type"], "{what}");
            let bytes =
                std::fs::read(path_of(&json, index)).unwrap_or_else(|e| panic!("{what}: {e}"));
            let expected = expected_bytes(want, name);
            assert!(
                bytes == expected,
                "{what}: stored {:?}, expected {:?}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&expected)
            );
            // The status tells the truth about what is stored.
            assert_eq!(got["size"], bytes.len(), "{what}");
            assert_eq!(got["sha256"], sha256_hex(&bytes), "{what}");
        }
        let fields: BTreeMap<String, Value> = json["fields"]
            .as_object()
            .map(|o| o.clone().into_iter().collect())
            .unwrap_or_default();
        let want: BTreeMap<String, Value> = case.expect["fields"]
            .as_object()
            .expect("fields")
            .clone()
            .into_iter()
            .collect();
        assert_eq!(fields, want, "{name}: fields");
        stored += 1;
    }
    assert!(
        stored >= 33 && refused >= 18,
        "{stored} stored, {refused} refused"
    );
}
