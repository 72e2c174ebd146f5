//! Uploads through the CGI interface: what is stored, what is answered.

mod common;

use common::*;

#[test]
fn one_file_is_stored_with_its_hash_and_metadata() {
    let pool = TestPool::new();
    let data = random_bytes(300_000, 1);
    let form = Form::new().file("file", "photo.jpg", "image/jpeg", &data);
    let reply = pool
        .cgi()
        .post_form("/upload?X-Progress-ID=one-file", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["state"], "done");
    assert_eq!(json["identifier"], "one-file");
    assert_eq!(json["filename"], "photo.jpg");
    assert_eq!(json["content-type"], "image/jpeg");
    assert_eq!(json["size"], form.body().len());
    assert_eq!(json["received"], form.body().len());
    assert!(json["started"].as_u64().unwrap() <= json["updated"].as_u64().unwrap());
    let file = &json["files"][0];
    assert_eq!(file["field"], "file");
    assert_eq!(file["size"], data.len());
    assert_eq!(file["sha256"], sha256_hex(&data));
    let path = path_of(&json, 0);
    assert_eq!(path, pool.path().join("one-file/file-1"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // The status query answers the same document.
    assert_eq!(status_of(&pool.cgi(), "one-file"), json);
    assert_eq!(
        pool.bucket_files("one-file"),
        ["file-1", "lock", "status.json"]
    );
}

#[test]
fn several_files_and_text_fields() {
    let pool = TestPool::new();
    let a = random_bytes(70_000, 2);
    let b = random_bytes(1, 3);
    let form = Form::new()
        .field("title", "Holiday")
        .file("first", "a.bin", "application/x-a", &a)
        .field("note", "two\r\nlines")
        .file("second", "b.txt", "text/plain", &b)
        .file("third", "empty.dat", "application/octet-stream", b"");
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=many", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(
        json["filename"], "a.bin",
        "top-level keys describe the first file"
    );
    assert_eq!(json["content-type"], "application/x-a");
    assert_eq!(
        json["fields"],
        serde_json::json!({"title": "Holiday", "note": "two\r\nlines"})
    );
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for (i, (data, name)) in [
        (&a[..], "a.bin"),
        (&b[..], "b.txt"),
        (&b""[..], "empty.dat"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(files[i]["filename"], *name);
        assert_eq!(files[i]["sha256"], sha256_hex(data));
        assert_eq!(std::fs::read(path_of(&json, i)).unwrap(), *data);
    }
}

#[test]
fn an_empty_file_input_is_skipped() {
    // A browser sends filename="" and no bytes for a file input left empty.
    let pool = TestPool::new();
    let form = Form::new()
        .file("unused", "", "application/octet-stream", b"")
        .file("used", "x.txt", "text/plain", b"x");
    let json = pool
        .cgi()
        .post_form("/upload?X-Progress-ID=skip", &form)
        .json();
    assert_eq!(json["files"].as_array().unwrap().len(), 1);
    assert_eq!(json["files"][0]["filename"], "x.txt");
    assert_eq!(pool.bucket_files("skip"), ["file-1", "lock", "status.json"]);
}

#[test]
fn sha256_can_be_turned_off() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"abc");
    let reply = pool
        .cgi()
        .env("FILEUPLOAD_SHA256", "off")
        .post_form("/upload?X-Progress-ID=nohash", &form);
    let json = reply.json();
    assert_eq!(json["state"], "done");
    assert!(json["files"][0].get("sha256").is_none(), "{json}");
}

#[test]
fn a_large_upload_streams_with_flat_memory() {
    // 64 MiB through a 256 KiB buffer; the benchmark measures memory, this
    // checks the bytes.
    let pool = TestPool::new();
    let data = random_bytes(64 << 20, 4);
    let form = Form::new().file("f", "big.bin", "application/octet-stream", &data);
    let json = pool
        .cgi()
        .post_form("/upload?X-Progress-ID=big", &form)
        .json();
    assert_eq!(json["state"], "done", "{json}");
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data));
    assert_eq!(std::fs::read(path_of(&json, 0)).unwrap(), data);
}

