#!/usr/bin/env python3
"""Static checks and a best-effort render of the Helm chart, without Helm.

Helm is not installable from the package registries this project may use, so
`helm lint` / `helm template` cannot run in CI. This script does the next best
thing:

1. Chart.yaml and values.yaml parse as YAML; Chart.yaml has the required
   fields (apiVersion v2, name = directory name, SemVer version).
2. Every template parses: actions are well formed and every
   if/with/range/define has its end.
3. Every `.Values.a.b` referenced anywhere exists in values.yaml, every
   `include`/`template` names a `define`, every function is one Helm knows.
4. The `config` value is valid TOML whose GeoIP database and listener port
   agree with `geoip.databaseFile` and `httpsPort`, and without
   [transparency] (the chart renders that section from `transparency`).
5. The chart is rendered with a small interpreter for the subset of Go
   templates and Sprig functions it uses (this is not Helm: it exists to catch
   indentation and reference mistakes), for several value sets (and two
   that must be refused with a clear message); the rendered manifests must
   parse as YAML, the rendered ConfigMap must carry the `config` value
   unchanged plus the [transparency] section the values call for, the files
   that section names must be Secrets projected into the pod, and the log's
   port, Service, NetworkPolicy rules and CloudNativePG Cluster must agree
   with it. With --rules, a rendered PrometheusRule must carry exactly the
   groups of that Prometheus rules file (`.Files.Get` reads the chart's
   copy). The manifests are written to an output directory for
   `kubernetes-validate` (custom resources -- ServiceMonitor,
   PrometheusRule, Cluster -- left out: it has no schema for them), with
   each scenario's config.toml beside them for `residency-proxy
   check-config`.
6. The default render holds the same objects (kind and name) with the same
   `spec` as the plain manifests in deploy/kubernetes/ (Deployment replicas
   aside: the chart leaves them to the HPA), and the CloudNativePG Cluster
   the chart renders has the spec of deploy/kubernetes/examples/.

Usage: check_helm.py CHART_DIR [--out DIR] [--plain DIR] [--rules FILE]
Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import copy
import glob
import json
import os
import re
import sys
import tomllib
import urllib.parse

import yaml

# --------------------------------------------------------------- templates --

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)

# Functions Helm provides (Go text/template builtins, Sprig, Helm's own) that
# charts commonly use. A name outside this list is almost always a typo.
KNOWN_FUNCS = {
    # text/template
    "and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index",
    "print", "printf", "println", "html", "js", "urlquery", "slice", "call",
    # Helm
    "include", "tpl", "required", "toYaml", "fromYaml", "toJson", "fromJson",
    "toToml", "lookup", "fail",
    # Sprig (common subset)
    "default", "empty", "coalesce", "ternary", "quote", "squote", "trunc",
    "trim", "trimAll", "trimPrefix", "trimSuffix", "upper", "lower", "title",
    "replace", "contains", "hasPrefix", "hasSuffix", "indent", "nindent",
    "toString", "toStrings", "int", "int64", "float64", "atoi", "b64enc",
    "b64dec", "sha256sum", "list", "dict", "get", "set", "unset", "hasKey",
    "keys", "merge", "mergeOverwrite", "pick", "omit", "first", "last",
    "append", "concat", "join", "split", "splitList", "regexMatch",
    "regexReplaceAll", "semverCompare", "add", "sub", "mul", "div", "mod",
    "max", "min", "kindIs", "typeOf", "toDecimal", "randAlphaNum", "uuidv4",
    "now", "date", "cat", "repeat", "substr", "sortAlpha", "uniq", "without",
    "has", "deepCopy", "fromYamlArray", "toRawJson", "genCA", "genSelfSignedCert",
}

KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block",
            "true", "false", "nil", "break", "continue"}


class TemplateError(Exception):
    pass


class Node:
    pass


class Text(Node):
    def __init__(self, text):
        self.text = text


class Action(Node):
    def __init__(self, pipe, where):
        self.pipe, self.where = pipe, where


class Block(Node):
    def __init__(self, kind, pipe, where):
        self.kind, self.pipe, self.where = kind, pipe, where
        self.body: list[Node] = []
        self.else_body: list[Node] | None = None


class TemplateCall(Node):
    def __init__(self, name, pipe, where):
        self.name, self.pipe, self.where = name, pipe, where


# ------------------------------------------------------------------- lexer --

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<pipe>\|)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<comma>,)
    """,
    re.VERBOSE,
)


