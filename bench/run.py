#!/usr/bin/env python3
"""The fileupload benchmark: everything measured side by side in one run.

Prints one line per figure (`name: value unit`), the ratios the targets are
stated in, and writes bench/results.md (and the README's copy of it). Every
stored file is checked against the SHA-256 of what was sent, so a fast wrong
answer cannot score. Times are medians of repeated runs, taken in
interleaved order, because these machines are shared and noisy: only the
ratios between figures of the same run mean anything.

Usage: bench/run [--quick] [--work DIR] [--only slow-clients]

--only slow-clients runs only the slow-client scenarios (tests/slow_clients.rs,
about two minutes) and updates their rows of bench/results.md and the README.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "fileupload"
VENV = ROOT / "target" / "bench-venv"
BOUNDARY = "fileuploadBenchBoundary7MA4YWxk"
GIB = 1 << 30
MIB = 1 << 20

results = []  # (name, value, unit)


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def figure(name, value, unit):
    results.append((name, value, unit))
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{name}: {shown} {unit}", flush=True)


def get(name):
    for n, v, _ in results:
        if n == name:
            return v
    raise KeyError(name)


# ---- setup -------------------------------------------------------------------

APT = {
    "nginx": "nginx",
    "fcgiwrap": "fcgiwrap",
    "wrk": "wrk",
    "php-cgi": "php-cgi",
    "curl": "curl",
    "gcc": "gcc",
}


def install():
    """Installs what is missing: Debian packages, python-multipart in a venv."""
    need = [pkg for prog, pkg in APT.items() if not shutil.which(prog) and not Path("/usr/sbin", prog).exists()]
    if not Path("/usr/lib/nginx/modules/ngx_http_uploadprogress_module.so").exists():
        need.append("libnginx-mod-http-uploadprogress")
    if need:
        if os.geteuid() != 0:
            sys.exit(f"bench: missing {' '.join(need)}; run as root or apt-get install -y {' '.join(need)}")
        say("installing", *need)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )
    python = VENV / "bin" / "python3"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import python_multipart"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "python-multipart==0.0.20"], check=True)
    say("building the release binary")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


# ---- inputs ------------------------------------------------------------------

def make_body(path, files, fields=()):
    """Writes a multipart body; returns (length, [sha256 of each file])."""
    digests = []
    block = os.urandom(4 * MIB)
    with open(path, "wb") as out:
        for name, value in fields:
            out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for i, size in enumerate(files):
            out.write(
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f{i}.bin"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            digest = hashlib.sha256()
            left = size
            offset = i * 977  # each file its own bytes
            while left:
                piece = block[offset % len(block):][: min(left, len(block) - offset % len(block))]
                out.write(piece)
                digest.update(piece)
                left -= len(piece)
                offset += len(piece)
            out.write(b"\r\n")
            digests.append(digest.hexdigest())
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return path.stat().st_size, digests


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


# ---- running -----------------------------------------------------------------

def measure(argv, env=None, stdin=None, stdout=subprocess.DEVNULL):
    """Runs a command; returns (wall s, cpu s, peak RSS KiB).

    Peak RSS comes from /usr/bin/time, not from our own wait4: a child this
    (large) Python process forks counts Python's pages until it execs."""
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", report.name, *argv],
                                env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        if code != 0:
            raise RuntimeError(f"{argv[0]} failed ({code}): {err}")
        peak = int(report.read().strip().splitlines()[-1])
    return wall, usage.ru_utime + usage.ru_stime, peak


