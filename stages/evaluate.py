"""Stage evaluate: base versus tuned on the held-out set of one scenario.

    python -m stages.evaluate alpaca|medical|legal|gsm8k|car_insurance

The evaluator comes from tunelab.scenarios (text scores, lm-eval's gsm8k task, the
mileage reading). Writes reports/metrics/evaluate/<scenario>.json (fixed name, for `dvc
metrics diff`) and reports/generations/<scenario>.jsonl (prompt, reference, base, tuned).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import TRAINED, scenario


def evaluate(name: str) -> None:
    from tunelab import provenance
    from tunelab.config import load_section
    from tunelab.evaluation.results import write_results

    s = scenario(name)
    params = load_section(f"evaluate.{name}")
    with provenance.Timer() as timer:
        metrics, generations = s.load_evaluator()(
            params,
            base_dir=s.base_dir,
            adapter_dir=Path("adapters") / name,
            data_dir=Path("data/prepared") / name,
        )
    write_results(name, metrics, generations)
    base, tuned = metrics["base"], metrics["tuned"]
    print(
        f"evaluate {name} ({metrics['samples']} samples, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {base[k]} -> {tuned[k]}" for k in s.headline or base)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=TRAINED)
    args = parser.parse_args()
    run_stage(lambda: evaluate(args.scenario))


if __name__ == "__main__":
    main()
