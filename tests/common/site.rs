//! A temporary deployment behind a real web server, for the end-to-end
//! tests: examples from conf-examples/ rendered with the test's paths and
//! port, servers run the way Debian runs them (as www-data), each stopped
//! by its own pid (and the process group it leads).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{random_bytes, sha256_hex};

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf-examples");
/// The size limits the examples document, and what the tests use instead.
pub const MAX_SIZE_MIB: u64 = 4;
pub const SERVER_LIMIT_MIB: u64 = 5;

/// Fails loudly when a program the test needs is missing.
pub fn require(program: &str, package: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin:/usr/bin";
    dirs.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is missing: apt-get install -y {package} (scripts/test installs it)")
        })
}

pub fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary deployment: the program, a pool, a run directory, and the
/// processes serving them.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub pool: PathBuf,
    pub run: PathBuf,
    pub port: u16,
    /// Path before `/upload` in URLs.
    pub prefix: String,
    pub processes: Vec<(String, Child)>,
    /// Logs to show when something fails.
    pub logs: Vec<PathBuf>,
    /// The size limits put in place of the examples' 100/101 MiB.
    pub max_size_mib: u64,
    pub server_limit_mib: u64,
    /// Settings added to the daemon's environment file, as an admin would.
    pub daemon_env: Vec<(String, String)>,
}

