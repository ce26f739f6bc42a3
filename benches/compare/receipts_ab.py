#!/usr/bin/env python3
"""The transparency log's latency tail, two (or more) proxy builds side by
side: each round runs every binary in turn with receipts.py's `receipts =
"log"` configuration (same harness and pinning as bench.py), 2 s of wrk
warm-up, then oha at a fixed rate; reported per binary as medians over the
rounds: CPU µs per upload, oha's p50 and p99, and the share of requests the
proxy itself timed over 2.5 ms and over 5 ms (its
residency_request_duration_seconds histogram, scraped around the run).

usage: receipts_ab.py BINARY[,BINARY...] [--rounds 4] [--duration 8] [--rate 4000]
Needs out/run prepared by bench.py (run.sh does it). Writes out/receipts_ab.json.
"""

import argparse
import json
import os
import shutil
import statistics
import time
import urllib.request

import bench as b
import receipts as r

HIST = "residency_request_duration_seconds"


def durations():
    """The proxy's request-duration buckets and count (cumulative)."""
    url = f"http://127.0.0.1:{b.PORTS['rp_admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines() if line.startswith(HIST)}


def share_over(before, after, le):
    """Percent of the requests between two scrapes that took over `le` seconds."""
    count = next(k for k in after if k.startswith(HIST + "_count"))
    bucket = next(k for k in after if k.startswith(HIST + "_bucket") and f'le="{le}"' in k)
    n = after[count] - before.get(count, 0)
    under = after[bucket] - before.get(bucket, 0)
    return 100.0 * (1 - under / n) if n else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", help="comma-separated residency-proxy binaries")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=8, help="seconds at the fixed rate")
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    binaries = [x for x in args.binaries.split(",") if x]
    for x in binaries:
        if not os.access(x, os.X_OK):
            b.die(f"{x} is not an executable")
    b.os.sched_setaffinity(0, {int(b.CLIENT_CORE)})
    if not (b.RUN / "residency.toml").exists():
        b.die("out/run is not prepared: run run.sh (or bench.py) first")
    config, log_dir = next((c, d) for name, c, d in r.configs() if name == "log")
    results = {x: [] for x in binaries}
    sink = b.Sink()
    sink.start()
    try:
        for rnd in range(args.rounds):
            for x in binaries:
                shutil.copy2(x, b.RP_BIN)
                shutil.rmtree(log_dir, ignore_errors=True)
                proxy = r.Variant(config).start()
                try:
                    time.sleep(1)
                    b.wrk(proxy.port, b.RUN / "post_1k.lua", args.conns, 2)
                    before = durations()
                    m = b.measure(proxy, sink, lambda: b.oha_rate(proxy.port, args.rate, args.conns,
                                                                   args.duration, 1))
                    after = durations()
                    if m["requests"] == 0:
                        b.die(f"{x}: no request answered (see {b.RUN / 'residency-proxy.receipts.log'})")
                    row = {
                        "cpu_us": 1e6 * m["proxy_cpu_s"] / m["requests"],
                        "p50_ms": m.get("p50_ms"),
                        "p99_ms": m.get("p99_ms"),
                        "over_2_5ms_pct": share_over(before, after, "0.0025"),
                        "over_5ms_pct": share_over(before, after, "0.005"),
                    }
                    results[x].append(row)
                    b.log(f"receipts_ab {x} round {rnd + 1}: {row}")
                finally:
                    proxy.stop()
    finally:
        sink.stop()
    lines = [f"## Log latency A/B ({args.rounds} rounds, medians; {args.rate} req/s for {args.duration} s)", "",
             "| binary | CPU µs/upload | p50 ms | p99 ms | requests over 2.5 ms | over 5 ms |",
             "|---|---|---|---|---|---|"]
    for x in binaries:
        med = {k: statistics.median(row[k] for row in results[x]) for k in results[x][0]}
        lines.append(f"| {x} | {med['cpu_us']:.1f} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | "
                     f"{med['over_2_5ms_pct']:.2f} % | {med['over_5ms_pct']:.2f} % |")
    (b.OUT / "receipts_ab.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
