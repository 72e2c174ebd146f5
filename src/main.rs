//! `fileupload`: run by a web server it answers one CGI request; given a
//! listening socket it serves FastCGI; from a shell it runs a command (see
//! `fileupload --help`).

#![forbid(unsafe_code)]

// The command line is the binary's alone: applications use the library.
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // One line in the web server's error log, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        fileupload::log!("internal error: {info}");
    }));
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let code = if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        // RFC 3875 may pass search words as arguments; they mean nothing here.
        fileupload::cgi::run(fileupload::Config::from_env())
    } else if args.is_empty() && fileupload::fastcgi::stdin_is_listening_socket() {
        // Started by spawn-fcgi, mod_fcgid or lighttpd: FastCGI on stdin.
        cli::run(vec!["--fastcgi".into()])
    } else {
        cli::run(args)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
