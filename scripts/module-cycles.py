#!/usr/bin/env python3
"""Lists import circles among the modules of each crate of the workspace.

Each source file is a module (`a/mod.rs` and `a.rs` are `a`). A module depends on another when
it names it through `crate::…` or `super::…` (in `use` items or in paths), outside comments
and its `#[cfg(test)]` tests. Circles are the strongly connected components of that graph with more
than one module; a module naming its own submodules or its parent is not a circle (they are
one room). The same is then checked one level up, between rooms: each top-level module, a
folder counting as one with everything in it. Exits 1 when there is a circle.

Usage: scripts/module-cycles.py [CRATE_DIR...]   (default: every workspace crate)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The workspace's crates, from its Cargo.toml (`tests` is the end-to-end suite, not a crate
# with modules of its own).
CRATES = [
    m
    for m in re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text())
    .group(1)
    .replace('"', "")
    .replace(",", " ")
    .split()
    if m != "tests"
]


def modules(src: Path) -> dict[tuple[str, ...], Path]:
    """Module path → file, for every .rs file under src."""
    out = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        out[tuple(parts)] = f
    return out


def strip_tests(text: str) -> str:
    """The code without comments (doc links are not dependencies) and without its
    `#[cfg(test)] mod tests { … }` block (at the end, by convention)."""
    i = text.find("#[cfg(test)]\nmod tests")
    text = text if i < 0 else text[:i]
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` → ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        items.append(cur)
    return [p for item in items if item for p in expand_use(prefix + item)]


def references(text: str, me: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Absolute module paths (possibly too long: items follow) that `text` names."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand_use(m.group(1))
    paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
    out = set()
    for p in paths:
        p = p.split(" as ")[0]
        parts = p.split("::")
        if parts[0] == "crate":
            out.add(tuple(parts[1:]))
        elif parts[0] == "super":
            base = list(me)
            while parts and parts[0] == "super":
                base = base[:-1]
                parts = parts[1:]
            out.add(tuple(base + parts))
    return out


def resolve(path: tuple[str, ...], mods: dict) -> tuple[str, ...] | None:
    """The longest module that `path` starts with."""
    for n in range(len(path), 0, -1):
        if path[:n] in mods:
            return path[:n]
    return None


def sccs(graph: dict) -> list[list]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def related(a: tuple, b: tuple) -> bool:
    """One is the other's ancestor: a folder and its own files are one room."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def rooms(graph: dict) -> dict:
    """The same graph one level up: each top-level module (a file, or a folder with all its
    files) is one node; the crate root is left out (it names every module)."""
    out: dict = {}
    for m, deps in graph.items():
        if not m:
            continue
        out.setdefault(m[:1], set()).update(d[:1] for d in deps if d and d[:1] != m[:1])
    return out


def report(what: str, graph: dict) -> int:
    edges = sum(len(v) for v in graph.values())
    circles = [c for c in sccs(graph) if len(c) > 1]
    print(f"  {what}: {len(graph)} modules, {edges} dependencies, {len(circles)} circles")
    for c in circles:
        names = sorted("::".join(m) or "(root)" for m in c)
        print("    circle: " + " <-> ".join(names))
    return len(circles)


def main() -> int:
    dirs = [Path(d) for d in sys.argv[1:]] or [ROOT / c for c in CRATES]
    found = 0
    for crate in dirs:
        mods = modules(crate / "src")
        graph = {m: set() for m in mods}
        for m, f in mods.items():
            for ref in references(strip_tests(f.read_text()), m):
                r = resolve(ref, mods)
                if r is not None and r != m and not related(r, m):
                    graph[m].add(r)
        print(f"{crate.name}:")
        found += report("files", graph)
        found += report("rooms (top-level modules, folders whole)", rooms(graph))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
