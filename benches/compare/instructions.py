#!/usr/bin/env python3
"""Noise-free cost of scenario A's request: user-space instructions per
request (valgrind's callgrind) and system calls per request (strace -c), for
nginx, HAProxy and residency-proxy, on the assets bench.py rendered (run
run.sh, or bench.py, once first).

CPU time on this VM moves by 10-30 % between runs (steal, other tenants; see
README.md, "Latency noise"); instruction and system-call counts do not. They
are not time: an instruction that misses the cache costs more than one that
hits, and system calls differ in cost; but a ratio that holds in both counts
is not an artefact of a noisy minute.

  python3 benches/compare/instructions.py [--proxies nginx,residency-proxy] [--requests 3000]
  python3 benches/compare/instructions.py --proxies residency-proxy --no-syscalls --breakdown 80
  python3 benches/compare/instructions.py --proxies floor,residency-proxy --no-syscalls

`floor` is not a proxy of bench.py: it is floor/ (compare-floor), the least a
TLS-terminating HTTP/1.1 proxy on residency-proxy's own stack (hyper server
and client, tokio-rustls, Tokio current-thread, mimalloc, fat LTO) costs per
request, so residency-proxy's count minus the floor's is what its own work
and its way of driving those libraries cost. run.sh builds it and counts it.

How: each proxy runs pinned to core 0 under `valgrind --tool=callgrind`
(forked workers are followed), the sink and the client (oha, 16 keep-alive
connections, 1 KiB POSTs) on core 1. A fresh proxy gets a warm-up batch and
then a short batch, and its instructions from start to exit are summed; a
second fresh proxy gets the warm-up and a long batch. Both pay the same
start-up, warm-up, 16 TLS handshakes and connection set-ups, so (long -
short) / (requests difference) is the steady per-request cost. System calls
are counted the same way under `strace -c -f`. Writes out/instructions.json
and prints a table. The callgrind profiles stay in out/callgrind/<proxy>/;
--breakdown prints residency-proxy's functions by inclusive instructions per
request from them (cgdiff.py; also written to out/breakdown-residency-proxy.txt).

--body 1m counts scenario C's 1 MiB uploads instead (40 and 120 of them after
16 warm-up ones; the counts are then per MiB, written to
out/instructions-1m.json), with the floor at residency-proxy's buffer sizes.
"""

import argparse
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench
import memory_slope
from bench import CLIENT_CORE, OHA, PORTS, PROXY_CORE, RUN, SINK_BIN

OUT = bench.OUT
CG_DIR = OUT / "callgrind"


# The upload each request carries: scenario A's 1 KiB, or scenario C's 1 MiB
# (--body 1m: the counts are then per MiB, what the proxy's own work per
# body chunk costs; the floor runs at residency-proxy's buffer sizes).
BODY = "1k"


def load(port, n):
    """n POSTs of BODY on 16 keep-alive connections; returns oha's success count."""
    r = subprocess.run(["taskset", "-c", CLIENT_CORE, OHA, "--no-tui", "--insecure", "-n", str(n),
                        "-c", "16", "-m", "POST", "-D", str(RUN / f"body_{BODY}.bin"),
                        "-T", "application/octet-stream", "--output-format", "json",
                        f"https://127.0.0.1:{port}{bench.PATH}"],
                       capture_output=True, text=True, timeout=600)
    j = json.loads(r.stdout)
    ok = j.get("statusCodeDistribution", {}).get("201", 0)
    if ok != n:
        sys.exit(f"load: {ok} of {n} requests answered 201: {r.stdout[-500:]}{r.stderr[-500:]}")
    return ok


def start(cmd, port, log):
    env = dict(os.environ, **memory_slope.RP_BUFFERS) if BODY == "1m" else None
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if not bench.wait_port(port, 120, p):
        p.kill()
        sys.exit(f"{cmd[0]} did not start; see {log.name}")
    return p


