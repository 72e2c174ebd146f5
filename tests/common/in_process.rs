//! What the in-process tests (the handler called directly, no binary, no
//! transport) share: an answer collected in memory, and a body whose bytes
//! arrive when the test says.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use fileupload::http::{Body, HttpError, Request, ResponseWriter};
use fileupload::{Config, Service, handler};
use serde_json::Value;

/// An answer, collected.
#[derive(Default, Debug)]
pub struct Answer {
    /// A HEAD answer has no body: its error code cannot be checked.
    pub head: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ResponseWriter for Answer {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<&mut dyn Write> {
        self.status = status;
        self.headers = headers.to_vec();
        Ok(&mut self.body)
    }
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Status, headers and body, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// A body whose bytes come from a channel, so that a test decides when
/// they arrive; a sent `Err` is a read error (a dropped connection), a
/// dropped sender the end.
pub struct Fed(pub mpsc::Receiver<io::Result<Vec<u8>>>, pub Vec<u8>);

impl Read for Fed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1.is_empty() {
            match self.0.recv() {
                Ok(chunk) => self.1 = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}

/// A client's connection: an error is the connection's, with no reason
/// beyond it.
impl Body for Fed {
    fn failure(&mut self) -> Option<HttpError> {
        None
    }
}

/// One request through the handler, as a CGI program at
/// `/cgi-bin/fileupload` would get it: `headers` are HTTP header names
/// (`Content-Type` and `Content-Length` become their CGI variables).
pub fn send(
    config: &Config,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &mut dyn Body,
) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut vars = vec![
        ("REQUEST_METHOD".to_owned(), method.to_owned()),
        ("SCRIPT_NAME".to_owned(), "/cgi-bin/fileupload".to_owned()),
        (
            "PATH_INFO".to_owned(),
            path.strip_prefix("/cgi-bin/fileupload")
                .unwrap_or(path)
                .to_owned(),
        ),
        ("QUERY_STRING".to_owned(), query.to_owned()),
    ];
    for (name, value) in headers {
        let var = match name.to_ascii_lowercase().as_str() {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            _ => format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")),
        };
        vars.push((var, value.to_string()));
    }
    let chunked = headers.iter().any(|(n, _)| *n == "Transfer-Encoding");
    let mut request = Request::new(vars, body, chunked);
    let mut answer = Answer {
        head: method == "HEAD",
        ..Answer::default()
    };
    let service = Service::new(config.clone());
    handler::handle(&service, &mut request, &mut answer).unwrap();
    answer
}
