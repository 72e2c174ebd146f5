//! tus 1.0 in-process: requests made in memory through the handler, a pool
//! in a temporary directory, the bytes checked on disk. The transports
//! passing the methods through are tested with them (tests/serve.rs,
//! tests/fastcgi.rs, tests/upload.rs for CGI).

mod common;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use fileupload::http::{Body, Request};
use fileupload::identifier::{Key, create_identifier};
use fileupload::{Config, handler};
use serde_json::Value;

use common::in_process::{self, Answer, Fed};
use common::{random_bytes, sha256_hex, wait_for};

const CHUNK: &str = "application/offset+octet-stream";
const BASE: &str = "/cgi-bin/fileupload/upload/files";

impl Answer {
    fn assert_status(&self, status: u16) -> &Answer {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("Tus-Resumable"),
            Some("1.0.0"),
            "every tus answer says its version: {}",
            self.text()
        );
        self
    }

    /// An error answer: the status, the JSON body with its code.
    fn assert_error(&self, status: u16, code: &str) {
        self.assert_status(status);
        if self.head {
            assert!(self.body.is_empty(), "{}", self.text());
            return;
        }
        let json = self.json();
        assert_eq!(json["code"], code, "{}", self.text());
        assert_eq!(json["state"], "error");
        assert_eq!(json["status"], status);
    }

    fn offset(&self) -> u64 {
        self.header("Upload-Offset")
            .unwrap_or_else(|| panic!("no Upload-Offset: {}", self.text()))
            .parse()
            .unwrap()
    }

    /// The identifier at the end of `Location`.
    fn id(&self) -> String {
        let location = self
            .header("Location")
            .unwrap_or_else(|| panic!("no Location: {}", self.text()));
        let id = location
            .strip_prefix(&format!("{BASE}/"))
            .unwrap_or_else(|| panic!("Location {location} is not under {BASE}"));
        id.to_owned()
    }
}

struct Server {
    dir: tempfile::TempDir,
    config: Config,
}

impl Server {
    fn new(extra: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut options = vec![
            ("directory", dir.path().to_str().unwrap().to_owned()),
            ("progress_interval", "20ms".to_owned()),
        ];
        let mut key = None;
        for (name, value) in extra {
            match *name {
                // Never an option (a command line is public): set as the
                // environment would.
                "upload_key" => key = Key::new(value.as_bytes()),
                _ => options.push((name, value.to_string())),
            }
        }
        let mut config = Config::load(&options, |_| None).unwrap();
        config.upload_key = key.or(config.upload_key);
        Server { dir, config }
    }

    fn key(&self) -> Key {
        self.config.upload_key.clone().expect("a key is set")
    }

    /// One request through the handler (see [`in_process::send`]).
    fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &mut dyn Body,
    ) -> Answer {
        in_process::send(&self.config, method, target, headers, body)
    }

    /// A tus request without a body.
    fn tus(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("Tus-Resumable", "1.0.0")];
        all.extend_from_slice(headers);
        self.send(method, target, &all, &mut io::empty())
    }

    fn create(&self, headers: &[(&str, &str)]) -> Answer {
        self.tus("POST", BASE, headers)
    }

    fn head(&self, id: &str) -> Answer {
        self.tus("HEAD", &format!("{BASE}/{id}"), &[])
    }

    /// A PATCH with `data` as its body, announced by `Content-Length`.
    fn patch(&self, id: &str, offset: u64, data: &[u8], extra: &[(&str, &str)]) -> Answer {
        let offset = offset.to_string();
        let length = data.len().to_string();
        let mut headers = vec![
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", CHUNK),
            ("Upload-Offset", offset.as_str()),
            ("Content-Length", length.as_str()),
        ];
        headers.extend_from_slice(extra);
        self.send("PATCH", &format!("{BASE}/{id}"), &headers, &mut &data[..])
    }

    fn status(&self, id: &str) -> Value {
        let answer = self.send(
            "GET",
            &format!("/cgi-bin/fileupload/upload/status?X-Progress-ID={id}"),
            &[],
            &mut io::empty(),
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()
    }

    /// The data file of the upload whose folder is `name`.
    fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("file-1")
    }

    fn stored(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.data(name)).unwrap_or_default()
    }
}

