"""Every prepare scenario behind one interface: its input paths, build (read and check, in
memory) and write. stages.prepare builds and writes; stages.check only builds, so that a
bad input stops `dvc repro` before DVC deletes anything (see stages/check.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.common import split_records, write_splits
from tunelab.errors import TunelabError

BUILDERS = {
    "alpaca": "tunelab.data.alpaca:prepare_alpaca",
    "medical": "tunelab.data.medical:prepare_medical",
    "legal": "tunelab.data.legal:prepare_legal",
    "car_insurance": "tunelab.data.car_insurance:prepare_car_insurance",  # + images/
    "gsm8k": "tunelab.data.gsm8k:build_gsm8k",  # its own train and test files
    "preference": "tunelab.data.preference:prepare_preference",  # + the rejected answers
}
SCENARIOS = tuple(BUILDERS)

# The params keys naming each scenario's inputs: dvc.yaml lists the same keys as the
# DVC dependencies of prepare@<scenario> and of check (tests/test_bad_inputs.py compares).
INPUT_KEYS = {
    "alpaca": ("source",),
    "medical": ("source",),
    "legal": ("exam_source", "counsel_source"),
    "gsm8k": ("train_source", "test_source"),
    "car_insurance": ("source", "image_dir"),
    "preference": ("source",),
}


@dataclass
class Prepared:
    """A scenario's records, split, with its data card; nothing written yet."""

    scenario: str
    splits: dict[str, list[dict[str, Any]]]
    card: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


def input_paths(scenario: str, params: Any) -> list[Path]:
    """The files and folders the scenario's params name as its inputs."""
    return [Path(getattr(params, key)) for key in INPUT_KEYS[scenario]]


def build(scenario: str, params: Any) -> Prepared:
    """Read and check a scenario's raw inputs and build its records (in memory)."""
    module, func = BUILDERS[scenario].split(":")
    builder = getattr(importlib.import_module(module), func)
    if scenario == "gsm8k":
        train, test, card = builder(params)
        return Prepared(scenario, {"train": train, "test": test}, card)
    records, card = builder(params)
    if len(records) < 2:
        raise TunelabError(
            f"prepare.{scenario}",
            f"only {len(records)} usable rows after filtering (dropped: {dict(card.dropped)})",
        )
    train, val = split_records(records, params.split)
    return Prepared(scenario, {"train": train, "val": val}, card.to_dict(train, val), card.files)


def write(prepared: Prepared, out: Path) -> None:
    """Write the splits as JSONL, the data card and any files into ``out``, atomically."""
    write_splits(out, prepared.splits, prepared.card, prepared.files)
