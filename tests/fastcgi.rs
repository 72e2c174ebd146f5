//! The FastCGI daemon: same answers as CGI, and a bad peer cannot take it
//! down or flood its log.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::fcgi::*;
use common::*;

fn pairs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn answers_match_the_cgi_transport() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let data = random_bytes(500_000, 1);
    let form = Form::new().file("f", "a.bin", "application/octet-stream", &data);
    let reply = daemon.post_form("/upload?X-Progress-ID=fcgi-1", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["files"][0]["sha256"], sha256_hex(&data));
    // The same status through both transports.
    let via_fcgi = daemon.get("/upload/status?X-Progress-ID=fcgi-1");
    let via_cgi = pool.cgi().get("/upload/status?X-Progress-ID=fcgi-1");
    assert_eq!(via_fcgi.body, via_cgi.body);
    assert_eq!(via_fcgi.headers, via_cgi.headers);
    // Errors too.
    let bad = daemon.get("/upload/status?X-Progress-ID=../x");
    bad.assert_error_code(400, "ERR_BAD_IDENTIFIER", "malformed upload identifier");
    assert_eq!(
        bad.body,
        pool.cgi().get("/upload/status?X-Progress-ID=../x").body
    );
    daemon
        .get("/nowhere")
        .assert_error_code(404, "ERR_NOT_FOUND", "no such endpoint");
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn a_body_without_content_length_is_read_to_the_end_of_stdin() {
    // What a web server streaming a chunked request sends.
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1M")]);
    let data = random_bytes(300_000, 2);
    let form = Form::new().file("f", "c.bin", "application/octet-stream", &data);
    let reply = daemon.request(
        "POST",
        "/upload?X-Progress-ID=chunked",
        &[("CONTENT_TYPE", &form.content_type())],
        &form.body(),
    );
    assert_eq!(reply.json()["files"][0]["sha256"], sha256_hex(&data));
    // max_size holds while streaming.
    let big = Form::new().file(
        "f",
        "big",
        "application/octet-stream",
        &random_bytes(2 << 20, 3),
    );
    let reply = daemon.request(
        "POST",
        "/upload?X-Progress-ID=chunked-big",
        &[("CONTENT_TYPE", &big.content_type())],
        &big.body(),
    );
    reply.assert_error_code(
        413,
        "ERR_TOO_LARGE",
        "larger than the limit of 1048576 bytes",
    );
    assert_eq!(status_of(&pool.cgi(), "chunked-big")["status"], 413);
}

#[test]
fn kept_alive_connections_serve_several_requests_and_close_silently() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let mut stream = daemon.connect();
    for id in 1..=3u16 {
        let params = params_for("GET", "/upload/status?X-Progress-ID=ka");
        let mut bytes = request_head(id, &pairs(&params), true);
        bytes.extend(stdin_records(id, b""));
        stream.write_all(&bytes).unwrap();
        let (reply, protocol_status) = read_response(&mut stream, id);
        assert_eq!(reply.body, br#"{"state":"starting"}"#);
        assert_eq!(protocol_status, 0);
    }
    drop(stream); // a normal close of a kept-alive connection
    // And connections that close without sending anything.
    for _ in 0..20 {
        drop(daemon.connect());
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(daemon.get("/upload/new").status, 200);
    assert!(
        daemon.log_lines().is_empty(),
        "a normal close must log nothing: {:?}",
        daemon.log_lines()
    );
}

#[test]
fn without_keep_conn_the_server_closes_after_the_answer() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let mut stream = daemon.connect();
    let params = params_for("GET", "/upload/new");
    let mut bytes = request_head(1, &pairs(&params), false);
    bytes.extend(stdin_records(1, b""));
    stream.write_all(&bytes).unwrap();
    read_response(&mut stream, 1);
    assert!(
        read_record(&mut stream).is_none(),
        "connection should be closed"
    );
}