/// A body that arrives in these pieces, one read each.
fn pieces(pieces: &[&[u8]]) -> Fed {
    let (feed, fed) = mpsc::channel();
    for piece in pieces {
        feed.send(Ok(piece.to_vec())).unwrap();
    }
    Fed(fed, Vec::new())
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

fn b64(text: &str) -> String {
    // The metadata of these tests is ASCII: a tiny encoder keeps the test
    // independent of the program's.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in text.as_bytes().chunks(3) {
        let mut n = 0u32;
        for (i, b) in group.iter().enumerate() {
            n |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..4 {
            out.push(if i <= group.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn options_lists_what_is_implemented_without_needing_a_version() {
    let server = Server::new(&[("max_size", "1M")]);
    for target in [BASE.to_owned(), format!("{BASE}/anything")] {
        let answer = server.send("OPTIONS", &target, &[], &mut io::empty());
        answer.assert_status(204);
        assert_eq!(answer.header("Tus-Version"), Some("1.0.0"));
        assert_eq!(
            answer.header("Tus-Extension"),
            Some(
                "creation,creation-with-upload,creation-defer-length,termination,expiration,\
                 checksum,concatenation"
            )
        );
        assert_eq!(
            answer.header("Tus-Checksum-Algorithm"),
            Some("sha1,md5,crc32,sha256")
        );
        assert_eq!(answer.header("Tus-Max-Size"), Some("1048576"));
        assert_eq!(answer.header("Content-Length"), None, "a 204 has none");
    }
    let unlimited = Server::new(&[]);
    let answer = unlimited.send("OPTIONS", BASE, &[], &mut io::empty());
    assert_eq!(answer.header("Tus-Max-Size"), None, "{}", answer.text());
}

#[test]
fn an_upload_in_chunks_is_stored_byte_for_byte_and_done() {
    let server = Server::new(&[("max_age", "1h")]);
    let data = random_bytes(700_000, 7);
    let length = data.len().to_string();
    let metadata = format!("filename {},filetype {}", b64("clip.mp4"), b64("video/mp4"));
    let created = server.create(&[("Upload-Length", &length), ("Upload-Metadata", &metadata)]);
    created.assert_status(201);
    assert_eq!(created.offset(), 0);
    let expires = created.header("Upload-Expires").expect("max_age is set");
    assert!(expires.ends_with(" GMT"), "{expires}");
    let id = created.id();
    assert!(is_uuid(&id), "a minted identifier is a UUID: {id}");

    let head = server.head(&id);
    head.assert_status(200);
    assert_eq!(head.offset(), 0);
    assert_eq!(head.header("Upload-Length"), Some(length.as_str()));
    assert_eq!(head.header("Cache-Control"), Some("no-store"));
    assert_eq!(
        head.header("Upload-Metadata").map(|m| m.len()),
        Some(metadata.len())
    );
    assert!(head.body.is_empty());

    let mut offset = 0;
    for piece in data.chunks(250_000) {
        let answer = server.patch(&id, offset, piece, &[]);
        answer.assert_status(204);
        offset += piece.len() as u64;
        let last = offset == data.len() as u64;
        assert_eq!(
            answer.header("Upload-Expires").is_some(),
            !last,
            "Upload-Expires while incomplete: {}",
            answer.text()
        );
        assert_eq!(answer.offset(), offset);
        assert_eq!(
            server.stored(&id),
            data[..offset as usize],
            "on disk after {offset}"
        );
        assert_eq!(server.head(&id).offset(), offset);
    }
    let status = server.status(&id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["resumable"], true);
    assert_eq!(status["filename"], "clip.mp4");
    assert_eq!(status["content-type"], "video/mp4");
    assert_eq!(status["size"], data.len());
    assert_eq!(status["offset"], data.len());
    let file = &status["files"][0];
    assert_eq!(file["sha256"], sha256_hex(&data).as_str());
    assert_eq!(file["filename"], "clip.mp4");
    assert_eq!(file["content-type"], "video/mp4");
    assert_eq!(Path::new(file["path"].as_str().unwrap()), server.data(&id));
    assert_eq!(std::fs::read(server.data(&id)).unwrap(), data);
    // Complete: HEAD says so, and no more chunks are taken.
    let head = server.head(&id);
    head.assert_status(200);
    assert_eq!(head.offset(), data.len() as u64);
    assert_eq!(head.header("Upload-Expires"), None);
    server
        .patch(&id, offset, b"x", &[])
        .assert_error(409, "ERR_UPLOAD_COMPLETE");
}

#[test]
fn the_status_between_and_during_patches_is_uploading_with_the_offset() {
    let server = Server::new(&[("max_age", "1h")]);
    let created = server.create(&[("Upload-Length", "1000")]);
    let id = created.id();
    let status = server.status(&id);
    assert_eq!(status["state"], "uploading", "{status}");
    assert_eq!(status["received"], 0);
    assert_eq!(status["size"], 1000);
    assert_eq!(status["resumable"], true);
    assert_eq!(status["offset"], 0);
    let now = fileupload::pool::unix_now();
    let expires = status["expires"].as_u64().expect("expires");
    assert!((now + 3590..=now + 3610).contains(&expires), "{status}");
    server.patch(&id, 0, &[1; 300], &[]).assert_status(204);
    let status = server.status(&id);
    assert_eq!(
        (&status["state"], &status["received"], &status["offset"]),
        (
            &Value::from("uploading"),
            &Value::from(300),
            &Value::from(300)
        ),
        "{status}"
    );
    // On disk it stays incomplete: the pool's liveness rule is for
    // `uploading` only.
    let stored: Value = serde_json::from_slice(
        &std::fs::read(server.dir.path().join(&id).join("status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["state"], "incomplete", "{stored}");

    // During a PATCH: the bytes as they reach the file.
    let (feed, fed) = mpsc::channel();
    let running = std::thread::scope(|scope| {
        let patch = scope.spawn(|| {
            let mut body = Fed(fed, Vec::new());
            server.send(
                "PATCH",
                &format!("{BASE}/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", CHUNK),
                    ("Upload-Offset", "300"),
                    ("Content-Length", "700"),
                ],
                &mut body,
            )
        });
        feed.send(Ok(vec![2; 200])).unwrap();
        let seen = wait_for(Duration::from_secs(10), || {
            let status = server.status(&id);
            (status["received"] == 500).then_some(status)
        })
        .expect("the status never showed the bytes of the running PATCH");
        assert_eq!(seen["state"], "uploading", "{seen}");
        assert_eq!(
            server.head(&id).offset(),
            500,
            "HEAD is not held up by the PATCH"
        );
        feed.send(Ok(vec![3; 500])).unwrap();
        drop(feed);
        patch.join().unwrap()
    });
    running.assert_status(204);
    assert_eq!(running.offset(), 1000);
    let mut expected = vec![1; 300];
    expected.extend([2; 200]);
    expected.extend([3; 500]);
    assert_eq!(server.stored(&id), expected);
    assert_eq!(server.status(&id)["state"], "done");
}

#[test]
fn a_patch_cut_mid_way_leaves_the_upload_resumable_at_what_reached_the_file() {
    let server = Server::new(&[]);
    let data = random_bytes(100_000, 3);
    let id = server.create(&[("Upload-Length", "100000")]).id();
    let (feed, fed) = mpsc::channel();
    let cut = std::thread::scope(|scope| {
        let patch = scope.spawn(|| {
            let mut body = Fed(fed, Vec::new());
            server.send(
                "PATCH",
                &format!("{BASE}/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", CHUNK),
                    ("Upload-Offset", "0"),
                    ("Content-Length", "100000"),
                ],
                &mut body,
            )
        });
        feed.send(Ok(data[..40_000].to_vec())).unwrap();
        wait_for(Duration::from_secs(10), || {
            (server.head(&id).offset() == 40_000).then_some(())
        })
        .expect("the first bytes never reached the file");
        feed.send(Err(io::Error::other("connection reset")))
            .unwrap();
        patch.join().unwrap()
    });
    cut.assert_error(400, "ERR_TRUNCATED");
    let status = server.status(&id);
    assert_eq!(
        status["state"], "uploading",
        "never interrupted nor failed: {status}"
    );
    assert_eq!(status["received"], 40_000);
    assert_eq!(server.head(&id).offset(), 40_000);
    assert_eq!(server.stored(&id), data[..40_000]);
    // The client continues from there; a wrong offset is refused.
    server
        .patch(&id, 0, &data, &[])
        .assert_error(409, "ERR_MISMATCHED_OFFSET");
    server
        .patch(&id, 40_000, &data[40_000..], &[])
        .assert_status(204);
    assert_eq!(std::fs::read(server.data(&id)).unwrap(), data);
    let status = server.status(&id);
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
}

#[test]
fn a_body_shorter_than_its_content_length_keeps_its_bytes() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "10")]).id();
    let answer = server.send(
        "PATCH",
        &format!("{BASE}/{id}"),
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", CHUNK),
            ("Upload-Offset", "0"),
            ("Content-Length", "10"),
        ],
        &mut &b"abcd"[..],
    );
    answer.assert_error(400, "ERR_TRUNCATED");
    assert_eq!(server.head(&id).offset(), 4);
    assert_eq!(server.stored(&id), b"abcd");
}

#[test]
fn wrong_requests_get_their_status_and_code_and_change_nothing() {
    let server = Server::new(&[("max_size", "1000B")]);
    let id = server.create(&[("Upload-Length", "10")]).id();
    server.patch(&id, 0, b"abc", &[]).assert_status(204);
    let file = format!("{BASE}/{id}");

    // No version, or another one: 412 with the version we speak.
    for headers in [vec![], vec![("Tus-Resumable", "0.2.2")]] {
        for (method, target) in [("POST", BASE), ("HEAD", file.as_str()), ("PATCH", &file)] {
            let answer = server.send(method, target, &headers, &mut io::empty());
            answer.assert_error(412, "ERR_UNSUPPORTED_VERSION");
            assert_eq!(answer.header("Tus-Version"), Some("1.0.0"), "{method}");
        }
    }
    // A chunk of another type.
    let answer = server.send(
        "PATCH",
        &file,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/octet-stream"),
            ("Upload-Offset", "3"),
            ("Content-Length", "2"),
        ],
        &mut &b"de"[..],
    );
    answer.assert_error(415, "ERR_INVALID_CONTENT_TYPE");
    // The wrong offset, and none.
    server
        .patch(&id, 2, b"de", &[])
        .assert_error(409, "ERR_MISMATCHED_OFFSET");
    server
        .patch(&id, 5, b"de", &[])
        .assert_error(409, "ERR_MISMATCHED_OFFSET");
    let answer = server.tus("PATCH", &file, &[("Content-Type", CHUNK)]);
    answer.assert_error(400, "ERR_INVALID_OFFSET");
    for bad in ["-1", "3.0", "three", ""] {
        server
            .tus(
                "PATCH",
                &file,
                &[("Content-Type", CHUNK), ("Upload-Offset", bad)],
            )
            .assert_error(400, "ERR_INVALID_OFFSET");
    }
    // Past Upload-Length: announced, and streamed without a length.
    server
        .patch(&id, 3, b"defghijk", &[])
        .assert_error(413, "ERR_UPLOAD_SIZE_EXCEEDED");
    let streamed = server.send(
        "PATCH",
        &file,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", CHUNK),
            ("Upload-Offset", "3"),
            ("Transfer-Encoding", "chunked"),
        ],
        // In pieces: the first ones are written before the end is passed.
        &mut pieces(&[b"def", b"ghi", b"jk"]),
    );
    streamed.assert_error(413, "ERR_UPLOAD_SIZE_EXCEEDED");
    // A length that differs from the one given at creation.
    server
        .patch(&id, 3, b"d", &[("Upload-Length", "11")])
        .assert_error(400, "ERR_INVALID_UPLOAD_LENGTH");
    assert_eq!(server.stored(&id), b"abc", "every refusal left the bytes");
    assert_eq!(server.head(&id).offset(), 3);
    assert_eq!(server.status(&id)["state"], "uploading");

    // Creation: no length, both, a bad one, over max_size, bad metadata.
    let long_name = format!("filename {}", b64(&"n".repeat(1025)));
    for (headers, status, code) in [
        (vec![], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        (
            vec![("Upload-Length", "5"), ("Upload-Defer-Length", "1")],
            400,
            "ERR_INVALID_UPLOAD_LENGTH",
        ),
        (
            vec![("Upload-Defer-Length", "2")],
            400,
            "ERR_INVALID_UPLOAD_LENGTH",
        ),
        (
            vec![("Upload-Length", "ten")],
            400,
            "ERR_INVALID_UPLOAD_LENGTH",
        ),
        (vec![("Upload-Length", "1001")], 413, "ERR_TOO_LARGE"),
        (
            vec![
                ("Upload-Length", "5"),
                ("Upload-Metadata", "filename !!notbase64"),
            ],
            400,
            "ERR_INVALID_METADATA",
        ),
        (
            vec![("Upload-Length", "5"), ("Upload-Metadata", &long_name)],
            400,
            "ERR_INVALID_METADATA",
        ),
    ] {
        server.create(&headers).assert_error(status, code);
    }
    // A creation body that is not a chunk.
    let answer = server.send(
        "POST",
        BASE,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", "5"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "5"),
        ],
        &mut &b"hello"[..],
    );
    answer.assert_error(415, "ERR_INVALID_CONTENT_TYPE");
    let buckets = std::fs::read_dir(server.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(buckets, 1, "no refused creation made an upload");

    // Unknown uploads, malformed identifiers, wrong methods.
    server
        .head("0b0e6f3c-4a64-4d7c-9d55-3f2c3f1f7a10")
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    server
        .patch("never-made", 0, b"x", &[])
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    server
        .tus("DELETE", &format!("{BASE}/never-made"), &[])
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    server.head("..").assert_error(400, "ERR_BAD_IDENTIFIER");
    let answer = server.tus("GET", &file, &[]);
    answer.assert_error(405, "ERR_METHOD");
    assert_eq!(answer.header("Allow"), Some("OPTIONS, HEAD, PATCH, DELETE"));
    let answer = server.tus("PUT", BASE, &[]);
    answer.assert_error(405, "ERR_METHOD");
    assert_eq!(answer.header("Allow"), Some("OPTIONS, POST"));
}

