//! Bad input, as a table: each case gets its status code and message, no
//! file is stored for it, and an unrelated upload in the same pool stays
//! exactly as it was.

mod common;

use common::*;

struct Case {
    name: &'static str,
    /// The query string (the identifier travels here).
    query: String,
    env: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The stable code the answer and the recorded status carry.
    code: &'static str,
    message: &'static str,
}

fn form_body() -> (String, Vec<u8>) {
    let form = Form::new().file("f", "a.txt", "text/plain", b"hello");
    (form.content_type(), form.body())
}

fn case(
    name: &'static str,
    query: &str,
    status: u16,
    code: &'static str,
    message: &'static str,
) -> Case {
    let (content_type, body) = form_body();
    Case {
        name,
        query: query.to_owned(),
        env: vec![
            ("CONTENT_TYPE", content_type),
            ("CONTENT_LENGTH", body.len().to_string()),
        ],
        body,
        status,
        code,
        message,
    }
}

impl Case {
    fn env(mut self, name: &'static str, value: &str) -> Case {
        self.env.retain(|(n, _)| *n != name);
        self.env.push((name, value.to_owned()));
        self
    }

    fn without(mut self, name: &'static str) -> Case {
        self.env.retain(|(n, _)| *n != name);
        self
    }

    /// A body; CONTENT_LENGTH follows it unless the case sets it after.
    fn body(mut self, body: Vec<u8>) -> Case {
        let length = body.len().to_string();
        self.body = body;
        self.env("CONTENT_LENGTH", &length)
    }

    fn form(self, form: &Form) -> Case {
        self.env("CONTENT_TYPE", &form.content_type())
            .body(form.body())
    }
}

