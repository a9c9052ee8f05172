"""Print the import structure of the two packages, one line per part, top
layer first: its modules and lines, and the parts it imports (with the number
of module-level imports behind each arrow; ``^`` marks an arrow into a higher
layer). A part is a top-level package or module of ``courier_spark``
(``courier_spark.core``, ``courier_spark.cli``, ...) or ``training``; the
imports are read from the code by grimp (import-linter's graph builder), the
layers from the layers contract in ``.importlinter``.

    .venv/bin/python scripts/import_map.py
"""
from __future__ import annotations

import configparser
import sys
from collections import Counter, defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def part(module: str) -> str:
    bits = module.split(".")
    return "training" if bits[0] == "training" else ".".join(bits[:2])


def layer_of() -> dict[str, int]:
    """Module or package name -> its layer in .importlinter's layers contract (0 = top)."""
    ini = configparser.ConfigParser()
    ini.read(ROOT / ".importlinter")
    layers = ini["importlinter:contract:layers"]["layers"].split("\n")
    return {name.strip(): i for i, row in enumerate(r for r in layers if r.strip()) for name in row.split(":")}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    layers = layer_of()
    graph = grimp.build_graph("courier_spark", "training", cache_dir=None)
    edges: dict[str, Counter] = defaultdict(Counter)
    modules: dict[str, int] = Counter()
    lines: dict[str, int] = Counter()
    for m in graph.modules:
        if m == "courier_spark":
            continue
        p = part(m)
        modules[p] += 1
        path = ROOT / Path(*m.split("."))
        f = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        lines[p] += len(f.read_text().splitlines()) if f.is_file() else 0
        for d in graph.find_modules_directly_imported_by(m):
            if d != "courier_spark" and part(d) != p:
                edges[p][part(d)] += 1
    rank = {p: layers.get(p, len(layers)) for p in modules}
    parts = sorted(modules, key=lambda p: (rank[p], p))
    total = sum(sum(c.values()) for c in edges.values())
    print(f"{len(parts)} parts, {sum(modules.values())} modules, {total} imports between parts")
    for p in parts:
        arrows = ", ".join(f"{'^' if rank[d] < rank[p] else ''}{d.removeprefix('courier_spark.')} {n}"
                           for d, n in sorted(edges[p].items(), key=lambda e: (rank[e[0]], e[0])))
        print(f"{p.removeprefix('courier_spark.'):<16} {modules[p]:>3} modules {lines[p]:>6} lines  -> {arrows or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