def settle(body):
    """Starts every run from the same memory state.

    Each round writes gigabytes into the page cache; reclaiming them would
    land on whichever run happens to be allocating, so timings would follow
    the kernel's housekeeping rather than the programs. So: write back,
    drop the page cache, and read the input in again, cached for everyone
    alike."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: runs are noisier, and the medians must absorb it
    with open(body, "rb") as f:
        while f.read(16 * MIB):
            pass


def cgi_env(pool, length, extra=None):
    env = {
        "PATH": "/usr/bin:/bin",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/upload",
        "QUERY_STRING": "X-Progress-ID=bench",
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        "CONTENT_LENGTH": str(length),
        "FILEUPLOAD_DIRECTORY": str(pool),
    }
    env.update(extra or {})
    return env


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


class Runner:
    """Each variant, run `rounds` times in interleaved order; medians."""

    def __init__(self, work, rounds):
        self.work = work
        self.rounds = rounds
        self.samples = {}

    def record(self, name, sample):
        self.samples.setdefault(name, []).append(sample)

    def median(self, name, i):
        return statistics.median(s[i] for s in self.samples[name])


def run_cat_pipe(body, out):
    """`cat body | cat > file`: what any program reading a pipe can do."""
    out.unlink(missing_ok=True)
    settle(body)
    feeder = subprocess.Popen(["cat", str(body)], stdout=subprocess.PIPE)
    with open(out, "wb") as dst:
        sample = measure(["cat"], stdin=feeder.stdout, stdout=dst)
    feeder.wait()
    return sample


def run_cat_file(body, out):
    """`cat body > file`: GNU cat copies file to file in the kernel."""
    out.unlink(missing_ok=True)
    settle(body)
    with open(out, "wb") as dst:
        return measure(["cat", str(body)], stdout=dst)


def run_cat_file_sync(body, out):
    """`cat body > file && sync file`: the floor for a durable copy."""
    out.unlink(missing_ok=True)
    settle(body)
    return measure(["sh", "-c", 'cat "$0" > "$1" && sync "$1"', str(body), str(out)])


# Every figure compared with a program that does not sync (cat, PHP,
# python-multipart, the discarding C CGI) runs with fsync off, so that like
# is compared with like; the fsync figures show what the default costs.
NO_FSYNC = {"FILEUPLOAD_FSYNC": "off"}


def run_fileupload(body, length, digests, pool, extra=None, pipe=False):
    fresh(pool)
    settle(body)
    env = cgi_env(pool, length, {**NO_FSYNC, **(extra or {})})
    if pipe:
        # As a web server hands it over: through a pipe.
        feeder = subprocess.Popen(["cat", str(body)], stdout=subprocess.PIPE)
        sample = measure([str(BIN)], env=env, stdin=feeder.stdout, stdout=subprocess.PIPE)
        feeder.wait()
    else:
        with open(body, "rb") as src:
            sample = measure([str(BIN)], env=env, stdin=src, stdout=subprocess.PIPE)
    stored = sorted((pool / "bench").glob("file-*"), key=lambda p: int(p.name[5:]))
    got = [sha256_file(p) for p in stored]
    if got != digests:
        raise RuntimeError(f"fileupload stored other bytes: {got} != {digests}")
    return sample


def run_php(body, length, digest, work):
    pool = fresh(work / "php-pool")
    tmp = fresh(work / "php-tmp")
    script = work / "upload.php"
    script.write_text(
        "<?php\n"
        "foreach ($_FILES as $f) {\n"
        "  if ($f['error'] !== UPLOAD_ERR_OK) { header('Status: 500'); echo 'error ' . $f['error']; exit(1); }\n"
        "  move_uploaded_file($f['tmp_name'], getenv('POOL') . '/' . bin2hex(random_bytes(8)));\n"
        "}\n"
        "header('Content-Type: application/json'); echo json_encode(['ok' => true]);\n"
    )
    env = cgi_env(pool, length, {"SCRIPT_FILENAME": str(script), "REDIRECT_STATUS": "200", "POOL": str(pool)})
    settle(body)
    argv = [
        "php-cgi", "-d", "upload_max_filesize=16G", "-d", "post_max_size=16G",
        "-d", f"upload_tmp_dir={tmp}", "-d", "memory_limit=256M", "-d", "max_input_time=-1",
        "-d", "max_execution_time=0",
    ]
    with open(body, "rb") as src:
        sample = measure(argv, env=env, stdin=src, stdout=subprocess.PIPE)
    stored = list(pool.iterdir())
    if len(stored) != 1 or sha256_file(stored[0]) != digest:
        raise RuntimeError("php-cgi stored other bytes")
    return sample


PY_MULTIPART = r'''
import os, sys, json
from python_multipart.multipart import MultipartParser, parse_options_header
_, params = parse_options_header(os.environ["CONTENT_TYPE"])
pool = os.environ["POOL"]
state = {"file": None, "n": 0}
def part_begin():
    state["n"] += 1
    state["file"] = open(os.path.join(pool, "part-%d" % state["n"]), "wb")
def part_data(data, start, end):
    state["file"].write(data[start:end])
def part_end():
    state["file"].close()
parser = MultipartParser(params[b"boundary"], {
    "on_part_begin": part_begin, "on_part_data": part_data, "on_part_end": part_end})
left = int(os.environ["CONTENT_LENGTH"])
stdin = sys.stdin.buffer
while left:
    chunk = stdin.read(min(left, 1 << 20))
    if not chunk:
        break
    parser.write(chunk)
    left -= len(chunk)
parser.finalize()
sys.stdout.write("Content-Type: application/json\r\n\r\n" + json.dumps({"parts": state["n"]}))
'''


def run_python_multipart(body, length, digest, work):
    pool = fresh(work / "py-pool")
    script = work / "upload.py"
    script.write_text(PY_MULTIPART)
    env = cgi_env(pool, length, {"POOL": str(pool)})
    settle(body)
    with open(body, "rb") as src:
        sample = measure([str(VENV / "bin" / "python3"), str(script)], env=env, stdin=src, stdout=subprocess.PIPE)
    stored = list(pool.iterdir())
    if len(stored) != 1 or sha256_file(stored[0]) != digest:
        raise RuntimeError("python-multipart stored other bytes")
    return sample


# ---- servers -------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compile_c(work, name, source):
    src = work / f"{name}.c"
    src.write_text(source)
    out = work / name
    subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    out.chmod(0o755)
    return out


FIXED_STATUS_C = r'''
#include <stdio.h>
int main(void) {
    fputs("Status: 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\r\n"
          "{\"state\":\"starting\"}", stdout);
    return 0;
}
'''

DISCARD_C = r'''
#include <stdio.h>
#include <unistd.h>
int main(void) {
    static char buf[1 << 18];
    long total = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) total += n;
    printf("Status: 200 OK\r\nContent-Type: application/json\r\n\r\n{\"received\":%ld}", total);
    return 0;
}
'''


class Servers:
    """nginx with every endpoint the status and throughput figures need."""

    def __init__(self, work, pool):
        self.work = work
        self.pool = pool
        self.procs = []
        self.port = free_port()
        run = work / "run"
        fresh(run)
        os.chmod(run, 0o777)
        os.chmod(work, 0o755)
        shutil.chown(pool, "www-data", "www-data")
        fixed = compile_c(work, "fixed-status", FIXED_STATUS_C)
        discard = compile_c(work, "discard", DISCARD_C)
        self.daemon_sock = run / "fileupload.sock"
        self.fcgiwrap_sock = run / "fcgiwrap.sock"
        self.start(["setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups", str(BIN),
                    "--listen", f"unix:{self.daemon_sock}"],
                   env={"FILEUPLOAD_DIRECTORY": str(pool), "PATH": "/usr/bin:/bin", **NO_FSYNC})
        self.start(["setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups", "fcgiwrap",
                    "-c", "4", "-s", f"unix:{self.fcgiwrap_sock}"])
        self.wait_for_path(self.daemon_sock)
        self.wait_for_path(self.fcgiwrap_sock)
        temp = work / "nginx-temp"
        fresh(temp)
        shutil.chown(temp, "www-data", "www-data")
        conf = work / "nginx.conf"
        w = work
        conf.write_text(f"""
