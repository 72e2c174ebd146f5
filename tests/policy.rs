//! Upload policies in signed identifiers, enforced as a user meets them:
//! the real binary as a CGI program and as the FastCGI daemon, forms, tus
//! and the IETF draft, the pool checked on disk after every refusal.

mod common;

use std::time::Duration;

use fileupload::identifier::{Key, create_identifier_with_policy};
use fileupload::policy::Policy;
use fileupload::pool::unix_now;
use serde_json::Value;

use common::fcgi::Daemon;
use common::*;

const KEY: &str = "policy test key";
/// CGI variables of one request.
type Vars = Vec<(&'static str, &'static str)>;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

fn png(len: usize, seed: u64) -> Vec<u8> {
    let mut data = PNG.to_vec();
    data.extend(random_bytes(len - PNG.len(), seed));
    data
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Cgi,
    Daemon,
}

/// A pool and a server with the upload key, reached through CGI or the
/// daemon.
struct Site {
    pool: TestPool,
    via: Via,
    daemon: Option<Daemon>,
}

impl Site {
    fn new(via: Via) -> Site {
        let pool = TestPool::new();
        let env = [("FILEUPLOAD_UPLOAD_KEY", KEY), ("FILEUPLOAD_MAX_AGE", "1h")];
        let daemon = match via {
            Via::Cgi => None,
            Via::Daemon => Some(Daemon::start(pool.path(), &env)),
        };
        Site { pool, via, daemon }
    }

    fn key() -> Key {
        Key::new(KEY.as_bytes()).unwrap()
    }

    fn mint(policy: &Policy) -> String {
        create_identifier_with_policy(&Site::key(), policy)
            .unwrap()
            .as_str()
            .to_owned()
    }

    /// One request; `vars` are CGI variables (`HTTP_*`, `CONTENT_TYPE`);
    /// `CONTENT_LENGTH` is set from the body unless `streamed`, which
    /// sends it as a web server passes a chunked request on.
    fn send(
        &self,
        method: &str,
        target: &str,
        vars: &[(&str, &str)],
        body: &[u8],
        streamed: bool,
    ) -> Reply {
        let length = body.len().to_string();
        let mut all: Vec<(&str, &str)> = vars.to_vec();
        match (streamed, self.via) {
            (false, _) => all.push(("CONTENT_LENGTH", &length)),
            (true, Via::Cgi) => all.push(("HTTP_TRANSFER_ENCODING", "chunked")),
            (true, Via::Daemon) => {}
        }
        match &self.daemon {
            Some(daemon) => daemon.request(method, target, &all, body),
            None => {
                let mut cgi = self
                    .pool
                    .cgi()
                    .env("FILEUPLOAD_UPLOAD_KEY", KEY)
                    .env("FILEUPLOAD_MAX_AGE", "1h")
                    .request(method, target);
                for (name, value) in all {
                    cgi = cgi.env(name, value);
                }
                cgi.run(body)
            }
        }
    }

    fn post(&self, id: &str, form: &Form) -> Reply {
        self.send(
            "POST",
            &format!("/upload?X-Progress-ID={id}"),
            &[("CONTENT_TYPE", &form.content_type())],
            &form.body(),
            false,
        )
    }

    fn status(&self, id: &str) -> Value {
        let reply = self.send(
            "GET",
            &format!("/upload/status?X-Progress-ID={id}"),
            &[],
            b"",
            false,
        );
        assert_eq!(reply.status, 200, "{:?}: {}", self.via, reply.text());
        reply.json()
    }

    fn tus_create(&self, id: &str, vars: &[(&str, &str)]) -> Reply {
        let mut all = vec![("HTTP_TUS_RESUMABLE", "1.0.0")];
        all.extend_from_slice(vars);
        self.send(
            "POST",
            &format!("/upload/files?X-Progress-ID={id}"),
            &all,
            b"",
            false,
        )
    }

