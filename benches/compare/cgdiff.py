#!/usr/bin/env python3
"""Per-request breakdown from two callgrind profiles of the same proxy binary
(a short and a long batch of scenario A's requests; instructions.py
--breakdown makes them): for every function, (long - short) / requests of
its inclusive cost, its self cost and the number of calls to it.

  python3 benches/compare/cgdiff.py SHORT.out LONG.out REQUESTS [--top 60] [--grep REGEX]

Inclusive cost here is the function's own instructions plus those of every
call it makes (recursive calls of a function to itself are not added twice).
Functions that the compiler inlined count in their caller. Standard library
only; the profiles must be written with --compress-strings=no.
"""

import argparse
import re
from collections import defaultdict


def parse(path):
    """-> (self cost, inclusive cost, calls into) per function name."""
    self_c = defaultdict(int)
    incl = defaultdict(int)
    calls_in = defaultdict(int)
    edges = defaultdict(lambda: [0, 0])
    fn = None
    cfn = None
    pending_calls = None  # (count) of the calls= line whose cost line comes next
    with open(path, errors="replace") as f:
        for line in f:
            c = line[0]
            if c == "f" and line.startswith("fn="):
                fn = line[3:].rstrip("\n")
                cfn = None
            elif c == "c":
                if line.startswith("cfn="):
                    cfn = line[4:].rstrip("\n")
                elif line.startswith("calls="):
                    pending_calls = int(line[6:].split()[0])
            elif c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_calls is not None:
                    if cfn != fn:
                        incl[fn] += cost
                    calls_in[cfn] += pending_calls
                    e = edges[(fn, cfn)]
                    e[0] += pending_calls
                    e[1] += cost
                    pending_calls = None
                else:
                    self_c[fn] += cost
                    incl[fn] += cost
    return self_c, incl, calls_in, edges


def short_name(name, width=110):
    # Drop the ::h<hash> suffix and generic noise to keep the table readable.
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def diff(short, long_, n):
    s_self, s_incl, s_calls, _ = parse(short)
    l_self, l_incl, l_calls, _ = parse(long_)
    names = set(l_incl) | set(s_incl) | set(l_calls)
    rows = []
    for k in names:
        rows.append((k,
                     (l_incl.get(k, 0) - s_incl.get(k, 0)) / n,
                     (l_self.get(k, 0) - s_self.get(k, 0)) / n,
                     (l_calls.get(k, 0) - s_calls.get(k, 0)) / n))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("short")
    ap.add_argument("long")
    ap.add_argument("requests", type=int, help="requests in the long batch minus the short one")
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--grep", help="only functions whose name matches this regex")
    ap.add_argument("--by", choices=("incl", "self", "calls"), default="incl")
    ap.add_argument("--tree", help="instead: the call tree below the function matching this regex "
                    "(edges of at least --min instructions per request, --depth levels)")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--min", type=float, default=300)
    ap.add_argument("--callers", help="instead: the callers of the functions matching this regex, per request")
    args = ap.parse_args()
    if args.tree:
        s, l = parse(args.short)[3], parse(args.long)[3]
        out = defaultdict(list)
        for (f, c), (n, cost) in l.items():
            sn, sc = s.get((f, c), (0, 0))
            out[f].append((c, (n - sn) / args.requests, (cost - sc) / args.requests))
        rx = re.compile(args.tree)
        roots = [f for f in out if rx.search(f)]

        def walk(f, depth, seen):
            if depth > args.depth:
                return
            for c, n, cost in sorted(out.get(f, ()), key=lambda t: -t[2]):
                if cost < args.min or c in seen:
                    continue
                print(f"{cost:10.0f} {n:7.2f}  {'  ' * depth}{short_name(c, 120)}")
                walk(c, depth + 1, seen | {c})

        for r in roots:
            print(f"== {short_name(r, 150)}")
            walk(r, 0, {r})
        return
    if args.callers:
        rx = re.compile(args.callers)
        s, l = parse(args.short)[3], parse(args.long)[3]
        agg = defaultdict(lambda: [0.0, 0.0])
        for (f, c), (n, cost) in l.items():
            if rx.search(c or ""):
                sn, sc = s.get((f, c), (0, 0))
                agg[(f, c)][0] += (n - sn) / args.requests
                agg[(f, c)][1] += (cost - sc) / args.requests
        print(f"{'incl/req':>10} {'calls/req':>9}  caller -> callee")
        for (f, c), (n, cost) in sorted(agg.items(), key=lambda kv: -kv[1][1])[: args.top]:
            print(f"{cost:10.0f} {n:9.2f}  {short_name(f, 90)} -> {short_name(c, 40)}")
        return
    rows = diff(args.short, args.long, args.requests)
    if args.grep:
        rx = re.compile(args.grep)
        rows = [r for r in rows if rx.search(r[0])]
    key = {"incl": 1, "self": 2, "calls": 3}[args.by]
    rows.sort(key=lambda r: -r[key])
    print(f"{'incl/req':>10} {'self/req':>10} {'calls/req':>9}  function")
    for name, inc, slf, calls in rows[: args.top]:
        print(f"{inc:10.0f} {slf:10.0f} {calls:9.2f}  {short_name(name)}")


if __name__ == "__main__":
    main()
