//! Settings that come with a request: `FILEUPLOAD_*` parameters, which the
//! web server's configuration sets (nginx `fastcgi_param`), merged between
//! the daemon's options and its environment, with CGI's errors.
//!
//! Apart from the server because it is policy, not transport: which
//! settings a request may change, in which order the sources count, and a
//! bounded cache so that a status poll does not re-read a key file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::log::RateLimitedLog;
use crate::config::{Config, DAEMON_ONLY, SETTINGS};
use crate::error_code::ErrorCode;
use crate::http::HttpError;
use crate::service::Service;
use crate::vars::Vars;

/// Most distinct sets of per-request settings kept merged (see
/// [`Settings::request_config`]); past this the cache starts over.
const MAX_MERGED: usize = 64;
/// What the names of settings' variables and parameters begin with.
const SETTING_PREFIX: &str = "FILEUPLOAD_";

/// What the daemon's configuration was loaded from, kept so that the
/// `FILEUPLOAD_*` parameters a web server passes with a request can be
/// placed between them: options, then the request's parameters, then the
/// daemon's environment, then the config file, then defaults.
///
/// No `Debug`: the environment may hold the upload key.
#[derive(Clone, Default)]
pub struct ConfigSources {
    /// Command-line options, by setting name (and `config`).
    pub options: Vec<(String, String)>,
    /// The daemon's own `FILEUPLOAD_*` environment variables.
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// `options` as given to [`Config::load`], and this process's
    /// environment.
    pub fn capture(options: &[(&str, String)]) -> ConfigSources {
        let names = SETTINGS
            .iter()
            .map(|s| s.env_var())
            .chain(["FILEUPLOAD_CONFIG".to_owned()]);
        ConfigSources {
            options: options
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            env: names
                .filter_map(|name| std::env::var(&name).ok().map(|value| (name, value)))
                .collect(),
        }
    }
}

/// Configurations merged with requests' `FILEUPLOAD_*` parameters, by
/// those parameters (sorted).
type Merged = HashMap<Vec<(String, String)>, Arc<Service>>;

/// The sources, and the configurations merged from them so far.
pub(super) struct Settings {
    /// Where a request's own configuration is merged from; `None`
    /// (the test hook): requests may not bring settings.
    sources: Option<ConfigSources>,
    /// A read-write lock: the upload threads, at the lowest priority, read
    /// it too, and a reader never holds up another (see `super::workers`).
    merged: RwLock<Merged>,
}

impl Settings {
    pub(super) fn new(sources: Option<ConfigSources>) -> Settings {
        Settings {
            sources,
            merged: RwLock::new(HashMap::new()),
        }
    }

    /// The configuration a request runs with. Without `FILEUPLOAD_*`
    /// parameters (the usual case, and every status poll behind a server
    /// that passes none) it is the daemon's own: `None`, at the cost of one
    /// look at each parameter's first bytes. With them, the daemon's
    /// sources merged with them, once per distinct set: a key file is read
    /// when a set is first seen, not on every poll.
    ///
    /// A parameter that cannot apply (a [`DAEMON_ONLY`] setting,
    /// `FILEUPLOAD_CONFIG`, an unknown `FILEUPLOAD_` name) or a bad value
    /// is a 500 and a rate-limited log line naming it: an administrator who
    /// set a limit or a key must not believe it active when it is not.
    pub(super) fn request_config(
        &self,
        params: &Vars,
        log: &RateLimitedLog,
    ) -> Result<Option<Arc<Service>>, HttpError> {
        if !params
            .iter()
            .any(|(name, _)| name.starts_with(SETTING_PREFIX))
        {
            return Ok(None);
        }
        let mut given: Vec<(String, String)> = params
            .iter()
            .filter(|(name, _)| name.starts_with(SETTING_PREFIX))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        given.sort();
        if let Some(config) = self.read_merged().get(&given) {
            return Ok(Some(Arc::clone(config)));
        }
        let config = self.merge(&given).map_err(|message| {
            log.log("settings", &format!("refusing a request: {message}"));
            HttpError::new(
                ErrorCode::Config,
                "the upload service is misconfigured; the details are in the server's log",
            )
        })?;
        // Built once per set, pool and all, like the daemon's own.
        let config = Arc::new(Service::new(config));
        let mut merged = self.write_merged();
        if merged.len() >= MAX_MERGED {
            merged.clear();
        }
        merged.insert(given, Arc::clone(&config));
        Ok(Some(config))
    }

