"""The layout shows the architecture (issue 25): imports point down only.

The graph is built from the source, not from what happens to be imported: every ``import`` and ``from ...
import`` anywhere in a module (top level, inside functions, under ``TYPE_CHECKING``) and every registry
``defer("name", "lipsweep.module")`` (a deferred import all the same) is an edge. The test fails on any cycle,
on an import into a higher layer, and on Ray, MLflow or Optuna outside the one layer that may touch them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Layers, bottom to top: a module imports only from its own subpackage (acyclically) or from a lower layer.
LAYERS = {
    "core": 0, "problems": 1, "priors": 2, "pruning": 3, "fitting": 3, "stopping": 3, "stopping.rule": 3, "lottery": 4,
    "stopping.replay": 4, "stopping.es_replay": 4,
    "kinds": 5, "experiments": 6, "tracking": 7, "stopping.search": 7, "sweep": 8, "analysis": 8,
    "stopping.es_search": 8, "cli": 9,
    "shims": 10,
}
SHIMS = ("lipsweep.tasks", "lipsweep.targets", "lipsweep.trial")  # documented plugin paths, kept for users
# Third-party frameworks at the edges: who may import each (module name prefixes).
EDGES = {"ray": ("lipsweep.sweep.",), "mlflow": ("lipsweep.tracking.", "lipsweep.analysis.runs"),
         "optuna": ("lipsweep.stopping.search", "lipsweep.stopping.es_search")}


def modules() -> dict[str, Path]:
    """Every module of the package, ``analysis/`` under its installed name ``lipsweep.analysis``."""
    out = {}
    for base, name in ((ROOT / "lipsweep", "lipsweep"), (ROOT / "analysis", "lipsweep.analysis")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((name, *parts))] = path
    return out


def _targets(node: ast.AST, here: str, is_pkg: bool) -> list[tuple[str, ...]]:
    """What one node imports, as alternatives: ``from p import m`` is module ``p.m`` if that is a module,
    else a name of ``p``."""
    if isinstance(node, ast.Import):
        return [(a.name,) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = here.split(".") if is_pkg else here.split(".")[:-1]
            base = ".".join([*pkg[: len(pkg) - node.level + 1], *([base] if base else [])])
        return [(f"{base}.{a.name}", base) for a in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "defer":
        return [(a.value.split(":")[0],) for a in node.args
                if isinstance(a, ast.Constant) and str(a.value).startswith("lipsweep.")]
    return []


def imports() -> dict[str, set[str]]:
    """Module -> every name it imports (its own package's modules resolved, third-party as written)."""
    mods = modules()
    out = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for alternatives in _targets(node, name, path.name == "__init__.py"):
                found.add(next((t for t in alternatives if t in mods), alternatives[-1]))
        out[name] = found - {name}
    return out


def graph() -> dict[str, set[str]]:
    imp, mods = imports(), modules()
    return {m: {t for t in ts if t in mods} for m, ts in imp.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str:
    if module in SHIMS or module == "lipsweep" or module.endswith("__main__"):
        return "shims"
    parts = module.split(".")[1:]
    two = ".".join(parts[:2])
    return two if two in LAYERS else parts[0]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    assert {m: layer(m) for m in modules() if layer(m) not in LAYERS} == {}


def test_imports_point_down_only():
    up = sorted(f"{m} ({layer(m)}) -> {t} ({layer(t)})" for m, ts in graph().items() for t in ts
                if layer(t) != layer(m) and LAYERS[layer(t)] >= LAYERS[layer(m)])
    assert up == []


def test_ray_mlflow_and_optuna_only_at_their_edge():
    wrong = sorted(f"{m} imports {t}" for m, ts in imports().items() for t in ts for lib, allowed in EDGES.items()
                   if t.split(".")[0] == lib and not m.startswith(allowed))
    assert wrong == []


def test_the_checks_see_a_cycle_an_upward_import_and_a_framework_import():
    """The guards themselves can fail: a planted cycle, upward edge and stray framework import are found."""
    g = {"lipsweep.core.a": {"lipsweep.core.b"}, "lipsweep.core.b": {"lipsweep.core.a"}, "lipsweep.cli.c": set()}
    assert cycles(g) == [["lipsweep.core.a", "lipsweep.core.b"]]
    assert LAYERS[layer("lipsweep.core.errors")] < LAYERS[layer("lipsweep.kinds.gan.kind")]
    assert layer("lipsweep.stopping.search") == "stopping.search" and layer("lipsweep.analysis.runs") == "analysis"
    tree = ast.parse("def f():\n    from ..x import y\n    import ray.tune\n")
    found = [t for n in ast.walk(tree) for t in _targets(n, "lipsweep.a.b", False)]
    assert found == [("lipsweep.x.y", "lipsweep.x"), ("ray.tune",)]