    fn tus_patch(&self, id: &str, offset: u64, data: &[u8], streamed: bool) -> Reply {
        let offset = offset.to_string();
        self.send(
            "PATCH",
            &format!("/upload/files/{id}"),
            &[
                ("HTTP_TUS_RESUMABLE", "1.0.0"),
                ("HTTP_UPLOAD_OFFSET", &offset),
                ("CONTENT_TYPE", "application/offset+octet-stream"),
            ],
            data,
            streamed,
        )
    }

    fn head(&self, id: &str) -> Reply {
        self.send(
            "HEAD",
            &format!("/upload/files/{id}"),
            &[("HTTP_TUS_RESUMABLE", "1.0.0")],
            b"",
            false,
        )
    }

    /// The names of every file in the pool (none of them a stored file
    /// after a refusal).
    fn stored_files(&self) -> Vec<String> {
        self.pool
            .snapshot()
            .into_keys()
            .filter(|path| path.contains("file-") || path.ends_with("/data"))
            .collect()
    }

    /// The pool holds nothing but what it held before (`.trash` emptied).
    fn assert_untouched(&self, what: &str) {
        // `.gc` is the automatic collection's stamp (max_age is set).
        let left: Vec<String> = self
            .pool
            .top_level()
            .into_iter()
            .filter(|name| name != ".gc")
            .collect();
        assert!(
            left.is_empty(),
            "{:?} {what}: {:?}",
            self.via,
            self.pool.snapshot()
        );
    }
}

fn name_of(id: &str) -> &str {
    &id[..36]
}

fn hour() -> Policy {
    Policy {
        expires: Some(unix_now() + 3600),
        ..Policy::default()
    }
}

#[test]
fn forms_within_the_policy_are_stored_and_polled_as_before() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let id = Site::mint(&Policy {
            size_limit: Some(64 << 10),
            accept: vec!["image/*".into(), "application/pdf".into()],
            file_limit: Some(2),
            ..hour()
        });
        let (a, b) = (png(20_000, 1), b"%PDF-1.7 rest".to_vec());
        let form = Form::new()
            .file("a", "a.png", "image/png", &a)
            .field("note", "hi")
            .file("b", "b.pdf", "application/pdf", &b);
        let reply = site.post(&id, &form);
        assert_eq!(reply.status, 200, "{via:?}: {}", reply.text());
        let bucket = site.pool.path().join(name_of(&id));
        assert_eq!(std::fs::read(bucket.join("file-1")).unwrap(), a);
        assert_eq!(std::fs::read(bucket.join("file-2")).unwrap(), b);
        let status = site.status(&id);
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["identifier"], id.as_str());
        assert_eq!(status["files"][0]["content-type"], "image/png");
        // An empty file input (no file chosen) is no file: not counted.
        let id = Site::mint(&Policy {
            accept: vec!["image/png".into()],
            file_limit: Some(1),
            ..hour()
        });
        let form = Form::new().file("a", "a.png", "image/png", PNG).file(
            "b",
            "",
            "application/octet-stream",
            b"",
        );
        let reply = site.post(&id, &form);
        assert_eq!(reply.status, 200, "{via:?}: {}", reply.text());
    }
}

#[test]
fn expiry_refuses_new_form_uploads_at_the_boundary() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let form = Form::new().file("f", "a.txt", "text/plain", b"late");
        // Expired from the `expires` second on: minted for now, it is.
        let now = unix_now();
        let expired = Site::mint(&Policy {
            expires: Some(now),
            ..Policy::default()
        });
        site.post(&expired, &form)
            .assert_error_code(403, "ERR_EXPIRED", "expired");
        site.assert_untouched("after an expired form");
        // Two seconds ahead it is not yet (a request takes milliseconds).
        let fresh = Site::mint(&Policy {
            expires: Some(unix_now() + 2),
            ..Policy::default()
        });
        let reply = site.post(&fresh, &form);
        assert_eq!(reply.status, 200, "{via:?}: {}", reply.text());
    }
}

