//! Identifier verification: whatever passes can only name a folder inside
//! the pool, and is the text that was given.
#![no_main]
use fileupload::{Key, verify_identifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let key = Key::new(*b"fuzz key");
    for key in [None, key.as_ref()] {
        if let Ok(id) = verify_identifier(&text, key) {
            let name = id.name();
            assert!((1..=64).contains(&name.len()), "{text:?}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{text:?}");
            assert_eq!(id.as_str(), text);
        }
    }
});