#[test]
fn malformed_records_end_the_connection_with_little_log() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // not FastCGI at all
        vec![2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], // version 2
        record(BEGIN_REQUEST, 1, &[0, 1]),             // short BEGIN_REQUEST
        {
            // PARAMS whose lengths point past the content
            let mut r = begin(1, 1, false);
            r.extend(record(PARAMS, 1, &[100, 100, b'a']));
            r.extend(record(PARAMS, 1, &[]));
            r
        },
        {
            // A record cut short, then the connection closes.
            let mut r = begin(1, 1, false);
            r.extend_from_slice(&[1, PARAMS, 0, 1, 0, 50, 0, 0, b'x']);
            r
        },
        random_bytes(70_000, 9),
    ];
    // Each case many times: the log must stay short.
    for _ in 0..25 {
        for bytes in &garbage {
            let mut stream = daemon.connect();
            let _ = stream.write_all(bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // The server answers nothing sensible, then closes.
            while read_record(&mut stream).is_some() {}
        }
    }
    // Still serving.
    assert_eq!(daemon.get("/upload/status?X-Progress-ID=alive").status, 200);
    let lines = daemon.log_lines();
    assert!(!lines.is_empty(), "malformed peers should be noted once");
    assert!(
        lines.len() <= 10,
        "150 bad connections flooded the log: {lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains("panicked")), "{lines:#?}");
}

#[test]
fn a_connection_cut_mid_upload_fails_that_upload_only() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let stream = daemon.begin_partial_upload(&pool, "cut", 4, 60_000);
    drop(stream);
    let status = wait_for(Duration::from_secs(10), || {
        let status = status_of(&pool.cgi(), "cut");
        (status["state"] == "error").then_some(status)
    })
    .expect("upload never failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("closed the connection"),
        "{status}"
    );
    assert_eq!(status["code"], "ERR_TRUNCATED", "{status}");
    assert_eq!(pool.bucket_files("cut"), ["lock", "status.json"]);
    assert_eq!(daemon.get("/upload/new").status, 200);
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn an_aborted_request_ends_with_end_request_and_an_error_status() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let mut stream = daemon.begin_partial_upload(&pool, "aborted", 5, 50_000);
    stream.write_all(&record(ABORT_REQUEST, 1, &[])).unwrap();
    let (reply, protocol_status) = read_response(&mut stream, 1);
    assert_eq!(protocol_status, 0, "REQUEST_COMPLETE");
    reply.assert_error_code(400, "ERR_ABORTED", "aborted the request");
    let status = status_of(&pool.cgi(), "aborted");
    assert_eq!(status["state"], "error");
    assert_eq!(status["code"], "ERR_ABORTED", "{status}");
    assert_eq!(pool.bucket_files("aborted"), ["lock", "status.json"]);
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn a_malformed_record_inside_the_body_fails_the_upload_with_its_code() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let mut stream = daemon.begin_partial_upload(&pool, "mangled", 7, 50_000);
    // A record header of FastCGI version 2 where the next STDIN record
    // should be.
    stream.write_all(&[2, 5, 0, 1, 0, 0, 0, 0]).unwrap();
    let (reply, _) = read_response(&mut stream, 1);
    reply.assert_error_code(400, "ERR_BAD_FASTCGI", "malformed FastCGI stream");
    let status = status_of(&pool.cgi(), "mangled");
    assert_eq!(status["code"], "ERR_BAD_FASTCGI", "{status}");
    assert_eq!(pool.bucket_files("mangled"), ["lock", "status.json"]);
}

#[test]
fn management_records_multiplexing_and_roles() {
    let pool = TestPool::new();
    let daemon = Daemon::start(
        pool.path(),
        &[("FILEUPLOAD_WORKERS", "7"), ("FILEUPLOAD_MAX_UPLOADS", "3")],
    );
    let mut stream = daemon.connect();
    // FCGI_GET_VALUES: as many requests as it runs at once, quick and bulk.
    let query = encode_pairs(&[
        ("FCGI_MAX_CONNS", ""),
        ("FCGI_MPXS_CONNS", ""),
        ("OTHER", ""),
    ]);
    stream.write_all(&record(GET_VALUES, 0, &query)).unwrap();
    let answer = read_record(&mut stream).unwrap();
    assert_eq!(answer.kind, GET_VALUES_RESULT);
    assert_eq!(
        answer.content,
        encode_pairs(&[("FCGI_MAX_CONNS", "10"), ("FCGI_MPXS_CONNS", "0")])
    );
    // An unknown management record.
    stream.write_all(&record(42, 0, b"")).unwrap();
    let answer = read_record(&mut stream).unwrap();
    assert_eq!((answer.kind, answer.content[0]), (UNKNOWN_TYPE, 42));
    // The authorizer role is not ours.
    stream.write_all(&begin(5, 2, true)).unwrap();
    let answer = read_record(&mut stream).unwrap();
    assert_eq!(
        (answer.kind, answer.id, answer.content[4]),
        (END_REQUEST, 5, 3)
    );
    // A second request while one runs: FCGI_CANT_MPX_CONN.
    let form = Form::new().file("f", "m", "text/plain", b"mpx");
    let body = form.body();
    let mut bytes = upload_head(&form, "/upload?X-Progress-ID=mpx", body.len(), true);
    bytes.extend(record(STDIN, 1, &body[..10]));
    bytes.extend(begin(2, 1, true));
    bytes.extend(stdin_records(1, &body[10..]));
    stream.write_all(&bytes).unwrap();
    let refused = read_record(&mut stream).unwrap();
    assert_eq!(
        (refused.kind, refused.id, refused.content[4]),
        (END_REQUEST, 2, 1)
    );
    let (reply, _) = read_response(&mut stream, 1);
    assert_eq!(reply.json()["state"], "done");
}

#[test]
fn running_out_of_file_descriptors_is_survived() {
    let pool = TestPool::new();
    let daemon = Daemon::start_with(pool.path(), &[], Some("ulimit -n 24"));
    // Hold more connections than the daemon has descriptors for.
    let held: Vec<UnixStream> = (0..60)
        .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
        .collect();
    assert!(held.len() > 24, "the backlog should take them");
    thread::sleep(Duration::from_millis(500));
    drop(held);
    // Once they are gone, it serves again.
    let reply = wait_for(Duration::from_secs(20), || {
        let stream = UnixStream::connect(&daemon.socket).ok()?;
        drop(stream);
        Some(daemon.get("/upload/new")).filter(|r| r.status == 200)
    });
    assert!(
        reply.is_some(),
        "daemon never recovered: {}",
        daemon.log_text()
    );
    let lines = daemon.log_lines();
    assert!(
        lines.iter().any(|l| l.contains("cannot accept")),
        "EMFILE should be noted: {lines:?}"
    );
    assert!(lines.len() <= 5, "the log was flooded: {lines:#?}");
}

#[test]
fn an_upload_past_max_uploads_is_refused_at_once_and_polls_still_run() {
    // One worker, two upload threads, three slow uploads at once: the third
    // is refused 503 at once, and polls are answered while two run.
    let pool = TestPool::new();
    let daemon = Daemon::start(
        pool.path(),
        &[("FILEUPLOAD_WORKERS", "1"), ("FILEUPLOAD_MAX_UPLOADS", "2")],
    );
    let mut streams = Vec::new();
    let mut forms = Vec::new();
    for n in 0..3u16 {
        let form = Form::new().file(
            "f",
            "w",
            "application/octet-stream",
            &random_bytes(100_000, u64::from(n)),
        );
        let body = form.body();
        let mut stream = daemon.connect();
        let mut bytes = upload_head(
            &form,
            &format!("/upload?X-Progress-ID=busy-{n}"),
            body.len(),
            true,
        );
        bytes.extend(record(STDIN, 1, &body[..1000]));
        stream.write_all(&bytes).unwrap();
        streams.push(stream);
        forms.push(body);
        // In order: the first two take the upload threads.
        assert!(
            wait_for(Duration::from_secs(10), || {
                (n == 2 || status_of(&pool.cgi(), &format!("busy-{n}"))["state"] == "uploading")
                    .then_some(())
            })
            .is_some(),
            "upload {n} never started"
        );
    }
    let mut third = streams.pop().unwrap();
    let (reply, _) = read_response(&mut third, 1);
    reply.assert_error_code(503, "ERR_BUSY", "max_uploads");
    assert_eq!(status_of(&pool.cgi(), "busy-2")["state"], "starting");
    assert_eq!(pool.bucket_files("busy-2"), Vec::<String>::new());
    // Polls, on the one worker, while both uploads wait for their bytes.
    for _ in 0..20 {
        let poll = daemon.get("/upload/status?X-Progress-ID=busy-0");
        assert_eq!(poll.json()["state"], "uploading");
    }
    for (n, (mut stream, body)) in streams.into_iter().zip(forms).enumerate() {
        stream.write_all(&stdin_records(1, &body[1000..])).unwrap();
        let (reply, _) = read_response(&mut stream, 1);
        assert_eq!(reply.json()["state"], "done", "upload {n}");
    }
}

#[test]
fn sigterm_lets_running_uploads_finish_then_cuts_the_rest() {
    let pool = TestPool::new();
    let mut daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_GRACE", "1s"),
            ("FILEUPLOAD_PROGRESS_INTERVAL", "20ms"),
        ],
    );
    let start = |id: &str| {
        let form = Form::new().file(
            "f",
            "s",
            "application/octet-stream",
            &random_bytes(200_000, 7),
        );
        let body = form.body();
        let mut stream = daemon.connect();
        let mut bytes = upload_head(
            &form,
            &format!("/upload?X-Progress-ID={id}"),
            body.len(),
            false,
        );
        bytes.extend(record(STDIN, 1, &body[..5000]));
        stream.write_all(&bytes).unwrap();
        (stream, body)
    };
    let (mut finishing, finishing_body) = start("finishing");
    let (mut stalled, _) = start("stalled");
    for id in ["finishing", "stalled"] {
        wait_for(Duration::from_secs(10), || {
            (status_of(&pool.cgi(), id)["received"] == 5000).then_some(())
        })
        .expect("upload never started");
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.pid().to_string())
        .status();
    thread::sleep(Duration::from_millis(200));
    // No new connections once it stops accepting.
    assert!(
        UnixStream::connect(&daemon.socket).is_err(),
        "still accepting after SIGTERM"
    );
    // One upload finishes within the grace time.
    finishing
        .write_all(&stdin_records(1, &finishing_body[5000..]))
        .unwrap();
    let (reply, _) = read_response(&mut finishing, 1);
    assert_eq!(reply.json()["state"], "done");
    // The other is cut short when the grace time is over, and says why.
    let (reply, _) = read_response(&mut stalled, 1);
    reply.assert_error_code(503, "ERR_SHUTDOWN", "interrupted");
    let status = daemon
        .terminate(Duration::from_secs(10))
        .expect("daemon did not exit");
    assert!(status.success(), "{status:?}");
    let stalled_status = status_of(&pool.cgi(), "stalled");
    assert_eq!(stalled_status["state"], "error");
    assert_eq!(stalled_status["code"], "ERR_SHUTDOWN", "{stalled_status}");
    assert!(
        stalled_status["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted")
    );
    assert_eq!(pool.bucket_files("stalled"), ["lock", "status.json"]);
    assert!(!daemon.socket.exists(), "socket file should be removed");
}

