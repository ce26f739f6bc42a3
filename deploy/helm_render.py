#!/usr/bin/env python3
"""Render the Helm chart with Helm itself, for every value set it is checked with.

Helm is Helm v4's Go SDK as PyPI's helm-python-sdk embeds it (a C library
loaded with ctypes: no helm binary, Go toolchain or cluster is needed);
deploy/validate.sh pins its version. For each scenario below -- value
overrides, as a `-f values.yaml` would give them -- this runs

- `helm lint --strict` with those values (the SDK's lint: every template
  renders and every rendered manifest parses as YAML); a warning or an error
  fails;
- `helm template` (the SDK's offline render; release residency-proxy in
  namespace residency-proxy). A scenario with an expected error must be
  refused by the chart with that message; the others must render.

Usage:
  helm_render.py CHART --out DIR   every scenario into DIR/SCENARIO/: values.yaml
                                   (the overrides) and templates/*.yaml (as
                                   `helm template --output-dir`, NOTES.txt left out)
  helm_render.py CHART SCENARIO    one scenario's manifests on standard output
  helm_render.py --list            the scenario names

deploy/check_helm_renders.py then checks the renders, without the SDK.
Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys

import yaml

RELEASE = NAMESPACE = "residency-proxy"

EXTERNAL_DB = {
    "url": "postgres://residency@db.example.net:5432/residency?sslmode=require",
    "existingSecret": "residency-log-db",
    "ca": {"systemRoots": True},
}

SCENARIOS = {
    # name: (value overrides, or a function of the chart's values returning
    # them; None, or the message the chart must refuse them with)
    "defaults": ({}, None),
    "no-autoscaling-pvc-created-secrets": ({
        "autoscaling": {"enabled": False},
        "replicaCount": 4,
        "geoip": {"updater": {"enabled": False}, "existingClaim": "geoip-db"},
        "tls": {"create": True, "cert": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
                "key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"},
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "service": {"type": "ClusterIP"},
        "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
        "podAnnotations": {"example.com/team": "edge"},
        "podLabels": {"team": "edge"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "serviceAccount": {"create": False, "name": "edge"},
        "fullnameOverride": "edge-proxy",
    }, None),
    "updater-secret-and-servicemonitor": ({
        "geoip": {"updater": {"createSecret": True, "accountId": 1234567, "licenseKey": "k"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "service": {"loadBalancerSourceRanges": ["192.0.2.0/24"]},
        "adminService": {"annotations": {"example.com/x": "y"}},
        "imagePullSecrets": [{"name": "registry"}],
        "image": {"tag": "1.2.3"},
    }, None),
    "prometheus-rule": ({
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    }, None),
    "no-geoip-source": ({"geoip": {"updater": {"enabled": False}}}, "geoip.existingClaim"),
    "tls-create-without-cert": ({"tls": {"create": True}}, "tls.cert is required"),
    # the transparency log
    "log-cnpg-cluster-ingress-created-key": ({
        "transparency": {
            "postgres": {"cnpg": {"enabled": True}},
            "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "residency-log-tls",
                        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
            "signingKey": {"create": True, "base64": base64.b64encode(b"\x30\x2e\x02\x01\x00").decode()},
            # real cosignature verifier keys (keygen --witness): check-config parses them
            "witnesses": [
                {"url": "https://witness.example.org",
                 "key": "witness.example.org/w1+404967cd+BOy1DssoD8RUMRl65Wencf+4GGf7BvHN80lH28ddrxd9"},
                {"url": "https://witness.example.net", "name": "w2",
                 "key": "witness.example.net/w2+c1fce258+BLKFcbBhfgpTeBXl0kz29nvaQtySIr91yyg7s6qBjKcb"},
            ],
        },
        "networkPolicy": {"logFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}]},
    }, None),
    "log-cnpg-extra-spec-no-egress-policy": ({
        "fullnameOverride": "edge",
        "transparency": {
            "origin": "edge.example.com/log",
            "port": 9444,
            "postgres": {"poolSize": 4, "cnpg": {
                "enabled": True, "clusterName": "edge-db", "database": "log", "owner": "edge",
                "storage": {"storageClass": "premium-rwo"}, "walStorage": {"size": ""},
                "extraSpec": {"plugins": [{"name": "barman-cloud.cloudnative-pg.io", "isWALArchiver": True,
                                           "parameters": {"barmanObjectName": "edge-db-store"}}]}}},
            "service": {"type": "LoadBalancer", "port": 443},
            # customers connect straight to the LoadBalancer: a share each
            "maxConnectionsPerClient": 32,
        },
        "networkPolicy": {"egress": {"enabled": False}},
    }, None),
    "log-external-postgres": ({
        "transparency": {"postgres": EXTERNAL_DB, "signingKey": {"existingSecret": "fleet-log-key"}},
        "networkPolicy": {"egress": {"databaseTo": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
                                     "extra": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
                                                "ports": [{"port": 8443, "protocol": "TCP"}]}]}},
    }, None),
    "log-off": ({"transparency": {"enabled": False}}, None),
    "log-password-in-url": ({"transparency": {"postgres": dict(
        EXTERNAL_DB, url="postgres://residency:hunter2@db.example.net/residency?sslmode=require")},
        "networkPolicy": {"egress": {"enabled": False}}}, "must not carry the password"),
    # (egress off: Helm renders networkpolicy.yaml before configmap.yaml, and
    # its databaseTo refusal would come first)
    "log-external-without-secret": ({"transparency": {"postgres": {"url": EXTERNAL_DB["url"]}},
                                     "networkPolicy": {"egress": {"enabled": False}}},
                                    "transparency.postgres.existingSecret is required"),
    "log-external-without-database-peers": ({"transparency": {"postgres": EXTERNAL_DB}},
                                            "networkPolicy.egress.databaseTo is required"),
    "log-key-create-without-value": ({"transparency": {"signingKey": {"create": True}}},
                                     "transparency.signingKey.base64 is required"),
    "log-section-in-config": (lambda v: {"config": v["config"] + '\n[transparency]\norigin = "x"\n'},
                              "leave [transparency] out of `config`"),
}


def overrides_for(scenario, chart_dir):
    """The value overrides of a scenario and the error it must fail with."""
    overrides, expect_error = SCENARIOS[scenario]
    if callable(overrides):
        with open(os.path.join(chart_dir, "values.yaml")) as f:
            overrides = overrides(yaml.safe_load(f))
    return overrides, expect_error


def render(chart, overrides):
    """template path -> rendered text, for the templates that rendered anything
    (NOTES.txt left out, as `helm template` does)."""
    out = chart.render(overrides, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path: text for path, text in sorted(out.items())
            if text.strip() and not path.endswith("/NOTES.txt")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chart", nargs="?")
    ap.add_argument("scenario", nargs="?", help="print this scenario's render instead of checking all")
    ap.add_argument("--out", help="write every scenario's values and render here")
    ap.add_argument("--list", action="store_true", help="list the scenarios")
    args = ap.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if not args.chart or bool(args.scenario) == bool(args.out):
        ap.error("give CHART and either SCENARIO or --out DIR")
    if args.scenario and args.scenario not in SCENARIOS:
        ap.error(f"no scenario {args.scenario!r} (--list shows them)")

    import helm_python as helm  # the SDK: only needed to render

    chart_dir = args.chart.rstrip("/")
    with helm.Chart.load(chart_dir) as chart:
        if args.scenario:
            overrides, _ = overrides_for(args.scenario, chart_dir)
            try:
                manifests = render(chart, overrides)
            except helm.HelmError as e:
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
                return 1
            for path, text in manifests.items():
                sys.stdout.write(f"---\n# Source: {path}\n{text.strip()}\n")
            return 0
        print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
              f"chart {chart.name} {chart.version}")
        errors = []
        for scenario in SCENARIOS:
            overrides, expect_error = overrides_for(scenario, chart_dir)
            try:
                manifests = render(chart, overrides)
            except helm.HelmError as e:
                if expect_error and isinstance(e, helm.HelmRenderError) and expect_error in str(e):
                    print(f"ok: scenario {scenario}: refused as expected ({e})")
                else:
                    errors.append(f"scenario {scenario}: {type(e).__name__}: {e}")
                continue
            if expect_error:
                errors.append(f"scenario {scenario}: rendered, but should fail with {expect_error!r}")
                continue
            report = helm.lint(chart_dir, overrides, strict=True, namespace=NAMESPACE)
            found = [m for m in report["messages"] if m["severity"] >= 2]  # 1: information
            found += [{"path": "-", "error": e} for e in report["errors"] if e not in [m["error"] for m in found]]
            errors.extend(f"scenario {scenario}: helm lint --strict: {m['path']}: {m['error']}" for m in found)
            d = os.path.join(args.out, scenario)
            os.makedirs(os.path.join(d, "templates"), exist_ok=True)
            with open(os.path.join(d, "values.yaml"), "w") as f:
                yaml.safe_dump(overrides, f, sort_keys=False)
            for path, text in manifests.items():
                with open(os.path.join(d, "templates", os.path.basename(path)), "w") as f:
                    f.write(f"---\n# Source: {path}\n{text.strip()}\n")
            if not found:
                print(f"ok: scenario {scenario}: lint --strict clean, {len(manifests)} templates rendered into {d}/templates")
    for e in errors:
        print(f"FAIL: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