def tokenize(src, where):
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            raise TemplateError(f"{where}: cannot read `{src[pos:pos + 20]}` in action")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        text = m.group()
        if kind == "string":
            text = json.loads(text)
        elif kind == "raw":
            text, kind = text[1:-1], "string"
        elif kind == "number":
            text = float(text) if "." in text else int(text)
        out.append((kind, text))
    return out


# ------------------------------------------------------------------ parser --

def parse_pipeline(tokens, where):
    """Pipeline: [$var :=] command ('|' command)*; a command is a list of
    operands; an operand is a literal, field, variable, identifier or a
    parenthesised pipeline."""
    decl = None
    if len(tokens) >= 2 and tokens[0][0] == "var" and tokens[1][0] in ("decl", "assign"):
        decl = tokens[0][1]
        tokens = tokens[2:]
    pos = 0

    def operand():
        nonlocal pos
        kind, val = tokens[pos]
        if kind == "lparen":
            depth, start = 1, pos + 1
            pos += 1
            while depth:
                if pos >= len(tokens):
                    raise TemplateError(f"{where}: unbalanced parentheses")
                if tokens[pos][0] == "lparen":
                    depth += 1
                elif tokens[pos][0] == "rparen":
                    depth -= 1
                pos += 1
            inner = tokens[start:pos - 1]
            node = ("pipe", parse_pipeline(inner, where))
            # a field access on a parenthesised result: (x).Foo
            return node
        pos += 1
        if kind in ("string", "number"):
            return ("lit", val)
        if kind == "ident":
            if val in ("true", "false"):
                return ("lit", val == "true")
            if val == "nil":
                return ("lit", None)
            return ("ident", val)
        if kind in ("field", "var"):
            return (kind, val)
        raise TemplateError(f"{where}: unexpected `{val}`")

    commands, current = [], []
    while pos < len(tokens):
        if tokens[pos][0] == "pipe":
            if not current:
                raise TemplateError(f"{where}: empty command before `|`")
            commands.append(current)
            current = []
            pos += 1
            continue
        if tokens[pos][0] == "rparen":
            raise TemplateError(f"{where}: unbalanced parentheses")
        current.append(operand())
    if not current:
        raise TemplateError(f"{where}: empty pipeline")
    commands.append(current)
    return {"decl": decl, "commands": commands}


def parse_template(src, name):
    """Parse one file into a node list and a dict of `define`d templates."""
    defines: dict[str, list[Node]] = {}
    root: list[Node] = []
    stack: list[tuple[Block | None, list[Node]]] = [(None, root)]
    pos = 0
    pending_trim = False
    for m in ACTION.finditer(src):
        line = src.count("\n", 0, m.start()) + 1
        where = f"{name}:{line}"
        text = src[pos:m.start()]
        if pending_trim:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            stack[-1][1].append(Text(text))
        pos = m.end()
        pending_trim = bool(m.group(3))
        body = m.group(2).strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError(f"{where}: unterminated comment")
            continue
        tokens = tokenize(body, where)
        if not tokens:
            raise TemplateError(f"{where}: empty action")
        head = tokens[0]
        if head == ("ident", "end"):
            if len(stack) == 1:
                raise TemplateError(f"{where}: `end` without a block")
            block, _ = stack.pop()
            # an `else if` chain closes with a single end
            while block.kind == "elseif":
                block, _ = stack.pop()
            if block.kind == "define":
                defines[block.pipe] = block.body
            continue
        if head == ("ident", "else"):
            if len(stack) == 1 or stack[-1][0].kind not in ("if", "with", "range", "elseif"):
                raise TemplateError(f"{where}: `else` outside if/with/range")
            block = stack[-1][0]
            if block.else_body is not None:
                raise TemplateError(f"{where}: second `else`")
            block.else_body = []
            stack[-1] = (block, block.else_body)
            if len(tokens) > 1:
                if tokens[1] != ("ident", "if"):
                    raise TemplateError(f"{where}: only `else if` is supported")
                inner = Block("elseif", parse_pipeline(tokens[2:], where), where)
                block.else_body.append(inner)
                stack.append((inner, inner.body))
            continue
        if head[0] == "ident" and head[1] in ("if", "with", "range"):
            block = Block(head[1], parse_pipeline(tokens[1:], where), where)
            stack[-1][1].append(block)
            stack.append((block, block.body))
            continue
        if head == ("ident", "define"):
            if len(tokens) != 2 or tokens[1][0] != "string":
                raise TemplateError(f"{where}: define needs one quoted name")
            if len(stack) != 1:
                raise TemplateError(f"{where}: define inside a block")
            block = Block("define", tokens[1][1], where)
            stack.append((block, block.body))
            continue
        if head == ("ident", "template"):
            if len(tokens) < 2 or tokens[1][0] != "string":
                raise TemplateError(f"{where}: template needs a quoted name")
            pipe = parse_pipeline(tokens[2:], where) if len(tokens) > 2 else None
            stack[-1][1].append(TemplateCall(tokens[1][1], pipe, where))
            continue
        if head[0] == "ident" and head[1] in ("block", "break", "continue"):
            raise TemplateError(f"{where}: `{head[1]}` is not supported by this checker")
        stack[-1][1].append(Action(parse_pipeline(tokens, where), where))
    text = src[pos:]
    if pending_trim:
        text = text.lstrip()
    if text:
        stack[-1][1].append(Text(text))
    if len(stack) != 1:
        block = stack[-1][0]
        raise TemplateError(f"{block.where}: `{block.kind}` without `end`")
    return root, defines


