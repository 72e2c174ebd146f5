//! Configuration: command-line options, environment variables, a config
//! file, and defaults, in that order of precedence. The FastCGI daemon
//! adds one source between options and environment: the `FILEUPLOAD_*`
//! parameters the web server passes with a request
//! ([`Config::load_layered`]).
//!
//! A CGI program is configured by its environment (Apache `SetEnv`, nginx
//! `fastcgi_param`), so every setting has a `FILEUPLOAD_*` variable. The
//! same settings are options (`--max-size`) and config-file directives
//! named as in the Python original (`max_size = 100`). [`SETTINGS`] lists
//! them once; the loader, the help text and the README's table all follow
//! from it.
//!
//! Nothing here panics on bad input: every problem is a [`ConfigError`]
//! naming where the bad value came from, which the CGI front turns into one
//! line in the web server's error log and a 500 answer.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identifier::Key;
use crate::pool::Pool;

/// One setting, as it appears in every source.
#[derive(Debug)]
pub struct Setting {
    /// Config-file directive; the option is this with `-` for `_`, the
    /// environment variable `FILEUPLOAD_` + this in capitals.
    pub name: &'static str,
    /// Placeholder for the value in help text.
    pub value: &'static str,
    /// The default, as documentation.
    pub default: &'static str,
    pub help: &'static str,
    /// Whether it may be given on the command line. The key may not: a
    /// command line is visible to every user of the machine.
    pub option: bool,
}

impl Setting {
    /// The environment variable, e.g. `FILEUPLOAD_MAX_SIZE`.
    pub fn env_var(&self) -> String {
        format!("FILEUPLOAD_{}", self.name.to_ascii_uppercase())
    }

