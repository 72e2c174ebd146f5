//! The `checksums` setting and RFC 9530 digests, through the real binary:
//! forms through CGI, resumable uploads through the FastCGI daemon (and a
//! restart of it between chunks), each digest checked against one computed
//! independently of the program (Python's hashlib for SHA-256, SHA-1 and
//! MD5, a bitwise CRC-32C here, the reference `blake3` crate) and the bytes
//! on disk.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use common::fcgi::Daemon;
use common::{Form, TestPool, random_bytes, status_of};

const ALL: &str = "sha256,sha1,md5,crc32c,blake3";
const TUS: (&str, &str) = ("HTTP_TUS_RESUMABLE", "1.0.0");

/// hashlib's hex digests of `data`: (sha256, sha1, md5).
fn hashlib(data: &[u8]) -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, data).unwrap();
    let script = "import hashlib, sys\n\
                  d = open(sys.argv[1], 'rb').read()\n\
                  print(hashlib.sha256(d).hexdigest(), hashlib.sha1(d).hexdigest(), hashlib.md5(d).hexdigest())";
    let out = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace().map(str::to_owned);
    let mut next = || words.next().expect("three digests");
    (next(), next(), next())
}

/// CRC-32C bit by bit (reflected polynomial 0x82F63B78, as RFC 3720 and
/// RFC 9260 define it), big-endian hex.
fn crc32c_hex(data: &[u8]) -> String {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    format!("{:08x}", !crc)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Each of the five digests in `file` (a status's file entry) is that of
/// `data`; `listed` says which must be present, the others absent.
fn assert_sums(file: &Value, data: &[u8], listed: &[&str]) {
    let (sha256, sha1, md5) = hashlib(data);
    let expected = [
        ("sha256", sha256),
        ("sha1", sha1),
        ("md5", md5),
        ("crc32c", crc32c_hex(data)),
        ("blake3", blake3::hash(data).to_hex().to_string()),
    ];
    for (key, digest) in expected {
        if listed.contains(&key) {
            assert_eq!(file[key], digest.as_str(), "{key} of {file}");
        } else {
            assert!(file.get(key).is_none(), "{key} not listed: {file}");
        }
    }
}

fn stored(pool: &Path, id: &str, index: usize) -> Vec<u8> {
    std::fs::read(pool.join(id).join(format!("file-{index}"))).unwrap()
}

/// Three files (a large one, which moves hashing to its thread, a small
/// one and an empty one): each gets the five digests, in one pass.
#[test]
fn a_form_upload_gets_each_listed_checksum() {
    let pool = TestPool::new();
    let big = random_bytes(3 << 20, 1);
    let small = random_bytes(1000, 2);
    let form = Form::new()
        .file("a", "big.bin", "application/octet-stream", &big)
        .file("b", "small.bin", "application/octet-stream", &small)
        .file("c", "empty.bin", "application/octet-stream", b"");
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_CHECKSUMS", ALL)
        .post_form("/upload?X-Progress-ID=all", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = status_of(&pool.cgi(), "all");
    assert_eq!(status["state"], "done", "{status}");
    let listed: Vec<&str> = ALL.split(',').collect();
    for (i, data) in [&big[..], &small[..], b""].into_iter().enumerate() {
        assert_eq!(stored(pool.path(), "all", i + 1), data);
        assert_sums(&status["files"][i], data, &listed);
    }
}

/// The default is SHA-256 alone; `sha256 = off` takes it out of the list;
/// none computes nothing.
#[test]
fn the_setting_chooses_the_checksums_and_sha256_off_removes_sha256() {
    let pool = TestPool::new();
    let data = random_bytes(5000, 3);
    let form = Form::new().file("f", "x.bin", "application/octet-stream", &data);
    /// An identifier, the environment, the keys it gives.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        ("default", &[], &["sha256"]),
        (
            "two",
            &[("FILEUPLOAD_CHECKSUMS", "crc32c, MD5")],
            &["md5", "crc32c"],
        ),
        (
            "off",
            &[
                ("FILEUPLOAD_CHECKSUMS", "sha256,blake3"),
                ("FILEUPLOAD_SHA256", "off"),
            ],
            &["blake3"],
        ),
        ("none", &[("FILEUPLOAD_CHECKSUMS", "none")], &[]),
        // An empty variable is unset, as for every setting.
        ("empty", &[("FILEUPLOAD_CHECKSUMS", "")], &["sha256"]),
    ];
    for (id, env, listed) in cases {
        let mut cgi = pool.cgi();
        for (name, value) in *env {
            cgi = cgi.env(name, value);
        }
        let reply = cgi.post_form(&format!("/upload?X-Progress-ID={id}"), &form);
        assert_eq!(reply.status, 200, "{id}: {}", reply.text());
        let status = status_of(&pool.cgi(), id);
        assert_eq!(stored(pool.path(), id, 1), data, "{id}");
        assert_sums(&status["files"][0], &data, listed);
    }
    // As an option and a config-file key too.
    let conf = pool.path().join("fileupload.conf");
    std::fs::write(&conf, "checksums = sha1\n").unwrap();
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_CONFIG", conf.to_str().unwrap())
        .post_form("/upload?X-Progress-ID=file", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_sums(
        &status_of(&pool.cgi(), "file")["files"][0],
        &data,
        &["sha1"],
    );
    let help = Command::new(common::bin()).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--checksums"),
        "the option is in --help"
    );
}

/// An unknown name is a configuration error naming it and the known ones.
#[test]
fn an_unknown_checksum_is_a_configuration_error() {
    let pool = TestPool::new();
    for value in ["sha512", "sha256,,md5", "crc32"] {
        let reply = pool
            .cgi()
            .env("FILEUPLOAD_CHECKSUMS", value)
            .get("/upload/status?X-Progress-ID=x");
        reply.assert_error(500, "the upload service is misconfigured");
        assert!(
            reply.stderr.contains("FILEUPLOAD_CHECKSUMS")
                && reply.stderr.contains("sha256, sha1, md5, crc32c, blake3"),
            "{value}: {}",
            reply.stderr
        );
    }
}

fn create(daemon: &Daemon, length: usize) -> (String, String) {
    let created = daemon.request(
        "POST",
        "/upload/files",
        &[TUS, ("HTTP_UPLOAD_LENGTH", &length.to_string())],
        b"",
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    (location, id)
}

fn patch(
    daemon: &Daemon,
    location: &str,
    offset: usize,
    data: &[u8],
    extra: &[(&str, &str)],
) -> common::Reply {
    let offset = offset.to_string();
    let length = data.len().to_string();
    let mut params = vec![
        TUS,
        ("CONTENT_TYPE", "application/offset+octet-stream"),
        ("HTTP_UPLOAD_OFFSET", &offset),
        ("CONTENT_LENGTH", &length),
    ];
    params.extend_from_slice(extra);
    daemon.request("PATCH", location, &params, data)
}

/// A tus upload in four chunks, the daemon restarted after the second:
/// SHA-256 goes on from its saved state, the others read the file once at
/// completion; every digest is the whole file's.
#[test]
fn a_resumable_upload_over_several_patches_and_a_restart_gets_each_checksum() {
    let pool = TestPool::new();
    let env = [("FILEUPLOAD_CHECKSUMS", ALL)];
    let data = random_bytes((3 << 20) + 12_345, 4);
    let mut daemon = Daemon::start(pool.path(), &env);
    let (location, id) = create(&daemon, data.len());
    let cuts = [0, 1 << 20, (1 << 20) + 777, 3 << 20, data.len()];
    for (i, pair) in cuts.windows(2).enumerate() {
        if i == 2 {
            assert!(
                daemon.terminate(Duration::from_secs(10)).is_some(),
                "stopped"
            );
            daemon = Daemon::start(pool.path(), &env);
        }
        let reply = patch(&daemon, &location, pair[0], &data[pair[0]..pair[1]], &[]);
        assert_eq!(reply.status, 204, "chunk {i}: {}", reply.text());
        assert_eq!(
            reply.header("Upload-Offset"),
            Some(pair[1].to_string().as_str())
        );
    }
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(stored(pool.path(), &id, 1), data);
    assert_sums(
        &status["files"][0],
        &data,
        &ALL.split(',').collect::<Vec<_>>(),
    );
}

/// RFC 9530 on a form: Repr-Digest (or Content-Digest) is the digest of
/// the body as sent. A match is stored; a mismatch is 400
/// ERR_DIGEST_MISMATCH with the upload's files removed.
#[test]
fn a_forms_repr_digest_is_checked_against_its_body() {
    use sha2::Digest as _;
    let pool = TestPool::new();
    let data = random_bytes(200_000, 5);
    let form = Form::new().file("f", "x.bin", "application/octet-stream", &data);
    let body = form.body();
    let sha256 = b64(&sha2::Sha256::digest(&body));
    let sha512 = b64(&sha2::Sha512::digest(&body));
    let good = [
        ("HTTP_REPR_DIGEST", format!("sha-256=:{sha256}:")),
        (
            "HTTP_CONTENT_DIGEST",
            format!("md5=:AAAA:, sha-512=:{sha512}:"),
        ),
        (
            "HTTP_REPR_DIGEST",
            format!("sha-256=:{sha256}:, sha-512=:{sha512}:"),
        ),
    ];
    for (i, (header, value)) in good.iter().enumerate() {
        let id = format!("good{i}");
        let reply = pool
            .cgi()
            .env(header, value)
            .post_form(&format!("/upload?X-Progress-ID={id}"), &form);
        assert_eq!(reply.status, 200, "{header}: {value}: {}", reply.text());
        assert_eq!(stored(pool.path(), &id, 1), data);
    }
    // The digest of the file alone is not the body's.
    let of_file = b64(&sha2::Sha256::digest(&data));
    let wrong = [
        ("HTTP_REPR_DIGEST", format!("sha-256=:{of_file}:")),
        (
            "HTTP_CONTENT_DIGEST",
            format!("sha-512=:{}:", b64(&sha2::Sha512::digest(b"x"))),
        ),
        // The stronger one is checked, and it is wrong.
        (
            "HTTP_REPR_DIGEST",
            format!("sha-256=:{sha256}:, sha-512=:{}:", b64(&[0; 64])),
        ),
    ];
    for (i, (header, value)) in wrong.iter().enumerate() {
        let id = format!("wrong{i}");
        let reply = pool
            .cgi()
            .env(header, value)
            .post_form(&format!("/upload?X-Progress-ID={id}"), &form);
        reply.assert_error_code(400, "ERR_DIGEST_MISMATCH", "does not have the");
        let status = status_of(&pool.cgi(), &id);
        assert_eq!(status["state"], "error", "{status}");
        assert_eq!(status["code"], "ERR_DIGEST_MISMATCH", "{status}");
        assert!(
            !pool
                .bucket_files(&id)
                .iter()
                .any(|f| f.starts_with("file-")),
            "the file is removed: {:?}",
            pool.bucket_files(&id)
        );
    }
    let reply = pool
        .cgi()
        .env("HTTP_REPR_DIGEST", "sha-256=:not base64:")
        .post_form("/upload?X-Progress-ID=bad", &form);
    reply.assert_error_code(400, "ERR_BAD_CHECKSUM", "Repr-Digest");
}

/// RFC 9530 on a tus chunk: Content-Digest is the chunk's digest. A wrong
/// one is 460 with the chunk discarded and the offset unchanged, as a wrong
/// Upload-Checksum is; the whole file's checksums stay right.
#[test]
fn a_chunks_content_digest_is_checked_and_a_mismatch_discarded_with_460() {
    use sha2::Digest as _;
    let pool = TestPool::new();
    let env = [("FILEUPLOAD_CHECKSUMS", "sha256,md5")];
    let daemon = Daemon::start(pool.path(), &env);
    let data = random_bytes(3000, 6);
    let (location, id) = create(&daemon, data.len());
    let digest = |bytes: &[u8]| format!("sha-256=:{}:", b64(&sha2::Sha256::digest(bytes)));
    let first = patch(
        &daemon,
        &location,
        0,
        &data[..1000],
        &[("HTTP_CONTENT_DIGEST", &digest(&data[..1000]))],
    );
    assert_eq!(first.status, 204, "{}", first.text());
    let wrong = patch(
        &daemon,
        &location,
        1000,
        &data[1000..2000],
        &[("HTTP_CONTENT_DIGEST", &digest(b"other bytes"))],
    );
    assert_eq!(wrong.status, 460, "{}", wrong.text());
    assert_eq!(wrong.json()["code"], "ERR_CHECKSUM_MISMATCH");
    assert!(wrong.text().contains("Content-Digest"), "{}", wrong.text());
    assert_eq!(
        stored(pool.path(), &id, 1),
        data[..1000],
        "the chunk is cut away"
    );
    let both = patch(
        &daemon,
        &location,
        1000,
        &data[1000..],
        &[
            ("HTTP_CONTENT_DIGEST", &digest(&data[1000..])),
            ("HTTP_UPLOAD_CHECKSUM", "md5 AAAAAAAAAAAAAAAAAAAAAA=="),
        ],
    );
    assert_eq!(both.status, 400, "{}", both.text());
    assert_eq!(both.json()["code"], "ERR_BAD_CHECKSUM");
    let sha512 = format!("sha-512=:{}:", b64(&sha2::Sha512::digest(&data[1000..])));
    let last = patch(
        &daemon,
        &location,
        1000,
        &data[1000..],
        &[("HTTP_CONTENT_DIGEST", &sha512)],
    );
    assert_eq!(last.status, 204, "{}", last.text());
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(stored(pool.path(), &id, 1), data);
    assert_sums(&status["files"][0], &data, &["sha256", "md5"]);
}

/// RFC 9530 on a resumable upload: the Repr-Digest of the chunk that
/// completes it is the whole file's, checked once the last byte is stored
/// (from the carried SHA-256, or by reading the file for sha-512 or when no
/// checksum is listed); a mismatch is 400 ERR_DIGEST_MISMATCH and the
/// upload is removed. On a chunk that does not complete it, it is ignored.
#[test]
fn the_completing_chunks_repr_digest_is_checked_against_the_whole_file() {
    use sha2::Digest as _;
    let pool = TestPool::new();
    let data = random_bytes(300_000, 7);
    let (head, tail) = data.split_at(100_000);
    let sha256 = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(&data)));
    let sha512 = format!("sha-512=:{}:", b64(&sha2::Sha512::digest(&data)));
    let wrong = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(tail)));
    for (list, good) in [("sha256", &sha256), ("sha256", &sha512), ("none", &sha256)] {
        let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_CHECKSUMS", list)]);
        let (location, id) = create(&daemon, data.len());
        // Not the completing chunk: not checked.
        let first = patch(&daemon, &location, 0, head, &[("HTTP_REPR_DIGEST", &wrong)]);
        assert_eq!(first.status, 204, "{}", first.text());
        let last = patch(
            &daemon,
            &location,
            head.len(),
            tail,
            &[("HTTP_REPR_DIGEST", good)],
        );
        assert_eq!(last.status, 204, "{list} {good}: {}", last.text());
        assert_eq!(status_of(&pool.cgi(), &id)["state"], "done");
        assert_eq!(stored(pool.path(), &id, 1), data);

        let (location, id) = create(&daemon, data.len());
        let first = patch(&daemon, &location, 0, head, &[]);
        assert_eq!(first.status, 204, "{}", first.text());
        let last = patch(
            &daemon,
            &location,
            head.len(),
            tail,
            &[("HTTP_REPR_DIGEST", &wrong)],
        );
        assert_eq!(last.status, 400, "{list}: {}", last.text());
        assert_eq!(
            last.json()["code"],
            "ERR_DIGEST_MISMATCH",
            "{}",
            last.text()
        );
        assert!(!pool.path().join(&id).exists(), "the upload is removed");
        let gone = daemon.request("HEAD", &location, &[TUS], b"");
        assert_eq!(gone.status, 404, "{}", gone.text());
    }
}

