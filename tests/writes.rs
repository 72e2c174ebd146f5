//! Large writes: a body reaches its file in writes of about 1 MiB, whatever
//! pieces the transport forwards (nginx's FastCGI records carry 8 KiB at
//! most), and only stored bytes are ever reported as received.
//!
//! The writes are counted by the kernel: the daemon's `syscw` in
//! `/proc/PID/io` (every `write`-family call of all its threads). A large
//! upload's count less that of a one-byte upload made the same way is what
//! the body's bytes cost, since everything else (the status written at
//! start and end, the answer, the connection's return) is the same for
//! both.

mod common;

use std::io::Write;

use common::fcgi::*;
use common::*;

/// What nginx forwards at most in one FastCGI record.
const RECORD: usize = 8192;
/// The upload of the measure.
const SIZE: usize = 64 << 20;
/// The block the daemon writes.
const BLOCK: usize = 1 << 20;

/// Write calls made by process `pid` so far.
fn syscw(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|line| line.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscw in /proc/{pid}/io: {io}"))
}

/// One request on a fresh connection, its body in STDIN records of
/// [`RECORD`] bytes as nginx sends it.
fn request_in_records(
    daemon: &Daemon,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut params = params_for(method, target);
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut bytes = request_head(1, &pairs, false);
    for piece in body.chunks(RECORD) {
        bytes.extend(record(STDIN, 1, piece));
    }
    bytes.extend(record(STDIN, 1, &[]));
    let mut stream = daemon.connect();
    let mut writer = stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || writer.write_all(&bytes));
    let reply = read_response(&mut stream, 1).0;
    feeder
        .join()
        .expect("the feeder panicked")
        .expect("the daemon stopped reading the body");
    // The answer is out before the connection goes back to the event loop
    // (one write, to its waker): let that happen inside the measure.
    drop(stream);
    std::thread::sleep(std::time::Duration::from_millis(200));
    reply
}

/// A form of one file of `data`, posted in 8 KiB records; returns the
/// daemon's write calls during it.
fn form_writes(daemon: &Daemon, pool: &TestPool, id: &str, data: &[u8]) -> u64 {
    let form = Form::new().file("f", "big.bin", "application/octet-stream", data);
    let body = form.body();
    let length = body.len().to_string();
    let before = syscw(daemon.pid());
    let reply = request_in_records(
        daemon,
        "POST",
        &format!("/upload?X-Progress-ID={id}"),
        &[
            ("CONTENT_TYPE", &form.content_type()),
            ("CONTENT_LENGTH", &length),
        ],
        &body,
    );
    let writes = syscw(daemon.pid()) - before;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = status_of(&pool.cgi(), id);
    assert_eq!(status["state"], "done", "{status}");
    let stored = std::fs::read(path_of(&status, 0)).unwrap();
    assert!(stored == data, "the stored file differs from the one sent");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(data));
    writes
}

/// A tus upload of `data` in one PATCH of 8 KiB records; returns the
/// daemon's write calls during the PATCH.
fn tus_writes(daemon: &Daemon, pool: &TestPool, data: &[u8]) -> u64 {
    let tus = ("HTTP_TUS_RESUMABLE", "1.0.0");
    let length = data.len().to_string();
    let created = daemon.request(
        "POST",
        "/upload/files",
        &[tus, ("HTTP_UPLOAD_LENGTH", &length)],
        b"",
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("Location").unwrap().to_owned();
    let id = location.strip_prefix("/upload/files/").unwrap().to_owned();
    let before = syscw(daemon.pid());
    let patched = request_in_records(
        daemon,
        "PATCH",
        &location,
        &[
            tus,
            ("CONTENT_TYPE", "application/offset+octet-stream"),
            ("HTTP_UPLOAD_OFFSET", "0"),
            ("CONTENT_LENGTH", &length),
        ],
        data,
    );
    let writes = syscw(daemon.pid()) - before;
    assert_eq!(patched.status, 204, "{}", patched.text());
    assert_eq!(patched.header("Upload-Offset"), Some(length.as_str()));
    let status = status_of(&pool.cgi(), &id);
    assert_eq!(status["state"], "done", "{status}");
    let stored = std::fs::read(pool.path().join(&id).join("file-1")).unwrap();
    assert!(stored == data, "the stored file differs from the one sent");
    assert_eq!(status["files"][0]["sha256"], sha256_hex(data));
    writes
}

/// The bound on the body's writes: one a block, one for the last partial
/// block, and a few to spare (a progress rewrite the kernel's scheduling
/// lets through, which progress being off should already prevent).
fn bound(size: usize) -> u64 {
    (size.div_ceil(BLOCK) + 1 + 4) as u64
}

fn daemon(pool: &TestPool) -> Daemon {
    // Progress off: the status is written at the start and at the end,
    // the same for every upload, so the difference is the data's writes.
    Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "0")])
}

