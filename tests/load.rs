//! Load through nginx and the FastCGI daemon, configured as the examples
//! configure them: 64 uploads at once, of random sizes, plus 500 status
//! polls a second, for a bounded time. Every stored file's SHA-256 is
//! checked against what was sent; every status answer must be whole JSON.
//!
//! The test command runs 10 s with uploads up to 16 MiB. The longer run:
//!
//!   LOAD_SECONDS=60 LOAD_MAX_MIB=64 cargo test --release --test load -- --nocapture
//!
//! It prints its figures (uploads completed, failed, mismatched, invalid
//! status answers, status latency p50/p99, the daemon's peak RSS).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::load::{Xorshift, percentile, proc_status_kib, read_response};
use common::site::{Site, start_nginx_with_the_daemon};

const UPLOADERS: usize = 64;
const POLLERS: usize = 100;
const POLL_EVERY: Duration = Duration::from_millis(200); // 100 pollers: 500/s

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A body to send and the SHA-256 of its file. The client makes a few
/// once, so that during the run it only copies bytes into sockets and does
/// not compete with the server for the CPU it is measuring.
struct Body {
    size: usize,
    bytes: Vec<u8>,
    sha256: String,
}

const BOUNDARY: &str = "loadBoundary7MA4YWxk";

fn make_bodies(max_mib: u64) -> Vec<Body> {
    let mut rng = Xorshift(0x5EED);
    (0..12)
        .map(|_| {
            let mut word = [0u8; 8];
            rng.fill(&mut word);
            let size = (u64::from_le_bytes(word) % (max_mib << 20)) as usize + 1;
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let sha256 = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            let mut bytes = format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"load.bin\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
            Body { size, bytes, sha256 }
        })
        .collect()
}

/// Uploads one body; returns whether the answer's SHA-256 matched.
fn upload(port: u16, id: &str, body: &Body) -> Result<bool, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "POST /upload?X-Progress-ID={id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.bytes.len()
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    stream.write_all(&body.bytes).map_err(|e| e.to_string())?;
    let (status, answer) = read_response(stream).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    Ok(json["files"][0]["sha256"] == body.sha256.as_str())
}

#[test]
fn sixty_four_uploads_and_500_status_polls_a_second() {
    let seconds = setting("LOAD_SECONDS", 10);
    let max_mib = setting("LOAD_MAX_MIB", 16);
    let mut site = Site::new();
    site.max_size_mib = max_mib + 1;
    site.server_limit_mib = max_mib + 2;
    // The daemon's defaults, as the README leaves them: uploads and idle
    // connections hold none of its workers.
    start_nginx_with_the_daemon(&mut site);
    let port = site.port;
    let daemon_pid = site.processes[0].1.id();
    let bodies = Arc::new(make_bodies(max_mib));
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let completed = Arc::new(AtomicU64::new(0));
    let mismatched = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let live_ids = Arc::new(Mutex::new(vec![String::from("none-yet")]));
    let mut uploaders = Vec::new();
    for t in 0..UPLOADERS {
        let (completed, mismatched, bytes, failures, live_ids, bodies) = (
            Arc::clone(&completed),
            Arc::clone(&mismatched),
            Arc::clone(&bytes),
            Arc::clone(&failures),
            Arc::clone(&live_ids),
            Arc::clone(&bodies),
        );
        uploaders.push(thread::spawn(move || {
            // These threads stand in for remote browsers. On loopback the
            // sender's thread does the TCP work of both ends, so at normal
            // priority they would take the CPU a real client never takes
            // from the server.
            let _ = rustix::process::setpriority_process(None, 19);
            let mut n = 0;
            while Instant::now() < deadline {
                let body = &bodies[(t * 5 + n) % bodies.len()];
                let id = format!("load-{t}-{n}");
                live_ids.lock().unwrap().push(id.clone());
                match upload(port, &id, body) {
                    Ok(true) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(body.size as u64, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        mismatched.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{id} ({} bytes): {e}", body.size)),
                }
                // Keep the disk bounded: clear what was checked.
                let _ = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                    write!(s, "GET /upload?X-Progress-ID={id}&clear HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    read_response(s)
                });
                n += 1;
            }
        }));
    }
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let invalid = Arc::new(AtomicU64::new(0));
    let mut pollers = Vec::new();
    for p in 0..POLLERS {
        let (latencies, invalid, live_ids) = (
            Arc::clone(&latencies),
            Arc::clone(&invalid),
            Arc::clone(&live_ids),
        );
        pollers.push(thread::spawn(move || {
            let mut next = Instant::now() + POLL_EVERY * p as u32 / POLLERS as u32;
            let mut k = p;
            while Instant::now() < deadline {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
                next += POLL_EVERY;
                let id = {
                    let ids = live_ids.lock().unwrap();
                    ids[ids.len().saturating_sub(1 + k % UPLOADERS)].clone()
                };
                k += 7;
                let start = Instant::now();
                let answer = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                    write!(s, "GET /upload/status?X-Progress-ID={id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    read_response(s)
                });
                let elapsed = start.elapsed().as_secs_f64() * 1000.0;
                let valid = matches!(&answer, Ok((200, body))
                    if serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["state"].is_string()));
                if !valid {
                    invalid.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().push(elapsed);
            }
        }));
    }
    let mut peak_rss_kib = 0u64;
    let mut last_probe = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        if last_probe.elapsed() > Duration::from_millis(500) {
            last_probe = Instant::now();
            peak_rss_kib = proc_status_kib(daemon_pid, "VmHWM").unwrap_or(peak_rss_kib);
        }
    }
    for t in pollers {
        t.join().unwrap();
    }
    for t in uploaders {
        t.join().unwrap();
    }
    let mut sorted = latencies.lock().unwrap().clone();
    sorted.sort_by(f64::total_cmp);
    let failures = failures.lock().unwrap().clone();
    let report = [
        ("load.seconds", seconds as f64, "s"),
        ("load.concurrent_uploads", UPLOADERS as f64, ""),
        ("load.max_upload", max_mib as f64, "MiB"),
        (
            "load.uploads_completed",
            completed.load(Ordering::Relaxed) as f64,
            "",
        ),
        ("load.uploads_failed", failures.len() as f64, ""),
        (
            "load.sha256_mismatches",
            mismatched.load(Ordering::Relaxed) as f64,
            "",
        ),
        (
            "load.bytes_stored",
            bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            "MiB",
        ),
        ("load.status_polls", sorted.len() as f64, ""),
        (
            "load.status_polls_per_second",
            sorted.len() as f64 / seconds as f64,
            "/s",
        ),
        (
            "load.status_not_json",
            invalid.load(Ordering::Relaxed) as f64,
            "",
        ),
        ("load.status_p50", percentile(&sorted, 0.50), "ms"),
        ("load.status_p99", percentile(&sorted, 0.99), "ms"),
        ("load.daemon_peak_rss", peak_rss_kib as f64 / 1024.0, "MiB"),
    ];
    for (name, value, unit) in report {
        println!("{name}: {value:.4} {unit}");
    }
    assert!(
        failures.is_empty(),
        "{} uploads failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        mismatched.load(Ordering::Relaxed),
        0,
        "stored bytes differ from sent ones"
    );
    assert_eq!(
        invalid.load(Ordering::Relaxed),
        0,
        "status answers that were not valid JSON"
    );
    assert!(
        completed.load(Ordering::Relaxed) >= UPLOADERS as u64,
        "too few uploads completed"
    );
    assert!(
        sorted.len() as u64 >= 400 * seconds,
        "only {} polls in {seconds} s",
        sorted.len()
    );
}