    /// The long option, e.g. `max-size`.
    pub fn option_name(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// Every setting, in the order the documentation lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "directory",
        value: "DIR",
        default: "<temp dir>/fileupload",
        help: "Pool directory for uploads; share it between every process and host serving the same uploads. \
               The default is created on first use; a configured one must exist.",
        option: true,
    },
    Setting {
        name: "max_size",
        value: "SIZE",
        default: "0 (no limit)",
        help: "Largest request body accepted: megabytes, or a number with K, M or G. 0 means no limit.",
        option: true,
    },
    Setting {
        name: "upload_url",
        value: "URL",
        default: "unset",
        help: "Uploads are received by another server at this URL (\"/upload\" is appended when missing): \
               in middleware mode nothing is intercepted and the application gets FILEUPLOAD_UPLOAD_URL.",
        option: true,
    },
    Setting {
        name: "upload_key",
        value: "KEY",
        default: "unset",
        help: "Secret that signs identifiers; when set, only signed identifiers are accepted. \
               Prefer upload_key_file. Not accepted as an option.",
        option: false,
    },
    Setting {
        name: "upload_key_file",
        value: "FILE",
        default: "unset",
        help: "File holding the upload key (a trailing newline is ignored).",
        option: true,
    },
    Setting {
        name: "max_age",
        value: "DURATION",
        default: "0 (never)",
        help: "Remove finished, failed and abandoned uploads older than this, now and then on its own \
               (e.g. 3600, 90m, 12h, 7d). 0 turns it off; `gc --max-age 0` removes them all now, whatever their age.",
        option: true,
    },
    Setting {
        name: "app",
        value: "PROGRAM",
        default: "unset",
        help: "Middleware mode: a CGI program that gets every request that is not ours, and each completed upload.",
        option: true,
    },
    Setting {
        name: "sha256",
        value: "on|off",
        default: "on",
        help: "Compute each stored file's SHA-256 while receiving it. off takes sha256 out of checksums; \
               on (the default) leaves checksums as it is.",
        option: true,
    },
    Setting {
        name: "checksums",
        value: "LIST",
        default: "sha256",
        help: "Checksums of each stored file, computed while receiving it and given in its status: any of \
               sha256, sha1, md5, crc32c, blake3, separated by commas; empty or none for no checksum.",
        option: true,
    },
    Setting {
        name: "fsync",
        value: "on|off",
        default: "on",
        help: "Sync each stored file, then its status, to disk before an upload is reported done, so a power \
               cut cannot lose an upload the client was told is stored. off is faster and may lose the last \
               uploads on a crash.",
        option: true,
    },
    Setting {
        name: "file_mode",
        value: "MODE",
        default: "0600",
        help: "Permissions of stored files (octal); folders get the matching search bits (0600 gives 0700).",
        option: true,
    },
    Setting {
        name: "listen",
        value: "ADDRESS",
        default: "the socket on stdin",
        help: "FastCGI: listen on host:port or unix:/path instead of the socket passed on stdin.",
        option: true,
    },
    Setting {
        name: "socket_mode",
        value: "MODE",
        default: "0660",
        help: "FastCGI: permissions of the unix:/path socket file (octal).",
        option: true,
    },
    Setting {
        name: "workers",
        value: "N",
        default: "16",
        help: "FastCGI: threads that answer status polls, clears and new identifiers. Uploads never hold them.",
        option: true,
    },
    Setting {
        name: "max_uploads",
        value: "N",
        default: "4096",
        help: "FastCGI: uploads (and application requests) received at once, each on a thread of its own; \
               one more is answered 503 (ERR_BUSY) at once.",
        option: true,
    },
    Setting {
        name: "header_timeout",
        value: "DURATION",
        default: "30s",
        help: "FastCGI: how long a connection may take to send a request's parameters, from its first byte.",
        option: true,
    },
    Setting {
        name: "body_timeout",
        value: "DURATION",
        default: "60s",
        help: "FastCGI: longest wait for the next bytes of a request body; the upload then fails (ERR_TOO_SLOW).",
        option: true,
    },
    Setting {
        name: "min_body_rate",
        value: "SIZE",
        default: "1K",
        help: "Slowest average rate, in bytes a second, of a body older than 60 s (K, M or G allowed); \
               a slower upload fails (ERR_TOO_SLOW). 0 turns it off.",
        option: true,
    },
    Setting {
        name: "grace",
        value: "DURATION",
        default: "10s",
        help: "FastCGI: after SIGTERM, how long running uploads may take to finish before they are cut \
               short and marked interrupted.",
        option: true,
    },
    Setting {
        name: "progress_interval",
        value: "DURATION",
        default: "200ms",
        help: "How often a running upload rewrites its status with the bytes received. 0 turns progress off \
               (the status says 0 received until the upload ends).",
        option: true,
    },
    // CORS (src/cors.rs): a dedicated upload server on an origin of its own.
    Setting {
        name: "allowed_origins",
        value: "ORIGINS",
        default: "unset",
        help: "Pages on these origins (comma-separated, exact: https://app.example, http://host:8080) may \
               upload, poll and resume from a browser (CORS); a request with any other Origin is refused \
               403 (ERR_ORIGIN_NOT_ALLOWED) before its body is read. * allows every page, only for uploads \
               without credentials. Unset: no CORS headers and no Origin check.",
        option: true,
    },
    Setting {
        name: "allow_credentials",
        value: "on|off",
        default: "off",
        help: "CORS: let pages on allowed_origins send cookies and HTTP authentication \
               (Access-Control-Allow-Credentials). Needs allowed_origins, and not *.",
        option: true,
    },
    // Hooks (issue 13).
    Setting {
        name: "on_create",
        value: "PROGRAM",
        default: "unset",
        help: "Hook run before an upload stores its first byte, with JSON about it on stdin; a non-zero exit \
               refuses the upload (403 ERR_REFUSED, the first line of its stdout as the message).",
        option: true,
    },
    Setting {
        name: "on_complete",
        value: "PROGRAM",
        default: "unset",
        help: "Hook run after an upload is done, with its status document on stdin; it cannot change the upload.",
        option: true,
    },
    Setting {
        name: "hook_timeout",
        value: "DURATION",
        default: "5s",
        help: "Longest a hook may run before it is killed (on_create then refuses the upload).",
        option: true,
    },
];

