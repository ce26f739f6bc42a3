#!/usr/bin/env python3
"""Turns out/raw/*.json (written by bench.py) into

  out/results.json  every metric per proxy, ratios, flags, run metadata
  out/results.md    the Markdown tables (also printed to stdout)
  out/chart.svg     relative cost per metric, nginx = 1 (longer is worse)

Standard library only (the SVG is written by hand).
usage: report.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out"
RAW = OUT / "raw"
PROXIES = ["nginx", "haproxy", "residency-proxy"]
RP = "residency-proxy"
DEFAULT = "rp-default"
COLORS = {"nginx": "#2f7d32", "haproxy": "#1f5fa8", RP: "#c2410c"}

# Thresholds for flags on a measurement point.
NOISY_OTHER = 0.10         # >10% of a core used by other processes: something else ran there
GEN_BOUND_CORE1 = 0.95     # core 1 (load generator + sink) saturated while the proxy was not
RATE_MISS = 0.95           # open loop achieved < 95% of the target rate


def load():
    raw = {}
    for f in sorted(RAW.glob("*.json")):
        if f.name == "meta.json":
            continue
        j = json.loads(f.read_text())
        raw.setdefault(j["proxy"], {})[j["scenario"]] = j
    meta = json.loads((RAW / "meta.json").read_text()) if (RAW / "meta.json").exists() else {}
    return raw, meta


def point(raw, proxy, sc, name):
    for p in raw.get(proxy, {}).get(sc, {}).get("points", []):
        if p["point"] == name:
            return p
    return None


def flags(p):
    """Why a point may not be comparable; [] = clean."""
    if p is None:
        return ["MISSING"]
    out = []
    if p.get("errors", 0) or p.get("non2xx", 0):
        out.append(f"ERR({p.get('errors', 0)} errors, {p.get('non2xx', 0)} non-2xx)")
    if p.get("tool") == "idle_conns.py":
        opened = (p.get("client") or {}).get("opened", 0)
        est = p.get("server_side_established") or 0
        if opened and est < 0.99 * opened:
            out.append(f"CLOSED-IDLE(only {est} of {opened} connections still open at the RSS reading)")
    if p.get("tool") != "idle_conns.py":  # F measures memory, not time
        other = max(p.get("core0_other") or 0, p.get("core1_other") or 0)
        if other > NOISY_OTHER:
            out.append(f"NOISY(other processes: core0 {p.get('core0_other', 0):.0%}, "
                       f"core1 {p.get('core1_other', 0):.0%})")
        if (p.get("core1_util") or 0) > GEN_BOUND_CORE1 and (p.get("proxy_core_util") or 0) < 0.90:
            out.append(f"GEN-BOUND(core1 {p['core1_util']:.0%}, proxy {p.get('proxy_core_util', 0):.0%})")
    if p.get("target_rps") and p.get("rps", 0) < RATE_MISS * p["target_rps"]:
        if (p.get("proxy_core_util") or 0) >= 0.90:
            out.append(f"SATURATED({p['rps']:.0f} of {p['target_rps']}/s, proxy core "
                       f"{p['proxy_core_util']:.0%} busy)")
        else:
            out.append(f"RATE-MISS({p['rps']:.0f} of {p['target_rps']}/s)")
    if "sink_requests" in p and p.get("ok", 0) > p["sink_requests"]:
        out.append(f"SINK-MISMATCH(sink {p['sink_requests']} < ok {p['ok']})")
    return out


def per(v, n, scale=1.0):
    return v / n * scale if v is not None and n else None


# (id, scenario, point, label, unit, higher_is_better, fn(point) -> value)
METRICS = [
    ("A.max_rps", "A", "closed", "A: max throughput, 1 KiB POST, HTTP/1.1 keep-alive", "req/s", True,
     lambda p: p.get("rps")),
    ("A.cpu_per_req", "A", "closed", "A: proxy CPU per request at max throughput", "µs", False,
     lambda p: per(p.get("proxy_cpu_s"), p.get("requests"), 1e6)),
    ("A.user_per_req", "A", "closed", "A: … of which user space (utime)", "µs", False,
     lambda p: per(p.get("proxy_user_s"), p.get("requests"), 1e6)),
    ("A.sys_per_req", "A", "closed", "A: … of which kernel (stime)", "µs", False,
     lambda p: per(p.get("proxy_sys_s"), p.get("requests"), 1e6)),
    ("A.open50_cpu_per_req", "A", "open50", "A: proxy CPU per request at 50% of nginx capacity", "µs",
     False, lambda p: per(p.get("proxy_cpu_s"), p.get("requests"), 1e6)),
    ("A.open25_p99", "A", "open25", "A: p99 latency at 25% of nginx capacity", "ms", False,
     lambda p: p.get("p99_ms")),
    ("A.open50_p99", "A", "open50", "A: p99 latency at 50% of nginx capacity", "ms", False,
     lambda p: p.get("p99_ms")),
    ("A.open75_p99", "A", "open75", "A: p99 latency at 75% of nginx capacity", "ms", False,
     lambda p: p.get("p99_ms")),
    ("B.conn_per_cpu_s", "B", "new-conn", "B: new TLS connections (full handshake + 1 KiB POST) per proxy CPU-second",
     "conn/CPU-s", True, lambda p: per(p.get("ok"), p.get("proxy_cpu_s"))),
    ("B.cpu_per_conn", "B", "new-conn", "B: proxy CPU per new connection", "µs", False,
     lambda p: per(p.get("proxy_cpu_s"), p.get("ok"), 1e6)),
    ("B.user_per_conn", "B", "new-conn", "B: … of which user space (utime)", "µs", False,
     lambda p: per(p.get("proxy_user_s"), p.get("ok"), 1e6)),
    ("C.mib_per_cpu_s", "C", "1MiB-x64", "C: uploaded MiB per proxy CPU-second (1 MiB, 64 in flight)",
     "MiB/CPU-s", True, lambda p: per(p.get("bytes", 0) / 1048576, p.get("proxy_cpu_s"))),
    ("C.user_per_mib", "C", "1MiB-x64", "C: user-space CPU per MiB (utime)", "µs", False,
     lambda p: per(p.get("proxy_user_s"), p.get("bytes", 0) / 1048576, 1e6)),
    ("C.throughput", "C", "1MiB-x64", "C: upload throughput", "MiB/s", True,
     lambda p: per(p.get("bytes", 0) / 1048576, p.get("gen_duration_s"))),
    ("C.rss_per_upload", "C", "1MiB-x64", "C: peak RSS per in-flight upload ((VmHWM - idle RSS)/64)",
     "KiB", False, lambda p: p.get("peak_rss_per_upload_kib")),
    ("D.cpu_per_req", "D", None, "D: proxy CPU per request, HTTP/2 multiplexed 1 KiB POST", "µs", False,
     lambda p: per(p.get("proxy_cpu_s"), p.get("requests"), 1e6)),
    ("D.user_per_req", "D", None, "D: … of which user space (utime)", "µs", False,
     lambda p: per(p.get("proxy_user_s"), p.get("requests"), 1e6)),
    ("D.rps", "D", None, "D: HTTP/2 throughput", "req/s", True, lambda p: p.get("rps")),
    ("F.kib_per_conn", "F", None, "F: user-space memory per idle TLS connection ((RSS after - before)/N)",
     "KiB", False, lambda p: p.get("kib_per_idle_conn")),
]


def first_point(raw, proxy, sc):
    pts = raw.get(proxy, {}).get(sc, {}).get("points", [])
    return pts[0] if pts else None


def fmt(v, unit=""):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s


def verdict(ratio, higher_better):
    """'1.8× worse' / '1.2× better' / 'same' for residency-proxy vs a reference."""
    if ratio is None or ratio == 0:
        return "—"
    cost = (1 / ratio) if higher_better else ratio   # >1: residency-proxy is worse
    if 0.97 <= cost <= 1.03:
        return "≈ same"
    return f"{cost:.2f}× worse" if cost > 1 else f"{1 / cost:.2f}× better"


def build(raw, meta):
    proxies = [p for p in PROXIES if p in raw]
    metrics = []
    for mid, sc, pt, label, unit, hb, fn in METRICS:
        vals, fl = {}, {}
        for proxy in proxies:
            p = point(raw, proxy, sc, pt) if pt else first_point(raw, proxy, sc)
            vals[proxy] = fn(p) if p else None
            fl[proxy] = flags(p)
        r = {}
        for ref in ("nginx", "haproxy"):
            if vals.get(RP) is not None and vals.get(ref):
                r[ref] = vals[RP] / vals[ref]
        metrics.append({"id": mid, "scenario": sc, "label": label, "unit": unit,
                        "higher_is_better": hb, "values": vals, "flags": fl,
                        "ratio_rp_to": r,
                        "verdict_vs": {k: verdict(v, hb) for k, v in r.items()}})
    # rp-default (scenario A only): residency-proxy without a [runtime]
    # section, as rows of their own in residency-proxy's column.
    default_rows = []
    if DEFAULT in raw:
        for mid, sc, pt, label, unit, hb, fn in METRICS:
            if sc != "A":
                continue
            p = point(raw, DEFAULT, sc, pt) if pt else first_point(raw, DEFAULT, sc)
            row = next(m for m in metrics if m["id"] == mid)
            vals = {**row["values"], RP: fn(p) if p else None}
            fl = {**row["flags"], RP: flags(p)}
            r = {ref: vals[RP] / vals[ref] for ref in ("nginx", "haproxy")
                 if vals.get(RP) is not None and vals.get(ref)}
            default_rows.append({"id": mid.replace("A.", "A.default.", 1), "scenario": sc,
                            "label": label.replace("A: ", "A, default runtime (no [runtime] section): ", 1),
                            "unit": unit, "higher_is_better": hb, "values": vals, "flags": fl,
                            "ratio_rp_to": r,
                            "verdict_vs": {k: verdict(v, hb) for k, v in r.items()}})
    after_a = max((i for i, m in enumerate(metrics) if m["scenario"] == "A"), default=-1) + 1
    metrics[after_a:after_a] = default_rows
    latency = []
    for name in ("closed", "open25", "open50", "open75"):
        row = {"point": name, "values": {}}
        for proxy in proxies:
            p = point(raw, proxy, "A", name)
            if p:
                row["values"][proxy] = {k: p.get(k) for k in (
                    "target_rps", "rps", "p50_ms", "p99_ms", "max_ms", "ok", "non2xx", "errors",
                    "proxy_core_util", "core1_util", "p99_reps_ms")}
                row["values"][proxy]["cpu_per_req_us"] = per(p.get("proxy_cpu_s"), p.get("requests"), 1e6)
                row["values"][proxy]["flags"] = flags(p)
        latency.append(row)
    threads = {proxy: max((pt.get("proxy_threads") or 0)
                          for sc in raw[proxy].values() for pt in sc["points"]) for proxy in proxies}
    procs = {proxy: max((pt.get("proxy_processes") or 0)
                        for sc in raw[proxy].values() for pt in sc["points"]) for proxy in proxies}
    all_flags = sorted({f"{proxy} {m['id']}: {f}" for m in metrics
                        for proxy, fs in m["flags"].items() for f in fs})
    return {"meta": meta, "proxies": proxies, "metrics": metrics, "latency": latency,
            "threads": threads, "processes": procs, "flags": all_flags, "raw": raw}


def markdown(res):
    px = res["proxies"]
    meta = res["meta"]
    L = []
    a = meta.get("args", {})
    L.append(f"## Proxy comparison — {meta.get('started', '?')}")
    L.append("")
    L.append(f"Host: {meta.get('host', {}).get('cpus')} cores ({meta.get('host', {}).get('model')}), "
             f"kernel {meta.get('host', {}).get('kernel')}. Proxies pinned to core 0, load generator "
             f"and sink to core 1. {a.get('duration')} s per measurement point, "
             f"{a.get('warmup')} s warm-up. Measurements took {meta.get('elapsed_s')} s"
             + (f", of which {meta['waited_for_quiet_s']} s waiting for other load to stop"
                if meta.get("waited_for_quiet_s") else "") + ".")
    b = meta.get("residency_proxy_build") or {}
    if b:
        L.append("")
        L.append(f"residency-proxy: git {b.get('git_head')}"
                 + (" with uncommitted changes in src/" if b.get("uncommitted_changes_in_src") else "")
                 + f", binary built {b.get('binary_mtime')}, sha256 {str(b.get('binary_sha256'))[:16]}.")
    sh = meta.get("shield")
    L.append("")
    L.append(f"Core 0 shielded: {sh['threads_moved']} other threads moved to core 1 for the run "
             f"({sh['threads_unmovable']} per-CPU kernel threads stay)." if sh else
             "Core 0 NOT shielded (--no-shield): other threads may run on the proxy core.")
    L.append("")
    hdr = "| metric | unit | " + " | ".join(px) + " | rp / nginx | rp / haproxy | residency-proxy is |"
    L.append(hdr)
    L.append("|" + "---|" * (len(px) + 5))
    for m in res["metrics"]:
        vals = " | ".join(fmt(m["values"].get(p)) + (" ⚠" if m["flags"].get(p) else "") for p in px)
        rn = m["ratio_rp_to"].get("nginx")
        rh = m["ratio_rp_to"].get("haproxy")
        v = "; ".join(f"{m['verdict_vs'][k]} than {k}" for k in ("nginx", "haproxy") if k in m["verdict_vs"])
        arrow = "↑" if m["higher_is_better"] else "↓"
        L.append(f"| {m['label']} | {m['unit']} {arrow} | {vals} | "
                 f"{fmt(rn) if rn is not None else '—'} | {fmt(rh) if rh is not None else '—'} | {v} |")
    L.append("")
    L.append("↑ higher is better, ↓ lower is better; ratios are residency-proxy's value divided by the "
             "other's; ⚠ = the point has a flag (listed below).")
    L.append("")
    reps = {p: (point(res["raw"], p, "A", "closed") or {}).get("cpu_reps_us") for p in px}
    if any(reps.values()):
        L.append(f"A's closed-loop rows are the round with the median CPU per request of "
                 f"{a.get('open_reps', 1)} interleaved rounds; every round, sorted (µs): " + "; ".join(
                     f"{p} {' / '.join(fmt(x) for x in r)}" for p, r in reps.items() if r) + ".")
        L.append("")
    creps = {p: first_point(res["raw"], p, "C") or {} for p in px}
    if any(c.get("mib_per_cpu_s_reps") for c in creps.values()):
        n = max(len(c.get("mib_per_cpu_s_reps") or []) for c in creps.values())
        L.append(f"C's rows are medians of {n} interleaved rounds (MiB per CPU-second, user CPU "
                 f"per MiB and throughput from the round with the median MiB per CPU-second; RSS "
                 f"per upload its own median); every round, sorted: MiB per CPU-second " + "; ".join(
                     f"{p} {' / '.join(fmt(x) for x in c['mib_per_cpu_s_reps'])}"
                     for p, c in creps.items() if c.get("mib_per_cpu_s_reps"))
                 + "; peak RSS per upload (KiB) " + "; ".join(
                     f"{p} {' / '.join(fmt(x) for x in c['rss_per_upload_reps_kib'])}"
                     for p, c in creps.items() if c.get("rss_per_upload_reps_kib")) + ".")
        L.append("")
    L.append("### Scenario A latency (1 KiB POST, HTTP/1.1, "
             f"{a.get('conns')} connections; open loop = oha with latency correction)")
    L.append("")
    L.append("Open-loop points: the run with the median p99 of "
             f"{a.get('open_reps', 1)}; the p99 of every run in brackets, sorted.")
    L.append("")
    L.append("| point | " + " | ".join(f"{p} achieved req/s | {p} p50 ms | {p} p99 ms" for p in px) + " |")
    L.append("|---|" + "---|" * (3 * len(px)))
    for row in res["latency"]:
        tgt = next((v.get("target_rps") for v in row["values"].values() if v.get("target_rps")), None)
        name = row["point"] + (f" ({tgt}/s)" if tgt else " (max)")
        cells = []
        for p in px:
            v = row["values"].get(p)
            if not v:
                cells += ["—"] * 3
                continue
            w = " ⚠" if v["flags"] else ""
            reps = v.get("p99_reps_ms") or []
            runs = f" ({' / '.join(fmt(x) for x in reps)})" if len(reps) > 1 else ""
            cells += [fmt(v["rps"]) + w, fmt(v["p50_ms"]), fmt(v["p99_ms"]) + runs]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Threads / processes seen (max over the run): " + ", ".join(
        f"{p} {res['threads'][p]} threads in {res['processes'][p]} process(es)" for p in px) + ".")
    tls = meta.get("tls", {})
    if tls:
        t = next(iter(tls.values()))["tls13"]
        same = len({json.dumps(v, sort_keys=True) for v in tls.values()}) == 1
        L.append(f"TLS negotiated: {t.get('protocol')} {t.get('cipher')} {t.get('group')} "
                 f"ALPN {t.get('alpn')}, {t.get('peer_sig')} certificate, {t.get('tickets')} session "
                 f"tickets per handshake — {'identical for all three' if same else 'NOT identical: see results.json meta.tls'}.")
    # What h2load (B, D) negotiated with each proxy must be the same too.
    for sc in ("B", "D"):
        seen = {}
        for p in px:
            pt = first_point(res["raw"], p, sc)
            if pt and pt.get("tls"):
                seen[p] = json.dumps(pt["tls"], sort_keys=True)
        if seen:
            if len(set(seen.values())) == 1:
                t = json.loads(next(iter(seen.values())))
                L.append(f"Scenario {sc} (h2load): {t.get('protocol')} {t.get('cipher')} "
                         f"{t.get('group')} ALPN {t.get('alpn')} with every proxy.")
            else:
                L.append(f"- PARITY WARNING: scenario {sc}: h2load negotiated different TLS: {seen}")
    for w in meta.get("parity_warnings", []):
        L.append(f"- PARITY WARNING: {w}")
    L.append("")
    if res["flags"]:
        L.append("Flags (ERR: failed or non-2xx requests; NOISY: another process used >10% of a "
                 "core during the point; GEN-BOUND: core 1 (client + sink) saturated while the proxy "
                 "was not, so throughput is capped by the client side — CPU per request stays valid; "
                 "SATURATED: the proxy could not sustain the open-loop rate (its latency then includes "
                 "queueing); RATE-MISS: the open loop fell short of its target with the proxy not "
                 "saturated; SINK-MISMATCH: fewer uploads reached the sink than were acknowledged; "
                 "CLOSED-IDLE: the proxy closed idle connections before F's RSS reading):")
        L.append("")
        for f in res["flags"]:
            L.append(f"- {f}")
    else:
        L.append("No flags: no errors, no interference on core 0, client core never saturated.")
    L.append("")
    counts = (res.get("counts") or {}).get("results")
    if counts:
        base = counts.get("nginx")
        L.append("")
        L.append("### Scenario A per request, counted (instructions.py: callgrind, strace; "
                 "no timing noise)")
        L.append("")
        L.append("| proxy | user-space instructions | system calls | instructions / nginx "
                 "| system calls / nginx |")
        L.append("|---|---|---|---|---|")
        for name, r in counts.items():
            ri = (f"{r['instructions_per_request'] / base['instructions_per_request']:.2f}"
                  if base else "—")
            rs = (f"{r['syscalls_per_request_total'] / base['syscalls_per_request_total']:.2f}"
                  if base else "—")
            label = "floor (floor/: the HTTP and TLS stack alone)" if name == "floor" else name
            L.append(f"| {label} | {r['instructions_per_request']:,} | "
                     f"{r['syscalls_per_request_total']:.2f} | {ri} | {rs} |")
    return "\n".join(L)


def svg(res):
    """Horizontal grouped bars: relative cost vs nginx (1.0), longer = worse."""
    px = res["proxies"]
    rows = []
    for m in res["metrics"]:
        ref = m["values"].get("nginx")
        if not ref:
            continue
        costs = {}
        for p in px:
            v = m["values"].get(p)
            if v:
                costs[p] = (ref / v) if m["higher_is_better"] else (v / ref)
        rows.append((m["label"], m["unit"], costs, m["values"], m["flags"]))
    bar_h, gap, left, width = 14, 14, 430, 420
    group_h = bar_h * len(px) + gap
    top = 60
    height = top + group_h * len(rows) + 50
    vmax = max([c for _, _, cs, _, _ in rows for c in cs.values()] + [1.0])
    vmax = max(1.5, min(vmax, 4.0))  # longer bars are cut at 4× and marked »
    scale = width / vmax
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 330}" height="{height}" '
         'font-family="sans-serif" font-size="11">',
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="10" y="20" font-size="14" font-weight="bold">Relative cost per metric '
         '(nginx = 1; longer is worse; higher-is-better metrics inverted)</text>',
         f'<text x="10" y="38" fill="#555">{esc(res["meta"].get("started", ""))} — '
         f'proxies on core 0, clients + sink on core 1</text>']
    for i, p in enumerate(px):
        o.append(f'<rect x="{left + i * 130}" y="46" width="10" height="10" fill="{COLORS[p]}"/>'
                 f'<text x="{left + i * 130 + 14}" y="55">{p}</text>')
    x1 = left + scale
    o.append(f'<line x1="{x1:.1f}" y1="{top}" x2="{x1:.1f}" y2="{top + group_h * len(rows)}" '
             f'stroke="#888" stroke-dasharray="3,3"/>')
    for gi, (label, unit, costs, values, fl) in enumerate(rows):
        y0 = top + gi * group_h
        short = label if len(label) <= 70 else label[:67] + "…"
        o.append(f'<text x="{left - 6}" y="{y0 + bar_h * len(px) / 2 + 4}" text-anchor="end">'
                 f'{esc(short)}</text>')
        for i, p in enumerate(px):
            c = costs.get(p)
            if c is None:
                continue
            w = min(c, vmax) * scale
            cut = " »" if c > vmax else ""
            y = y0 + i * bar_h
            o.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLORS[p]}"/>')
            warn = " ⚠ " + esc(", ".join(f.split("(")[0] for f in fl.get(p, []))) if fl.get(p) else ""
            o.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 4}">{cut}{c:.2f}× '
                     f'({fmt(values.get(p))} {esc(unit)}){warn}</text>')
    o.append(f'<text x="{x1:.1f}" y="{height - 20}" text-anchor="middle" fill="#555">1.0 = nginx; '
             f'⚠ = flagged point (see results.md)</text>')
    o.append("</svg>")
    return "\n".join(o)


def main():
    raw, meta = load()
    if not raw:
        sys.exit(f"no raw results in {RAW}")
    res = build(raw, meta)
    counts = OUT / "instructions.json"
    # Only counts from this run: instructions.py runs after bench.py.
    if counts.exists() and counts.stat().st_mtime >= (RAW / "meta.json").stat().st_mtime:
        res["counts"] = json.loads(counts.read_text())
    (OUT / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    md = markdown(res)
    (OUT / "results.md").write_text(md)
    (OUT / "chart.svg").write_text(svg(res))
    print(md)
    print(f"written: {OUT / 'results.json'}, {OUT / 'results.md'}, {OUT / 'chart.svg'}")


if __name__ == "__main__":
    main()
