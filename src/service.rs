//! What a process serves every request with, built once: the settled
//! configuration and the pool it names.
//!
//! Built by the transport when it starts (the CGI program for its one
//! request, the development server and the FastCGI daemon for all of
//! theirs, the daemon once more for each distinct set of `FILEUPLOAD_*`
//! parameters, cached), and handed to [`crate::handler`] with each
//! request. Nothing in it is rebuilt or re-read per request, and the pool
//! can never disagree with the configuration: both come from here.

use crate::config::Config;
use crate::pool::Pool;

/// A configuration and its pool.
#[derive(Debug)]
pub struct Service {
    config: Config,
    pool: Pool,
}

impl Service {
    pub fn new(config: Config) -> Service {
        let pool = config.pool();
        Service { config, pool }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