fn cases() -> Vec<Case> {
    let ok = "X-Progress-ID=victim";
    let boundary = Form::new().boundary;
    let raw = |text: &str| text.replace("B", &boundary).into_bytes();
    let mut many_parts = Form::new();
    for i in 0..1001 {
        many_parts = many_parts.field(&format!("f{i}"), "x");
    }
    let mut big_fields = Form::new().file("f", "a", "text/plain", b"x");
    for i in 0..70 {
        big_fields = big_fields.field(&format!("f{i}"), &"v".repeat(1000));
    }
    vec![
        // Identifiers: nothing that is not [A-Za-z0-9-] reaches a path.
        case("id with ../", "X-Progress-ID=../../etc", 400, "ERR_BAD_IDENTIFIER", "malformed upload identifier"),
        case("id with /", "X-Progress-ID=a/b", 400, "ERR_BAD_IDENTIFIER", "malformed upload identifier"),
        case("id with NUL", "X-Progress-ID=a%00b", 400, "ERR_BAD_IDENTIFIER", "malformed upload identifier"),
        case("id %2e%2e", "X-Progress-ID=%2e%2e", 400, "ERR_BAD_IDENTIFIER", "malformed upload identifier"),
        case("id of 65 characters", &format!("X-Progress-ID={}", "a".repeat(65)), 400, "ERR_BAD_IDENTIFIER", "malformed"),
        case("id with space", "X-Progress-ID=a+b", 400, "ERR_BAD_IDENTIFIER", "malformed upload identifier"),
        case("signed id without key", &format!("X-Progress-ID=abc:{}", "0".repeat(64)), 400, "ERR_BAD_IDENTIFIER", "no upload key"),
        // The request itself.
        case("no content type", ok, 415, "ERR_NOT_MULTIPART", "expected a multipart/form-data body").without("CONTENT_TYPE"),
        case("text/plain", ok, 415, "ERR_NOT_MULTIPART", "expected a multipart/form-data body").env("CONTENT_TYPE", "text/plain"),
        case("multipart/mixed", ok, 415, "ERR_NOT_MULTIPART", "expected a multipart/form-data body")
            .env("CONTENT_TYPE", &format!("multipart/mixed; boundary={boundary}")),
        case("no boundary", ok, 400, "ERR_BAD_BOUNDARY", "no boundary parameter").env("CONTENT_TYPE", "multipart/form-data"),
        case("boundary of 71 characters", ok, 400, "ERR_BAD_BOUNDARY", "boundary must be 1 to 70 bytes long, with no CR, LF or NUL")
            .env("CONTENT_TYPE", &format!("multipart/form-data; boundary={}", "b".repeat(71))),
        case("negative length", ok, 400, "ERR_BAD_LENGTH", "invalid Content-Length").env("CONTENT_LENGTH", "-1"),
        case("non-numeric length", ok, 400, "ERR_BAD_LENGTH", "invalid Content-Length").env("CONTENT_LENGTH", "12abc"),
        case("length larger than the body", ok, 400, "ERR_TRUNCATED", "the body ended early: received 173 of 100000 bytes")
            .env("CONTENT_LENGTH", "100000"),
        case("length smaller than the body", ok, 400, "ERR_TRUNCATED", "ended before the closing multipart boundary")
            .env("CONTENT_LENGTH", "120"),
        case("no length, not chunked", ok, 411, "ERR_LENGTH_REQUIRED", "no Content-Length").without("CONTENT_LENGTH"),
        // The body.
        case("empty body", ok, 400, "ERR_BAD_MULTIPART", "does not start with the multipart boundary").body(Vec::new()),
        case("random bytes", ok, 400, "ERR_BAD_MULTIPART", "does not start with the multipart boundary").body(random_bytes(50_000, 9)),
        case("wrong boundary in body", ok, 400, "ERR_BAD_MULTIPART", "does not start with the multipart boundary")
            .body(b"--other\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--other--\r\n".to_vec()),
        case("part header over 8 KiB", ok, 400, "ERR_BAD_PART_HEADER", "header block is longer than 8192 bytes").body(raw(&format!(
            "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{}\"\r\n\r\nx\r\n--B--\r\n",
            "n".repeat(9000)
        ))),
        case("part without Content-Disposition", ok, 400, "ERR_BAD_PART_HEADER", "no Content-Disposition")
            .body(raw("--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n")),
        case("part that is not form-data", ok, 400, "ERR_BAD_PART_HEADER", "not form-data")
            .body(raw("--B\r\nContent-Disposition: attachment; filename=\"a\"\r\n\r\nx\r\n--B--\r\n")),
        case("header line without colon", ok, 400, "ERR_BAD_PART_HEADER", "malformed part header")
            .body(raw("--B\r\nContent-Disposition: form-data; name=\"f\"\r\nbroken\r\n\r\nx\r\n--B--\r\n")),
        case("unterminated quote", ok, 400, "ERR_BAD_PART_HEADER", "malformed Content-Disposition")
            .body(raw("--B\r\nContent-Disposition: form-data; name=\"f; filename=\"a\r\n\r\nx\r\n--B--\r\n")),
        case("missing closing boundary", ok, 400, "ERR_TRUNCATED", "ended before the closing multipart boundary").body(raw(
            "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nxyz",
        )),
        case("garbage after a boundary", ok, 400, "ERR_BAD_MULTIPART", "malformed multipart boundary line").body(raw(
            "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nxyz\r\n--Bjunk\r\n",
        )),
        case("fields only", ok, 400, "ERR_NO_FILE", "no file part").form(&Form::new().field("a", "b")),
        case("no parts at all", ok, 400, "ERR_NO_FILE", "no file part").body(raw("--B--\r\n")),
        case("1001 parts", ok, 400, "ERR_TOO_MANY_PARTS", "more than 1000 parts").form(&many_parts),
        case("a million tiny parts", ok, 400, "ERR_TOO_MANY_PARTS", "more than 1000 parts").body(million_parts(&boundary)),
        case("70 KB of fields", ok, 413, "ERR_FORM_TOO_LARGE", "text fields are larger than 65536 bytes").form(&big_fields),
    ]
}