#[test]
fn a_form_upload_in_8k_records_is_written_in_1mib_blocks() {
    let pool = TestPool::new();
    let daemon = daemon(&pool);
    let data = random_bytes(SIZE, 64);
    let small = form_writes(&daemon, &pool, "writes-small", b"x");
    let large = form_writes(&daemon, &pool, "writes-large", &data);
    let data_writes = large.saturating_sub(small);
    eprintln!(
        "form: {large} writes for 64 MiB, {small} for 1 byte: \
         {data_writes} for the data ({} per GiB)",
        data_writes * 16
    );
    assert!(
        data_writes <= bound(SIZE),
        "{data_writes} writes for 64 MiB sent in {RECORD}-byte records, \
         more than {} (one per MiB)",
        bound(SIZE)
    );
    // The measure counts: the data's blocks are there (less the one
    // write of the one-byte upload's data, and one to spare).
    assert!(
        data_writes >= (SIZE / BLOCK - 2) as u64,
        "{data_writes} writes"
    );
}

#[test]
fn a_resumable_chunk_in_8k_records_is_written_in_1mib_blocks() {
    let pool = TestPool::new();
    let daemon = daemon(&pool);
    let data = random_bytes(SIZE, 65);
    let small = tus_writes(&daemon, &pool, b"x");
    let large = tus_writes(&daemon, &pool, &data);
    let data_writes = large.saturating_sub(small);
    eprintln!(
        "tus: {large} writes for 64 MiB, {small} for 1 byte: \
         {data_writes} for the data ({} per GiB)",
        data_writes * 16
    );
    assert!(
        data_writes <= bound(SIZE),
        "{data_writes} writes for a 64 MiB chunk sent in {RECORD}-byte records, \
         more than {} (one per MiB)",
        bound(SIZE)
    );
    assert!(
        data_writes >= (SIZE / BLOCK - 2) as u64,
        "{data_writes} writes"
    );
}

/// A client that stops sending mid-file: the bytes it sent are stored
/// within about a progress tick though less than a block came, and the
/// status counts them only once they are: the file's size in the status is
/// what is on disk.
#[test]
fn a_stalled_clients_bytes_are_stored_and_counted_within_a_tick() {
    let pool = TestPool::new();
    let daemon = Daemon::start(pool.path(), &[("FILEUPLOAD_PROGRESS_INTERVAL", "100ms")]);
    let sent = 300_000;
    // Returns once the status's `received` is `sent` (10 s at most).
    let stream = daemon.begin_partial_upload(&pool, "stalled", 7, sent);
    let status = status_of(&pool.cgi(), "stalled");
    assert_eq!(status["state"], "uploading", "{status}");
    let size = status["files"][0]["size"].as_u64().unwrap();
    let on_disk = std::fs::metadata(path_of(&status, 0)).unwrap().len();
    assert_eq!(
        size, on_disk,
        "the status claims bytes not on disk: {status}"
    );
    // All of the file's bytes sent (the form's headers came first).
    assert!(
        (sent as u64 - 300..sent as u64).contains(&on_disk),
        "{on_disk} bytes on disk of the {sent} sent"
    );
    drop(stream);
}

