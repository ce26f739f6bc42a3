#!/usr/bin/env python3
"""Memory per in-flight upload as a slope: what one more 1 MiB upload in
flight adds to a proxy's peak RSS.

Scenario C (bench.py) divides the peak RSS under 64 uploads, minus the RSS
right after start, by 64: whatever a proxy first touches under load (its
allocator's arenas, a first handshake's tables) counts as per-upload
memory, and nginx's figure moves with its RSS at start (20.7 MB in one run,
24.2 MB in another, for the same 27.1 MB peak). This script loads each
proxy, in one life, with 1 MiB uploads at rising concurrency (`--levels`,
wrk as in C) and reports the peak after each level; the slope between two
levels (KiB per added upload) is memory that grows with the uploads and
nothing else.

`--proxies` takes bench.py's names and `floor-rp`: the floor (floor/, the
stack alone) with hyper's `max_buf_size` set as residency-proxy sets it
(32 KiB towards the client, from `limits.request_body_buffer_bytes`; 64 KiB
towards the data centre), where `floor` keeps hyper's defaults (~400 KiB).
The rounds are interleaved over the proxies; the medians over rounds are
printed last and everything is written to out/memory_slope.json.

Needs what bench.py needs (run.sh, or bench.py once, prepares out/run and
builds the sink and the floor); measures the binary bench.py would
(`RP_BIN`, copied into out/run). Standard library only.

    python3 benches/compare/memory_slope.py --proxies nginx,residency-proxy,floor-rp --reps 3
"""

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

# What residency-proxy gives hyper (src/server/connection.rs: the default
# `limits.request_body_buffer_bytes`; src/upstream/pool.rs:
# RESPONSE_HEAD_LIMIT).
RP_BUFFERS = {"FLOOR_SERVER_MAX_BUF": "32768", "FLOOR_CLIENT_MAX_BUF": "65536"}


def start(name):
    for var in RP_BUFFERS:
        os.environ.pop(var, None)
    if name == "floor-rp":
        os.environ.update(RP_BUFFERS)
        return bench.Proxy("floor").start()
    return bench.Proxy(name).start()


def one(name, levels, duration):
    proxy = start(name)
    try:
        if name not in ("floor", "floor-rp"):
            bench.assert_routed(name, proxy.port)
        base = bench.status_kib(proxy.pids(), "VmRSS")
        peaks, errors = [], 0
        for conns in levels:
            r = bench.wrk(proxy.port, bench.RUN / "post_1m.lua", conns, duration, timeout_s=30)
            errors += (r.get("errors") or 0) + (r.get("non2xx") or 0)
            peaks.append(bench.status_kib(proxy.pids(), "VmHWM"))
    finally:
        proxy.stop()
    slopes = [(peaks[i] - peaks[i - 1]) / (levels[i] - levels[i - 1]) for i in range(1, len(levels))]
    return {"base_kib": base, "peak_kib": peaks, "slope_kib": slopes, "errors": errors,
            "per_upload_as_c_kib": (peaks[levels.index(64)] - base) / 64 if 64 in levels else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxies", default="nginx,residency-proxy,floor-rp")
    ap.add_argument("--levels", default="16,64,128", help="uploads in flight, rising")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--duration", type=int, default=6, help="seconds per level")
    args = ap.parse_args()
    names = args.proxies.split(",")
    levels = [int(x) for x in args.levels.split(",")]
    if len(levels) < 2 or levels != sorted(set(levels)):
        bench.die("--levels: at least two, rising")
    if not (bench.RUN / "post_1m.lua").exists():
        bench.die(f"{bench.RUN} is not prepared: run run.sh or bench.py first")
    if "residency-proxy" in names:
        shutil.copy2(bench.BUILT_RP_BIN, bench.RP_BIN)
    os.sched_setaffinity(0, {int(bench.CLIENT_CORE)})
    results = {name: [] for name in names}
    sink = bench.Sink()
    sink.start()
    try:
        for rnd in range(args.reps):
            for name in names:
                r = one(name, levels, args.duration)
                results[name].append(r)
                print(f"{name} round {rnd + 1}: base {r['base_kib']} KiB, peaks "
                      + ", ".join(f"{c}: {p}" for c, p in zip(levels, r["peak_kib"]))
                      + " KiB; slopes " + ", ".join(f"{s:.1f}" for s in r["slope_kib"])
                      + f" KiB per upload; errors {r['errors']}", flush=True)
    finally:
        sink.stop()
    print("\nmedians over rounds (KiB per upload in flight):")
    header = "".join(f"  slope {a}->{b}" for a, b in zip(levels, levels[1:]))
    print(f"{'proxy':<16}{header}  as C (peak at 64 - start) / 64")
    for name, rounds in results.items():
        cols = "".join(f"  {statistics.median(r['slope_kib'][i] for r in rounds):>{len(f'slope {a}->{b}')}.1f}"
                       for i, (a, b) in enumerate(zip(levels, levels[1:])))
        as_c = [r["per_upload_as_c_kib"] for r in rounds if r["per_upload_as_c_kib"] is not None]
        print(f"{name:<16}{cols}  {statistics.median(as_c):.1f}" if as_c else f"{name:<16}{cols}")
    (bench.OUT / "memory_slope.json").write_text(json.dumps(
        {"levels": levels, "duration_s": args.duration, "results": results}, indent=1))


if __name__ == "__main__":
    main()
