#!/usr/bin/env python3
"""What proof of residency costs: proxy CPU per 1 KiB upload (HTTP/1.1
keep-alive, scenario A's load) with the transparency log off, with records
only (receipts = "off"), with `receipts = "log"` and with `receipts =
"signed"`. Same harness, machine setup and pinning as bench.py (proxy on
core 0, wrk/oha and the sink on core 1); variants alternate over --rounds
rounds and the median per variant is reported.

usage: receipts.py [--duration 8] [--rate 4000] [--rounds 3] [--variants "no log,log"]
Needs out/run prepared by bench.py (run.sh does it: certificate, mmdb,
residency.toml, the proxy and sink binaries). Writes out/receipts.{json,md}.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import time
import urllib.request

import bench as b

VARIANTS = [
    ("no log", None),
    ("records only", 'receipts = "off"'),
    ("log", 'receipts = "log"'),
    ("signed", 'receipts = "signed"'),
    # Measured only when asked for (--variants): the commit window's trade.
    ("log window 0", 'receipts = "log"\ncommit_window = "0s"'),
    ("log window 1ms", 'receipts = "log"\ncommit_window = "1ms"'),
    ("log window 2ms", 'receipts = "log"\ncommit_window = "2ms"'),
]
DEFAULT_VARIANTS = ["no log", "records only", "log", "signed"]
ORIGIN = "bench.example/residency-log"


class Variant(b.Proxy):
    """residency-proxy with one of the variant configs."""

    def __init__(self, config):
        super().__init__("residency-proxy")
        self.config = config

    def start(self):
        if not b.port_free(self.port):
            b.die(f"port {self.port} is busy")
        self.logf = open(b.RUN / "residency-proxy.receipts.log", "ab")
        cmd = ["taskset", "-c", b.PROXY_CORE, str(b.RP_BIN),
               "--log-level", b.RP_LOG_FILTER, "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not b.wait_port(self.port, 20, self.proc):
            self.stop()
            b.die(f"residency-proxy did not start with {self.config}")
        time.sleep(0.3)
        return self


def log_counters():
    """The group commits' counters from the proxy's metrics: fsync seconds
    and records per batch, as (sum, count) pairs; None without a log."""
    url = f"http://127.0.0.1:{b.PORTS['rp_admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("residency_log_fsync_seconds", "residency_log_batch_records"):
            for part in ("_sum", "_count"):
                if line.startswith(name + part + " "):
                    values[name + part] = float(line.split()[1])
    if len(values) < 4:
        return None
    return values


def commit_stats(before, after):
    """Mean fsync (µs) and records per batch between two scrapes."""
    if before is None or after is None:
        return None, None
    d = {k: after[k] - before[k] for k in after}
    fsyncs = d["residency_log_fsync_seconds_count"]
    batches = d["residency_log_batch_records_count"]
    fsync_us = 1e6 * d["residency_log_fsync_seconds_sum"] / fsyncs if fsyncs else None
    per_batch = d["residency_log_batch_records_sum"] / batches if batches else None
    return fsync_us, per_batch


def configs():
    key = b.RUN / "benchlog.key"
    if not key.exists():
        b.run([b.RP_BIN, "keygen", "--name", ORIGIN, "--out", b.RUN / "benchlog"])
    base = (b.RUN / "residency.toml").read_text()
    out = []
    for name, lines in VARIANTS:
        if lines is None:
            out.append((name, b.RUN / "residency.toml", None))
            continue
        slug = name.replace(" ", "-").replace(",", "")
        log_dir = b.RUN / f"tlog-{slug}"
        text = base + (f'\n[transparency]\ndirectory = "{log_dir}"\norigin = "{ORIGIN}"\n'
                       f'signing_key = "{key}"\ncheckpoint_interval = "1s"\n{lines}\n')
        path = b.RUN / f"residency-{slug}.toml"
        path.write_text(text)
        out.append((name, path, log_dir))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    ap.add_argument("--rate", type=int, default=4000, help="open-loop rate for the fixed-load point")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated variants to measure (\"no log\" is always measured)")
    args = ap.parse_args()
    wanted = {"no log"} | {v.strip() for v in args.variants.split(",")}
    unknown = wanted - {name for name, _ in VARIANTS}
    if unknown:
        b.die(f"unknown variants {sorted(unknown)}; known: {[name for name, _ in VARIANTS]}")
    b.os.sched_setaffinity(0, {int(b.CLIENT_CORE)})
    if not (b.RUN / "residency.toml").exists():
        b.die("out/run is not prepared: run run.sh (or bench.py) first")
    b.QUIET["budget_s"] = 120
    b.QUIET["retries"] = 1
    shutil.copy2(b.BUILT_RP_BIN, b.RP_BIN)  # the current build
    variants = [v for v in configs() if v[0] in wanted]
    script = b.RUN / "post_1k.lua"
    results = {name: [] for name, _, _ in variants}
    sink = b.Sink()
    sink.start()
    try:
        for rnd in range(args.rounds):
            for name, config, log_dir in variants:
                if log_dir is not None:
                    shutil.rmtree(log_dir, ignore_errors=True)
                proxy = Variant(config).start()
                try:
                    status, headers = b.routed_request(proxy.port)
                    receipt = headers.get("residency-receipt")
                    if status != 201 or (("receipts = \"log\"" in config.read_text()
                                          or "receipts = \"signed\"" in config.read_text())
                                         and not receipt):
                        b.die(f"{name}: unexpected answer {status} {headers}")
                    b.wrk(proxy.port, script, args.conns, 2)
                    closed = b.measure(proxy, sink, lambda: b.wrk(proxy.port, script, args.conns, args.duration))
                    counters = log_counters()
                    fixed = b.measure(proxy, sink, lambda: b.oha_rate(proxy.port, args.rate, args.conns,
                                                                       args.duration, 1))
                    fsync_us, per_batch = commit_stats(counters, log_counters())
                    for what, m in (("closed-loop", closed), ("fixed-rate", fixed)):
                        if m["requests"] == 0:
                            b.die(f"{name}: the proxy answered no request in the {what} run "
                                  f"(see {b.RUN / 'residency-proxy.receipts.log'})")
                    row = {
                        "round": rnd + 1,
                        "closed_rps": closed["rps"],
                        "closed_cpu_us": 1e6 * closed["proxy_cpu_s"] / max(1, closed["requests"]),
                        "fixed_cpu_us": 1e6 * fixed["proxy_cpu_s"] / max(1, fixed["requests"]),
                        "fixed_p99_ms": fixed.get("p99_ms"),
                        "errors": closed.get("errors", 0) + closed.get("non2xx", 0) + fixed.get("non2xx", 0),
                        "noise": max(closed["noise"], fixed["noise"]),
                        # At the fixed rate: what one group commit's fsync
                        # took and how many records it covered.
                        "fsync_us": fsync_us,
                        "records_per_commit": per_batch,
                    }
                    results[name].append(row)
                    b.log(f"receipts {name} round {rnd + 1}: {row}")
                finally:
                    proxy.stop()
    finally:
        sink.stop()

    def med(name, key):
        values = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    def opt(value, spec):
        return "—" if value != value else format(value, spec)

    base_closed, base_fixed = med("no log", "closed_cpu_us"), med("no log", "fixed_cpu_us")
    lines = [f"## Proof of residency: CPU per 1 KiB upload ({args.rounds} rounds, median; "
             f"{args.duration} s per point; fixed load {args.rate} req/s)", "",
             "| variant | max req/s | CPU µs/req at max | × no log | CPU µs/req at fixed load | × no log | "
             "× no log, median of rounds | p99 ms at fixed load | fsync µs (mean) | records per commit | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def round_ratio(name):
        # Each round's variant against that round's "no log": robust to a
        # machine whose speed drifts between rounds.
        ratios = [r["fixed_cpu_us"] / n["fixed_cpu_us"]
                  for r, n in zip(results[name], results["no log"])]
        return statistics.median(ratios)

    for name, _, _ in variants:
        c, f = med(name, "closed_cpu_us"), med(name, "fixed_cpu_us")
        lines.append(f"| {name} | {med(name, 'closed_rps'):,.0f} | {c:.1f} | {c / base_closed:.3f} | "
                     f"{f:.1f} | {f / base_fixed:.3f} | {round_ratio(name):.3f} | "
                     f"{med(name, 'fixed_p99_ms'):.2f} | {opt(med(name, 'fsync_us'), '.0f')} | "
                     f"{opt(med(name, 'records_per_commit'), '.1f')} | "
                     f"{sum(r['errors'] for r in results[name])} |")
    md = "\n".join(lines) + "\n"
    (b.OUT / "receipts.md").write_text(md)
    (b.OUT / "receipts.json").write_text(json.dumps(results, indent=1))
    print(md)


if __name__ == "__main__":
    main()