def stop(p, traced=False):
    """SIGTERM to the proxy: under strace, to its traced child (strace itself
    would detach and leave the proxy running)."""
    if traced:
        for pid in bench.proc_tree(p.pid)[1:2]:
            os.kill(pid, signal.SIGTERM)
    else:
        p.terminate()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


def proxy_args(name):
    """The bench command without its `taskset -c 0` prefix."""
    cmd = [str(c) for c in bench.proxy_cmd(name)]
    assert cmd[:3] == ["taskset", "-c", PROXY_CORE], cmd
    return cmd[3:]


def warm_up():
    return 200 if BODY == "1k" else 16


def callgrind_total(files):
    total = 0
    for f in files:
        m = re.search(r"^(?:summary|totals): (\d+)", f.read_text(errors="replace"), re.M)
        if m:
            total += int(m.group(1))
    return total


def instructions(name, short, long_, extra=()):
    """Instructions of the whole process tree (nginx: master + worker) from
    start to exit, for a fresh proxy per batch; the difference of the two
    batches is the per-request cost (start-up, warm-up, handshakes cancel)."""
    port = PORTS[name]
    cg_dir = CG_DIR / name
    shutil.rmtree(cg_dir, ignore_errors=True)
    cg_dir.mkdir(parents=True)
    totals = {}
    for tag, n in (("short", short), ("long", long_)):
        cmd = ["taskset", "-c", PROXY_CORE, "valgrind", "--tool=callgrind", "--dump-instr=no",
               "--compress-strings=no", f"--callgrind-out-file={cg_dir}/{tag}.%p", *extra] + proxy_args(name)
        with open(OUT / f"instructions-{name}.log", "wb") as log:
            p = start(cmd, port, log)
            try:
                load(port, warm_up())  # pools, lazily built state, first-use paths
                load(port, n)
            finally:
                stop(p)
        time.sleep(0.5)
        totals[tag] = callgrind_total(cg_dir.glob(f"{tag}.*"))
    return (totals["long"] - totals["short"]) / (long_ - short), totals