#[test]
fn a_form_upload_running_when_its_policy_expires_finishes() {
    use std::io::Write;
    let site = Site::new(Via::Daemon);
    let daemon = site.daemon.as_ref().unwrap();
    let expires = unix_now() + 2;
    let id = Site::mint(&Policy {
        expires: Some(expires),
        ..Policy::default()
    });
    let data = random_bytes(200_000, 9);
    let form = Form::new().file("f", "slow.bin", "application/octet-stream", &data);
    let body = form.body();
    let mut stream = daemon.connect();
    let target = format!("/upload?X-Progress-ID={id}");
    let mut bytes = common::fcgi::upload_head(&form, &target, body.len(), false);
    bytes.extend(common::fcgi::stdin_data(1, &body[..100_000]));
    stream.write_all(&bytes).unwrap();
    wait_for(Duration::from_secs(5), || {
        (unix_now() >= expires).then_some(())
    })
    .expect("the clock reaches the expiry");
    stream
        .write_all(&common::fcgi::stdin_records(1, &body[100_000..]))
        .unwrap();
    let (reply, _) = common::fcgi::read_response(&mut stream, 1);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = site.status(&id);
    assert_eq!(status["state"], "done", "{status}");
    let path = status["files"][0]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    // A new upload under it is refused now.
    site.post(&id, &form)
        .assert_error_code(403, "ERR_EXPIRED", "expired");
}

#[test]
fn over_the_size_limit_is_413_before_reading_and_while_streaming() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let data = random_bytes(200_000, 2);
        let form = Form::new().file("f", "big.bin", "application/octet-stream", &data);
        let policy = Policy {
            size_limit: Some(100_000),
            ..hour()
        };
        let id = Site::mint(&policy);
        site.post(&id, &form)
            .assert_error_code(413, "ERR_TOO_LARGE", "limit of 100000 bytes");
        assert!(site.stored_files().is_empty(), "{:?}", site.pool.snapshot());
        // Streamed, the length unknown: stopped one byte past the limit.
        let id = Site::mint(&policy);
        let reply = site.send(
            "POST",
            &format!("/upload?X-Progress-ID={id}"),
            &[("CONTENT_TYPE", &form.content_type())],
            &form.body(),
            true,
        );
        reply.assert_error_code(413, "ERR_TOO_LARGE", "100000 bytes");
        let status = site.status(&id);
        assert_eq!(status["code"], "ERR_TOO_LARGE", "{status}");
        assert_eq!(status["received"], 100_001, "{status}");
        assert!(site.stored_files().is_empty(), "{:?}", site.pool.snapshot());
        // The server's own max_size still applies when it is the smaller.
        let small = Site::mint(&Policy {
            size_limit: Some(10 << 30),
            ..hour()
        });
        let reply = site.post(&small, &Form::new().file("f", "a", "text/plain", b"ok"));
        assert_eq!(reply.status, 200, "{via:?}: {}", reply.text());
    }
}

#[test]
fn a_type_not_accepted_is_415_and_nothing_is_stored() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let policy = Policy {
            accept: vec!["image/png".into(), "application/pdf".into()],
            ..hour()
        };
        let cases: Vec<(&str, Form)> = vec![
            (
                "a declared type not listed",
                Form::new().file("f", "a.txt", "text/plain", b"text"),
            ),
            (
                "no declared type (octet-stream)",
                Form::new().raw_part(
                    "Content-Disposition: form-data; name=\"f\"; filename=\"x\"",
                    b"bytes",
                ),
            ),
            (
                "bytes that are not a PNG",
                Form::new().file("f", "evil.png", "image/png", b"MZ\x90\x00 a program"),
            ),
            (
                "a PNG shorter than its signature",
                Form::new().file("f", "short.png", "image/png", &PNG[..5]),
            ),
            (
                "a good file, then a bad one: the first goes too",
                Form::new()
                    .file("a", "a.png", "image/png", &png(5000, 3))
                    .file("b", "b.pdf", "application/pdf", b"not a pdf at all"),
            ),
        ];
        for (what, form) in cases {
            let id = Site::mint(&policy);
            site.post(&id, &form)
                .assert_error_code(415, "ERR_TYPE_NOT_ACCEPTED", "");
            assert!(
                site.stored_files().is_empty(),
                "{via:?} {what}: {:?}",
                site.pool.snapshot()
            );
            let status = site.status(&id);
            assert_eq!(status["state"], "error", "{what}: {status}");
            assert_eq!(status["code"], "ERR_TYPE_NOT_ACCEPTED", "{what}: {status}");
        }
    }
}

