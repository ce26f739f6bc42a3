#!/usr/bin/env python3
"""Runs the proxy comparison: residency-proxy vs nginx+geoip2 vs HAProxy.

Called by run.sh (which installs the tools and builds the binaries); it can
also be run directly once they exist. Standard library only.

Steps: generate the shared assets (ECDSA P-256 certificate, GeoIP CSV ->
mmdb and HAProxy map files, request bodies, wrk scripts), render the three
proxy configs from templates/, check parity (grep) and validate the configs,
move other threads off core 0 (Shield), start the sink on core 1, then for
every proxy (nginx first: its closed-loop capacity sets the open-loop rates
of scenario A) and scenario: start a fresh proxy pinned to core 0, check TLS
parameters and that a request is routed, warm up, measure, stop. Last, A's
open-loop points in --open-reps interleaved rounds over the proxies (see
open_loop_phase), and C in --c-reps interleaved rounds (c_rounds_phase).
Raw results: out/raw/<proxy>.<scenario>.json.
report.py turns them into results.json / results.md / chart.svg.
"""

import argparse
import hashlib
import json
import os
import random
import resource
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import http.client
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "out"
RUN = OUT / "run"      # rendered configs, certificate, mmdb, maps, logs
RAW = OUT / "raw"      # one JSON per (proxy, scenario)

PORTS = {"sink": 18080, "residency-proxy": 18443, "rp_admin": 18900,
         "nginx": 28443, "haproxy": 38443, "rp-default": 18443, "floor": 18446}
# rp-default: residency-proxy as configured by someone who never read the
# tuning paragraph (no [runtime] section); scenario A only, reported as
# rows of its own.
PROXIES = ["nginx", "haproxy", "residency-proxy", "rp-default"]
ONLY_A = {"rp-default"}
SCENARIOS = ["A", "B", "C", "D", "F"]
PROXY_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
BODY_LIMIT = 104857600
PATH = "/v1/telemetry"

BUILT_RP_BIN = Path(os.environ.get("RP_BIN", ROOT / "target/release/residency-proxy"))
# The run uses a copy taken at the start, so a rebuild in the shared target
# directory during the run cannot swap the binary between scenarios.
RP_BIN = RUN / "residency-proxy"
SINK_BIN = Path(os.environ.get("SINK_BIN", ROOT / "target/compare-sink/release/compare-sink"))
# instructions.py --proxies floor: the least a proxy on residency-proxy's
# HTTP and TLS stack costs (floor/; built by run.sh).
FLOOR_BIN = Path(os.environ.get("FLOOR_BIN", ROOT / "target/compare-floor/release/compare-floor"))
OHA = os.environ.get("OHA", shutil.which("oha") or str(Path.home() / ".cargo/bin/oha"))
# Access log off for residency-proxy: its per-request line is the
# `residency_proxy::access` target at info; everything else stays at info.
RP_LOG_FILTER = "info,residency_proxy::access=off"


LOG_FILE = OUT / "bench.log"


def log(msg):
    line = f"[bench {time.strftime('%H:%M:%S')}] {msg}"
    # The log file is written directly, so it survives a closed stdout.
    try:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass
    try:
        print(line, flush=True)
    except (BrokenPipeError, OSError):
        pass


def die(msg):
    log(f"FATAL: {msg}")
    sys.exit(3)


def run(cmd, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}")
    return r


# ------------------------------------------------------------ /proc helpers --

def children_of(pid):
    """Direct and indirect children of pid (by scanning /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        parent.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parent.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def proc_tree(pid):
    return [pid] + children_of(pid)


def cpu_split(pids):
    """(utime, stime) in seconds (all threads, incl. exited ones) summed over pids."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        user += int(fields[11])    # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids):
    """utime+stime (all threads, incl. exited ones) summed over pids."""
    return sum(cpu_split(pids))


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def threads(pids):
    return status_kib(pids, "Threads")


