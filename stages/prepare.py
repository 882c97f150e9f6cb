"""Stage prepare: raw data of one scenario -> data/prepared/<scenario>/{train,val}.jsonl + data card.

python -m stages.prepare alpaca|medical|legal|gsm8k|car_insurance|preference

gsm8k keeps its own train/test files (GSM8K ships both): data/prepared/gsm8k/{train,test}.jsonl.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import stage

PREPARERS = {
    "alpaca": "tunelab.data.alpaca:prepare_alpaca",
    "medical": "tunelab.data.medical:prepare_medical",
    "legal": "tunelab.data.legal:prepare_legal",
    "car_insurance": "tunelab.data.car_insurance:prepare_car_insurance",  # + images/
    "preference": "tunelab.data.preference:prepare_preference",  # + the rejected answers
}


def prepare_gsm8k() -> None:
    from tunelab.config import load_section
    from tunelab.data.gsm8k import prepare_gsm8k as build

    card = build(load_section("prepare.gsm8k"), Path("data/prepared/gsm8k"))
    print(
        f"prepare gsm8k: read {card['rows_read']}, kept train {card['train_rows']}, "
        f"test {card['test_rows']}, dropped {card['rows_dropped']}"
    )


def prepare(scenario: str) -> None:
    if scenario == "gsm8k":
        return prepare_gsm8k()
    import importlib

    from tunelab.config import load_section
    from tunelab.data.common import split_records, write_prepared
    from tunelab.errors import TunelabError

    params = load_section(f"prepare.{scenario}")
    module, func = PREPARERS[scenario].split(":")
    records, card = getattr(importlib.import_module(module), func)(params)
    if len(records) < 2:
        raise TunelabError(
            f"prepare.{scenario}",
            f"only {len(records)} usable rows after filtering (dropped: {dict(card.dropped)})",
        )
    train, val = split_records(records, params.split)
    summary = write_prepared(Path("data/prepared") / scenario, train, val, card)
    print(
        f"prepare {scenario}: read {summary['rows_read']}, kept {summary['rows_kept']} "
        f"(train {len(train)}, val {len(val)}), dropped {summary['rows_dropped']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=sorted([*PREPARERS, "gsm8k"]))
    args = parser.parse_args()
    stage.run(lambda: prepare(args.scenario))


if __name__ == "__main__":
    main()
