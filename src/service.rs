//! What a process serves every request with, built once: the settled
//! configuration and the pool it names.
//!
//! Built by the transport when it starts (the CGI program for its one
//! request, the development server and the FastCGI daemon for all of
//! theirs, the daemon once more for each distinct set of `FILEUPLOAD_*`
//! parameters, cached), and handed to [`crate::handler`] with each
//! request. Nothing in it is rebuilt or re-read per request, and the pool
//! can never disagree with the configuration: both come from here.

use std::sync::Mutex;

use crate::config::Config;
use crate::pool::Pool;

/// A configuration and its pool.
#[derive(Debug)]
pub struct Service {
    config: Config,
    pool: Pool,
    /// `on_complete` documents kept until the answer is out, for a process
    /// that ends with its answer (CGI); `None`: hooks run on threads.
    deferred_hooks: Option<Mutex<Vec<Vec<u8>>>>,
}

impl Service {
    pub fn new(config: Config) -> Service {
        let pool = config.pool();
        Service {
            config,
            pool,
            deferred_hooks: None,
        }
    }

    /// As [`Service::new`], for a process that serves one request and
    /// ends: `on_complete` hooks wait for [`crate::hooks::run_deferred`].
    pub fn deferring_hooks(config: Config) -> Service {
        Service {
            deferred_hooks: Some(Mutex::new(Vec::new())),
            ..Service::new(config)
        }
    }

    /// Keeps `document` for later when hooks are deferred; gives it back
    /// otherwise.
    pub(crate) fn defer_hook(&self, document: Vec<u8>) -> Option<Vec<u8>> {
        match &self.deferred_hooks {
            Some(kept) => {
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(document);
                None
            }
            None => Some(document),
        }
    }

    pub(crate) fn take_deferred_hooks(&self) -> Vec<Vec<u8>> {
        self.deferred_hooks
            .as_ref()
            .map(|kept| std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