impl Site {
    pub fn new() -> Site {
        assert!(
            rustix::process::geteuid().is_root(),
            "the end-to-end server tests run as root (as scripts/test does in CI)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bin/fileupload");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(super::bin(), &bin).unwrap();
        let pool = dir.path().join("pool");
        let run = dir.path().join("run");
        for (path, mode) in [(&pool, 0o700), (&run, 0o755)] {
            std::fs::create_dir(path).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            run_chown(path);
        }
        Site {
            dir,
            bin,
            pool,
            run,
            port: free_port(),
            prefix: String::new(),
            processes: Vec::new(),
            logs: Vec::new(),
            max_size_mib: MAX_SIZE_MIB,
            server_limit_mib: SERVER_LIMIT_MIB,
            daemon_env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where the web server listens.
    pub fn port_substitution(&self) -> (&'static str, String) {
        ("127.0.0.1:8080", format!("127.0.0.1:{}", self.port))
    }

    /// Where the program and its pool are.
    pub fn program_substitutions(&self) -> Vec<(&'static str, String)> {
        vec![
            ("/usr/local/bin/fileupload", self.bin.display().to_string()),
            ("/var/lib/fileupload", self.pool.display().to_string()),
        ]
    }

    /// An example with its documented values replaced. Each must be there:
    /// an edited example fails here rather than run with system paths.
    pub fn render(&self, name: &str, substitutions: &[(&str, String)]) -> String {
        let mut text = std::fs::read_to_string(Path::new(EXAMPLES).join(name))
            .unwrap_or_else(|e| panic!("conf-examples/{name}: {e}"));
        for (from, to) in substitutions {
            assert!(
                text.contains(from),
                "conf-examples/{name} no longer contains {from:?}"
            );
            text = text.replace(from, to);
        }
        text
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn spawn(&mut self, name: &str, command: &mut Command, log: Option<PathBuf>) {
        if let Some(log) = &log {
            command.stderr(std::fs::File::create(log).unwrap());
            self.logs.push(log.clone());
        } else {
            command.stderr(Stdio::null());
        }
        // Its own process group: a server's helpers (fcgiwrap's preforked
        // children, which outlive their parent) are stopped with it.
        command.stdout(Stdio::null()).process_group(0);
        // Each site runs a copy of the binary, written just before. While
        // it was open for writing, a test on another thread may have
        // forked, and until that child execs it holds the copy open too:
        // exec then fails with ETXTBSY for a moment (a known race of any
        // multithreaded program that writes and runs a file).
        let mut tries = 0;
        let child = loop {
            match command.spawn() {
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                        && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap_or_else(|e| panic!("starting {name}: {e}")),
            }
        };
        self.processes.push((name.to_owned(), child));
    }

    /// Waits until the HTTP port answers.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .processes
                .iter_mut()
                .find_map(|(name, child)| Some((name.clone(), child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                panic!(
                    "{name} exited ({status}) before serving:\n{}",
                    self.logs_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server never listened:\n{}",
                self.logs_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs_text(&self) -> String {
        let mut text = String::new();
        for log in &self.logs {
            text += &format!(
                "--- {}\n{}\n",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        text
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!(
            "http://127.0.0.1:{}{}{path_and_query}",
            self.port, self.prefix
        )
    }

    pub fn get(&self, path_and_query: &str) -> (u16, String) {
        let target = format!("{}{path_and_query}", self.prefix);
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(stream, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// One request with any method, headers and body (HTTP/1.0, so that
    /// no server answers in chunks); the status, the header lines and the
    /// body. Status 0: no answer.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let target = format!("{}{path_and_query}", self.prefix);
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = format!("{method} {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += &format!("Content-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).unwrap();
        // A server may answer before reading the whole body (and close).
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(response.len());
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let body = response.get(split + 4..).unwrap_or_default().to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn status(&self, id: &str) -> serde_json::Value {
        let (code, body) = self.get(&format!("/upload/status?X-Progress-ID={id}"));
        assert_eq!(code, 200, "status of {id}: {body}\n{}", self.logs_text());
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("status of {id} is not JSON ({e}): {body}"))
    }

    pub fn upload(&self, id: &str, file: &Path, rate: Option<&str>) -> Curl {
        let out = self.path(&format!("curl-{id}.out"));
        let mut command = Command::new("curl");
        command
            .args(["-s", "-o"])
            .arg(&out)
            .args(["-w", "%{http_code} %{size_upload}"]);
        if let Some(rate) = rate {
            command.args(["--limit-rate", rate]);
        }
        command
            .arg("-F")
            .arg(format!(
                "file=@{};type=application/octet-stream",
                file.display()
            ))
            .arg(self.url(&format!("/upload?X-Progress-ID={id}")))
            .stdout(Stdio::piped());
        Curl {
            child: command.spawn().expect("run curl"),
            out,
        }
    }

    pub fn data_file(&self, name: &str, len: usize, seed: u64) -> (PathBuf, String) {
        let data = random_bytes(len, seed);
        let path = self.path(name);
        std::fs::write(&path, &data).unwrap();
        (path, sha256_hex(&data))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // Stop each by its own pid (and the process group it leads):
        // SIGTERM, then SIGKILL if it lingers.
        for (_, child) in self.processes.iter_mut().rev() {
            let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) else {
                continue;
            };
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = child.wait();
        }
    }
}

/// An answer from [`Site::request`].
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn run_chown(path: &Path) {
    run(Command::new("chown").arg("www-data:www-data").arg(path));
}

/// A curl upload in progress.
pub struct Curl {
    pub child: Child,
    pub out: PathBuf,
}

impl Curl {
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The HTTP status and body (status 0: no answer, the connection broke).
    pub fn finish(self) -> (u16, String) {
        let (code, body, _) = self.finish_counting();
        (code, body)
    }

    /// Also how many bytes of the request curl sent before it ended.
    pub fn finish_counting(self) -> (u16, String, u64) {
        let output = self.child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut words = text.split_whitespace();
        let code = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let sent = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        (
            code,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            sent,
        )
    }
}

// ---- launchers -------------------------------------------------------------

pub fn start_nginx(site: &mut Site, example: &str, extra: &[(&str, String)]) {
    let mut substitutions = vec![
        site.port_substitution(),
        (
            "client_max_body_size 101m;",
            format!("client_max_body_size {}m;", site.server_limit_mib),
        ),
    ];
    substitutions.extend(extra.iter().cloned());
    let server_block = site.render(example, &substitutions);
    start_nginx_with(site, &server_block);
}

/// nginx with `server_block` as its only site.
pub fn start_nginx_with(site: &mut Site, server_block: &str) {
    let nginx = require("nginx", "nginx");
    site.write("site.conf", server_block);
    std::fs::copy("/etc/nginx/fastcgi_params", site.path("fastcgi_params")).unwrap();
    let temp = site.path("nginx-temp");
    std::fs::create_dir(&temp).unwrap();
    run_chown(&temp);
    let dir = site.dir.path().display().to_string();
    // The main configuration is Debian's in substance (workers as
    // www-data, `worker_processes auto`: one a core, its MIME types, so the
    // demo page's script goes out as JavaScript), with the connection limits the README's FastCGI daemon
    // section tells an administrator to set for thousands of concurrent
    // uploads, taken from that section's nginx block. The site is the
    // example.
    let limits = readme_nginx_limits();
    let main = format!(
        "user www-data;\ndaemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\n{limits}\n\
         http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n  access_log off;\n  client_body_temp_path {dir}/nginx-temp/body;\n  fastcgi_temp_path {dir}/nginx-temp/fastcgi;\n\
         proxy_temp_path {dir}/nginx-temp/proxy;\n  uwsgi_temp_path {dir}/nginx-temp/uwsgi;\n  scgi_temp_path {dir}/nginx-temp/scgi;\n\
         include {dir}/site.conf;\n}}\n"
    );
    let conf = site.write("nginx.conf", &main);
    let log = site.path("nginx-error.log");
    site.logs.push(log);
    site.spawn(
        "nginx",
        Command::new(require("prlimit", "util-linux"))
            .arg(systemd_open_files(None))
            .arg(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(site.dir.path()),
        None,
    );
    site.wait_ready();
}

/// The README's advice for nginx's main configuration under thousands of
/// uploads (`worker_rlimit_nofile`, the `events` block): its first
/// `nginx` code block, as written there.
pub fn readme_nginx_limits() -> String {
    let readme = include_str!("../../README.md");
    let block = readme
        .split_once("\n```nginx\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("the README's nginx block for thousands of uploads is missing");
    for directive in ["worker_rlimit_nofile", "worker_connections"] {
        assert!(
            block.contains(directive),
            "the README's nginx block no longer sets {directive}:\n{block}"
        );
    }
    block.to_owned()
}

/// Debian's own fcgiwrap units, read from where the package installs them.
fn debian_unit(name: &str) -> PathBuf {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is missing: apt-get install -y fcgiwrap (scripts/test installs it)")
        })
}

/// `KEY=VALUE` lines of a `[Section]` of a unit file, in order.
fn unit_directives(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside && !line.is_empty() && !line.starts_with('#') && !line.starts_with(';') {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
            out.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// An assignment as systemd reads it from `Environment=` or an
/// `EnvironmentFile=`: surrounding quotes removed.
fn env_assignment(text: &str) -> (String, String) {
    let (name, value) = text.split_once('=').unwrap_or_else(|| panic!("{text:?}"));
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value);
    (name.trim().to_owned(), unquoted.to_owned())
}

/// systemd's `ExecStart=` expansion (systemd.service(5), "Command lines"):
/// `${NAME}` is replaced by the exact value, ALWAYS one argument, whitespace
/// and all; `$NAME` as a word of its own is split at whitespace.
fn expand_exec(exec: &str, env: &[(String, String)]) -> Vec<String> {
    let value = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut args = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            args.extend(value(name).split_whitespace().map(str::to_owned));
            continue;
        }
        let mut arg = String::new();
        let mut rest = word;
        while let Some(at) = rest.find("${") {
            arg += &rest[..at];
            let close = rest[at..].find('}').unwrap_or_else(|| panic!("{word:?}")) + at;
            arg += &value(&rest[at + 2..close]);
            rest = &rest[close + 1..];
        }
        arg += rest;
        args.push(arg);
    }
    args
}

/// fcgiwrap as Debian's fcgiwrap.socket and fcgiwrap.service run it, read
/// from the installed units: the socket unit's listening socket (owner,
/// mode) as the FastCGI socket on stdin, the service's user, its
/// `Environment=`, its `EnvironmentFile=-/etc/default/fcgiwrap` (here the
/// test's `etc_default`, if given) and its `ExecStart=`, with `dropin` (a
/// drop-in's text) applied on top as systemd applies one. Returns the
/// command, not started, and the socket path.
pub fn debian_fcgiwrap(
    site: &Site,
    dropin: Option<&str>,
    etc_default: Option<&str>,
) -> (Command, PathBuf) {
    require("fcgiwrap", "fcgiwrap");
    let read = |path: &Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let socket_unit = unit_directives(&read(&debian_unit("fcgiwrap.socket")), "Socket");
    let mut service = unit_directives(&read(&debian_unit("fcgiwrap.service")), "Service");
    if let Some(dropin) = dropin {
        service.extend(unit_directives(dropin, "Service"));
    }
    let one = |directives: &[(String, String)], key: &str| {
        directives
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key}= missing"))
    };
    let mut env = Vec::new();
    let mut exec = None;
    for (key, value) in &service {
        match key.as_str() {
            "Environment" => env.push(env_assignment(value)),
            "EnvironmentFile" => {
                let optional = value.starts_with('-');
                assert_eq!(
                    value.trim_start_matches('-'),
                    "/etc/default/fcgiwrap",
                    "Debian's unit changed"
                );
                match etc_default {
                    Some(text) => env.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(env_assignment),
                    ),
                    None => assert!(optional, "the unit needs /etc/default/fcgiwrap"),
                }
            }
            // An empty ExecStart= resets the command, as a drop-in does
            // before giving its own.
            "ExecStart" => exec = (!value.is_empty()).then(|| value.clone()),
            _ => {}
        }
    }
    let args = expand_exec(&exec.expect("no ExecStart="), &env);
    assert_eq!(
        one(&socket_unit, "ListenStream"),
        "/run/fcgiwrap.socket",
        "Debian's socket unit changed"
    );
    let socket = site.run.join("fcgiwrap.socket");
    let listener = UnixListener::bind(&socket).unwrap();
    run(Command::new("chown")
        .arg(format!(
            "{}:{}",
            one(&socket_unit, "SocketUser"),
            one(&socket_unit, "SocketGroup")
        ))
        .arg(&socket));
    let mode = u32::from_str_radix(&one(&socket_unit, "SocketMode"), 8).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", one(&service, "User")))
        .arg(format!("--regid={}", one(&service, "Group")))
        .arg("--init-groups")
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    for (name, value) in &env {
        command.env(name, value);
    }
    (command, socket)
}

/// fcgiwrap as the README tells an administrator to run it: Debian's units
/// with conf-examples/systemd/fcgiwrap.service.d/children.conf.
pub fn start_fcgiwrap(site: &mut Site) -> PathBuf {
    let dropin = std::fs::read_to_string(
        Path::new(EXAMPLES).join("systemd/fcgiwrap.service.d/children.conf"),
    )
    .unwrap();
    start_fcgiwrap_with(site, Some(&dropin))
}

/// Debian's fcgiwrap units with `dropin`, started.
pub fn start_fcgiwrap_with(site: &mut Site, dropin: Option<&str>) -> PathBuf {
    let (mut command, socket) = debian_fcgiwrap(site, dropin, None);
    let log = site.path("fcgiwrap.log");
    site.spawn("fcgiwrap", &mut command, Some(log));
    socket
}

/// The daemon as systemd runs it from conf-examples/systemd: the socket
/// unit's listening socket (owner, mode) on the service's stdin, the
/// service's command, user and environment (Environment= and the
/// EnvironmentFile, conf-examples/fileupload.env). The rendered units must
/// also pass `systemd-analyze verify`.
pub fn start_systemd_daemon(site: &mut Site) -> PathBuf {
    let socket_path = site.run.join("fileupload.sock");
    let env_file = site.path("fileupload.env");
    let socket_substitution = (
        "/run/fileupload/fileupload.sock",
        socket_path.display().to_string(),
    );
    let socket_unit = site.write(
        "systemd/fileupload.socket",
        &site.render(
            "systemd/fileupload.socket",
            std::slice::from_ref(&socket_substitution),
        ),
    );
    let mut substitutions = site.program_substitutions();
    substitutions.push(("/etc/fileupload.env", env_file.display().to_string()));
    substitutions.push((
        "FILEUPLOAD_MAX_SIZE=100",
        format!("FILEUPLOAD_MAX_SIZE={}", site.max_size_mib),
    ));
    let service_unit = site.write(
        "systemd/fileupload.service",
        &site.render("systemd/fileupload.service", &substitutions),
    );
    let mut env_text = std::fs::read_to_string(Path::new(EXAMPLES).join("fileupload.env")).unwrap();
    for (name, value) in &site.daemon_env {
        env_text += &format!("{name}={value}\n");
    }
    std::fs::write(&env_file, env_text).unwrap();

    let verify = Command::new(require("systemd-analyze", "systemd"))
        .args(["verify", "--man=no"])
        .arg(&socket_unit)
        .arg(&service_unit)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    let unit = |path: &Path, key: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    let one = |path: &Path, key: &str| {
        unit(path, key)
            .pop()
            .unwrap_or_else(|| panic!("{key}= missing"))
    };
    assert_eq!(
        one(&socket_unit, "ListenStream"),
        socket_path.display().to_string()
    );
    assert_eq!(one(&service_unit, "StandardInput"), "socket");
    let listener = UnixListener::bind(&socket_path).unwrap();
    run(Command::new("chown")
        .arg(format!(
            "{}:{}",
            one(&socket_unit, "SocketUser"),
            one(&socket_unit, "SocketGroup")
        ))
        .arg(&socket_path));
    let mode = u32::from_str_radix(&one(&socket_unit, "SocketMode"), 8).unwrap();
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(mode)).unwrap();

    let exec = one(&service_unit, "ExecStart");
    let mut words = exec.split_whitespace();
    let mut command = Command::new(require("prlimit", "util-linux"));
    command
        .arg(systemd_open_files(
            unit(&service_unit, "LimitNOFILE").pop().as_deref(),
        ))
        .arg("setpriv")
        .arg(format!("--reuid={}", one(&service_unit, "User")))
        .arg(format!("--regid={}", one(&service_unit, "Group")))
        .arg("--init-groups")
        .arg(words.next().unwrap())
        .args(words)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    for assignment in unit(&service_unit, "Environment") {
        let (name, value) = assignment.split_once('=').unwrap();
        command.env(name, value);
    }
    for file in unit(&service_unit, "EnvironmentFile") {
        let text = std::fs::read_to_string(file.trim_start_matches('-')).unwrap();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.split_once('=').unwrap();
            command.env(name, value);
        }
    }
    let log = site.path("daemon.log");
    site.spawn("fileupload daemon", &mut command, Some(log));
    socket_path
}

/// `prlimit`'s option for the open-file limits systemd gives a service:
/// the unit's `LimitNOFILE=` (`N` or `SOFT:HARD`), or systemd's default,
/// 1024 soft and 524288 hard (systemd-system.conf(5), `DefaultLimitNOFILE=`;
/// Debian's nginx.service sets none). A server that needs more than 1024
/// must raise its own soft limit (nginx: `worker_rlimit_nofile`), as it
/// must under systemd. The hard limit is capped at this process's own: the
/// test machines' root may lack CAP_SYS_RESOURCE to raise it.
pub fn systemd_open_files(unit_setting: Option<&str>) -> String {
    let own_hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let (soft, hard) = match unit_setting {
        Some(value) => {
            let (soft, hard) = value.split_once(':').unwrap_or((value, value));
            let parse = |v: &str| {
                if v == "infinity" {
                    u64::MAX
                } else {
                    v.parse()
                        .unwrap_or_else(|_| panic!("LimitNOFILE={value} is not N or SOFT:HARD"))
                }
            };
            (parse(soft), parse(hard))
        }
        None => (1024, 524288),
    };
    let hard = hard.min(own_hard);
    format!("--nofile={}:{hard}", soft.min(hard))
}

pub fn start_apache(
    site: &mut Site,
    example: &str,
    site_text: Option<String>,
    extra: &[(&str, String)],
) {
    let apache = require("apache2", "apache2");
    let text = match site_text {
        Some(text) => text,
        None => {
            let mut substitutions = vec![site.port_substitution()];
            substitutions.extend(extra.iter().cloned());
            site.render(example, &substitutions)
        }
    };
    // The example names the modules it needs.
    let modules: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("# Modules:"))
        .unwrap_or_else(|| panic!("{example} does not name its modules"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let run_dir = site.run.display().to_string();
    let dir = site.dir.path().display().to_string();
    let mut main = format!(
        "ServerRoot /etc/apache2\nServerName localhost\nDefaultRuntimeDir {run_dir}\nPidFile {run_dir}/httpd.pid\n\
         Mutex file:{run_dir} default\nUser www-data\nGroup www-data\nErrorLog {dir}/apache-error.log\nLogLevel warn\n\
         TypesConfig /etc/mime.types\n"
    );
    for module in ["mpm_event", "authz_core", "mime"]
        .iter()
        .copied()
        .chain(modules.iter().map(String::as_str))
    {
        main += &format!("LoadModule {module}_module /usr/lib/apache2/modules/mod_{module}.so\n");
    }
    if modules.iter().any(|m| m == "cgid") {
        main += &format!("ScriptSock {run_dir}/cgisock\n");
    }
    if modules.iter().any(|m| m == "fcgid") {
        main +=
            &format!("FcgidIPCDir {run_dir}/fcgid\nFcgidProcessTableFile {run_dir}/fcgid_shm\n");
    }
    site.write("site.conf", &text);
    main += &format!("Include {dir}/site.conf\n");
    let conf = site.write("httpd.conf", &main);
    site.logs.push(site.path("apache-error.log"));
    site.spawn(
        "apache2",
        Command::new(apache)
            .arg("-f")
            .arg(&conf)
            .arg("-DFOREGROUND"),
        None,
    );
    site.wait_ready();
}

/// The demo page's folder installed where `example`'s `root` points, by
/// running the `install` line its comment gives (from the repository's
/// root, as a reader of the example would), so that the test serves
/// exactly what a reader who follows it gets.
pub fn install_demo_page(site: &Site, example: &str) -> PathBuf {
    const SHARE: &str = "/usr/local/share/fileupload";
    let text = std::fs::read_to_string(Path::new(EXAMPLES).join(example))
        .unwrap_or_else(|e| panic!("conf-examples/{example}: {e}"));
    let line = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .map(str::trim)
        .find(|l| l.starts_with("install ") && l.contains(SHARE))
        .unwrap_or_else(|| {
            panic!("conf-examples/{example} no longer says how to install the demo page")
        });
    assert!(
        include_str!("../../README.md").contains(line),
        "the README does not give conf-examples/{example}'s line: {line}"
    );
    let demo = site.path("demo");
    run(Command::new("sh")
        .arg("-c")
        .arg(line.replace(SHARE, &demo.display().to_string()))
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    demo
}

/// nginx-fastcgi.conf in front of the daemon as the systemd units start
/// it, with the demo page where the example serves it. Returns the
/// daemon's socket.
pub fn start_nginx_with_the_daemon(site: &mut Site) -> PathBuf {
    let socket = start_systemd_daemon(site);
    start_nginx_fastcgi(site, &socket, &[]);
    socket
}

/// nginx-fastcgi.conf pointed at the daemon's `socket`, with the demo page
/// where the example serves it, and the test's own `extra` substitutions.
pub fn start_nginx_fastcgi(site: &mut Site, socket: &Path, extra: &[(&str, String)]) {
    let demo = install_demo_page(site, "nginx-fastcgi.conf");
    let mut substitutions = vec![
        (
            "unix:/run/fileupload/fileupload.sock",
            format!("unix:{}", socket.display()),
        ),
        ("/usr/local/share/fileupload", demo.display().to_string()),
    ];
    substitutions.extend(extra.iter().cloned());
    start_nginx(site, "nginx-fastcgi.conf", &substitutions);
}

/// nginx-fcgiwrap.conf in front of fcgiwrap started from `dropin` (none:
/// Debian's units as installed), with the program both where the
/// `/upload` location names it and in a cgi-bin folder for the
/// `/cgi-bin/fileupload/` location; the site's size limits in place of
/// the example's, the demo page where the example serves it, and the
/// test's own `extra` substitutions.
pub fn start_nginx_fcgiwrap(site: &mut Site, dropin: Option<&str>, extra: &[(&str, String)]) {
    let socket = start_fcgiwrap_with(site, dropin);
    let cgi_bin = site.path("cgi-bin");
    std::fs::create_dir(&cgi_bin).unwrap();
    std::fs::copy(&site.bin, cgi_bin.join("fileupload")).unwrap();
    let demo = install_demo_page(site, "nginx-fcgiwrap.conf");
    let substitutions = [
        site.program_substitutions(),
        vec![
            ("/usr/local/share/fileupload", demo.display().to_string()),
            (
                "unix:/run/fcgiwrap.socket",
                format!("unix:{}", socket.display()),
            ),
            (
                "FILEUPLOAD_MAX_SIZE 100;",
                format!("FILEUPLOAD_MAX_SIZE {};", site.max_size_mib),
            ),
            (
                "/usr/lib$fastcgi_script_name",
                format!("{}$fastcgi_script_name", site.dir.path().display()),
            ),
        ],
        extra.to_vec(),
    ]
    .concat();
    start_nginx(site, "nginx-fcgiwrap.conf", &substitutions);
}

/// The drop-in the README gives fcgiwrap for several processes.
pub fn children_dropin() -> String {
    std::fs::read_to_string(Path::new(EXAMPLES).join("systemd/fcgiwrap.service.d/children.conf"))
        .unwrap()
}

/// `fileupload serve`, the development server, as the README starts it,
/// on the site's port, with the site's pool and size limit in its
/// environment.
pub fn start_serve(site: &mut Site) {
    let log = site.path("serve.log");
    let mut command = Command::new(&site.bin);
    command
        .env_clear()
        .env("FILEUPLOAD_DIRECTORY", &site.pool)
        .env("FILEUPLOAD_MAX_SIZE", site.max_size_mib.to_string())
        .arg("serve")
        .arg("--http")
        .arg(format!("127.0.0.1:{}", site.port));
    for (name, value) in &site.daemon_env {
        command.env(name, value);
    }
    site.spawn("fileupload serve", &mut command, Some(log));
    site.wait_ready();
}
