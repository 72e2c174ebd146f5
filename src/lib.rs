//! `fileupload` receives `multipart/form-data` uploads into a pool
//! directory shared by processes and hosts, and answers progress queries
//! about them. It is a CGI program first; this library is its engine and
//! the API applications use to work with uploads.
//!
//! The request flows one way: a transport ([`cgi`], [`fastcgi`], [`serve`])
//! builds an
//! [`http::Request`], the [`handler`] routes it (with the [`Service`] the
//! transport built once: the configuration and its pool), the [`upload`] driver
//! streams it through the [`multipart`] parser into the [`pool`] (with the
//! counted body, progress and cancellation of [`receiving`]), and the
//! answer goes back through an [`http::ResponseWriter`]. A resumable upload
//! (tus) takes the same path through [`resumable`], its chunks streamed by
//! the same [`receiving`] machinery into the same pool.
//!
//! For applications, the original's API:
//!
//! ```
//! use fileupload::{Config, State};
//! use fileupload::identifier::{create_identifier, verify_identifier};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = Config::load(&[("directory", dir.path().to_str().unwrap().into())], |_| None).unwrap();
//! let id = create_identifier(config.upload_key.as_ref()).unwrap();   // create_identifier()
//! let id = verify_identifier(id.as_str(), config.upload_key.as_ref()).unwrap(); // verify_identifier()
//! let pool = config.pool();
//! let bucket = pool.bucket(&id);                                      // access_upload_bucket()
//! assert_eq!(bucket.status().unwrap().state, State::Starting);        // get_status()
//! assert!(!bucket.is_complete().unwrap());                            // is_complete()
//! assert_eq!(bucket.filename().unwrap(), None);                       // get_filename()
//! assert!(!bucket.clear().unwrap());                                  // clear_upload()
//! ```

#![forbid(unsafe_code)]

/// Writes one line to stderr (the web server's error log, or the journal),
/// prefixed `fileupload: `. Unlike `eprintln!`, it cannot panic: a closed or
/// broken stderr must not take a request, or the daemon, down with it.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "fileupload: {}", format_args!($($arg)*));
    }};
}

pub mod app;
pub mod blocks;
pub mod cgi;
pub mod checksum;
pub mod checksums;
pub mod config;
pub mod cors;
pub mod digest_fields;
pub mod error_code;
pub mod fastcgi;
pub mod handler;
pub mod hashing;
pub mod hooks;
pub mod http;
pub mod identifier;
mod live_statuses;
pub mod multipart;
pub mod policy;
pub mod pool;
pub mod receiving;
pub mod resumable;
pub mod serve;
pub mod service;
pub mod spares;
pub mod status;
pub mod transfer_encoding;
pub mod upload;
pub mod vars;

pub use config::Config;
pub use error_code::ErrorCode;
pub use identifier::{
    Identifier, Key, create_identifier, create_identifier_with_policy, verify_identifier,
};
pub use policy::Policy;
pub use pool::{Bucket, Pool, PoolError};
pub use service::Service;
pub use status::{FileInfo, State, Status};

/// The README's Rust examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