#[test]
fn a_listening_socket_on_stdin_selects_fastcgi() {
    // What spawn-fcgi, mod_fcgid and lighttpd's bin-path do.
    let pool = TestPool::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stdin.sock");
    let log = dir.path().join("log");
    let listener = UnixListener::bind(&socket).unwrap();
    let child = Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon::adopt(child, socket, log, dir);
    assert_eq!(
        daemon.get("/upload/status?X-Progress-ID=stdin").body,
        br#"{"state":"starting"}"#
    );
    assert!(
        daemon
            .log_text()
            .contains("serving FastCGI on the socket on stdin")
    );
}

#[test]
fn a_plain_stdin_is_not_taken_for_a_socket() {
    let out = Command::new(bin())
        .env_clear()
        .arg("--fastcgi")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin is not a listening socket"));
}

#[test]
fn middleware_mode_runs_the_application_per_request() {
    let pool = TestPool::new();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("app.cgi");
    std::fs::write(
        &app,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"method=$REQUEST_METHOD uri=$REQUEST_URI path=$PATH\"\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_APP", app.to_str().unwrap()),
            ("PATH", "/usr/bin:/bin"),
        ],
    );
    let reply = daemon.request("POST", "/page?x=1", &[("CONTENT_LENGTH", "5")], b"hello");
    assert_eq!(reply.status, 200);
    // FastCGI parameters have no PATH: the application gets the daemon's.
    assert_eq!(
        reply.text(),
        "method=POST uri=/page?x=1 path=/usr/bin:/bin\nhello"
    );
}

#[test]
fn listens_on_tcp_and_sets_the_unix_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let pool = TestPool::new();
    // A unix socket with the mode asked for.
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_SOCKET_MODE", "0600")]);
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    drop(daemon);
    // TCP, with --listen host:port on the command line.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stream = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let mut stream = stream.expect("daemon never listened on TCP");
    let params = params_for("GET", "/upload/status?X-Progress-ID=tcp");
    let mut bytes = request_head(1, &pairs(&params), false);
    bytes.extend(stdin_records(1, b""));
    stream.write_all(&bytes).unwrap();
    let (reply, _) = read_response(&mut stream, 1);
    assert_eq!(reply.body, br#"{"state":"starting"}"#);
    let _ = child.kill();
    let _ = child.wait();
}

