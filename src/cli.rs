//! The command line: the library's operations for applications in any
//! language, and the administrator's tools.
//!
//! Exit status: 0 for success or "yes", 1 for "no" (`verify-id` on a bad
//! identifier, `path` on an upload that is not complete), 2 for a usage,
//! configuration or pool error.

use std::ffi::OsString;
use std::io::Write;

use getopts::Options;

use fileupload::config::{Config, SETTINGS, parse_duration, parse_size};
use fileupload::identifier::{
    Identifier, create_identifier, create_identifier_with_policy, verify_identifier,
};
use fileupload::policy::{Policy, parse_accept};
use fileupload::status::State;

const USAGE: &str = "\
Usage: fileupload [OPTIONS] COMMAND [ID]
       fileupload [OPTIONS] serve [--http ADDRESS]
       fileupload [OPTIONS] --fastcgi | --listen ADDRESS

Receives multipart/form-data uploads into a pool directory and answers
progress queries. Run by a web server (GATEWAY_INTERFACE set), it answers
one CGI request. With --fastcgi or --listen (or started with a listening
socket as stdin, as spawn-fcgi and mod_fcgid do) it serves FastCGI until
SIGTERM. From a shell, it runs one of these commands:

Commands:
    new-id          print a new upload identifier (signed when a key is set);
                    with --expires, --size-limit, --accept or --file-limit
                    it carries that upload policy (needs an upload key)
    verify-id ID    exit 0 if ID is valid here, 1 (with the reason) if not
    status ID       print the upload's status as JSON
    path ID         print the stored files' paths, one a line, if the upload
                    is complete; exit 1 if it is not
    clear ID        delete the upload (cancelling it if it is running)
    gc              delete finished, failed and abandoned uploads older than
                    --max-age (or the max_age setting); --max-age 0 deletes
                    them whatever their age. Running uploads are never touched.
    serve           a development web server with a demo page, on
                    --http ADDRESS (default 127.0.0.1:8080)

Every setting is also an environment variable FILEUPLOAD_<NAME> and a
`name = value` line of the config file; options win over the environment,
which wins over the file. The FastCGI daemon also takes a request's
FILEUPLOAD_* parameters (nginx fastcgi_param), between its options and
its environment.";

/// A failure of the command line, with its exit status.
#[derive(Debug)]
struct Exit {
    code: i32,
    message: String,
}

fn error(message: impl ToString) -> Exit {
    Exit {
        code: 2,
        message: message.to_string(),
    }
}

fn options() -> Options {
    let mut opts = Options::new();
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    opts.optopt(
        "",
        "config",
        "read settings from FILE (FILEUPLOAD_CONFIG)",
        "FILE",
    );
    opts.optopt(
        "",
        "http",
        "serve: the address to listen on [default: 127.0.0.1:8080]",
        "ADDRESS",
    );
    opts.optflag(
        "",
        "fastcgi",
        "serve FastCGI on --listen (or `listen`), else on the listening socket passed as stdin",
    );
    // The upload policy new-id signs into the identifier (src/policy.rs).
    opts.optopt(
        "",
        "expires",
        "new-id: the identifier starts no upload or chunk after DURATION (30m, 1h, 7d)",
        "DURATION",
    );
    opts.optopt(
        "",
        "size-limit",
        "new-id: the upload's most bytes, counted as max_size counts them (512K, 100M)",
        "SIZE",
    );
    opts.optopt(
        "",
        "accept",
        "new-id: the accepted media types, comma-separated (image/*,application/pdf)",
        "TYPES",
    );
    opts.optopt(
        "",
        "file-limit",
        "new-id: the most files the upload may hold",
        "N",
    );
    for setting in SETTINGS.iter().filter(|s| s.option) {
        let help = format!("{} [default: {}]", setting.help, setting.default);
        opts.optopt("", &setting.option_name(), &help, setting.value);
    }
    opts
}

/// Runs the command line; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match command(args, &mut stdout) {
        Ok(code) => code,
        Err(exit) => {
            fileupload::log!("{}", exit.message);
            exit.code
        }
    }
}