#[test]
fn a_chunked_body_without_length_is_read_to_its_end() {
    let pool = TestPool::new();
    let data = random_bytes(100_000, 5);
    let form = Form::new().file("f", "c.bin", "application/octet-stream", &data);
    let reply = pool
        .cgi()
        .request("POST", "/upload?X-Progress-ID=chunked")
        .env("CONTENT_TYPE", &form.content_type())
        .env("HTTP_TRANSFER_ENCODING", "chunked")
        .run(&form.body());
    let json = reply.json();
    assert_eq!(json["state"], "done", "{json}");
    assert_eq!(json["size"], form.body().len(), "size is known once done");
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data));
}

#[test]
fn html_answer_for_a_browser_form_post() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "<script>\"x\".txt", "text/plain", b"hi");
    let reply = pool
        .cgi()
        .env(
            "HTTP_ACCEPT",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .post_form("/upload?X-Progress-ID=html", &form);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let page = reply.text();
    assert!(page.contains("data-upload-identifier=\"html\""), "{page}");
    assert!(
        !page.contains("<script>"),
        "file name must be escaped: {page}"
    );
    assert!(
        page.contains(r"&lt;script&gt;\&quot;x\&quot;.txt"),
        "{page}"
    );
    // The attribute holds the status JSON, escaped: unescape and parse it.
    let start = page.find("data-upload-info=\"").unwrap() + "data-upload-info=\"".len();
    let end = start + page[start..].find('"').unwrap();
    let info = page[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let json: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(json["filename"], "<script>\"x\".txt");
    assert_eq!(json["state"], "done");
}

#[test]
fn identifier_may_come_in_a_header() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"abc");
    let reply = pool
        .cgi()
        .env("HTTP_X_PROGRESS_ID", "from-header")
        .post_form("/upload", &form);
    assert_eq!(reply.json()["identifier"], "from-header");
    // The query parameter wins over the header.
    let reply = pool
        .cgi()
        .env("HTTP_X_PROGRESS_ID", "from-header-2")
        .post_form("/upload?X-Progress-ID=from-query", &form);
    assert_eq!(reply.json()["identifier"], "from-query");
}

