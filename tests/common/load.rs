//! What the load tests (`tests/load.rs`, `tests/slow_clients.rs`) share:
//! raw HTTP/1.1 over std sockets (no client library between the test and
//! what nginx sees), deterministic bytes, percentiles, the daemon's memory
//! from /proc, and the file-descriptor limit a thousand sockets need.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Deterministic bytes from a seed, made as they are sent.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// One HTTP/1.1 answer read from `stream`: status and body.
pub fn read_response(stream: TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the answer's headers were cut short",
            ));
        }
        if line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

/// A GET on a fresh connection to 127.0.0.1:`port`, every step bounded by
/// `timeout` (connect, send, each read).
pub fn get(port: u16, target: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    read_response(stream)
}

/// A status poll as a page makes it: its latency in milliseconds, or None
/// when it failed (no answer within `timeout`, not 200, not a status
/// document with a state).
pub fn poll_status(port: u16, id: &str, timeout: Duration) -> (f64, bool) {
    let start = Instant::now();
    let answer = get(port, &format!("/upload/status?X-Progress-ID={id}"), timeout);
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    let valid = matches!(&answer, Ok((200, body))
        if serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["state"].is_string()));
    (elapsed, valid)
}

/// The value at fraction `p` of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A `kB` line of /proc/PID/status (`VmHWM`, the peak resident set;
/// `VmRSS`, the current one), in KiB; None once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Raises this process's soft limit on open files to `needed` (a client
/// holding a thousand sockets needs more than the usual 1024), or fails
/// saying why.
pub fn raise_open_files(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return;
    }
    assert!(
        limit.maximum.is_none_or(|hard| hard >= needed),
        "this test holds about {needed} sockets open, but the hard limit on open files is {:?}: \
         raise it (ulimit -Hn {needed}, or LimitNOFILE= for a service)",
        limit.maximum
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .unwrap_or_else(|e| panic!("raising the open-file limit to {needed}: {e}"));
}