load_module /usr/lib/nginx/modules/ngx_http_uploadprogress_module.so;
user www-data;
daemon off;
worker_processes auto;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; fastcgi_temp_path {temp}/fastcgi; proxy_temp_path {temp}/proxy;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  upload_progress proxied 1m;
  upstream fileupload {{ server unix:{self.daemon_sock}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{self.port};
    client_max_body_size 0;
    fastcgi_request_buffering off;
    location /fcgi/upload {{
      include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass fileupload;
    }}
    location /fcgi-per-request/upload {{
      include /etc/nginx/fastcgi_params; fastcgi_pass unix:{self.daemon_sock};
    }}
    location /cgi/upload {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {BIN};
      fastcgi_param FILEUPLOAD_DIRECTORY {pool};
      fastcgi_pass unix:{self.fcgiwrap_sock};
    }}
    location /floor/status {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {fixed};
      fastcgi_pass unix:{self.fcgiwrap_sock};
    }}
    location /discard {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {discard};
      fastcgi_pass unix:{self.fcgiwrap_sock};
    }}
    location ^~ /progress {{ report_uploads proxied; upload_progress_json_output; }}
  }}
}}
""")
        self.start(["nginx", "-c", str(conf), "-p", str(work)])
        deadline = time.time() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("nginx did not start: " + (work / "nginx-error.log").read_text())
                time.sleep(0.05)

    def start(self, argv, env=None):
        self.procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, process_group=0))

    @staticmethod
    def wait_for_path(path):
        deadline = time.time() + 15
        while not path.exists():
            if time.time() > deadline:
                raise RuntimeError(f"{path} never appeared")
            time.sleep(0.02)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if non2xx or errors:
        raise RuntimeError(f"wrk saw failures on {url}:\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def curl_upload(url, body):
    """POSTs the multipart body from a file; returns (seconds, answer)."""
    start = time.perf_counter()
    out = subprocess.run(
        ["curl", "-s", "-S", "-X", "POST", "-T", str(body), "-H", f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
         "-H", "Expect:", url],
        capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


# ---- slow clients ----------------------------------------------------------------

# The scenarios of tests/slow_clients.rs, which drives them (its client keeps a
# thousand connections trickling on std threads; a Python one would take the
# CPU the daemon is being measured for). Per scenario: the figures it prints on
# its `slow_clients.json:` line that the benchmark reports, as (test's name,
# benchmark's name, unit).
SLOW_SCENARIOS = {
    "a": ("slow.1000_uploads_64k_500_polls", "a_thousand_trickling_uploads_and_500_polls_a_second", [
        ("uploads_ok", "uploads_ok", "of {uploads:.0f} (200, and the SHA-256 right on disk)", None),
        ("sha256_mismatches", "sha256_mismatches", "", None),
        ("poll_p50", "poll_p50", "ms", None),
        ("poll_p99", "poll_p99", "ms", 50),
        ("poll_max", "poll_max", "ms", None),
        ("polls_per_second", "polls_per_second", "/s (of 500)", None),
        ("daemon_peak_rss", "daemon_peak_rss", "MiB", 256),
        ("daemon_rss_per_upload", "daemon_rss_per_upload", "KiB", None),
    ]),
    "b": ("slow.200_slow_200_idle", "slow_and_idle_connections_do_not_starve_polls", [
        ("poll_p99", "poll_p99", "ms", 50),
        ("polls_per_second", "polls_per_second", "/s (of 100)", None),
        ("small_upload_max", "small_upload_64k_max", "ms", 1000),
    ]),
}

# Rounds of each scenario: a thousand uploads on two cores vary from run to
# run with what the file system's journal is doing; the median is reported,
# the goal judged on it, and every round's value shown.
SLOW_ROUNDS = 3

COUNTS = {"uploads_ok", "sha256_mismatches"}


def slow_clients():
    """Runs tests/slow_clients.rs against the release build, SLOW_ROUNDS
    times a scenario, and reports its figures, passing or not: a daemon that
    fails gets its numbers in the table, beside `passed: no`. The goals
    (poll p99 under 50 ms, ...) are judged here, on the median round, not
    by the test."""
    if os.geteuid() != 0:
        sys.exit("bench: the slow-client scenarios run nginx and the daemon as www-data: run as root")
    for key, (prefix, test, wanted) in SLOW_SCENARIOS.items():
        rounds, passed = [], True
        for n in range(SLOW_ROUNDS):
            say(f"slow clients ({key}) round {n + 1}: cargo test --release --test slow_clients {test}")
            proc = subprocess.run(
                ["cargo", "test", "--release", "--quiet", "--test", "slow_clients", "--", "--exact", test, "--nocapture"],
                cwd=ROOT, capture_output=True, text=True)
            found = None
            for line in proc.stdout.splitlines():
                if line.startswith("slow_clients.json: "):
                    found = json.loads(line.split(": ", 1)[1])
            if found is None or found.get("scenario") != key:
                raise RuntimeError(f"tests/slow_clients.rs printed no figures for {test}:\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            rounds.append(found["figures"])
            if proc.returncode != 0:
                passed = False
                reason = [l for l in (proc.stdout + proc.stderr).splitlines() if "panicked at" in l]
                say(f"slow clients ({key}) round {n + 1} failed: {' / '.join(reason[:4])}")
        for source, name, unit, goal in wanted:
            values = [r.get(source) for r in rounds]
            if any(v is None for v in values):  # not measured: what it measures failed
                figure(f"{prefix}.{name}", "failed", unit)
                continue
            if source in COUNTS:
                worst = min(values) if source == "uploads_ok" else max(values)
                figure(f"{prefix}.{name}", int(worst), unit.format(**rounds[0]) + " (worst round)")
                continue
            value = statistics.median(values)
            shown = ", ".join(f"{v:.3g}" for v in values)
            verdict = "" if goal is None else f"; goal < {goal}: {'met' if value < goal else 'missed'}"
            figure(f"{prefix}.{name}", float(value), f"{unit} (median of {shown}{verdict})")
        figure(f"{prefix}.passed", "yes" if passed else "no", f"(all {SLOW_ROUNDS} rounds)")


def merge_markdown(note):
    """Puts this run's figures into bench/results.md (and the README's copy),
    each replacing its row or added after the last figure, and keeps every
    other row: for a partial run (--only)."""
    def merged(table):
        lines = table.split("\n")
        for name, value, unit in results:
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            row = f"| `{name}` | {shown} {unit} |"
            at = next((i for i, l in enumerate(lines) if l.startswith(f"| `{name}` |")), None)
            if at is not None:
                lines[at] = row
                continue
            figure_rows = [i for i, l in enumerate(lines) if l.startswith("| `") and not l.startswith("| `ratio.")]
            lines.insert(figure_rows[-1] + 1 if figure_rows else len(lines), row)
        text = "\n".join(lines)
        marker = "\n\n| figure | value |"
        if note not in text and marker in text:
            text = text.replace(marker, f"\n{note}{marker}", 1)
        return text

    path = ROOT / "bench" / "results.md"
    path.write_text(merged(path.read_text()))
    copied = replace_readme_table(merged)
    say(f"updated {len(results)} rows of bench/results.md{' and the README table' if copied else ''}")


def replace_readme_table(make):
    """Replaces the README's copy of the results (between its bench
    markers) with `make(old copy)`; whether the README has one."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin, end = "<!-- bench:begin -->\n", "<!-- bench:end -->"
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    table, tail = rest.split(end, 1)
    readme.write_text(head + begin + make(table) + end + tail)
    return True


