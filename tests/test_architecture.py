"""The package layout's rules (docs/architecture.md), checked on the source: no import cycles, and imports
flow downwards: commands/ on top, pipeline.py above the stages, train/ and eval/ never import each other,
run/ and config/ at the bottom. Function-level (lazy) imports count like module-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "harness"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The harness modules `name` imports anywhere in its source (module or function level)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("harness")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("harness"):
                continue
            for a in node.names:  # `from harness.eval import metrics` imports the module harness.eval.metrics
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# (importer stage, imported stage): never. Stages are the sub-packages (and pipeline, cli) of harness.
FORBIDDEN = [
    ("train", "eval"), ("eval", "train"),  # sibling stages: pipeline.py runs one after the other
    *[(s, "pipeline") for s in ("config", "run", "data", "model", "train", "eval", "sweep", "report", "human")],
    *[(s, "commands") for s in ("config", "run", "data", "model", "train", "eval", "sweep", "report", "human",
                                "pipeline", "recipes")],
    *[("run", s) for s in ("data", "model", "train", "eval", "sweep", "report", "human")],
    *[("report", s) for s in ("train", "eval", "model", "data", "sweep", "pipeline")],  # reports read records only
]
# config/rules.py checks metric names against the metric registry at compose time; that module imports no ML
# library and nothing of harness.config, so the check adds no cycle.
ALLOWED = {("harness.config.rules", "harness.eval.metrics")}


@pytest.mark.parametrize("importer,imported", FORBIDDEN)
def test_imports_flow_downwards(importer, imported):
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps
           if _stage(a) == importer and _stage(b) == imported and (a, b) not in ALLOWED]
    assert bad == []


def test_config_imports_no_stage_but_the_metric_registry():
    bad = [(a, b) for a, deps in GRAPH.items() if _stage(a) == "config" for b in deps
           if _stage(b) not in ("config", "paths", "atomic", "") and (a, b) not in ALLOWED]
    assert bad == []


def test_objective_names_in_the_config_schema_are_the_registry():
    from harness.config import ALLOWED as CONFIG_ALLOWED
    from harness.train.objectives import OBJECTIVES

    assert set(CONFIG_ALLOWED["train.objective"]) == set(OBJECTIVES)


def test_data_format_names_in_the_config_schema_are_the_registry():
    from harness.config import ALLOWED as CONFIG_ALLOWED
    from harness.data.formats import FORMATS

    assert set(CONFIG_ALLOWED["data.format"]) == set(FORMATS)


def test_pair_formats_in_the_config_schema_are_the_registry():
    from harness.config.schema import PAIR_FORMATS
    from harness.data.formats import FORMATS

    assert set(PAIR_FORMATS) == {name for name, f in FORMATS.items() if f.pairs}


def test_modules_stay_readable_in_one_sitting():
    sizes = {name: len(p.read_text(encoding="utf-8").splitlines()) for name, p in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > 600} == {}
