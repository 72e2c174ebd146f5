//! The IETF draft "Resumable Uploads for HTTP", interop versions 5
//! (draft-03) and 6 (draft-05), in-process: requests made in memory
//! through the handler, a pool in a temporary directory, the bytes checked
//! on disk. tests/tus_clients.rs runs tus-js-client's `ietf-draft-03` and
//! `ietf-draft-05` through the three transports.

mod common;

use std::io::{self};
use std::path::PathBuf;

use fileupload::Config;
use fileupload::http::Body;
use fileupload::identifier::Key;
use serde_json::Value;

use common::in_process::{self, Answer};
use common::{random_bytes, sha256_hex};

const BASE: &str = "/cgi-bin/fileupload/upload/files";
const PARTIAL: &str = "application/partial-upload";

impl Answer {
    /// The status, and what every IETF answer has: the interop version
    /// echoed, and no tus version.
    fn assert_status(&self, status: u16, version: &str) -> &Answer {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("Upload-Draft-Interop-Version"),
            Some(version),
            "{}",
            self.text()
        );
        assert_eq!(self.header("Tus-Resumable"), None, "{}", self.text());
        self
    }

    /// An error answer: the status, the JSON body with its code.
    fn assert_error(&self, status: u16, version: &str, code: &str) -> &Answer {
        self.assert_status(status, version);
        if self.head {
            assert!(self.body.is_empty(), "{}", self.text());
            return self;
        }
        let json = self.json();
        assert_eq!(json["code"], code, "{}", self.text());
        assert_eq!(json["state"], "error");
        assert_eq!(json["status"], status);
        self
    }

    fn expect(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name}: {}", self.text()))
    }

    fn offset(&self) -> u64 {
        self.expect("Upload-Offset").parse().unwrap()
    }

    fn id(&self) -> String {
        let location = self.expect("Location");
        location
            .strip_prefix(&format!("{BASE}/"))
            .unwrap_or_else(|| panic!("Location {location} is not under {BASE}"))
            .to_owned()
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
                "upload_key" => key = Key::new(value.as_bytes()),
                _ => options.push((name, value.to_string())),
            }
        }
        let mut config = Config::load(&options, |_| None).unwrap();
        config.upload_key = key.or(config.upload_key);
        Server { dir, config }
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

    /// An IETF request with `version` and a body announced by
    /// `Content-Length` (none when empty).
    fn ietf(
        &self,
        version: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let length = body.len().to_string();
        let mut all = vec![("Upload-Draft-Interop-Version", version)];
        if !body.is_empty() {
            all.push(("Content-Length", length.as_str()));
        }
        all.extend_from_slice(headers);
        self.send(method, target, &all, &mut &body[..])
    }

    fn create(&self, version: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.ietf(version, "POST", BASE, headers, body)
    }

    fn head(&self, version: &str, id: &str) -> Answer {
        self.ietf(version, "HEAD", &format!("{BASE}/{id}"), &[], b"")
    }

    /// An append: the content type each version's client sends (none for
    /// 5, `application/partial-upload` for 6), then `extra`.
    fn append(
        &self,
        version: &str,
        id: &str,
        offset: u64,
        complete: bool,
        data: &[u8],
        extra: &[(&str, &str)],
    ) -> Answer {
        let offset = offset.to_string();
        let mut headers = vec![
            ("Upload-Offset", offset.as_str()),
            ("Upload-Complete", if complete { "?1" } else { "?0" }),
        ];
        if version == "6" {
            headers.push(("Content-Type", PARTIAL));
        }
        headers.extend_from_slice(extra);
        self.ietf(version, "PATCH", &format!("{BASE}/{id}"), &headers, data)
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

    fn data(&self, id: &str) -> PathBuf {
        self.dir.path().join(id).join("file-1")
    }

    fn stored(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.data(id)).unwrap_or_default()
    }

    fn buckets(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    }
}

const VERSIONS: [&str; 2] = ["5", "6"];