/// Through CGI, the body comes from a pipe in what the kernel had (up to
/// 64 KiB a read, the parser's buffer up to 256 KiB): the data file still
/// gets writes of 1 MiB. Counted under strace by the descriptor's path.
#[test]
fn a_cgi_upload_from_a_pipe_is_written_in_1mib_blocks() {
    let strace = common::site::require("strace", "strace");
    let pool = TestPool::new();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("cgi.trace");
    let size = 16 << 20;
    let data = random_bytes(size, 66);
    let form = Form::new().file("f", "piped.bin", "application/octet-stream", &data);
    let reply = pool
        .cgi()
        .prelude(&format!(
            "exec {} -f -qq -y -o {} -e trace=write,writev,pwrite64,pwritev -- \"$0\"",
            strace.display(),
            trace.display()
        ))
        .post_form("/upload?X-Progress-ID=piped", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = status_of(&pool.cgi(), "piped");
    let path = path_of(&status, 0);
    assert!(std::fs::read(&path).unwrap() == data, "other bytes stored");
    let lines = std::fs::read_to_string(&trace).unwrap();
    let marker = format!("<{}>", path.display());
    let writes = lines.lines().filter(|l| l.contains(&marker)).count();
    eprintln!("cgi: {writes} writes to the data file for 16 MiB");
    assert!(
        (size / BLOCK..=size / BLOCK + 1).contains(&writes),
        "{writes} writes to {} for 16 MiB, not one per MiB:\n{}",
        path.display(),
        lines
            .lines()
            .filter(|l| l.contains(&marker))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A CGI answer leaves in one `write`: head and body together (std's
/// line-buffered stdout used to send the head, up to its last line break,
/// and then the body). For the status of an unknown upload, the answer of
/// a CGI status poll, and for an upload's answer.
#[test]
fn a_cgi_answer_is_one_write() {
    let strace = common::site::require("strace", "strace");
    let pool = TestPool::new();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(100_000, 67);
    let form = Form::new().file("f", "small.bin", "application/octet-stream", &data);
    for (name, request) in [("status", None), ("upload", Some(&form))] {
        let trace = dir.path().join(format!("{name}.trace"));
        let cgi = pool.cgi().prelude(&format!(
            "exec {} -f -qq -o {} -e trace=write,writev,pwrite64,pwritev -- \"$0\"",
            strace.display(),
            trace.display()
        ));
        let reply = match request {
            None => cgi.get("/upload/status?X-Progress-ID=never-sent"),
            Some(form) => cgi.post_form("/upload?X-Progress-ID=one-write", form),
        };
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert!(!reply.body.is_empty(), "{name}: no body");
        let lines = std::fs::read_to_string(&trace).unwrap();
        let to_stdout: Vec<&str> = lines
            .lines()
            .filter(|l| l.contains("write(1, ") || l.contains("writev(1, "))
            .collect();
        assert_eq!(
            to_stdout.len(),
            1,
            "{name}: writes to stdout:\n{}",
            to_stdout.join("\n")
        );
    }
}

/// The FastCGI daemon sends a status answer in one write: its STDOUT
/// record, the empty one that ends STDOUT, and `FCGI_END_REQUEST`
/// together (three writes before, each a wake-up of the web server).
#[test]
fn a_fastcgi_status_answer_is_one_write() {
    let pool = TestPool::new();
    let (daemon, trace, _dir) = traced_daemon(&pool, "write,writev,sendto,sendmsg");
    let form = Form::new().file("f", "small.bin", "application/octet-stream", b"x");
    let upload = daemon.post_form("/upload?X-Progress-ID=one-write", &form);
    assert_eq!(upload.status, 200, "{}", upload.text());
    let before = records_sent(&trace);
    let targets = [
        "/upload/status?X-Progress-ID=never-sent",
        "/upload/status?X-Progress-ID=one-write",
    ];
    for target in targets {
        let reply = daemon.get(target);
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        assert!(!reply.body.is_empty(), "{target}: no body");
    }
    // strace writes each call's line as it ends; the answers have been
    // read, so their writes are in the file.
    let after = records_sent(&trace);
    assert_eq!(
        after.len() - before.len(),
        targets.len(),
        "writes of records for {} answers:\n{}",
        targets.len(),
        after[before.len()..].join("\n")
    );
    drop(daemon);
}

/// The daemon on `pool` under `strace -f`, tracing the system calls
/// `calls` names; the trace file, and the folder that holds it.
fn traced_daemon(pool: &TestPool, calls: &str) -> (Daemon, std::path::PathBuf, tempfile::TempDir) {
    let strace = common::site::require("strace", "strace");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("daemon.trace");
    let daemon = Daemon::start_with(
        pool.path(),
        &[],
        Some(&format!(
            "exec {} -f -qq -o {} -e trace={calls} -- \"$0\" \"$@\"",
            strace.display(),
            trace.display()
        )),
    );
    (daemon, trace, dir)
}

/// The system calls in `trace` that wrote FastCGI records (a buffer that
/// starts with version 1 and STDOUT or END_REQUEST).
fn records_sent(trace: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("(") && (l.contains(", \"\\1\\6") || l.contains(", \"\\1\\3")))
        .map(str::to_owned)
        .collect()
}

/// A status is read in one read: its size is known from the `fstat` that
/// checks it is a regular file, and a status is replaced whole, so no
/// second read is needed to find its end. Grown from nothing, the buffer
/// took six reads, then two; on a network file system each read is a
/// round trip.
#[test]
fn a_status_is_read_in_one_read() {
    let strace = common::site::require("strace", "strace");
    let pool = TestPool::new();
    let form = Form::new().file("f", "small.bin", "application/octet-stream", b"x");
    let upload = pool
        .cgi()
        .post_form("/upload?X-Progress-ID=one-read", &form);
    assert_eq!(upload.status, 200, "{}", upload.text());
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("status.trace");
    let reply = pool
        .cgi()
        .prelude(&format!(
            "exec {} -f -qq -o {} -e trace=openat,read -- \"$0\"",
            strace.display(),
            trace.display()
        ))
        .get("/upload/status?X-Progress-ID=one-read");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let lines = std::fs::read_to_string(&trace).unwrap();
    let fd = lines
        .lines()
        .find(|l| l.contains("\"status.json\""))
        .and_then(|l| l.rsplit("= ").next())
        .unwrap_or_else(|| panic!("status.json never opened:\n{lines}"))
        .trim()
        .to_owned();
    // With -f, each line starts with the thread's id.
    let call = format!("read({fd}, ");
    let reads: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with(&call) || l.contains(&format!(" {call}")))
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "reads of status.json:\n{}",
        reads.join("\n")
    );
}

/// The system calls the daemon made on a connection's socket and on the
/// pool's paths, over [`KEPT_POLLS`] status polls on one kept connection.
#[derive(Debug)]
struct PollCalls {
    reads: usize,
    opens: usize,
    stats: usize,
    closes: usize,
    options: usize,
    listing: String,
}

const KEPT_POLLS: usize = 3;

/// Polls `id` on one kept connection to a daemon run under `strace`, each
/// answer a 200 holding `state`, and counts the calls of the last
/// [`KEPT_POLLS`] polls (the first poll's connection is accepted and gets
/// its timeouts; a poll's reading and lookups are done once it is answered).
fn kept_connection_poll_calls(
    pool: &TestPool,
    daemon: &Daemon,
    trace: &std::path::Path,
    id: &str,
    state: &str,
) -> PollCalls {
    let calls = || {
        std::fs::read_to_string(trace)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let params = params_for("GET", &format!("/upload/status?X-Progress-ID={id}"));
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut stream = daemon.connect();
    let mut poll = || {
        let mut request = request_head(1, &params, true);
        request.extend(stdin_records(1, b""));
        stream.write_all(&request).unwrap();
        let (reply, protocol) = read_response(&mut stream, 1);
        assert_eq!((reply.status, protocol), (200, 0), "{}", reply.text());
        assert_eq!(reply.json()["state"], state, "{}", reply.text());
    };
    poll();
    poll();
    let before = calls().len();
    for _ in 0..KEPT_POLLS {
        poll();
    }
    let made = calls()[before..].to_vec();
    let listing = made.join("\n");
    // Only the connection's socket and the pool's paths are counted: a
    // loop thread's first allocation also reads `/sys/devices/system/cpu/online`
    // (glibc sizing its malloc arenas), whenever that thread first runs.
    let call = |l: &str| -> Option<(String, String, String)> {
        let rest = l.split_once(char::is_whitespace)?.1.trim_start();
        let (name, args) = rest.split_once('(')?;
        let result = l.rsplit("= ").next().unwrap_or("").trim().to_owned();
        Some((name.to_owned(), args.to_owned(), result))
    };
    let fd_of = |args: &str| args.split(',').next().unwrap_or("").trim().to_owned();
    let socket = made
        .iter()
        .filter_map(|l| call(l))
        .find(|(name, _, _)| name == "recvfrom" || name == "recvmsg")
        .map(|(_, args, _)| fd_of(&args))
        .unwrap_or_else(|| panic!("no read of the socket by {KEPT_POLLS} polls:\n{listing}"));
    let pool_dir = pool.path().display().to_string();
    let mut pool_fds = vec![];
    let mut counted = PollCalls {
        reads: 0,
        opens: 0,
        stats: 0,
        closes: 0,
        options: 0,
        listing: String::new(),
    };
    for (name, args, result) in made.iter().filter_map(|l| call(l)) {
        let on_pool = args.contains(&pool_dir);
        match name.as_str() {
            "recvfrom" | "recvmsg" | "read" if fd_of(&args) == socket => counted.reads += 1,
            "open" | "openat" if on_pool => {
                counted.opens += 1;
                if !result.starts_with('-') {
                    pool_fds.push(result.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
            "stat" | "newfstatat" | "statx" | "lstat" if on_pool => counted.stats += 1,
            "close" if fd_of(&args) == socket || pool_fds.contains(&fd_of(&args)) => {
                counted.closes += 1
            }
            "setsockopt" => counted.options += 1,
            _ => {}
        }
    }
    counted.listing = listing;
    counted
}

const POLL_CALLS: &str =
    "recvfrom,recvmsg,read,setsockopt,open,openat,close,stat,lstat,newfstatat,statx";

/// A status poll on a kept connection, for an identifier not begun yet,
/// costs one read of the socket, one lookup of the bucket and one `stat`
/// of the pool, and changes no socket option. It used to cost eleven
/// calls: a second read that found nothing, the pool opened and the bucket
/// tried in it again before a `close`, and the read timeout set and put
/// back around a wait it never made (the end of a poll's empty input came
/// with its parameters, missed among the bytes read ahead).
#[test]
fn a_status_poll_on_a_kept_connection_reads_once_and_opens_nothing_to_close() {
    let pool = TestPool::new();
    let (daemon, trace, _dir) = traced_daemon(&pool, POLL_CALLS);
    let made = kept_connection_poll_calls(&pool, &daemon, &trace, "kept-polls", "starting");
    let (polls, listing) = (KEPT_POLLS, &made.listing);
    assert_eq!(
        made.reads, polls,
        "reads of the socket by {polls} polls:\n{listing}"
    );
    assert_eq!(made.opens, polls, "opens by {polls} polls:\n{listing}");
    assert_eq!(made.stats, polls, "stats by {polls} polls:\n{listing}");
    assert_eq!(made.closes, 0, "closes by {polls} polls:\n{listing}");
    assert_eq!(
        made.options, 0,
        "socket options set by {polls} polls:\n{listing}"
    );
    drop(daemon);
}

/// A poll for an upload the daemon itself is receiving is answered from
/// the status the receiver last wrote, kept in memory, after one `lstat`
/// of the bucket (still the folder it claimed): no file opened. Read from
/// the pool it cost eight calls more: `status.json` opened, checked, read
/// and closed, and the lock opened, checked, tried and closed.
#[test]
fn a_poll_for_an_upload_this_daemon_receives_reads_no_file() {
    let pool = TestPool::new();
    let (daemon, trace, _dir) = traced_daemon(&pool, POLL_CALLS);
    let upload = daemon.begin_partial_upload(&pool, "kept-flight", 5, 30_000);
    let made = kept_connection_poll_calls(&pool, &daemon, &trace, "kept-flight", "uploading");
    let (polls, listing) = (KEPT_POLLS, &made.listing);
    assert_eq!(
        made.reads, polls,
        "reads of the socket by {polls} polls:\n{listing}"
    );
    assert_eq!(made.opens, 0, "opens by {polls} polls:\n{listing}");
    assert_eq!(made.stats, polls, "stats by {polls} polls:\n{listing}");
    assert_eq!(made.closes, 0, "closes by {polls} polls:\n{listing}");
    // And what it answers is what the pool holds.
    let poll = daemon.get("/upload/status?X-Progress-ID=kept-flight");
    assert_eq!(poll.json(), status_of(&pool.cgi(), "kept-flight"));
    drop((upload, daemon));
}
