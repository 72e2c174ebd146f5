//! `fileupload serve`, the development server: the demo page at /, the
//! same endpoints as every other transport, loopback by default.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Serve {
    child: Child,
    port: u16,
    first_line: String,
}

impl Serve {
    fn start(pool: &std::path::Path, env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(bin())
            .env_clear()
            .env("FILEUPLOAD_DIRECTORY", pool)
            .envs(env.iter().copied())
            .args(["serve", "--http", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first_line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first_line)
            .unwrap();
        let port = first_line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first_line:?}"));
        Serve {
            child,
            port,
            first_line,
        }
    }

    /// One raw HTTP/1.1 exchange; returns status, head and body.
    fn exchange(&self, request: &[u8]) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        (
            head[9..12].parse().unwrap(),
            head,
            response[split + 4..].to_vec(),
        )
    }

    fn get(&self, target: &str) -> (u16, String, Vec<u8>) {
        self.exchange(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn says_where_to_point_the_browser_and_serves_the_page() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[]);
    assert!(
        serve.first_line.contains("open it in a browser"),
        "{}",
        serve.first_line
    );
    assert!(
        serve.first_line.contains("development server"),
        "{}",
        serve.first_line
    );
    let (status, head, body) = serve.get("/");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert_eq!(body, fileupload::serve::DEMO_PAGE.as_bytes());
}

#[test]
fn binds_to_loopback_by_default() {
    // Port 8080 may be taken on this machine; either way the address it
    // names is the loopback one.
    let pool = TestPool::new();
    let mut child = Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("http://127.0.0.1:8080/") || line.contains("cannot listen on 127.0.0.1:8080"),
        "{line}"
    );
}

#[test]
fn the_same_endpoints_as_cgi() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1")]);
    let data = random_bytes(200_000, 1);
    let form = Form::new().file("f", "a.bin", "application/octet-stream", &data);
    let body = form.body();
    let mut request = format!(
        "POST /upload?X-Progress-ID=dev-1 HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        form.content_type(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let (status, _, answer) = serve.exchange(&request);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data));
    // Status through HTTP equals status through CGI.
    let (_, _, over_http) = serve.get("/upload/status?X-Progress-ID=dev-1");
    assert_eq!(
        over_http,
        pool.cgi().get("/upload/status?X-Progress-ID=dev-1").body
    );
    // A chunked body, decoded by the server.
    let mut chunked = format!(
        "POST /upload?X-Progress-ID=dev-2 HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        form.content_type()
    )
    .into_bytes();
    for piece in body.chunks(7000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _, answer) = serve.exchange(&chunked);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    // Errors are the same JSON.
    let (status, _, answer) = serve.get("/upload/status?X-Progress-ID=../x");
    assert_eq!(status, 400);
    assert_eq!(
        answer,
        pool.cgi().get("/upload/status?X-Progress-ID=../x").body
    );
    let (status, _, _) = serve.get("/nowhere");
    assert_eq!(status, 404);
    let big = Form::new().file(
        "f",
        "big",
        "application/octet-stream",
        &random_bytes(1_100_000, 2),
    );
    let big_body = big.body();
    let mut request = format!(
        "POST /upload?X-Progress-ID=dev-3 HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.content_type(),
        big_body.len()
    )
    .into_bytes();
    request.extend_from_slice(&big_body);
    let (status, _, answer) = serve.exchange(&request);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
}

#[test]
fn with_a_key_the_page_carries_a_signed_identifier() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[("FILEUPLOAD_UPLOAD_KEY", "trial-key")]);
    let (_, _, page) = serve.get("/");
    let page = String::from_utf8(page).unwrap();
    let id = page
        .split("data-identifier=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a printed identifier");
    let key = fileupload::Key::new(*b"trial-key");
    assert!(
        fileupload::verify_identifier(id, key.as_ref()).is_ok(),
        "{id}"
    );
    // Each page gets its own.
    let (_, _, again) = serve.get("/");
    assert!(!String::from_utf8(again).unwrap().contains(id));
    // And /upload/new stays closed.
    let (status, _, _) = serve.get("/upload/new");
    assert_eq!(status, 403);
}

#[test]
fn warns_when_reachable_from_other_machines() {
    let pool = TestPool::new();
    let mut child = Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .args(["serve", "--http", "0.0.0.0:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("http://0.0.0.0:"), "{first}");
    assert!(second.contains("reachable from other machines"), "{second}");
}

#[test]
fn the_demo_page_loads_nothing_from_elsewhere() {
    // One file, no CDN: no absolute or protocol-relative URL, no external
    // script or stylesheet; every request it makes is relative to itself.
    let page = fileupload::serve::DEMO_PAGE;
    for pattern in [
        "http://",
        "https://",
        "src=\"//",
        "href=\"//",
        "<script src",
    ] {
        assert!(
            !page.contains(pattern),
            "the demo page contains {pattern:?}"
        );
    }
    // Its one <link> is its icon, inline: no stylesheet, and no request for
    // /favicon.ico (a 404 in the browser's console).
    let links: Vec<&str> = page.split("<link").skip(1).collect();
    assert_eq!(links.len(), 1, "one <link>, the icon");
    assert!(
        links[0].starts_with(" rel=\"icon\" href=\"data:image/png;base64,"),
        "the icon is not inline: <link{}",
        &links[0][..links[0].len().min(60)]
    );
    assert!(
        page.contains("<script>") && page.contains("<style>"),
        "inline script and style"
    );
}

/// tus through the development server (tiny_http): OPTIONS, POST, PATCH,
/// HEAD and DELETE reach the handler and the chunks end up on disk.
#[test]
fn tus_methods_pass_through_the_development_server() {
    let pool = TestPool::new();
    let serve = Serve::start(pool.path(), &[]);
    let send = |method: &str, target: &str, headers: &str, body: &[u8]| {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n{headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        serve.exchange(&request)
    };
    let header = |head: &str, name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    let (status, head, _) = send("OPTIONS", "/upload/files", "", b"");
    assert_eq!(status, 204, "{head}");
    assert!(header(&head, "Tus-Extension").contains("termination"));
    let (status, head, _) = send("POST", "/upload/files", "Upload-Length: 11\r\n", b"");
    assert_eq!(status, 201, "{head}");
    let location = header(&head, "Location");
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let chunk = |offset: u64, data: &[u8]| {
        let headers =
            format!("Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n");
        send("PATCH", &location, &headers, data)
    };
    let (status, head, _) = chunk(0, b"hello ");
    assert_eq!(status, 204, "{head}");
    let (status, head, _) = send("HEAD", &location, "", b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "Upload-Offset"), "6");
    let (status, head, _) = chunk(6, b"world");
    assert_eq!((status, header(&head, "Upload-Offset")), (204, "11".into()));
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        std::fs::read(pool.path().join(&id).join("file-1")).unwrap(),
        b"hello world"
    );
    let (status, head, _) = send("DELETE", &location, "", b"");
    assert_eq!(status, 204, "{head}");
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "starting");
}