#[test]
fn a_form_upload_is_not_a_tus_upload() {
    let server = Server::new(&[]);
    let form = common::Form::new().file("f", "a.txt", "text/plain", b"hello");
    let body = form.body();
    let length = body.len().to_string();
    let posted = server.send(
        "POST",
        "/cgi-bin/fileupload/upload?X-Progress-ID=form-1",
        &[
            ("Content-Type", &form.content_type()),
            ("Content-Length", &length),
        ],
        &mut &body[..],
    );
    assert_eq!(posted.status, 200, "{}", posted.text());
    server
        .head("form-1")
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    server
        .tus("DELETE", &format!("{BASE}/form-1"), &[])
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    assert_eq!(server.status("form-1")["state"], "done", "left alone");
    assert!(server.status("form-1").get("resumable").is_none());
}

#[test]
fn a_deferred_upload_over_max_size_is_refused_while_streaming() {
    let server = Server::new(&[("max_size", "1000B")]);
    let created = server.create(&[("Upload-Defer-Length", "1")]);
    created.assert_status(201);
    let id = created.id();
    server.patch(&id, 0, &[5; 600], &[]).assert_status(204);
    // Announced: refused before reading.
    server
        .patch(&id, 600, &[6; 500], &[])
        .assert_error(413, "ERR_TOO_LARGE");
    // Streamed: refused at the byte past the limit, nothing of it kept.
    let streamed = server.send(
        "PATCH",
        &format!("{BASE}/{id}"),
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", CHUNK),
            ("Upload-Offset", "600"),
            ("Transfer-Encoding", "chunked"),
        ],
        &mut pieces(&[&[6; 300], &[6; 200]]),
    );
    streamed.assert_error(413, "ERR_TOO_LARGE");
    assert_eq!(server.stored(&id), vec![5; 600]);
    // A declared length over the limit is refused too.
    server
        .patch(&id, 600, b"", &[("Upload-Length", "1001")])
        .assert_error(413, "ERR_TOO_LARGE");
    assert_eq!(server.head(&id).offset(), 600);
}