#[test]
fn more_files_than_allowed_is_400() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let id = Site::mint(&Policy {
            file_limit: Some(2),
            ..hour()
        });
        let form = Form::new()
            .file("a", "1", "text/plain", b"1")
            .file("b", "2", "text/plain", b"2")
            .file("c", "3", "text/plain", b"3");
        site.post(&id, &form)
            .assert_error_code(400, "ERR_TOO_MANY_FILES", "allows 2 file(s)");
        assert!(site.stored_files().is_empty(), "{:?}", site.pool.snapshot());
        assert_eq!(site.status(&id)["code"], "ERR_TOO_MANY_FILES");
    }
}

#[test]
fn a_tampered_policy_is_a_wrong_signature() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let id = Site::mint(&Policy {
            size_limit: Some(10),
            ..hour()
        });
        let (signed, signature) = id.split_once(':').unwrap();
        let (name, _) = signed.split_once('.').unwrap();
        let looser = Policy {
            size_limit: Some(1 << 30),
            ..hour()
        };
        let forged = format!("{name}.{}:{signature}", looser.encode().unwrap());
        let form = Form::new().file("f", "a", "text/plain", b"more than ten bytes");
        site.post(&forged, &form)
            .assert_error_code(403, "ERR_SIGNATURE", "does not match");
        // Without its signature the policy binds no one: refused too.
        site.post(signed, &form)
            .assert_error_code(403, "ERR_SIGNATURE", "no signature");
        site.tus_create(&forged, &[("HTTP_UPLOAD_LENGTH", "5")])
            .assert_error_code(403, "ERR_SIGNATURE", "does not match");
        site.assert_untouched("after forged policies");
    }
}

#[test]
fn a_server_without_a_key_refuses_policy_identifiers() {
    let pool = TestPool::new();
    let id = Site::mint(&hour());
    let unsigned = id.split_once(':').unwrap().0;
    for candidate in [id.as_str(), unsigned] {
        let form = Form::new().file("f", "a", "text/plain", b"x");
        pool.cgi()
            .post_form(&format!("/upload?X-Progress-ID={candidate}"), &form)
            .assert_error_code(400, "ERR_BAD_IDENTIFIER", "no upload key");
    }
    assert!(pool.top_level().is_empty());
}

#[test]
fn a_clear_needs_the_same_identifier() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let id = Site::mint(&Policy {
            size_limit: Some(1000),
            ..hour()
        });
        let reply = site.post(&id, &Form::new().file("f", "a", "text/plain", b"keep"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let clear = |candidate: &str| {
            site.send(
                "DELETE",
                &format!("/upload/status?X-Progress-ID={candidate}"),
                &[],
                b"",
                false,
            )
        };
        let (signed, signature) = id.split_once(':').unwrap();
        let name = name_of(&id);
        let other = Policy {
            size_limit: Some(2000),
            ..hour()
        };
        for wrong in [
            format!("{name}:{signature}"),
            signed.to_owned(),
            format!("{name}.{}:{signature}", other.encode().unwrap()),
        ] {
            clear(&wrong).assert_error_code(403, "ERR_SIGNATURE", "");
            assert_eq!(site.status(&id)["state"], "done");
        }
        let cleared = clear(&id);
        assert!(cleared.status < 300, "{via:?}: {}", cleared.text());
        assert!(!site.pool.path().join(name).exists());
    }
}