/// tus-js-client's way, in both versions: an empty creation with
/// `Upload-Complete: ?0` and the length, then appends that all say `?0`
/// (as tus-js-client's chunked appends do): the upload completes when the
/// offset reaches the length, with the whole file's SHA-256.
#[test]
fn appends_saying_incomplete_complete_the_upload_at_its_known_length() {
    for version in VERSIONS {
        let server = Server::new(&[("max_size", "1M"), ("max_age", "1h")]);
        let bytes = random_bytes(3000, 3);
        let meta = "filename YS5iaW4=,filetype YXBwbGljYXRpb24veC10ZXN0";
        let created = server.create(
            version,
            &[
                ("Upload-Complete", "?0"),
                ("Upload-Length", "3000"),
                ("Upload-Metadata", meta),
            ],
            b"",
        );
        created.assert_status(201, version);
        assert_eq!(created.offset(), 0);
        assert_eq!(created.header("Upload-Complete"), Some("?0"));
        let limit = created.expect("Upload-Limit");
        assert!(limit.starts_with("max-size=1048576,max-age="), "{limit}");
        let age: u64 = limit.rsplit('=').next().unwrap().parse().unwrap();
        assert!((3590..=3600).contains(&age), "{limit}");
        let id = created.id();

        let head = server.head(version, &id);
        head.assert_status(204, version);
        assert_eq!(head.offset(), 0);
        assert_eq!(head.header("Upload-Complete"), Some("?0"));
        assert_eq!(head.header("Upload-Length"), Some("3000"));
        assert_eq!(head.header("Cache-Control"), Some("no-store"));

        let first = server.append(version, &id, 0, false, &bytes[..1000], &[]);
        first.assert_status(204, version);
        assert_eq!(first.offset(), 1000);
        assert_eq!(first.header("Upload-Complete"), Some("?0"));
        assert_eq!(server.stored(&id), &bytes[..1000]);
        let status = server.status(&id);
        assert_eq!(status["state"], "uploading", "{status}");
        assert_eq!(status["offset"], 1000, "{status}");

        let last = server.append(version, &id, 1000, false, &bytes[1000..], &[]);
        last.assert_status(201, version);
        assert_eq!(last.offset(), 3000);
        assert_eq!(
            last.header("Upload-Complete"),
            Some("?1"),
            "{}",
            last.text()
        );
        let answered = last.json();
        assert_eq!(answered["state"], "done", "{answered}");
        assert_eq!(answered["files"][0]["sha256"], sha256_hex(&bytes).as_str());
        assert_eq!(server.stored(&id), bytes);

        let status = server.status(&id);
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["resumable"], true);
        let file = &status["files"][0];
        assert_eq!(file["filename"], "a.bin");
        assert_eq!(file["content-type"], "application/x-test");
        assert_eq!(file["size"], 3000);

        let after = server.head(version, &id);
        after.assert_status(204, version);
        assert_eq!(after.offset(), 3000);
        assert_eq!(after.header("Upload-Complete"), Some("?1"));
    }
}