#[test]
fn a_deferred_length_is_accepted_once_and_completes_the_upload() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Defer-Length", "1")]).id();
    let head = server.head(&id);
    head.assert_status(200);
    assert_eq!(head.header("Upload-Defer-Length"), Some("1"));
    assert_eq!(head.header("Upload-Length"), None);
    server.patch(&id, 0, b"hello ", &[]).assert_status(204);
    let status = server.status(&id);
    assert_eq!(status["state"], "uploading", "{status}");
    assert!(
        status.get("size").is_none(),
        "no size while deferred: {status}"
    );
    assert_eq!(status["received"], 6);
    // Below what is stored: refused.
    server
        .patch(&id, 6, b"", &[("Upload-Length", "5")])
        .assert_error(400, "ERR_INVALID_UPLOAD_LENGTH");
    let answer = server.patch(&id, 6, b"wor", &[("Upload-Length", "11")]);
    answer.assert_status(204);
    assert_eq!(answer.offset(), 9);
    let head = server.head(&id);
    assert_eq!(head.header("Upload-Length"), Some("11"));
    assert_eq!(head.header("Upload-Defer-Length"), None);
    assert_eq!(server.status(&id)["size"], 11);
    // Given again, the same: fine; another: refused.
    server
        .patch(&id, 9, b"l", &[("Upload-Length", "12")])
        .assert_error(400, "ERR_INVALID_UPLOAD_LENGTH");
    server
        .patch(&id, 9, b"ld", &[("Upload-Length", "11")])
        .assert_status(204);
    assert_eq!(std::fs::read(server.data(&id)).unwrap(), b"hello world");
    assert_eq!(server.status(&id)["state"], "done");
}

#[test]
fn creation_with_upload_takes_the_first_chunk() {
    let server = Server::new(&[]);
    let data = random_bytes(50_000, 11);
    let post = |body: &[u8], length: &str| {
        let content_length = body.len().to_string();
        server.send(
            "POST",
            BASE,
            &[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", length),
                ("Content-Type", CHUNK),
                ("Content-Length", &content_length),
            ],
            &mut &body[..],
        )
    };
    let part = post(&data[..20_000], "50000");
    part.assert_status(201);
    assert_eq!(part.offset(), 20_000);
    let id = part.id();
    assert_eq!(server.stored(&id), data[..20_000]);
    server
        .patch(&id, 20_000, &data[20_000..], &[])
        .assert_status(204);
    assert_eq!(std::fs::read(server.data(&id)).unwrap(), data);
    // All of it at once: done in one request.
    let whole = post(&data, "50000");
    whole.assert_status(201);
    assert_eq!(whole.offset(), 50_000);
    let status = server.status(&whole.id());
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
    // A first chunk past the length is refused; the upload is made and
    // empty, and the answer says where it is.
    let over = post(&data, "100");
    over.assert_error(413, "ERR_UPLOAD_SIZE_EXCEEDED");
    let id = over.id();
    assert_eq!(server.head(&id).offset(), 0);
    // An empty upload is complete at creation.
    let empty = server.create(&[("Upload-Length", "0")]);
    empty.assert_status(201);
    let status = server.status(&empty.id());
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["size"], 0);
}

#[test]
fn metadata_becomes_the_status_name_and_type_and_comes_back_on_head() {
    let server = Server::new(&[]);
    let metadata = format!(
        "filename {},filetype {},relativePath {},flag",
        b64("report.pdf"),
        b64("application/pdf"),
        b64("docs/report.pdf")
    );
    let id = server
        .create(&[("Upload-Length", "3"), ("Upload-Metadata", &metadata)])
        .id();
    let status = server.status(&id);
    assert_eq!(status["filename"], "report.pdf");
    assert_eq!(status["content-type"], "application/pdf");
    assert_eq!(status["fields"]["relativePath"], "docs/report.pdf");
    assert_eq!(status["fields"]["flag"], "");
    let returned = server
        .head(&id)
        .header("Upload-Metadata")
        .unwrap()
        .to_owned();
    let mut sent: Vec<&str> = metadata.split(',').collect();
    let mut back: Vec<&str> = returned.split(',').collect();
    sent.sort();
    back.sort();
    assert_eq!(back, sent, "HEAD gives back every pair as sent");
}