// ---- request smuggling after an early answer ---------------------------------

/// How long request 1's STDIN record is: room for the start of a form,
/// the smuggled request and some filler.
const SMUGGLING_RECORD: usize = 30_000;

/// A complete FastCGI request, id 2, as a client would hide it in its
/// upload: a forged `REMOTE_USER`, an upload under `smuggled` that would
/// show in the pool, and keep_conn so that the daemon would go on.
fn smuggled_request() -> Vec<u8> {
    let form = Form::new().file("f", "smuggled.txt", "text/plain", b"smuggled");
    let body = form.body();
    let mut params = params_for("POST", "/upload?X-Progress-ID=smuggled");
    params.push(("REMOTE_USER".into(), "admin".into()));
    params.push(("CONTENT_TYPE".into(), form.content_type()));
    params.push(("CONTENT_LENGTH".into(), body.len().to_string()));
    let mut bytes = request_head(2, &pairs(&params), true);
    bytes.extend(stdin_records(2, &body));
    bytes
}

/// Request 1 on a kept connection, whose body is one STDIN record of
/// [`SMUGGLING_RECORD`] bytes sent in pieces.
struct Smuggler {
    stream: UnixStream,
    sent: usize,
}

impl Smuggler {
    fn open(daemon: &Daemon, params: &[(String, String)]) -> Smuggler {
        let mut stream = daemon.connect();
        let mut bytes = request_head(1, &pairs(params), true);
        // The record's header only: its content follows in pieces.
        bytes.extend_from_slice(&[1, STDIN, 0, 1]);
        bytes.extend_from_slice(&(SMUGGLING_RECORD as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        stream.write_all(&bytes).unwrap();
        Smuggler { stream, sent: 0 }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.sent += bytes.len();
    }

    /// Request 1's answer, given before its body ended.
    fn answer(&mut self) -> Reply {
        read_response(&mut self.stream, 1).0
    }

    /// Sends the rest of the record, beginning right where the daemon
    /// stopped reading with a complete request, then the end of STDIN and
    /// request 3 (a status of `smuggled`). The next answer must be request
    /// 3's, on the same connection, saying nothing was stored.
    fn smuggle_and_check(mut self, daemon: &Daemon, pool: &TestPool) {
        let hidden = smuggled_request();
        let filler = SMUGGLING_RECORD - self.sent - hidden.len();
        let mut rest = hidden;
        rest.resize(rest.len() + filler, 0);
        rest.extend(record(STDIN, 1, &[]));
        let params = params_for("GET", "/upload/status?X-Progress-ID=smuggled");
        rest.extend(request_head(3, &pairs(&params), true));
        rest.extend(stdin_records(3, b""));
        self.stream.write_all(&rest).unwrap();
        let first = read_record(&mut self.stream)
            .expect("the daemon closed a connection it could have kept");
        assert_eq!(
            first.id,
            3,
            "the daemon answered a request hidden in a body: {:?} {}",
            first.kind,
            String::from_utf8_lossy(&first.content)
        );
        assert_eq!(first.kind, STDOUT);
        let mut stdout = first.content;
        loop {
            let next = read_record(&mut self.stream).expect("request 3 was not finished");
            assert_eq!(next.id, 3, "{next:?}");
            match next.kind {
                STDOUT => stdout.extend(next.content),
                END_REQUEST => break,
                other => panic!("unexpected record type {other}"),
            }
        }
        let (status, _, body) = parse_cgi(&stdout);
        assert_eq!((status, &body[..]), (200, &br#"{"state":"starting"}"#[..]));
        assert!(
            !pool.top_level().iter().any(|name| name == "smuggled"),
            "the smuggled upload was stored: {:?}",
            pool.top_level()
        );
        assert!(
            daemon.log_lines().is_empty(),
            "a web server's connection must log nothing: {:?}",
            daemon.log_lines()
        );
    }
}

fn post_params(target: &str, content_type: &str, length: Option<usize>) -> Vec<(String, String)> {
    let mut params = params_for("POST", target);
    params.push(("CONTENT_TYPE".into(), content_type.into()));
    if let Some(length) = length {
        params.push(("CONTENT_LENGTH".into(), length.to_string()));
    }
    params
}

const BOUNDARY_TYPE: &str = "multipart/form-data; boundary=XX";

#[test]
fn no_smuggling_after_a_malformed_form_is_refused() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let params = post_params(
        "/upload?X-Progress-ID=malformed",
        BOUNDARY_TYPE,
        Some(SMUGGLING_RECORD),
    );
    let mut smuggler = Smuggler::open(&daemon, &params);
    smuggler.send(b"--XX\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\n");
    smuggler.answer().assert_error_code(
        400,
        "ERR_BAD_PART_HEADER",
        "Content-Disposition is not form-data",
    );
    smuggler.smuggle_and_check(&daemon, &pool);
}

#[test]
fn no_smuggling_after_a_413_while_streaming() {
    // No Content-Length: the limit is found in the middle of the record.
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1K")]);
    let params = post_params("/upload?X-Progress-ID=streamed", BOUNDARY_TYPE, None);
    let mut smuggler = Smuggler::open(&daemon, &params);
    let mut start =
        b"--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n".to_vec();
    // The daemon reads one byte past the limit, and no further.
    start.resize(1025, b'v');
    smuggler.send(&start);
    smuggler
        .answer()
        .assert_error_code(413, "ERR_TOO_LARGE", "larger than the limit");
    smuggler.smuggle_and_check(&daemon, &pool);
}

#[test]
fn no_smuggling_after_a_413_by_content_length() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1K")]);
    let params = post_params("/upload?X-Progress-ID=long", BOUNDARY_TYPE, Some(2 << 20));
    let mut smuggler = Smuggler::open(&daemon, &params);
    smuggler
        .answer()
        .assert_error_code(413, "ERR_TOO_LARGE", "more than the limit");
    smuggler.smuggle_and_check(&daemon, &pool);
}

#[test]
fn no_smuggling_after_a_clear_cancels_the_upload() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let params = post_params(
        "/upload?X-Progress-ID=cleared",
        BOUNDARY_TYPE,
        Some(SMUGGLING_RECORD),
    );
    let mut smuggler = Smuggler::open(&daemon, &params);
    let mut start =
        b"--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n".to_vec();
    start.resize(2000, b'v');
    smuggler.send(&start);
    wait_for(Duration::from_secs(10), || {
        (status_of(&pool.cgi(), "cleared")["received"] == 2000).then_some(())
    })
    .expect("upload never started");
    let reply = pool.cgi().get("/upload?X-Progress-ID=cleared&clear");
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The receiver notices the clear when its next read returns.
    thread::sleep(Duration::from_millis(100));
    smuggler.send(&[b'v'; 1000]);
    smuggler
        .answer()
        .assert_error_code(410, "ERR_CANCELLED", "cancelled by a clear request");
    smuggler.smuggle_and_check(&daemon, &pool);
}

#[test]
fn no_smuggling_after_a_409_for_a_running_upload() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "20ms")]);
    let _running = daemon.begin_partial_upload(&pool, "busy", 11, 10_000);
    let params = post_params(
        "/upload?X-Progress-ID=busy",
        BOUNDARY_TYPE,
        Some(SMUGGLING_RECORD),
    );
    let mut smuggler = Smuggler::open(&daemon, &params);
    smuggler
        .answer()
        .assert_error_code(409, "ERR_UPLOAD_RUNNING", "already running");
    smuggler.smuggle_and_check(&daemon, &pool);
}