    fn merge(&self, given: &[(String, String)]) -> Result<Config, String> {
        let Some(sources) = &self.sources else {
            return Err("this server takes no settings from requests".into());
        };
        // An empty value counts as unset, as everywhere.
        for (name, _) in given.iter().filter(|(_, value)| !value.is_empty()) {
            if name == "FILEUPLOAD_CONFIG" {
                return Err(format!(
                    "FastCGI parameter {name}: the config file is the daemon's (its --config or \
                     environment); pass the settings themselves as FILEUPLOAD_* parameters"
                ));
            }
            match SETTINGS.iter().find(|s| s.env_var() == *name) {
                None => {
                    let known: Vec<String> = SETTINGS
                        .iter()
                        .filter(|s| !DAEMON_ONLY.contains(&s.name))
                        .map(|s| s.env_var())
                        .collect();
                    return Err(format!(
                        "FastCGI parameter {name}: no such setting; a request may set {}",
                        known.join(", ")
                    ));
                }
                Some(setting) if DAEMON_ONLY.contains(&setting.name) => {
                    return Err(format!(
                        "FastCGI parameter {name}: {} is a setting of the daemon as a whole and \
                         cannot change per request; set it in the daemon's options, environment \
                         or config file",
                        setting.name
                    ));
                }
                Some(_) => {}
            }
        }
        let lookup = |pairs: &[(String, String)], var: &str| {
            pairs
                .iter()
                .find(|(name, _)| name == var)
                .map(|(_, value)| value.clone())
        };
        let options: Vec<(&str, String)> = sources
            .options
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        Config::load_layered(
            &options,
            |var| lookup(given, var),
            |var| lookup(&sources.env, var),
        )
        .map_err(|err| err.to_string())
    }

    /// The configurations whose pools automatic gc looks after: the
    /// daemon's own (`own`) and those merged for requests, one per pool
    /// and age.
    pub(super) fn collected(&self, own: &Arc<Service>) -> Vec<Arc<Service>> {
        let mut services = vec![Arc::clone(own)];
        services.extend(self.read_merged().values().cloned());
        services.retain(|service| service.config().max_age.is_some());
        let mut seen = HashSet::new();
        services.retain(|service| {
            let config = service.config();
            seen.insert((config.directory.clone(), config.max_age))
        });
        services
    }

    fn read_merged(&self) -> RwLockReadGuard<'_, Merged> {
        self.merged.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_merged(&self) -> RwLockWriteGuard<'_, Merged> {
        self.merged.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_configurations_are_cached_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sources = ConfigSources {
            options: vec![("directory".into(), dir.path().display().to_string())],
            env: vec![("FILEUPLOAD_MAX_SIZE".into(), "100".into())],
        };
        let settings = Settings::new(Some(sources));
        let log = RateLimitedLog::new(true);
        let params = |size: usize| -> Vars {
            [
                ("REQUEST_METHOD", "GET".to_string()),
                ("FILEUPLOAD_MAX_SIZE", format!("{size}K")),
            ]
            .into_iter()
            .collect()
        };
        let method_only: Vars = params(0).iter().take(1).collect();
        assert!(
            settings
                .request_config(&method_only, &log)
                .unwrap()
                .is_none()
        );
        let first = settings.request_config(&params(1), &log).unwrap().unwrap();
        let again = settings.request_config(&params(1), &log).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "merged once per set");
        assert_eq!(first.config().max_size, Some(1024));
        assert_eq!(
            first.config().directory,
            dir.path(),
            "the option beats the default"
        );
        for size in 2..200 {
            let config = settings
                .request_config(&params(size), &log)
                .unwrap()
                .unwrap();
            assert_eq!(config.config().max_size, Some(size as u64 * 1024));
            assert!(settings.read_merged().len() <= MAX_MERGED);
        }
    }

    #[test]
    fn settings_a_request_cannot_change_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sources = ConfigSources {
            options: vec![("directory".into(), dir.path().display().to_string())],
            env: vec![],
        };
        let settings = Settings::new(Some(sources));
        let log = RateLimitedLog::new(true);
        let daemon_only = SETTINGS
            .iter()
            .find(|s| DAEMON_ONLY.contains(&s.name))
            .expect("a daemon-only setting")
            .env_var();
        for name in [
            "FILEUPLOAD_CONFIG",
            "FILEUPLOAD_NO_SUCH_THING",
            &daemon_only,
        ] {
            let params: Vars = [(name, "1")].into_iter().collect();
            let err = settings.request_config(&params, &log).unwrap_err();
            assert_eq!(err.code, ErrorCode::Config, "{name}");
        }
        // Without sources (the test hook), no request brings settings.
        let none = Settings::new(None);
        let params: Vars = [("FILEUPLOAD_MAX_SIZE", "1")].into_iter().collect();
        assert!(none.request_config(&params, &log).is_err());
    }
}
