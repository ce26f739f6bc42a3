#!/usr/bin/env python3
"""Every expression of the Grafana dashboard, evaluated by a real Prometheus
scraping a real proxy under a short scripted load.

    python3 deploy/check_dashboard_live.py BINARY [RULES.yml]

Starts `BINARY demo` (proxy, sinks and transparency log in one process) on
free loopback ports, and Debian's `prometheus` scraping its admin listener
every second (with RULES.yml loaded, when given: every rule must evaluate
without error). Sends uploads from every jurisdiction and refusals, and
triggers the rarer events the dashboard shows: a failed and a successful
reload, connections over the admin listener's limit, a failed TLS
handshake, a drained data centre. Then lints the proxy's exposition with
`promtool check metrics` (any problem fails), and asks Prometheus for each panel
target (Grafana's variables replaced: every job, instance and
jurisdiction, a 30 s rate interval) and prints whether it returned data.
Fails when an expression does not parse or returns nothing, except those
listed in NEEDS (they need something the demo does not run). Bounded: every
wait has a deadline; everything started is stopped.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "residency-proxy.json"

# Panels that cannot have data in the demo, and why.
NEEDS = {
    "residency_log_witness_cosignatures_total": "needs [[transparency.witnesses]] (the demo runs none)",
    "residency_log_commit_seconds": "needs transparency.storage = \"postgres\" (the demo's log is a directory)",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait(what, check, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def metric(admin, series):
    _, text = get(f"http://127.0.0.1:{admin}/metrics")
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def upload(port, origin, method="POST", body=b"cpu=0.93"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    conn.request(method, "/v1/telemetry", body=body if method != "GET" else None,
                 headers={"X-Forwarded-For": origin, "Content-Type": "text/plain"})
    status = conn.getresponse().status
    conn.close()
    return status


def load(port, admin, work):
    """The scripted load and the rare events; returns what it did."""
    did = {}
    origins = ["192.0.2.10", "198.51.100.20", "203.0.113.30", "203.0.113.200", "100.64.0.1"]
    statuses = [upload(port, origins[i % len(origins)]) for i in range(100)]
    statuses.append(upload(port, "192.0.2.10", method="GET"))
    did["uploads"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}

    # A failed reload (the demo's config broken), then a good one.
    config = work / "demo" / "demo.toml"
    good = config.read_text()
    config.write_text(good + "\n[this is not toml\n")
    wait("a failed reload", lambda: (metric(admin, 'residency_reloads_total{result="failure"}') or 0) >= 1)
    config.write_text(good)
    wait("a good reload", lambda: (metric(admin, 'residency_reloads_total{result="success"}') or 0) >= 1)
    did["reloads"] = "failure, then success"

    # Over the 16 admin connections one address may hold.
    held = []
    for _ in range(24):
        s = socket.create_connection(("127.0.0.1", admin), timeout=2)
        held.append(s)
    time.sleep(0.5)  # the listener accepts the ones over its limit and closes them
    for s in held:
        s.close()
    wait("admin connections rejected",
         lambda: (metric_raw(admin, 'residency_connections_rejected_total{reason="admin_client_connection_limit"}') or 0) >= 1,
         seconds=10)
    did["admin_client_connection_limit"] = "24 connections held from one address"

    # A TLS handshake that fails: plain bytes on the TLS port.
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            s.recv(64)
        except OSError:
            pass
    did["tls_failure"] = "plain HTTP on the TLS port"

    # A drained data centre, then back.
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/datacenters/zurich/drain", method="POST")
    urllib.request.urlopen(req, timeout=2).read()
    for _ in range(10):
        upload(port, "192.0.2.10")
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/datacenters/zurich/undrain", method="POST")
    urllib.request.urlopen(req, timeout=2).read()
    statuses = [upload(port, origins[i % 3]) for i in range(60)]
    did["after"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return did


def metric_raw(admin, series):
    """As `metric`, but the admin listener may be full: a failed read is None."""
    try:
        return metric(admin, series)
    except OSError:
        return None


def substitute(expr):
    return (expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
            .replace("$__range", "5m").replace("$job", ".*").replace("$instance", ".*")
            .replace("$jurisdiction", ".*"))


def expressions(dash):
    """(where, expr) for every panel target and variable query."""
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            for t in p.get("targets", []):
                out.append((f"{p['title']} [{t['refId']}]", t["expr"]))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query", {})
        q = q.get("query") if isinstance(q, dict) else q
        if q and q.startswith("label_values("):
            out.append((f"variable ${v['name']}", q[len("label_values("):q.rindex(",")]))
    return out


def main():
    binary = Path(sys.argv[1]).resolve()
    rules = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else None
    prometheus = shutil.which("prometheus")
    if not prometheus:
        raise SystemExit("prometheus not found (Debian package `prometheus`)")
    work = Path(tempfile.mkdtemp(prefix="residency-dashboard-"))
    port, admin, log, prom = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        demo = subprocess.Popen(
            [str(binary), "demo", "--port", str(port), "--admin-port", str(admin),
             "--log-port", str(log), "--dir", str(work / "demo")],
            stdout=subprocess.DEVNULL, stderr=open(work / "demo.log", "w"))
        procs.append(demo)
        wait("the demo", lambda: get(f"http://127.0.0.1:{admin}/readyz")[0] == 200)

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "residency-proxy",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}],
        }
        if rules:
            config["rule_files"] = [str(rules)]
        (work / "prometheus.yml").write_text(json.dumps(config))
        server = subprocess.Popen(
            [prometheus, f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{prom}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
        procs.append(server)
        api = f"http://127.0.0.1:{prom}"
        wait("prometheus", lambda: get(f"{api}/-/ready")[0] == 200)
        wait("the first scrape", lambda: json.loads(get(
            f"{api}/api/v1/query?query=" + urllib.parse.quote("up{job='residency-proxy'} == 1"))[1])["data"]["result"])

        did = load(port, admin, work)
        time.sleep(4)  # a few more scrapes and rule evaluations

        # The exposition itself, by Prometheus's own lint (names, units,
        # suffixes, help texts), with every kind of event above counted.
        _, exposition = get(f"http://127.0.0.1:{admin}/metrics")
        promtool = shutil.which("promtool") or "promtool"
        lint = subprocess.run([promtool, "check", "metrics"], input=exposition,
                              capture_output=True, text=True)
        lint_problems = (lint.stdout + lint.stderr).strip()
        if lint.returncode != 0 or lint_problems:
            print(f"promtool check metrics:\n{lint_problems}", file=sys.stderr)
            return 1
        print(f"promtool check metrics: {exposition.count(chr(10) + '# TYPE ')} metric families, no problems")

        dash = json.loads(DASHBOARD.read_text())
        rows, failed = [], []
        for where, expr in expressions(dash):
            query = substitute(expr)
            status, body = None, None
            try:
                status, body = get(f"{api}/api/v1/query?query=" + urllib.parse.quote(query))
                result = json.loads(body)["data"]["result"]
            except urllib.error.HTTPError as e:
                failed.append(f"{where}: Prometheus refused it: {e.read().decode()[:300]}")
                rows.append((where, "ERROR"))
                continue
            need = next((why for m, why in NEEDS.items() if m in expr), None)
            if result:
                rows.append((where, f"data ({len(result)} series)"))
            elif need:
                rows.append((where, f"no data: {need}"))
            else:
                rows.append((where, "NO DATA"))
                failed.append(f"{where}: no data: {query}")
        width = max(len(w) for w, _ in rows)
        for where, state in rows:
            print(f"  {where:<{width}}  {state}")
        print(f"load: {json.dumps(did)}")

        if rules:
            groups = json.loads(get(f"{api}/api/v1/rules")[1])["data"]["groups"]
            evaluated = [r for g in groups for r in g["rules"]]
            bad = [f"{r['name']}: {r.get('lastError')}" for r in evaluated if r.get("health") != "ok"]
            print(f"rules: {len(evaluated)} evaluated against the live metrics, {len(bad)} with errors")
            failed += [f"rule {b}" for b in bad]
        if failed:
            print("\n".join(failed), file=sys.stderr)
            return 1
        print(f"dashboard: {len(rows)} expressions evaluated by Prometheus against a live proxy; "
              f"{sum(1 for _, s in rows if s.startswith('data'))} returned data")
        return 0
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT if p is procs[0] else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP_DASHBOARD_RUN"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
