//! Slow clients through nginx and the FastCGI daemon, configured as
//! conf-examples/ and the README configure them (nginx-fastcgi.conf, the
//! systemd units with their defaults): the measurements that slow
//! or idle connections cannot starve the status polls.
//!
//! (a) 1,000 uploads at once, each about 2 MiB trickling in at 64 KiB/s,
//! plus 500 status polls a second, for 30 s: every upload answered 200 with
//! the right SHA-256 (in the answer, in its status, and of the file on
//! disk), and the polls answered. The goal, polls under 50 ms at the 99th
//! percentile, is the benchmark's to judge (bench/results.md): a timed
//! assertion would fail on a busy machine, not on a wrong daemon. The uploads all begin
//! within 250 ms; the polls begin 2 s later, as a page polls its own
//! upload once it has begun. (A poll for an upload whose folder is not
//! made yet looks the name up under the pool directory's lock, which the
//! thousand `mkdir`s hold while they wait for the file system's journal:
//! on ext4 here, up to 1.5 s. The README says so.)
//!
//! (b) 200 uploads through nginx that send one body byte every 2 s, plus
//! 200 connections straight to the daemon's socket that send nothing:
//! every poll answered, and a 64 KiB upload done (the goals, polls under
//! 50 ms at p99 and the upload within 1 s, again the benchmark's). The old
//! daemon, a worker per connection, answered no poll and no upload.
//!
//! Each prints its figures, and a `slow_clients.json:` line with them for
//! the benchmark (bench/run.py), before it asserts. A poll that fails or
//! takes longer than 2 s counts as 2 s. The two never run at once (a lock),
//! since each would be the other's load. By hand:
//!
//!   cargo test --release --test slow_clients -- --nocapture
//!
//! For a smaller or shorter (a) while working on the daemon,
//! `SLOW_CLIENTS_UPLOADS` (1000) and `SLOW_CLIENTS_SECONDS` (30) change it;
//! the targets stay the same. Besides what it asserts, (a) prints what
//! explains a miss: poll p99 per 5 s, the CPU time of the daemon (user and
//! system), of nginx's workers and of this client, and how late the
//! uploads' last bytes went.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::load::{Xorshift, get, percentile, poll_status, proc_status_kib, raise_open_files};
use common::sha256_hex;
use common::site::{Site, start_nginx_with_the_daemon};

/// A poll slower than this is a failure, and counts as this.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
const BOUNDARY: &str = "slowClientsBoundary3QxZ";

/// The two scenarios load the same two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn form_head(id: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{id}.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}

fn form_tail() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

fn request_head(id: &str, body_len: usize) -> String {
    format!(
        "POST /upload?X-Progress-ID={id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {body_len}\r\n\r\n"
    )
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)
}

/// The end of the logs, for a failure message: the whole of them can be
/// megabytes under this load.
fn logs_tail(site: &Site) -> String {
    let text = site.logs_text();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// The upload's answer, checked: 200, and the SHA-256 of its one file.
fn check_answer(answer: std::io::Result<(u16, Vec<u8>)>, sha256: &str) -> Result<(), String> {
    let (status, body) = answer.map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("HTTP {status}: {text}"));
    }
    let json: Value =
        serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e}): {text}"))?;
    if json["files"][0]["sha256"] != sha256 {
        return Err(format!("answered another SHA-256 than {sha256}: {text}"));
    }
    Ok(())
}

