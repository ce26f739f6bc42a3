#!/usr/bin/env python3
"""Runs `residency-proxy drill` several times and summarises its failover,
hang-detection and recovery figures: the median and the spread (min–max)
over the runs, per chaos event of the default schedule.

    python3 benches/drill/runs.py --binary target/release/residency-proxy --runs 5
    python3 benches/drill/runs.py --binary OLD --binary NEW --runs 5   # side by side

Each run is the default 60 s drill (`--duration` to change it); the JSON
report of every run is kept in --out (default: a temporary directory).
Runs are sequential, binaries interleaved run by run, so that a noisy
minute affects both.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(binary: str, duration: str, out: Path) -> dict:
    cmd = [binary, "drill", "--duration", duration, "--no-progress", "--json", str(out)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    report["_exit"] = done.returncode
    return report


def figures(report: dict) -> dict:
    """event -> {metric: ms} for one run."""
    out = {}
    for c in report["chaos"]:
        event = c["event"].split(":", 1)[1]
        f, r = c.get("failover"), c.get("recovery")
        if f:
            out[f"{event} detect"] = f.get("time_to_detect_ms")
            out[f"{event} failover"] = f.get("time_to_failover_ms")
            out[f"{event} failed before failover"] = f.get("failed_before_failover")
        if r:
            out[f"{event} (after {prev}) recover"] = r.get("time_to_recover_ms")
        prev = event
    return out


def summary(values: list) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "none"
    text = f"{statistics.median(got):.0f} ({min(got):.0f}–{max(got):.0f})"
    if len(got) < len(values):
        text += f", none in {len(values) - len(got)}"
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", action="append", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", default="60s")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="drill-runs-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {b: [] for b in a.binary}
    for i in range(a.runs):
        for k, b in enumerate(a.binary):
            report = run(b, a.duration, out / f"run-{k}-{i}.json")
            results[b].append(figures(report))
            print(f"run {i + 1}/{a.runs} binary {k}: exit {report['_exit']}, "
                  f"{report['residency_violations']} violations, {report['acknowledged_missing']} missing",
                  file=sys.stderr)
    keys = list(dict.fromkeys(k for runs in results.values() for r in runs for k in r))
    head = "| figure (ms; median (min–max) of %d runs) | " % a.runs + " | ".join(
        f"binary {k}" for k in range(len(a.binary))) + " |"
    print(head)
    print("|---|" + "---|" * len(a.binary))
    for key in keys:
        cells = [summary([r.get(key) for r in results[b]]) for b in a.binary]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(f"\nreports in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
