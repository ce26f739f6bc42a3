#!/usr/bin/env bash
# The default runtime on one pinned core against `runtime.worker_threads = 1`
# (issue: "the right runtime by default"). Builds nothing: uses $RP_BIN,
# else target/release/residency-proxy. The proxy is pinned to core 0, wrk (1
# thread, 32 keep-alive connections, 1 KiB POSTs from a CH address, 8 s) and
# the reference sink to core 1; CPU is the proxy's utime+stime from /proc.
# Three interleaved rounds (access log off); prints µs of proxy CPU per
# request for each, and the scheduler the start log names.
#
#   [RP_BIN=path/to/residency-proxy] benches/compare/runtime_default.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${RP_BIN:-$ROOT/target/release/residency-proxy}
D=$(mktemp -d)
trap 'kill "${SINK:-0}" 2>/dev/null || true; rm -rf "$D"' EXIT
# The demo writes a certificate, a GeoIP database and a config; then it stops.
"$BIN" demo --port 18443 --admin-port 19900 --log-port 19443 --dir "$D/demo" >/dev/null 2>&1 &
DEMO=$!
sleep 3
kill -INT "$DEMO"
wait "$DEMO" || true
taskset -c 1 "$BIN" --log-level error sink --datacenter zurich=127.0.0.1:18081 \
  --datacenter frankfurt=127.0.0.1:18082 --datacenter virginia=127.0.0.1:18083 \
  --admin 127.0.0.1:18100 --max-records 1 >/dev/null 2>&1 &
SINK=$!
sleep 1
# The demo's config without its log and health checks, to the sink.
python3 - "$D/demo" <<'PY'
import re, sys
d = sys.argv[1]
t = open(f"{d}/demo.toml").read().split("\n[transparency]")[0]
for dc, port in (("zurich", 18081), ("frankfurt", 18082), ("virginia", 18083)):
    t = re.sub(rf'(\[datacenters\.{dc}\][^\[]*upstreams = \[)"[^"]*"', rf'\g<1>"http://127.0.0.1:{port}"', t)
t += '\n[health]\npath = "off"\n'
open(f"{d}/default.toml", "w").write(t)
open(f"{d}/one.toml", "w").write(t + "[runtime]\nworker_threads = 1\n")
PY
cat > "$D/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["X-Forwarded-For"] = "192.0.2.10"
LUA
for round in 1 2 3; do
  for cfg in default one; do
    taskset -c 0 "$BIN" --log-level "info,residency_proxy::access=off" serve --config "$D/demo/$cfg.toml" >/dev/null 2>"$D/$cfg.err" &
    P=$!
    sleep 1.5
    s0=$(awk '{print $14+$15}' "/proc/$P/stat")
    out=$(taskset -c 1 wrk -t1 -c32 -d8s -s "$D/post.lua" https://127.0.0.1:18443/v1/telemetry 2>&1)
    s1=$(awk '{print $14+$15}' "/proc/$P/stat")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    scheduler=$(grep -o 'scheduler="[a-z_]*"' "$D/$cfg.err" | head -1)
    tick=$(getconf CLK_TCK)
    us=$(python3 -c "print(round(($s1 - $s0) * 1e6 / $tick / $reqs, 2))")
    echo "round $round $cfg: $reqs requests, $us us CPU/request, $scheduler"
    echo "$cfg $us" >> "$D/results"
    kill -TERM "$P"
    wait "$P" 2>/dev/null || true
  done
done
python3 - "$D/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    cfg, us = line.split()
    runs.setdefault(cfg, []).append(float(us))
m = {cfg: statistics.median(v) for cfg, v in runs.items()}
print(f"median: default {m['default']:.2f} us, worker_threads = 1 {m['one']:.2f} us: x{m['default'] / m['one']:.3f}")
PY
