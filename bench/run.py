#!/usr/bin/env python3
"""The fileupload benchmark: everything measured side by side in one run.

Prints one line per figure (`name: value unit`), the ratios the targets are
stated in, and writes bench/results.md (and the README's copy of it). Every
stored file is checked against the SHA-256 of what was sent, so a fast wrong
answer cannot score. Times are medians of repeated runs, taken in
interleaved order, because these machines are shared and noisy: only the
ratios between figures of the same run mean anything.

Usage: bench/run [--quick] [--work DIR]
                 [--only slow-clients|resumable|writes|multihost|floors|cgi-start|checksums]

--only slow-clients runs only the slow-client scenarios (tests/slow_clients.rs,
about two minutes) and updates their rows of bench/results.md and the README.
--only resumable runs only the tus scenarios (1 GiB as a multipart POST, one
PATCH, 8 MiB PATCHes, through the daemon and fcgiwrap; four partial uploads
concatenated; reconnect to a held upload), five interleaved rounds, about
five minutes, and updates their `tus.*` rows likewise. --only writes
counts the daemon's write calls for a 1 GiB upload through nginx (about a
minute; see `upload_writes`) and updates its `nginx.fastcgi_upload.writes*`
rows. --only cgi-start (under a minute) times a status answer from one
CGI process: the release binary, the static one (scripts/build-static)
and a C program printing the same answer, in interleaved rounds (see
`cgi_start`), and updates the `status.*cgi_process*` rows and their
ratios. A scenario the server
does not support yet (concatenation, taking over a held upload) is still
tried every run, and reported "not available" with the server's answer.
--only multihost (root, /dev/fuse; about a minute) brings up
scripts/multihost with two client hosts on one GlusterFS volume with the
strict options, plus a second volume with gluster's defaults on the same
storage host (mounted on host a with the kernel's default caches, its own
daemon and nginx), and runs in three interleaved rounds: 64 concurrent
uploads (64 x 8 MiB) to host a's own port (one host) against the same
through the round-robin balancer over a and b (two hosts), aggregate MiB/s
and the latency of status polls sent to the same port meanwhile; one
64 MiB upload through nginx and one daemon against `dd bs=1M conv=fsync` of
the same bytes on the same mount (goal: dd within 1.2x of the upload);
and both again on the defaults volume: the strict options' cost. Every
upload's stored file is read back through the mount and its SHA-256
checked. It updates the `multihost.*` rows. No round starts after 330 s;
everything it starts is stopped by pid, and scripts/multihost down removes
the namespaces and mounts.
--only floors (about six minutes; --quick under one) measures what the
issue-15 goals compare against, and updates the `floors.*` rows and the CGI
pipe rows: `cat body | cat > file` (the reading cat at nice 0 and at nice
19, the priority fileupload receives a body at) against fileupload as a CGI
reading the same pipe, SHA-256 off and on; then, behind the same nginx as the daemon
(kept upstream connections, as conf-examples/nginx-fastcgi.conf), two C
responders on libfcgi built here from Debian's libfcgi-dev: one answering
a fixed status (the daemon's answer for an unknown identifier) on as many
threads as the daemon has workers, against the daemon's status for an
unknown identifier and for an upload in flight (wrk: requests/s and p99,
and the CPU a request cost the responder and nginx's workers, from /proc);
one writing the request body to a file in the pool in 1 MiB writes (at
nice 19, as the daemon's upload threads),
against a 1 GiB upload through the daemon with SHA-256 off and on; and
`openssl speed -evp sha256`, for the hash's floor. Interleaved rounds, the
order reversed every other round; each goal is judged on the median of the
rounds' ratios, printed beside the goal. The full run includes them.
--only checksums (about four minutes; --quick under one) times each
checksum of the `checksums` setting, and all five at once, on a 1 GiB CGI
upload, against the slower of `cat body > file` and the checksum's own
in-memory rate (examples/checksum_speed.rs, through the same hasher), in
interleaved rounds (see `checksums`); the full run includes it.
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
    "openssl": "openssl",
}
# Header files whose package install() adds when they are missing: the
# libfcgi floors compile against the FastCGI reference library.
HEADERS = {"/usr/include/fcgiapp.h": "libfcgi-dev"}


def install():
    """Installs what is missing: Debian packages, python-multipart in a venv."""
    need = [pkg for prog, pkg in APT.items() if not shutil.which(prog) and not Path("/usr/sbin", prog).exists()]
    if not Path("/usr/lib/nginx/modules/ngx_http_uploadprogress_module.so").exists():
        need.append("libnginx-mod-http-uploadprogress")
    need += [pkg for header, pkg in HEADERS.items() if not Path(header).exists()]
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


def settle(*inputs):
    """Starts every run from the same memory state.

    Each round writes gigabytes into the page cache; reclaiming them would
    land on whichever run happens to be allocating, so timings would follow
    the kernel's housekeeping rather than the programs. So: write back,
    drop the page cache, and read the inputs in again, cached for everyone
    alike. All of them in one call: a second call would drop the first's
    input again (the resumable rounds once sent their raw file from disk
    that way, and the PATCH looked twice as slow as the POST)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: runs are noisier, and the medians must absorb it
    for body in inputs:
        with open(body, "rb") as f:
            while f.read(16 * MIB):
                pass


REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def reported_kib():
    """What this virtual machine has handed back to its host so far (free
    page reporting), or None where the kernel does not say. Here every
    freed page is reported at once (`min_free_ms` 0), and the next touch of
    one costs the host's fault: each run that writes a fresh file (the
    page cache of the one before is freed when it is deleted, and
    `settle` drops the rest) gets its pages back from the host, at 0.3 to
    3 s per GiB as the host happens to answer. That, not the programs, is
    most of the spread between rounds; the figure is printed so that a
    run's noise can be read beside its ratios."""
    try:
        return int(REPORTED.read_text())
    except (OSError, ValueError):
        return None


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


def run_cat_pipe(body, out, nice=0):
    """`cat body | cat > file`: what any program reading a pipe can do.
    With `nice`, the reading cat runs at that CPU priority (the feeding one,
    the web server's part, does not): fileupload receives a body at nice 19
    (`receiving::lower_priority`), so on a machine other work keeps busy
    only a reader at nice 19 too is its floor."""
    out.unlink(missing_ok=True)
    settle(body)
    feeder = subprocess.Popen(["cat", str(body)], stdout=subprocess.PIPE)
    reader = ["nice", "-n", str(nice), "cat"] if nice else ["cat"]
    with open(out, "wb") as dst:
        sample = measure(reader, stdin=feeder.stdout, stdout=dst)
    feeder.wait()
    return sample


def run_cat_file(body, out):
    """`cat body > file`: GNU cat copies file to file in the kernel."""
    out.unlink(missing_ok=True)
    settle(body)
    with open(out, "wb") as dst:
        return measure(["cat", str(body)], stdout=dst)


def run_dd(body, out, block):
    """`dd bs=BLOCK`: a copy in `block`-sized reads and writes. With 1M
    it writes as fileupload does (1 MiB blocks); 256K beside it shows what
    the block size alone costs on this machine (see `reported_kib`)."""
    out.unlink(missing_ok=True)
    settle(body)
    return measure(["dd", f"if={body}", f"of={out}", f"bs={block}", "status=none"])


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


def compile_c(work, name, source, libs=()):
    src = work / f"{name}.c"
    src.write_text(source)
    out = work / name
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src), *libs], check=True)
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

# The FastCGI floors: what a minimal C responder on libfcgi (the FastCGI
# reference library, which fcgiwrap uses too) does on the daemon's paths,
# behind the same nginx. Both take the socket's path and their number of
# threads; each thread accepts and serves on its own (FCGX_Accept_r), as
# libfcgi's threaded example does but without its accept mutex: Linux's
# accept needs none, and with kept connections (fastcgi_keep_conn) the mutex
# would be held while a thread waits for the next request on its connection.

FCGI_MAIN_C = r'''
int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET THREADS [DIRECTORY]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]);
    if (threads < 1) threads = 1;
    if (argc > 3) directory = argv[3];
    if (FCGX_Init() != 0) return 1;
    listener = FCGX_OpenSocket(argv[1], 1024);
    if (listener < 0) {
        perror("FCGX_OpenSocket");
        return 1;
    }
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, serve, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    serve(NULL);
    return 0;
}
'''

# The daemon's answer for an identifier it does not know, byte for byte
# the same headers and body.
FCGI_STATUS_C = r'''
#include <fcgiapp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static int listener;
static const char *directory;
static const char answer[] = "Status: 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\r\n"
                             "{\"state\":\"starting\"}";
static void *serve(void *unused) {
    FCGX_Request request;
    FCGX_InitRequest(&request, listener, 0);
    while (FCGX_Accept_r(&request) == 0) {
        FCGX_PutStr(answer, sizeof answer - 1, request.out);
        FCGX_Finish_r(&request);
    }
    return unused;
}
''' + FCGI_MAIN_C