/// A creation with the whole file and `Upload-Complete: ?1`: the length is
/// the `Content-Length`, the upload is done in one request, and the
/// draft's representation metadata names it.
#[test]
fn creation_with_the_whole_body_and_upload_complete_is_done_at_once() {
    for version in VERSIONS {
        let server = Server::new(&[]);
        let bytes = random_bytes(777, 4);
        let created = server.create(
            version,
            &[
                ("Upload-Complete", "?1"),
                ("Content-Type", "text/plain"),
                ("Content-Disposition", r#"attachment; filename="notes.txt""#),
            ],
            &bytes,
        );
        created.assert_status(201, version);
        assert_eq!(created.header("Upload-Complete"), Some("?1"));
        assert_eq!(created.offset(), 777);
        assert_eq!(created.header("Upload-Length"), Some("777"));
        assert_eq!(created.header("Upload-Limit"), Some("min-size=0"));
        let id = created.id();
        assert_eq!(created.json()["state"], "done");
        assert_eq!(server.stored(&id), bytes);
        let status = server.status(&id);
        assert_eq!(status["files"][0]["filename"], "notes.txt", "{status}");
        assert_eq!(status["files"][0]["content-type"], "text/plain");
        assert_eq!(
            status["files"][0]["sha256"],
            sha256_hex(&bytes).as_str(),
            "{status}"
        );
    }
}

/// A creation that carries no `Upload-Complete` (tusd reads that as `?0`)
/// with a first part: the part is stored, the upload stays incomplete and
/// goes on. A `?1` append of the rest gives the length.
#[test]
fn creation_without_upload_complete_keeps_its_part_and_goes_on() {
    for version in VERSIONS {
        let server = Server::new(&[]);
        let bytes = random_bytes(500, 5);
        let created = server.create(version, &[], &bytes[..200]);
        created.assert_status(201, version);
        assert_eq!(created.offset(), 200);
        assert_eq!(created.header("Upload-Complete"), Some("?0"));
        assert_eq!(created.header("Upload-Length"), None, "not known yet");
        let id = created.id();
        assert_eq!(server.status(&id)["state"], "uploading");
        let done = server.append(version, &id, 200, true, &bytes[200..], &[]);
        done.assert_status(201, version);
        assert_eq!(done.header("Upload-Complete"), Some("?1"));
        assert_eq!(done.header("Upload-Length"), Some("500"));
        assert_eq!(server.stored(&id), bytes);
        assert_eq!(server.status(&id)["state"], "done");
    }
}

/// An append at another offset than the stored one: 409 with the offset
/// to go on from and `Upload-Complete: ?0`; nothing written.
#[test]
fn a_wrong_offset_is_409_with_the_stored_offset() {
    for version in VERSIONS {
        let server = Server::new(&[]);
        let created = server.create(
            version,
            &[("Upload-Complete", "?0"), ("Upload-Length", "10")],
            b"",
        );
        let id = created.id();
        server
            .append(version, &id, 0, false, b"abcd", &[])
            .assert_status(204, version);
        for wrong in [0, 3, 5, 9] {
            let answer = server.append(version, &id, wrong, false, b"xy", &[]);
            answer.assert_error(409, version, "ERR_MISMATCHED_OFFSET");
            assert_eq!(answer.offset(), 4, "{}", answer.text());
            assert_eq!(answer.header("Upload-Complete"), Some("?0"));
        }
        assert_eq!(server.stored(&id), b"abcd");
    }
}

/// Version 6 appends are `application/partial-upload` (415 else, nothing
/// written); version 5 clients send no type and are taken as they are.
#[test]
fn version_6_appends_need_the_partial_upload_type() {
    let server = Server::new(&[]);
    let id = server
        .create(
            "6",
            &[("Upload-Complete", "?0"), ("Upload-Length", "4")],
            b"",
        )
        .id();
    let path = format!("{BASE}/{id}");
    for kind in [
        None,
        Some("application/offset+octet-stream"),
        Some("text/plain"),
    ] {
        let mut headers = vec![("Upload-Offset", "0"), ("Upload-Complete", "?0")];
        if let Some(kind) = kind {
            headers.push(("Content-Type", kind));
        }
        server
            .ietf("6", "PATCH", &path, &headers, b"ab")
            .assert_error(415, "6", "ERR_INVALID_CONTENT_TYPE");
    }
    assert_eq!(server.stored(&id), b"");
    let typed = [
        ("Upload-Offset", "0"),
        ("Upload-Complete", "?0"),
        ("Content-Type", "application/partial-upload; x=1"),
    ];
    server
        .ietf("6", "PATCH", &path, &typed, b"ab")
        .assert_status(204, "6");

    let id = server
        .create(
            "5",
            &[("Upload-Complete", "?0"), ("Upload-Length", "4")],
            b"",
        )
        .id();
    let untyped = server.append("5", &id, 0, false, b"ab", &[]);
    untyped.assert_status(204, "5");
    assert_eq!(server.stored(&id), b"ab");
}

/// Cancellation: 204, then the upload is gone for every request and its
/// identifier answers `starting`, as after a clear.
#[test]
fn deletion_cancels_the_upload() {
    for version in VERSIONS {
        let server = Server::new(&[]);
        let id = server
            .create(
                version,
                &[("Upload-Complete", "?0"), ("Upload-Length", "9")],
                b"",
            )
            .id();
        server
            .append(version, &id, 0, false, b"abc", &[])
            .assert_status(204, version);
        let path = format!("{BASE}/{id}");
        server
            .ietf(version, "DELETE", &path, &[], b"")
            .assert_status(204, version);
        assert!(!server.data(&id).exists());
        assert_eq!(server.status(&id)["state"], "starting");
        server
            .head(version, &id)
            .assert_error(404, version, "ERR_UPLOAD_NOT_FOUND");
        server
            .append(version, &id, 3, false, b"def", &[])
            .assert_error(404, version, "ERR_UPLOAD_NOT_FOUND");
        server
            .ietf(version, "DELETE", &path, &[], b"")
            .assert_error(404, version, "ERR_UPLOAD_NOT_FOUND");
    }
}

/// `OPTIONS` with the interop version: the limits, as the draft asks.
#[test]
fn options_gives_the_limits() {
    let limited = Server::new(&[("max_size", "1000B")]);
    let answer = limited.ietf("6", "OPTIONS", BASE, &[], b"");
    answer.assert_status(204, "6");
    assert_eq!(answer.header("Upload-Limit"), Some("max-size=1000"));
    assert_eq!(answer.header("Accept-Patch"), Some(PARTIAL));
    let unlimited = Server::new(&[]);
    let answer = unlimited.ietf("5", "OPTIONS", &format!("{BASE}/x"), &[], b"");
    answer.assert_status(204, "5");
    assert_eq!(answer.header("Upload-Limit"), Some("min-size=0"));
}

/// Every refusal: its status and stable code, and nothing stored or
/// changed.
#[test]
fn wrong_requests_get_their_status_and_code_and_change_nothing() {
    let server = Server::new(&[("max_size", "1000B")]);
    let v = "6";
    // Versions this server does not speak, with no tus fallback.
    for bad in ["7", "8", "4", "x", "", "-6"] {
        let answer = server.send(
            "POST",
            BASE,
            &[
                ("Upload-Draft-Interop-Version", bad),
                ("Upload-Length", "3"),
            ],
            &mut io::empty(),
        );
        assert_eq!(answer.status, 412, "{bad:?}: {}", answer.text());
        assert_eq!(answer.json()["code"], "ERR_UNSUPPORTED_VERSION");
        assert_eq!(answer.header("Upload-Draft-Interop-Version"), None);
    }
    for bad in ["?2", "1", "true", "?1;x"] {
        server
            .create(v, &[("Upload-Complete", bad)], b"")
            .assert_error(400, v, "ERR_INVALID_UPLOAD_COMPLETE");
    }
    for bad in ["-1", "1.5", "0x10", "1000000000000000", "abc"] {
        server
            .create(v, &[("Upload-Complete", "?0"), ("Upload-Length", bad)], b"")
            .assert_error(400, v, "ERR_INVALID_UPLOAD_LENGTH");
    }
    server
        .create(
            v,
            &[("Upload-Complete", "?0"), ("Upload-Length", "1001")],
            b"",
        )
        .assert_error(413, v, "ERR_TOO_LARGE");
    server
        .create(
            v,
            &[("Upload-Complete", "?1"), ("Upload-Length", "5")],
            b"abc",
        )
        .assert_error(400, v, "ERR_INVALID_UPLOAD_LENGTH");
    server
        .create(v, &[("Upload-Complete", "?0"), ("Upload-Offset", "0")], b"")
        .assert_error(400, v, "ERR_INVALID_OFFSET");
    // `?1` on a streamed body with no length to hold it to.
    let streamed = server.send(
        "POST",
        BASE,
        &[
            ("Upload-Draft-Interop-Version", v),
            ("Upload-Complete", "?1"),
            ("Transfer-Encoding", "chunked"),
        ],
        &mut &b"abc"[..],
    );
    assert_eq!(streamed.status, 411, "{}", streamed.text());
    assert_eq!(streamed.json()["code"], "ERR_LENGTH_REQUIRED");
    server
        .ietf(v, "GET", BASE, &[], b"")
        .assert_error(405, v, "ERR_METHOD");
    // The draft's representation metadata is held to a form's limits.
    let long_name = format!("attachment; filename=\"{}\"", "n".repeat(1025));
    server
        .create(
            v,
            &[
                ("Upload-Complete", "?1"),
                ("Content-Disposition", &long_name),
            ],
            b"abc",
        )
        .assert_error(400, v, "ERR_INVALID_METADATA");
    let long_type = format!("text/{}", "t".repeat(256));
    server
        .create(
            v,
            &[("Upload-Complete", "?1"), ("Content-Type", &long_type)],
            b"abc",
        )
        .assert_error(400, v, "ERR_INVALID_METADATA");
    assert_eq!(server.buckets(), 0, "no refused creation made an upload");

    let id = server
        .create(
            v,
            &[("Upload-Complete", "?0"), ("Upload-Length", "10")],
            b"",
        )
        .id();
    server
        .append(v, &id, 0, false, b"abcd", &[])
        .assert_status(204, v);
    let path = format!("{BASE}/{id}");
    let patch = |headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("Content-Type", PARTIAL)];
        all.extend_from_slice(headers);
        server.ietf(v, "PATCH", &path, &all, body)
    };
    patch(&[("Upload-Complete", "?0")], b"ef").assert_error(400, v, "ERR_INVALID_OFFSET");
    for bad in ["-4", "4.0", "four", ""] {
        let answer = patch(&[("Upload-Offset", bad), ("Upload-Complete", "?0")], b"ef");
        answer.assert_error(400, v, "ERR_INVALID_OFFSET");
        assert_eq!(answer.offset(), 4, "the offset to go on from");
    }
    patch(&[("Upload-Offset", "4"), ("Upload-Complete", "yes")], b"ef").assert_error(
        400,
        v,
        "ERR_INVALID_UPLOAD_COMPLETE",
    );
    // Past the length: refused, nothing of it kept.
    server
        .append(v, &id, 4, false, b"efghijkl", &[])
        .assert_error(413, v, "ERR_UPLOAD_SIZE_EXCEEDED");
    // `?1` whose bytes would make another length than the known one.
    server
        .append(v, &id, 4, true, b"efg", &[])
        .assert_error(400, v, "ERR_INVALID_UPLOAD_LENGTH");
    server
        .append(v, &id, 4, false, b"ef", &[("Upload-Length", "12")])
        .assert_error(400, v, "ERR_INVALID_UPLOAD_LENGTH");
    // HEAD and DELETE must not look like appends.
    server
        .ietf(v, "HEAD", &path, &[("Upload-Offset", "4")], b"")
        .assert_error(400, v, "ERR_INVALID_OFFSET");
    server
        .ietf(v, "DELETE", &path, &[("Upload-Complete", "?1")], b"")
        .assert_error(400, v, "ERR_INVALID_UPLOAD_COMPLETE");
    server
        .ietf(v, "DELETE", &path, &[("Upload-Offset", "4")], b"")
        .assert_error(400, v, "ERR_INVALID_OFFSET");
    server
        .ietf(v, "PUT", &path, &[], b"")
        .assert_error(405, v, "ERR_METHOD");
    server
        .append(v, "no-such-upload", 0, false, b"ab", &[])
        .assert_error(404, v, "ERR_UPLOAD_NOT_FOUND");
    assert_eq!(server.stored(&id), b"abcd", "every refusal left the bytes");
    assert_eq!(server.status(&id)["offset"], 4);

    // A streamed `?1` that ends before the length: its bytes are kept, and
    // the answer says the upload is not complete.
    let short = server.send(
        "PATCH",
        &path,
        &[
            ("Upload-Draft-Interop-Version", v),
            ("Content-Type", PARTIAL),
            ("Upload-Offset", "4"),
            ("Upload-Complete", "?1"),
            ("Transfer-Encoding", "chunked"),
        ],
        &mut &b"efg"[..],
    );
    short.assert_error(400, v, "ERR_INVALID_UPLOAD_COMPLETE");
    assert_eq!(short.offset(), 7);
    assert_eq!(short.header("Upload-Complete"), Some("?0"));
    assert_eq!(server.stored(&id), b"abcdefg");

    server
        .append(v, &id, 7, false, b"hij", &[])
        .assert_status(201, v);
    // A complete upload takes no more.
    server
        .append(v, &id, 10, true, b"", &[])
        .assert_error(409, v, "ERR_UPLOAD_COMPLETE");
    assert_eq!(server.stored(&id), b"abcdefghij");
}