def core_times():
    """{cpu index: (busy_ticks, total_ticks, steal_ticks)} from /proc/stat.
    Busy includes steal: time the hypervisor gave the vCPU to someone else."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = list(map(int, m.group(2).split()))
                idle = v[3] + v[4]
                out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]), v[7])
    return out


class Window:
    """CPU accounting around one measurement."""

    def __init__(self, proxy_pids, sink_pid=None):
        self.proxy_pids = proxy_pids
        self.sink_pids = [sink_pid] if sink_pid else []

    @staticmethod
    def children_cpu():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def __enter__(self):
        self.t0 = time.monotonic()
        self.gen0 = self.children_cpu()
        self.sink0 = cpu_seconds(self.sink_pids)
        self.split0 = cpu_split(self.proxy_pids)
        self.cores0 = core_times()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        split = cpu_split(self.proxy_pids)
        self.user = split[0] - self.split0[0]
        self.system = split[1] - self.split0[1]
        self.cpu = self.user + self.system
        self.sink_cpu = cpu_seconds(self.sink_pids) - self.sink0
        # CPU of the load generator: children of this harness that exited
        # (and were waited for) during the window.
        self.gen_cpu = self.children_cpu() - self.gen0
        c1 = core_times()
        self.core_util, self.core_steal = {}, {}
        for k, (b, t, st) in c1.items():
            b0, t0, st0 = self.cores0.get(k, (0, 0, 0))
            self.core_util[k] = round((b - b0) / max(1, t - t0), 3)
            self.core_steal[k] = round((st - st0) / max(1, t - t0), 3)
        return False

    def fields(self):
        proxy_util = self.cpu / max(1e-9, self.wall)
        client_util = (self.sink_cpu + self.gen_cpu) / max(1e-9, self.wall)
        return {
            "wall_s": round(self.wall, 3),
            "proxy_cpu_s": round(self.cpu, 3),
            "proxy_user_s": round(self.user, 3),
            "proxy_sys_s": round(self.system, 3),
            "proxy_core_util": round(proxy_util, 3),
            "sink_cpu_s": round(self.sink_cpu, 3),
            "gen_cpu_s": round(self.gen_cpu, 3),
            "client_core_util": round(client_util, 3),
            # share of each core's time the hypervisor ran something else
            # (included in the util and *_other figures)
            "core0_steal": self.core_steal.get(0),
            "core1_steal": self.core_steal.get(1),
            "core0_util": self.core_util.get(0),
            "core1_util": self.core_util.get(1),
            # core 0 busy time not spent in the proxy: other processes (e.g. a
            # concurrent build) interfering with the measurement.
            "core0_other": round(max(0.0, (self.core_util.get(0) or 0) - proxy_util), 3),
            # the same for core 1 (load generator + sink; the harness itself
            # mostly sleeps meanwhile)
            "core1_other": round(max(0.0, (self.core_util.get(1) or 0) - client_util), 3),
        }


# ----------------------------------------------------------------- assets --

COUNTRIES = ["DE", "FR", "US", "GB", "NL", "IT", "ES", "SE", "PL", "BR", "JP", "CN", "IN",
             "CA", "AU", "RU", "KR", "MX", "AT", "BE", "DK", "FI", "IE", "NO", "PT", "CZ",
             "RO", "HU", "GR", "TR", "ZA", "AR", "CL", "CO", "SG", "HK", "TW", "ID", "TH",
             "VN", "UA", "IL", "AE", "SA", "EG", "NG", "KE", "NZ", "CH", "LI"]


def write_csv(path):
    """A deterministic synthetic country table (~55k IPv4 /16s, ~14k /24
    exceptions, some IPv6), with 127.0.0.0/8 -> CH so loopback clients route.
    Big enough that lookups walk a realistic tree depth."""
    rnd = random.Random(5)
    rows = ["network,country", "127.0.0.0/8,CH"]
    for a in range(1, 224):
        if a in (10, 127):
            continue
        for b in range(256):
            rows.append(f"{a}.{b}.0.0/16,{rnd.choice(COUNTRIES)}")
            if rnd.random() < 0.25:
                rows.append(f"{a}.{b}.{rnd.randrange(256)}.0/24,{rnd.choice(COUNTRIES)}")
    for i in range(4096):
        rows.append(f"2a{i >> 8:02x}:{i & 0xff:02x}00::/24,{rnd.choice(COUNTRIES)}")
    # dedupe (a random /24 may repeat) keeping the first
    seen, out = set(), []
    for r in rows:
        key = r.split(",")[0]
        if key not in seen:
            seen.add(key)
            out.append(r)
    path.write_text("\n".join(out) + "\n")
    return len(out) - 1


def csv_to_haproxy_map(csv_path, map_path):
    lines = []
    for line in csv_path.read_text().splitlines()[1:]:
        net, cc = line.split(",")
        lines.append(f"{net} {cc}")
    map_path.write_text("\n".join(lines) + "\n")


def render(template, dest, values):
    text = (HERE / "templates" / template).read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        die(f"{template}: unfilled placeholders {left}")
    dest.write_text(text)


def wrk_script(path, body_bytes):
    path.write_text(f"""-- generated by bench.py: POST {body_bytes} bytes, JSON summary at the end