/// The stored file of `id`, read from the pool, and its status through
/// nginx: both must say `sha256`.
fn check_stored(site: &Site, id: &str, sha256: &str) -> Result<(), String> {
    let path = site.pool.join(id).join("file-1");
    let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let on_disk = sha256_hex(&data);
    if on_disk != sha256 {
        return Err(format!("{} holds other bytes ({on_disk})", path.display()));
    }
    let (status, body) = get(
        site.port,
        &format!("/upload/status?X-Progress-ID={id}"),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("status: {e}"))?;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 || json["state"] != "done" || json["files"][0]["sha256"] != sha256 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// Polls at `every` from `start` until `end`, round the identifiers that
/// `id_of` names; returns when each poll was made (s after `zero`) and its
/// latency in ms, a failed one as 2 s. Paced by deadlines: a poll that
/// comes back late does not shift the schedule, and slots missed while
/// waiting are skipped, not burst.
fn poller(
    port: u16,
    (zero, start, end): (Instant, Instant, Instant),
    every: Duration,
    id_of: impl Fn(usize) -> String,
) -> (Vec<(f64, f64)>, u64) {
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut next = start;
    let mut n = 0;
    loop {
        let now = Instant::now();
        if next < now.checked_sub(every).unwrap_or(now) {
            next = now;
        }
        if next >= end {
            break;
        }
        if next > now {
            thread::sleep(next - now);
        }
        next += every;
        let at = zero.elapsed().as_secs_f64();
        let (ms, ok) = poll_status(port, &id_of(n), POLL_TIMEOUT);
        n += 1;
        if ok {
            latencies.push((at, ms.min(POLL_TIMEOUT.as_secs_f64() * 1000.0)));
        } else {
            failed += 1;
            latencies.push((at, POLL_TIMEOUT.as_secs_f64() * 1000.0));
        }
    }
    (latencies, failed)
}

/// What the pollers saw.
struct Polls {
    /// Every latency in ms, sorted.
    sorted: Vec<f64>,
    /// When each poll was made (s after the start) and its latency.
    timed: Vec<(f64, f64)>,
    failed: u64,
}

impl Polls {
    /// The p99 of each `window` seconds in turn: whether slow answers come
    /// all through, or at the start or the end of the load.
    fn p99_by_window(&self, window: f64) -> Vec<f64> {
        let last = self.timed.iter().map(|p| p.0).fold(0.0, f64::max);
        (0..=(last / window) as usize)
            .map(|w| {
                let mut these: Vec<f64> = self
                    .timed
                    .iter()
                    .filter(|p| (p.0 / window) as usize == w)
                    .map(|p| p.1)
                    .collect();
                these.sort_by(f64::total_cmp);
                (percentile(&these, 0.99) * 10.0).round() / 10.0
            })
            .collect()
    }
}

/// Spreads `threads` pollers evenly over one period from `start` to `end`.
fn run_pollers(
    port: u16,
    start: Instant,
    end: Instant,
    threads: usize,
    every: Duration,
    id_of: impl Fn(usize) -> String + Send + Sync + 'static,
) -> thread::JoinHandle<Polls> {
    let id_of = Arc::new(id_of);
    thread::spawn(move || {
        let handles: Vec<_> = (0..threads)
            .map(|p| {
                let id_of = Arc::clone(&id_of);
                let first = start + every * p as u32 / threads as u32;
                thread::spawn(move || {
                    poller(port, (start, first, end), every, |n| id_of(n * threads + p))
                })
            })
            .collect();
        let mut timed = Vec::new();
        let mut failed = 0;
        for handle in handles {
            let (latencies, f) = handle.join().expect("a poller panicked");
            timed.extend(latencies);
            failed += f;
        }
        let mut sorted: Vec<f64> = timed.iter().map(|p| p.1).collect();
        sorted.sort_by(f64::total_cmp);
        Polls {
            sorted,
            timed,
            failed,
        }
    })
}

/// CPU seconds a process has used, all its threads: user and system, from
/// /proc (in USER_HZ, 100 a second on Linux).
fn cpu_seconds(pid: &str) -> [f64; 2] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name in parentheses may hold spaces: count after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of proc_pid_stat(5), 12 and 13
    // after the name.
    [ticks(11) / 100.0, ticks(12) / 100.0]
}

/// Neither nginx nor the daemon ran out of connections or descriptors:
/// the limits the README gives are enough for this load.
fn assert_limits_held(site: &Site) {
    for log in ["nginx-error.log", "daemon.log"] {
        let text = std::fs::read_to_string(site.path(log)).unwrap_or_default();
        for sign in [
            "worker_connections are not enough",
            "Too many open files",
            "exceed open file resource limit",
        ] {
            assert!(
                !text.contains(sign),
                "{log} says {sign:?}:\n{}",
                logs_tail(site)
            );
        }
    }
}

