#!/usr/bin/env python3
"""Independent checks of the Helm chart and of its renders by deploy/helm_render.py.

Helm renders the chart (helm_render.py, with Helm's Go SDK); this script
reads the rendered files with PyYAML and tomllib only, so it does not trust
the SDK, which is young:

1. Statically: every `.Values.a.b` a template names exists in values.yaml
   (Helm renders a missing key as empty without a word), and the `config`
   value is a proxy configuration that agrees with `httpsPort` and
   `geoip.databaseFile`, keeps its certificates in the mounted TLS
   directory, and has no [transparency] (the chart renders it).
2. That the SDK rendered what the chart says, in every scenario: names from
   `fullnameOverride` or the release, Helm's labels (chart name-version,
   managed-by Helm), the proxy's image and ports from the values, replicas
   left to the HPA or set from `replicaCount`.
3. In every scenario: the ConfigMap carries the `config` value unchanged
   plus the [transparency] table the values call for; the files it names are
   Secrets projected into the pod, not world-readable; the log's port,
   Service, NetworkPolicy rules, CloudNativePG Cluster (connection pool
   within max_connections), key Secret and Ingress agree with it; a
   PrometheusRule exists exactly when enabled and carries the rules file
   (--rules); no rendered file mixes a custom resource with other objects
   (validate.sh leaves custom resources out of kubernetes-validate by file).
4. The default render holds the same objects with the same `spec` as the
   plain manifests (--plain; Deployment replicas aside: the chart leaves
   them to the HPA), and the chart's CloudNativePG Cluster is the one of
   --plain/examples/.

Usage: check_helm_renders.py CHART_DIR RENDER_DIR [--plain DIR] [--rules FILE]
RENDER_DIR is helm_render.py's --out: SCENARIO/values.yaml (the overrides)
and SCENARIO/templates/*.yaml. Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import copy
import glob
import os
import re
import sys
import tomllib
import urllib.parse

import yaml

RELEASE = "residency-proxy"
CONFIG_DIR = "/etc/residency-proxy"
# Custom resources: kubernetes-validate has no schema for their kinds.
CUSTOM_RESOURCE = re.compile(r"^(monitoring\.coreos\.com|postgresql\.cnpg\.io)/")


def deep_merge(base, override):
    """Helm's coalescing of values: maps merge, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def differences(a, b, path):
    """Paths where two parsed YAML values differ (a: the chart's, b: the plain one)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                yield f"{path}.{k} (only in the plain manifest)"
            elif k not in b:
                yield f"{path}.{k} (only in the chart)"
            else:
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: chart {a!r} vs plain {b!r}"


def static_checks(chart_dir, values):
    errs = []
    for path in sorted(glob.glob(os.path.join(chart_dir, "templates", "*"))):
        src = open(path).read()
        for ref in sorted(set(re.findall(r"(?<![A-Za-z0-9_])\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", src))):
            node = values
            for part in ref.strip(".").split("."):
                node = node.get(part) if isinstance(node, dict) and part in node else KeyError
            if node is KeyError:
                errs.append(f"{os.path.relpath(path, chart_dir)}: .Values{ref} is not in values.yaml")
    try:
        cfg = tomllib.loads(values["config"])
        db, want = cfg["geoip"]["database"], f"/var/lib/GeoIP/{values['geoip']['databaseFile']}"
        if db != want:
            errs.append(f"values.yaml: config geoip.database {db!r} != {want!r} (geoip.databaseFile)")
        if "transparency" in cfg and values["transparency"]["enabled"]:
            errs.append("values.yaml: config has [transparency]; the chart renders it from `transparency`")
        ports = [int(lst["address"].rsplit(":", 1)[1]) for lst in cfg["listeners"]]
        if values["httpsPort"] not in ports:
            errs.append(f"values.yaml: httpsPort {values['httpsPort']} is not a listener port {ports}")
        for lst in cfg["listeners"]:
            for c in lst.get("tls", {}).get("certificates", []):
                for path in (c["cert"], c["key"]):
                    if not path.startswith(f"{CONFIG_DIR}/tls/"):
                        errs.append(f"values.yaml: config certificate {path} is outside {CONFIG_DIR}/tls/")
    except (tomllib.TOMLDecodeError, KeyError, ValueError, IndexError, TypeError) as e:
        errs.append(f"values.yaml: config is not a valid proxy configuration: {e!r}")
    return errs


def check_sdk(chart, values, objs):
    """What any Helm must have rendered from these values, computed here."""
    errs = []
    fullname = values["fullnameOverride"] or RELEASE  # the release name contains the chart name
    labels = {"helm.sh/chart": f"{chart['name']}-{chart['version']}", "app.kubernetes.io/managed-by": "Helm",
              "app.kubernetes.io/instance": RELEASE}
    for d in objs:
        got = {k: d["metadata"].get("labels", {}).get(k) for k in labels}
        if got != labels:
            errs.append(f"{d['kind']}/{d['metadata']['name']}: labels {got}, Helm would set {labels}")
    deps = [d for d in objs if d["kind"] == "Deployment"]
    if [d["metadata"]["name"] for d in deps] != [fullname]:
        return errs + [f"expected one Deployment {fullname}, got {[d['metadata']['name'] for d in deps]}"]
    spec = deps[0]["spec"]
    proxy = next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "residency-proxy")
    image = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    if proxy["image"] != image:
        errs.append(f"proxy image {proxy['image']!r}, the values say {image!r}")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    if (ports.get("https"), ports.get("admin")) != (values["httpsPort"], values["adminPort"]):
        errs.append(f"proxy ports {ports}, the values say https {values['httpsPort']}, admin {values['adminPort']}")
    want = None if values["autoscaling"]["enabled"] else values["replicaCount"]
    if spec.get("replicas") != want:
        errs.append(f"Deployment replicas {spec.get('replicas')!r}, expected {want!r}")
    return errs


def expected_transparency(values, fullname):
    """The [transparency] table the chart must render for these values, and
    the name of the CloudNativePG cluster it points at."""
    t = values["transparency"]
    pg = t["postgres"]
    cnpg = pg["cnpg"]
    cluster = (cnpg.get("clusterName") or f"{fullname}-log-db")[:50].rstrip("-")
    want = {
        "storage": "postgres",
        "origin": t["origin"],
        "signing_key": f"{CONFIG_DIR}/log/signing.key",
        "address": f"0.0.0.0:{t['port']}",
        "max_connections_per_client": int(t["maxConnectionsPerClient"]),
        "requests_per_second_per_client": int(t["requestsPerSecondPerClient"]),
        "checkpoint_interval": t["checkpointInterval"],
        "receipts": t["receipts"],
        "on_write_error": t["onWriteError"],
        "postgres": {
            "url": pg["url"] or f"postgres://{cnpg['owner']}@{cluster}-rw:5432/{cnpg['database']}?sslmode=require",
            "password_file": f"{CONFIG_DIR}/log-db/password",
            "timeout": pg["timeout"],
            "max_pending": int(pg["maxPending"]),
            "pool_size": int(pg["poolSize"]),
        },
    }
    if not pg["ca"]["systemRoots"]:
        want["postgres"]["ca"] = f"{CONFIG_DIR}/log-db/ca.crt"
    if t.get("witnesses"):
        want["witnesses"] = [{k: v for k, v in w.items() if v} for w in t["witnesses"]]
    return want, cluster


def projected_files(pod, container):
    """The files the `config` projected volume puts into `container`:
    path in the container -> (kind, object name, key, mode). Also used by
    deploy/validate.sh for the plain manifests."""
    vol = next(v for v in pod["volumes"] if v["name"] == "config")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    files = {}
    for src in vol["projected"]["sources"]:
        for kind in ("configMap", "secret"):
            for it in src.get(kind, {}).get("items", []):
                files[f"{mount}/{it['path']}"] = (
                    kind, src[kind]["name"], it["key"], it.get("mode", vol["projected"].get("defaultMode", 0o644)))
    return files


def check_fleet(values, objs):
    """The ConfigMap and the transparency log's pieces in one render agree
    with each other and with the values."""
    errs = []
    kinds: dict[str, list] = {}
    for d in objs:
        kinds.setdefault(d["kind"], []).append(d)
    dep = kinds["Deployment"][0]
    fullname = dep["metadata"]["name"]
    cfg = tomllib.loads(kinds["ConfigMap"][0]["data"]["config.toml"])
    t = cfg.pop("transparency", None)
    if cfg != tomllib.loads(values["config"]):
        errs.append("ConfigMap: config.toml (less [transparency]) differs from the config value")
    pod = dep["spec"]["template"]["spec"]
    proxy = next(c for c in pod["containers"] if c["name"] == "residency-proxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    services = {d["metadata"]["name"]: d for d in kinds.get("Service", [])}
    if not values["transparency"]["enabled"]:
        if t is not None or "log" in ports or f"{fullname}-log" in services or "Cluster" in kinds:
            errs.append("transparency.enabled is false, yet [transparency], a log port, Service or Cluster is rendered")
        return errs
    want, cluster = expected_transparency(values, fullname)
    if t != want:
        return errs + [f"[transparency] is {t!r}, the values call for {want!r}"]
    projected = projected_files(pod, proxy)
    pg = t["postgres"]
    for path in (t["signing_key"], pg["password_file"], pg.get("ca")):
        src = projected.get(path)
        if path is None:
            continue
        if src is None or src[0] != "secret":
            errs.append(f"{path} is not a Secret projected into the config volume")
        elif src[3] & 0o007:
            errs.append(f"{path} is readable by others (mode {src[3]:o})")
    if errs:
        return errs
    port = int(t["address"].rsplit(":", 1)[1])
    if ports.get("log") != port:
        errs.append(f"container port `log` is {ports.get('log')}, transparency.address says {port}")
    svc = services.get(f"{fullname}-log")
    if svc is None or [p.get("targetPort") for p in svc["spec"]["ports"]] != ["log"]:
        errs.append(f"Service {fullname}-log must exist and target the `log` port only")
    url = urllib.parse.urlsplit(pg["url"])
    if url.password is not None:
        errs.append("transparency.postgres.url carries a password")
    egress = values["networkPolicy"]["egress"]
    for np in kinds.get("NetworkPolicy", []):
        spec = np["spec"]
        if not any({"port": "log", "protocol": "TCP"} in r.get("ports", []) for r in spec["ingress"]):
            errs.append("NetworkPolicy: no ingress rule for the log port")
        if "Egress" in spec["policyTypes"]:
            db = [r for r in spec.get("egress", [])
                  if r.get("to") and {"port": egress["databasePort"], "protocol": "TCP"} in r.get("ports", [])]
            want_to = egress["databaseTo"] or [{"podSelector": {"matchLabels": {"cnpg.io/cluster": cluster}}}]
            if [r["to"] for r in db] != [want_to]:
                errs.append(f"NetworkPolicy: egress to the database should be {want_to!r}, is {db!r}")
    for cl in kinds.get("Cluster", []):
        name, spec = cl["metadata"]["name"], cl["spec"]
        initdb = spec.get("bootstrap", {}).get("initdb", {})
        if name != cluster or url.hostname != f"{name}-rw":
            errs.append(f"Cluster {name}: the URL's host {url.hostname!r} is not its -rw Service")
        if (url.username, url.path.lstrip("/")) != (initdb.get("owner"), initdb.get("database")):
            errs.append(f"Cluster {name}: bootstrap.initdb owner/database differ from the URL's")
        if projected[pg["password_file"]][1] != f"{name}-app":
            errs.append(f"Cluster {name}: the password does not come from its Secret {name}-app")
        if pg.get("ca") and projected[pg["ca"]][1] != f"{name}-ca":
            errs.append(f"Cluster {name}: the CA does not come from its Secret {name}-ca")
        if not isinstance(spec.get("instances"), int) or not spec.get("storage", {}).get("size"):
            errs.append(f"Cluster {name}: instances and storage.size are required")
        auto = values["autoscaling"]
        pods = (auto["maxReplicas"] if auto["enabled"] else values["replicaCount"]) + 1  # + maxSurge
        max_conns = int(spec.get("postgresql", {}).get("parameters", {}).get("max_connections", 100))
        # pool_size pooled connections per pod, plus its sequencer's and its
        # integrator-lock session.
        if pods * (pg["pool_size"] + 2) > max_conns - 20:
            errs.append(f"Cluster {name}: max_connections {max_conns} leaves no headroom for "
                        f"{pods} pods x (pool_size {pg['pool_size']} + 2)")
    key_secret = projected[t["signing_key"]][1:3]
    for sec in kinds.get("Secret", []):
        if sec["metadata"]["name"] == key_secret[0]:
            try:
                base64.b64decode(sec["data"][key_secret[1]], validate=True)
            except (KeyError, ValueError) as e:
                errs.append(f"Secret {key_secret[0]}: no base64 key {key_secret[1]} ({e})")
    for ing in kinds.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if path["backend"]["service"] != {"name": f"{fullname}-log", "port": {"name": "log"}}:
                    errs.append(f"Ingress {ing['metadata']['name']}: backend is not {fullname}-log, port log")
    return errs


def check_prometheus_rule(values, objs, rules):
    """A PrometheusRule exactly when prometheusRule.enabled, whose spec is
    the rules file (parsed: the same groups, rules, labels and annotations)."""
    found = [d for d in objs if d["kind"] == "PrometheusRule"]
    if not values["prometheusRule"]["enabled"]:
        return [f"prometheusRule.enabled is false, yet {len(found)} PrometheusRule rendered"] if found else []
    if len(found) != 1:
        return [f"prometheusRule.enabled: expected one PrometheusRule, got {len(found)}"]
    rule = found[0]
    errs = []
    if rule["apiVersion"] != "monitoring.coreos.com/v1":
        errs.append(f"PrometheusRule: apiVersion {rule['apiVersion']!r}")
    labels = rule["metadata"].get("labels", {})
    for k, v in values["prometheusRule"]["labels"].items():
        if labels.get(k) != v:
            errs.append(f"PrometheusRule: label {k}={v!r} from prometheusRule.labels missing")
    if rules is not None and rule.get("spec") != rules:
        diffs = list(differences(rule.get("spec"), rules, "spec"))
        errs.extend(f"PrometheusRule (\"chart\") and the rules file (\"plain\") differ at {d}" for d in diffs[:5])
    elif not rule.get("spec", {}).get("groups"):
        errs.append("PrometheusRule: no rule groups")
    return errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chart")
    ap.add_argument("rendered", help="helm_render.py's --out directory")
    ap.add_argument("--plain", help="plain manifests the default render must equal")
    ap.add_argument("--rules", help="Prometheus rules file a rendered PrometheusRule must carry")
    args = ap.parse_args()
    chart = yaml.safe_load(open(os.path.join(args.chart, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(args.chart, "values.yaml")))
    rules = yaml.safe_load(open(args.rules)) if args.rules else None
    errors = static_checks(args.chart, values)

    rendered = {}  # scenario -> [objects]
    for d in sorted(glob.glob(os.path.join(args.rendered, "*", "values.yaml"))):
        scenario = os.path.basename(os.path.dirname(d))
        vals = deep_merge(values, yaml.safe_load(open(d)) or {})
        objs, errs = [], []
        for f in sorted(glob.glob(os.path.join(os.path.dirname(d), "templates", "*.yaml"))):
            docs = [doc for doc in yaml.safe_load_all(open(f)) if doc is not None]
            if len({bool(CUSTOM_RESOURCE.match(doc["apiVersion"])) for doc in docs}) > 1:
                errs.append(f"{os.path.basename(f)} mixes custom resources with other objects")
            errs += [f"{doc['kind']}/{doc['metadata']['name']}: no spec" for doc in docs
                     if CUSTOM_RESOURCE.match(doc["apiVersion"]) and not isinstance(doc.get("spec"), dict)]
            objs += docs
        rendered[scenario] = objs
        try:
            errs += check_sdk(chart, vals, objs) + check_fleet(vals, objs) + check_prometheus_rule(vals, objs, rules)
        except (KeyError, IndexError, StopIteration, TypeError, ValueError) as e:
            errs.append(f"could not read the render: {e!r}")
        errors += [f"scenario {scenario}: {e}" for e in errs]
        if not errs:
            print(f"ok: scenario {scenario}: {len(objs)} objects: "
                  + ", ".join(sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)))
    for want in ("defaults", "log-cnpg-cluster-ingress-created-key", "log-off") + (("prometheus-rule",) if rules else ()):
        if want not in rendered:
            errors.append(f"no render of scenario {want} in {args.rendered}")
    if rules and not any(o["kind"] == "PrometheusRule" for o in rendered.get("prometheus-rule", [])):
        errors.append("scenario prometheus-rule rendered no PrometheusRule")
    elif rules:
        print(f"ok: the PrometheusRule carries {args.rules} "
              f"({sum(len(g['rules']) for g in rules['groups'])} rules in {len(rules['groups'])} groups)")

    if args.plain and "defaults" in rendered:
        plain = {(d["kind"], d["metadata"]["name"]): d
                 for f in sorted(glob.glob(os.path.join(args.plain, "*.yaml")))
                 for d in yaml.safe_load_all(open(f)) if d and d["kind"] != "Namespace"}
        chart_objs = {(d["kind"], d["metadata"]["name"]): d for d in rendered["defaults"]}
        if set(plain) != set(chart_objs):
            errors.append("chart defaults and plain manifests differ in objects: only in chart "
                          f"{sorted(set(chart_objs) - set(plain))}, only in plain {sorted(set(plain) - set(chart_objs))}")
        else:
            for key, doc in sorted(plain.items()):
                a, b = copy.deepcopy(chart_objs[key].get("spec")), copy.deepcopy(doc.get("spec"))
                if key[0] == "Deployment":  # the chart leaves replicas to the HPA
                    a.pop("replicas", None)
                    b.pop("replicas", None)
                    # and rolls the pods when the [transparency] it renders
                    # changes (kubectl apply of the plain ConfigMap does not).
                    meta = a["template"]["metadata"]
                    if not meta.get("annotations", {}).pop("checksum/transparency", None):
                        errors.append("Deployment: the chart's pods carry no checksum/transparency annotation")
                    if meta.get("annotations") == {}:
                        meta.pop("annotations")
                errors += [f"{key[0]}/{key[1]}: chart and plain manifests differ at {d}" for d in differences(a, b, "spec")]
            print(f"ok: chart defaults render the same {len(plain)} objects as {args.plain} (specs compared)")
        examples = [d for f in sorted(glob.glob(os.path.join(args.plain, "examples", "*.yaml")))
                    for d in yaml.safe_load_all(open(f)) if d and d["kind"] == "Cluster"]
        charted = [d for d in rendered.get("log-cnpg-cluster-ingress-created-key", []) if d["kind"] == "Cluster"]
        if len(examples) != 1 or len(charted) != 1:
            errors.append(f"expected one example Cluster and one rendered by the chart, got {len(examples)} and {len(charted)}")
        else:
            diffs = list(differences(charted[0]["spec"], examples[0]["spec"], "spec"))
            if charted[0]["metadata"]["name"] != examples[0]["metadata"]["name"]:
                diffs.append("metadata.name")
            errors += [f"Cluster: chart and examples/ differ at {d}" for d in diffs]
            if not diffs:
                print(f"ok: the chart's CloudNativePG Cluster has the spec of {args.plain}/examples/")
    for e in errors:
        print(f"FAIL: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