#[test]
fn tus_uploads_under_a_policy() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let policy = Policy {
            size_limit: Some(50_000),
            accept: vec!["image/png".into()],
            ..hour()
        };
        let png_meta = "filename YS5wbmc=,filetype aW1hZ2UvcG5n"; // a.png, image/png
        let text_meta = "filename YS50eHQ=,filetype dGV4dC9wbGFpbg=="; // a.txt, text/plain
        // Within: created, sent in two chunks, complete; status as before.
        let id = Site::mint(&policy);
        let data = png(30_000, 4);
        let created = site.tus_create(
            &id,
            &[
                ("HTTP_UPLOAD_LENGTH", "30000"),
                ("HTTP_UPLOAD_METADATA", png_meta),
            ],
        );
        assert_eq!(created.status, 201, "{via:?}: {}", created.text());
        let location = created.header("Location").unwrap();
        assert!(
            location.ends_with(&format!("/upload/files/{id}")),
            "{location}"
        );
        // The first chunk ends inside the signature: checked on what it has.
        let first = site.tus_patch(&id, 0, &data[..4], false);
        assert_eq!(first.status, 204, "{}", first.text());
        let rest = site.tus_patch(&id, 4, &data[4..], false);
        assert_eq!(rest.status, 204, "{}", rest.text());
        let status = site.status(&id);
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(
            std::fs::read(status["files"][0]["path"].as_str().unwrap()).unwrap(),
            data
        );
        assert_eq!(site.head(&id).status, 200);

        let refusals: [(&str, Vars, u16, &str); 4] = [
            (
                "a length over the size limit",
                vec![
                    ("HTTP_UPLOAD_LENGTH", "50001"),
                    ("HTTP_UPLOAD_METADATA", png_meta),
                ],
                413,
                "ERR_TOO_LARGE",
            ),
            (
                "a type not accepted",
                vec![
                    ("HTTP_UPLOAD_LENGTH", "100"),
                    ("HTTP_UPLOAD_METADATA", text_meta),
                ],
                415,
                "ERR_TYPE_NOT_ACCEPTED",
            ),
            (
                "no declared type",
                vec![("HTTP_UPLOAD_LENGTH", "100")],
                415,
                "ERR_TYPE_NOT_ACCEPTED",
            ),
            (
                "a PNG shorter than its signature",
                vec![
                    ("HTTP_UPLOAD_LENGTH", "4"),
                    ("HTTP_UPLOAD_METADATA", png_meta),
                ],
                415,
                "ERR_TYPE_NOT_ACCEPTED",
            ),
        ];
        let _ = site.send(
            "DELETE",
            &format!("/upload/files/{id}"),
            &[("HTTP_TUS_RESUMABLE", "1.0.0")],
            b"",
            false,
        );
        site.assert_untouched("after the first upload was terminated");
        for (what, vars, status, code) in refusals {
            let id = Site::mint(&policy);
            let reply = site.tus_create(&id, &vars);
            reply.assert_error_code(status, code, "");
            assert!(reply.header("Location").is_none(), "{what}");
            site.assert_untouched(what);
        }

        // Bytes not of the declared type: refused, and the upload removed.
        let id = Site::mint(&policy);
        let created = site.tus_create(
            &id,
            &[
                ("HTTP_UPLOAD_LENGTH", "1000"),
                ("HTTP_UPLOAD_METADATA", png_meta),
            ],
        );
        assert_eq!(created.status, 201, "{}", created.text());
        site.tus_patch(&id, 0, &[b'M'; 1000], false)
            .assert_error_code(415, "ERR_TYPE_NOT_ACCEPTED", "not those of a image/png");
        assert_eq!(site.head(&id).status, 404);
        site.assert_untouched("after a chunk of the wrong type");

        // A deferred length: the size limit holds while the chunk streams.
        let id = Site::mint(&policy);
        let created = site.tus_create(
            &id,
            &[
                ("HTTP_UPLOAD_DEFER_LENGTH", "1"),
                ("HTTP_UPLOAD_METADATA", png_meta),
            ],
        );
        assert_eq!(created.status, 201, "{}", created.text());
        site.tus_patch(&id, 0, &png(60_000, 5), true)
            .assert_error_code(413, "ERR_TOO_LARGE", "limit of 50000 bytes");
        assert!(
            site.stored_files()
                .iter()
                .all(|f| { std::fs::metadata(site.pool.path().join(f)).unwrap().len() == 0 })
        );
    }
}