fn command(args: Vec<OsString>, out: &mut dyn Write) -> Result<i32, Exit> {
    let opts = options();
    let matches = opts
        .parse(&args)
        .map_err(|e| error(format!("{e}\nTry 'fileupload --help'.")))?;
    let print = |out: &mut dyn Write, text: &str| {
        writeln!(out, "{text}").map_err(|e| error(format!("cannot write output: {e}")))
    };
    if matches.opt_present("help") {
        print(out, &opts.usage(USAGE))?;
        return Ok(0);
    }
    if matches.opt_present("version") {
        print(out, concat!("fileupload ", env!("CARGO_PKG_VERSION")))?;
        return Ok(0);
    }
    let mut given: Vec<(&str, String)> = Vec::new();
    if let Some(file) = matches.opt_str("config") {
        given.push(("config", file));
    }
    for setting in SETTINGS.iter().filter(|s| s.option) {
        if let Some(value) = matches.opt_str(&setting.option_name()) {
            given.push((setting.name, value));
        }
    }
    let config = Config::load(&given, |var| std::env::var(var).ok()).map_err(error)?;
    let listen_given = matches.opt_present("listen") && matches.free.is_empty();
    if matches.opt_present("fastcgi") || listen_given {
        return serve_fastcgi(config, &given);
    }
    let (name, args) = matches
        .free
        .split_first()
        .ok_or_else(|| error("no command given\nTry 'fileupload --help'."))?;
    let expect_args = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(error(format!(
                "{name} takes {n} argument(s), got {}",
                args.len()
            )))
        }
    };
    let id = |config: &Config| -> Result<Identifier, Exit> {
        verify_identifier(&args[0], config.upload_key.as_ref())
            .map_err(|e| error(format!("{}: {e}", args[0])))
    };
    let pool = config.pool();
    match name.as_str() {
        "new-id" => {
            expect_args(0)?;
            let id = match policy_options(&matches)? {
                None => create_identifier(config.upload_key.as_ref()).map_err(error)?,
                Some(policy) => {
                    let key = config.upload_key.as_ref().ok_or_else(|| {
                        error(
                            "new-id with a policy needs an upload key (--upload-key, \
                             --upload-key-file or the upload_key setting): an unsigned \
                             policy would bind no one",
                        )
                    })?;
                    create_identifier_with_policy(key, &policy).map_err(error)?
                }
            };
            print(out, id.as_str())?;
            Ok(0)
        }
        "verify-id" => {
            expect_args(1)?;
            match verify_identifier(&args[0], config.upload_key.as_ref()) {
                Ok(_) => Ok(0),
                Err(e) => Err(Exit {
                    code: 1,
                    message: format!("{}: {e}", args[0]),
                }),
            }
        }
        "status" => {
            expect_args(1)?;
            let status = pool.status(&id(&config)?).map_err(error)?;
            print(out, &status.to_json())?;
            Ok(0)
        }
        "path" => {
            expect_args(1)?;
            let id = id(&config)?;
            let status = pool.status(&id).map_err(error)?;
            if status.state != State::Done {
                return Err(Exit {
                    code: 1,
                    message: format!("upload {id} is not complete (state {:?})", status.state),
                });
            }
            for file in status.files() {
                print(out, &file.path)?;
            }
            Ok(0)
        }
        "clear" => {
            expect_args(1)?;
            pool.clear(&id(&config)?).map_err(error)?;
            Ok(0)
        }
        "serve" => {
            expect_args(0)?;
            let address = matches
                .opt_str("http")
                .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
            fileupload::serve::run(config, &address).map_err(error)?;
            Ok(0)
        }
        "gc" => {
            expect_args(0)?;
            // The setting's 0 means "no automatic gc", which is no age to
            // collect by; on the command line the administrator asked for a
            // collection now, so 0 there means "whatever the age".
            // (An empty value is unset, as everywhere else.)
            let asked = matches
                .opt_str("max-age")
                .is_some_and(|v| !v.trim().is_empty());
            let max_age = if asked {
                config.max_age.unwrap_or(std::time::Duration::ZERO)
            } else {
                config
                    .max_age
                    .ok_or_else(|| error("gc needs --max-age DURATION (or the max_age setting)"))?
            };
            let report = pool.gc(max_age).map_err(error)?;
            print(out, &serde_json::to_string(&report).unwrap_or_default())?;
            Ok(0)
        }
        other => Err(error(format!(
            "unknown command {other:?}\nTry 'fileupload --help'."
        ))),
    }
}

/// The policy new-id's options ask for; `None` when none is given.
fn policy_options(matches: &getopts::Matches) -> Result<Option<Policy>, Exit> {
    let given = |name: &str| matches.opt_str(name).filter(|v| !v.trim().is_empty());
    let mut policy = Policy::default();
    let mut any = false;
    if let Some(text) = given("expires") {
        let duration = parse_duration(&text).flatten().ok_or_else(|| {
            error(format!(
                "--expires {text:?}: expected a duration above 0, such as 90s, 30m, 1h or 7d"
            ))
        })?;
        let now = fileupload::pool::unix_now();
        // Rounded up: an identifier never expires before what was asked.
        let seconds = duration.as_millis().div_ceil(1000);
        let seconds = u64::try_from(seconds).unwrap_or(u64::MAX);
        policy.expires = Some(now.saturating_add(seconds));
        any = true;
    }
    if let Some(text) = given("size-limit") {
        let size = parse_size(&text).flatten().ok_or_else(|| {
            error(format!(
                "--size-limit {text:?}: expected a size above 0, such as 512K, 100M or 2G \
                 (a bare number is megabytes, as for --max-size)"
            ))
        })?;
        policy.size_limit = Some(size);
        any = true;
    }
    if let Some(text) = given("accept") {
        let accept = parse_accept(&text).map_err(|e| error(format!("--accept {text:?}: {e}")))?;
        if accept.is_empty() {
            return Err(error(format!("--accept {text:?}: no media type given")));
        }
        policy.accept = accept;
        any = true;
    }
    if let Some(text) = given("file-limit") {
        let limit = text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                error(format!(
                    "--file-limit {text:?}: expected a whole number above 0"
                ))
            })?;
        policy.file_limit = Some(limit);
        any = true;
    }
    Ok(any.then_some(policy))
}

fn serve_fastcgi(config: Config, given: &[(&str, String)]) -> Result<i32, Exit> {
    use fileupload::fastcgi::{ConfigSources, Listener, ServerOptions, serve};
    let (listener, place) = match &config.listen {
        Some(address) => {
            let listener = Listener::bind(address, config.socket_mode)
                .map_err(|e| error(format!("cannot listen on {address}: {e}")))?;
            (listener, address.clone())
        }
        None => (
            Listener::from_stdin().map_err(error)?,
            "the socket on stdin".to_owned(),
        ),
    };
    let options = ServerOptions::from_config(&config);
    fileupload::log!(
        "serving FastCGI on {place} with {} workers and up to {} uploads, pool {}",
        options.workers,
        options.max_uploads,
        config.directory.display()
    );
    // Keep serving: the pool may be a mount that comes later, and every
    // request answers with the reason meanwhile.
    if let Err(err) = config.pool().check() {
        fileupload::log!("warning: {err}; requests fail until this is fixed");
    }
    let sources = ConfigSources::capture(given);
    serve(config, sources, listener, options)
        .map_err(|e| error(format!("FastCGI server failed: {e}")))?;
    Ok(0)
}