/// With an upload key, creation needs the signed identifier the
/// application issued (403 else), as a tus creation and a form do.
#[test]
fn with_a_key_creation_needs_a_signed_identifier() {
    let server = Server::new(&[("upload_key", "0123456789abcdef0123456789abcdef")]);
    let key = server.config.upload_key.clone().unwrap();
    server
        .create(
            "6",
            &[("Upload-Complete", "?0"), ("Upload-Length", "3")],
            b"",
        )
        .assert_error(403, "6", "ERR_SIGNATURE");
    assert_eq!(server.buckets(), 0);
    let signed = fileupload::identifier::create_identifier(Some(&key)).unwrap();
    let created = server.create(
        "6",
        &[
            ("Upload-Complete", "?0"),
            ("Upload-Length", "3"),
            ("X-Progress-ID", signed.as_str()),
        ],
        b"",
    );
    created.assert_status(201, "6");
    assert_eq!(created.id(), signed.as_str());
    // tus-js-client sends its headers with every request: an append
    // carrying the identifier again is an ordinary append.
    server
        .append(
            "6",
            signed.as_str(),
            0,
            true,
            b"abc",
            &[("X-Progress-ID", signed.as_str())],
        )
        .assert_status(201, "6");
}

/// A creation under an identifier in use (the client's `X-Progress-ID`) is
/// refused and points nowhere: the upload there is someone else's.
#[test]
fn creation_under_an_identifier_in_use_is_refused_without_its_location() {
    let server = Server::new(&[]);
    let headers = [
        ("Upload-Complete", "?0"),
        ("Upload-Length", "4"),
        ("X-Progress-ID", "taken-1"),
    ];
    let first = server.create("6", &headers, b"");
    first.assert_status(201, "6");
    server
        .append("6", "taken-1", 0, false, b"ab", &[])
        .assert_status(204, "6");
    let again = server.create("5", &headers, b"xy");
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(
        again.json()["code"]
            .as_str()
            .unwrap()
            .starts_with("ERR_UPLOAD_")
    );
    assert_eq!(again.header("Location"), None, "{}", again.text());
    assert_eq!(again.header("Upload-Offset"), None, "{}", again.text());
    assert_eq!(server.stored("taken-1"), b"ab");
}