/// Settings of the FastCGI daemon as a whole: they take effect when it
/// starts, so a request's `FILEUPLOAD_*` parameter cannot change them
/// (and is refused, see [`Config::load_layered`]).
pub const DAEMON_ONLY: &[&str] = &[
    "listen",
    "socket_mode",
    "workers",
    "max_uploads",
    "header_timeout",
    "body_timeout",
    "grace",
];

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Option(&'static str),
    /// A FastCGI request's parameter, which the web server's configuration
    /// set (nginx `fastcgi_param`).
    Param(String),
    Env(String),
    File(PathBuf, usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Option(name) => write!(f, "option --{}", name.replace('_', "-")),
            Origin::Param(var) => write!(f, "FastCGI parameter {var}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path, line) => write!(f, "{} line {line}", path.display()),
        }
    }
}

/// A configuration problem, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot read upload key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("both upload_key ({0}) and upload_key_file ({1}) are set; keep one")]
    TwoKeys(String, String),
}

/// The settled configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub directory: PathBuf,
    /// The pool is the default one, which is created on first use.
    pub directory_is_default: bool,
    /// Largest request body, in bytes.
    pub max_size: Option<u64>,
    /// Always ends in `/upload`.
    pub upload_url: Option<String>,
    pub upload_key: Option<Key>,
    pub max_age: Option<Duration>,
    pub app: Option<PathBuf>,
    pub sha256: bool,
    /// The `checksums` setting as given; [`Config::checksums`] is what
    /// is computed, with `sha256` applied.
    pub checksums: crate::checksums::Checksums,
    pub fsync: bool,
    pub file_mode: u32,
    pub progress_interval: Option<Duration>,
    /// FastCGI address; `None`: the socket on stdin.
    pub listen: Option<String>,
    pub socket_mode: u32,
    /// FastCGI: threads for quick requests (polls, clears, new ids).
    pub workers: usize,
    /// FastCGI: requests with a body served at once.
    pub max_uploads: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes a second a body must average once older than
    /// `min_body_rate_after`; `None`: no floor.
    pub min_body_rate: Option<u64>,
    /// How old a body must be before `min_body_rate` holds. Not a setting:
    /// always [`crate::receiving::MIN_RATE_AFTER`] in service, shorter in
    /// tests that drive the handler in-process and cannot wait a minute.
    pub min_body_rate_after: Duration,
    pub grace: Duration,
    /// CORS: `None` means off (no headers, no `Origin` check).
    pub allowed_origins: Option<crate::cors::AllowedOrigins>,
    pub allow_credentials: bool,
    // Hooks (issue 13).
    pub on_create: Option<PathBuf>,
    pub on_complete: Option<PathBuf>,
    pub hook_timeout: Duration,
}

