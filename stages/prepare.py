"""Stage prepare: raw data of one scenario -> data/prepared/<scenario>/{train,val}.jsonl + data card.

python -m stages.prepare alpaca|medical|legal|gsm8k|car_insurance|preference

gsm8k keeps its own train/test files (GSM8K ships both): data/prepared/gsm8k/{train,test}.jsonl.
car_insurance also writes the resized images (images/). The reading and checking is
tunelab.scenarios.build, which stages.check runs first (in memory) under `dvc repro`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import SCENARIOS


def prepare(scenario: str) -> None:
    from tunelab.config import load_section
    from tunelab.data.build import write
    from tunelab.scenarios import build

    prepared = build(scenario, load_section(f"prepare.{scenario}"))
    write(prepared, Path("data/prepared") / scenario)
    card = prepared.card
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in prepared.splits.items())
    kept = sum(len(rows) for rows in prepared.splits.values())
    print(
        f"prepare {scenario}: read {card['rows_read']}, kept {kept} ({sizes}), "
        f"dropped {card['rows_dropped']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    run_stage(lambda: prepare(args.scenario))


if __name__ == "__main__":
    main()
