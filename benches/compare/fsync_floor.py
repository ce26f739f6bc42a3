#!/usr/bin/env python3
"""An estimate of the floor under the transparency log's durability cost on
this machine: what one group commit costs in CPU (a `pwrite` into a
preallocated file and an `fdatasync`, spaced as the log's writer spaces
them), with nothing of the proxy around it.

Any log that makes a record durable before it answers pays about this per
group commit, shared by the records of the commit (an estimate, not a strict
lower bound: the loop is Python, which adds a few µs per iteration, and it
sleeps before every commit, which a busy writer does not always do). So with a budget of
B µs per upload (issue 17: +25 % of the proxy's CPU without the log) a
commit must cover at least floor / B records, and at R uploads per second
the first of them has waited batch / R for the last to arrive: the least
latency that batch size adds. This tool prints both, per batch size.

  python3 benches/compare/fsync_floor.py [--rate 4000] [--no-log-cpu 60]
      [--commits 1500] [--record-bytes 520] [--dir DIR]

How: pinned to core 0 (the core bench.py and receipts.py give the proxy, and
so the log's writer thread), a thread runs `--commits` iterations of: sleep
until the next batch is due (batch / rate after the last one), then
`pwrite` batch × record-bytes into a 160 KiB file of zeros written and
fsynced beforehand, one batch after another from its start and round again
(as the log fills its preallocated staging bundle), then `fdatasync`.
Its CPU comes from getrusage(RUSAGE_THREAD) (the scheduler's own count). A
second loop does the same without the write and the fsync: the cost of the
sleep and wake-up alone, which the writer pays too (it waits for the commit
window). Python adds a few µs per iteration to both. "of which the write and
fsync" subtracts a wake-up from every commit: meaningless where the fsync
outlasts the gap (the loop then does not sleep). The latency column times
the `pwrite` and the `fdatasync` together.

The directory defaults to out/ next to this file: the filesystem the bench
logs live on (receipts.py puts them in out/run).
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE = 160 * 1024


def thread_cpu():
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def loop(n, gap, write=None):
    """n iterations spaced by gap seconds; returns (CPU µs per iteration,
    sorted latencies of the write in µs)."""
    lat = []
    due = time.monotonic()
    cpu0 = thread_cpu()
    for _ in range(n):
        due += gap
        left = due - time.monotonic()
        if left > 0:
            time.sleep(left)
        if write is not None:
            t = time.perf_counter()
            write()
            lat.append((time.perf_counter() - t) * 1e6)
    cpu = (thread_cpu() - cpu0) / n * 1e6
    return cpu, sorted(lat)


def commit_loop(directory, n, gap, batch_bytes):
    fd, path = tempfile.mkstemp(prefix="fsync-floor.", dir=directory)
    try:
        os.pwrite(fd, b"\0" * BUNDLE, 0)
        os.fsync(fd)
        record = b"r" * batch_bytes
        state = {"at": 0}

        def write():
            if state["at"] + batch_bytes > BUNDLE:
                state["at"] = 0
            os.pwrite(fd, record, state["at"])
            state["at"] += batch_bytes
            os.fdatasync(fd)

        return loop(n, gap, write)
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=4000, help="uploads per second (receipts.py's fixed load)")
    ap.add_argument("--no-log-cpu", type=float, default=60.0,
                    help="the proxy's CPU µs per upload without the log at that rate (receipts.py's 'no log' row)")
    ap.add_argument("--budget", type=float, default=0.25, help="the log's share of --no-log-cpu allowed (issue 17: 0.25)")
    ap.add_argument("--commits", type=int, default=1500, help="iterations per batch size")
    ap.add_argument("--record-bytes", type=int, default=520, help="bytes of one record in a bundle")
    ap.add_argument("--batches", default="1,2,4,6,8,12,16,24", help="batch sizes (records per commit) to measure")
    ap.add_argument("--dir", default=str(HERE / "out"), help="a directory on the filesystem to measure")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    os.sched_setaffinity(0, {0})
    budget = args.no_log_cpu * args.budget
    print(f"# fsync floor: {args.dir} ({os.uname().release}), {args.rate} uploads/s, "
          f"budget {budget:.1f} µs per upload ({args.budget:.0%} of {args.no_log_cpu:g})\n")
    print("| records per commit | batch fills in (ms) | wake only: CPU µs per iteration | "
          "pwrite + fdatasync: CPU µs per commit | of which the write and fsync | "
          "CPU µs per upload (floor) | fsync latency mean / p99 (µs) | within budget |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(x) for x in args.batches.split(",")]:
        gap = batch / args.rate
        wake, _ = loop(args.commits, gap)
        cpu, lat = commit_loop(args.dir, args.commits, gap, batch * args.record_bytes)
        per_upload = cpu / batch
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"| {batch} | {gap * 1e3:.2f} | {wake:.1f} | {cpu:.1f} | {cpu - wake:.1f} | {per_upload:.1f} | "
              f"{statistics.fmean(lat):.0f} / {p99:.0f} | {'yes' if per_upload <= budget else 'no'} |")
    print("\nA commit of `records per commit` at this rate makes its first record wait "
          "`batch fills in` for the last one, on top of the fsync.")


if __name__ == "__main__":
    main()