# The request body, whatever it is, into a new file in the pool directory,
# in writes of up to 1 MiB (FCGX_GetStr gathers the records into the
# buffer); no parsing, no hash, no sync: the floor for storing a body that
# nginx forwards.
FCGI_STORE_C = r'''
#include <fcgiapp.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int listener;
static const char *directory = ".";
static atomic_long serial;
static void *serve(void *unused) {
    enum { SIZE = 1 << 20 };
    char *buffer = malloc(SIZE);
    if (buffer == NULL) return unused;
    FCGX_Request request;
    FCGX_InitRequest(&request, listener, 0);
    while (FCGX_Accept_r(&request) == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/floor-%d-%ld", directory, (int)getpid(), atomic_fetch_add(&serial, 1));
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        int ok = fd >= 0;
        long total = 0;
        int n;
        while ((n = FCGX_GetStr(buffer, SIZE, request.in)) > 0) {
            total += n;
            for (int done = 0; ok && done < n;) {
                ssize_t w = write(fd, buffer + done, n - done);
                if (w < 0) ok = 0; else done += w;
            }
        }
        if (fd >= 0 && close(fd) != 0) ok = 0;
        if (ok)
            FCGX_FPrintF(request.out, "Status: 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\r\n"
                         "{\"received\":%ld,\"path\":\"%s\"}", total, path);
        else
            FCGX_FPrintF(request.out, "Status: 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n"
                         "{\"error\":\"cannot store\",\"received\":%ld}", total);
        FCGX_Finish_r(&request);
    }
    return unused;
}
''' + FCGI_MAIN_C


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
        # The libfcgi floors (see FCGI_STATUS_C), as www-data like the
        # daemon, with as many threads as it has event-loop workers.
        self.floor_status_sock = run / "floor-status.sock"
        self.floor_store_sock = run / "floor-store.sock"
        self.floor_dir = pool / "floor"
        fresh(self.floor_dir)
        shutil.chown(self.floor_dir, "www-data", "www-data")
        libfcgi = ["-lfcgi", "-pthread"]
        threads = str(daemon_workers())
        # The store floor at nice 19, as the daemon runs each upload
        # (receiving::lower_priority): on a machine other work keeps busy,
        # like with like. Its status twin at nice 0, as the daemon's loop.
        for name, source, sock, nice, extra in (
                ("floor-fcgi-status", FCGI_STATUS_C, self.floor_status_sock, [], []),
                ("floor-fcgi-store", FCGI_STORE_C, self.floor_store_sock, ["nice", "-n", "19"],
                 [str(self.floor_dir)])):
            program = compile_c(work, name, source, libfcgi)
            self.start([*nice, "setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups", str(program),
                        str(sock), threads, *extra])
        for path in (self.daemon_sock, self.fcgiwrap_sock, self.floor_status_sock, self.floor_store_sock):
            self.wait_for_path(path)
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
  # Every FastCGI upstream as conf-examples/nginx-fastcgi.conf has the
  # daemon's: kept connections (keepalive 8, fastcgi_keep_conn on).
  upstream fileupload {{ server unix:{self.daemon_sock}; keepalive 8; }}
  upstream floor_status {{ server unix:{self.floor_status_sock}; keepalive 8; }}
  upstream floor_store {{ server unix:{self.floor_store_sock}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{self.port};
    client_max_body_size 0;
    fastcgi_request_buffering off;
    location /fcgi/upload {{
      include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass fileupload;
    }}
    location /fcgi-sha-off/upload {{
      include /etc/nginx/fastcgi_params; fastcgi_param FILEUPLOAD_SHA256 off;
      fastcgi_keep_conn on; fastcgi_pass fileupload;
    }}
    location /libfcgi/status {{
      include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass floor_status;
    }}
    location /libfcgi/store {{
      include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass floor_store;
    }}
    location /fcgi-per-request/upload {{
      include /etc/nginx/fastcgi_params; fastcgi_pass unix:{self.daemon_sock};
    }}
    location /cgi/upload {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {BIN};
      fastcgi_param FILEUPLOAD_DIRECTORY {pool};
      fastcgi_param FILEUPLOAD_FSYNC off;
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

    def daemon_writes(self):
        """The daemon's write calls so far (`syscw`: every write-family call
        of all its threads; setpriv execs it, so the pid is the daemon's)."""
        io = Path(f"/proc/{self.procs[0].pid}/io").read_text()
        return int(re.search(r"^syscw: (\d+)$", io, re.M).group(1))

    def cpu_seconds(self):
        """CPU-seconds (user and system, all threads) used so far by the
        daemon, by the libfcgi status floor and by nginx's workers, each
        from /proc: what a request costs each process, counted around a
        wrk run."""
        def used(pid):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        master = self.procs[-1].pid
        workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if not workers:
            raise RuntimeError("bench: nginx has no worker processes to count")
        return {"daemon": used(self.procs[0].pid), "libfcgi": used(self.procs[2].pid),
                "nginx": sum(used(w) for w in workers)}

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


def daemon_workers():
    """The daemon's default number of event-loop threads (`workers` in
    src/config.rs), which the libfcgi status floor gets as threads."""
    found = re.search(r"^\s*workers: (\d+),$", (ROOT / "src" / "config.rs").read_text(), re.M)
    if not found:
        raise RuntimeError("bench: no default `workers: N,` in src/config.rs")
    return int(found.group(1))


def wrk(url, seconds):
    """Returns (requests/s, p99 in ms, requests answered)."""
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in ", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if non2xx or errors:
        raise RuntimeError(f"wrk saw failures on {url}:\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rps, float(p99.group(1)) * scale, count


def curl_upload(url, body):
    """POSTs the multipart body from a file; returns (seconds, answer)."""
    start = time.perf_counter()
    out = subprocess.run(
        ["curl", "-s", "-S", "-X", "POST", "-T", str(body), "-H", f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
         "-H", "Expect:", url],
        capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def upload_writes(servers, pool, work, body, body_len, digests, label, rounds):
    """The daemon's write calls for one upload of `body` through nginx
    (which forwards the body in FastCGI records of 8 KiB at most): each
    round, the calls during the upload less those during a one-byte upload
    made the same way, since everything but the data (the status at start
    and end, progress rewrites, the answer) costs both about alike. Reports
    the median count, per GiB and the bytes each write carried."""
    tiny = work / "byte.body"
    tiny_len, tiny_sha = make_body(tiny, [1])
    size = body_len - (tiny_len - 1)  # the file's bytes, without the form's
    counts = []
    for r in range(rounds):
        measured = []
        for name, path, sha in (("byte", tiny, tiny_sha), ("body", body, digests)):
            ident = f"writes-{name}-{r}"
            settle(path)
            before = servers.daemon_writes()
            _, answer = curl_upload(servers.url(f"/fcgi/upload?X-Progress-ID={ident}"), path)
            # The connection's return to the event loop (its waker) comes
            # just after the answer: inside the count, as for both.
            time.sleep(0.2)
            measured.append(servers.daemon_writes() - before)
            if [f["sha256"] for f in json.loads(answer)["files"]] != sha:
                raise RuntimeError(f"writes: stored other bytes: {answer[:300]}")
            subprocess.run([str(BIN), "clear", ident], env={"FILEUPLOAD_DIRECTORY": str(pool)}, check=True)
        counts.append(measured[1] - measured[0])
    writes = statistics.median(counts)
    shown = ", ".join(str(c) for c in counts)
    figure(f"nginx.fastcgi_upload.{label}.writes", writes,
           f"write calls (median of {shown}; the daemon's syscw, less a 1-byte upload's)")
    figure("nginx.fastcgi_upload.writes_per_gib", writes * GIB / size, "write calls/GiB (goal: about 1024, 1 MiB each)")
    figure("nginx.fastcgi_upload.bytes_per_write", size / max(writes, 1) / 1024, "KiB")


def writes_only(work, quick):
    """`--only writes`: the servers, a body, the count."""
    big = 128 * MIB if quick else GIB
    label = "1g" if big == GIB else f"{big // MIB}m"
    one = work / "one.body"
    one_len, one_sha = make_body(one, [big])
    pool = work / "pool"
    pool.mkdir()
    servers = Servers(work, pool)
    try:
        upload_writes(servers, pool, work, one, one_len, one_sha, label, 2 if quick else 3)
    finally:
        servers.stop()


# ---- the floors: libfcgi responders on the daemon's paths --------------------------

FLOOR_ROUNDS = 5
# The goals (issue 15): a ratio to the floor measured in the same run.
GOAL_STATUS_RPS = 0.95  # at least, of the libfcgi fixed responder's req/s
GOAL_STATUS_P99 = 1.0  # at most, the daemon's p99 over the floor's
GOAL_UPLOAD = 1.10  # at most, over the body-to-file floor (or the hash)
GOAL_PIPE_SHA_OFF = 1.05  # at most, over `cat | cat > file`
GOAL_PIPE_SHA_ON = 1.10  # at most, over the slower of that and the hash
# The 1-minute load average after each floors scenario: the other work on
# the machine, which stretches the wall times of what runs at nice 19.
floor_loads = []


def openssl_sha256(seconds):
    """This CPU's SHA-256 speed as OpenSSL does it (its SHA extensions or
    SIMD code): bytes per second, 16 KiB blocks."""
    out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.M)
    if not found:
        raise RuntimeError(f"cannot read openssl speed's output:\n{out}")
    return float(found.group(1)) * 1000  # openssl counts in 1000s of bytes


def goal_text(value, goal, at_least=False):
    met = value >= goal if at_least else value <= goal
    return f"goal {'>=' if at_least else '<='} {goal}: {'met' if met else 'missed'}"


def shown_list(values):
    return ", ".join(f"{v:.3g}" for v in values)


class InFlight:
    """An upload through nginx to the daemon with its first bytes sent and
    the rest held back, so that its status, polled meanwhile, is
    `uploading`; `finish` sends the rest and checks what was stored."""

    FIRST = 4 * MIB

    def __init__(self, servers, body, body_len, digest, ident):
        self.servers, self.body, self.body_len, self.digest, self.ident = servers, body, body_len, digest, ident
        self.conn = Conn(servers.port)
        self.conn.send_head("POST", f"/fcgi/upload?X-Progress-ID={ident}",
                            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, body_len)
        self.conn.send_file(body, 0, self.FIRST)
        poll = Conn(servers.port)
        try:
            deadline = time.time() + 10
            while True:
                _, _, answer = poll.request("GET", f"/fcgi/upload/status?X-Progress-ID={ident}")
                state = json.loads(answer)
                if state.get("state") == "uploading" and state.get("received", 0) > 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"in-flight upload {ident}: status {answer[:200]} after 10 s")
                time.sleep(0.05)
        finally:
            poll.close()

    def finish(self, pool):
        try:
            self.conn.send_file(self.body, self.FIRST, self.body_len - self.FIRST)
            expect(f"in-flight upload {self.ident}", self.conn.response("POST"), 200)
        finally:
            self.conn.close()
        if sha256_file(pool / self.ident / "file-1") != self.digest:
            raise RuntimeError(f"in-flight upload {self.ident}: stored other bytes")
        subprocess.run([str(BIN), "clear", self.ident], env={"FILEUPLOAD_DIRECTORY": str(pool)}, check=True)


def floors(servers, pool, work, one, one_len, one_sha, label, rounds, quick):
    """The FastCGI figures against their libfcgi floors, behind the same
    nginx in the same run, in interleaved rounds (the order reversed every
    other round); each goal's ratio is the median of the rounds' ratios.
    Returns OpenSSL's SHA-256 rate (bytes/s), for the CGI goals."""
    rate = openssl_sha256(1 if quick else 3)
    size = one_len - (make_body(work / "empty.body", [0])[0])  # the file's bytes, not the form's
    hash_s = size / rate
    figure("floors.openssl_sha256", rate / 1e6, f"MB/s (openssl speed -evp sha256 -bytes 16384 -seconds {1 if quick else 3})")
    figure(f"floors.hash_floor.{label}.wall", hash_s, f"s (the {label} file's bytes at that rate)")

    # Status: the same answer from both (an unknown identifier's).
    floor_url = servers.url("/libfcgi/status?X-Progress-ID=floors-unknown")
    unknown_url = servers.url("/fcgi/upload/status?X-Progress-ID=floors-unknown")
    bodies = [subprocess.run(["curl", "-s", "-S", u], capture_output=True, text=True, check=True).stdout
              for u in (floor_url, unknown_url)]
    if bodies[0] != bodies[1]:
        raise RuntimeError(f"the status floor answers {bodies[0]!r}, the daemon {bodies[1]!r}")
    flight = work / "inflight.body"
    flight_len, flight_sha = make_body(flight, [64 * MIB])
    seconds = 3 if quick else 10
    status = {"libfcgi_fixed": [], "daemon_unknown_id": [], "daemon_in_flight": []}
    # CPU-microseconds a request cost the answering process and nginx.
    cpu = {name: {"server": [], "nginx": []} for name in status}
    for r in range(rounds):
        say(f"floors: status round {r + 1} of {rounds}")
        order = list(status) if r % 2 == 0 else list(reversed(status))
        for name in order:
            server = "libfcgi" if name == "libfcgi_fixed" else "daemon"
            if name == "daemon_in_flight":
                upload = InFlight(servers, flight, flight_len, flight_sha[0], f"floors-flight-{r}")
                before = servers.cpu_seconds()
                got = wrk(servers.url(f"/fcgi/upload/status?X-Progress-ID=floors-flight-{r}"), seconds)
                after = servers.cpu_seconds()
                upload.finish(pool)
            else:
                before = servers.cpu_seconds()
                got = wrk(floor_url if name == "libfcgi_fixed" else unknown_url, seconds)
                after = servers.cpu_seconds()
            status[name].append(got)
            cpu[name]["server"].append((after[server] - before[server]) / got[2] * 1e6)
            cpu[name]["nginx"].append((after["nginx"] - before["nginx"]) / got[2] * 1e6)
            floor_loads.append(os.getloadavg()[0])
            say(f"  {name}: {got[0]:.0f} req/s, p99 {got[1]:.2f} ms, CPU a request:"
                f" {server} {cpu[name]['server'][-1]:.1f} us, nginx {cpu[name]['nginx'][-1]:.1f} us")
    what = {"libfcgi_fixed": f"the floor: libfcgi, {daemon_workers()} threads, a fixed answer;"
                             f" a thread serves one kept connection at a time",
            "daemon_unknown_id": "an unknown identifier", "daemon_in_flight": "an upload in flight"}
    for name, samples in status.items():
        figure(f"floors.status.{name}.rps", statistics.median(s[0] for s in samples),
               f"req/s (median of {shown_list([s[0] for s in samples])}; {what[name]})")
        figure(f"floors.status.{name}.p99", statistics.median(s[1] for s in samples),
               f"ms (median of {shown_list([s[1] for s in samples])})")
    for name, used in cpu.items():
        for who, samples in used.items():
            whose = "nginx's workers'" if who == "nginx" else (
                "the libfcgi responder's" if name == "libfcgi_fixed" else "the daemon's")
            figure(f"floors.status.{name}.{who}_cpu_per_request", statistics.median(samples),
                   f"us ({whose} CPU over the wrk run, from /proc, per request answered;"
                   f" median of {shown_list(samples)})")
    floor = status["libfcgi_fixed"]
    for name in ("daemon_unknown_id", "daemon_in_flight"):
        pairs = [d[0] / f[0] for d, f in zip(status[name], floor)]
        value = statistics.median(pairs)
        figure(f"floors.status.{name}_vs_libfcgi.rps", value,
               f"x (rounds {shown_list(pairs)}; {goal_text(value, GOAL_STATUS_RPS, at_least=True)})")
        pairs = [d[1] / f[1] for d, f in zip(status[name], floor)]
        value = statistics.median(pairs)
        figure(f"floors.status.{name}_vs_libfcgi.p99", value,
               f"x (the daemon's p99 over the floor's; rounds {shown_list(pairs)}; {goal_text(value, GOAL_STATUS_P99)})")

    # Uploads: the whole body into a file, against the daemon storing the
    # form's file with SHA-256 off and on (fsync off for all, as above).
    body_sha = sha256_file(one)
    uploads = {"libfcgi_store": [], "daemon.sha_off": [], "daemon.sha_on": []}
    for r in range(rounds):
        say(f"floors: upload round {r + 1} of {rounds}")
        order = list(uploads) if r % 2 == 0 else list(reversed(uploads))
        for name in order:
            settle(one)
            if name == "libfcgi_store":
                seconds, answer = curl_upload(servers.url("/libfcgi/store"), one)
                got = json.loads(answer)
                stored = Path(got["path"])
                if got["received"] != one_len or sha256_file(stored) != body_sha:
                    raise RuntimeError(f"the store floor stored other bytes: {answer[:300]}")
                stored.unlink()
            else:
                ident = f"floors-{name.split('.')[1].replace('_', '-')}-{r}"
                where = "/fcgi/upload" if name == "daemon.sha_on" else "/fcgi-sha-off/upload"
                seconds, answer = curl_upload(servers.url(f"{where}?X-Progress-ID={ident}"), one)
                got = json.loads(answer)
                if name == "daemon.sha_on" and [f["sha256"] for f in got["files"]] != one_sha:
                    raise RuntimeError(f"floors: the daemon reported another SHA-256: {answer[:300]}")
                stored = pool / ident / "file-1"
                if not stored.exists() or sha256_file(stored) != one_sha[0]:
                    raise RuntimeError(f"floors: the daemon stored other bytes: {answer[:300]}")
                subprocess.run([str(BIN), "clear", ident], env={"FILEUPLOAD_DIRECTORY": str(pool)}, check=True)
            uploads[name].append(seconds)
            floor_loads.append(os.getloadavg()[0])
            say(f"  {name}: {seconds:.2f} s")
    what = {"libfcgi_store": "the floor: libfcgi at nice 19, the body to a file in 1 MiB writes",
            "daemon.sha_off": "nginx + the daemon, SHA-256 off", "daemon.sha_on": "nginx + the daemon, SHA-256 on"}
    for name, walls in uploads.items():
        figure(f"floors.upload.{name}.{label}.wall", statistics.median(walls),
               f"s (median of {shown_list(walls)}; {what[name]})")
    pairs = [d / f for d, f in zip(uploads["daemon.sha_off"], uploads["libfcgi_store"])]
    value = statistics.median(pairs)
    figure("floors.upload.sha_off_vs_libfcgi_store", value,
           f"x (rounds {shown_list(pairs)}; {goal_text(value, GOAL_UPLOAD)})")
    pairs = [d / max(f, hash_s) for d, f in zip(uploads["daemon.sha_on"], uploads["libfcgi_store"])]
    value = statistics.median(pairs)
    slower = "the hash" if hash_s > statistics.median(uploads["libfcgi_store"]) else "the store floor"
    figure("floors.upload.sha_on_vs_floor", value,
           f"x (over the slower of the store floor and the hash at openssl's rate, {hash_s:.3g} s: mostly "
           f"{slower}; rounds {shown_list(pairs)}; {goal_text(value, GOAL_UPLOAD)})")
    return rate


def cgi_pipe_goals(walls, rate, size, label):
    """The CGI goals through a pipe, from each round's walls (name -> list
    in round order): SHA-256 off against `cat | cat > file`, on against the
    slower of that and the hash at OpenSSL's rate. The floor is the cat
    that reads at nice 19, as fileupload does; the ratio to the one at
    nice 0 is shown beside it (the same on an idle machine)."""
    hash_s = size / rate
    cat = walls["limit.cat_pipe_to_file.nice19"]
    plain = walls["limit.cat_pipe_to_file"]
    pairs = [c / f for c, f in zip(walls["cgi.sha_off.pipe"], cat)]
    value = statistics.median(pairs)
    against_plain = statistics.median(c / f for c, f in zip(walls["cgi.sha_off.pipe"], plain))
    figure("floors.cgi_pipe.sha_off_vs_cat_pipe", value,
           f"x (against cat reading at nice 19, as fileupload does; rounds {shown_list(pairs)}; "
           f"{goal_text(value, GOAL_PIPE_SHA_OFF)}; against cat at nice 0: {against_plain:.3g})")
    pairs = [c / max(f, hash_s) for c, f in zip(walls["cgi.sha_on.pipe"], cat)]
    value = statistics.median(pairs)
    slower = "the hash" if hash_s > statistics.median(cat) else "cat"
    figure("floors.cgi_pipe.sha_on_vs_floor", value,
           f"x (over the slower of cat at nice 19 and the {label} hash at openssl's rate, {hash_s:.3g} s: mostly "
           f"{slower}; rounds {shown_list(pairs)}; {goal_text(value, GOAL_PIPE_SHA_ON)})")


def floors_only(work, quick):
    """`--only floors`: the CGI pipe figures (`cat | cat > file`, SHA-256
    off and on, interleaved), then the servers and the FastCGI floors."""
    big = 128 * MIB if quick else GIB
    label = "1g" if big == GIB else f"{big // MIB}m"
    rounds = 2 if quick else FLOOR_ROUNDS
    one = work / "one.body"
    one_len, one_sha = make_body(one, [big])
    cgi_pool = work / "cgi-pool"
    out = work / "cat.out"
    variants = {
        "limit.cat_pipe_to_file": lambda: run_cat_pipe(one, out),
        "limit.cat_pipe_to_file.nice19": lambda: run_cat_pipe(one, out, nice=19),
        "cgi.sha_off.pipe": lambda: run_fileupload(one, one_len, one_sha, cgi_pool, {"FILEUPLOAD_SHA256": "off"},
                                                   pipe=True),
        "cgi.sha_on.pipe": lambda: run_fileupload(one, one_len, one_sha, cgi_pool, pipe=True),
    }
    runner = Runner(work, rounds)
    for r in range(rounds):
        say(f"floors: CGI pipe round {r + 1} of {rounds}")
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            runner.record(name, variants[name]())
            floor_loads.append(os.getloadavg()[0])
    out.unlink(missing_ok=True)
    shutil.rmtree(cgi_pool, ignore_errors=True)
    for name in variants:
        walls = [s[0] for s in runner.samples[name]]
        figure(f"{name}.{label}.wall", runner.median(name, 0), f"s (median of {shown_list(walls)})")
        figure(f"{name}.{label}.cpu", runner.median(name, 1), "s")
        if not name.startswith("limit"):
            figure(f"{name}.{label}.peak_rss", runner.median(name, 2) / 1024, "MiB")
    pool = fresh(work / "pool")
    servers = Servers(work, pool)
    try:
        rate = floors(servers, pool, work, one, one_len, one_sha, label, rounds, quick)
    finally:
        servers.stop()
    walls = {name: [s[0] for s in runner.samples[name]] for name in variants}
    cgi_pipe_goals(walls, rate, big, label)
    floors_load()


def floor_ratios():
    """The ratio rows of the floors' goals (issue 15): medians of the rounds'
    ratios, from the `floors.*` figures. The CGI pipe's two first, in the
    full run's table order."""
    return [
        ("ratio.cgi_sha_off_pipe_vs_cat_pipe", get("floors.cgi_pipe.sha_off_vs_cat_pipe"),
         f"<= {GOAL_PIPE_SHA_OFF} (cat at nice 19, as fileupload)"),
        ("ratio.cgi_sha_on_pipe_vs_floor", get("floors.cgi_pipe.sha_on_vs_floor"),
         f"<= {GOAL_PIPE_SHA_ON} (the slower of cat and the hash)"),
        ("ratio.fastcgi_status_unknown_id_vs_libfcgi",
         get("floors.status.daemon_unknown_id_vs_libfcgi.rps"), f">= {GOAL_STATUS_RPS} (req/s)"),
        ("ratio.fastcgi_status_unknown_id_vs_libfcgi.p99",
         get("floors.status.daemon_unknown_id_vs_libfcgi.p99"), f"<= {GOAL_STATUS_P99} (p99)"),
        ("ratio.fastcgi_status_in_flight_vs_libfcgi",
         get("floors.status.daemon_in_flight_vs_libfcgi.rps"), f">= {GOAL_STATUS_RPS} (req/s)"),
        ("ratio.fastcgi_status_in_flight_vs_libfcgi.p99",
         get("floors.status.daemon_in_flight_vs_libfcgi.p99"), f"<= {GOAL_STATUS_P99} (p99)"),
        ("ratio.nginx_upload_sha_off_vs_libfcgi_store", get("floors.upload.sha_off_vs_libfcgi_store"),
         f"<= {GOAL_UPLOAD}"),
        ("ratio.nginx_upload_sha_on_vs_floor", get("floors.upload.sha_on_vs_floor"),
         f"<= {GOAL_UPLOAD} (the slower of the store floor and the hash)"),
    ]


CHECKSUM_SUMS = ["sha256", "sha1", "md5", "crc32c", "blake3"]
GOAL_CHECKSUM = 1.10  # at most, over the slower of the copy and the hash in memory


def checksum_speeds(quick):
    """Each checksum's in-memory rate (bytes/s) through fileupload's own
    hasher (examples/checksum_speed.rs: 1 MiB pieces from a 16 MiB buffer,
    the best of three)."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "checksum_speed"], cwd=ROOT, check=True)
    out = subprocess.run([str(ROOT / "target" / "release" / "examples" / "checksum_speed"),
                          "256" if quick else "1024"], capture_output=True, text=True, check=True).stdout
    rates = {name: float(rate) for name, rate in (line.split() for line in out.splitlines())}
    if sorted(rates) != sorted(CHECKSUM_SUMS):
        raise RuntimeError(f"checksum_speed printed {out!r}")
    return rates


def checksums(work, quick):
    """Each checksum of the `checksums` setting on its own, and all five at
    once, as a CGI upload of one file read from a file, against its floor:
    the slower of `cat body > file` (the same round) and hashing the file's
    bytes at the checksum's own in-memory rate (all five: the sum of their
    times, one hashing thread computes them one after the other). The
    digests the status reports are checked against Python's for SHA-256,
    SHA-1 and MD5, and every stored file's bytes by SHA-256."""
    big = 128 * MIB if quick else GIB
    label = "1g" if big == GIB else f"{big // MIB}m"
    rounds = 2 if quick else 5
    rates = checksum_speeds(quick)
    for name in CHECKSUM_SUMS:
        figure(f"checksums.{name}.in_memory", rates[name] / 1e6, "MB/s (examples/checksum_speed.rs, 1 MiB pieces)")
    body = work / "checksums.body"
    body_len, body_sha = make_body(body, [big])
    size = body_len - make_body(work / "empty.body", [0])[0]
    expected = {"sha256": body_sha[0]}
    with open(body, "rb") as f:  # the file part's bytes, for SHA-1 and MD5
        f.seek(body_len - size - len(f"\r\n--{BOUNDARY}--\r\n"))
        sha1, md5, left = hashlib.sha1(), hashlib.md5(), size
        while left:
            piece = f.read(min(left, 4 * MIB))
            sha1.update(piece)
            md5.update(piece)
            left -= len(piece)
    expected["sha1"], expected["md5"] = sha1.hexdigest(), md5.hexdigest()
    pool = work / "checksums-pool"
    out = work / "checksums-cat.out"
    sets = {name: name for name in CHECKSUM_SUMS}
    sets["all"] = ",".join(CHECKSUM_SUMS)
    sets["none"] = "none"

    def upload(listed):
        sample = run_fileupload(body, body_len, body_sha, pool, {"FILEUPLOAD_CHECKSUMS": listed})
        status = json.loads((pool / "bench" / "status.json").read_text())
        (info,) = status["files"]
        for name in CHECKSUM_SUMS:
            want = name in listed.split(",")
            if want != (info.get(name) is not None):
                raise RuntimeError(f"checksums={listed}: the status has {name} {info.get(name)!r}")
            if want and name in expected and info[name] != expected[name]:
                raise RuntimeError(f"checksums={listed}: {name} {info[name]} != {expected[name]}")
        return sample

    walls = {"cat": [], "dd_1m": [], **{k: [] for k in sets}}
    copies = {"cat": lambda: run_cat_file(body, out), "dd_1m": lambda: run_dd(body, out, "1M")}
    for r in range(rounds):
        say(f"checksums: round {r + 1} of {rounds}")
        order = ["cat", "dd_1m", *sets] if r % 2 == 0 else [*reversed(sets), "dd_1m", "cat"]
        for name in order:
            walls[name].append(copies[name]()[0] if name in copies else upload(sets[name])[0])
    out.unlink(missing_ok=True)
    shutil.rmtree(pool, ignore_errors=True)
    body.unlink()
    figure(f"checksums.cat_file_to_file.{label}.wall", statistics.median(walls["cat"]),
           f"s (median of {shown_list(walls['cat'])})")
    figure(f"checksums.dd_1m_file_to_file.{label}.wall", statistics.median(walls["dd_1m"]),
           f"s (median of {shown_list(walls['dd_1m'])}; the same 1 MiB writes as fileupload)")
    ratios = []
    for name in sets:
        hashed = {"none": [], "all": CHECKSUM_SUMS}.get(name, [name])
        hash_s = sum(size / rates[s] for s in hashed)
        pairs = [w / max(c, hash_s) for w, c in zip(walls[name], walls["cat"])]
        value = statistics.median(pairs)
        slower = "the hash" if hash_s > statistics.median(walls["cat"]) else "cat"
        figure(f"checksums.{name}.{label}.wall", statistics.median(walls[name]),
               f"s (median of {shown_list(walls[name])})")
        figure(f"checksums.{name}_vs_floor", value,
               f"x (over the slower of cat and the hash in memory, {hash_s:.3g} s: {slower}; rounds "
               f"{shown_list(pairs)}; {goal_text(value, GOAL_CHECKSUM)})")
        same_writes = [w / max(d, hash_s) for w, d in zip(walls[name], walls["dd_1m"])]
        figure(f"checksums.{name}_vs_dd_1m_floor", statistics.median(same_writes),
               f"x (over the slower of dd bs=1M and the hash in memory; rounds {shown_list(same_writes)})")
        ratios.append((f"ratio.cgi_checksums_{name}_vs_floor", value,
                       f"<= {GOAL_CHECKSUM} (the slower of cat and the hash in memory)"))
    return ratios


def floors_load():
    figure("floors.load_average", statistics.median(floor_loads),
           f"(1-minute, median over the floors scenarios, range {min(floor_loads):.2g} to {max(floor_loads):.2g}; "
           f"this run's own load is about 2: above that, other work shared the 2 cores)")


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
        # The note of an earlier partial run of the same kind ("Slow-client
        # rows: ...") is this one's, replaced, not kept beside it.
        kind = note.split(" `bench/run")[0]
        lines = [l for l in lines if not (l.startswith(kind) and l != note)]
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


# ---- resumable uploads (tus) -------------------------------------------------------

# The client for these figures is the benchmark's own HTTP/1.1 client (below),
# not tus-js-client: it speaks the tus requests directly, sends every body
# with sendfile(2) from the page cache on a kept-alive connection, and so
# costs the same few system calls whether the bytes go out as one multipart
# POST, one PATCH, 8 MiB PATCHes or four partial uploads; Node streaming a
# gigabyte would take the CPU the server is being measured for, on two cores.

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 8 * MIB
# The daemon's and the CGI's default progress interval (config.rs): a held
# upload is let go at the holder's next tick, so the goal is two of them.
PROGRESS_INTERVAL_MS = 200
RESUMABLE_ROUNDS = 5
# The reconnect scenario's upload: the input's first 64 MiB, a quarter of
# it sent before the client goes silent.
RECONNECT_SIZE = 64 * MIB


class HttpError(RuntimeError):
    def __init__(self, what, status, headers, body):
        super().__init__(f"{what}: {status} {body[:300]!r}")
        self.what, self.status, self.headers, self.body = what, status, headers, body

    def code(self):
        try:
            return json.loads(self.body).get("code") or json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None


class Conn:
    """One kept-alive HTTP/1.1 connection to nginx."""

    def __init__(self, port, timeout=300):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send_head(self, method, path, headers, length):
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send_file(self, path, offset, count):
        with open(path, "rb") as f:
            sent = self.sock.sendfile(f, offset, count)
        if sent != count:
            raise RuntimeError(f"sendfile sent {sent} of {count} bytes")

    def response(self, method):
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection without an answer")
        status = int(line.split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while (size := int(self.reader.readline().split(b";")[0], 16)):
                parts.append(self.reader.read(size))
                self.reader.readline()
            while self.reader.readline() not in (b"\r\n", b"\n", b""):
                pass
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self.reader.read(int(headers["content-length"]))
        else:
            body = self.reader.read()
        return status, headers, body.decode(errors="replace")

    def request(self, method, path, headers=None, body=b"", file=None, offset=0, count=None):
        headers = dict(headers or {})
        length = count if file is not None else (len(body) if body or method in ("POST", "PATCH") else None)
        self.send_head(method, path, headers, length)
        if file is not None:
            self.send_file(file, offset, count)
        elif body:
            self.sock.sendall(body)
        return self.response(method)

    def close(self):
        self.reader.close()
        self.sock.close()


def expect(what, answer, status):
    if answer[0] != status:
        raise HttpError(what, *answer)
    return answer


def tus_create(conn, base, length, extra=None):
    headers = {**TUS, "Upload-Length": str(length), **(extra or {})}
    _, h, _ = expect("tus creation", conn.request("POST", f"{base}/files", headers), 201)
    location = h["location"]
    # Location may be absolute (with the host); requests go by its path.
    return re.sub(r"^https?://[^/]+", "", location)


def tus_patch(conn, url, file, offset, count):
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    _, h, _ = expect("tus PATCH", conn.request("PATCH", url, headers, file=file, offset=offset, count=count), 204)
    return int(h["upload-offset"])


def tus_head(conn, url):
    _, h, _ = expect("tus HEAD", conn.request("HEAD", url, TUS), 200)
    return int(h["upload-offset"])


def write_raw(path, size):
    """Writes `size` random bytes; returns their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with open(path, "wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
            block = block[1:] + block[:1]  # no two blocks alike
    return digest.hexdigest()


def wrap_multipart(raw, path):
    """The multipart body of one file whose bytes are `raw`'s."""
    with open(path, "wb") as out, open(raw, "rb") as src:
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="raw.bin"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        shutil.copyfileobj(src, out, 4 * MIB)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return path.stat().st_size


class Resumable:
    """The resumable scenarios against one nginx (Servers), each transport
    under its own prefix: /fcgi/upload (the daemon), /cgi/upload (fcgiwrap,
    a process per request)."""

    def __init__(self, servers, pool, raw, raw_sha, body, body_len):
        self.servers, self.pool = servers, pool
        self.raw, self.raw_sha, self.size = raw, raw_sha, raw.stat().st_size
        self.body, self.body_len = body, body_len
        self.daemon_pid = servers.procs[0].pid  # setpriv execs the daemon: same pid
        self.serial = 0

    # -- the daemon's memory

    def reset_peak(self):
        # "5" resets VmHWM, so each scenario's peak is its own.
        try:
            Path(f"/proc/{self.daemon_pid}/clear_refs").write_text("5\n")
        except OSError as e:
            raise RuntimeError(f"cannot reset the daemon's peak RSS: {e}")

    def peak_kib(self):
        for line in Path(f"/proc/{self.daemon_pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM for the daemon")

    # -- checking what was stored

    def check_stored(self, ident, what, expected=None):
        """The stored file's SHA-256 on disk against what was sent (the whole
        input unless `expected` says otherwise); then the upload is
        cleared, so the pool does not fill up."""
        expected = expected or self.raw_sha
        out = subprocess.run([str(BIN), "path", ident], env={"FILEUPLOAD_DIRECTORY": str(self.pool), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
        paths = out.stdout.split()
        if out.returncode != 0 or len(paths) != 1:
            raise RuntimeError(f"{what}: `fileupload path {ident}` gave {out.returncode}: {out.stdout!r} {out.stderr!r}")
        got = sha256_file(Path(paths[0]))
        if got != expected:
            raise RuntimeError(f"{what}: stored other bytes ({got} != {expected})")
        subprocess.run([str(BIN), "clear", ident], env={"FILEUPLOAD_DIRECTORY": str(self.pool), "PATH": "/usr/bin:/bin"},
                       check=True, capture_output=True)

    @staticmethod
    def ident_of(url):
        return url.rsplit("/", 1)[1]

    def group_cpu(self, transport):
        """CPU seconds used so far by the transport's processes: the daemon
        (all its threads), or fcgiwrap with every CGI it has reaped. On two
        shared cores the wall times follow the other helpers' load; the CPU
        a scenario costs the server follows it much less."""
        pgid = self.servers.procs[0 if transport == "daemon" else 1].pid
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == pgid:
                ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def daemon_faults(self):
        """The daemon's minor page faults so far, all its threads (`minflt`
        in /proc/<pid>/stat counts those of threads that have ended too):
        memory it took anew from the kernel, as a chunked upload did for
        every chunk before its buffers were kept (`crate::spares`)."""
        fields = Path(f"/proc/{self.servers.procs[0].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[7])

    def timed(self, transport, run):
        """Runs one scenario from a settled page cache:
        (wall s, daemon peak KiB, server CPU s, daemon page faults, identifier)."""
        settle(self.raw, self.body)  # both inputs cached alike, whichever is sent
        self.reset_peak()
        cpu = self.group_cpu(transport)
        faults = self.daemon_faults()
        start = time.perf_counter()
        ident = run()
        wall = time.perf_counter() - start
        # A CGI is reaped just after it answers: give fcgiwrap a moment.
        time.sleep(0.2)
        return wall, self.peak_kib(), self.group_cpu(transport) - cpu, self.daemon_faults() - faults, ident

    # -- the scenarios

    def post(self, base):
        self.serial += 1
        ident = f"bench-post-{self.serial}"
        conn = Conn(self.servers.port)
        try:
            expect("multipart POST", conn.request(
                "POST", f"{base}?X-Progress-ID={ident}",
                {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                file=self.body, offset=0, count=self.body_len), 200)
        finally:
            conn.close()
        return ident

    def tus(self, base, chunk):
        conn = Conn(self.servers.port)
        try:
            url = tus_create(conn, base, self.size)
            offset = 0
            while offset < self.size:
                count = min(chunk, self.size - offset)
                offset = tus_patch(conn, url, self.raw, offset, count)
        finally:
            conn.close()
        return self.ident_of(url)

    def parallel(self, base, parts):
        """tus-js-client's parallelUploads, done by hand: `parts` partial
        uploads (Upload-Concat: partial), each one PATCH on its own
        connection, at once; then the final upload that concatenates them."""
        bounds = [(i * self.size // parts, (i + 1) * self.size // parts) for i in range(parts)]
        urls, errors = [None] * parts, []

        def one(i):
            start, end = bounds[i]
            conn = Conn(self.servers.port)
            try:
                urls[i] = tus_create(conn, base, end - start, {"Upload-Concat": "partial"})
                headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
                # The part's bytes are the file's from `start`: sendfile's offset.
                conn.send_head("PATCH", urls[i], headers, end - start)
                conn.send_file(self.raw, start, end - start)
                expect("tus PATCH (partial)", conn.response("PATCH"), 204)
            except Exception as e:  # reported by the caller, with the others
                errors.append(e)
            finally:
                conn.close()

        import threading
        threads = [threading.Thread(target=one, args=(i,)) for i in range(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        conn = Conn(self.servers.port)
        try:
            _, h, _ = expect("tus final (Upload-Concat: final)", conn.request(
                "POST", f"{base}/files", {**TUS, "Upload-Concat": "final;" + " ".join(urls)}), 201)
        finally:
            conn.close()
        return self.ident_of(re.sub(r"^https?://[^/]+", "", h["location"]))

    def reconnect(self, base):
        """A PATCH whose client goes silent (the socket open, no FIN, as after
        a network drop), then the same client anew: HEAD, and a small PATCH
        from the offset HEAD gives. Returns (ms from the new HEAD's start to
        the small PATCH's 204, what the old request was answered, the
        upload's identifier); raises HttpError if the server refuses."""
        size = RECONNECT_SIZE
        sent_first = 16 * MIB
        conn = Conn(self.servers.port)
        url = tus_create(conn, base, size)
        old = Conn(self.servers.port)
        old.send_head("PATCH", url, {**TUS, "Upload-Offset": "0",
                                     "Content-Type": "application/offset+octet-stream"}, size)
        old.send_file(self.raw, 0, sent_first)
        # Wait until what was sent is stored, so that the new request's
        # offset is not overtaken by bytes still in flight.
        deadline = time.time() + 20
        while (stored := tus_head(conn, url)) < sent_first and time.time() < deadline:
            time.sleep(0.05)
        conn.close()
        if stored != sent_first:
            raise RuntimeError(f"reconnect: only {stored} of {sent_first} bytes stored before the client went silent")
        time.sleep(3 * PROGRESS_INTERVAL_MS / 1000)  # the old request is idle, holding the upload
        small = 64 * 1024
        new = Conn(self.servers.port)
        start = time.perf_counter()
        try:
            for _ in range(5):  # a 409 mismatched offset: HEAD again, as a client does
                offset = tus_head(new, url)
                headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
                answer = new.request("PATCH", url, headers, file=self.raw, offset=offset, count=small)
                if answer[0] == 204:
                    break
                if answer[0] != 409 or "MISMATCHED" not in answer[2]:
                    raise HttpError(f"reconnect PATCH after {time.perf_counter() - start:.2f} s", *answer)
            else:
                raise HttpError("reconnect PATCH (offset kept moving)", *answer)
            elapsed = (time.perf_counter() - start) * 1000
            offset = int(answer[1]["upload-offset"])
            # What the silent request was told: it should have been stopped.
            old.sock.settimeout(2)
            try:
                old_answer = old.response("PATCH")
                told = f"{old_answer[0]} {(json.loads(old_answer[2]) if old_answer[2] else {}).get('code', '')}".strip()
            except TimeoutError:
                told = "nothing in 2 s"
            except (OSError, ConnectionError, ValueError) as e:
                told = f"no answer ({type(e).__name__})"
            # The rest, then the whole checked on disk.
            while offset < size:
                offset = tus_patch(new, url, self.raw, offset, min(CHUNK, size - offset))
        finally:
            old.close()
            new.close()
        return elapsed, told, self.ident_of(url)


def resumable(work, quick):
    """The tus figures: for each transport the multipart POST, one PATCH and
    8 MiB PATCHes of the same bytes; four partial uploads concatenated
    against one; the time from reconnect to the first accepted byte; the
    daemon's peak RSS in each. Interleaved rounds, medians; every stored
    file's SHA-256 checked on disk."""
    if os.geteuid() != 0:
        sys.exit("bench: the resumable scenarios run nginx and the daemon as www-data: run as root")
    size = 128 * MIB if quick else GIB
    label = "1g" if size == GIB else f"{size // MIB}m"
    rounds = 2 if quick else RESUMABLE_ROUNDS
    root = fresh(work / "resumable")
    raw = root / "raw.bin"
    say(f"resumable: making {label} of input")
    raw_sha = write_raw(raw, size)
    body = root / "raw.body"
    body_len = wrap_multipart(raw, body)
    with open(raw, "rb") as f:
        reconnect_sha = hashlib.sha256(f.read(RECONNECT_SIZE)).hexdigest()
    pool = fresh(root / "pool")
    os.chmod(root, 0o755)
    servers = Servers(root, pool)
    run = Resumable(servers, pool, raw, raw_sha, body, body_len)
    transports = {"daemon": "/fcgi/upload", "fcgiwrap": "/cgi/upload"}
    throughput = {}
    for t, base in transports.items():
        throughput[f"{t}.post"] = lambda base=base: run.post(base)
        throughput[f"{t}.one_patch"] = lambda base=base: run.tus(base, size)
        throughput[f"{t}.8m_patches"] = lambda base=base: run.tus(base, CHUNK)
    throughput["daemon.parallel_4"] = lambda: run.parallel("/fcgi/upload", 4)
    samples = {name: [] for name in throughput}
    unavailable = {}
    reconnect = {t: [] for t in transports}
    reconnect_rss = {t: [] for t in transports}
    told = {t: [] for t in transports}
    peak_log = []  # the daemon's peak in each daemon scenario, in run order
    # The other helpers' load, after each scenario: bulk receiving runs at
    # nice 19, so wall times stretch with it, the server's CPU much less.
    loads = []
    try:
        # What the server says it has: a scenario it lacks is tried anyway
        # (so it counts the moment the server has it) and, if refused,
        # reported "not available" with the server's answer.
        conn = Conn(servers.port)
        extensions = conn.request("OPTIONS", "/fcgi/upload/files", TUS)[1].get("tus-extension", "")
        conn.close()
        say(f"resumable: Tus-Extension: {extensions}")
        started = time.time()
        for r in range(rounds):
            say(f"resumable round {r + 1} of {rounds}")
            for name, scenario in throughput.items():
                if name in unavailable:
                    continue
                try:
                    wall, peak, cpu, faults, ident = run.timed(name.split(".")[0], scenario)
                except HttpError as e:
                    if name != "daemon.parallel_4":
                        raise
                    unavailable[name] = (f"not available: {e.status} {e.code() or ''} to the {e.what}"
                                         f" (concatenation {'is' if 'concatenation' in extensions else 'is not'}"
                                         f" in Tus-Extension)")
                    say(f"  {name}: {unavailable[name]}")
                    continue
                run.check_stored(ident, name)
                samples[name].append((wall, peak, cpu, faults))
                loads.append(os.getloadavg()[0])
                if name.startswith("daemon."):
                    peak_log.append(peak)
                say(f"  {name}: {wall:.2f} s, server CPU {cpu:.2f} s, daemon peak {peak / 1024:.1f} MiB")
            for t, base in transports.items():
                if f"reconnect.{t}" in unavailable:
                    continue
                run.reset_peak()
                try:
                    ms, answer, ident = run.reconnect(base)
                except HttpError as e:
                    unavailable[f"reconnect.{t}"] = (f"not available: {e.status} {e.code() or ''} "
                                                     f"({e.what}): the held upload is not taken over")
                    say(f"  reconnect.{t}: {unavailable[f'reconnect.{t}']}")
                    continue
                run.check_stored(ident, f"reconnect.{t}", reconnect_sha)
                reconnect[t].append(ms)
                reconnect_rss[t].append(run.peak_kib())
                told[t].append(answer)
                say(f"  reconnect.{t}: {ms:.0f} ms; the silent request was answered {answer}")
        elapsed = time.time() - started
    finally:
        servers.stop()

    def med(name, i):
        return statistics.median(s[i] for s in samples[name])

    def shown(values, scale=1.0):
        return ", ".join(f"{v * scale:.3g}" for v in values)

    goals = {"one_patch": 1.05, "8m_patches": 1.15}
    for t in transports:
        post = med(f"{t}.post", 0)
        for kind in ("post", "one_patch", "8m_patches"):
            name = f"{t}.{kind}"
            walls = [s[0] for s in samples[name]]
            figure(f"tus.{name}.{label}.wall", med(name, 0), f"s (median of {shown(walls)})")
            figure(f"tus.{name}.{label}.server_cpu", med(name, 2),
                   f"s (median of {shown([s[2] for s in samples[name]])})")
            if t == "daemon":
                figure(f"tus.{name}.{label}.daemon_peak_rss", med(name, 1) / 1024,
                       f"MiB (median of {shown([s[1] for s in samples[name]], 1 / 1024)})")
                figure(f"tus.{name}.{label}.daemon_page_faults", med(name, 3),
                       f"(minor faults of the daemon over the upload; median of {shown([s[3] for s in samples[name]])})")
        for kind, goal in goals.items():
            # The ratio of each round's pair, then their median: the rounds
            # drift with the machine's other load more than the pairs do.
            pairs = [a[0] / b[0] for a, b in zip(samples[f"{t}.{kind}"], samples[f"{t}.post"])]
            value = statistics.median(pairs)
            figure(f"tus.{t}.{kind}_vs_post", value,
                   f"x (wall; rounds {shown(pairs)}; goal <= {goal}: {'met' if value <= goal else 'missed'})")
            pairs = [a[2] / b[2] for a, b in zip(samples[f"{t}.{kind}"], samples[f"{t}.post"])]
            figure(f"tus.{t}.{kind}_vs_post.server_cpu", statistics.median(pairs), f"x (rounds {shown(pairs)})")
    name = "daemon.parallel_4"
    if name in unavailable:
        figure(f"tus.{name}.{label}.wall", unavailable[name], "(4 partial uploads + final: not measured)")
    else:
        walls = [s[0] for s in samples[name]]
        figure(f"tus.{name}.{label}.wall", med(name, 0), f"s (median of {shown(walls)}; 4 partial uploads + final)")
        figure(f"tus.{name}.{label}.daemon_peak_rss", med(name, 1) / 1024,
               f"MiB (median of {shown([s[1] for s in samples[name]], 1 / 1024)})")
        pairs = [a[0] / b[0] for a, b in zip(samples[name], samples["daemon.one_patch"])]
        figure("tus.daemon.parallel_4_vs_1", statistics.median(pairs),
               f"x (rounds {shown(pairs)}; 1 = one upload, one PATCH; below 1 is faster)")
    goal_ms = 2 * PROGRESS_INTERVAL_MS
    for t in transports:
        key = f"reconnect.{t}"
        if key in unavailable:
            figure(f"tus.{key}.first_byte", unavailable[key], f"(goal < {goal_ms} ms: not measured)")
            continue
        value = statistics.median(reconnect[t])
        figure(f"tus.{key}.first_byte", value,
               f"ms (median of {shown(reconnect[t])}; goal < {goal_ms} ms, 2 progress intervals: "
               f"{'met' if value < goal_ms else 'missed'}; the silent PATCH was answered {', '.join(sorted(set(told[t])))})")
        if t == "daemon":
            figure(f"tus.{key}.daemon_peak_rss", statistics.median(reconnect_rss[t]) / 1024, "MiB")
    # Flat: no tus scenario's daemon peak more than 8 MiB over the POST's.
    peaks = {n: med(n, 1) / 1024 for n in samples if n.startswith("daemon.") and samples[n]}
    spread = max(peaks.values()) - peaks["daemon.post"]
    figure("tus.daemon.peak_rss_over_post", spread,
           f"MiB (the highest tus scenario's over the POST's; goal <= 8 MiB, flat: {'met' if spread <= 8 else 'missed'})")
    # Across the run (not per scenario): the peak of the first scenario
    # measured and of the last, dozens of uploads later.
    first, last = peak_log[0] / 1024, peak_log[-1] / 1024
    figure("tus.daemon.peak_rss_drift", last - first,
           f"MiB (first scenario {first:.3g} MiB, last {last:.3g} MiB, {len(peak_log)} uploads apart)")
    figure("tus.load_average", statistics.median(loads),
           f"(1-minute, median over the scenarios, range {min(loads):.2g} to {max(loads):.2g}; this run's own "
           f"load is about 2: above that, other work shared the 2 cores and the wall times are noisy)")
    figure("tus.run_time", elapsed, f"s ({rounds} interleaved rounds, {label} bodies)")


# ---- several hosts, one pool (GlusterFS) --------------------------------------

# scripts/multihost brings up the storage host (glusterd, one brick), client
# hosts a and b (network namespaces, each its FUSE mount and its daemon) and
# nginx: the balancer over both daemons, and each host's own port (nginx and
# that one daemon), so "one host" and "two hosts" are the same nginx, the
# same daemons, the same volume, in the same run.
MH_SCRIPT = ROOT / "scripts" / "multihost"
MH_NET = "198.18.0"
MH_CONCURRENT = 64
MH_ROUNDS = 3
MH_POLLERS = 2
# No round starts after this many seconds: the run stays under ten minutes
# whatever the machine's other load.
MH_BUDGET = 330
# For the figure beside the dd's: the daemon writes what nginx forwards
# (tests/multihost.rs, issue 14); dd writes 1 MiB blocks.
MH_DD_BLOCK = "1M"


def mh_upload(port, ident, path, out):
    """A form upload by curl, as tests/multihost.rs sends one; a Popen."""
    return subprocess.Popen(
        ["curl", "-s", "-S", "-o", str(out), "-w", "%{http_code}", "--max-time", "300",
         "-F", f"file=@{path};type=application/octet-stream",
         f"http://127.0.0.1:{port}/upload?X-Progress-ID={ident}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mh_get(port, target, timeout=10):
    """One GET over HTTP/1.0 (a new connection, as a browser's poll may
    be); (status, body, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    took = time.perf_counter() - start
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head[9:12]) if len(head) >= 12 and head[9:12].isdigit() else 0
    return status, body, took


class Multihost:
    """The cluster of scripts/multihost (MH_HOSTS=2), plus, for the cost of
    the strict options, a second volume with gluster's defaults on the same
    storage host and brick file system, mounted on host a with the kernel's
    default caches, its own daemon on host a and its own nginx (the same
    server blocks, every upstream that daemon). A second volume because
    some strict options (the keepalives, `server.tcp-user-timeout`) are
    read only when a brick starts, and the mount options only at mount
    time: switching them on one running volume would change only half."""

    def __init__(self, root):
        self.dir = root
        self.port = free_port()
        self.ports = {h: free_port() for h in "ab"}
        self.procs = []  # ours, stopped by pid, last first
        self.defaults_port = None
        env = {**os.environ, "MH_BIN": str(BIN), "MH_HOSTS": "2", "MH_PORT": str(self.port),
               "MH_PORT_A": str(self.ports["a"]), "MH_PORT_B": str(self.ports["b"]), "MH_PORT_C": str(free_port())}
        say("multihost: scripts/multihost up")
        started = time.perf_counter()
        proc = subprocess.run([str(MH_SCRIPT), "up", str(root)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/multihost up failed (root, /dev/fuse, nginx, glusterfs):\n{proc.stderr}")
        self.env = dict(l.split("=", 1) for l in (root / "env").read_text().splitlines() if "=" in l)
        self.up_seconds = time.perf_counter() - started
        self.mnt = {"strict": Path(self.env["MNT_A"])}
        self.pool = {"strict": Path(self.env["POOL_A"])}

    def gluster(self, *args):
        glusterd = (self.dir / "pids" / "glusterd").read_text().strip()
        subprocess.run(["nsenter", "-t", glusterd, "-m", "gluster", "--mode=script",
                        "--glusterd-sock=/run/gluster/glusterd.socket",
                        "--log-file=/var/log/glusterfs/cli.log", *args],
                       check=True, capture_output=True)

    def start(self, argv, log):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def add_defaults(self):
        """The second volume, gluster's defaults, its mount, daemon, nginx."""
        d = self.dir
        (d / "bricks" / "defaults").mkdir(parents=True)
        self.gluster("volume", "create", "defaults", f"{MH_NET}.1:{d}/bricks/defaults", "force")
        self.gluster("volume", "start", "defaults")
        mnt = d / "mnt" / "D"
        mnt.mkdir(parents=True)
        ns = f"/run/netns/{self.env['NS']}-a"
        client = self.start(["nsenter", f"--net={ns}", "glusterfs", "-N", f"--volfile-server={MH_NET}.1",
                             "--volfile-id=defaults", "-l", str(d / "cli" / "D.log"), str(mnt)],
                            d / "cli" / "D.out")
        deadline = time.time() + 20
        while not (os.path.ismount(mnt) and os.access(mnt, os.W_OK)):
            if time.time() > deadline or client.poll() is not None:
                raise RuntimeError(f"the defaults volume did not mount: {(d / 'cli' / 'D.log').read_text()[-2000:]}")
            time.sleep(0.1)
        pool = mnt / "pool"
        pool.mkdir(mode=0o700)
        shutil.chown(pool, "www-data", "www-data")
        sock = d / "run" / "d.sock"
        self.start(["nsenter", f"--net={ns}", "setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups",
                    str(d / "fileupload"), "--directory", str(pool), "--max-size", "100",
                    "--listen", f"unix:{sock}"], d / "run" / "daemon-d.log")
        deadline = time.time() + 10
        while not sock.exists():
            if time.time() > deadline:
                raise RuntimeError(f"the defaults daemon did not start: {(d / 'run' / 'daemon-d.log').read_text()}")
            time.sleep(0.05)
        # The balancer's nginx configuration, every upstream this daemon.
        site = (d / "nginx" / "site.conf").read_text()
        for h in "ab":
            site = site.replace(f"{d}/run/{h}.sock", str(sock))
        self.defaults_port = free_port()
        for p in [self.port, *self.ports.values()]:
            site = site.replace(f"listen 127.0.0.1:{p};", f"listen 127.0.0.1:{free_port() if p != self.ports['a'] else self.defaults_port};")
        (d / "nginx" / "site-d.conf").write_text(site)
        temp = d / "nginx" / "temp-d"
        temp.mkdir()
        shutil.chown(temp, "www-data", "www-data")
        conf = (d / "nginx" / "nginx.conf").read_text()
        conf = (conf.replace(f"{d}/nginx/nginx.pid", f"{d}/nginx/nginx-d.pid")
                .replace(f"{d}/nginx/error.log", f"{d}/nginx/error-d.log")
                .replace(f"{d}/nginx/temp/", f"{d}/nginx/temp-d/")
                .replace(f"{d}/nginx/site.conf", f"{d}/nginx/site-d.conf"))
        (d / "nginx" / "nginx-d.conf").write_text(conf)
        self.start(["nginx", "-c", str(d / "nginx" / "nginx-d.conf"), "-p", str(d / "nginx")], d / "nginx" / "out-d.log")
        deadline = time.time() + 10
        while True:
            try:
                mh_get(self.defaults_port, "/")
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"the defaults nginx did not start: {(d / 'nginx' / 'error-d.log').read_text()}")
                time.sleep(0.05)
        self.mnt["defaults"] = mnt
        self.pool["defaults"] = pool

    def down(self):
        """Ours by pid, last started first (the defaults mount unmounted
        before its client is asked to go); then the harness's own teardown
        (by pid, every brick, the namespaces)."""
        mnt = self.dir / "mnt" / "D"
        for proc in reversed(self.procs):
            if proc is self.procs[0] and os.path.ismount(mnt):
                # The client leaves by itself once unmounted.
                if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        try:
            self.gluster("volume", "stop", "defaults", "force")
        except (subprocess.CalledProcessError, OSError):
            pass
        proc = subprocess.run([str(MH_SCRIPT), "down", str(self.dir)], capture_output=True, text=True)
        if proc.returncode != 0:
            say(f"multihost: scripts/multihost down failed: {proc.stderr}")


def mh_check(pool, ident, digest, answer, code):
    """The upload answered 200 `done`, and its stored file's SHA-256 (read
    back through the mount) is what was sent; then its directory goes, so
    that the rounds do not fill the brick."""
    problems = []
    if code != "200":
        problems.append(f"{ident}: HTTP {code} {answer[:200]}")
    stored = pool / ident / "file-1"
    try:
        if sha256_file(stored) != digest:
            problems.append(f"{ident}: stored SHA-256 differs from what was sent")
    except OSError as e:
        problems.append(f"{ident}: {e}")
    shutil.rmtree(pool / ident, ignore_errors=True)
    return problems


def mh_concurrent(cluster, port, data, digest, size, tag):
    """MH_CONCURRENT uploads at once to `port`, while MH_POLLERS pollers
    ask after them through the same port (each a poll, a new connection,
    then 20 ms of rest: as fast as the answers come, a browser's 20 ms
    at most); (aggregate MiB/s, [poll seconds], [poll failures], problems)."""
    import threading
    ids = [f"mh-{tag}-{i}" for i in range(MH_CONCURRENT)]
    outs = [cluster.dir / "answers" / f"{i}.out" for i in ids]
    lat, failed, stop = [], [], threading.Event()

    def poller():
        n = 0
        while not stop.is_set():
            ident = ids[n % len(ids)]
            n += 1
            try:
                status, body, took = mh_get(port, f"/upload/status?X-Progress-ID={ident}")
                if status != 200 or b'"state"' not in body:
                    # The upload's name out, so that alike failures count as one kind.
                    text = re.sub(r"mh-[0-9-]+", "ID", body.decode(errors="replace"))
                    failed.append(f"{status} {text[:160]}")
                else:
                    lat.append(took)
            except OSError as e:
                failed.append(str(e))
            stop.wait(0.02)

    threads = [threading.Thread(target=poller) for _ in range(MH_POLLERS)]
    start = time.perf_counter()
    procs = [mh_upload(port, i, data, o) for i, o in zip(ids, outs)]
    for t in threads:
        t.start()
    answers = [p.communicate()[0].strip() for p in procs]
    wall = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    problems = []
    for ident, out, code in zip(ids, outs, answers):
        problems += mh_check(cluster.pool["strict"], ident, digest, out.read_text(errors="replace") if out.exists() else "", code)
    return MH_CONCURRENT * size / MIB / wall, lat, failed, problems


def mh_single(cluster, port, pool, data, digest, size, ident):
    """One upload to `port` (nginx and one daemon); MiB/s, problems."""
    out = cluster.dir / "answers" / f"{ident}.out"
    start = time.perf_counter()
    proc = mh_upload(port, ident, data, out)
    code = proc.communicate()[0].strip()
    wall = time.perf_counter() - start
    return size / MIB / wall, mh_check(pool, ident, digest, out.read_text(errors="replace") if out.exists() else "", code)


def mh_dd(mnt, data, size):
    """`dd bs=1M conv=fsync` of the same bytes onto the mount; MiB/s."""
    target = mnt / "dd.bin"
    start = time.perf_counter()
    subprocess.run(["dd", f"if={data}", f"of={target}", f"bs={MH_DD_BLOCK}", "conv=fsync"],
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    target.unlink()
    return size / MIB / wall


def multihost(work, quick):
    """The multi-host figures on GlusterFS: 64 concurrent uploads to one
    host against two behind the balancer (aggregate MiB/s, status-poll
    latency); a single upload against dd with 1 MiB blocks on the same
    mount; the strict options against gluster's defaults. Interleaved
    rounds, medians; every stored file's SHA-256 checked."""
    if os.geteuid() != 0:
        sys.exit("bench: the multi-host scenarios need root (namespaces, FUSE mounts): run as root")
    each = (2 if quick else 8) * MIB  # each of the 64 concurrent uploads
    single = (16 if quick else 64) * MIB
    rounds = 2 if quick else MH_ROUNDS
    # An earlier run killed before its teardown may have left its mounts:
    # removing the directory would then remove what is on the volumes.
    left = [l.split()[1] for l in Path("/proc/mounts").read_text().splitlines()
            if l.split()[1].startswith(f"{work.resolve()}/multihost/")]
    if left:
        sys.exit(f"bench: still mounted from an earlier run: {' '.join(left)}; "
                 f"run scripts/multihost down {work.resolve()}/multihost first")
    root = fresh(work / "multihost")
    os.chmod(root, 0o755)
    (root / "answers").mkdir()
    inputs = root / "inputs"
    inputs.mkdir(mode=0o755)
    small, big = inputs / "each.bin", inputs / "single.bin"
    small.write_bytes(os.urandom(each))
    big.write_bytes(os.urandom(single))
    small_sha, big_sha = sha256_file(small), sha256_file(big)
    subprocess.run([str(MH_SCRIPT), "install"], check=True)
    started = time.time()
    cluster = Multihost(root)
    samples, polls, poll_failures, problems = {}, {}, {}, []

    def record(name, value):
        samples.setdefault(name, []).append(value)

    try:
        cluster.add_defaults()
        say(f"multihost: up in {cluster.up_seconds:.1f} s (+ the defaults volume)")
        scenarios = {
            "one_host": lambda r: mh_concurrent(cluster, cluster.ports["a"], small, small_sha, each, f"1-{r}"),
            "two_hosts": lambda r: mh_concurrent(cluster, cluster.port, small, small_sha, each, f"2-{r}"),
            "strict.upload": lambda r: mh_single(cluster, cluster.ports["a"], cluster.pool["strict"], big, big_sha,
                                                 single, f"s-{r}"),
            "strict.dd": lambda r: mh_dd(cluster.mnt["strict"], big, single),
            "defaults.upload": lambda r: mh_single(cluster, cluster.defaults_port, cluster.pool["defaults"], big,
                                                   big_sha, single, f"d-{r}"),
            "defaults.dd": lambda r: mh_dd(cluster.mnt["defaults"], big, single),
        }
        done = 0
        for r in range(rounds):
            if done >= 2 and time.time() - started > MH_BUDGET:
                say(f"multihost: {done} rounds in {time.time() - started:.0f} s, no more (budget {MH_BUDGET} s)")
                break
            say(f"multihost round {r + 1} of {rounds}")
            # Interleaved, and every other round the other way round.
            order = list(scenarios) if r % 2 == 0 else list(reversed(scenarios))
            for name in order:
                got = scenarios[name](r)
                if name in ("one_host", "two_hosts"):
                    mibs, lat, failed, bad = got
                    polls.setdefault(name, []).extend(lat)
                    poll_failures.setdefault(name, []).extend(failed)
                    problems += bad
                    say(f"  {name}: {mibs:.1f} MiB/s aggregate, {len(lat)} polls, {len(failed)} failed, "
                        f"{len(bad)} bad uploads")
                elif name.endswith(".upload"):
                    mibs, bad = got
                    problems += bad
                    say(f"  {name}: {mibs:.1f} MiB/s")
                else:
                    mibs = got
                    say(f"  {name}: {mibs:.1f} MiB/s")
                record(name, mibs)
            done += 1
        elapsed = time.time() - started
    finally:
        cluster.down()
    for p in problems:
        say(f"multihost: {p}")

    def shown(values):
        return ", ".join(f"{v:.3g}" for v in values)

    def med(name):
        return statistics.median(samples[name])

    n = f"{MH_CONCURRENT}x{each // MIB}m"
    for name, where in (("one_host", "host a's own port: nginx, one daemon"),
                        ("two_hosts", "the round-robin balancer over hosts a and b")):
        figure(f"multihost.{name}.{n}.aggregate", med(name), f"MiB/s (median of {shown(samples[name])}; {where})")
        lat = sorted(polls.get(name, []))
        if lat:
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            figure(f"multihost.{name}.{n}.poll_p50", p50, f"ms ({len(lat)} status polls during the uploads, same port)")
            figure(f"multihost.{name}.{n}.poll_p99", p99, "ms")
        failed = poll_failures.get(name, [])
        kinds = sorted(set(failed))
        seen = "; ".join(f"{failed.count(k)} x {k}" for k in kinds[:3])
        figure(f"multihost.{name}.{n}.poll_failures", len(failed),
               f"(status polls not answered 200 with a state{': ' + seen if seen else ''})")
    pairs = [b / a for a, b in zip(samples["one_host"], samples["two_hosts"])]
    figure("multihost.two_hosts_vs_one", statistics.median(pairs),
           f"x aggregate (rounds {shown(pairs)}; both hosts on this machine's 2 cores and one brick)")
    s = f"{single // MIB}m"
    for vol in ("strict", "defaults"):
        figure(f"multihost.{vol}.upload.{s}", med(f"{vol}.upload"),
               f"MiB/s (median of {shown(samples[f'{vol}.upload'])}; one upload, nginx + one daemon)")
        figure(f"multihost.{vol}.dd_1m.{s}", med(f"{vol}.dd"),
               f"MiB/s (median of {shown(samples[f'{vol}.dd'])}; dd bs=1M conv=fsync, same mount)")
        pairs = [d / u for u, d in zip(samples[f"{vol}.upload"], samples[f"{vol}.dd"])]
        value = statistics.median(pairs)
        goal = f"; goal <= 1.2: {'met' if value <= 1.2 else 'missed'}" if vol == "strict" else ""
        figure(f"multihost.{vol}.dd_vs_upload", value, f"x (dd's MiB/s over the upload's; rounds {shown(pairs)}{goal})")
    for kind in ("upload", "dd"):
        pairs = [d / st for st, d in zip(samples[f"strict.{kind}"], samples[f"defaults.{kind}"])]
        figure(f"multihost.strict_cost.{kind}", statistics.median(pairs),
               f"x (gluster's defaults' MiB/s over the strict options'; rounds {shown(pairs)})")
    figure("multihost.sha256_mismatches_or_failures", len(problems),
           f"(of {done * (2 * MH_CONCURRENT + 2)} uploads, each stored file's SHA-256 checked)")
    figure("multihost.run_time", elapsed, f"s ({done} interleaved rounds, setup and teardown included)")


# ---- a CGI process's start (status.cgi_process*) ----------------------------------

# Runs the programs given RUNS times each, taking turns run by run (so that
# the machine's other work, which comes in bursts, lands on all of them
# alike), and prints one JSON list per program: the microseconds of each
# of its runs, posix_spawn to exit. Spawned from C, not Python's subprocess:
# that costs about half a millisecond a run itself, the same for every
# program, and would dilute the ratios towards 1.
SPAWN_C = r'''
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int runs = atoi(argv[1]), n = argc - 2;
    double *us = calloc((size_t)runs * n, sizeof *us);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    for (int r = 0; r < runs; r++)
        for (int p = 0; p < n; p++) {
            char *args[] = {argv[2 + p], NULL};
            pid_t pid;
            int status;
            double start = now();
            if (posix_spawn(&pid, args[0], &actions, NULL, args, environ) != 0) {
                perror(args[0]);
                return 1;
            }
            if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "%s failed\n", args[0]);
                return 1;
            }
            us[(size_t)p * runs + r] = (now() - start) * 1e6;
        }
    for (int p = 0; p < n; p++) {
        printf("[");
        for (int r = 0; r < runs; r++) printf("%s%.1f", r ? "," : "", us[(size_t)p * runs + r]);
        printf("]\n");
    }
    return 0;
}
'''


def build_static():
    """scripts/build-static: the binary the README tells shared hosts to copy."""
    say("building the static binary (scripts/build-static)")
    out = subprocess.run([str(ROOT / "scripts" / "build-static")], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return ROOT / out


def count_writes(argv, env):
    """The `write` calls of one run, from strace -f -c; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile("r") as report:
        subprocess.run([strace, "-f", "-c", "-e", "trace=write,writev", "-o", report.name, *argv],
                       env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True)
        calls = 0
        for line in report.read().splitlines():
            fields = line.split()
            if fields and fields[-1] in ("write", "writev"):
                calls += int(fields[3])
        return calls


def cgi_start(work, pool, quick):
    """A status answer from one CGI process, the web server's view: fork,
    exec, answer, exit, for an identifier the pool does not hold (the
    answer {"state":"starting"}, the same bytes as the C floor's). The
    release binary (dynamically linked, as cargo builds it), the static
    one (scripts/build-static), and the floor: a C program that prints the
    fixed answer with stdio, dynamically linked as gcc builds it, and the
    same statically linked (what C itself gains). Returns the ratios."""
    static = build_static()
    fixed = compile_c(work, "fixed-status-direct", FIXED_STATUS_C)
    fixed_static = work / "fixed-status-static"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(fixed_static), str(work / "fixed-status-direct.c")], check=True)
    spawn = compile_c(work, "spawn-turns", SPAWN_C)
    env = cgi_env(pool, 0, {"REQUEST_METHOD": "GET", "PATH_INFO": "/upload/status", "CONTENT_LENGTH": "",
                            "CONTENT_TYPE": "", "QUERY_STRING": "X-Progress-ID=never-uploaded-start-up-figures"})
    programs = [
        ("status.fixed_cgi_process", fixed, "the C floor, dynamically linked"),
        ("status.cgi_process", BIN, "target/release/fileupload, dynamically linked"),
        ("status.cgi_process.static", static, "scripts/build-static"),
        ("status.fixed_cgi_process.static", fixed_static, "the C floor, gcc -static"),
    ]
    for name, path, _ in programs:
        answer = subprocess.run([str(path)], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True).stdout
        if not (answer.startswith(b"Status: 200 OK\r\n") and answer.endswith(b'\r\n\r\n{"state":"starting"}')):
            raise RuntimeError(f"{name}: unexpected answer {answer[:300]!r}")
    runs = 400 if quick else 2000
    say(f"CGI start: {runs} runs of each of {len(programs)} programs, taking turns")
    proc = subprocess.run([str(spawn), str(runs), *(str(p) for _, p, _ in programs)],
                          env=env, capture_output=True, text=True, check=True)
    for (name, path, what), samples in zip(programs, (json.loads(line) for line in proc.stdout.splitlines())):
        figure(name, statistics.median(samples) / 1000,
               f"ms a process ({what}; median of {runs} runs taking turns, posix_spawn to exit)")
    for name, path, _ in programs[1:3]:
        writes = count_writes([str(path)], env)
        figure(f"{name}.writes", "strace missing" if writes is None else writes, "write calls for the answer")
    floor = get("status.fixed_cgi_process")
    return [
        ("ratio.cgi_status_vs_c_fixed", get("status.cgi_process.static") / floor, "<= 1.2"),
        ("ratio.cgi_status_dynamic_vs_c_fixed", get("status.cgi_process") / floor, "(the dynamic binary)"),
    ]


def merge_ratio_rows(ratios):
    """Puts ratios measured by a partial run (--only) into the ratio table of
    bench/results.md and the README's copy, each replacing its row or added
    at the table's end."""
    def merged(table):
        lines = table.split("\n")
        for name, value, target in ratios:
            row = f"| `{name}` | {value:.2f} x | {target} |"
            at = next((i for i, l in enumerate(lines) if l.startswith(f"| `{name}` |")), None)
            if at is not None:
                lines[at] = row
                continue
            rows = [i for i, l in enumerate(lines) if l.startswith("| `ratio.")]
            if rows:
                lines.insert(rows[-1] + 1, row)
        return "\n".join(lines)

    path = ROOT / "bench" / "results.md"
    path.write_text(merged(path.read_text()))
    replace_readme_table(merged)


# ---- the benchmark -------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller bodies (a smoke run)")
    parser.add_argument("--work", default=str(ROOT / "target" / "bench-work"),
                        help="scratch directory; the pool and every copy live here, on its filesystem")
    parser.add_argument("--only", choices=["slow-clients", "resumable", "writes", "multihost", "floors",
                                           "cgi-start", "checksums"],
                        help="run only this part and update only its rows of bench/results.md")
    args = parser.parse_args()
    if args.only == "slow-clients":
        slow_clients()
        merge_markdown(f"Slow-client rows: `bench/run --only slow-clients`, {time.strftime('%Y-%m-%d')}.")
        return
    if args.only == "multihost":
        say("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        multihost(work, args.quick)
        merge_markdown(f"Multi-host (`multihost.*`) rows: `bench/run --only multihost{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}; GlusterFS on this one machine, noisy (2 shared cores): "
                       f"medians of interleaved rounds.")
        return
    if args.only == "cgi-start":
        # Nothing to install but gcc (which cargo links with anyway).
        say("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        work = Path(args.work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        ratios = cgi_start(work, fresh(work / "pool"), args.quick)
        for name, value, target in ratios:  # their own table, not the figures'
            print(f"{name}: {value:.4g} x (target {target})", flush=True)
        merge_markdown(f"CGI start (`status.*cgi_process*`) rows: `bench/run --only cgi-start{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}.")
        merge_ratio_rows(ratios)
        return
    install()
    reported_at_start = reported_kib()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.only == "writes":
        writes_only(work, args.quick)
        merge_markdown(f"Write-count rows: `bench/run --only writes{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}.")
        return
    if args.only == "floors":
        floors_only(work, args.quick)
        merge_markdown(f"Floor (`floors.*`, CGI pipe) rows: `bench/run --only floors{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}; noisy (2 shared cores): medians of interleaved rounds.")
        merge_ratio_rows(floor_ratios())
        return
    if args.only == "checksums":
        ratios = checksums(work, args.quick)
        for name, value, target in ratios:
            print(f"{name}: {value:.4g} x (target {target})", flush=True)
        merge_markdown(f"Checksum (`checksums.*`) rows: `bench/run --only checksums{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}; noisy (2 shared cores): medians of interleaved rounds.")
        merge_ratio_rows(ratios)
        return
    if args.only == "resumable":
        resumable(work, args.quick)
        merge_markdown(f"Resumable (`tus.*`) rows: `bench/run --only resumable{' --quick' if args.quick else ''}`, "
                       f"{time.strftime('%Y-%m-%d')}; noisy (2 shared cores): medians of interleaved rounds.")
        return
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
        "limit.dd_1m_file_to_file": lambda: run_dd(one, out, "1M"),
        "limit.dd_256k_file_to_file": lambda: run_dd(one, out, "256K"),
        "limit.cat_pipe_to_file": lambda: run_cat_pipe(one, out),
        "limit.cat_pipe_to_file.nice19": lambda: run_cat_pipe(one, out, nice=19),
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
        figure(f"{name}.{label}.wall", runner.median(name, 0),
               f"s (median of {shown_list(s[0] for s in runner.samples[name])})")
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

    # 5b: each checksum against its own in-memory speed.
    say("checksums")
    checksum_ratios = checksums(work, args.quick)

    # 6: the cost of a status answer.
    say("status cost")
    fresh(pool)
    run_fileupload(small, small_len, small_sha, pool)  # an upload to ask about
    start_ratios = cgi_start(work, pool, args.quick)

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
            rps, p99, _ = wrk(servers.url(path), seconds)
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
        say("write calls of an upload through nginx")
        upload_writes(servers, pool, work, one, one_len, one_sha, label, 2 if args.quick else 3)

        # 7b: the FastCGI figures against their libfcgi floors.
        say("the libfcgi floors")
        sha_rate = floors(servers, pool, work, one, one_len, one_sha, label, rounds, args.quick)
    finally:
        servers.stop()
    cgi_pipe_goals({name: [s[0] for s in runner.samples[name]]
                    for name in ("limit.cat_pipe_to_file", "limit.cat_pipe_to_file.nice19", "cgi.sha_off.pipe",
                                 "cgi.sha_on.pipe")},
                   sha_rate, big, label)
    floors_load()

    # 8: slow clients through nginx as the README configures it.
    slow_clients()

    # 9: resumable uploads (tus) against the multipart POST.
    resumable(work, args.quick)

    # The ratios the targets are stated in.
    cat = get(f"limit.cat_file_to_file.{label}.wall")
    ratios = [
        ("ratio.cgi_sha_off_vs_cat", get(f"cgi.sha_off.{label}.wall") / cat, "<= 1.10"),
        ("ratio.cgi_sha_on_vs_cat", get(f"cgi.sha_on.{label}.wall") / cat, "<= 1.25"),
        ("ratio.cgi_sha_off_vs_dd_1m", get(f"cgi.sha_off.{label}.wall") / get(f"limit.dd_1m_file_to_file.{label}.wall"),
         "(the same 1 MiB writes)"),
        ("ratio.dd_1m_vs_dd_256k", get(f"limit.dd_1m_file_to_file.{label}.wall")
         / get(f"limit.dd_256k_file_to_file.{label}.wall"), "(what 1 MiB writes cost here)"),
        *floor_ratios()[:2],
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
        *floor_ratios()[2:],
        ("ratio.nginx_fastcgi_upload_vs_discard_floor",
         get(f"nginx.fastcgi_upload.{label}.wall") / get(f"nginx.fcgiwrap_discard_floor.{label}.wall"), "(lower is better)"),
    ]
    ratios += start_ratios + checksum_ratios
    reported_at_end = reported_kib()
    if reported_at_start is not None and reported_at_end is not None:
        figure("machine.memory_handed_back", (reported_at_end - reported_at_start) / (1 << 20),
               "GiB (free page reporting to the host during the run: each GiB of it is faulted back in by a later "
               "run, the main source of the spread between rounds; see `reported_kib`)")
    for name, value, _ in ratios:
        figure(name, value, "x")
    write_markdown(ratios, args.quick, label)


def write_markdown(ratios, quick, label):
    # The full run leaves out the multi-host scenario (root, FUSE, its own
    # command): the rows of its last run, and the note saying when that
    # was, are kept rather than lost.
    path = ROOT / "bench" / "results.md"
    before = path.read_text().split("\n") if path.exists() else []
    kept_note = [l for l in before if l.startswith("Multi-host (`multihost.*`) rows:")]
    ran = {name for name, _, _ in results}
    kept_rows = [l for l in before if l.startswith("| `multihost.") and l.split("`")[1] not in ran]
    lines = [
        f"Last run: {time.strftime('%Y-%m-%d')}, `bench/run{' --quick' if quick else ''}` on "
        f"{os.cpu_count()} cores ({platform_cpu()}). Medians; ratios from the same run.",
        *kept_note,
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for name, value, unit in results:
        if name.startswith("ratio."):
            continue
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| `{name}` | {shown} {unit} |")
    lines += kept_rows
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    for name, value, target in ratios:
        lines.append(f"| `{name}` | {value:.2f} x | {target} |")
    table = "\n".join(lines) + "\n"
    path.write_text("# Benchmark results\n\n" + table)
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