#[test]
fn tus_expiry_refuses_creation_and_later_chunks_but_not_status() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let expired = Site::mint(&Policy {
            expires: Some(unix_now()),
            ..Policy::default()
        });
        site.tus_create(&expired, &[("HTTP_UPLOAD_LENGTH", "10")])
            .assert_error_code(403, "ERR_EXPIRED", "");
        site.assert_untouched("after an expired creation");
        // Made before the expiry, continued after it: the chunk is refused,
        // the stored bytes and the status stay.
        let expires = unix_now() + 2;
        let id = Site::mint(&Policy {
            expires: Some(expires),
            ..Policy::default()
        });
        let created = site.tus_create(&id, &[("HTTP_UPLOAD_LENGTH", "10")]);
        assert_eq!(created.status, 201, "{}", created.text());
        let first = site.tus_patch(&id, 0, b"01234", false);
        assert_eq!(first.status, 204, "{}", first.text());
        // The same through the IETF draft, made in the same window.
        let ietf = Site::mint(&Policy {
            expires: Some(expires),
            ..Policy::default()
        });
        let made = site.send(
            "POST",
            &format!("/upload/files?X-Progress-ID={ietf}"),
            &[
                ("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6"),
                ("HTTP_UPLOAD_COMPLETE", "?0"),
                ("HTTP_UPLOAD_LENGTH", "10"),
            ],
            b"01234",
            false,
        );
        assert_eq!(made.status, 201, "{}", made.text());
        wait_for(Duration::from_secs(5), || {
            (unix_now() >= expires).then_some(())
        })
        .expect("the clock reaches the expiry");
        site.tus_patch(&id, 5, b"56789", false)
            .assert_error_code(403, "ERR_EXPIRED", "");
        site.send(
            "PATCH",
            &format!("/upload/files/{ietf}"),
            &[
                ("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6"),
                ("HTTP_UPLOAD_OFFSET", "5"),
                ("HTTP_UPLOAD_COMPLETE", "?1"),
                ("CONTENT_TYPE", "application/partial-upload"),
            ],
            b"56789",
            false,
        )
        .assert_error_code(403, "ERR_EXPIRED", "");
        assert_eq!(site.status(&ietf)["offset"], 5);
        let cleared = site.send(
            "DELETE",
            &format!("/upload/status?X-Progress-ID={ietf}"),
            &[],
            b"",
            false,
        );
        assert!(cleared.status < 300, "{}", cleared.text());
        let status = site.status(&id);
        assert_eq!(status["state"], "uploading", "{status}");
        assert_eq!(status["offset"], 5, "{status}");
        let head = site.head(&id);
        assert_eq!(head.status, 200, "{}", head.text());
        assert_eq!(head.header("Upload-Offset"), Some("5"));
        // A clear under the expired identifier still works.
        let cleared = site.send(
            "DELETE",
            &format!("/upload/status?X-Progress-ID={id}"),
            &[],
            b"",
            false,
        );
        assert!(cleared.status < 300, "{}", cleared.text());
        site.assert_untouched("after the expired upload was cleared");
    }
}