# --------------------------------------------------------------- evaluator --

class Missing:
    """A map key that does not exist (Helm renders it as empty)."""

    def __bool__(self):
        return False


MISSING = Missing()


def truthy(v):
    if v is None or v is MISSING:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def to_text(v):
    if v is None or v is MISSING:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        raise TemplateError(f"printing a {type(v).__name__} directly (use toYaml)")
    return str(v)


def go_printf(fmt, *args):
    out, i, ai = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        arg = args[ai]
        ai += 1
        if verb in "sv":
            out.append(to_text(arg))
        elif verb == "d":
            out.append(str(int(arg)))
        elif verb == "q":
            out.append(json.dumps(to_text(arg)))
        else:
            raise TemplateError(f"printf verb %{verb} not supported by this checker")
    return "".join(out)


def to_yaml(v):
    if v is None or v is MISSING:
        return "null"
    text = yaml.safe_dump(v, default_flow_style=False, sort_keys=True, width=1_000_000)
    if text.endswith("...\n"):
        text = text[:-4]
    return text.rstrip("\n")


def indent(n, s):
    pad = " " * int(n)
    return pad + to_text(s).replace("\n", "\n" + pad)


class Renderer:
    def __init__(self, defines):
        self.defines = defines

    def funcs(self):
        def default(d, v=MISSING):
            return v if truthy(v) else d

        def required(msg, v=MISSING):
            if v is None or v is MISSING or v == "":
                raise TemplateError(f"required: {msg}")
            return v

        def fail(msg):
            raise TemplateError(f"fail: {msg}")

        def quote(*vs):
            return " ".join(json.dumps(to_text(v)) for v in vs)

        return {
            "default": default,
            "required": required,
            "fail": fail,
            "quote": quote,
            "squote": lambda *vs: " ".join(f"'{to_text(v)}'" for v in vs),
            "trunc": lambda n, s: to_text(s)[:int(n)] if int(n) >= 0 else to_text(s)[int(n):],
            "trimSuffix": lambda suf, s: to_text(s)[:-len(suf)] if suf and to_text(s).endswith(suf) else to_text(s),
            "trimPrefix": lambda pre, s: to_text(s)[len(pre):] if pre and to_text(s).startswith(pre) else to_text(s),
            "trim": lambda s: to_text(s).strip(),
            "upper": lambda s: to_text(s).upper(),
            "lower": lambda s: to_text(s).lower(),
            "replace": lambda old, new, s: to_text(s).replace(old, new),
            "contains": lambda sub, s: sub in to_text(s),
            "hasPrefix": lambda pre, s: to_text(s).startswith(pre),
            "hasSuffix": lambda suf, s: to_text(s).endswith(suf),
            "printf": go_printf,
            "print": lambda *vs: "".join(to_text(v) for v in vs),
            "toString": to_text,
            "toYaml": to_yaml,
            "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
            "nindent": lambda n, s: "\n" + indent(n, s),
            "indent": indent,
            "b64enc": lambda s: base64.b64encode(to_text(s).encode()).decode(),
            "eq": lambda a, *bs: any(a == b for b in bs),
            "ne": lambda a, b: a != b,
            "not": lambda v: not truthy(v),
            "empty": lambda v: not truthy(v),
            "len": lambda v: len(v),
            "hasKey": lambda d, k: k in d,
            # Go's regexp.MatchString: unanchored search (the patterns used
            # here mean the same in RE2 and Python)
            "regexMatch": lambda rx, s: re.search(rx, to_text(s)) is not None,
            "ternary": lambda t, f, c: t if truthy(c) else f,
            "int": lambda v: int(float(v)) if v not in (None, "") else 0,
            "int64": lambda v: int(float(v)) if v not in (None, "") else 0,
        }

    # `and`/`or` are evaluated lazily like Go's
    def run(self, nodes, dot, scopes, out):
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                v = self.pipeline(node.pipe, dot, scopes, node.where)
                if node.pipe["decl"] is None:
                    out.append(to_text(v))
            elif isinstance(node, TemplateCall):
                arg = self.pipeline(node.pipe, dot, scopes, node.where) if node.pipe else None
                out.append(self.include(node.name, arg, node.where))
            elif isinstance(node, Block):
                self.block(node, dot, scopes, out)

    def block(self, node, dot, scopes, out):
        inner = [dict()] + scopes
        v = self.pipeline(node.pipe, dot, inner, node.where)
        if node.kind in ("if", "elseif"):
            if truthy(v):
                self.run(node.body, dot, inner, out)
            elif node.else_body is not None:
                self.run(node.else_body, dot, inner, out)
        elif node.kind == "with":
            if truthy(v):
                self.run(node.body, v, inner, out)
            elif node.else_body is not None:
                self.run(node.else_body, dot, inner, out)
        elif node.kind == "range":
            items = list(v.values()) if isinstance(v, dict) else list(v or [])
            if items:
                for item in items:
                    self.run(node.body, item, [dict()] + inner, out)
            elif node.else_body is not None:
                self.run(node.else_body, dot, inner, out)

    def include(self, name, arg, where):
        if name not in self.defines:
            raise TemplateError(f"{where}: no template named {name!r}")
        out: list[str] = []
        self.run(self.defines[name], arg, [{"$": arg}], out)
        return "".join(out)

    def lookup_var(self, name, scopes, where):
        for scope in scopes:
            if name in scope:
                return scope[name]
        raise TemplateError(f"{where}: undefined variable {name}")

    @staticmethod
    def fields(base, path, where, shown):
        for part in path:
            if base is MISSING or base is None:
                raise TemplateError(f"{where}: nil pointer evaluating {shown} (at .{part})")
            if isinstance(base, dict):
                base = base.get(part, MISSING)
            else:
                raise TemplateError(f"{where}: can't evaluate field {part} in {type(base).__name__} ({shown})")
        return base

    def operand(self, op, dot, scopes, where):
        kind, val = op
        if kind == "lit":
            return val
        if kind == "pipe":
            return self.pipeline(val, dot, scopes, where)
        if kind == "field":
            if val == ".":
                return dot
            return self.fields(dot, val[1:].split("."), where, val)
        if kind == "var":
            name, *path = val.split(".")
            return self.fields(self.lookup_var(name, scopes, where), path, where, val)
        if kind == "ident":
            return ("func", val)
        raise TemplateError(f"{where}: bad operand {op}")

    def command(self, cmd, dot, scopes, where, piped):
        head = cmd[0]
        if head[0] == "ident":
            name = head[1]
            if name in ("and", "or"):
                args = [lambda op=op: self.operand(op, dot, scopes, where) for op in cmd[1:]]
                if piped is not None:
                    args.append(lambda: piped[0])
                v = None
                for arg in args:
                    v = arg()
                    if (name == "and") != truthy(v):
                        return v
                return v
            args = [self.operand(op, dot, scopes, where) for op in cmd[1:]]
            if piped is not None:
                args.append(piped[0])
            if name == "include":
                return self.include(args[0], args[1] if len(args) > 1 else None, where)
            fn = self.funcs().get(name)
            if fn is None:
                raise TemplateError(f"{where}: function {name!r} is not implemented by this checker")
            try:
                return fn(*args)
            except TemplateError as e:
                raise TemplateError(f"{where}: {e}") from None
            except (TypeError, ValueError, IndexError) as e:
                raise TemplateError(f"{where}: {name}: {e}") from None
        value = self.operand(head, dot, scopes, where)
        if callable(value):  # a method of the context: .Files.Get "path"
            args = [self.operand(op, dot, scopes, where) for op in cmd[1:]]
            if piped is not None:
                args.append(piped[0])
            try:
                return value(*args)
            except TypeError as e:
                raise TemplateError(f"{where}: {head[1]}: {e}") from None
        if len(cmd) != 1 or piped is not None:
            raise TemplateError(f"{where}: can't give arguments to a non-function")
        return value

    def pipeline(self, pipe, dot, scopes, where):
        v = None
        piped = None
        for cmd in pipe["commands"]:
            v = self.command(cmd, dot, scopes, where, piped)
            piped = (v,)
        if pipe["decl"] is not None:
            scopes[0][pipe["decl"]] = v
        return v