#[test]
fn termination_removes_the_upload_and_its_identifier_answers_starting() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "100")]).id();
    server.patch(&id, 0, &[9; 40], &[]).assert_status(204);
    let answer = server.tus("DELETE", &format!("{BASE}/{id}"), &[]);
    answer.assert_status(204);
    assert_eq!(server.status(&id), serde_json::json!({"state": "starting"}));
    assert!(!server.dir.path().join(&id).exists(), "the folder is gone");
    server.head(&id).assert_error(404, "ERR_UPLOAD_NOT_FOUND");
    server
        .patch(&id, 40, &[9; 60], &[])
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
}

#[test]
fn a_clear_removes_a_resting_upload_as_a_termination_does() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "100")]).id();
    server.patch(&id, 0, &[9; 40], &[]).assert_status(204);
    let cleared = server.send(
        "DELETE",
        &format!("/cgi-bin/fileupload/upload/status?X-Progress-ID={id}"),
        &[],
        &mut io::empty(),
    );
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert_eq!(server.status(&id), serde_json::json!({"state": "starting"}));
    server
        .patch(&id, 40, &[9; 60], &[])
        .assert_error(404, "ERR_UPLOAD_NOT_FOUND");
}

/// The client's earlier PATCH still runs (its connection went silent, no
/// FIN): the later one takes the upload over within about two progress
/// intervals, the earlier is answered ERR_UPLOAD_INTERRUPTED with its bytes
/// kept, and whatever it is sent afterwards is never stored.
#[test]
fn a_second_patch_takes_over_from_one_that_runs() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "1000")]).id();
    let (feed, fed) = mpsc::channel();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            let mut body = Fed(fed, Vec::new());
            server.send(
                "PATCH",
                &format!("{BASE}/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", CHUNK),
                    ("Upload-Offset", "0"),
                    ("Content-Length", "600"),
                ],
                &mut body,
            )
        });
        feed.send(Ok(vec![1; 100])).unwrap();
        wait_for(Duration::from_secs(10), || {
            (server.head(&id).offset() == 100).then_some(())
        })
        .expect("the first PATCH never stored its bytes");
        // A stale offset is 409 once the later request holds the upload.
        let started = std::time::Instant::now();
        server
            .patch(&id, 0, &[2; 50], &[])
            .assert_error(409, "ERR_MISMATCHED_OFFSET");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        server.patch(&id, 100, &[2; 50], &[]).assert_status(204);
        // The earlier one wakes: it writes nothing more.
        let _ = feed.send(Ok(vec![1; 500]));
        drop(feed);
        first
            .join()
            .unwrap()
            .assert_error(400, "ERR_UPLOAD_INTERRUPTED");
    });
    let mut expected = vec![1; 100];
    expected.extend_from_slice(&[2; 50]);
    assert_eq!(server.stored(&id), expected, "never interleaved");
    assert_eq!(server.head(&id).offset(), 150);
}