fn daemon_pid(site: &Site) -> u32 {
    site.processes
        .iter()
        .find(|(name, _)| name == "fileupload daemon")
        .map(|(_, child)| child.id())
        .expect("the daemon was started")
}

fn print_figures(scenario: &str, figures: &[(&str, f64, &str)], p99_by_5s: &[f64]) {
    for (name, value, unit) in figures {
        println!("slow_clients.{scenario}.{name}: {value:.4} {unit}");
    }
    println!("slow_clients.{scenario}.poll_p99_by_5s: {p99_by_5s:?} ms");
    let mut object: serde_json::Map<String, Value> = figures
        .iter()
        .map(|(name, value, _)| ((*name).to_owned(), json!(value)))
        .collect();
    object.insert("poll_p99_by_5s".into(), json!(p99_by_5s));
    println!(
        "slow_clients.json: {}",
        json!({"scenario": scenario, "figures": object})
    );
}

// ---- (a) ---------------------------------------------------------------------

/// The polls begin this long after the first upload: every upload has
/// begun, and made its folder, by then.
const POLLS_AFTER: Duration = Duration::from_secs(2);
const CHUNK: usize = 16 << 10;
const CHUNK_EVERY: Duration = Duration::from_millis(250); // 64 KiB/s
/// How late a chunk may be and still be sent at once.
const CATCH_UP: Duration = Duration::from_secs(1);
/// Distinct blocks the uploads' bytes are made of, so that the client
/// spends its CPU copying, not generating.
const BLOCKS: usize = 64;

/// Chunk `k` of upload `i`: a shared random block, stamped with both, so
/// that no two chunks of any two uploads are the same bytes.
fn chunk_of(blocks: &[Vec<u8>], i: usize, k: usize, out: &mut [u8]) {
    out.copy_from_slice(&blocks[(i * 7 + k) % blocks.len()]);
    out[..8].copy_from_slice(&(i as u64).to_le_bytes());
    out[8..16].copy_from_slice(&(k as u64).to_le_bytes());
}

/// One upload, `chunks` chunks of 16 KiB each sent at its deadline from
/// `first`; gives up at `give_up`. Returns the SHA-256 of what it sent,
/// once the answer says the same, how long after its last byte the answer
/// came, and how far behind its schedule its last chunk went.
///
/// Like a client on a slow link, it never sends faster than 64 KiB/s: a
/// chunk late by less than [`CATCH_UP`] (the machine was busy) is made up
/// for, but one the server held back longer (it stopped reading) resets
/// the schedule, so that a queued upload cannot burst through later.
fn trickle(
    port: u16,
    i: usize,
    chunks: usize,
    blocks: &[Vec<u8>],
    first: Instant,
    give_up: Instant,
) -> Result<(String, Duration, Duration), String> {
    // These threads stand in for remote clients; on loopback the sender's
    // thread does the TCP work of both ends, which a real client never
    // takes from the server (as in tests/load.rs).
    let _ = rustix::process::setpriority_process(None, 19);
    let id = format!("slow-a-{i}");
    let head = form_head(&id);
    let tail = form_tail();
    let body_len = head.len() + chunks * CHUNK + tail.len();
    let wait = |until: Instant| {
        let now = Instant::now();
        if until > now {
            thread::sleep(until - now);
        }
    };
    wait(first);
    let mut stream = connect(port, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request_head(&id, body_len).as_bytes())
        .map_err(|e| format!("sending the head: {e}"))?;
    let mut sha = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 256);
    let mut next = first;
    for k in 0..chunks {
        if Instant::now() > next + CATCH_UP {
            next = Instant::now();
        }
        wait(next);
        next += CHUNK_EVERY;
        if Instant::now() > give_up {
            return Err(format!("only {k} of {chunks} chunks sent in time"));
        }
        chunk_of(blocks, i, k, &mut chunk);
        sha.update(&chunk);
        out.clear();
        if k == 0 {
            out.extend_from_slice(head.as_bytes());
        }
        out.extend_from_slice(&chunk);
        if k + 1 == chunks {
            out.extend_from_slice(tail.as_bytes());
        }
        stream.write_all(&out).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("chunk {k} of {chunks}: the server took nothing for 10 s")
            }
            _ => format!("sending chunk {k} of {chunks}: {e}"),
        })?;
    }
    let sha256: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let left = give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let last_byte = Instant::now();
    let lag = last_byte.saturating_duration_since(first + CHUNK_EVERY * (chunks as u32 - 1));
    check_answer(common::load::read_response(stream), &sha256)?;
    Ok((sha256, last_byte.elapsed(), lag))
}