/// Through CGI (the program run as a web server runs it), each answer
/// carries its own `Status:` line: a `201` that said nothing would reach
/// the client as `200`.
#[test]
fn through_cgi_every_answer_carries_its_status() {
    let pool = common::TestPool::new();
    let ietf = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6")
    };
    let created = ietf("POST", "/upload/files")
        .env("HTTP_UPLOAD_COMPLETE", "?0")
        .env("HTTP_UPLOAD_LENGTH", "5")
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("Upload-Complete"), Some("?0"));
    let location = created.header("Location").expect("Location").to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let head = ietf("HEAD", &location).run(b"");
    assert_eq!(head.status, 204, "{}", head.text());
    assert_eq!(head.header("Upload-Offset"), Some("0"));
    let done = ietf("PATCH", &location)
        .env("CONTENT_TYPE", PARTIAL)
        .env("CONTENT_LENGTH", "5")
        .env("HTTP_UPLOAD_OFFSET", "0")
        .env("HTTP_UPLOAD_COMPLETE", "?0")
        .run(b"hello");
    assert_eq!(done.status, 201, "{}", done.text());
    assert_eq!(done.header("Upload-Complete"), Some("?1"));
    assert_eq!(done.json()["state"], "done");
    assert_eq!(
        std::fs::read(pool.path().join(&id).join("file-1")).unwrap(),
        b"hello"
    );
    ietf("PATCH", &location)
        .env("CONTENT_TYPE", "text/plain")
        .env("CONTENT_LENGTH", "1")
        .env("HTTP_UPLOAD_OFFSET", "5")
        .run(b"x")
        .assert_error_code(415, "ERR_INVALID_CONTENT_TYPE", "partial-upload");
}