# ---- the benchmark -------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller bodies (a smoke run)")
    parser.add_argument("--work", default=str(ROOT / "target" / "bench-work"),
                        help="scratch directory; the pool and every copy live here, on its filesystem")
    parser.add_argument("--only", choices=["slow-clients"],
                        help="run only this part and update only its rows of bench/results.md")
    args = parser.parse_args()
    if args.only == "slow-clients":
        slow_clients()
        merge_markdown(f"Slow-client rows: `bench/run --only slow-clients`, {time.strftime('%Y-%m-%d')}.")
        return
    install()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rounds = 2 if args.quick else 5
    big = 128 * MIB if args.quick else GIB
    huge = 256 * MIB if args.quick else 4 * GIB
    label = "1g" if big == GIB else f"{big // MIB}m"
    say(f"work directory {work} ({os.statvfs(work).f_bavail * os.statvfs(work).f_frsize // GIB} GiB free)")

    say("making inputs")
    one = work / "one.body"
    one_len, one_sha = make_body(one, [big])
    three = work / "three.body"
    third = big // 3
    three_len, three_sha = make_body(three, [third, third, big - 2 * third], [("title", "benchmark")])
    small = work / "small.body"
    small_len, small_sha = make_body(small, [64 * MIB])
    pool = work / "pool"
    out = work / "cat.out"

    # 1-4: the upload itself, every variant in each round.
    variants = {
        "limit.cat_file_to_file": lambda: run_cat_file(one, out),
        "limit.cat_pipe_to_file": lambda: run_cat_pipe(one, out),
        "cgi.sha_off": lambda: run_fileupload(one, one_len, one_sha, pool, {"FILEUPLOAD_SHA256": "off"}),
        "cgi.sha_on": lambda: run_fileupload(one, one_len, one_sha, pool),
        "cgi.sha_on.pipe": lambda: run_fileupload(one, one_len, one_sha, pool, pipe=True),
        "cgi.sha_off.pipe": lambda: run_fileupload(one, one_len, one_sha, pool, {"FILEUPLOAD_SHA256": "off"}, pipe=True),
        "cgi.three_files_and_a_field.sha_on": lambda: run_fileupload(three, three_len, three_sha, pool),
        "limit.cat_file_to_file_and_sync": lambda: run_cat_file_sync(one, out),
        "cgi.sha_on.fsync_on": lambda: run_fileupload(one, one_len, one_sha, pool, {"FILEUPLOAD_FSYNC": "on"}),
        "php_cgi": lambda: run_php(one, one_len, one_sha[0], work),
        "python_multipart": lambda: run_python_multipart(one, one_len, one_sha[0], work),
    }
    runner = Runner(work, rounds)
    for r in range(rounds):
        say(f"round {r + 1} of {rounds}")
        for name, run in variants.items():
            runner.record(name, run())
    for name in variants:
        figure(f"{name}.{label}.wall", runner.median(name, 0), "s")
        figure(f"{name}.{label}.cpu", runner.median(name, 1), "s")
        if not name.startswith("limit"):
            figure(f"{name}.{label}.peak_rss", runner.median(name, 2) / 1024, "MiB")

    # Progress updates: the two runs differ by a few small status writes, less
    # than the noise between rounds, so they are measured in back-to-back
    # pairs and the ratio is the median of the pairs' ratios.
    say("progress updates, in pairs")
    pairs = []
    for _ in range(3 if args.quick else 9):
        on = run_fileupload(one, one_len, one_sha, pool, {"FILEUPLOAD_SHA256": "off"})[0]
        off = run_fileupload(one, one_len, one_sha, pool,
                             {"FILEUPLOAD_SHA256": "off", "FILEUPLOAD_PROGRESS_INTERVAL": "0"})[0]
        pairs.append((on, off))
    figure(f"cgi.sha_off.progress_off.{label}.wall", statistics.median(p[1] for p in pairs), "s")
    progress_ratio = statistics.median(on / off for on, off in pairs)

    # A durable done for a small upload: the syncs are most of its time, so
    # on and off alternate, each upload under an identifier of its own.
    say("fsync on and off, 1 MiB uploads")
    mib = work / "mib.body"
    mib_len, mib_sha = make_body(mib, [MIB])
    fresh(pool)
    settle(mib)
    small_times = {"on": [], "off": [], "cat_sync": []}
    for n in range(20 if args.quick else 60):
        for mode in ("on", "off"):
            env = cgi_env(pool, mib_len, {"FILEUPLOAD_FSYNC": mode, "QUERY_STRING": f"X-Progress-ID={mode}-{n}"})
            with open(mib, "rb") as src:
                small_times[mode].append(measure([str(BIN)], env=env, stdin=src, stdout=subprocess.PIPE)[0])
            if sha256_file(pool / f"{mode}-{n}" / "file-1") != mib_sha[0]:
                raise RuntimeError("fileupload stored other bytes (1 MiB)")
        target = work / f"cat-sync-{n}"
        small_times["cat_sync"].append(
            measure(["sh", "-c", 'cat "$0" > "$1" && sync "$1"', str(mib), str(target)])[0])
    figure("cgi.1m.fsync_on.wall", statistics.median(small_times["on"]) * 1000, "ms")
    figure("cgi.1m.fsync_off.wall", statistics.median(small_times["off"]) * 1000, "ms")
    figure("limit.cat_file_to_file_and_sync.1m.wall", statistics.median(small_times["cat_sync"]) * 1000, "ms")
    figure(f"fsync.cost_per_gib.{label}",
           (get(f"cgi.sha_on.fsync_on.{label}.wall") - get(f"cgi.sha_on.{label}.wall")) * GIB / big, "s")

    # 5: memory against size.
    say("memory against size")
    rss_small = max(run_fileupload(small, small_len, small_sha, pool)[2] for _ in range(2))
    huge_body = work / "huge.body"
    huge_len, huge_sha = make_body(huge_body, [huge])
    rss_huge = run_fileupload(huge_body, huge_len, huge_sha, pool)[2]
    huge_body.unlink()
    figure("memory.64m.peak_rss", rss_small / 1024, "MiB")
    figure(f"memory.{huge // GIB if huge >= GIB else huge // MIB}{'g' if huge >= GIB else 'm'}.peak_rss", rss_huge / 1024, "MiB")
    figure("memory.growth", (rss_huge - rss_small) / 1024, "MiB")

    # 6: the cost of a status answer.
    say("status cost")
    fresh(pool)
    run_fileupload(small, small_len, small_sha, pool)  # an upload to ask about
    fixed = compile_c(work, "fixed-status-direct", FIXED_STATUS_C)
    env = cgi_env(pool, 0, {"REQUEST_METHOD": "GET", "PATH_INFO": "/upload/status", "CONTENT_LENGTH": ""})
    count = 200 if args.quick else 1000
    for name, argv in [("status.cgi_process", [str(BIN)]), ("status.fixed_cgi_process", [str(fixed)])]:
        start = time.perf_counter()
        for _ in range(count):
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        figure(name, (time.perf_counter() - start) / count * 1000, "ms")

    # The servers run as www-data, as Debian runs them.
    subprocess.run(["chown", "-R", "www-data:www-data", str(pool)], check=True)
    servers = Servers(work, pool)
    try:
        seconds = 3 if args.quick else 10
        for name, path in [
            ("status.fastcgi_via_nginx", "/fcgi/upload/status?X-Progress-ID=bench"),
            ("status.fastcgi_via_nginx.connection_per_request", "/fcgi-per-request/upload/status?X-Progress-ID=bench"),
            ("status.nginx_uploadprogress_module", "/progress?X-Progress-ID=bench"),
            ("status.cgi_via_nginx_fcgiwrap", "/cgi/upload/status?X-Progress-ID=bench"),
            ("status.fixed_cgi_via_nginx_fcgiwrap", "/floor/status?X-Progress-ID=bench"),
        ]:
            rps, p99 = wrk(servers.url(path), seconds)
            figure(f"{name}.rps", rps, "req/s")
            figure(f"{name}.p99", p99, "ms")

        # 7: upload throughput through nginx.
        say("throughput through nginx")
        times = {"nginx.fastcgi_upload": [], "nginx.fcgiwrap_discard_floor": []}
        for r in range(rounds):
            settle(one)
            # A finished upload under the same identifier would be a 409.
            subprocess.run([str(BIN), "clear", "through"],
                           env={"FILEUPLOAD_DIRECTORY": str(pool)}, check=True)
            seconds, answer = curl_upload(servers.url("/fcgi/upload?X-Progress-ID=through"), one)
            status = json.loads(answer)
            if [f["sha256"] for f in status["files"]] != one_sha:
                raise RuntimeError(f"through nginx: stored other bytes: {answer[:300]}")
            times["nginx.fastcgi_upload"].append(seconds)
            seconds, answer = curl_upload(servers.url("/discard"), one)
            if json.loads(answer)["received"] != one_len:
                raise RuntimeError(f"discard CGI got {answer}")
            times["nginx.fcgiwrap_discard_floor"].append(seconds)
        for name, samples in times.items():
            median = statistics.median(samples)
            figure(f"{name}.{label}.wall", median, "s")
            figure(f"{name}.{label}.throughput", one_len / median / MIB, "MiB/s")
    finally:
        servers.stop()

    # 8: slow clients through nginx as the README configures it.
    slow_clients()

    # The ratios the targets are stated in.
    cat = get(f"limit.cat_file_to_file.{label}.wall")
    ratios = [
        ("ratio.cgi_sha_off_vs_cat", get(f"cgi.sha_off.{label}.wall") / cat, "<= 1.10"),
        ("ratio.cgi_sha_on_vs_cat", get(f"cgi.sha_on.{label}.wall") / cat, "<= 1.25"),
        ("ratio.cgi_sha_off_pipe_vs_cat_pipe",
         get(f"cgi.sha_off.pipe.{label}.wall") / get(f"limit.cat_pipe_to_file.{label}.wall"), "(pipe)"),
        # The same work: neither PHP nor python-multipart hashes.
        ("ratio.php_cgi_vs_cgi_sha_off", get(f"php_cgi.{label}.wall") / get(f"cgi.sha_off.{label}.wall"), "> 1"),
        ("ratio.python_multipart_vs_cgi_sha_off",
         get(f"python_multipart.{label}.wall") / get(f"cgi.sha_off.{label}.wall"), "> 1"),
        ("ratio.php_cgi_vs_cgi_sha_on", get(f"php_cgi.{label}.wall") / get(f"cgi.sha_on.{label}.wall"), "(we also hash)"),
        ("ratio.python_multipart_vs_cgi_sha_on",
         get(f"python_multipart.{label}.wall") / get(f"cgi.sha_on.{label}.wall"), "(we also hash)"),
        ("ratio.progress_on_vs_off", progress_ratio, "< 1.02"),
        ("ratio.cgi_fsync_on_vs_off",
         get(f"cgi.sha_on.fsync_on.{label}.wall") / get(f"cgi.sha_on.{label}.wall"), "(the cost of a durable done)"),
        ("ratio.cgi_fsync_on_vs_cat_sync",
         get(f"cgi.sha_on.fsync_on.{label}.wall") / get(f"limit.cat_file_to_file_and_sync.{label}.wall"),
         "(against a durable copy)"),
        ("ratio.cgi_1m_fsync_on_vs_off", get("cgi.1m.fsync_on.wall") / get("cgi.1m.fsync_off.wall"), "(1 MiB)"),
        ("ratio.fastcgi_status_vs_uploadprogress_module",
         get("status.fastcgi_via_nginx.rps") / get("status.nginx_uploadprogress_module.rps"), ">= 0.60"),
        ("ratio.fastcgi_keepalive_vs_connection_per_request",
         get("status.fastcgi_via_nginx.rps") / get("status.fastcgi_via_nginx.connection_per_request.rps"), "(> 1)"),
        ("ratio.fastcgi_status_vs_fcgiwrap_floor",
         get("status.fastcgi_via_nginx.rps") / get("status.fixed_cgi_via_nginx_fcgiwrap.rps"), ">= 5"),
        ("ratio.nginx_fastcgi_upload_vs_discard_floor",
         get(f"nginx.fastcgi_upload.{label}.wall") / get(f"nginx.fcgiwrap_discard_floor.{label}.wall"), "(lower is better)"),
    ]
    for name, value, _ in ratios:
        figure(name, value, "x")
    write_markdown(ratios, args.quick, label)


def write_markdown(ratios, quick, label):
    lines = [
        f"Last run: {time.strftime('%Y-%m-%d')}, `bench/run{' --quick' if quick else ''}` on "
        f"{os.cpu_count()} cores ({platform_cpu()}). Medians; ratios from the same run.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for name, value, unit in results:
        if name.startswith("ratio."):
            continue
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| `{name}` | {shown} {unit} |")
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    for name, value, target in ratios:
        lines.append(f"| `{name}` | {value:.2f} x | {target} |")
    table = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results.md").write_text("# Benchmark results\n\n" + table)
    copied = replace_readme_table(lambda _old: table)
    say(f"wrote bench/results.md{' and the README table' if copied else ''}")


def platform_cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