#[test]
fn a_thousand_trickling_uploads_and_500_polls_a_second() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let uploads = setting("SLOW_CLIENTS_UPLOADS", 1000) as usize;
    let seconds = setting("SLOW_CLIENTS_SECONDS", 30);
    let chunks = (seconds * 4) as usize; // 120 chunks of 16 KiB: 1.875 MiB
    let pollers = 50;
    let poll_every = Duration::from_millis(100); // 50 pollers: 500/s
    // A socket per upload and per poll in flight, and some to spare.
    raise_open_files(uploads as u64 + 2 * pollers as u64 + 1024);

    let mut site = Site::new();
    start_nginx_with_the_daemon(&mut site);
    let port = site.port;
    let pid = daemon_pid(&site);
    let idle_rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let cpu = |site: &Site| {
        let nginx_master = site
            .processes
            .iter()
            .find(|(name, _)| name == "nginx")
            .map(|(_, child)| child.id())
            .expect("nginx was started");
        let workers =
            std::fs::read_to_string(format!("/proc/{nginx_master}/task/{nginx_master}/children"))
                .unwrap_or_default();
        let nginx: f64 = workers
            .split_whitespace()
            .map(|w| cpu_seconds(w).iter().sum::<f64>())
            .sum();
        let daemon = cpu_seconds(&pid.to_string());
        let client = cpu_seconds("self");
        [daemon[0], daemon[1], nginx, client[0] + client[1]]
    };
    let cpu_before = cpu(&site);

    let mut rng = Xorshift(0x51_0C11E);
    let blocks: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..BLOCKS)
            .map(|_| {
                let mut block = vec![0u8; CHUNK];
                rng.fill(&mut block);
                block
            })
            .collect(),
    );
    // Everything starts a second from now, once every thread exists; the
    // uploads' chunks are spread evenly over each 250 ms.
    let start = Instant::now() + Duration::from_secs(1);
    let sending_ends = start + CHUNK_EVERY * chunks as u32;
    let give_up = sending_ends + Duration::from_secs(20);
    let uploaders: Vec<_> = (0..uploads)
        .map(|i| {
            let blocks = Arc::clone(&blocks);
            let first = start + CHUNK_EVERY * i as u32 / uploads as u32;
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || trickle(port, i, chunks, &blocks, first, give_up))
                .expect("starting an upload thread")
        })
        .collect();
    let polls = run_pollers(
        port,
        start + POLLS_AFTER,
        sending_ends,
        pollers,
        poll_every,
        move |n| format!("slow-a-{}", n * 7919 % uploads),
    );

    let mut peak_rss_kib = 0;
    while !polls.is_finished() || uploaders.iter().any(|u| !u.is_finished()) {
        thread::sleep(Duration::from_millis(250));
        peak_rss_kib = proc_status_kib(pid, "VmHWM").unwrap_or(peak_rss_kib);
        assert!(
            Instant::now() < give_up + Duration::from_secs(30),
            "the load did not end in time"
        );
    }
    let polls = polls.join().expect("the pollers panicked");
    let (latencies, polls_failed) = (&polls.sorted, polls.failed);
    let cpu_after = cpu(&site);
    let used = |i: usize| cpu_after[i] - cpu_before[i];
    let mut failures = Vec::new();
    let mut sent = Vec::new();
    let mut answer_ms = Vec::new();
    let mut lag_ms: f64 = 0.0;
    for (i, uploader) in uploaders.into_iter().enumerate() {
        match uploader.join().expect("an upload thread panicked") {
            Ok((sha256, delay, lag)) => {
                sent.push((i, sha256));
                answer_ms.push(delay.as_secs_f64() * 1000.0);
                lag_ms = lag_ms.max(lag.as_secs_f64() * 1000.0);
            }
            Err(e) => failures.push(format!("slow-a-{i}: {e}")),
        }
    }
    answer_ms.sort_by(f64::total_cmp);
    let answered_ok = sent.len();
    let mut mismatched = Vec::new();
    for (i, sha256) in &sent {
        if let Err(e) = check_stored(&site, &format!("slow-a-{i}"), sha256) {
            mismatched.push(format!("slow-a-{i}: {e}"));
        }
    }

    let poll_seconds = (seconds as f64 - POLLS_AFTER.as_secs_f64()).max(1.0);
    let figures = [
        ("uploads", uploads as f64, ""),
        ("uploads_ok", (answered_ok - mismatched.len()) as f64, ""),
        ("uploads_failed", failures.len() as f64, ""),
        ("sha256_mismatches", mismatched.len() as f64, ""),
        (
            "upload_size",
            (chunks * CHUNK) as f64 / (1 << 20) as f64,
            "MiB",
        ),
        ("upload_rate", (CHUNK * 4) as f64 / 1024.0, "KiB/s"),
        (
            "answer_after_last_byte_p50",
            percentile(&answer_ms, 0.50),
            "ms",
        ),
        (
            "answer_after_last_byte_max",
            percentile(&answer_ms, 1.0),
            "ms",
        ),
        ("send_lag_max", lag_ms, "ms"),
        ("seconds", poll_seconds, "s"),
        ("polls", latencies.len() as f64, ""),
        (
            "polls_per_second",
            latencies.len() as f64 / poll_seconds,
            "/s",
        ),
        ("polls_failed", polls_failed as f64, ""),
        ("poll_p50", percentile(latencies, 0.50), "ms"),
        ("poll_p99", percentile(latencies, 0.99), "ms"),
        ("poll_max", percentile(latencies, 1.0), "ms"),
        ("daemon_cpu_user", used(0), "s"),
        ("daemon_cpu_system", used(1), "s"),
        ("nginx_workers_cpu", used(2), "s"),
        ("client_cpu", used(3), "s"),
        ("daemon_idle_rss", idle_rss_kib as f64 / 1024.0, "MiB"),
        ("daemon_peak_rss", peak_rss_kib as f64 / 1024.0, "MiB"),
        (
            "daemon_rss_per_upload",
            peak_rss_kib.saturating_sub(idle_rss_kib) as f64 / uploads as f64,
            "KiB",
        ),
    ];
    print_figures("a", &figures, &polls.p99_by_window(5.0));
    assert_limits_held(&site);

    assert!(
        failures.is_empty(),
        "{} of {uploads} uploads failed; the first:\n{}\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n"),
        logs_tail(&site)
    );
    assert!(
        mismatched.is_empty(),
        "{} uploads stored or reported other bytes than were sent:\n{}",
        mismatched.len(),
        mismatched[..mismatched.len().min(10)].join("\n")
    );
    // Latency is the benchmark's to judge (bench/results.md has the p99
    // against the 50 ms goal); here, polls are answered: a stalled daemon
    // answers none within 2 s. A few may wait on the file system (see the
    // top of this file).
    assert!(
        polls_failed as usize * 200 <= latencies.len(),
        "{polls_failed} of {} status polls failed or took longer than 2 s, under {uploads} \
         trickling uploads (p99 {:.1} ms)",
        latencies.len(),
        percentile(latencies, 0.99)
    );
    // The pollers ran through the load. A poller skips the slots it is
    // more than an interval late for, so the count falls with latency,
    // which is the benchmark's to judge: in this debug build on a busy
    // 2-core machine, to 0.89 of the plan (CI, 2026-12-03), against
    // 0.93-0.99 alone. A stalled daemon leaves a poller one poll per 2 s,
    // a twentieth of the plan.
    let planned = poll_seconds * 1000.0 / poll_every.as_millis() as f64 * pollers as f64;
    assert!(
        latencies.len() as f64 >= 0.5 * planned,
        "only {} of {planned} status polls were made",
        latencies.len()
    );
}