#[test]
fn no_smuggling_after_a_403_for_an_unsigned_identifier() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_UPLOAD_KEY", "k3y")]);
    let params = post_params(
        "/upload?X-Progress-ID=unsigned",
        BOUNDARY_TYPE,
        Some(SMUGGLING_RECORD),
    );
    let mut smuggler = Smuggler::open(&daemon, &params);
    let reply = smuggler.answer();
    assert_eq!(reply.status, 403, "{}", reply.text());
    // The status of `smuggled` needs a signature here too: check the pool
    // and the connection by hand.
    let hidden = smuggled_request();
    let mut rest = hidden.clone();
    rest.resize(SMUGGLING_RECORD, 0);
    rest.extend(record(STDIN, 1, &[]));
    let params = params_for("GET", "/upload/new");
    rest.extend(request_head(3, &pairs(&params), true));
    rest.extend(stdin_records(3, b""));
    smuggler.stream.write_all(&rest).unwrap();
    let (reply, _) = read_response(&mut smuggler.stream, 3);
    reply.assert_error_code(403, "ERR_NEW_ID_REFUSED", "signs upload identifiers");
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn a_body_that_does_not_end_soon_after_an_early_answer_closes_the_connection() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let params = post_params(
        "/upload?X-Progress-ID=stalled",
        BOUNDARY_TYPE,
        Some(SMUGGLING_RECORD),
    );
    // The rest of the body never comes: closed after about a second.
    let mut smuggler = Smuggler::open(&daemon, &params);
    smuggler.send(b"--XX\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\n");
    smuggler
        .answer()
        .assert_error_code(400, "ERR_BAD_PART_HEADER", "not form-data");
    let answered = std::time::Instant::now();
    assert!(read_record(&mut smuggler.stream).is_none());
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    // More than 4 MiB still to come: not read to its end, closed, and
    // what follows is never served.
    let mut smuggler = Smuggler::open(&daemon, &params);
    smuggler.send(b"--XX\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\n");
    smuggler
        .answer()
        .assert_error_code(400, "ERR_BAD_PART_HEADER", "not form-data");
    let mut rest = vec![b'v'; SMUGGLING_RECORD - smuggler.sent];
    rest.extend(stdin_data(1, &vec![b'v'; 5 << 20]));
    rest.extend(record(STDIN, 1, &[]));
    rest.extend(smuggled_request());
    let mut writer = smuggler.stream.try_clone().unwrap();
    let feeder = thread::spawn(move || {
        let _ = writer.write_all(&rest);
    });
    assert!(
        read_record(&mut smuggler.stream).is_none(),
        "a request after a 5 MiB tail was answered"
    );
    let _ = feeder.join();
    assert!(!pool.top_level().iter().any(|name| name == "smuggled"));
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

// ---- settings the web server passes with a request ----------------------------

/// A POST of `form` with `settings` among its parameters.
fn post_with(daemon: &Daemon, target: &str, form: &Form, settings: &[(&str, &str)]) -> Reply {
    let body = form.body();
    let length = body.len().to_string();
    let content_type = form.content_type();
    let mut extra = vec![
        ("CONTENT_TYPE", content_type.as_str()),
        ("CONTENT_LENGTH", length.as_str()),
    ];
    extra.extend_from_slice(settings);
    daemon.request("POST", target, &extra, &body)
}

fn two_mib_form(seed: u64) -> Form {
    Form::new().file(
        "f",
        "big.bin",
        "application/octet-stream",
        &random_bytes(2 << 20, seed),
    )
}