/// 1,000,000 one-byte fields: 62 MB of body. Refused at part 1001.
fn million_parts(boundary: &str) -> Vec<u8> {
    let part = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nx\r\n");
    let mut body = part.repeat(1_000_000).into_bytes();
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[test]
fn every_bad_input_is_a_clear_4xx_and_stores_nothing() {
    let pool = TestPool::new();
    let bystander = Form::new().file(
        "f",
        "keep.bin",
        "application/octet-stream",
        &random_bytes(5000, 1),
    );
    let reply = pool
        .cgi()
        .post_form("/upload?X-Progress-ID=bystander", &bystander);
    assert_eq!(reply.status, 200);
    let before = pool.snapshot();
    for case in cases() {
        let mut cgi = pool
            .cgi()
            .request("POST", &format!("/upload?{}", case.query));
        for (name, value) in &case.env {
            cgi = cgi.env(name, value);
        }
        let reply = cgi.run(&case.body);
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text());
        reply.assert_error_code(case.status, case.code, case.message);
        assert!(
            reply.stderr.is_empty(),
            "{}: client errors are not logged: {}",
            case.name,
            reply.stderr
        );
        // The bystander is untouched, and no data file exists anywhere else.
        let after = pool.snapshot();
        for (path, entry) in &before {
            assert_eq!(
                after.get(path),
                Some(entry),
                "{}: {path} changed",
                case.name
            );
        }
        let stray: Vec<_> = after
            .keys()
            .filter(|p| !before.contains_key(*p))
            .filter(|p| !p.ends_with("/lock") && !p.ends_with("/status.json"))
            .collect();
        assert!(stray.is_empty(), "{}: stray files {stray:?}", case.name);
        // With a valid identifier, the failure is recorded for the client.
        if case.query.ends_with("=victim") {
            let status = status_of(&pool.cgi(), "victim");
            assert_eq!(status["state"], "error", "{}: {status}", case.name);
            assert_eq!(status["status"], case.status, "{}: {status}", case.name);
            assert_eq!(status["code"], case.code, "{}: {status}", case.name);
        } else {
            assert!(
                !pool.top_level().iter().any(|n| n != "bystander"),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn over_size_by_content_length_is_refused_before_reading() {
    let pool = TestPool::new();
    let data = random_bytes(2 << 20, 2);
    let form = Form::new().file("f", "big", "application/octet-stream", &data);
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_MAX_SIZE", "1")
        .post_form("/upload?X-Progress-ID=big", &form);
    reply.assert_error_code(413, "ERR_TOO_LARGE", "more than the limit of 1048576 bytes");
    let status = status_of(&pool.cgi(), "big");
    assert_eq!(status["state"], "error");
    assert_eq!(status["status"], 413);
    assert_eq!(status["code"], "ERR_TOO_LARGE");
    assert_eq!(status["received"], 0, "decided before reading: {status}");
    assert_eq!(pool.bucket_files("big"), ["lock", "status.json"]);
}

#[test]
fn over_size_while_streaming_is_refused() {
    // No Content-Length (a streamed chunked body): the limit holds anyway.
    let pool = TestPool::new();
    let data = random_bytes(3 << 20, 3);
    let form = Form::new().file("f", "big", "application/octet-stream", &data);
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_MAX_SIZE", "1M")
        .request("POST", "/upload?X-Progress-ID=streamed")
        .env("CONTENT_TYPE", &form.content_type())
        .env("HTTP_TRANSFER_ENCODING", "chunked")
        .run(&form.body());
    reply.assert_error_code(
        413,
        "ERR_TOO_LARGE",
        "larger than the limit of 1048576 bytes",
    );
    let status = status_of(&pool.cgi(), "streamed");
    assert_eq!(status["status"], 413);
    assert_eq!(
        status["code"], "ERR_TOO_LARGE",
        "the code travels with the reader's error"
    );
    assert_eq!(
        status["received"],
        (1 << 20) + 1,
        "stops one byte past the limit: {status}"
    );
    assert_eq!(pool.bucket_files("streamed"), ["lock", "status.json"]);
}

#[test]
fn hostile_file_names_are_metadata_only() {
    let pool = TestPool::new();
    let names: &[&[u8]] = &[
        b"../../../../etc/passwd",
        b"/absolute/path",
        b"C:\\Windows\\win.ini",
        b"nul\x00byte",
        b"ctrl\x01\x1b[31m\x7f",
        b"not-utf8-\xff\xfe",
        b"line\nbreak",
        b".",
        b"..",
    ];
    for (i, name) in names.iter().enumerate() {
        let boundary = "hostile";
        let mut body =
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"")
                .into_bytes();
        body.extend_from_slice(name);
        body.extend_from_slice(format!("\"\r\n\r\ndata{i}\r\n--{boundary}--\r\n").as_bytes());
        let id = format!("hostile-{i}");
        let reply = pool
            .cgi()
            .request("POST", &format!("/upload?X-Progress-ID={id}"))
            .env(
                "CONTENT_TYPE",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .env("CONTENT_LENGTH", &body.len().to_string())
            .run(&body);
        assert_eq!(
            reply.status,
            200,
            "{:?}: {}",
            String::from_utf8_lossy(name),
            reply.text()
        );
        let json = reply.json();
        // Stored under our own name, inside the bucket.
        assert_eq!(path_of(&json, 0), pool.path().join(&id).join("file-1"));
        assert_eq!(
            std::fs::read(path_of(&json, 0)).unwrap(),
            format!("data{i}").as_bytes()
        );
        // The original name is kept (lossily where it is not UTF-8).
        assert_eq!(json["filename"], String::from_utf8_lossy(name).as_ref());
    }
    // Nothing outside the buckets.
    assert!(pool.top_level().iter().all(|n| n.starts_with("hostile-")));
}
