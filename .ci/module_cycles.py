#!/usr/bin/env python3
"""Fails if any crate of the workspace has an import cycle between modules.

Cargo already forbids cycles between crates; this checks inside each one.
A module tree has a cycle when two sibling subtrees use each other, directly
or through other siblings: `config` uses `policy` and `policy` uses
`config`, or `proxy::forward` uses `upstream::pool` and `upstream::pool`
uses `proxy::body` (`proxy` <-> `upstream` at the top level).

How: every path in the source (`crate::a::b`, `super::x`, `self::x`, a
child module's name, and `use` groups like `crate::{a, b::c}`) is resolved
to the deepest module it names. A use from module A of module B is an edge
between the two children of their lowest common ancestor that contain A and
B; a module using its own ancestor's or descendant's items is containment,
not an edge. Each parent's children must form an acyclic graph. Unit tests
(`#[cfg(test)]` to the end of a file) are left out: they sit inside the
module they test.

  python3 .ci/module_cycles.py [CRATE_SRC_DIR ...]   # default: every crate
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH_RE = re.compile(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::(?:[A-Za-z_][A-Za-z0-9_]*|\{[^{}]*\}))+)")


def modules(src: Path):
    """{module path tuple: file} for a crate's src directory."""
    found = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["lib"], ["main"]):
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        found[tuple(parts)] = f
    return found


def strip(text: str) -> str:
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"'(?:[^'\\\n]|\\.[^']*)'", "''", text)  # char literals, '"' among them
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def expand(path: str):
    """`crate::{a, b::c}` -> ['crate::a', 'crate::b::c'] (one level of braces)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    head = path[: m.start()]
    return [head + item.strip() for item in m.group(1).split(",") if item.strip()]


def resolve(path: str, here: tuple, mods: dict):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] == "self":
        base, rest = here, parts[1:]
    elif parts[0] == "super":
        base, rest = here, parts
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif here + (parts[0],) in mods:
        base, rest = here, parts
    elif (parts[0],) in mods and here == ():
        base, rest = (), parts
    else:
        return None
    target = base
    for p in rest:
        if target + (p,) in mods:
            target = target + (p,)
        else:
            break
    return target


def edges(mods: dict):
    out = set()
    for here, f in mods.items():
        text = strip(f.read_text())
        for m in PATH_RE.finditer(text):
            for path in expand(m.group(1)):
                target = resolve(path, here, mods)
                if target is None or target == here:
                    continue
                n = 0
                while n < min(len(here), len(target)) and here[n] == target[n]:
                    n += 1
                if n == len(here) or n == len(target):
                    continue  # an ancestor's or a descendant's items
                out.add((here[: n + 1], target[: n + 1]))
    return out


def cycles(edge_set):
    graph = {}
    for a, b in edge_set:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def main():
    dirs = [Path(a) for a in sys.argv[1:]] or [ROOT / "src"] + sorted(ROOT.glob("crates/*/src"))
    bad = 0
    for src in dirs:
        mods = modules(src)
        e = edges(mods)
        found = cycles(e)
        name = src.parent.name if src.parent != ROOT else "residency-proxy"
        for scc in found:
            bad += 1
            names = ["::".join(m) for m in scc]
            via = sorted("::".join(a) + " -> " + "::".join(b) for a, b in e if a in scc and b in scc)
            print(f"{name}: import cycle between {', '.join(names)}\n    " + "\n    ".join(via))
        print(f"{name}: {len(mods)} modules, {len(e)} edges between siblings, {len(found)} cycles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