def syscalls(name, short, long_):
    """strace -c counts per request, by the same difference of two batches
    (each batch runs against a fresh proxy: strace -c reports at exit)."""
    port = PORTS[name]
    res = {}
    for tag, n in (("short", short), ("long", long_)):
        out = OUT / f"strace-{name}-{tag}.txt"
        cmd = ["taskset", "-c", PROXY_CORE, "strace", "-c", "-f", "-o", str(out)] + proxy_args(name)
        with open(OUT / f"strace-{name}.log", "wb") as log:
            p = start(cmd, port, log)
            try:
                load(port, warm_up())
                load(port, n)
            finally:
                stop(p, traced=True)
        per = {}
        for line in out.read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and not line.startswith("100.00"):
                per[f[-1]] = int(f[3])
        res[tag] = per
    names = set(res["short"]) | set(res["long"])
    diff = {k: (res["long"].get(k, 0) - res["short"].get(k, 0)) / (long_ - short) for k in names}
    return {k: round(v, 2) for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def breakdown(name, requests, top):
    """cgdiff.py over the proxy's two profiles: inclusive/self instructions
    and calls per request for its `top` functions."""
    d = CG_DIR / name
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("cgdiff.py")),
                        str(next(d.glob("short.*"))), str(next(d.glob("long.*"))), str(requests),
                        "--top", str(top)], capture_output=True, text=True, check=True)
    (OUT / f"breakdown-{name}.txt").write_text(r.stdout)
    print(r.stdout, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", default=",".join(p for p in bench.PROXIES if p not in bench.ONLY_A))
    ap.add_argument("--body", choices=("1k", "1m"), default="1k",
                    help="each request's upload: scenario A's 1 KiB (default) or scenario C's "
                         "1 MiB (counts per MiB; the floor at residency-proxy's buffer sizes)")
    ap.add_argument("--requests", type=int, help="requests in the long batch (default 3000, 1m: 120)")
    ap.add_argument("--short", type=int, help="requests in the short batch (default 500, 1m: 40)")
    ap.add_argument("--breakdown", type=int, nargs="?", const=60, default=0, metavar="TOP",
                    help="also print residency-proxy's TOP functions (default 60) by inclusive "
                         "instructions per request (cgdiff.py on the two profiles; written to "
                         "out/breakdown-residency-proxy.txt)")
    ap.add_argument("--no-syscalls", action="store_true", help="skip the strace counts")
    ap.add_argument("--callgrind-arg", action="append", default=[],
                    help="extra valgrind argument, e.g. --separate-callers3=mi_free (repeatable)")
    args = ap.parse_args()
    global BODY
    BODY = args.body
    args.requests = args.requests or (3000 if BODY == "1k" else 120)
    args.short = args.short or (500 if BODY == "1k" else 40)
    for tool in ("valgrind", "callgrind_control", "strace"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install valgrind strace)")
    if not (RUN / "residency.toml").exists():
        sys.exit(f"{RUN} has no rendered configs: run run.sh (or bench.py) once first")
    # "floor" (floor/, not a bench.py proxy): the least a proxy built on
    # residency-proxy's HTTP and TLS stack costs per request.
    proxies = [p for p in bench.PROXIES + ["floor"] if p in args.proxies.split(",")]
    if "floor" in proxies and not bench.FLOOR_BIN.exists():
        # Not worth the other proxies' counts: left out, said why.
        print(f"WARNING: {bench.FLOOR_BIN} not found (build benches/compare/floor; run.sh does "
              f"unless SKIP_BUILD): floor not counted", file=sys.stderr, flush=True)
        proxies.remove("floor")
    # The binary as built now (bench.py runs a copy, made when it prepared).
    shutil.copy2(bench.BUILT_RP_BIN, bench.RP_BIN)
    sink = subprocess.Popen(["taskset", "-c", CLIENT_CORE, str(SINK_BIN), f"127.0.0.1:{PORTS['sink']}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    results = {}
    try:
        if not bench.wait_port(PORTS["sink"], 10, sink):
            sys.exit("sink did not start")
        for name in proxies:
            per_req, raw = instructions(name, args.short, args.requests, args.callgrind_arg)
            sc = {} if args.no_syscalls else syscalls(name, args.short, args.requests)
            results[name] = {"instructions_per_request": round(per_req),
                             "callgrind_totals": raw,
                             "syscalls_per_request": sc,
                             "syscalls_per_request_total": round(sum(sc.values()), 2)}
            print(f"{name}: {per_req:,.0f} instructions/request, "
                  f"{sum(sc.values()):.2f} system calls/request {sc}", flush=True)
            if args.breakdown and name == "residency-proxy":
                breakdown(name, args.requests - args.short, args.breakdown)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    name = "instructions.json" if BODY == "1k" else "instructions-1m.json"
    (OUT / name).write_text(json.dumps(
        {"body": BODY, "requests": [args.short, args.requests], "results": results}, indent=1))
    base = results.get("nginx")
    unit = "request" if BODY == "1k" else "MiB (request of 1 MiB)"
    print(f"\n| proxy | user-space instructions / {unit} | system calls / {unit} |"
          + (" instructions vs nginx | system calls vs nginx |" if base else ""))
    print("|---|---|---|" + ("---|---|" if base else ""))
    for name, r in results.items():
        row = f"| {name} | {r['instructions_per_request']:,} | {r['syscalls_per_request_total']:.2f} |"
        if base:
            row += f" {r['instructions_per_request'] / base['instructions_per_request']:.2f} |"
            row += (f" {r['syscalls_per_request_total'] / base['syscalls_per_request_total']:.2f} |"
                    if base["syscalls_per_request_total"] else " — |")
        print(row)


if __name__ == "__main__":
    main()