/// tus-js-client's `overridePatchMethod` works in the draft's protocols
/// too: a `POST` to the upload with `X-HTTP-Method-Override: PATCH` is an
/// append.
#[test]
fn a_method_override_stands_for_the_append() {
    let server = Server::new(&[]);
    let id = server
        .create(
            "5",
            &[("Upload-Complete", "?0"), ("Upload-Length", "3")],
            b"",
        )
        .id();
    let answer = server.ietf(
        "5",
        "POST",
        &format!("{BASE}/{id}"),
        &[
            ("X-HTTP-Method-Override", "PATCH"),
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?1"),
        ],
        b"abc",
    );
    answer.assert_status(201, "5");
    assert_eq!(answer.header("Upload-Complete"), Some("?1"));
    assert_eq!(server.stored(&id), b"abc");
}

/// Middleware mode: the append that completes an upload hands it to the
/// application, as a completed form (or tus) upload is; one that does not
/// complete it is answered by fileupload.
#[test]
fn in_middleware_mode_a_completed_upload_is_handed_to_the_application() {
    use std::os::unix::fs::PermissionsExt;
    let pool = common::TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("app.cgi");
    std::fs::write(
        &app,
        "#!/bin/sh\nprintf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\nX-App: yes\\r\\n\\r\\n'\n\
         echo \"id=$FILEUPLOAD_IDENTIFIER\"\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let draft = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6")
            .env("FILEUPLOAD_APP", app.to_str().unwrap())
    };
    let created = draft("POST", "/upload/files")
        .env("HTTP_UPLOAD_COMPLETE", "?0")
        .env("HTTP_UPLOAD_LENGTH", "10")
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        created.header("X-App"),
        None,
        "not complete: not handed over"
    );
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let append = |offset: usize, body: &[u8], complete: &str| {
        draft("PATCH", &location)
            .env("CONTENT_TYPE", "application/partial-upload")
            .env("HTTP_UPLOAD_OFFSET", &offset.to_string())
            .env("HTTP_UPLOAD_COMPLETE", complete)
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(body)
    };
    let first = append(0, b"abcd", "?0");
    assert_eq!(first.status, 204, "{}", first.text());
    assert_eq!(first.header("X-App"), None);
    let last = append(4, b"efghij", "?1");
    assert_eq!(last.status, 200, "{}", last.text());
    assert_eq!(last.header("X-App"), Some("yes"));
    let text = String::from_utf8_lossy(&last.body).into_owned();
    assert!(text.contains(&format!("id={id}\n")), "{text}");
    let json: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(json["state"], "done", "{json}");
    assert_eq!(
        json["files"][0]["sha256"],
        sha256_hex(b"abcdefghij").as_str()
    );
}