#[test]
fn ietf_uploads_under_a_policy() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let policy = Policy {
            size_limit: Some(50_000),
            accept: vec!["image/png".into()],
            ..hour()
        };
        let create = |id: &str, vars: &[(&str, &str)], body: &[u8]| {
            let mut all = vec![("HTTP_UPLOAD_DRAFT_INTEROP_VERSION", "6")];
            all.extend_from_slice(vars);
            site.send(
                "POST",
                &format!("/upload/files?X-Progress-ID={id}"),
                &all,
                body,
                false,
            )
        };
        // The creation's Content-Type declares the file.
        let id = Site::mint(&policy);
        let data = png(10_000, 6);
        let done = create(
            &id,
            &[
                ("HTTP_UPLOAD_COMPLETE", "?1"),
                ("CONTENT_TYPE", "image/png"),
            ],
            &data,
        );
        assert_eq!(done.status, 201, "{via:?}: {}", done.text());
        // The limit the answer gives is the policy's, below max_size's none.
        assert_eq!(done.header("Upload-Limit"), Some("max-size=50000"));
        let status = site.status(&id);
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["content-type"], "image/png", "{status}");
        let cleared = site.send(
            "DELETE",
            &format!("/upload/status?X-Progress-ID={id}"),
            &[],
            b"",
            false,
        );
        assert!(cleared.status < 300, "{}", cleared.text());

        let cases: [(&str, Vars, Vec<u8>, u16, &str); 4] = [
            (
                "a declared type not accepted",
                vec![
                    ("HTTP_UPLOAD_COMPLETE", "?1"),
                    ("CONTENT_TYPE", "text/plain"),
                ],
                b"text".to_vec(),
                415,
                "ERR_TYPE_NOT_ACCEPTED",
            ),
            (
                "bytes that are not a PNG",
                vec![
                    ("HTTP_UPLOAD_COMPLETE", "?1"),
                    ("CONTENT_TYPE", "image/png"),
                ],
                vec![b'x'; 100],
                415,
                "ERR_TYPE_NOT_ACCEPTED",
            ),
            (
                "a length over the limit",
                vec![
                    ("HTTP_UPLOAD_COMPLETE", "?0"),
                    ("HTTP_UPLOAD_LENGTH", "60000"),
                    ("CONTENT_TYPE", "image/png"),
                ],
                Vec::new(),
                413,
                "ERR_TOO_LARGE",
            ),
            (
                "a body over the limit",
                vec![
                    ("HTTP_UPLOAD_COMPLETE", "?1"),
                    ("CONTENT_TYPE", "image/png"),
                ],
                png(60_000, 7),
                413,
                "",
            ),
        ];
        for (what, vars, body, status, code) in cases {
            let id = Site::mint(&policy);
            let reply = create(&id, &vars, &body);
            assert_eq!(reply.status, status, "{via:?} {what}: {}", reply.text());
            if !code.is_empty() {
                assert_eq!(reply.code(), code, "{what}");
            }
            assert!(
                site.stored_files()
                    .iter()
                    .all(|f| std::fs::metadata(site.pool.path().join(f)).unwrap().len() == 0),
                "{via:?} {what}: {:?}",
                site.pool.snapshot()
            );
        }
        let expired = Site::mint(&Policy {
            expires: Some(unix_now()),
            ..Policy::default()
        });
        create(&expired, &[("HTTP_UPLOAD_COMPLETE", "?1")], b"late").assert_error_code(
            403,
            "ERR_EXPIRED",
            "",
        );
    }
}