impl Default for Config {
    /// The configuration with nothing set: the default pool, no limits.
    fn default() -> Config {
        Config {
            directory: std::env::temp_dir().join("fileupload"),
            directory_is_default: true,
            max_size: None,
            upload_url: None,
            upload_key: None,
            max_age: None,
            app: None,
            sha256: true,
            checksums: crate::checksums::Checksums::default(),
            fsync: true,
            file_mode: 0o600,
            progress_interval: Some(Duration::from_millis(200)),
            listen: None,
            socket_mode: 0o660,
            workers: 16,
            max_uploads: 4096,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            min_body_rate: Some(1024),
            min_body_rate_after: crate::receiving::MIN_RATE_AFTER,
            grace: Duration::from_secs(10),
            allowed_origins: None,
            allow_credentials: false,
            on_create: None,
            on_complete: None,
            hook_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The checksums each stored file gets: the `checksums` list, without
    /// `sha256` when `sha256 = off` (the older switch keeps its meaning:
    /// off means no SHA-256, whatever the list says).
    pub fn checksums(&self) -> crate::checksums::Checksums {
        match self.sha256 {
            true => self.checksums,
            false => self.checksums.without(crate::checksums::Sum::Sha256),
        }
    }

    /// Loads from the process environment alone, as a CGI program does.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::load(&[], |var| std::env::var(var).ok())
    }

    /// Loads from options (by setting name, e.g. `("max_size", "10")`, plus
    /// `("config", FILE)`), then `env`, then the config file named by the
    /// `config` option or `FILEUPLOAD_CONFIG`, then defaults.
    ///
    /// ```
    /// use fileupload::Config;
    ///
    /// let config = Config::load(&[("max_size", "2G".into())], |var| match var {
    ///     "FILEUPLOAD_MAX_SIZE" => Some("10".into()), // loses to the option
    ///     "FILEUPLOAD_SHA256" => Some("off".into()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// assert_eq!(config.max_size, Some(2 << 30));
    /// assert!(!config.sha256);
    /// ```
    pub fn load(
        options: &[(&str, String)],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::load_layered(options, |_| None, env)
    }

    /// As [`Config::load`], with one more source between the options and
    /// the environment: `params`, a FastCGI request's `FILEUPLOAD_*`
    /// parameters (what the web server's configuration passes with the
    /// request), named as the environment variables are. Errors in them
    /// name them (`FastCGI parameter FILEUPLOAD_MAX_SIZE: ...`). The
    /// config file is still the one the options or `env` name: the caller
    /// refuses `FILEUPLOAD_CONFIG` and the [`DAEMON_ONLY`] settings as
    /// parameters.
    ///
    /// ```
    /// use fileupload::Config;
    ///
    /// let config = Config::load_layered(
    ///     &[("sha256", "on".into())],
    ///     |var| match var {
    ///         "FILEUPLOAD_MAX_SIZE" => Some("1M".into()), // beats the environment
    ///         "FILEUPLOAD_SHA256" => Some("off".into()),  // loses to the option
    ///         _ => None,
    ///     },
    ///     |var| (var == "FILEUPLOAD_MAX_SIZE").then(|| "100".into()),
    /// )
    /// .unwrap();
    /// assert_eq!(config.max_size, Some(1 << 20));
    /// assert!(config.sha256);
    /// ```
    pub fn load_layered(
        options: &[(&str, String)],
        params: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let set = |v: &Option<String>| v.as_ref().is_some_and(|v| !v.is_empty());
        let option = |name: &str| {
            options
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let mut values: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();

        let file = option("config")
            .filter(|v| !v.is_empty())
            .or_else(|| env("FILEUPLOAD_CONFIG").filter(|v| !v.is_empty()));
        if let Some(path) = file {
            for (name, value, line) in read_config_file(Path::new(&path))? {
                values.insert(name, (value, Origin::File(PathBuf::from(&path), line)));
            }
        }
        for setting in SETTINGS {
            let var = setting.env_var();
            let value = env(&var);
            if set(&value) {
                values.insert(
                    setting.name,
                    (value.unwrap_or_default(), Origin::Env(var.clone())),
                );
            }
            let value = params(&var);
            if set(&value) {
                values.insert(
                    setting.name,
                    (value.unwrap_or_default(), Origin::Param(var)),
                );
            }
            let value = option(setting.name);
            if setting.option && set(&value) {
                let origin = Origin::Option(setting.name);
                values.insert(setting.name, (value.unwrap_or_default(), origin));
            }
        }
        Config::from_values(values)
    }

    fn from_values(
        values: BTreeMap<&'static str, (String, Origin)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let invalid = |origin: &Origin, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        for (name, (value, origin)) in &values {
            let value = value.trim();
            let bad = |what: &str| {
                let (what, hint) = what.split_once(": ").unwrap_or((what, ""));
                invalid(origin, format!("invalid {what} {value:?}: {hint}"))
            };
            match *name {
                "directory" => {
                    let path = PathBuf::from(value);
                    if !path.is_absolute() {
                        return Err(invalid(
                            origin,
                            format!("{value:?} must be an absolute path"),
                        ));
                    }
                    config.directory = path;
                    config.directory_is_default = false;
                }
                "max_size" => {
                    config.max_size = parse_size(value).ok_or_else(|| {
                        bad("size: use megabytes, or a number with K, M or G (e.g. 100, 512K, 2G)")
                    })?;
                }
                "upload_url" => config.upload_url = Some(normalize_upload_url(value)),
                "upload_key" => config.upload_key = Key::new(value.as_bytes()),
                "upload_key_file" => {
                    let path = PathBuf::from(value);
                    let text = read_key_file(&path)?;
                    let text = text
                        .strip_suffix(b"\n")
                        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
                        .unwrap_or(&text);
                    let key = Key::new(text).ok_or_else(|| {
                        invalid(origin, format!("upload key file {value} is empty"))
                    })?;
                    config.upload_key = Some(key);
                }
                "max_age" => {
                    config.max_age = parse_duration(value).ok_or_else(|| {
                        bad("duration: use seconds, or a number with ms, s, m, h or d")
                    })?;
                }
                "app" => {
                    let path = PathBuf::from(value);
                    if !path.is_absolute() {
                        return Err(invalid(
                            origin,
                            format!("{value:?} must be an absolute path"),
                        ));
                    }
                    config.app = Some(path);
                }
                "sha256" => {
                    config.sha256 = parse_bool(value).ok_or_else(|| bad("switch: use on or off"))?
                }
                "checksums" => {
                    config.checksums =
                        crate::checksums::Checksums::parse(value).map_err(|m| invalid(origin, m))?
                }
                "fsync" => {
                    config.fsync = parse_bool(value).ok_or_else(|| bad("switch: use on or off"))?
                }
                "file_mode" => {
                    config.file_mode = u32::from_str_radix(value, 8)
                        .ok()
                        .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
                        .ok_or_else(|| {
                            bad("mode: use octal permissions that let the owner read and write, e.g. 0600 or 0640")
                        })?;
                }
                "listen" => config.listen = Some(value.to_owned()),
                "socket_mode" => {
                    config.socket_mode = u32::from_str_radix(value, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| bad("mode: use octal permissions, e.g. 0660"))?;
                }
                "workers" => {
                    config.workers = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=4096).contains(n))
                        .ok_or_else(|| bad("number: use 1 to 4096"))?;
                }
                "max_uploads" => {
                    config.max_uploads = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| bad("number: use 1 to 1000000"))?;
                }
                "header_timeout" | "body_timeout" => {
                    let timeout = parse_duration(value)
                        .flatten()
                        .ok_or_else(|| bad("duration: use e.g. 30s or 2m (not 0)"))?;
                    if *name == "header_timeout" {
                        config.header_timeout = timeout;
                    } else {
                        config.body_timeout = timeout;
                    }
                }
                "min_body_rate" => {
                    config.min_body_rate = parse_size_with_unit(value, "").ok_or_else(|| {
                        bad("rate: bytes a second, or a number with K, M or G (e.g. 1K), or 0 for off")
                    })?;
                }
                "grace" => {
                    config.grace = parse_duration(value)
                        .ok_or_else(|| bad("duration: use e.g. 10s, 1m, or 0"))?
                        .unwrap_or(Duration::ZERO);
                }
                "progress_interval" => {
                    config.progress_interval = parse_duration(value)
                        .ok_or_else(|| bad("duration: use e.g. 200ms, 1s, or 0 for off"))?;
                }
                "allowed_origins" => {
                    config.allowed_origins =
                        Some(crate::cors::parse_origins(value).map_err(|m| invalid(origin, m))?);
                }
                "allow_credentials" => {
                    config.allow_credentials =
                        parse_bool(value).ok_or_else(|| bad("switch: use on or off"))?
                }
                // Hooks (issue 13).
                "on_create" | "on_complete" => {
                    let path = PathBuf::from(value);
                    if !path.is_absolute() {
                        return Err(invalid(
                            origin,
                            format!("{value:?} must be an absolute path"),
                        ));
                    }
                    if *name == "on_create" {
                        config.on_create = Some(path);
                    } else {
                        config.on_complete = Some(path);
                    }
                }
                "hook_timeout" => {
                    config.hook_timeout = parse_duration(value)
                        .flatten()
                        .ok_or_else(|| bad("duration: use e.g. 5s or 500ms (not 0)"))?;
                }
                _ => unreachable!("only names from SETTINGS are collected"),
            }
        }
        if let (Some((_, a)), Some((_, b))) =
            (values.get("upload_key"), values.get("upload_key_file"))
        {
            return Err(ConfigError::TwoKeys(a.to_string(), b.to_string()));
        }
        // Browsers refuse credentials with `*`, and without a list there is
        // no one to send them: either way the setting would do nothing.
        if config.allow_credentials
            && let Some((_, origin)) = values.get("allow_credentials")
        {
            match &config.allowed_origins {
                None => {
                    return Err(invalid(
                        origin,
                        "allow_credentials needs allowed_origins: list the origins whose pages \
                         may send cookies"
                            .into(),
                    ));
                }
                Some(crate::cors::AllowedOrigins::Any) => {
                    return Err(invalid(
                        origin,
                        "allow_credentials cannot go with allowed_origins = *: any page could \
                         then upload with its visitors' cookies; list the origins"
                            .into(),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(config)
    }

    /// The pool this configuration names.
    pub fn pool(&self) -> Pool {
        Pool::new(&self.directory, self.file_mode, self.directory_is_default).with_fsync(self.fsync)
    }
}

/// Longest key file read: a key is a few dozen bytes, and a path to
/// something endless (`/dev/zero`) must not exhaust memory.
const MAX_KEY_FILE: u64 = 64 * 1024;

fn read_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let error = |source| ConfigError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut text = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE + 1).read_to_end(&mut text))
        .map_err(error)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {MAX_KEY_FILE} bytes; is this the key?"),
        )));
    }
    Ok(text)
}