/// RFC 9530's Content-Digest on an append is the append's digest: a wrong
/// one is 460 with the append cut away, the offset unchanged; a right one
/// (sha-512 here) is kept.
#[test]
fn an_appends_content_digest_is_checked() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    for version in VERSIONS {
        let server = Server::new(&[]);
        let bytes = random_bytes(3000, 40);
        let created = server.create(
            version,
            &[("Upload-Complete", "?0"), ("Upload-Length", "3000")],
            b"",
        );
        created.assert_status(201, version);
        let id = created.id();
        let digest = |data: &[u8]| format!("sha-256=:{}:", b64(&sha2::Sha256::digest(data)));
        server
            .append(
                version,
                &id,
                0,
                false,
                &bytes[..1000],
                &[("Content-Digest", &digest(&bytes[..1000]))],
            )
            .assert_status(204, version);
        let wrong = server.append(
            version,
            &id,
            1000,
            true,
            &bytes[1000..],
            &[("Content-Digest", &digest(b"other bytes"))],
        );
        assert_eq!(wrong.status, 460, "{}", wrong.text());
        assert_eq!(wrong.json()["code"], "ERR_CHECKSUM_MISMATCH");
        assert_eq!(server.head(version, &id).offset(), 1000);
        assert_eq!(server.stored(&id), &bytes[..1000]);
        let sha512 = format!("sha-512=:{}:", b64(&sha2::Sha512::digest(&bytes[1000..])));
        server
            .append(
                version,
                &id,
                1000,
                true,
                &bytes[1000..],
                &[("Content-Digest", &sha512)],
            )
            .assert_status(201, version);
        assert_eq!(server.stored(&id), bytes);
        assert_eq!(
            server.status(&id)["files"][0]["sha256"],
            sha256_hex(&bytes).as_str()
        );
    }
}