#[test]
fn a_size_limit_passed_with_the_request_is_enforced() {
    // The parameter beats the daemon's environment (4M).
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "4M")]);
    let limited = [("FILEUPLOAD_MAX_SIZE", "1M")];
    let reply = post_with(
        &daemon,
        "/upload?X-Progress-ID=p-big",
        &two_mib_form(1),
        &limited,
    );
    reply.assert_error_code(413, "ERR_TOO_LARGE", "more than the limit of 1048576 bytes");
    assert_eq!(status_of(&pool.cgi(), "p-big")["status"], 413);
    // Without it, the daemon's own limit.
    let reply = post_with(&daemon, "/upload?X-Progress-ID=p-ok", &two_mib_form(2), &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn a_daemon_option_beats_the_request_parameter() {
    let pool = TestPool::new();
    let daemon = Daemon::start_with_args(pool.path(), &[], &["--max-size", "4M"]);
    let limited = [("FILEUPLOAD_MAX_SIZE", "1M")];
    let reply = post_with(
        &daemon,
        "/upload?X-Progress-ID=opt",
        &two_mib_form(3),
        &limited,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let form = Form::new().file("f", "b", "text/plain", &random_bytes(5 << 20, 4));
    let reply = post_with(&daemon, "/upload?X-Progress-ID=opt-big", &form, &limited);
    reply.assert_error_code(413, "ERR_TOO_LARGE", "more than the limit of 4194304 bytes");
}

#[test]
fn a_key_passed_with_the_request_requires_signed_identifiers() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "per-location key\n").unwrap();
    let key_path = key_file.to_str().unwrap();
    let signed = std::process::Command::new(bin())
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", pool.path())
        .env("FILEUPLOAD_UPLOAD_KEY_FILE", key_path)
        .arg("new-id")
        .output()
        .unwrap();
    let signed = String::from_utf8(signed.stdout).unwrap().trim().to_owned();
    let form = Form::new().file("f", "k.txt", "text/plain", b"keyed");
    for settings in [
        [("FILEUPLOAD_UPLOAD_KEY", "per-location key")],
        [("FILEUPLOAD_UPLOAD_KEY_FILE", key_path)],
    ] {
        let target = "/upload?X-Progress-ID=unsigned";
        post_with(&daemon, target, &form, &settings).assert_error_code(
            403,
            "ERR_SIGNATURE",
            "not signed",
        );
        let status = format!("/upload/status?X-Progress-ID={signed}");
        let reply = daemon.request("GET", &status, &settings, b"");
        assert_eq!(reply.body, br#"{"state":"starting"}"#, "{}", reply.text());
    }
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    // Without the parameter the daemon has no key: the same unsigned
    // identifier is taken.
    let reply = daemon.post_form("/upload?X-Progress-ID=unsigned", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The key file was read once for its set of parameters, not per poll:
    // gone now, polls still verify with the key read before.
    std::fs::remove_file(&key_file).unwrap();
    let file_setting = [("FILEUPLOAD_UPLOAD_KEY_FILE", key_path)];
    for _ in 0..3 {
        let status = format!("/upload/status?X-Progress-ID={signed}");
        let reply = daemon.request("GET", &status, &file_setting, b"");
        assert_eq!(reply.body, br#"{"state":"starting"}"#, "{}", reply.text());
        daemon
            .request("GET", "/upload/status?X-Progress-ID=x", &file_setting, b"")
            .assert_error_code(403, "ERR_SIGNATURE", "not signed");
    }
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

#[test]
fn a_directory_passed_with_the_request_chooses_the_pool() {
    let pool = TestPool::new();
    let other = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let data = random_bytes(100_000, 5);
    let form = Form::new().file("f", "elsewhere.bin", "application/octet-stream", &data);
    let settings = [("FILEUPLOAD_DIRECTORY", other.path().to_str().unwrap())];
    let reply = post_with(&daemon, "/upload?X-Progress-ID=elsewhere", &form, &settings);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let stored = path_of(&reply.json(), 0);
    assert!(stored.starts_with(other.path()), "{}", stored.display());
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert_eq!(other.top_level(), ["elsewhere"]);
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    // Status polls with the same parameter see it; those without do not.
    let reply = daemon.request(
        "GET",
        "/upload/status?X-Progress-ID=elsewhere",
        &settings,
        b"",
    );
    assert_eq!(reply.json()["state"], "done");
    let reply = daemon.get("/upload/status?X-Progress-ID=elsewhere");
    assert_eq!(reply.json()["state"], "starting");
}

#[test]
fn settings_that_cannot_change_per_request_are_a_500_naming_them() {
    let cases = [
        (
            "FILEUPLOAD_WORKERS",
            "2",
            "workers is a setting of the daemon as a whole",
        ),
        (
            "FILEUPLOAD_LISTEN",
            "127.0.0.1:1",
            "listen is a setting of the daemon",
        ),
        ("FILEUPLOAD_GRACE", "1s", "grace is a setting of the daemon"),
        (
            "FILEUPLOAD_MAX_UPLOADS",
            "10",
            "max_uploads is a setting of the daemon",
        ),
        (
            "FILEUPLOAD_HEADER_TIMEOUT",
            "1s",
            "header_timeout is a setting of the daemon",
        ),
        (
            "FILEUPLOAD_BODY_TIMEOUT",
            "1s",
            "body_timeout is a setting of the daemon",
        ),
        (
            "FILEUPLOAD_SOCKET_MODE",
            "0666",
            "socket_mode is a setting of the daemon",
        ),
        (
            "FILEUPLOAD_CONFIG",
            "/etc/passwd",
            "the config file is the daemon's",
        ),
        ("FILEUPLOAD_MAX_SZIE", "1M", "no such setting"),
    ];
    for (name, value, why) in cases {
        let pool = TestPool::new();
        let daemon = Daemon::start(pool.path(), &[]);
        let form = Form::new().file("f", "a", "text/plain", b"x");
        let reply = post_with(
            &daemon,
            "/upload?X-Progress-ID=refused",
            &form,
            &[(name, value)],
        );
        reply.assert_error_code(500, "ERR_CONFIG", "misconfigured");
        assert!(
            pool.top_level().is_empty(),
            "{name}: {:?}",
            pool.top_level()
        );
        let lines = daemon.log_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!("FastCGI parameter {name}: ")) && lines[0].contains(why),
            "{name}: {lines:?}"
        );
        // An empty value counts as unset, as everywhere.
        let reply = daemon.request("GET", "/upload/new", &[(name, "")], b"");
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    }
}

#[test]
fn a_bad_value_passed_with_the_request_is_a_500_naming_the_parameter() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    let form = Form::new().file("f", "a", "text/plain", b"x");
    for _ in 0..20 {
        let reply = post_with(
            &daemon,
            "/upload?X-Progress-ID=bad",
            &form,
            &[("FILEUPLOAD_MAX_SIZE", "12X")],
        );
        reply.assert_error_code(500, "ERR_CONFIG", "misconfigured");
    }
    for (name, value, message) in [
        (
            "FILEUPLOAD_DIRECTORY",
            "relative",
            "must be an absolute path",
        ),
        (
            "FILEUPLOAD_UPLOAD_KEY_FILE",
            "/nonexistent/key",
            "/nonexistent/key",
        ),
    ] {
        thread::sleep(Duration::from_millis(1100));
        daemon
            .request("GET", "/upload/new", &[(name, value)], b"")
            .assert_error_code(500, "ERR_CONFIG", "misconfigured");
        let lines = daemon.log_lines();
        assert!(
            lines.last().is_some_and(|l| l.contains(message)),
            "{name}: {lines:?}"
        );
    }
    assert!(pool.top_level().is_empty(), "{:?}", pool.top_level());
    let lines = daemon.log_lines();
    assert!(
        lines[0].contains("FastCGI parameter FILEUPLOAD_MAX_SIZE: invalid size \"12X\""),
        "{lines:?}"
    );
    assert!(
        lines.len() <= 4,
        "20 bad requests flooded the log: {lines:#?}"
    );
}

#[test]
fn a_key_per_request_replaces_the_daemons_key_but_not_its_key_file() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_UPLOAD_KEY", "daemon key")]);
    // The same setting: the parameter wins.
    let reply = daemon.request(
        "GET",
        "/upload/status?X-Progress-ID=x",
        &[("FILEUPLOAD_UPLOAD_KEY", "location key")],
        b"",
    );
    reply.assert_error_code(403, "ERR_SIGNATURE", "not signed");
    // The other half of the pair: both set, refused as in one environment.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file key").unwrap();
    let reply = daemon.request(
        "GET",
        "/upload/status?X-Progress-ID=x",
        &[("FILEUPLOAD_UPLOAD_KEY_FILE", key_file.to_str().unwrap())],
        b"",
    );
    reply.assert_error_code(500, "ERR_CONFIG", "misconfigured");
    let lines = daemon.log_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(
            "both upload_key (environment variable FILEUPLOAD_UPLOAD_KEY) and upload_key_file \
             (FastCGI parameter FILEUPLOAD_UPLOAD_KEY_FILE)"
        ),
        "{lines:?}"
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("daemon key") && !log.contains("location key") && !log.contains("file key"),
        "a key was logged: {log}"
    );
}

