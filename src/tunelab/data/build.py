"""Every prepare scenario behind one interface: build (read and check, in memory) and write.

stages.prepare builds and writes; stages.check only builds, so that a bad input stops
`dvc repro` before DVC deletes anything (see stages/check.py). Which loader reads which
scenario is tunelab.scenarios' registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.common import split_records, write_splits
from tunelab.errors import TunelabError


@dataclass
class Prepared:
    """A scenario's records, split, with its data card; nothing written yet."""

    scenario: str
    splits: dict[str, list[dict[str, Any]]]
    card: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


def build_prepared(
    scenario: str, loader: Callable[[Any], Any], params: Any, splits: tuple[str, str]
) -> Prepared:
    """Read and check a scenario's raw inputs with its ``loader`` and split the records (in
    memory). ``splits`` other than (train, val): the source ships its own (GSM8K's train
    and test files), which the loader returns as they are."""
    if splits != ("train", "val"):
        first, second, card = loader(params)
        return Prepared(scenario, dict(zip(splits, (first, second), strict=True)), card)
    records, card = loader(params)
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
