//! Configuration parsing: as environment variables (`NAME=value` lines)
//! and as a config file (the same text). Never a panic; every error names
//! where its value came from.
#![no_main]
use std::sync::OnceLock;

use fileupload::Config;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect();
    let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
    if let Err(err) = Config::load(&[], lookup) {
        assert!(!err.to_string().is_empty());
    }
    let file = scratch().path().join("fileupload.conf");
    std::fs::write(&file, data).expect("write config");
    let path = file.to_string_lossy().into_owned();
    let _ = Config::load(&[("config", path)], |_| None);
});