fn b64_bytes(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_chunk_with_a_wrong_checksum_is_discarded_with_460() {
    use sha1::Digest as _;
    let server = Server::new(&[]);
    let data = random_bytes(3000, 21);
    let id = server.create(&[("Upload-Length", "3000")]).id();
    let sha1 = |bytes: &[u8]| b64_bytes(&sha1::Sha1::digest(bytes));
    let good = format!("sha1 {}", sha1(&data[..1000]));
    server
        .patch(&id, 0, &data[..1000], &[("Upload-Checksum", &good)])
        .assert_status(204);
    // The digest of other bytes: refused after the whole chunk streamed.
    let wrong = format!("sha1 {}", sha1(b"other bytes"));
    server
        .patch(&id, 1000, &data[1000..2000], &[("Upload-Checksum", &wrong)])
        .assert_error(460, "ERR_CHECKSUM_MISMATCH");
    assert_eq!(server.head(&id).offset(), 1000, "the offset is unchanged");
    assert_eq!(server.stored(&id), data[..1000]);
    server
        .patch(
            &id,
            1000,
            &data[1000..2000],
            &[("Upload-Checksum", "md5 AAAA")],
        )
        .assert_error(400, "ERR_BAD_CHECKSUM");
    server
        .patch(
            &id,
            1000,
            &data[1000..2000],
            &[("Upload-Checksum", "blake3 AAAA")],
        )
        .assert_error(400, "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM");
    let crc = format!(
        "crc32 {}",
        b64_bytes(&crc32fast::hash(&data[1000..]).to_be_bytes())
    );
    server
        .patch(&id, 1000, &data[1000..], &[("Upload-Checksum", &crc)])
        .assert_status(204);
    assert_eq!(server.stored(&id), data);
    // The whole file's digest is right although a chunk was cut away: the
    // saved hash state was put back to before it.
    let status = server.status(&id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
}

/// Four partial uploads, then the final one naming them by absolute URL
/// and by path: one file, the parts gone; HEAD of it says what it was made
/// of; an ordinary upload, an incomplete part or a total over max_size are
/// refused.
#[test]
fn partial_uploads_are_concatenated_into_one_file() {
    let server = Server::new(&[("max_size", "10000B")]);
    let data = random_bytes(4000, 22);
    let mut urls = Vec::new();
    let mut ids = Vec::new();
    for (i, part) in data.chunks(1000).enumerate() {
        let created = server.create(&[("Upload-Length", "1000"), ("Upload-Concat", "partial")]);
        created.assert_status(201);
        let id = created.id();
        server.patch(&id, 0, part, &[]).assert_status(204);
        let head = server.head(&id);
        assert_eq!(head.header("Upload-Concat"), Some("partial"));
        assert_eq!(server.status(&id)["partial"], true);
        urls.push(match i % 2 {
            0 => format!("https://uploads.example{BASE}/{id}"),
            _ => format!("{BASE}/{id}"),
        });
        ids.push(id);
    }
    let ordinary = server.create(&[("Upload-Length", "10")]).id();
    server.patch(&ordinary, 0, &[7; 10], &[]).assert_status(204);
    let not_partial = format!("final;{BASE}/{ordinary}");
    server
        .create(&[("Upload-Concat", &not_partial)])
        .assert_error(400, "ERR_PARTIAL_NOT_FOUND");
    let open = server
        .create(&[("Upload-Length", "9000"), ("Upload-Concat", "partial")])
        .id();
    server.patch(&open, 0, &[7; 8000], &[]).assert_status(204);
    server
        .create(&[("Upload-Concat", &format!("final;{BASE}/{open}"))])
        .assert_error(400, "ERR_PARTIAL_INCOMPLETE");
    server
        .patch(&open, 8000, &[7; 1000], &[])
        .assert_status(204);
    let too_much = format!("final;{BASE}/{open} {BASE}/{} {BASE}/{}", ids[0], ids[1]);
    server
        .create(&[("Upload-Concat", &too_much)])
        .assert_error(413, "ERR_TOO_LARGE");
    let header = format!("final;{}", urls.join(" "));
    let metadata = format!("filename {}", b64("whole.bin"));
    let made = server.create(&[("Upload-Concat", &header), ("Upload-Metadata", &metadata)]);
    made.assert_status(201);
    let id = made.id();
    let head = server.head(&id);
    head.assert_status(200);
    assert_eq!(head.offset(), 4000);
    assert_eq!(head.header("Upload-Length"), Some("4000"));
    let parts: Vec<String> = ids.iter().map(|p| format!("{BASE}/{p}")).collect();
    assert_eq!(
        head.header("Upload-Concat"),
        Some(format!("final;{}", parts.join(" ")).as_str())
    );
    assert_eq!(server.stored(&id), data);
    let status = server.status(&id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["filename"], "whole.bin");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
    for part in &ids {
        assert_eq!(
            server.status(part),
            serde_json::json!({"state": "starting"})
        );
    }
    server
        .patch(&id, 4000, b"x", &[])
        .assert_error(409, "ERR_UPLOAD_COMPLETE");
}

/// With a key, the parts named in a final upload are verified as any
/// identifier in a path: an unsigned one is 403.
#[test]
fn with_a_key_a_final_upload_names_signed_parts_only() {
    let server = Server::new(&[("upload_key", "a key of at least thirty-two bytes!!")]);
    server
        .create(&[("Upload-Concat", &format!("final;{BASE}/plain-name"))])
        .assert_error(403, "ERR_SIGNATURE");
    let part = create_identifier(Some(&server.key())).unwrap();
    server
        .create(&[
            ("Upload-Length", "3"),
            ("Upload-Concat", "partial"),
            ("X-Progress-ID", part.as_str()),
        ])
        .assert_status(201);
    server
        .patch(part.as_str(), 0, b"abc", &[])
        .assert_status(204);
    let whole = create_identifier(Some(&server.key())).unwrap();
    let header = format!("final;{BASE}/{}", part.as_str());
    let made = server.create(&[
        ("Upload-Concat", &header),
        ("X-Progress-ID", whole.as_str()),
    ]);
    made.assert_status(201);
    assert_eq!(server.stored(whole.name()), b"abc");
}

#[test]
fn a_body_below_min_body_rate_keeps_the_bytes_stored_before_it() {
    let mut server = Server::new(&[]);
    server.config.min_body_rate = Some(1_000_000);
    server.config.min_body_rate_after = Duration::from_millis(50);
    let id = server.create(&[("Upload-Length", "1000")]).id();
    let (feed, fed) = mpsc::channel();
    let slow = std::thread::scope(|scope| {
        let patch = scope.spawn(|| {
            let mut body = Fed(fed, Vec::new());
            server.send(
                "PATCH",
                &format!("{BASE}/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", CHUNK),
                    ("Upload-Offset", "0"),
                    ("Content-Length", "1000"),
                ],
                &mut body,
            )
        });
        feed.send(Ok(vec![4; 100])).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let _ = feed.send(Ok(vec![4; 100]));
        patch.join().unwrap()
    });
    slow.assert_error(408, "ERR_TOO_SLOW");
    assert_eq!(server.stored(&id), vec![4; 100]);
    assert_eq!(server.head(&id).offset(), 100);
    assert_eq!(server.status(&id)["state"], "uploading");
}

/// Through the CGI program with `RLIMIT_FSIZE` at 256 KiB and `SIGXFSZ`
/// ignored: the write past it fails as on a full disk.
#[test]
fn a_full_disk_mid_chunk_is_507_and_keeps_what_was_stored() {
    let pool = common::TestPool::new();
    let tus = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_TUS_RESUMABLE", "1.0.0")
    };
    let created = tus("POST", "/upload/files")
        .env("HTTP_UPLOAD_LENGTH", "400000")
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let data = random_bytes(400_000, 5);
    let full = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", "0")
        .env("CONTENT_LENGTH", "400000")
        .prelude("ulimit -f 256; trap '' XFSZ")
        .run(&data);
    full.assert_error_code(507, "ERR_DISK_FULL", "");
    let stored = std::fs::read(pool.path().join(&id).join("file-1")).unwrap();
    assert!(
        !stored.is_empty() && stored.len() <= 256 * 1024,
        "{}",
        stored.len()
    );
    assert_eq!(
        stored,
        data[..stored.len()],
        "a prefix of the client's bytes"
    );
    let head = tus("HEAD", &location).run(b"");
    assert_eq!(
        head.header("Upload-Offset"),
        Some(stored.len().to_string().as_str())
    );
    // With room again, the client continues from there.
    let rest = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", &stored.len().to_string())
        .env("CONTENT_LENGTH", &(data.len() - stored.len()).to_string())
        .run(&data[stored.len()..]);
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(
        std::fs::read(pool.path().join(&id).join("file-1")).unwrap(),
        data
    );
}

