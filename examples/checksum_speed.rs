//! Each checksum's in-memory speed, through the same `checksums::Hasher` the
//! receiver feeds: the floor `bench/run` holds each checksum's upload to.
//!
//! `cargo run --release --example checksum_speed -- [MIB] [ROUNDS]` hashes
//! MIB mebibytes (default 1024) of random bytes, fed in 1 MiB pieces as the
//! hashing thread gets them, from a 16 MiB buffer (larger than the caches,
//! as a stream's bytes are), and prints one line per checksum:
//! `name bytes_per_second`, the best of ROUNDS (default 3). The bytes come
//! from the memory only: no file and no pipe is in the figure.

use std::process::ExitCode;
use std::time::Instant;

use fileupload::checksums::{Checksums, Hasher, Sum};

const PIECE: usize = 1 << 20;
const BUFFER: usize = 16 << 20;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mib = match args.next().map(|a| a.parse::<usize>()) {
        None => 1024,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return usage(),
    };
    let rounds = match args.next().map(|a| a.parse::<usize>()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return usage(),
    };
    let mut buffer = vec![0u8; BUFFER];
    if let Err(e) = getrandom::fill(&mut buffer) {
        eprintln!("checksum_speed: no random bytes: {e}");
        return ExitCode::FAILURE;
    }
    for sum in Sum::ALL {
        let best = (0..rounds)
            .map(|_| seconds_to_hash(sum, &buffer, mib))
            .fold(f64::INFINITY, f64::min);
        println!("{} {:.0}", sum.name(), (mib * PIECE) as f64 / best);
    }
    ExitCode::SUCCESS
}

fn seconds_to_hash(sum: Sum, buffer: &[u8], mib: usize) -> f64 {
    let mut hasher = Hasher::new(Checksums::NONE.with(sum));
    let start = Instant::now();
    for piece in buffer.chunks(PIECE).cycle().take(mib) {
        hasher.update(piece);
    }
    // Finishing is part of the work, and keeps the loop from being
    // optimised away.
    let digest = hasher.finish();
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    seconds
}

fn usage() -> ExitCode {
    eprintln!("usage: checksum_speed [MIB] [ROUNDS] (both positive integers)");
    ExitCode::from(2)
}