wrk.method = "POST"
wrk.path = "{PATH}"
wrk.body = string.rep("x", {body_bytes})
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Host"] = "localhost"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
""")


def prepare(args):
    for d in (RUN, RAW, RUN / "nginx-tmp"):
        d.mkdir(parents=True, exist_ok=True)
    for f in RAW.glob("*.json"):
        f.unlink()
    shutil.copy2(BUILT_RP_BIN, RP_BIN)
    # One ECDSA P-256 certificate for all three.
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", RUN / "key.pem", "-out", RUN / "cert.pem", "-days", "30",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    (RUN / "bundle.pem").write_text((RUN / "cert.pem").read_text() + (RUN / "key.pem").read_text())
    # One CSV -> the mmdb (residency-proxy, nginx) and the map file (HAProxy).
    n = write_csv(RUN / "bench.csv")
    r = run([RP_BIN, "geoip", "build", "--csv", RUN / "bench.csv", "--out", RUN / "bench.mmdb",
             "--build-epoch", str(int(time.time()))])
    log(f"GeoIP: {n} networks -> bench.mmdb ({(r.stdout + r.stderr).strip()})")
    csv_to_haproxy_map(RUN / "bench.csv", RUN / "country.map")
    (RUN / "jurisdiction.map").write_text("CH ch\nLI ch\n")
    (RUN / "datacenter.map").write_text("ch zurich\n")
    (RUN / "body_1k.bin").write_bytes(b"x" * 1024)
    (RUN / "body_1m.bin").write_bytes(b"x" * 1048576)
    wrk_script(RUN / "post_1k.lua", 1024)
    wrk_script(RUN / "post_1m.lua", 1048576)
    values = {"RUN": RUN, "SINK_PORT": PORTS["sink"], "RP_PORT": PORTS["residency-proxy"],
              "RP_ADMIN_PORT": PORTS["rp_admin"], "NGINX_PORT": PORTS["nginx"],
              "HAPROXY_PORT": PORTS["haproxy"]}
    render("residency.toml", RUN / "residency.toml", values)
    # The same without the [runtime] section: the default runtime.
    text = (RUN / "residency.toml").read_text()
    default = re.sub(r"^\[runtime\]\nworker_threads = 1\n", "", text, flags=re.M)
    if default == text:
        die("templates/residency.toml: no `[runtime]\\nworker_threads = 1` to leave out for rp-default")
    (RUN / "residency-default.toml").write_text(default)
    render("nginx.conf", RUN / "nginx.conf", values)
    render("haproxy.cfg", RUN / "haproxy.cfg", values)
    for proxy in PROXIES:
        (RUN / f"{proxy}.cmd").write_text(" ".join(map(str, proxy_cmd(proxy))) + "\n")


def proxy_cmd(proxy):
    pin = ["taskset", "-c", PROXY_CORE]
    if proxy == "nginx":
        return pin + ["nginx", "-e", RUN / "nginx-error.log", "-p", RUN, "-c", RUN / "nginx.conf"]
    if proxy == "haproxy":
        return pin + ["haproxy", "-db", "-f", RUN / "haproxy.cfg"]
    if proxy == "floor":
        return pin + [FLOOR_BIN, f"127.0.0.1:{PORTS['floor']}", f"127.0.0.1:{PORTS['sink']}",
                      RUN / "cert.pem", RUN / "key.pem"]
    config = "residency-default.toml" if proxy == "rp-default" else "residency.toml"
    return pin + [RP_BIN, "--log-level", RP_LOG_FILTER, "serve", "--config", RUN / config]


# ----------------------------------------------------------------- parity --

PARITY = {
    "nginx.conf": [
        ("one worker", r"^\s*worker_processes 1;"),
        ("access log off", r"^\s*access_log off;"),
        ("upstream keepalive 64", r"^\s*keepalive 64;"),
        ("upstream HTTP/1.1", r"^\s*proxy_http_version 1\.1;"),
        ("upstream Connection cleared", r'^\s*proxy_set_header Connection "";'),
        ("request buffering off", r"^\s*proxy_request_buffering off;"),
        ("body limit 100 MiB", rf"^\s*client_max_body_size {BODY_LIMIT};"),
        ("client keep-alive 120s", r"^\s*keepalive_timeout 120s;"),
        ("TLS 1.2+1.3", r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;"),
        ("TLS 1.3 suites", r"Ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256;"),
        ("curves", r"^\s*ssl_ecdh_curve X25519:prime256v1:secp384r1;"),
        ("session tickets on", r"^\s*ssl_session_tickets on;"),
        ("client cipher order (as rustls)", r"^\s*ssl_prefer_server_ciphers off;"),
        ("ALPN h2+http/1.1", r"^\s*listen \S+ ssl http2"),
        ("geoip2 on the shared mmdb", r"^\s*geoip2 \S+/bench\.mmdb"),
    ],
    "haproxy.cfg": [
        ("one thread", r"^\s*nbthread 1$"),
        ("no logging", None),  # checked below: no `log` directive at all
        ("upstream connection reuse", r"^\s*http-reuse always$"),
        ("upstream idle pool 64", r"pool-max-conn 64"),
        ("request buffering off", None),  # checked below: no http-buffer-request
        ("body limit 100 MiB", rf"req\.hdr\(content-length\) -m int gt {BODY_LIMIT}"),
        ("client keep-alive 120s", r"^\s*timeout http-keep-alive 120s$"),
        ("TLS 1.2+1.3", r"ssl-min-ver TLSv1\.2"),
        ("TLS 1.3 suites", r"ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256$"),
        ("curves", r"curves X25519:P-256:P-384"),
        ("ALPN h2+http/1.1", r"alpn h2,http/1\.1"),
        ("client cipher order (as nginx, rustls)", r"prefer-client-ciphers"),
        ("country map from the shared CSV", r"src,map_ip\(\S+/country\.map\)"),
    ],
    "residency.toml": [
        ("upstream idle pool 64", r"^pool_max_idle_per_host = 64"),
        ("body limit 100 MiB", rf"^max_body_bytes = {BODY_LIMIT}"),
        ("client keep-alive 120s", r'^keepalive_idle = "120s"'),
        ("request head 10s (as nginx client_header_timeout)", r'^request_head = "10s"'),
        ("connections >= 10000", r"^max_connections = [1-9]\d{4,}"),
        ("shared mmdb", r'^database = "bench\.mmdb"'),
        ("one worker thread", r"^worker_threads = 1$"),
    ],
    "residency-proxy.cmd": [
        ("access log off", r"residency_proxy::access=off"),
        ("pinned to core 0", rf"taskset -c {PROXY_CORE} "),
    ],
    "rp-default.cmd": [
        ("access log off", r"residency_proxy::access=off"),
        ("pinned to core 0", rf"taskset -c {PROXY_CORE} "),
        ("the default runtime's config", r"residency-default\.toml"),
    ],
    "nginx.cmd": [("pinned to core 0", rf"taskset -c {PROXY_CORE} ")],
    "haproxy.cmd": [("pinned to core 0", rf"taskset -c {PROXY_CORE} ")],
}


def parity_check():
    failures, report = [], []
    for fname, checks in PARITY.items():
        text = (RUN / fname).read_text()
        for what, pattern in checks:
            if pattern is None:
                continue
            ok = re.search(pattern, text, re.M) is not None
            report.append((fname, what, ok))
            if not ok:
                failures.append(f"{fname}: {what}: /{pattern}/ not found")
    hap = (RUN / "haproxy.cfg").read_text()
    for what, bad in (("no logging", r"^\s*log\s"), ("request buffering off", r"http-buffer-request")):
        ok = not any(re.search(bad, l) for l in hap.splitlines() if not l.strip().startswith("#"))
        report.append(("haproxy.cfg", what, ok))
        if not ok:
            failures.append(f"haproxy.cfg: {what}: /{bad}/ present")
    for fname, what, ok in report:
        log(f"parity {'ok  ' if ok else 'FAIL'} {fname}: {what}")
    if failures:
        die("parity check failed:\n  " + "\n  ".join(failures))
    # The configs must also be valid for the programs themselves.
    run(["nginx", "-t", "-e", RUN / "nginx-error.log", "-p", RUN, "-c", RUN / "nginx.conf"])
    run(["haproxy", "-c", "-f", RUN / "haproxy.cfg"])
    r = run([RP_BIN, "check-config", "--config", RUN / "residency.toml"])
    if "configuration OK" not in r.stdout:
        die(f"residency-proxy check-config: {r.stdout}{r.stderr}")
    log("parity check passed; nginx -t, haproxy -c and residency-proxy check-config OK")


# ------------------------------------------------------------- processes --

def wait_port(port, timeout=20, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def port_free(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            time.sleep(0.2)
        finally:
            s.close()
    return False


class Proxy:
    def __init__(self, name):
        self.name = name
        self.port = PORTS[name]
        self.proc = None
        self.logf = None

    def start(self):
        if not port_free(self.port):
            die(f"port {self.port} for {self.name} is busy")
        self.logf = open(RUN / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([str(c) for c in proxy_cmd(self.name)],
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not wait_port(self.port, 20, self.proc):
            self.stop()
            die(f"{self.name} did not start; see {RUN / (self.name + '.log')}")
        # For `env ... taskset ... prog`, exec keeps the same pid.
        time.sleep(0.3)
        return self

    def pids(self):
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc is None:
            return
        tree = self.pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in tree[1:]:  # e.g. an nginx worker left behind: by pid, never by name
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logf.close()
        self.proc = None


class Sink:
    def __init__(self):
        self.proc = None
        self.logf = None

    def start(self):
        if not port_free(PORTS["sink"]):
            die(f"sink port {PORTS['sink']} busy")
        self.logf = open(RUN / "sink.log", "ab")
        self.proc = subprocess.Popen(["taskset", "-c", CLIENT_CORE, str(SINK_BIN),
                                      f"127.0.0.1:{PORTS['sink']}"],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if not wait_port(PORTS["sink"], 10, self.proc):
            die("sink did not start")

    def stats(self):
        c = http.client.HTTPConnection("127.0.0.1", PORTS["sink"], timeout=5)
        c.request("GET", "/stats")
        s = json.loads(c.getresponse().read())
        c.close()
        return s

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.logf:
            self.logf.close()


# ------------------------------------------------------------------ checks --

def routed_request(port):
    """One HTTPS POST; returns (status, headers dict lower-case)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    c.request("POST", PATH, body=b"x" * 1024, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def tls_params(port):
    """What a TLS 1.3-capable OpenSSL client negotiates, and tickets received;
    plus what a TLS 1.2-only client gets."""
    out = {}
    for label, extra in (("tls13", []), ("tls12", ["-tls1_2"])):
        p = subprocess.run(
            f"sleep 1 | timeout 10 openssl s_client -connect 127.0.0.1:{port} "
            f"-servername localhost -alpn h2,http/1.1 {' '.join(extra)} 2>&1",
            shell=True, capture_output=True, text=True, errors="replace")
        t = p.stdout
        g = lambda rx: (re.search(rx, t, re.M).group(1).strip() if re.search(rx, t, re.M) else None)  # noqa: E731
        out[label] = {
            "protocol": g(r"^\s*Protocol\s*:\s*(\S+)") or g(r"^New, (TLSv[\d.]+)"),
            "cipher": g(r"^New, TLSv[\d.]+, Cipher is (\S+)"),
            "group": g(r"^(?:Server|Peer) Temp Key: ([^,\n]+)"),
            "alpn": g(r"^ALPN protocol: (\S+)"),
            "peer_sig": g(r"^Peer signature type: (\S+)"),
            "tickets": len(re.findall(r"Post-Handshake New Session Ticket arrived", t))
                       if label == "tls13" else None,
        }
    return out


# -------------------------------------------------------------- generators --

def gen(cmd, timeout):
    """Runs a load generator pinned to the client core; returns stdout."""
    full = ["taskset", "-c", CLIENT_CORE] + [str(c) for c in cmd]
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        log(f"WARNING: {' '.join(full)} exited {r.returncode}: {r.stderr.strip()[:500]}")
    return r.stdout + r.stderr


def wrk(port, script, conns, duration, timeout_s=10):
    out = gen(["wrk", "-t", "1", "-c", conns, "-d", f"{duration}s", "--timeout", f"{timeout_s}s",
               "-s", script, f"https://127.0.0.1:{port}{PATH}"], timeout=duration + 60)
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        log(f"WARNING: no wrk summary:\n{out[-2000:]}")
        return {"tool": "wrk", "ok": 0, "errors": 1, "raw": out[-2000:]}
    j = json.loads(m.group(1))
    errors = j["err_connect"] + j["err_read"] + j["err_write"] + j["err_timeout"]
    return {"tool": "wrk", "requests": j["requests"],
            "ok": j["requests"] - j["err_status"], "non2xx": j["err_status"],
            "errors": errors, "rps": j["requests"] / (j["duration_us"] / 1e6),
            "p50_ms": j["p50_us"] / 1000, "p90_ms": j["p90_us"] / 1000,
            "p99_ms": j["p99_us"] / 1000, "max_ms": j["max_us"] / 1000,
            "gen_duration_s": j["duration_us"] / 1e6, "wrk": j}


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def oha_rate(port, rate, conns, duration, skip):
    """Open loop at `rate` req/s for skip+duration s; latency is measured from
    each request's scheduled time (--latency-correction). The first `skip`
    seconds (the client's own TLS connection setup, which queues the first
    scheduled requests) are dropped from the percentiles: oha's CSV output
    gives every request's start and corrected duration. Requests still in
    flight at the end are awaited (-w)."""
    total = duration + skip
    out = gen([OHA, "--no-tui", "--output-format", "csv", "--insecure", "-z", f"{total}s", "-w",
               "-c", conns, "-q", rate, "--latency-correction", "-m", "POST",
               "-D", RUN / "body_1k.bin", "-T", "application/octet-stream", "-t", "10s",
               f"https://127.0.0.1:{port}{PATH}"], timeout=total + 60)
    rows, statuses = [], {}
    for line in out.splitlines():
        f = line.split(",")
        if len(f) != 7 or not f[0][:1].isdigit():
            continue
        start, dur, status = float(f[0]), float(f[4]), f[6]
        statuses[status] = statuses.get(status, 0) + 1
        if start >= skip:
            rows.append((dur, status))
    responses = sum(statuses.values())
    expected = int(rate * total)
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    lat = sorted(d * 1000 for d, _ in rows)
    # oha's CSV lists answered requests only: the rest of the schedule was
    # not sent in time (the proxy or the client could not keep up) or failed.
    # A few requests of slack for the schedule's edges.
    unsent = max(0, expected - responses - 3 - expected // 2000)
    return {"tool": "oha", "requests": responses, "ok": ok, "non2xx": responses - ok,
            "errors": 0, "unsent": unsent, "statuses": statuses, "expected": expected,
            "rps": responses / total, "target_rps": rate, "skipped_s": skip,
            "latency_samples": len(lat),
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99), "p999_ms": percentile(lat, 99.9),
            "max_ms": lat[-1] if lat else None, "gen_duration_s": total}


def h2load(args_list, timeout):
    out = gen(["h2load"] + args_list, timeout=timeout)
    g = lambda rx: re.search(rx, out)  # noqa: E731
    m = g(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
          r"(\d+) errored, (\d+) timeout")
    s = g(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    f = g(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
    t = g(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
    c = g(r"time for connect:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
    tls = {k: (g(rx).group(1) if g(rx) else None) for k, rx in (
        ("protocol", r"TLS Protocol: (\S+)"), ("cipher", r"Cipher: (\S+)"),
        ("group", r"Server Temp Key: ([^,\n]+)"), ("alpn", r"Application protocol: (\S+)"))}
    if not (m and s and f):
        log(f"WARNING: unparsable h2load output:\n{out[-2000:]}")
        return {"tool": "h2load", "ok": 0, "errors": 1, "raw": out[-2000:]}
    total, started, done, succ, failed, errored, tmo = map(int, m.groups())
    s2, s3, s4, s5 = map(int, s.groups())
    secs = float(f.group(1)) / (1000 if f.group(2) == "ms" else 1)

    def ms(v):
        v = v.strip()
        for suf, mul in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
            if v.endswith(suf):
                return float(v[:-len(suf)]) * mul
        return None
    return {"tool": "h2load", "requests": done, "ok": s2, "non2xx": s3 + s4 + s5,
            "errors": failed + errored + tmo + (total - done), "rps": float(f.group(3)),
            "gen_duration_s": secs,
            "req_mean_ms": ms(t.group(3)) if t else None, "req_max_ms": ms(t.group(2)) if t else None,
            "connect_mean_ms": ms(c.group(3)) if c else None, "tls": tls,
            "raw_tail": out[-1500:]}


# -------------------------------------------------------------- scenarios --

def sink_delta(sink, before):
    after = sink.stats()
    return {"sink_requests": after["requests"] - before["requests"],
            "sink_bytes": after["bytes"] - before["bytes"],
            "sink_body_errors": after["body_errors"] - before["body_errors"]}


QUIET = {"budget_s": 180.0, "waited_s": 0.0, "retries": 1}
NOISE_LIMIT = 0.10  # a point is disturbed when another process used >10% of a core


class Shield:
    """Keeps other threads off the proxy core for the run, as `cset shield`
    does: every thread that may run there and may be moved gets the other
    cores only, and its own affinity back at the end. Per-CPU kernel threads
    cannot be moved and stay. On the reference VM this matters for the
    open-loop tails: the sandbox agent (nice -10) wakes once a second and can
    hold a core for 10-45 ms, and DAMON's kdamond scans twice a second for
    2-7 ms; landing on the proxy core, either delays every request in flight,
    whichever proxy is being measured (see README.md, "Latency noise")."""

    def __init__(self, core):
        self.core = core
        self.saved = {}
        self.unmovable = 0

    @staticmethod
    def threads():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    yield from (int(t) for t in os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    continue  # exited meanwhile

    def __enter__(self):
        me = os.getpid()
        for tid in self.threads():
            if tid == me:
                continue
            try:
                cpus = os.sched_getaffinity(tid)
                if self.core not in cpus:
                    continue
                rest = cpus - {self.core}
                if not rest:
                    self.unmovable += 1
                    continue
                os.sched_setaffinity(tid, rest)
                self.saved[tid] = cpus
            except OSError:  # per-CPU kernel thread, exited, or not ours to move
                self.unmovable += 1
        log(f"shield: {len(self.saved)} threads moved off core {self.core}, "
            f"{self.unmovable} could not be moved")
        return self

    def __exit__(self, *exc):
        for tid, cpus in self.saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass  # exited meanwhile
        return False

    def summary(self):
        return {"core": self.core, "threads_moved": len(self.saved),
                "threads_unmovable": self.unmovable}


def wait_quiet(max_wait=30.0, threshold=0.15):
    """Before a measurement: wait (bounded, and within a run-wide budget) until
    neither core is busier than `threshold` with anything else — the proxy and
    the sink are idle between points, so what is busy is someone else (e.g. a
    build in the shared tree). Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        a = core_times()
        time.sleep(0.5)
        b = core_times()
        util = max((b[k][0] - a[k][0]) / max(1, b[k][1] - a[k][1]) for k in b)
        waited = time.monotonic() - t0
        if util < threshold:
            break
        if waited > max_wait or QUIET["waited_s"] + waited > QUIET["budget_s"]:
            log(f"WARNING: machine still busy ({util:.0%} on a core) after {waited:.0f} s; measuring anyway")
            break
    QUIET["waited_s"] += waited
    if waited > 1:
        log(f"waited {waited:.0f} s for other load to finish")
    return round(waited, 1)


def measure(proxy, sink, fn, retries=None):
    """Runs fn (one load-generator run) inside a CPU-accounting window. A run
    disturbed by other load on the proxy core is measured once more."""
    best = None
    retries = QUIET["retries"] if retries is None else retries
    for attempt in range(retries + 1):
        waited = wait_quiet()
        before = sink.stats()
        with Window(proxy.pids(), sink.proc.pid) as w:
            res = fn()
        res.update(w.fields())
        res.update(sink_delta(sink, before))
        res["proxy_threads"] = threads(proxy.pids())
        res["proxy_processes"] = len(proxy.pids())
        res["waited_quiet_s"] = waited
        res["attempt"] = attempt + 1
        res["noise"] = max(res.get("core0_other") or 0, res.get("core1_other") or 0)
        if best is None or res["noise"] < best["noise"]:
            best = res
        if res["noise"] <= NOISE_LIMIT:
            break
        if attempt < retries:
            log(f"  disturbed (core 0 {res['core0_other']:.0%}, core 1 {res['core1_other']:.0%} busy "
                f"with other processes): measuring again")
    return best  # the least disturbed attempt


def scenario_A(proxy, sink, args, ctx):
    port, D = proxy.port, args.duration
    script = RUN / "post_1k.lua"
    wrk(port, script, args.conns, args.warmup)
    points = []
    r = measure(proxy, sink, lambda: wrk(port, script, args.conns, D))
    r["point"] = "closed"
    points.append(r)
    if proxy.name == "nginx" and not args.nginx_capacity:
        ctx["nginx_capacity_rps"] = r["rps"]
    return {"points": points}


def cpu_per_req_us(p):
    return p["proxy_cpu_s"] / p["requests"] * 1e6 if p.get("requests") else float("inf")


def open_loop_phase(proxies, sink, args, ctx, results):
    """A's rounds, run after every proxy's closed-loop maximum is known (it
    sets the open-loop rates): --open-reps rounds, each starting every proxy
    afresh in turn and running a closed-loop point and the 25/50/75 %
    open-loop points. Interleaving the rounds spreads slow drifts of the host
    (steal time, other tenants) over all proxies instead of handing them to
    whichever is measured last. The closed point reports the round with the
    median CPU per request (the first closed-loop run stays as `capacity`),
    each open point the round with the median p99; every round's values are
    kept."""
    cap = args.nginx_capacity or ctx.get("nginx_capacity_rps")
    if not cap:
        log("WARNING: nginx capacity unknown (nginx not measured?); open-loop points skipped")
        return
    runs = {(name, pct): [] for name in proxies for pct in (25, 50, 75)}
    closed = {name: [] for name in proxies}
    for rnd in range(args.open_reps):
        for name in proxies:
            proxy = Proxy(name).start()
            try:
                log(f"{name}: scenario A rounds, {rnd + 1}/{args.open_reps}")
                script = RUN / "post_1k.lua"
                wrk(proxy.port, script, args.conns, args.warmup)
                r = measure(proxy, sink, lambda: wrk(proxy.port, script, args.conns, args.duration))
                r["round"] = rnd + 1
                closed[name].append(r)
                log(f"  closed round {rnd + 1}: rps={r.get('rps', 0):.0f} "
                    f"cpu/req={cpu_per_req_us(r):.1f} us core0_other={r.get('core0_other')}")
                for pct in (25, 50, 75):
                    rate = max(1, int(cap * pct / 100))
                    r = measure(proxy, sink, lambda: oha_rate(
                        proxy.port, rate, args.conns, args.duration, args.open_skip))
                    r["round"] = rnd + 1
                    runs[(name, pct)].append(r)
                    log(f"  open{pct} round {rnd + 1}: p50={r['p50_ms']} p99={r['p99_ms']} ms "
                        f"rps={r.get('rps', 0):.0f} core0_other={r.get('core0_other')} "
                        f"steal={r.get('core0_steal')}/{r.get('core1_steal')}")
            finally:
                proxy.stop()
    for name in proxies:
        if closed[name]:
            for p in results[name]["points"]:
                if p["point"] == "closed":
                    p["point"] = "capacity"
            reps = sorted(closed[name], key=cpu_per_req_us)
            r = dict(reps[len(reps) // 2])
            r["cpu_reps_us"] = [round(cpu_per_req_us(x), 2) for x in reps]
            r["point"] = "closed"
            results[name]["points"].append(r)
        for pct in (25, 50, 75):
            reps = sorted(runs[(name, pct)], key=lambda x: x["p99_ms"] if x["p99_ms"] is not None
                          else float("inf"))
            r = dict(reps[len(reps) // 2])
            r["p99_reps_ms"] = [x["p99_ms"] for x in reps]
            r["p50_reps_ms"] = [x["p50_ms"] for x in reps]
            r["point"] = f"open{pct}"
            r["pct_of_nginx"] = pct
            results[name]["points"].append(r)
        results[name]["nginx_capacity_rps"] = cap
        (RAW / f"{name}.A.json").write_text(json.dumps(results[name], indent=1))


def assert_routed(name, port):
    """Stops the run unless a loopback upload gets 201 and
    `residency-jurisdiction: ch`; returns what the routing check saw."""
    status, headers = routed_request(port)
    if status != 201 or headers.get("residency-jurisdiction") != "ch":
        die(f"{name}: a loopback upload was not routed: {status} {headers}")
    return {"status": status,
            "residency-jurisdiction": headers.get("residency-jurisdiction"),
            "residency-datacenter": headers.get("residency-datacenter")}


def mib_per_cpu_s(p):
    return p.get("bytes", 0) / 1048576 / p["proxy_cpu_s"] if p.get("proxy_cpu_s") else 0.0


def c_rounds_phase(proxies, sink, args):
    """C in --c-reps interleaved rounds, run after everything else: each
    round starts every proxy afresh in turn (routed check, then
    scenario_C's warm-up and point). C's two figures move between runs of
    the same binary (MiB per CPU-second by up to 1.5x, peak RSS per upload
    between ~60 and ~126 KiB for residency-proxy), so one run decides
    nothing. The C point reported is the round with the median MiB per
    CPU-second, with `peak_rss_per_upload_kib` replaced by the median over
    the rounds (the two medians are taken separately) and `errors` /
    `non2xx` summed over the rounds, so that a failed request in any round
    flags the point; every round's values are kept (`mib_per_cpu_s_reps`,
    `rss_per_upload_reps_kib`, and the rounds themselves in `rounds`)."""
    rounds = {name: [] for name in proxies}
    for rnd in range(args.c_reps):
        for name in proxies:
            proxy = Proxy(name).start()
            try:
                assert_routed(name, proxy.port)
                log(f"{name}: scenario C round {rnd + 1}/{args.c_reps}")
                r = scenario_C(proxy, sink, args, {})["points"][0]
                r["round"] = rnd + 1
                rounds[name].append(r)
                log(f"  round {rnd + 1}: ok={r.get('ok')} err={r.get('errors')} "
                    f"MiB/CPU-s={mib_per_cpu_s(r):.0f} rss/upload={r['peak_rss_per_upload_kib']:.1f} KiB "
                    f"core1={r.get('core1_util')} core0_other={r.get('core0_other')}")
            finally:
                proxy.stop()
    for name, reps in rounds.items():
        by_rate = sorted(reps, key=mib_per_cpu_s)
        rss = sorted(x["peak_rss_per_upload_kib"] for x in reps)
        r = dict(by_rate[len(by_rate) // 2])
        r["rounds"] = reps
        r["mib_per_cpu_s_reps"] = [round(mib_per_cpu_s(x), 1) for x in by_rate]
        r["rss_per_upload_reps_kib"] = [round(x, 2) for x in rss]
        r["peak_rss_per_upload_kib"] = statistics.median(rss)
        r["errors"] = sum(x.get("errors") or 0 for x in reps)
        r["non2xx"] = sum(x.get("non2xx") or 0 for x in reps)
        res = {"points": [r], "proxy": name, "scenario": "C", "c_reps": args.c_reps}
        (RAW / f"{name}.C.json").write_text(json.dumps(res, indent=1))


def scenario_B(proxy, sink, args, ctx):
    # New TLS connection per request: h2load in rate mode makes -c connections
    # in total, -r per --rate-period, each doing -n/-c = 1 request. h2load
    # (OpenSSL) never offers a session for resumption: every handshake is full.
    per_period = max(1, args.b_rate // 10)
    total = per_period * 10 * args.duration
    base = ["--h1", "-t", "1", "-d", RUN / "body_1k.bin",
            "-H", "content-type: application/octet-stream", "-T", "10s"]
    url = f"https://127.0.0.1:{proxy.port}{PATH}"
    h2load(base + ["-n", 200, "-c", 200, "-r", per_period, "--rate-period", "100ms", url], 60)
    r = measure(proxy, sink, lambda: h2load(
        base + ["-n", total, "-c", total, "-r", per_period, "--rate-period", "100ms", url],
        args.duration * 4 + 60))
    r["point"] = "new-conn"
    r["target_conn_per_s"] = per_period * 10
    return {"points": [r]}


def scenario_C(proxy, sink, args, ctx):
    port, D = proxy.port, args.duration
    base_rss = status_kib(proxy.pids(), "VmRSS")
    script = RUN / "post_1m.lua"
    wrk(port, script, 64, args.warmup, timeout_s=30)
    r = measure(proxy, sink, lambda: wrk(port, script, 64, D, timeout_s=30))
    hwm = status_kib(proxy.pids(), "VmHWM")
    r.update({"point": "1MiB-x64", "rss_base_kib": base_rss, "vmhwm_kib": hwm,
              "peak_rss_per_upload_kib": (hwm - base_rss) / 64,
              "bytes": r.get("ok", 0) * 1048576})
    return {"points": [r]}


def scenario_D(proxy, sink, args, ctx):
    base = ["-t", "1", "-c", args.h2_conns, "-m", args.h2_streams, "-d", RUN / "body_1k.bin",
            "-H", "content-type: application/octet-stream"]
    url = f"https://127.0.0.1:{proxy.port}{PATH}"
    h2load(base + ["-D", args.warmup, url], args.warmup + 60)
    r = measure(proxy, sink, lambda: h2load(base + ["-D", args.duration, url], args.duration + 60))
    r["point"] = f"h2-c{args.h2_conns}-m{args.h2_streams}"
    return {"points": [r]}


def scenario_F(proxy, sink, args, ctx):
    pids = proxy.pids()
    waited = wait_quiet()  # also lets the fresh process settle after the routing check
    before = status_kib(pids, "VmRSS")
    cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, str(HERE / "idle_conns.py"),
           str(proxy.port), str(args.idle_conns)]
    window = Window(pids, sink.proc.pid).__enter__()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = None
    try:
        line = p.stdout.readline()   # bounded: the client has its own timeouts
        ready = json.loads(line) if line.strip() else {"event": "none"}
        time.sleep(2.0)              # idle: let the proxy settle
        after = status_kib(pids, "VmRSS")
        hwm = status_kib(pids, "VmHWM")
        conns_open = count_established(proxy.port)
        window.__exit__(None, None, None)
        p.stdin.write("stop\n")
        p.stdin.flush()
        done = json.loads(p.stdout.readline() or "{}")
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    opened = ready.get("opened", 0)
    return {"points": [{**window.fields(),
        "point": f"idle-{args.idle_conns}", "tool": "idle_conns.py",
        "requests": opened, "ok": ready.get("ok", 0), "non2xx": ready.get("failed", 0),
        "errors": args.idle_conns - ready.get("ok", 0), "client": ready, "client_done": done,
        "rss_before_kib": before, "rss_after_kib": after, "vmhwm_kib": hwm,
        "server_side_established": conns_open,
        "kib_per_idle_conn": (after - before) / max(1, opened),
        "proxy_threads": threads(pids), "proxy_processes": len(pids), "waited_quiet_s": waited,
    }]}


def count_established(port):
    """Established TCP connections whose local port is the proxy's (server side)."""
    n = 0
    hexport = f"{port:04X}"
    for fname in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fname) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(":" + hexport) and parts[3] == "01":
                        n += 1
        except OSError:
            pass
    return n


RUNNERS = {"A": scenario_A, "B": scenario_B, "C": scenario_C, "D": scenario_D, "F": scenario_F}


# -------------------------------------------------------------------- main --

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 10)),
                    help="seconds per measurement point (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before A, C, D")
    ap.add_argument("--conns", type=int, default=64, help="HTTP/1.1 connections in A")
    ap.add_argument("--open-skip", type=int, default=1,
                    help="seconds dropped from the start of each open-loop point (client connection setup)")
    ap.add_argument("--open-reps", type=int, default=3,
                    help="interleaved rounds of A's closed-loop and open-loop points; the round with the "
                         "median CPU per request (closed) or p99 (open) is reported (default 3)")
    ap.add_argument("--c-reps", type=int, default=5,
                    help="interleaved rounds of C, run last; its rows are the medians over the rounds "
                         "(default 5; 1 runs C once, in its place among the scenarios)")
    ap.add_argument("--no-shield", action="store_true",
                    help="leave other threads on the proxy core (by default they are moved off for the run)")
    ap.add_argument("--nginx-capacity", type=float, default=0,
                    help="req/s to take as nginx's capacity for A's open-loop rates instead of "
                         "measuring it in this run (e.g. from a quieter earlier run)")
    ap.add_argument("--b-rate", type=int, default=700,
                    help="new connections per second in B (h2load's OpenSSL 3.0 client saturates core 1 near 950/s)")
    ap.add_argument("--h2-conns", type=int, default=4)
    ap.add_argument("--h2-streams", type=int, default=32)
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--quiet-budget", type=float, default=180,
                    help="seconds the whole run may wait for other load to stop (default 180)")
    ap.add_argument("--retries", type=int, default=1,
                    help="extra attempts of a point disturbed by other load (default 1)")
    args = ap.parse_args()
    QUIET["budget_s"] = args.quiet_budget
    QUIET["retries"] = args.retries
    proxies = [p for p in PROXIES if p in args.proxies.split(",")]
    scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]

    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # the harness itself stays off the proxy core
    for tool in ("nginx", "haproxy", "wrk", "h2load", "openssl", "taskset"):
        if not shutil.which(tool):
            die(f"{tool} not found (run run.sh, which installs it)")
    for b in (BUILT_RP_BIN, SINK_BIN, Path(OHA)):
        if not Path(b).exists():
            die(f"{b} not found (run run.sh, which builds/installs it)")

    t_start = time.time()
    if not args.skip_prepare:
        prepare(args)
    parity_check()

    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args),
            "host": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                     "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                    if l.startswith("model name")), "?")},
            "versions": {
                "nginx": run(["nginx", "-v"]).stderr.strip(),
                "haproxy": run(["haproxy", "-v"]).stdout.splitlines()[0],
                "residency-proxy": run([RP_BIN, "--version"]).stdout.strip(),
                "wrk": (run(["wrk", "-v"], check=False).stdout + run(["wrk", "-v"], check=False).stderr).splitlines()[0],
                "h2load": run(["h2load", "--version"]).stdout.strip(),
                "oha": run([OHA, "--version"]).stdout.strip(),
                "openssl": run(["openssl", "version"]).stdout.strip()},
            "tls": {}, "routing": {},
            "residency_proxy_build": {
                "binary": str(BUILT_RP_BIN),
                "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(BUILT_RP_BIN.stat().st_mtime)),
                # What was measured, whatever git says (SKIP_BUILD=1 runs what is in target/).
                "binary_sha256": hashlib.sha256(RP_BIN.read_bytes()).hexdigest(),
                "git_head": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout.strip(),
                "uncommitted_changes_in_src": bool(run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], check=False).stdout.strip())}}

    shield = None if args.no_shield else Shield(int(PROXY_CORE))
    sink = Sink()
    ctx = {}
    a_results = {}
    try:
        # Inside the try: whatever stops the run gives the threads back.
        if shield:
            shield.__enter__()
            meta["shield"] = shield.summary()
        sink.start()
        for name in proxies:
            for sc in scenarios:
                if name in ONLY_A and sc != "A":
                    continue
                if sc == "C" and args.c_reps > 1:
                    continue  # c_rounds_phase, below
                proxy = Proxy(name).start()
                try:
                    route = assert_routed(name, proxy.port)
                    if name not in meta["tls"]:
                        meta["tls"][name] = tls_params(proxy.port)
                        meta["routing"][name] = route
                        log(f"{name}: routed ({route}); TLS {meta['tls'][name]}")
                    log(f"{name}: scenario {sc}")
                    res = RUNNERS[sc](proxy, sink, args, ctx)
                    res.update({"proxy": name, "scenario": sc})
                    if sc == "A":
                        a_results[name] = res
                    (RAW / f"{name}.{sc}.json").write_text(json.dumps(res, indent=1))
                    for pt in res["points"]:
                        log(f"  {pt['point']}: ok={pt.get('ok')} non2xx={pt.get('non2xx')} "
                            f"err={pt.get('errors')} rps={pt.get('rps', 0):.0f} "
                            f"cpu={pt.get('proxy_cpu_s')}s core1={pt.get('core1_util')} "
                            f"core0_other={pt.get('core0_other')}")
                finally:
                    proxy.stop()
        if a_results:
            open_loop_phase([p for p in proxies if p in a_results], sink, args, ctx, a_results)
        if "C" in scenarios and args.c_reps > 1:
            c_rounds_phase([p for p in proxies if p not in ONLY_A], sink, args)
    finally:
        sink.stop()
        if shield:
            shield.__exit__(None, None, None)
    # TLS parity across proxies: same protocol, cipher, group, ALPN, signature.
    tls_keys = ("protocol", "cipher", "group", "alpn", "peer_sig")
    for label in ("tls13", "tls12"):
        seen = {n: tuple(meta["tls"][n][label].get(k) for k in tls_keys) for n in meta["tls"]}
        if len(set(seen.values())) > 1:
            meta.setdefault("parity_warnings", []).append(f"TLS {label} differs: {seen}")
            log(f"WARNING: TLS {label} parameters differ: {seen}")
    tickets = {n: meta["tls"][n]["tls13"]["tickets"] for n in meta["tls"]}
    if len(set(tickets.values())) > 1:
        meta.setdefault("parity_warnings", []).append(f"TLS 1.3 tickets per handshake differ: {tickets}")
    meta["elapsed_s"] = round(time.time() - t_start, 1)
    meta["waited_for_quiet_s"] = round(QUIET["waited_s"], 1)
    (RAW / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"measurements done in {meta['elapsed_s']} s")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    LOG_FILE.write_text("")

    def _terminate(signum, frame):
        raise KeyboardInterrupt  # run the `finally` blocks: stop the proxy and the sink
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except KeyboardInterrupt:
        log("FATAL: interrupted (time limit or Ctrl-C); proxies and sink were stopped")
        sys.exit(130)
    except Exception:  # noqa: BLE001 - logged whole, then re-raised
        import traceback
        log("FATAL: unexpected error:\n" + traceback.format_exc())
        raise
