"""Stage evaluate: base versus tuned on the held-out set of one text scenario.

    python -m stages.evaluate alpaca|medical|legal|gsm8k|car_insurance

Writes reports/metrics/evaluate/<scenario>.json (fixed name, for `dvc metrics
diff`) and reports/generations/<scenario>.jsonl (prompt, reference, base, tuned).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import stage

SCENARIOS = ("alpaca", "medical", "legal", "gsm8k", "car_insurance")


def write_results(
    scenario: str, metrics: dict, generations: list[dict], stage_name: str = "evaluate"
) -> None:
    """reports/metrics/<stage>/<s>.json and reports/generations/<s>.jsonl, each atomic."""
    import json

    from tunelab.io import atomic_file, write_json

    write_json(Path("reports/metrics") / stage_name / f"{scenario}.json", metrics)
    with atomic_file(Path("reports/generations") / f"{scenario}.jsonl") as fh:
        for row in generations:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_gsm8k() -> None:
    """lm-eval's gsm8k task (strict/flexible) plus the <answer> scorer, base vs tuned."""
    from tunelab.config import load_section
    from tunelab.evaluation.gsm8k import evaluate_gsm8k as run

    params = load_section("evaluate.gsm8k")
    with stage.Timer() as timer:
        metrics, generations = run(
            params,
            base_dir=Path("models/base/text"),
            adapter_dir=Path("adapters/gsm8k"),
            data_dir=Path("data/prepared/gsm8k"),
        )
    write_results("gsm8k", metrics, generations)
    keys = ("strict_match", "flexible_extract", "answer_accuracy", "format_strict")
    print(
        f"evaluate gsm8k ({metrics['samples']} problems, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {metrics['base'][k]} -> {metrics['tuned'][k]}" for k in keys)
    )


def evaluate_car_insurance() -> None:
    """Mileage reading off held-out images: exact match, CER, format compliance, base vs tuned."""
    from tunelab.config import load_section
    from tunelab.evaluation.vl import evaluate_vl

    params = load_section("evaluate.car_insurance")
    with stage.Timer() as timer:
        metrics, rows = evaluate_vl(
            params,
            base_dir=Path("models/base/vision"),
            adapter_dir=Path("adapters/car_insurance"),
            data_dir=Path("data/prepared/car_insurance"),
        )
    write_results("car_insurance", metrics, rows)
    print(
        f"evaluate car_insurance ({metrics['samples']} images, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {metrics['base'][k]} -> {metrics['tuned'][k]}" for k in metrics["base"])
    )


def evaluate(scenario: str) -> None:
    if scenario == "gsm8k":
        return evaluate_gsm8k()
    if scenario == "car_insurance":
        return evaluate_car_insurance()
    from tunelab.config import load_section

    params = load_section(f"evaluate.{scenario}")
    from tunelab.evaluation.sft import base_vs_tuned, evaluate_text
    from tunelab.io import read_jsonl

    records = read_jsonl(Path("data/prepared") / scenario / "val.jsonl")[: params.max_samples]
    with stage.Timer() as timer:
        results, outputs = evaluate_text(
            params, Path("models/base/text"), Path("adapters") / scenario, records
        )
    metrics, generations = base_vs_tuned(records, results, outputs)
    write_results(scenario, metrics, generations)
    print(
        f"evaluate {scenario} ({len(records)} prompts, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {results['base'][k]} -> {results['tuned'][k]}" for k in results["base"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    args = parser.parse_args()
    stage.run(lambda: evaluate(args.scenario))


if __name__ == "__main__":
    main()