#[test]
fn new_id_mints_policies_from_its_options() {
    let pool = TestPool::new();
    let new_id = |env_key: bool, args: &[&str]| {
        let mut command = std::process::Command::new(bin());
        command
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool.path())
            .arg("new-id")
            .args(args);
        if env_key {
            command.env("FILEUPLOAD_UPLOAD_KEY", KEY);
        }
        command.output().unwrap()
    };
    let before = unix_now();
    let out = new_id(
        true,
        &[
            "--expires",
            "1h",
            "--size-limit",
            "100M",
            "--accept",
            "image/*,application/pdf",
            "--file-limit",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let id = fileupload::identifier::verify_identifier(text.trim(), Some(&Site::key())).unwrap();
    let policy = id.policy().expect("a policy");
    let expires = policy.expires.unwrap();
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&expires),
        "{expires}"
    );
    assert_eq!(policy.size_limit, Some(100 << 20));
    assert_eq!(policy.accept, ["image/*", "application/pdf"]);
    assert_eq!(policy.file_limit, Some(3));
    // Each option alone; a bare size is megabytes, as for --max-size.
    let one = |args: &[&str]| {
        let out = new_id(true, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        fileupload::identifier::verify_identifier(text.trim(), Some(&Site::key()))
            .unwrap()
            .policy()
            .cloned()
    };
    assert_eq!(
        one(&["--size-limit", "2"]).unwrap().size_limit,
        Some(2 << 20)
    );
    assert_eq!(
        one(&["--size-limit", "512K"]).unwrap().size_limit,
        Some(512 << 10)
    );
    assert_eq!(one(&["--file-limit", "1"]).unwrap().file_limit, Some(1));
    assert_eq!(
        one(&["--accept", "Image/PNG"]).unwrap().accept,
        ["image/png"]
    );
    let soon = one(&["--expires", "500ms"]).unwrap().expires.unwrap();
    assert!(
        soon > before && soon <= unix_now() + 1,
        "rounded up: {soon}"
    );
    assert_eq!(one(&[]), None, "no option: a plain identifier");

    let refused: &[(&[&str], &str)] = &[
        (&["--expires", "soon"], "--expires"),
        (&["--expires", "0"], "above 0"),
        (&["--size-limit", "lots"], "--size-limit"),
        (&["--size-limit", "0"], "above 0"),
        (&["--accept", "image"], "type/subtype"),
        (&["--accept", "image/png;q=1"], "type/subtype"),
        (&["--accept", ","], "no media type"),
        (&["--file-limit", "0"], "above 0"),
        (&["--file-limit", "-1"], "above 0"),
        (&["--file-limit", "many"], "above 0"),
    ];
    for (args, message) in refused {
        let out = new_id(true, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = new_id(false, &["--expires", "1h"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs an upload key"), "{stderr}");
}

#[test]
fn a_concatenated_upload_is_checked_as_its_declared_type() {
    for via in [Via::Cgi, Via::Daemon] {
        let site = Site::new(via);
        let final_policy = Policy {
            accept: vec!["image/png".into()],
            ..hour()
        };
        // Partial uploads under identifiers of their own, with no type.
        let part = |data: &[u8]| {
            let id = Site::mint(&hour());
            let length = data.len().to_string();
            let created = site.tus_create(
                &id,
                &[
                    ("HTTP_UPLOAD_LENGTH", &length),
                    ("HTTP_UPLOAD_CONCAT", "partial"),
                ],
            );
            assert_eq!(created.status, 201, "{via:?}: {}", created.text());
            let sent = site.tus_patch(&id, 0, data, false);
            assert_eq!(sent.status, 204, "{}", sent.text());
            id
        };
        let concat = |parts: &[String]| {
            let id = Site::mint(&final_policy);
            let urls: Vec<String> = parts.iter().map(|p| format!("/upload/files/{p}")).collect();
            let header = format!("final;{}", urls.join(" "));
            let reply = site.tus_create(
                &id,
                &[
                    ("HTTP_UPLOAD_CONCAT", &header),
                    ("HTTP_UPLOAD_METADATA", "filetype aW1hZ2UvcG5n"),
                ],
            );
            (id, reply)
        };
        let data = png(3000, 8);
        let parts = [part(&data[..3]), part(&data[3..])];
        let (id, made) = concat(&parts);
        assert_eq!(made.status, 201, "{via:?}: {}", made.text());
        let status = site.status(&id);
        assert_eq!(status["state"], "done", "{status}");
        let path = status["files"][0]["path"].as_str().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        let cleared = site.send(
            "DELETE",
            &format!("/upload/status?X-Progress-ID={id}"),
            &[],
            b"",
            false,
        );
        assert!(cleared.status < 300, "{}", cleared.text());
        site.assert_untouched("before the wrong concatenation");
        // Parts that make no PNG: refused, and nothing is left of them.
        let parts = [part(b"MZ\x90\x00"), part(b" a program")];
        let (_, refused) = concat(&parts);
        refused.assert_error_code(415, "ERR_TYPE_NOT_ACCEPTED", "image/png");
        site.assert_untouched("after a concatenation of the wrong type");
    }
}
