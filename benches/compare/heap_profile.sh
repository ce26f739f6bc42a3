#!/bin/bash
# Where residency-proxy's memory per in-flight upload goes (scenario C's
# load: 64 concurrent 1 MiB HTTPS uploads), by allocation site.
#
#   benches/compare/heap_profile.sh            # after run.sh (it uses out/run)
#   CONNS=64 SECONDS_OF_LOAD=20 benches/compare/heap_profile.sh
#
# Builds the proxy with the system allocator (`--features system-alloc`,
# into target/heap-profile: mimalloc is invisible to valgrind), runs it
# under valgrind's massif on ports apart from bench.py's (48443, 48900,
# sink 48080) with out/run's certificate, database and configuration,
# loads it with wrk, and prints massif_top.py's table: the heap under load
# minus the heap before it, by owning frame, per in-flight upload. Under
# valgrind the proxy is ~50x slower, so each upload stays in flight for
# seconds: the profile is of the in-flight state. The system allocator
# also holds more per block than mimalloc, so these are the proxy's own
# allocations, not its RSS (bench.py's scenario C measures that).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN="$HERE/out/run"
OUT="$HERE/out/heap"
CONNS=${CONNS:-64}
LOAD=${SECONDS_OF_LOAD:-20}
SINK_BIN=${SINK_BIN:-$ROOT/target/compare-sink/release/compare-sink}
for f in "$RUN/residency.toml" "$RUN/post_1m.lua" "$SINK_BIN"; do
  [[ -e "$f" ]] || { echo "missing $f: run benches/compare/run.sh first" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
(cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/heap-profile" \
  cargo build --release --features system-alloc --bin residency-proxy)
BIN="$ROOT/target/heap-profile/release/residency-proxy"

rm -rf "$OUT" && mkdir -p "$OUT"
cp "$RUN/cert.pem" "$RUN/key.pem" "$RUN/bench.mmdb" "$OUT/"
sed -e 's/127.0.0.1:18443/127.0.0.1:48443/; s/127.0.0.1:18900/127.0.0.1:48900/; s/127.0.0.1:18080/127.0.0.1:48080/' \
  "$RUN/residency.toml" > "$OUT/residency.toml"
grep -q 48443 "$OUT/residency.toml" || { echo "unexpected $RUN/residency.toml" >&2; exit 1; }

taskset -c 1 "$SINK_BIN" 127.0.0.1:48080 > "$OUT/sink.log" 2>&1 &
SINK=$!
taskset -c 0 valgrind --tool=massif --vgdb=yes --depth=40 --threshold=0.2 \
  --massif-out-file="$OUT/massif.out" \
  "$BIN" --log-level warn serve --config "$OUT/residency.toml" > "$OUT/proxy.log" 2>&1 &
PROXY=$!
trap 'kill $PROXY $SINK 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  (exec 3<>/dev/tcp/127.0.0.1/48443) 2>/dev/null && break
  kill -0 $PROXY 2>/dev/null || { cat "$OUT/proxy.log" >&2; exit 1; }
  sleep 0.1
done
sleep 2
vgdb --pid=$PROXY detailed_snapshot "$OUT/idle.out" > /dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d"${LOAD}s" --timeout 60s -s "$RUN/post_1m.lua" \
  https://127.0.0.1:48443/v1/telemetry > "$OUT/wrk.txt" &
WRK=$!
sleep $(( LOAD / 2 ))  # every connection has an upload in flight by then
vgdb --pid=$PROXY detailed_snapshot "$OUT/loaded.out" > /dev/null
wait $WRK
kill -INT $PROXY
wait $PROXY || true
kill $SINK 2>/dev/null || true
grep -E "Requests/sec" "$OUT/wrk.txt" || true
python3 "$HERE/massif_top.py" "$OUT/idle.out" "$OUT/loaded.out" --per "$CONNS" | tee "$OUT/heap.md"
