#!/usr/bin/env python3
"""Where a residency-proxy heap goes, from a valgrind massif profile: each
live allocation is attributed to the first frame, from the allocator up,
in rustls, hyper, tokio, h2, tracing or this project (so a buffer counts
where the library or our code asked for it, not in `Vec::reserve`).

    python3 benches/compare/massif_top.py IDLE LOADED [--per N] [--top 20]

IDLE and LOADED are massif snapshots of one process (`vgdb --pid P
detailed_snapshot FILE`): before the load and under it. LOADED is
subtracted, owner by owner, from IDLE, so what start-up allocated (the
GeoIP tree, the TLS configuration) drops out. Prints a Markdown table: KiB
in all, and KiB per in-flight request with `--per N` (the load's
concurrency). Run by heap_profile.sh.
"""

import argparse
import collections
import re
import sys

OWNER = re.compile(r"(rustls|hyper|tokio|h2|tracing\w*|residency_\w+)::")
NOT_OWNER = re.compile(r"hyper::common::buf|bytes::")


def snapshots(text):
    """(number, time, heap bytes, tree lines) of each detailed snapshot."""
    out = []
    for block in text.split("#-----------\nsnapshot=")[1:]:
        number = int(block.split("\n", 1)[0])
        time = int(re.search(r"time=(\d+)", block).group(1))
        heap = int(re.search(r"mem_heap_B=(\d+)", block).group(1))
        if "heap_tree=detailed" in block or "heap_tree=peak" in block:
            tree = [l for l in block.split("\n") if re.match(r"^\s*n\d+:", l)]
            out.append((number, time, heap, tree))
    return out


def shorten(name):
    """Generic arguments beyond the first level as `<…>`."""
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
            out.append("<" if depth == 1 else "<…" if depth == 2 else "")
        elif ch == ">":
            out.append(">" if depth <= 2 else "")
            depth -= 1
        elif depth <= 1:
            out.append(ch)
    return "".join(out)


def attribute(tree):
    """Bytes by owning frame, from the tree's leaves."""
    by = collections.Counter()
    stack = []
    for line in tree:
        m = re.match(r"^(\s*)n(\d+): (\d+) (.*)$", line)
        depth, children, size, desc = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        del stack[depth:]
        stack.append(re.sub(r"^0x[0-9A-F]+: ", "", desc))
        if children or depth == 0:
            continue
        owner = next((f for f in stack[1:]
                      if OWNER.search(f.split(" (")[0]) and not NOT_OWNER.search(f)), stack[-1])
        by[shorten(owner)] += size
    return by


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("idle")
    ap.add_argument("loaded")
    ap.add_argument("--per", type=int, default=0, help="divide by this many in-flight requests")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    (_, _, base_heap, base_tree), (_, _, heap, tree) = (
        snapshots(open(f).read())[-1] for f in (a.idle, a.loaded))
    by = attribute(tree)
    by.subtract(attribute(base_tree))
    heap -= base_heap
    print(f"heap under load minus idle: {heap / 1024:.0f} KiB"
          + (f", {heap / 1024 / a.per:.1f} KiB per in-flight request ({a.per})" if a.per else ""))
    print()
    print("| KiB | KiB per request | allocated by |" if a.per else "| KiB | allocated by |")
    print("|---:|---:|---|" if a.per else "|---:|---|")
    for owner, size in by.most_common(a.top):
        per = f" {size / 1024 / a.per:.1f} |" if a.per else ""
        print(f"| {size / 1024:.1f} |{per} `{owner[:140]}` |")


if __name__ == "__main__":
    main()
