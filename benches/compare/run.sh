#!/usr/bin/env bash
# One entry point for the proxy comparison (see README.md next to this file):
# installs what is missing, builds residency-proxy, the sink and the floor, runs every
# scenario for nginx, HAProxy and residency-proxy, writes out/results.{json,md}
# and out/chart.svg, and prints the Markdown table.
#
#   benches/compare/run.sh                      # everything, 10 s per point
#   DURATION=5 benches/compare/run.sh           # shorter points
#   benches/compare/run.sh --scenarios A,B --proxies nginx,residency-proxy
#   SKIP_INSTALL=1 SKIP_BUILD=1 benches/compare/run.sh   # reuse what is there
#   SKIP_INSTRUCTIONS=1 benches/compare/run.sh  # without the callgrind/strace counts
#
# Extra arguments go to bench.py (`python3 bench.py --help`). Needs root for
# apt-get (Debian); runs everything on loopback; bounded by BENCH_TIMEOUT
# (default 2100 s) for the measurement part.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out"
T0=$(date +%s)
say() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------- install --
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  pkgs=()
  command -v nginx   >/dev/null || pkgs+=(nginx)
  [[ -e /usr/lib/nginx/modules/ngx_http_geoip2_module.so ]] || pkgs+=(libnginx-mod-http-geoip2)
  command -v haproxy >/dev/null || pkgs+=(haproxy)
  command -v wrk     >/dev/null || pkgs+=(wrk)
  command -v h2load  >/dev/null || pkgs+=(nghttp2-client)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v python3 >/dev/null || pkgs+=(python3)
  command -v valgrind >/dev/null || pkgs+=(valgrind)
  command -v strace  >/dev/null || pkgs+=(strace)
  if (( ${#pkgs[@]} )); then
    say "apt-get install ${pkgs[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    # policy-rc.d may keep the packaged services from starting; either way they
    # listen on 80 / nothing, not on the bench ports.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if ! command -v oha >/dev/null && [[ ! -x "$HOME/.cargo/bin/oha" ]]; then
    say "cargo install oha --locked (once; takes several minutes)"
    cargo install oha --locked
  fi
fi
export OHA="${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}"

# ------------------------------------------------------------------ build --
if [[ -z "${SKIP_BUILD:-}" ]]; then
  say "cargo build --release (residency-proxy)"
  (cd "$ROOT" && cargo build --release --bin residency-proxy)
  say "cargo build --release (compare-sink)"
  (cd "$HERE/sink" && CARGO_TARGET_DIR="$ROOT/target/compare-sink" cargo build --release)
  say "cargo build --release (compare-floor)"
  (cd "$HERE/floor" && CARGO_TARGET_DIR="$ROOT/target/compare-floor" cargo build --release)
fi
export RP_BIN="${RP_BIN:-$ROOT/target/release/residency-proxy}"
export SINK_BIN="${SINK_BIN:-$ROOT/target/compare-sink/release/compare-sink}"
T1=$(date +%s)

# ------------------------------------------------------------------- run --
# Scenario F holds 10,000 connections: use the whole fd allowance (a sandbox
# may forbid raising the hard limit; 20,000 is enough).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < 12000 )); then
  say "WARNING: open-file limit $(ulimit -n) is below what scenario F needs (10,000 + upstreams)"
fi
mkdir -p "$OUT"
say "measuring (bench.py $*)"
set +e
timeout -s INT -k 30 "${BENCH_TIMEOUT:-2100}" python3 "$HERE/bench.py" "$@"   # also logs to out/bench.log
status=$?
set -e
if (( status != 0 )); then
  say "bench.py failed (exit $status); see $OUT/bench.log"
  exit "$status"
fi
# Instruction and system-call counts per request (A): noise-free, ~70 s.
if [[ -z "${SKIP_INSTRUCTIONS:-}" ]]; then
  say "counting instructions and system calls per request (instructions.py)"
  if ! timeout -s INT -k 30 600 python3 "$HERE/instructions.py" --proxies nginx,haproxy,residency-proxy,floor > "$OUT/instructions.log" 2>&1; then
    say "instructions.py failed; see $OUT/instructions.log"
  fi
fi
python3 "$HERE/report.py" "$OUT"
T2=$(date +%s)
say "done: install+build $((T1 - T0)) s, measurement+report $((T2 - T1)) s, total $((T2 - T0)) s"
