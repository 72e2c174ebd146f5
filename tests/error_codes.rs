//! Stable error codes: every error answer carries a `code` of the form
//! `ERR_[A-Z_]+` beside `error` and `status`, the one the README lists for
//! that case, and a failed upload's recorded status carries the same code
//! as the answer the client got.

mod common;

use common::*;

/// One request that must fail.
struct Case {
    name: &'static str,
    cgi: Cgi,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The identifier whose status must record the failure, when the
    /// request claimed a bucket.
    recorded: Option<&'static str>,
}

fn upload(pool: &TestPool, id: &str, form: &Form) -> Cgi {
    pool.cgi()
        .request("POST", &format!("/upload?X-Progress-ID={id}"))
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &form.body().len().to_string())
}

fn cases(pool: &TestPool) -> Vec<Case> {
    let form = Form::new().file("f", "a.txt", "text/plain", b"hello");
    let body = form.body();
    let case = |name, cgi: Cgi, body: &[u8], status, code, recorded| Case {
        name,
        cgi,
        body: body.to_vec(),
        status,
        code,
        recorded,
    };
    let signed = pool
        .cgi()
        .env("FILEUPLOAD_UPLOAD_KEY", "a key for the test");
    let mut truncated = body.clone();
    truncated.truncate(body.len() - 10);
    let encoded = Form::new().raw_part(
        "Content-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\
         Content-Transfer-Encoding: x-rot13",
        b"data",
    );
    let big = Form::new().file("f", "big", "application/octet-stream", &[7u8; 3 << 20]);
    vec![
        case(
            "unknown path",
            pool.cgi().request("GET", "/nowhere"),
            b"",
            404,
            "ERR_NOT_FOUND",
            None,
        ),
        case(
            "wrong method",
            pool.cgi().request("PUT", "/upload/status?X-Progress-ID=a"),
            b"",
            405,
            "ERR_METHOD",
            None,
        ),
        case(
            "bad callback",
            pool.cgi()
                .request("GET", "/upload/status?X-Progress-ID=a&callback=1x"),
            b"",
            400,
            "ERR_BAD_CALLBACK",
            None,
        ),
        case(
            "no identifier",
            pool.cgi().request("GET", "/upload/status"),
            b"",
            400,
            "ERR_NO_IDENTIFIER",
            None,
        ),
        case(
            "bad identifier",
            pool.cgi()
                .request("GET", "/upload/status?X-Progress-ID=a/b"),
            b"",
            400,
            "ERR_BAD_IDENTIFIER",
            None,
        ),
        case(
            "unsigned identifier",
            signed
                .clone()
                .request("GET", "/upload/status?X-Progress-ID=abc"),
            b"",
            403,
            "ERR_SIGNATURE",
            None,
        ),
        case(
            "new id with a key",
            signed.request("GET", "/upload/new"),
            b"",
            403,
            "ERR_NEW_ID_REFUSED",
            None,
        ),
        case(
            "bad setting",
            pool.cgi()
                .env("FILEUPLOAD_MAX_SIZE", "banana")
                .request("GET", "/upload/new"),
            b"",
            500,
            "ERR_CONFIG",
            None,
        ),
        case(
            "missing pool",
            pool.cgi()
                .env(
                    "FILEUPLOAD_DIRECTORY",
                    pool.path().join("nope").to_str().unwrap(),
                )
                .request("GET", "/upload/status?X-Progress-ID=a"),
            b"",
            500,
            "ERR_STORAGE",
            None,
        ),
        case(
            "not multipart",
            upload(pool, "c-type", &form).env("CONTENT_TYPE", "text/plain"),
            &body,
            415,
            "ERR_NOT_MULTIPART",
            Some("c-type"),
        ),
        case(
            "no length",
            upload(pool, "c-nolength", &form).without("CONTENT_LENGTH"),
            &body,
            411,
            "ERR_LENGTH_REQUIRED",
            Some("c-nolength"),
        ),
        case(
            "bad length",
            upload(pool, "c-badlength", &form).env("CONTENT_LENGTH", "x"),
            &body,
            400,
            "ERR_BAD_LENGTH",
            Some("c-badlength"),
        ),
        case(
            "truncated",
            upload(pool, "c-truncated", &form),
            &truncated,
            400,
            "ERR_TRUNCATED",
            Some("c-truncated"),
        ),
        case(
            "no file",
            upload(pool, "c-nofile", &Form::new().field("a", "b")),
            &Form::new().field("a", "b").body(),
            400,
            "ERR_NO_FILE",
            Some("c-nofile"),
        ),
        case(
            "unknown encoding",
            upload(pool, "c-encoding", &encoded),
            &encoded.body(),
            400,
            "ERR_BAD_TRANSFER_ENCODING",
            Some("c-encoding"),
        ),
        case(
            "too large, announced",
            upload(pool, "c-big", &big).env("FILEUPLOAD_MAX_SIZE", "1M"),
            &big.body(),
            413,
            "ERR_TOO_LARGE",
            Some("c-big"),
        ),
        case(
            "too large, streamed",
            upload(pool, "c-streamed", &big)
                .env("FILEUPLOAD_MAX_SIZE", "1M")
                .without("CONTENT_LENGTH")
                .env("HTTP_TRANSFER_ENCODING", "chunked"),
            &big.body(),
            413,
            "ERR_TOO_LARGE",
            Some("c-streamed"),
        ),
        case(
            "disk full",
            upload(pool, "c-full", &big).prelude("ulimit -f 256; trap '' XFSZ"),
            &big.body(),
            507,
            "ERR_DISK_FULL",
            Some("c-full"),
        ),
    ]
}

#[test]
fn every_error_answer_has_a_code_and_a_failed_upload_records_it() {
    let pool = TestPool::new();
    for case in cases(&pool) {
        let reply = case.cgi.run(&case.body);
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text());
        // Shape (^ERR_[A-Z_]+$), a known code, the code's own status.
        reply.assert_error_code(case.status, case.code, "");
        if let Some(id) = case.recorded {
            let recorded = status_of(&pool.cgi(), id);
            assert_eq!(recorded["state"], "error", "{}: {recorded}", case.name);
            assert_eq!(recorded["status"], case.status, "{}: {recorded}", case.name);
            assert_eq!(
                recorded["code"],
                reply.code(),
                "{}: the status records the answer's code: {recorded}",
                case.name
            );
            assert_code_shape(&recorded, case.status);
        }
    }
}

#[test]
fn conflicts_have_codes_and_leave_the_status_alone() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "a.txt", "text/plain", b"hello");
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=twice", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let before = status_of(&pool.cgi(), "twice");
    let again = pool.cgi().post_form("/upload?X-Progress-ID=twice", &form);
    again.assert_error_code(409, "ERR_UPLOAD_COMPLETE", "already complete");
    let after = status_of(&pool.cgi(), "twice");
    assert_eq!(after, before, "a conflict records nothing");
    assert!(
        after.get("code").is_none(),
        "a done upload has no code: {after}"
    );
}

#[test]
fn statuses_without_an_error_have_no_code() {
    let pool = TestPool::new();
    let starting = pool.cgi().get("/upload/status?X-Progress-ID=unknown");
    assert_eq!(starting.text(), r#"{"state":"starting"}"#);
    let form = Form::new().file("f", "a.txt", "text/plain", b"hello");
    let done = pool.cgi().post_form("/upload?X-Progress-ID=fine", &form);
    assert_eq!(done.json()["state"], "done");
    assert!(done.json().get("code").is_none(), "{}", done.text());
}