#[test]
fn a_web_server_closing_with_our_answer_unread_logs_nothing() {
    // What nginx does when its client goes away mid-request: it closes the
    // kept connection without reading our answer, and the daemon's next
    // read gets ECONNRESET. That is a close, not a failure.
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[]);
    for _ in 0..5 {
        let mut stream = daemon.connect();
        let params = params_for("GET", "/upload/status?X-Progress-ID=gone");
        let mut bytes = request_head(1, &pairs(&params), true);
        bytes.extend(stdin_records(1, b""));
        stream.write_all(&bytes).unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(stream);
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(daemon.get("/upload/new").status, 200);
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}

// ---- slow and idle peers -----------------------------------------------------

#[test]
fn connections_without_a_whole_request_hold_no_worker() {
    // One worker and one upload thread, against 100 idle connections, 50
    // that stopped inside their parameters and an upload that stalled:
    // status polls and new identifiers are still answered.
    let pool = TestPool::new();
    let daemon = Daemon::start(
        pool.path(),
        &[("FILEUPLOAD_WORKERS", "1"), ("FILEUPLOAD_MAX_UPLOADS", "1")],
    );
    let stalled = daemon.begin_partial_upload(&pool, "stalled", 3, 20_000);
    let idle: Vec<UnixStream> = (0..100).map(|_| daemon.connect()).collect();
    let half: Vec<UnixStream> = (0..50)
        .map(|n| {
            let mut stream = daemon.connect();
            let head = request_head(1, &[("REQUEST_METHOD", "GET")], true);
            stream.write_all(&head[..20 + n % 10]).unwrap();
            stream
        })
        .collect();
    for _ in 0..20 {
        let poll = daemon.get("/upload/status?X-Progress-ID=stalled");
        assert_eq!(poll.json()["state"], "uploading", "{poll:?}");
        assert_eq!(poll.json()["received"], 20_000);
    }
    assert_eq!(daemon.get("/upload/new").status, 200);
    drop((stalled, idle, half));
}

#[test]
fn peers_that_do_not_read_their_answers_hold_up_no_poll() {
    // Only as many loop threads as cores wait for connections; the rest
    // stand by for threads held up. Here all but one of the threads are
    // held up writing answers nobody reads (each peer sends polls without
    // pause and reads none, so the thread blocks until body_timeout, 60 s):
    // those standing by take their places, and a poll is answered.
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores + 2;
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_WORKERS", &workers.to_string())]);
    let poll = params_for("GET", "/upload/status?X-Progress-ID=unread");
    let pairs: Vec<(&str, &str)> = poll.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut polls = Vec::new();
    for _ in 0..4000 {
        polls.extend(request_head(1, &pairs, true));
        polls.extend(stdin_records(1, b""));
    }
    let peers: Vec<UnixStream> = (0..workers - 1)
        .map(|_| {
            let stream = daemon.connect();
            let mut writer = stream.try_clone().unwrap();
            let polls = polls.clone();
            // Blocks once the daemon stops reading; ends when the stream
            // is closed below.
            thread::spawn(move || {
                let _ = writer.write_all(&polls);
            });
            stream
        })
        .collect();
    // Until every peer's thread is held up: the daemon's answers fill the
    // peer's socket, and its writes wait.
    let pid = daemon.pid();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held_up_writers(pid) < workers - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the peers did not hold up {} threads ({} are)",
            workers - 1,
            held_up_writers(pid)
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Held up behind them, the poll would fail at its read timeout (30 s),
    // before theirs (60 s).
    let reply = daemon.get("/upload/status?X-Progress-ID=other");
    assert_eq!(reply.json()["state"], "starting", "{reply:?}");
    drop(peers);
}