/// Reads `key = value` lines. `#` and `;` start comment lines; `[section]`
/// lines are ignored so an INI file from the Python original's Paster setup
/// can be reused; surrounding double quotes are taken off values.
fn read_config_file(path: &Path) -> Result<Vec<(&'static str, String, usize)>, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) || line.starts_with('[') {
            continue;
        }
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_owned(),
            line: line_no,
            message,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax("expected `name = value`".into()))?;
        let key = key.trim();
        let setting = SETTINGS.iter().find(|s| s.name == key).ok_or_else(|| {
            let known: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
            syntax(format!(
                "unknown setting {key:?}; known: {}",
                known.join(", ")
            ))
        })?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        out.push((setting.name, value.to_owned(), line_no));
    }
    Ok(out)
}

/// `100` (megabytes, as the original), `512K`, `10M`, `2G`; `0` is no limit.
pub fn parse_size(text: &str) -> Option<Option<u64>> {
    parse_size_with_unit(text, "M")
}

/// As [`parse_size`], a bare number being in `default_unit` ("" for bytes).
fn parse_size_with_unit(text: &str, default_unit: &str) -> Option<Option<u64>> {
    let (number, unit) = number_and_unit(text, default_unit)?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    let bytes = number.checked_mul(1u64 << shift)?;
    Some((bytes > 0).then_some(bytes))
}

