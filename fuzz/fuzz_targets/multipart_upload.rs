//! The whole upload path: a request body, parsed and streamed into a pool.
//! Whatever the body, the answer is JSON, and either the upload is done
//! with files whose SHA-256 matches their bytes, or no file is left.
#![no_main]
mod common;

use std::io::{self, Write};
use fileupload::http::{Request, ResponseWriter};
use fileupload::{State, handler, verify_identifier};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Collect {
    status: u16,
    body: Vec<u8>,
}

impl ResponseWriter for Collect {
    fn start(&mut self, status: u16, _: &[(String, String)]) -> io::Result<&mut dyn Write> {
        self.status = status;
        Ok(&mut self.body)
    }
}

fuzz_target!(|data: &[u8]| {
    // An optional first line `CT:<content type>`; else a fixed boundary.
    let (content_type, body) = match data.strip_prefix(b"CT:") {
        Some(rest) => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let body = rest.get(end + 1..).unwrap_or_default();
            (String::from_utf8_lossy(&rest[..end]).into_owned(), body)
        }
        None => ("multipart/form-data; boundary=fuzz".to_owned(), data),
    };
    let config = common::config();
    let vars: Vec<(String, String)> = [
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/upload"),
        ("QUERY_STRING", "X-Progress-ID=fuzz"),
        ("CONTENT_TYPE", content_type.as_str()),
        ("CONTENT_LENGTH", &body.len().to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut input = body;
    let mut request = Request::new(vars, &mut input, false);
    let mut answer = Collect::default();
    let service = fileupload::Service::new(config.clone());
    handler::handle(&service, &mut request, &mut answer).expect("answer written");
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    let id = verify_identifier("fuzz", None).expect("valid id");
    let pool = config.pool();
    let status = pool.status(&id).expect("status readable");
    let bucket = config.directory.join("fuzz");
    let stored = std::fs::read_dir(&bucket)
        .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("file-")).count())
        .unwrap_or(0);
    if answer.status == 200 {
        assert_eq!(status.state, State::Done);
        assert_eq!(json["state"], "done");
        for file in status.files() {
            let bytes = std::fs::read(&file.path).expect("stored file");
            let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(file.sha256.as_deref(), Some(digest.as_str()));
            assert_eq!(file.size, bytes.len() as u64);
        }
    } else {
        assert_eq!(json["state"], "error");
        assert_eq!(stored, 0, "a failed upload left files");
    }
    pool.clear(&id).expect("clear");
});