/// Threads of process `pid` sleeping in a write to a unix socket whose
/// peer does not read (`unix_stream_sendmsg` waiting for room).
fn held_up_writers(pid: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("wchan")).ok())
        .filter(|wchan| wchan.contains("sock_alloc_send") || wchan.contains("unix_stream_sendmsg"))
        .count()
}

#[test]
fn a_request_sent_a_byte_at_a_time_and_two_sent_at_once_are_served() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_WORKERS", "1")]);
    let pairs = |target: &str| {
        let params = params_for("GET", target);
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut bytes = request_head(1, &pairs, true);
        bytes.extend(stdin_records(1, b""));
        bytes
    };
    let mut stream = daemon.connect();
    for byte in pairs("/upload/status?X-Progress-ID=trickled") {
        stream.write_all(&[byte]).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    let (reply, _) = read_response(&mut stream, 1);
    assert_eq!(reply.json()["state"], "starting", "{reply:?}");
    // Two requests in one write: the second waits in what was read ahead.
    let mut both = pairs("/upload/status?X-Progress-ID=first");
    both.extend(pairs("/upload/new"));
    stream.write_all(&both).unwrap();
    let (first, _) = read_response(&mut stream, 1);
    assert_eq!(first.json()["state"], "starting");
    let (second, _) = read_response(&mut stream, 1);
    assert_eq!(second.status, 200);
    assert!(second.json()["identifier"].is_string(), "{second:?}");
}

#[test]
fn header_timeout_closes_a_connection_that_never_completes_its_request() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_HEADER_TIMEOUT", "1s")]);
    let mut stream = daemon.connect();
    let head = request_head(1, &[("REQUEST_METHOD", "GET")], true);
    stream.write_all(&head[..head.len() - 8]).unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(read.is_ok(), "closed, not timed out on our side: {read:?}");
    assert!(rest.is_empty(), "nothing is answered: {rest:?}");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "closed after {waited:?}, not about 1 s"
    );
    // The line is written as the connection closes: give it a moment.
    let noted = wait_for(Duration::from_secs(5), || {
        let lines = daemon.log_lines();
        lines
            .iter()
            .any(|l| l.contains("header_timeout"))
            .then_some(())
    });
    assert!(noted.is_some(), "{:?}", daemon.log_lines());
}

#[test]
fn a_body_that_stalls_past_body_timeout_fails_with_err_too_slow() {
    let pool = TestPool::new();
    let daemon = Daemon::start(
        pool.path(),
        &[
            ("FILEUPLOAD_BODY_TIMEOUT", "1s"),
            ("FILEUPLOAD_PROGRESS_INTERVAL", "20ms"),
        ],
    );
    let mut stream = daemon.begin_partial_upload(&pool, "stalls", 5, 30_000);
    let (reply, _) = read_response(&mut stream, 1);
    reply.assert_error_code(408, "ERR_TOO_SLOW", "body_timeout");
    let status = status_of(&pool.cgi(), "stalls");
    assert_eq!(status["code"], "ERR_TOO_SLOW", "{status}");
    assert_eq!(status["status"], 408, "{status}");
    assert_eq!(pool.bucket_files("stalls"), ["lock", "status.json"]);
}

/// tus through the daemon: OPTIONS, HEAD and DELETE (quick, answered by
/// the event loop's threads) and POST and PATCH (bulk) all reach the
/// handler, and the chunks end up on disk as sent.
#[test]
fn tus_methods_pass_through_the_daemon() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_MAX_SIZE", "1M")]);
    let tus = [("HTTP_TUS_RESUMABLE", "1.0.0")];
    let options = daemon.request("OPTIONS", "/upload/files", &[], b"");
    assert_eq!(options.status, 204, "{}", options.text());
    assert_eq!(options.header("Tus-Max-Size"), Some("1048576"));
    let created = daemon.request(
        "POST",
        "/upload/files",
        &[tus[0], ("HTTP_UPLOAD_LENGTH", "11")],
        b"",
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let chunk = |offset: &str, data: &[u8]| {
        daemon.request(
            "PATCH",
            &location,
            &[
                tus[0],
                ("CONTENT_TYPE", "application/offset+octet-stream"),
                ("HTTP_UPLOAD_OFFSET", offset),
                ("CONTENT_LENGTH", &data.len().to_string()),
            ],
            data,
        )
    };
    let first = chunk("0", b"hello ");
    assert_eq!(first.status, 204, "{}", first.text());
    let head = daemon.request("HEAD", &location, &tus, b"");
    assert_eq!(head.status, 200, "{}", head.text());
    assert_eq!(head.header("Upload-Offset"), Some("6"));
    let last = chunk("6", b"world");
    assert_eq!(last.header("Upload-Offset"), Some("11"), "{}", last.text());
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(b"hello world"));
    assert_eq!(
        std::fs::read(pool.path().join(&id).join("file-1")).unwrap(),
        b"hello world"
    );
    let deleted = daemon.request("DELETE", &location, &tus, b"");
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(status_of(&pool.cgi(), &id)["state"], "starting");
    assert!(daemon.log_lines().is_empty(), "{:?}", daemon.log_lines());
}
