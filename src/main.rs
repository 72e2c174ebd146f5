//! `fileupload`: run by a web server it answers one CGI request; from a
//! shell it runs a command (see `fileupload --help`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // One line in the web server's error log, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("fileupload: internal error: {info}");
    }));
    let code = if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        // RFC 3875 may pass search words as arguments; they mean nothing here.
        fileupload::cgi::run(fileupload::Config::from_env())
    } else {
        fileupload::cli::run(std::env::args_os().skip(1).collect())
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