// ---- (b) ---------------------------------------------------------------------

/// Connects to the daemon's socket without blocking (a daemon that
/// accepts nothing fills its backlog, and a blocking connect would then
/// wait for ever); retries for up to a second.
fn connect_idle(socket: &Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let address = SocketAddrUnix::new(socket).ok()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .ok()?;
        match rustix::net::connect(&fd, &address) {
            Ok(()) => return Some(fd),
            Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    }
}

/// A 64 KiB upload through nginx: how long it took, once its answer and
/// the file on disk hold exactly what was sent.
fn small_upload(site: &Site, id: &str, seed: u64) -> Result<Duration, String> {
    let data = common::random_bytes(64 << 10, seed);
    let mut body = form_head(id).into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(form_tail().as_bytes());
    let started = Instant::now();
    let mut stream = connect(site.port, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    for timeout in [
        stream.set_read_timeout(Some(Duration::from_secs(5))),
        stream.set_write_timeout(Some(Duration::from_secs(5))),
    ] {
        timeout.map_err(|e| e.to_string())?;
    }
    stream
        .write_all(request_head(id, body.len()).as_bytes())
        .and_then(|()| stream.write_all(&body))
        .map_err(|e| format!("sending: {e}"))?;
    check_answer(common::load::read_response(stream), &sha256_hex(&data))?;
    let took = started.elapsed();
    let path = site.pool.join(id).join("file-1");
    let stored = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if stored != data {
        return Err(format!("{} holds other bytes", path.display()));
    }
    Ok(took)
}

#[test]
fn slow_and_idle_connections_do_not_starve_polls() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const SLOW: usize = 200;
    const IDLE: usize = 200;
    const BYTE_EVERY: Duration = Duration::from_secs(2);
    const POLL_SECONDS: u32 = 10;
    const SMALL_LIMIT: Duration = Duration::from_secs(1);
    // The test's bound: the old daemon never finished one.
    const SMALL_LIVENESS: Duration = Duration::from_secs(5);
    raise_open_files((SLOW + IDLE) as u64 + 1024);

    let mut site = Site::new();
    let socket = start_nginx_with_the_daemon(&mut site);
    let port = site.port;

    // The slow uploads: a head, then one byte of a 1 MiB form every 2 s,
    // all from one thread, until told to stop (or 60 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut streams = Vec::new();
            let mut refused = Vec::new();
            for i in 0..SLOW {
                let id = format!("slow-b-{i}");
                let mut body = form_head(&id).into_bytes();
                body.resize(1 << 20, b'x');
                let opened = connect(port, Duration::from_secs(5)).and_then(|mut s| {
                    s.set_write_timeout(Some(Duration::from_secs(1)))?;
                    s.write_all(request_head(&id, body.len() + form_tail().len()).as_bytes())?;
                    Ok(s)
                });
                match opened {
                    Ok(s) => streams.push(Some((s, body))),
                    Err(e) => refused.push(format!("{id}: {e}")),
                }
            }
            let ends = Instant::now() + Duration::from_secs(60);
            let mut next = Instant::now();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < ends {
                if Instant::now() >= next {
                    for slot in streams.iter_mut() {
                        if let Some((stream, body)) = slot
                            && stream.write_all(&body[sent..sent + 1]).is_err()
                        {
                            *slot = None;
                        }
                    }
                    sent += 1;
                    next += BYTE_EVERY;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let open = streams.iter().filter(|s| s.is_some()).count();
            (open, refused)
        })
    };
    let idle: Vec<_> = (0..IDLE).filter_map(|_| connect_idle(&socket)).collect();
    let idle_connected = idle.len();
    // Two bytes in: every slow upload has reached the daemon through nginx.
    thread::sleep(BYTE_EVERY + Duration::from_secs(1));

    let start = Instant::now();
    let end = start + Duration::from_secs(POLL_SECONDS.into());
    let polls = run_pollers(port, start, end, 10, Duration::from_millis(100), |n| {
        if n % 10 == 9 {
            format!("small-b-{}", n / 10 % 3)
        } else {
            format!("slow-b-{}", n * 7 % SLOW)
        }
    });
    let mut small = Vec::new();
    for (n, at) in [2u64, 5, 8].into_iter().enumerate() {
        let when = start + Duration::from_secs(at);
        thread::sleep(when.saturating_duration_since(Instant::now()));
        small.push(small_upload(&site, &format!("small-b-{n}"), 77 + n as u64));
    }
    let polls = polls.join().expect("the pollers panicked");
    let (latencies, polls_failed) = (&polls.sorted, polls.failed);
    stop.store(true, Ordering::Relaxed);
    let (slow_open, refused) = slow.join().expect("the slow uploads' thread panicked");
    drop(idle);

    let small_ms: Vec<f64> = small
        .iter()
        .map(|r| match r {
            Ok(took) => took.as_secs_f64() * 1000.0,
            Err(_) => f64::NAN,
        })
        .collect();
    let worst_small = small_ms.iter().copied().fold(0.0, f64::max);
    let figures = [
        ("slow_connections", SLOW as f64, ""),
        ("slow_connections_open_at_end", slow_open as f64, ""),
        ("idle_connections", idle_connected as f64, ""),
        ("polls", latencies.len() as f64, ""),
        (
            "polls_per_second",
            latencies.len() as f64 / f64::from(POLL_SECONDS),
            "/s",
        ),
        ("polls_failed", polls_failed as f64, ""),
        ("poll_p50", percentile(latencies, 0.50), "ms"),
        ("poll_p99", percentile(latencies, 0.99), "ms"),
        ("poll_max", percentile(latencies, 1.0), "ms"),
        (
            "small_uploads_ok",
            small.iter().filter(|r| r.is_ok()).count() as f64,
            "",
        ),
        (
            "small_upload_max",
            if small.iter().all(Result::is_ok) {
                worst_small
            } else {
                f64::NAN
            },
            "ms",
        ),
    ];
    print_figures("b", &figures, &polls.p99_by_window(5.0));
    assert_limits_held(&site);

    assert!(
        refused.is_empty(),
        "nginx refused slow uploads: {refused:?}"
    );
    assert_eq!(
        idle_connected, IDLE,
        "only {idle_connected} of {IDLE} idle connections to the daemon's socket could connect"
    );
    // Latency is the benchmark's to judge (the p99 against the 50 ms
    // goal); here, every poll is answered within 2 s.
    assert_eq!(
        polls_failed,
        0,
        "status polls failed or took longer than 2 s, with {SLOW} slow and {idle_connected} \
         idle connections open (p99 {:.1} ms)\n{}",
        percentile(latencies, 0.99),
        logs_tail(&site)
    );
    assert!(
        latencies.len() >= 900,
        "only {} of 1000 status polls were made",
        latencies.len()
    );
    for (n, result) in small.iter().enumerate() {
        match result {
            Ok(took) => assert!(
                *took < SMALL_LIVENESS,
                "small upload {n} took {took:?} (the goal is {SMALL_LIMIT:?}, the benchmark's)"
            ),
            Err(e) => panic!("small upload {n} failed: {e}\n{}", logs_tail(&site)),
        }
    }
    assert_eq!(
        slow_open, SLOW,
        "slow uploads were cut off within {POLL_SECONDS} s, before any timeout the README states"
    );
}