/// A creation request that carries the first chunk (tus
/// creation-with-upload, the draft's creation with content) has its
/// digests checked as a PATCH's are: Upload-Checksum and Content-Digest
/// against the chunk (460, the chunk cut away, the upload kept at offset 0
/// for the client to continue), Repr-Digest against the whole file when
/// the chunk completes it (400, the upload removed).
#[test]
fn a_creation_with_its_first_chunk_has_its_digests_checked() {
    use sha2::Digest as _;
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let data = random_bytes(5000, 8);
    let whole = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(&data)));
    let other = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(b"other")));
    let length = data.len().to_string();
    let tus_create = |body: &[u8], extra: &[(&str, &str)]| {
        let sent = body.len().to_string();
        let mut params = vec![
            TUS,
            ("HTTP_UPLOAD_LENGTH", length.as_str()),
            ("CONTENT_TYPE", "application/offset+octet-stream"),
            ("CONTENT_LENGTH", sent.as_str()),
        ];
        params.extend_from_slice(extra);
        daemon.request("POST", "/upload/files", &params, body)
    };
    let id_of = |reply: &common::Reply| {
        let location = reply.header("Location").expect("a Location").to_owned();
        let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
        (location, id)
    };

    let good = tus_create(&data, &[("HTTP_REPR_DIGEST", &whole)]);
    assert_eq!(good.status, 201, "{}", good.text());
    let (_, id) = id_of(&good);
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "done");
    assert_eq!(stored(pool.path(), &id, 1), data);

    let wrong = tus_create(&data, &[("HTTP_REPR_DIGEST", &other)]);
    wrong.assert_error_code(400, "ERR_DIGEST_MISMATCH", "Repr-Digest");
    assert!(wrong.header("Location").is_none(), "{:?}", wrong.headers);
    assert_eq!(pool.top_level().len(), 1, "{:?}", pool.top_level());

    let head = &data[..2000];
    let sha1 = |bytes: &[u8]| format!("sha1 {}", b64(&sha1::Sha1::digest(bytes)));
    let bad_chunk = tus_create(head, &[("HTTP_UPLOAD_CHECKSUM", &sha1(b"other"))]);
    assert_eq!(bad_chunk.status, 460, "{}", bad_chunk.text());
    assert_eq!(bad_chunk.json()["code"], "ERR_CHECKSUM_MISMATCH");
    let (location, id) = id_of(&bad_chunk);
    let info = daemon.request("HEAD", &location, &[TUS], b"");
    assert_eq!(info.header("Upload-Offset"), Some("0"), "cut away");
    let rest = patch(&daemon, &location, 0, &data, &[]);
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(stored(pool.path(), &id, 1), data);

    let chunk_digest = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(head)));
    let good_chunk = tus_create(
        head,
        &[
            ("HTTP_CONTENT_DIGEST", &chunk_digest),
            // Not the completing chunk: not checked.
            ("HTTP_REPR_DIGEST", &other),
        ],
    );
    assert_eq!(good_chunk.status, 201, "{}", good_chunk.text());
    assert_eq!(good_chunk.header("Upload-Offset"), Some("2000"));

    // The draft: a creation with all the content and Upload-Complete: ?1.
    let ietf_create = |repr: &str| {
        daemon.request(
            "POST",
            "/upload/files",
            &[
                ("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6"),
                ("HTTP_UPLOAD_COMPLETE", "?1"),
                ("CONTENT_TYPE", "application/octet-stream"),
                ("CONTENT_LENGTH", length.as_str()),
                ("HTTP_REPR_DIGEST", repr),
            ],
            &data,
        )
    };
    let before = pool.top_level().len();
    let wrong = ietf_create(&other);
    wrong.assert_error_code(400, "ERR_DIGEST_MISMATCH", "Repr-Digest");
    assert_eq!(pool.top_level().len(), before, "{:?}", pool.top_level());
    let good = ietf_create(&whole);
    assert_eq!(good.status, 201, "{}", good.text());
    let (_, id) = id_of(&good);
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "done");
    assert_eq!(stored(pool.path(), &id, 1), data);
}