#[test]
fn a_termination_stops_a_running_patch() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "1000")]).id();
    let (feed, fed) = mpsc::channel();
    let stopped = std::thread::scope(|scope| {
        let patch = scope.spawn(|| {
            let mut body = Fed(fed, Vec::new());
            server.send(
                "PATCH",
                &format!("{BASE}/{id}"),
                &[
                    ("Tus-Resumable", "1.0.0"),
                    ("Content-Type", CHUNK),
                    ("Upload-Offset", "0"),
                    ("Content-Length", "1000"),
                ],
                &mut body,
            )
        });
        feed.send(Ok(vec![1; 100])).unwrap();
        wait_for(Duration::from_secs(10), || {
            (server.head(&id).offset() == 100).then_some(())
        })
        .expect("the bytes never reached the file");
        server
            .tus("DELETE", &format!("{BASE}/{id}"), &[])
            .assert_status(204);
        // The watcher sees it within a progress interval; the next bytes
        // wake the reader.
        std::thread::sleep(Duration::from_millis(100));
        let _ = feed.send(Ok(vec![1; 100]));
        patch.join().unwrap()
    });
    stopped.assert_error(410, "ERR_CANCELLED");
    assert_eq!(server.status(&id), serde_json::json!({"state": "starting"}));
}

#[test]
fn with_a_key_creation_needs_a_signed_identifier() {
    let server = Server::new(&[("upload_key", "tus test key")]);
    server
        .create(&[("Upload-Length", "5")])
        .assert_error(403, "ERR_SIGNATURE");
    server
        .tus(
            "POST",
            &format!("{BASE}?X-Progress-ID=plain-1"),
            &[("Upload-Length", "5")],
        )
        .assert_error(403, "ERR_SIGNATURE");
    let id = create_identifier(Some(&server.key())).unwrap();
    let wrong = format!("{}:{}", id.name(), "0".repeat(64));
    server
        .create(&[("Upload-Length", "5"), ("X-Progress-ID", &wrong)])
        .assert_error(403, "ERR_SIGNATURE");
    // In the query, then in a header.
    let created = server.tus(
        "POST",
        &format!("{BASE}?X-Progress-ID={}", id.as_str()),
        &[("Upload-Length", "5")],
    );
    created.assert_status(201);
    assert_eq!(
        created.id(),
        id.as_str(),
        "the Location carries the signed identifier"
    );
    server
        .patch(id.as_str(), 0, b"hello", &[])
        .assert_status(204);
    assert_eq!(server.stored(id.name()), b"hello");
    assert_eq!(server.status(id.as_str())["state"], "done");
    // The unsigned name alone is refused.
    server.head(id.name()).assert_error(403, "ERR_SIGNATURE");
    // A percent-encoded ':' is the same identifier.
    let encoded = id.as_str().replace(':', "%3A");
    server.head(&encoded).assert_status(200);

    let other = create_identifier(Some(&server.key())).unwrap();
    let created = server.create(&[("Upload-Length", "1"), ("X-Progress-ID", other.as_str())]);
    created.assert_status(201);
    assert_eq!(created.id(), other.as_str());
}

#[test]
fn without_a_key_a_given_identifier_is_used_and_a_taken_one_refused() {
    let server = Server::new(&[]);
    let created = server.create(&[("Upload-Length", "5"), ("X-Progress-ID", "chosen-1")]);
    created.assert_status(201);
    assert_eq!(created.id(), "chosen-1");
    server
        .create(&[("Upload-Length", "5"), ("X-Progress-ID", "chosen-1")])
        .assert_error(409, "ERR_UPLOAD_RUNNING");
}

#[test]
fn the_method_override_stands_for_the_method() {
    let server = Server::new(&[]);
    let id = server.create(&[("Upload-Length", "4")]).id();
    let file = format!("{BASE}/{id}");
    let answer = server.send(
        "POST",
        &file,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("X-HTTP-Method-Override", "PATCH"),
            ("Content-Type", CHUNK),
            ("Upload-Offset", "0"),
            ("Content-Length", "2"),
        ],
        &mut &b"ab"[..],
    );
    answer.assert_status(204);
    assert_eq!(answer.offset(), 2);
    assert_eq!(server.stored(&id), b"ab");
    let head = server.tus("POST", &file, &[("X-HTTP-Method-Override", "HEAD")]);
    head.assert_status(200);
    assert_eq!(head.offset(), 2);
    server
        .tus("POST", &file, &[("X-HTTP-Method-Override", "DELETE")])
        .assert_status(204);
    assert_eq!(server.status(&id)["state"], "starting");
}

#[test]
fn an_expired_upload_is_gone() {
    let server = Server::new(&[("max_age", "1h")]);
    let id = server.create(&[("Upload-Length", "10")]).id();
    server.patch(&id, 0, b"abc", &[]).assert_status(204);
    // Two hours pass without a chunk (gc has not run yet).
    let path = server.dir.path().join(&id).join("status.json");
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    stored["updated"] = Value::from(fileupload::pool::unix_now() - 7200);
    std::fs::write(&path, stored.to_string()).unwrap();
    server.head(&id).assert_error(410, "ERR_UPLOAD_GONE");
    server
        .patch(&id, 3, b"def", &[])
        .assert_error(410, "ERR_UPLOAD_GONE");
    assert_eq!(server.stored(&id), b"abc");
}

#[test]
fn options_head_and_delete_are_quick_post_and_patch_bulk() {
    let server = Server::new(&[]);
    let quick = |method: &str, target: &str, headers: &[(&str, &str)]| {
        let mut vars = vec![
            ("REQUEST_METHOD".to_owned(), method.to_owned()),
            ("PATH_INFO".to_owned(), target.to_owned()),
        ];
        for (name, value) in headers {
            vars.push((
                format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")),
                value.to_string(),
            ));
        }
        let mut empty = io::empty();
        handler::is_quick(&server.config, &Request::new(vars, &mut empty, false))
    };
    for method in ["OPTIONS", "HEAD", "DELETE"] {
        assert!(quick(method, "/upload/files/abc", &[]), "{method}");
    }
    assert!(quick("OPTIONS", "/upload/files", &[]));
    assert!(!quick("POST", "/upload/files", &[]));
    assert!(!quick("PATCH", "/upload/files/abc", &[]));
    assert!(!quick(
        "POST",
        "/upload/files/abc",
        &[("X-HTTP-Method-Override", "PATCH")]
    ));
    assert!(quick(
        "POST",
        "/upload/files/abc",
        &[("X-HTTP-Method-Override", "HEAD")]
    ));
}

