"""Where an evaluation's results go: fixed file names, for `dvc metrics diff`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.io import atomic_file, write_json


def write_results(
    name: str, metrics: dict[str, Any], generations: list[dict], stage_name: str = "evaluate"
) -> None:
    """reports/metrics/<stage>/<name>.json and reports/generations/<name>.jsonl, each atomic."""
    write_json(Path("reports/metrics") / stage_name / f"{name}.json", metrics)
    with atomic_file(Path("reports/generations") / f"{name}.jsonl") as fh:
        for row in generations:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
