//! The FastCGI record stream: whatever a peer sends on a connection, the
//! server answers with well-formed records (or nothing) and never panics.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let received = fileupload::fastcgi::testing::serve_bytes(common::config().clone(), data).expect("socket pair");
    // Every byte sent back belongs to a whole record of version 1.
    let mut rest = &received[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "a cut record header");
        assert_eq!(rest[0], 1, "record version");
        let length = usize::from(u16::from_be_bytes([rest[4], rest[5]])) + usize::from(rest[6]);
        assert!(rest.len() >= 8 + length, "a cut record");
        rest = &rest[8 + length..];
    }
});
