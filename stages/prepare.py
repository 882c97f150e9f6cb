"""Stage prepare: raw data of one scenario -> data/prepared/<scenario>/{train,val}.jsonl + data card.

python -m stages.prepare alpaca|medical|legal
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
}


def prepare(scenario: str) -> None:
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
    parser.add_argument("scenario", choices=sorted(PREPARERS))
    args = parser.parse_args()
    stage.run(lambda: prepare(args.scenario))


if __name__ == "__main__":
    main()
