#!/usr/bin/env python3
"""Checks that the modules under src/ import each other in one direction only.

Every file is a module (`src/settings/smtp/http.rs` is `settings::smtp::http`). A module depends on
another when its code names it: `crate::a::b`, `super::x`, `self::x` or a re-export through a
parent. A path is resolved to the longest module it names. A parent declaring its children (`mod x;`,
`pub use x::Y`) is structure, not a dependency, and is ignored; so is test code (`#[cfg(test)] mod
tests`). Any cycle among the remaining edges is printed and fails the check. Functions longer than
MAX_FN_LINES lines fail it too.

Usage: python3 .ci/module_cycles.py [--graph]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
MAX_FN_LINES = 100
MAX_FILE_LINES = 600
# Top-level modules by layer, highest first: a module uses modules of its own layer or below.
# An arrow from a lower layer to a higher one "runs back up"; at most MAX_BACK_ARROWS may. The
# features' HTTP handlers live in the features' folders, so what they share (state, auth, error,
# extractors) is a layer below the features.
LAYERS = [
    ["main"],
    ["startup", "routes", "openapi", "health", "console"],
    ["notifications", "delivery", "settings", "webhooks", "suppressions", "metrics"],
    ["state", "auth", "extract", "error", "validation", "rate_limit", "telemetry"],
    ["sandbox", "mail", "outbound", "store"],
    ["db"],
    ["events", "domain", "config", "secrets"],
]
MAX_BACK_ARROWS = 2


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return "crate" if parts == ["lib"] else "main"
    return "::".join(parts)


def strip_tests_and_comments(text: str) -> str:
    # Drop `#[cfg(test)] mod ... { ... }` blocks (brace-matched) and line comments.
    out = []
    i = 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    code = "".join(out)
    return "\n".join(line.split("//")[0] for line in code.splitlines())


def check_folders(edges: dict) -> bool:
    """Collapses the module graph to top-level modules; fails on a cycle among them or on more
    than MAX_BACK_ARROWS arrows from a lower layer to a higher one. Returns whether it failed."""
    top = lambda m: m.split("::")[0]
    folders = {}
    for v, targets in edges.items():
        folders.setdefault(top(v), set())
        for t in targets:
            if top(t) != top(v):
                folders[top(v)].add(top(t))
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    failed = False
    unknown = sorted(f for f in folders if f not in rank and f != "crate")
    if unknown:
        failed = True
        print(f"top-level modules in no layer of LAYERS: {', '.join(unknown)}")
    if "--graph" in sys.argv:
        print("folders:")
        for v in sorted(folders, key=lambda f: (rank.get(f, -1), f)):
            print(f"  {v} -> {', '.join(sorted(folders[v]))}")
    back = sorted(
        (v, t) for v, ts in folders.items() for t in ts if rank.get(t, 99) < rank.get(v, 99)
    )
    for v, t in back:
        print(f"arrow back up: {v} -> {t}")
    if len(back) > MAX_BACK_ARROWS:
        failed = True
        print(f"{len(back)} arrows run back up (limit {MAX_BACK_ARROWS})")
    # Any cycle among folders, whatever the layers say.
    seen, done = set(), set()

    def visit(v, path):
        nonlocal failed
        seen.add(v)
        path.append(v)
        for w in sorted(folders.get(v, ())):
            if w in path:
                failed = True
                print(f"cycle among folders: {' -> '.join(path[path.index(w):] + [w])}")
            elif w not in done and w not in seen:
                visit(w, path)
        path.pop()
        done.add(v)

    for v in sorted(folders):
        if v not in done:
            seen.clear()
            visit(v, [])
    return failed


def main() -> int:
    files = sorted(ROOT.rglob("*.rs"))
    modules = {module_name(f): f for f in files}
    edges = {m: set() for m in modules}

    def resolve(base: list, segments: list):
        """Longest existing module named by base + segments."""
        best = None
        for n in range(len(segments), -1, -1):
            name = "::".join(base + segments[:n]) if base + segments[:n] else "crate"
            if name in modules:
                best = name
                break
        return best

    path_re = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
    use_group_re = re.compile(r"\buse\s+(crate|super|self)((?:::\w+)*)::\{([^;]*)\};", re.S)
    for name, f in modules.items():
        if name == "main":
            continue
        code = strip_tests_and_comments(f.read_text())
        own = [] if name == "crate" else name.split("::")
        is_mod_file = f.name in ("mod.rs", "lib.rs")
        here = own if is_mod_file else own[:-1]

        def base_for(kind: str):
            if kind == "crate":
                return []
            if kind == "self":
                return list(own) if is_mod_file else list(own)
            return list(here[:-1]) if is_mod_file else list(here)

        targets = []
        for m in use_group_re.finditer(code):
            base = base_for(m.group(1)) + [s for s in m.group(2).split("::") if s]
            for item in re.split(r",", m.group(3)):
                item = item.strip().split(" as ")[0].strip()
                if not item or item == "self":
                    targets.append(resolve(base, []))
                    continue
                segs = [s for s in item.split("::") if s and s != "{"]
                targets.append(resolve(base, segs))
        for m in path_re.finditer(code):
            base = base_for(m.group(1))
            segs = [s for s in m.group(2).split("::") if s]
            targets.append(resolve(base, segs))
        # Names bound to modules by `use` (`use crate::{notifications, settings};`, `use super::store;`)
        # and then used as paths (`notifications::http::stats`).
        aliases = {}
        for t in targets:
            if t and t != "crate":
                aliases.setdefault(t.split("::")[-1], t)
        for alias, target in aliases.items():
            for m in re.finditer(r"(?<![:\w])" + re.escape(alias) + r"((?:::\w+)+)", code):
                segs = [s for s in m.group(1).split("::") if s]
                targets.append(resolve(target.split("::"), segs))
        for t in targets:
            if t is None or t == name or t == "crate":
                continue
            # A parent naming its own descendants is structure.
            if name == "crate" or t.startswith(name + "::"):
                continue
            edges[name].add(t)

    # Tarjan's strongly connected components.
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)

    if "--graph" in sys.argv:
        for v in sorted(edges):
            print(f"{v} -> {', '.join(sorted(edges[v]))}")

    failed = False
    failed |= check_folders(edges)
    for comp in sccs:
        if len(comp) > 1:
            failed = True
            members = set(comp)
            print(f"cycle among {len(comp)} modules: {', '.join(sorted(comp))}")
            for v in sorted(comp):
                inside = sorted(edges[v] & members)
                print(f"  {v} -> {', '.join(inside)}")

    fn_re = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
    for f in files:
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = fn_re.match(lines[i])
            if not m:
                i += 1
                continue
            depth, started, j = 0, False, i
            while j < len(lines):
                for ch in lines[j]:
                    if ch == "{":
                        depth += 1
                        started = True
                    elif ch == "}":
                        depth -= 1
                if started and depth == 0:
                    break
                if not started and lines[j].rstrip().endswith(";"):
                    break
                j += 1
            length = j - i + 1
            if length > MAX_FN_LINES:
                failed = True
                print(f"{f.relative_to(ROOT.parent)}:{i + 1}: fn {m.group(6)} is {length} lines (limit {MAX_FN_LINES})")
            i += 1

    for f in files:
        count = len(f.read_text().splitlines())
        if count > MAX_FILE_LINES:
            failed = True
            print(f"{f.relative_to(ROOT.parent)}: {count} lines (limit {MAX_FILE_LINES})")

    if not failed:
        print(
            f"module check: {len(modules)} modules, no cycle among them or their folders, "
            f"no function over {MAX_FN_LINES} lines, no file over {MAX_FILE_LINES} lines"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
