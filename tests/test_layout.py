"""The house plan (shared/DESIGN.md, Layout): no import cycle, modules and functions of a
readable size, scenarios named in one place, bench/ holding benchmarks only."""

from __future__ import annotations

import ast
import subprocess

import yaml

from tunelab.scenarios import PREFERENCE, PRETRAINED, SCENARIOS, TRAINED

from .conftest import ROOT

LONG_ON_PURPOSE = {"write_gguf"}  # the GGUF writer reads top to bottom as the format does


def _sources() -> dict[str, str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "src", "stages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    modules = {}
    for rel in (f for f in listed if f.endswith(".py") and (ROOT / f).is_file()):
        name = rel[:-3].removeprefix("src/").removesuffix("/__init__").replace("/", ".")
        modules[name] = rel
    return modules


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
    graph = {}
    for name, rel in modules.items():
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found = [base, *(f"{base}.{a.name}" for a in node.names)]
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_cycle() -> None:
    graph = _imports(_sources())
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_modules_and_functions_are_of_a_readable_size() -> None:
    long = []
    for rel in _sources().values():
        text = (ROOT / rel).read_text(encoding="utf-8")
        if text.count("\n") > 500:
            long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                if size > 80 and node.name not in LONG_ON_PURPOSE:
                    long.append(f"{rel}:{node.lineno} {node.name}: {size} lines")
    assert long == []


def test_dvc_yaml_names_the_registered_scenarios() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    listed = {name: stage["foreach"] for name, stage in stages.items() if "foreach" in stage}
    as_names = {k: list(v) if isinstance(v, dict) else v for k, v in listed.items()}
    assert as_names["prepare"] == list(SCENARIOS)
    assert as_names["train"] == as_names["evaluate"] == list(TRAINED)
    assert as_names["pretrain"] == list(PRETRAINED)
    assert as_names["train_pref"] == as_names["evaluate_pref"] == list(PREFERENCE)
    assert set(as_names["pretrain_sft"]) <= set(PRETRAINED)


def test_every_registered_function_imports() -> None:
    for s in SCENARIOS.values():
        assert callable(s.load_loader()), s.name
        if s.recipe:
            assert callable(s.load_recipe()) and callable(s.load_evaluator()), s.name


def test_bench_holds_benchmarks_only() -> None:
    for path in (ROOT / "bench").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "def main(" in text, f"{path.name}: not a benchmark with a main()"
    for name in ("gpu_pipeline.py", "bundle.py", "recorded.py", "NOTES.md"):
        assert not (ROOT / "bench" / name).exists(), name
