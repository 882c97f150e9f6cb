"""What the pipeline left on disk, by scenario: data cards, curves, metrics, generations,
figures and run cards (the report knows no scenario by name)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.io import read_jsonl

# Directories under reports/ whose layout the report reads explicitly; PNGs in any
# other reports/<dir>/ are figures of the scenario <dir>.
KNOWN_DIRS = {"metrics", "train", "generations", "figures"}

Series = tuple[list[float], list[float]]


@dataclass
class Scenario:
    name: str
    data_card: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # title -> metrics
    # run ("" for the scenario's own training, else e.g. "warmup") -> series name -> (x, y)
    runs: dict[str, dict[str, Series]] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)
    generations_total: int = 0
    run_card: dict[str, Any] | None = None
    images: list[Path] = field(default_factory=list)  # relative to the reports dir


# ---------------------------------------------------------------------- discovery


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TunelabError(f"{path} line {err.lineno}", f"invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise TunelabError(str(path), "expected a JSON object")
    return data


def _read_tsv(path: Path) -> Series:
    """A dvclive series: a ``step`` column and the value in the last column."""
    steps, values = [], []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if not header or "step" not in header:
            raise TunelabError(str(path), "not a dvclive series (no 'step' column)")
        col = header.index("step")
        for i, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                steps.append(float(row[col]))
                values.append(float(row[-1]))
            except (ValueError, IndexError):
                raise TunelabError(f"{path} line {i}", f"not a number: {row!r}") from None
    return steps, values


def discover(root: Path) -> dict[str, Scenario]:
    """Every scenario that has at least one of the report's inputs under ``root``."""
    root = Path(root)
    reports = root / "reports"
    found: dict[str, Scenario] = {}

    def get(name: str) -> Scenario:
        return found.setdefault(name, Scenario(name))

    for card in sorted(root.glob("data/prepared/*/data_card.json")):
        get(card.parent.name).data_card = _read_json(card)
    for plots in sorted(reports.glob("train/*/**/plots/metrics")):
        parts = plots.relative_to(reports / "train").parts
        run = "/".join(parts[1:-2])
        series = get(parts[0]).runs.setdefault(run, {})
        for tsv in sorted(plots.rglob("*.tsv")):
            series[tsv.relative_to(plots).with_suffix("").as_posix()] = _read_tsv(tsv)
    for gen in sorted(reports.glob("generations/*.jsonl")):
        rows = read_jsonl(gen)
        scenario = get(gen.stem)
        scenario.generations, scenario.generations_total = rows, len(rows)
    for card in sorted(root.glob("adapters/*/run_card.json")):
        get(card.parent.name).run_card = _read_json(card)
    named = set(found)  # scenarios named by data, curves, generations or adapters
    for metrics in sorted(reports.glob("metrics/*/*.json")):
        stage, name = metrics.parent.name, metrics.stem
        if name in named:
            get(name).metrics[stage] = _read_json(metrics)
        else:
            get(stage).metrics[name] = _read_json(metrics)
    for png in sorted(reports.glob("*/**/*.png")):
        rel = png.relative_to(reports)
        if rel.parts[0] in KNOWN_DIRS:
            continue
        get(rel.parts[0]).images.append(rel)
    return dict(sorted(found.items()))