# -------------------------------------------------------------- the checks --

def deep_merge(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def differences(a, b, path):
    """Paths where two parsed YAML values differ."""
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


def values_paths_referenced(src):
    """Every `.Values.a.b` (or `$.Values.a.b`) in a template."""
    return set(re.findall(r"(?<![A-Za-z0-9_])\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", src))


def path_exists(values, path):
    node = values
    for part in path.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def funcs_used(nodes, acc):
    def pipe(p):
        if p is None:
            return
        for cmd in p["commands"]:
            for op in cmd:
                if op[0] == "ident":
                    acc.add(op[1])
                elif op[0] == "pipe":
                    pipe(op[1])

    for n in nodes:
        if isinstance(n, Action):
            pipe(n.pipe)
        elif isinstance(n, TemplateCall):
            pipe(n.pipe)
        elif isinstance(n, Block):
            if n.kind != "define":
                pipe(n.pipe)
            funcs_used(n.body, acc)
            if n.else_body:
                funcs_used(n.else_body, acc)
    return acc


def includes_used(src):
    return set(re.findall(r"\b(?:include|template)\s+\"([^\"]+)\"", src))


def files_used(src):
    """Every `.Files.Get "path"` in a template."""
    return set(re.findall(r"\.Files\.Get\s+\"([^\"]+)\"", src))


def chart_file(chart_dir, path):
    """The file `.Files.Get path` reads, or None where Helm has none: outside
    the chart, under templates/, or missing. (Helm follows a symbolic link;
    this checker wants the file itself in the chart, so a packaged chart
    cannot lose it.)"""
    root = os.path.realpath(chart_dir)
    full = os.path.realpath(os.path.join(root, path))
    if not full.startswith(root + os.sep) or full.startswith(os.path.join(root, "templates") + os.sep):
        return None
    return full if os.path.isfile(full) else None


def files_object(chart_dir):
    """`.Files` with its `Get` (Helm's returns "" for a file it does not have)."""
    def get(path):
        full = chart_file(chart_dir, to_text(path))
        return open(full).read() if full else ""
    return {"Get": get}


# Custom resources: kubernetes-validate has no schema for their kinds.
CUSTOM_RESOURCE = re.compile(r"^apiVersion:\s*(monitoring\.coreos\.com|postgresql\.cnpg\.io)/", re.M)
CONFIG_DIR = "/etc/residency-proxy"


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
        "checkpoint_interval": t["checkpointInterval"],
        "receipts": t["receipts"],
        "on_write_error": t["onWriteError"],
        "postgres": {
            "url": pg["url"] or (f"postgres://{cnpg['owner']}@{cluster}-rw:5432/"
                                 f"{cnpg['database']}?sslmode=require"),
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
    """The transparency log's pieces in one render agree with each other and
    with the values: the rendered [transparency] table, the Secrets projected
    for the files it names, the log port and Service, the NetworkPolicy
    rules, the CloudNativePG Cluster, the key Secret and the Ingress."""
    errs = []
    kinds: dict[str, list] = {}
    for d in objs:
        kinds.setdefault(d["kind"], []).append(d)
    dep = kinds["Deployment"][0]
    fullname = dep["metadata"]["name"]
    cfg = tomllib.loads(kinds["ConfigMap"][0]["data"]["config.toml"])
    t = cfg.get("transparency")
    pod = dep["spec"]["template"]["spec"]
    proxy = next(c for c in pod["containers"] if c["name"] == "residency-proxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    services = {d["metadata"]["name"]: d for d in kinds.get("Service", [])}
    for d in objs:
        if CUSTOM_RESOURCE.search(f"apiVersion: {d.get('apiVersion')}") and not isinstance(d.get("spec"), dict):
            errs.append(f"{d['kind']}/{d['metadata']['name']}: no spec")
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
        if pods * pg["pool_size"] > max_conns - 20:
            errs.append(f"Cluster {name}: max_connections {max_conns} leaves no headroom for "
                        f"{pods} pods x pool_size {pg['pool_size']}")
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


EXTERNAL_DB = {
    "url": "postgres://residency@db.example.net:5432/residency?sslmode=require",
    "existingSecret": "residency-log-db",
    "ca": {"systemRoots": True},
}

SCENARIOS = {
    # name: (value overrides, or a function of the chart's values returning
    # them; error expected from rendering)
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
    "log-external-without-secret": ({"transparency": {"postgres": {"url": EXTERNAL_DB["url"]}}},
                                    "transparency.postgres.existingSecret is required"),
    "log-external-without-database-peers": ({"transparency": {"postgres": EXTERNAL_DB}},
                                            "networkPolicy.egress.databaseTo is required"),
    "log-key-create-without-value": ({"transparency": {"signingKey": {"create": True}}},
                                     "transparency.signingKey.base64 is required"),
    "log-section-in-config": (lambda v: {"config": v["config"] + '\n[transparency]\norigin = "x"\n'},
                              "leave [transparency] out of `config`"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chart")
    ap.add_argument("--out", help="write the rendered manifests of every scenario here")
    ap.add_argument("--plain", help="plain manifests to compare objects (kind/name) with")
    ap.add_argument("--rules", help="Prometheus rules file a rendered PrometheusRule must carry")
    ap.add_argument("--release", default="residency-proxy")
    ap.add_argument("--namespace", default="residency-proxy")
    args = ap.parse_args()

    errors: list[str] = []
    chart_dir = args.chart.rstrip("/")
    rules = None
    if args.rules:
        try:
            rules = yaml.safe_load(open(args.rules))
        except (OSError, yaml.YAMLError) as e:
            print(f"FAIL: --rules: {e}")
            return 1

    # 1. Chart.yaml and values.yaml
    try:
        chart = yaml.safe_load(open(os.path.join(chart_dir, "Chart.yaml")))
        values = yaml.safe_load(open(os.path.join(chart_dir, "values.yaml")))
    except (OSError, yaml.YAMLError) as e:
        print(f"FAIL: {e}")
        return 1
    if chart.get("apiVersion") != "v2":
        errors.append("Chart.yaml: apiVersion must be v2")
    for key in ("name", "version", "appVersion", "description", "type"):
        if not chart.get(key):
            errors.append(f"Chart.yaml: missing {key}")
    if chart.get("name") != os.path.basename(chart_dir):
        errors.append(f"Chart.yaml: name {chart.get('name')!r} differs from the directory name")
    if not re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?", str(chart.get("version", ""))):
        errors.append("Chart.yaml: version is not SemVer 2")
    if not isinstance(values, dict):
        errors.append("values.yaml: not a mapping")
        values = {}

    # 2./3. parse every template, check references
    files = sorted(glob.glob(os.path.join(chart_dir, "templates", "*")))
    if not files:
        errors.append("templates/: no templates")
    parsed, defines = {}, {}
    all_src = ""
    for path in files:
        name = os.path.relpath(path, chart_dir)
        src = open(path).read()
        all_src += src
        try:
            nodes, defs = parse_template(src, name)
        except TemplateError as e:
            errors.append(str(e))
            continue
        for d in defs:
            if d in defines:
                errors.append(f"{name}: template {d!r} defined twice")
        defines.update(defs)
        parsed[name] = nodes
        for ref in sorted(values_paths_referenced(src)):
            if not path_exists(values, ref):
                errors.append(f"{name}: .Values{ref} is not in values.yaml")
        for fn in sorted(funcs_used(nodes, set()) | funcs_used(
                [n for d in defs.values() for n in d], set())):
            if fn not in KNOWN_FUNCS:
                errors.append(f"{name}: unknown function {fn!r}")
    for inc in sorted(includes_used(all_src)):
        if inc not in defines:
            errors.append(f"include/template of undefined {inc!r}")
    for path in sorted(files_used(all_src)):
        if chart_file(chart_dir, path) is None:
            errors.append(f".Files.Get {path!r}: no such file in the chart (outside templates/)")

    # 4. the embedded proxy configuration
    try:
        cfg = tomllib.loads(values.get("config", ""))
        db = cfg.get("geoip", {}).get("database", "")
        want = "/var/lib/GeoIP/" + str(values.get("geoip", {}).get("databaseFile"))
        if db != want:
            errors.append(f"values.yaml: config geoip.database {db!r} != {want!r} (geoip.databaseFile)")
        if "transparency" in cfg and values.get("transparency", {}).get("enabled"):
            errors.append("values.yaml: config has [transparency]; the chart renders it from `transparency`")
        ports = [int(lst["address"].rsplit(":", 1)[1]) for lst in cfg.get("listeners", [])]
        if values.get("httpsPort") not in ports:
            errors.append(f"values.yaml: httpsPort {values.get('httpsPort')} is not a listener port {ports}")
        for lst in cfg.get("listeners", []):
            for c in lst.get("tls", {}).get("certificates", []):
                for k in ("cert", "key"):
                    if not c[k].startswith("/etc/residency-proxy/tls/"):
                        errors.append(f"values.yaml: config certificate {c[k]} is outside the mounted /etc/residency-proxy/tls/")
    except (tomllib.TOMLDecodeError, KeyError, ValueError, IndexError) as e:
        errors.append(f"values.yaml: config is not a valid proxy configuration: {e}")

    if errors:
        for e in errors:
            print(f"FAIL: {e}")
        return 1

    # 5. render
    renderer = Renderer(defines)
    rendered_default = None
    rendered = {}  # scenario -> [objects]
    for scenario, (overrides, expect_error) in SCENARIOS.items():
        if callable(overrides):
            overrides = overrides(values)
        ctx = {
            "Values": deep_merge(values, overrides),
            "Chart": {"Name": chart["name"], "Version": chart["version"],
                      "AppVersion": chart.get("appVersion", "")},
            "Release": {"Name": args.release, "Namespace": args.namespace,
                        "Service": "Helm", "IsInstall": True, "IsUpgrade": False},
            "Capabilities": {"KubeVersion": {"Version": "v1.30.0"}},
            "Files": files_object(chart_dir),
        }
        docs, problem = [], None
        for name, nodes in parsed.items():
            if os.path.basename(name).startswith("_"):
                continue
            out: list[str] = []
            try:
                renderer.run(nodes, ctx, [{"$": ctx}], out)
            except TemplateError as e:
                problem = str(e)
                break
            text = "".join(out)
            if name.endswith("NOTES.txt"):
                continue
            if text.strip():
                docs.append((name, text))
        if expect_error:
            if problem is None or expect_error not in problem:
                errors.append(f"scenario {scenario}: expected a rendering error mentioning "
                              f"{expect_error!r}, got {problem!r}")
            else:
                print(f"ok: scenario {scenario}: refused as expected ({problem})")
            continue
        if problem:
            errors.append(f"scenario {scenario}: {problem}")
            continue
        objects, objs = [], []
        for name, text in docs:
            try:
                for doc in yaml.safe_load_all(text):
                    if doc is None:
                        continue
                    if not isinstance(doc, dict) or "kind" not in doc:
                        errors.append(f"scenario {scenario}: {name}: rendered document is not an object")
                        continue
                    objects.append((doc["kind"], doc["metadata"]["name"]))
                    objs.append(doc)
            except yaml.YAMLError as e:
                errors.append(f"scenario {scenario}: {name}: rendered YAML does not parse: {e}")
        rendered[scenario] = objs
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"{scenario}.yaml"), "w") as f:
                for name, text in docs:
                    if CUSTOM_RESOURCE.search(text):
                        continue  # kubernetes-validate has no schema for it: checked in check_fleet
                    f.write(f"---\n# Source: {chart['name']}/{name}\n{text.strip()}\n")
        config_ok = True
        for name, text in docs:
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                    try:
                        text_toml = doc["data"]["config.toml"]
                        got = tomllib.loads(text_toml)
                        got.pop("transparency", None)  # checked against the values in check_fleet
                        if got != tomllib.loads(ctx["Values"]["config"]):
                            errors.append(f"scenario {scenario}: {name}: config.toml differs from the config value")
                        if args.out:
                            with open(os.path.join(args.out, f"{scenario}.config.toml"), "w") as f:
                                f.write(text_toml)
                    except (KeyError, tomllib.TOMLDecodeError) as e:
                        errors.append(f"scenario {scenario}: {name}: rendered config.toml: {e}")
                        config_ok = False
        if config_ok:
            try:
                errors.extend(f"scenario {scenario}: {e}" for e in check_fleet(ctx["Values"], objs))
            except (KeyError, IndexError, StopIteration, TypeError, ValueError) as e:
                errors.append(f"scenario {scenario}: fleet log check could not read the render: {e!r}")
        rule_errors = check_prometheus_rule(ctx["Values"], objs, rules)
        errors.extend(f"scenario {scenario}: {e}" for e in rule_errors)
        if rules is not None and not rule_errors and any(d["kind"] == "PrometheusRule" for d in objs):
            print(f"ok: scenario {scenario}: the PrometheusRule carries {args.rules} "
                  f"({sum(len(g['rules']) for g in rules['groups'])} rules in {len(rules['groups'])} groups)")
        if scenario == "defaults":
            rendered_default = {}
            for _, text in docs:
                for doc in yaml.safe_load_all(text):
                    if isinstance(doc, dict) and "kind" in doc:
                        rendered_default[(doc["kind"], doc["metadata"]["name"])] = doc
        print(f"ok: scenario {scenario}: {len(objects)} objects: "
              + ", ".join(f"{k}/{n}" for k, n in sorted(objects)))

    # 6. the same objects, with the same specs, as the plain manifests
    if args.plain and rendered_default is not None:
        plain = {}
        for path in sorted(glob.glob(os.path.join(args.plain, "*.yaml"))):
            for doc in yaml.safe_load_all(open(path)):
                if doc and doc.get("kind") != "Namespace":
                    plain[(doc["kind"], doc["metadata"]["name"])] = doc
        if set(plain) != set(rendered_default):
            errors.append("chart defaults and plain manifests differ in objects: only in chart "
                          f"{sorted(set(rendered_default) - set(plain))}, only in plain "
                          f"{sorted(set(plain) - set(rendered_default))}")
        else:
            for key, doc in sorted(plain.items()):
                spec_plain = copy.deepcopy(doc.get("spec"))
                spec_chart = copy.deepcopy(rendered_default[key].get("spec"))
                if key[0] == "Deployment":
                    # the chart leaves replicas to the HPA
                    spec_plain.pop("replicas", None)
                    spec_chart.pop("replicas", None)
                for d in differences(spec_chart, spec_plain, "spec"):
                    errors.append(f"{key[0]}/{key[1]}: chart and plain manifests differ at {d}")
            print(f"ok: chart defaults render the same {len(plain)} objects as {args.plain}"
                  " (specs compared)")
        # the CloudNativePG Cluster the chart renders with its defaults is the example's
        examples = [d for path in sorted(glob.glob(os.path.join(args.plain, "examples", "*.yaml")))
                    for d in yaml.safe_load_all(open(path)) if d and d.get("kind") == "Cluster"]
        charted = [d for d in rendered.get("log-cnpg-cluster-ingress-created-key", []) if d["kind"] == "Cluster"]
        if len(examples) != 1 or len(charted) != 1:
            errors.append(f"expected one example Cluster and one rendered by the chart, got "
                          f"{len(examples)} and {len(charted)}")
        else:
            diffs = list(differences(charted[0]["spec"], examples[0]["spec"], "spec"))
            if charted[0]["metadata"]["name"] != examples[0]["metadata"]["name"]:
                diffs.append("metadata.name")
            for d in diffs:
                errors.append(f"Cluster: chart and examples/ differ at {d}")
            if not diffs:
                print(f"ok: the chart's CloudNativePG Cluster has the spec of {args.plain}/examples/")

    for e in errors:
        print(f"FAIL: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