/// `3600` (seconds), `200ms`, `30s`, `15m`, `12h`, `7d`; `0` is off.
pub fn parse_duration(text: &str) -> Option<Option<Duration>> {
    let (number, unit) = number_and_unit(text, "s")?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let millis = number.checked_mul(millis)?;
    Some((millis > 0).then(|| Duration::from_millis(millis)))
}

/// Splits `12K` into `(12, "K")`; a bare number gets `default_unit`.
fn number_and_unit<'a>(text: &'a str, default_unit: &'a str) -> Option<(u64, &'a str)> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, default_unit),
    };
    Some((digits.parse().ok()?, unit.trim()))
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// The original appended `/upload` to an upload URL that lacked it.
fn normalize_upload_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/upload") || url == "upload" {
        url.to_owned()
    } else {
        format!("{url}/upload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(options: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let options: Vec<(&str, String)> =
            options.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Config::load(&options, |var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_need_nothing() {
        let config = load(&[], &[]).unwrap();
        assert!(config.directory_is_default);
        assert!(config.directory.ends_with("fileupload"));
        assert_eq!(config.max_size, None);
        assert!(config.sha256);
        assert_eq!(config.file_mode, 0o600);
        assert_eq!(config.progress_interval, Some(Duration::from_millis(200)));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10"), Some(Some(10 << 20)));
        assert_eq!(parse_size("512K"), Some(Some(512 << 10)));
        assert_eq!(parse_size("2g"), Some(Some(2 << 30)));
        assert_eq!(parse_size("0"), Some(None));
        for bad in ["", "-1", "1.5", "10X", "K", "99999999999999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_duration("90"), Some(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_duration("200ms"),
            Some(Some(Duration::from_millis(200)))
        );
        assert_eq!(
            parse_duration("7d"),
            Some(Some(Duration::from_secs(7 * 86400)))
        );
        assert_eq!(parse_duration("0"), Some(None));
        for bad in ["", "1w", "-5", "5 s s", "h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn precedence_is_options_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fileupload.conf");
        fs::write(
            &file,
            "# comment\n[filter:fileupload]\nmax_size = 1\nupload_url = \"http://up.example/x/\"\nsha256 = off\nfile_mode=0640\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let config = load(
            &[("max_size", "3")],
            &[
                ("FILEUPLOAD_CONFIG", file),
                ("FILEUPLOAD_MAX_SIZE", "2"),
                ("FILEUPLOAD_SHA256", "on"),
            ],
        )
        .unwrap();
        assert_eq!(config.max_size, Some(3 << 20));
        assert!(config.sha256, "environment beats file");
        assert_eq!(
            config.upload_url.as_deref(),
            Some("http://up.example/x/upload")
        );
        assert_eq!(config.file_mode, 0o640);
        let config = load(&[("config", file)], &[]).unwrap();
        assert_eq!(config.max_size, Some(1 << 20));
        assert!(!config.sha256);
    }

    #[test]
    fn key_from_file_or_value_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        fs::write(&key_file, "s3cret\n").unwrap();
        let key_file = key_file.to_str().unwrap();
        let config = load(&[], &[("FILEUPLOAD_UPLOAD_KEY_FILE", key_file)]).unwrap();
        assert_eq!(config.upload_key, Key::new(*b"s3cret"));
        let config = load(&[], &[("FILEUPLOAD_UPLOAD_KEY", "abc")]).unwrap();
        assert_eq!(config.upload_key, Key::new(*b"abc"));
        let err = load(
            &[],
            &[
                ("FILEUPLOAD_UPLOAD_KEY", "abc"),
                ("FILEUPLOAD_UPLOAD_KEY_FILE", key_file),
            ],
        );
        assert!(matches!(err, Err(ConfigError::TwoKeys(..))));
        // The key is never an option: a command line is public.
        let config = load(&[("upload_key", "abc")], &[]).unwrap();
        assert_eq!(config.upload_key, None);
        let err = load(&[], &[("FILEUPLOAD_UPLOAD_KEY_FILE", "/nonexistent/key")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key"), "{err}");
        let err = load(&[], &[("FILEUPLOAD_UPLOAD_KEY_FILE", "/dev/zero")]).unwrap_err();
        assert!(err.to_string().contains("longer than 65536 bytes"), "{err}");
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn errors_name_their_source() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)], &str)] = &[
            (
                &[],
                &[("FILEUPLOAD_MAX_SIZE", "12X")],
                "environment variable FILEUPLOAD_MAX_SIZE: invalid size \"12X\"",
            ),
            (
                &[("max_age", "soon")],
                &[],
                "option --max-age: invalid duration \"soon\"",
            ),
            (
                &[],
                &[("FILEUPLOAD_DIRECTORY", "relative/dir")],
                "must be an absolute path",
            ),
            (&[], &[("FILEUPLOAD_FILE_MODE", "0200")], "invalid mode"),
            (&[], &[("FILEUPLOAD_SHA256", "maybe")], "invalid switch"),
            (
                &[],
                &[("FILEUPLOAD_CONFIG", "/nonexistent.conf")],
                "cannot read config file /nonexistent.conf",
            ),
        ];
        for (options, env, expected) in cases {
            let err = load(options, env).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.conf");
        fs::write(&file, "directory = /tmp\nmax_szie = 3\n").unwrap();
        let err = load(&[], &[("FILEUPLOAD_CONFIG", file.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2: unknown setting \"max_szie\""),
            "{err}"
        );
    }

    #[test]
    fn request_parameters_sit_between_options_and_environment() {
        let options = vec![("max_age", "1h".to_string())];
        let params = |var: &str| match var {
            "FILEUPLOAD_MAX_SIZE" => Some("1M".to_string()),
            "FILEUPLOAD_MAX_AGE" => Some("2h".to_string()),
            "FILEUPLOAD_SHA256" => Some(String::new()),
            _ => None,
        };
        let env = |var: &str| match var {
            "FILEUPLOAD_MAX_SIZE" => Some("100".to_string()),
            "FILEUPLOAD_SHA256" => Some("off".to_string()),
            _ => None,
        };
        let config = Config::load_layered(&options, params, env).unwrap();
        assert_eq!(
            config.max_size,
            Some(1 << 20),
            "parameter beats environment"
        );
        assert_eq!(
            config.max_age,
            Some(Duration::from_secs(3600)),
            "option beats parameter"
        );
        assert!(!config.sha256, "an empty parameter is unset");
        let err = Config::load_layered(
            &[],
            |var| (var == "FILEUPLOAD_MAX_SIZE").then(|| "12X".to_string()),
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("FastCGI parameter FILEUPLOAD_MAX_SIZE: invalid size \"12X\""),
            "{err}"
        );
    }

    #[test]
    fn empty_values_are_unset() {
        let config = load(
            &[],
            &[("FILEUPLOAD_MAX_SIZE", ""), ("FILEUPLOAD_DIRECTORY", "")],
        )
        .unwrap();
        assert_eq!(config.max_size, None);
        assert!(config.directory_is_default);
    }

    #[test]
    fn every_documented_default_is_the_default() {
        // The help text, the README and fileupload.env show `default`; it
        // must be what the program does when nothing is set.
        let default = format!("{:?}", Config::default());
        let mut checked = 0;
        for setting in SETTINGS {
            if matches!(setting.default, "unset" | "the socket on stdin")
                || setting.default.starts_with('<')
            {
                continue; // no value to give (the temp dir is the machine's)
            }
            let value = setting.default.split_whitespace().next().unwrap_or("");
            let mut values = BTreeMap::new();
            values.insert(
                setting.name,
                (value.to_owned(), Origin::Option(setting.name)),
            );
            let loaded = Config::from_values(values)
                .unwrap_or_else(|e| panic!("{}'s default {value:?}: {e}", setting.name));
            assert_eq!(format!("{loaded:?}"), default, "{}", setting.name);
            checked += 1;
        }
        assert!(checked >= 9, "only {checked} defaults checked");
    }

    #[test]
    fn checksums_are_listed_and_sha256_off_takes_sha256_out() {
        use crate::checksums::{Checksums, Sum};
        let load = |pairs: &[(&'static str, &str)]| {
            let values = pairs
                .iter()
                .map(|(name, value)| (*name, (value.to_string(), Origin::Option(name))))
                .collect();
            Config::from_values(values)
        };
        let sums = |config: &Config| config.checksums().iter().collect::<Vec<Sum>>();
        assert_eq!(sums(&load(&[]).unwrap()), vec![Sum::Sha256]);
        let listed = load(&[("checksums", "crc32c, SHA256,blake3")]).unwrap();
        assert_eq!(sums(&listed), vec![Sum::Sha256, Sum::Crc32c, Sum::Blake3]);
        let off = load(&[("checksums", "sha256,md5"), ("sha256", "off")]).unwrap();
        assert_eq!(sums(&off), vec![Sum::Md5]);
        // on is the default: it adds nothing the list left out.
        let on = load(&[("checksums", "sha1"), ("sha256", "on")]).unwrap();
        assert_eq!(sums(&on), vec![Sum::Sha1]);
        for none in ["", "none"] {
            assert_eq!(
                load(&[("checksums", none)]).unwrap().checksums(),
                Checksums::NONE
            );
        }
        let err = load(&[("checksums", "sha256,sha3")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--checksums") && err.contains("\"sha3\""),
            "{err}"
        );
    }

    #[test]
    fn every_setting_is_handled() {
        // from_values matches on names; a setting added to SETTINGS without a
        // match arm would hit unreachable!() here.
        for setting in SETTINGS {
            let value = match setting.name {
                "directory" | "app" | "on_create" | "on_complete" => "/x",
                "listen" => "127.0.0.1:9000",
                "upload_key_file" => continue,
                "sha256" | "fsync" => "on",
                "checksums" => "md5,blake3",
                "allowed_origins" => "https://app.example",
                "allow_credentials" => "off",
                "file_mode" | "socket_mode" => "600",
                _ => "1",
            };
            let mut values = BTreeMap::new();
            values.insert(
                setting.name,
                (value.to_owned(), Origin::Option(setting.name)),
            );
            Config::from_values(values).unwrap();
        }
    }
}