#[test]
fn path_from_request_uri_or_script_name() {
    let pool = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"abc");
    let body = form.body();
    let base = pool
        .cgi()
        .env("REQUEST_METHOD", "POST")
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &body.len().to_string());
    // nginx `location /files/upload` running the program directly.
    let reply = base
        .clone()
        .env("SCRIPT_NAME", "/files/upload")
        .env("REQUEST_URI", "/files/upload?X-Progress-ID=by-uri")
        .env("QUERY_STRING", "X-Progress-ID=by-uri")
        .run(&body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Only SCRIPT_NAME.
    let reply = base
        .env("SCRIPT_NAME", "/upload")
        .env("QUERY_STRING", "X-Progress-ID=by-script")
        .run(&body);
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn a_failed_upload_may_be_retried_but_a_done_one_is_kept() {
    let pool = TestPool::new();
    let good = Form::new().file("f", "a", "text/plain", b"first");
    let mut truncated = good.body();
    truncated.truncate(truncated.len() - 10);
    let reply = pool
        .cgi()
        .request("POST", "/upload?X-Progress-ID=retry")
        .env("CONTENT_TYPE", &good.content_type())
        .env("CONTENT_LENGTH", &good.body().len().to_string())
        .run(&truncated);
    reply.assert_error_code(
        400,
        "ERR_TRUNCATED",
        "ended before the closing multipart boundary",
    );
    assert_eq!(status_of(&pool.cgi(), "retry")["state"], "error");
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=retry", &good);
    assert_eq!(reply.json()["state"], "done");
    let again = Form::new().file("f", "b", "text/plain", b"second");
    let reply = pool.cgi().post_form("/upload?X-Progress-ID=retry", &again);
    reply.assert_error_code(409, "ERR_UPLOAD_COMPLETE", "already complete");
    let json = status_of(&pool.cgi(), "retry");
    assert_eq!(std::fs::read(path_of(&json, 0)).unwrap(), b"first");
}

#[test]
fn a_body_longer_than_content_length_is_read_only_to_the_length() {
    // RFC 3875: the script must not read past CONTENT_LENGTH. What follows
    // the announced length is not part of the form, so it is incomplete.
    let pool = TestPool::new();
    let form = Form::new().file("f", "a", "text/plain", b"0123456789");
    let body = form.body();
    let reply = pool
        .cgi()
        .request("POST", "/upload?X-Progress-ID=short-length")
        .env("CONTENT_TYPE", &form.content_type())
        .env("CONTENT_LENGTH", &(body.len() - 20).to_string())
        .run(&body);
    reply.assert_error_code(
        400,
        "ERR_TRUNCATED",
        "ended before the closing multipart boundary",
    );
    assert_eq!(pool.bucket_files("short-length"), ["lock", "status.json"]);
}

#[test]
fn a_full_disk_is_507_and_leaves_no_partial_file() {
    // A file size limit makes writes fail as a full disk does (EFBIG; with
    // SIGXFSZ ignored, as a web server's child may have it).
    let pool = TestPool::new();
    let data = random_bytes(1 << 20, 6);
    let form = Form::new().file("f", "big.bin", "application/octet-stream", &data);
    let reply = pool
        .cgi()
        .prelude("ulimit -f 256; trap '' XFSZ")
        .post_form("/upload?X-Progress-ID=full", &form);
    reply.assert_error_code(507, "ERR_DISK_FULL", "the disk is full");
    assert!(
        reply.stderr.contains("the disk is full"),
        "5xx are logged: {}",
        reply.stderr
    );
    let status = status_of(&pool.cgi(), "full");
    assert_eq!(status["state"], "error");
    assert_eq!(status["status"], 507);
    assert_eq!(pool.bucket_files("full"), ["lock", "status.json"]);
}

/// tus through the CGI program, a process per request: OPTIONS, POST,
/// PATCH, HEAD and DELETE all reach it and the chunks end up on disk.
#[test]
fn tus_methods_pass_through_cgi() {
    let pool = TestPool::new();
    let tus = |method: &str, target: &str| {
        pool.cgi()
            .request(method, target)
            .env("HTTP_TUS_RESUMABLE", "1.0.0")
    };
    let options = pool.cgi().request("OPTIONS", "/upload/files").run(b"");
    assert_eq!(options.status, 204, "{}", options.text());
    assert!(
        options.header("Tus-Extension").is_some(),
        "{}",
        options.text()
    );
    let created = tus("POST", "/upload/files")
        .env("HTTP_UPLOAD_LENGTH", "11")
        .run(b"");
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let chunk = |offset: &str, data: &[u8]| {
        tus("PATCH", &location)
            .env("CONTENT_TYPE", "application/offset+octet-stream")
            .env("HTTP_UPLOAD_OFFSET", offset)
            .env("CONTENT_LENGTH", &data.len().to_string())
            .run(data)
    };
    let first = chunk("0", b"hello ");
    assert_eq!(first.status, 204, "{}", first.text());
    let head = tus("HEAD", &location).run(b"");
    assert_eq!(head.header("Upload-Offset"), Some("6"), "{}", head.text());
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "uploading");
    let last = chunk("6", b"world");
    assert_eq!(last.header("Upload-Offset"), Some("11"), "{}", last.text());
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        std::fs::read(pool.path().join(&id).join("file-1")).unwrap(),
        b"hello world"
    );
    let deleted = tus("DELETE", &location).run(b"");
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "starting");
}