/// The CGI process receiving a PATCH is SIGKILLed mid-body: the upload
/// stays resumable at the bytes that reached the file, for any other
/// process, and the client finishes it byte for byte.
#[test]
fn a_killed_receiver_leaves_the_upload_resumable_for_the_next_process() {
    let pool = common::TestPool::new();
    let tus = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_TUS_RESUMABLE", "1.0.0")
            .env("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")
    };
    let data = random_bytes(1 << 20, 9);
    let created = tus("POST", "/upload/files")
        .env("HTTP_UPLOAD_LENGTH", &data.len().to_string())
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let mut child = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", "0")
        .env("CONTENT_LENGTH", &data.len().to_string())
        .spawn();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..300_000]).unwrap();
    stdin.flush().unwrap();
    let data_file = pool.path().join(&id).join("file-1");
    wait_for(Duration::from_secs(10), || {
        (std::fs::metadata(&data_file).map(|m| m.len()).unwrap_or(0) == 300_000).then_some(())
    })
    .expect("the first bytes never reached the file");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(stdin);
    let status = common::status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "uploading", "not interrupted: {status}");
    assert_eq!(status["offset"], 300_000, "{status}");
    let head = tus("HEAD", &location).run(b"");
    assert_eq!(
        head.header("Upload-Offset"),
        Some("300000"),
        "{}",
        head.text()
    );
    let rest = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", "300000")
        .env("CONTENT_LENGTH", &(data.len() - 300_000).to_string())
        .run(&data[300_000..]);
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(std::fs::read(&data_file).unwrap(), data);
    let status = common::status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(&data).as_str());
}

/// The command line gives the stored status as it is: a resumable upload
/// between requests is `incomplete` there, `uploading` over HTTP; once
/// complete, `fileupload path` gives its file as for any upload.
#[test]
fn the_command_line_shows_a_paused_upload_as_stored_incomplete() {
    let pool = common::TestPool::new();
    let tus = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_TUS_RESUMABLE", "1.0.0")
    };
    let created = tus("POST", "/upload/files")
        .env("HTTP_UPLOAD_LENGTH", "10")
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let first = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", "0")
        .env("CONTENT_LENGTH", "4")
        .run(b"abcd");
    assert_eq!(first.status, 204, "{}", first.text());
    let out = pool.cli(&["status", &id]);
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["state"], "incomplete", "{stored}");
    assert_eq!(common::status_of(&pool.cgi(), &id)["state"], "uploading");
    let rest = tus("PATCH", &location)
        .env("CONTENT_TYPE", CHUNK)
        .env("HTTP_UPLOAD_OFFSET", "4")
        .env("CONTENT_LENGTH", "6")
        .run(b"efghij");
    assert_eq!(rest.status, 204, "{}", rest.text());
    let out = pool.cli(&["path", &id]);
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::fs::read(path.trim()).unwrap(), b"abcdefghij");
}

/// Middleware mode: the request that completes a resumable upload hands it
/// to the application as a completed form upload is (a JSON POST of its
/// status, `FILEUPLOAD_FILE` set), and the application's answer goes out
/// with the tus headers added; a chunk that does not complete it, and a
/// partial upload, are answered by tus alone.
#[test]
fn in_middleware_mode_a_completed_upload_is_handed_to_the_application() {
    use std::os::unix::fs::PermissionsExt;
    let pool = common::TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("app.cgi");
    std::fs::write(
        &app,
        "#!/bin/sh\nprintf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\nX-App: yes\\r\\n\\r\\n'\n\
         echo \"method=$REQUEST_METHOD\"\necho \"file=$FILEUPLOAD_FILE\"\necho \"id=$FILEUPLOAD_IDENTIFIER\"\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tus = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_TUS_RESUMABLE", "1.0.0")
            .env("FILEUPLOAD_APP", app.to_str().unwrap())
    };
    let create = |extra: &[(&str, &str)]| {
        let mut cgi = tus("POST", "/upload/files").env("HTTP_UPLOAD_LENGTH", "10");
        for (name, value) in extra {
            cgi = cgi.env(name, value);
        }
        let created = cgi.run(b"");
        assert_eq!(created.status, 201, "{}", created.text());
        assert_eq!(created.header("X-App"), None);
        created.header("Location").unwrap().to_owned()
    };
    let patch = |location: &str, offset: usize, body: &[u8]| {
        tus("PATCH", location)
            .env("CONTENT_TYPE", CHUNK)
            .env("HTTP_UPLOAD_OFFSET", &offset.to_string())
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(body)
    };
    let location = create(&[]);
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let first = patch(&location, 0, b"abcd");
    assert_eq!(first.status, 204, "{}", first.text());
    assert_eq!(first.header("X-App"), None, "not complete: not handed over");
    let last = patch(&location, 4, b"efghij");
    assert_eq!(last.status, 200, "{}", last.text());
    assert_eq!(last.header("X-App"), Some("yes"));
    assert_eq!(last.header("Tus-Resumable"), Some("1.0.0"));
    assert_eq!(last.header("Upload-Offset"), Some("10"));
    let text = String::from_utf8_lossy(&last.body).into_owned();
    let file = pool.path().join(&id).join("file-1");
    assert!(text.contains("method=POST\n"), "{text}");
    assert!(text.contains(&format!("id={id}\n")), "{text}");
    assert!(
        text.contains(&format!("file={}\n", file.display())),
        "{text}"
    );
    let json: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(json["state"], "done", "{json}");
    assert_eq!(
        json["files"][0]["sha256"],
        sha256_hex(b"abcdefghij").as_str()
    );
    // A partial upload is only a part.
    let partial = create(&[("HTTP_UPLOAD_CONCAT", "partial")]);
    let done = patch(&partial, 0, b"0123456789");
    assert_eq!(done.status, 204, "{}", done.text());
    assert_eq!(done.header("X-App"), None);
}
