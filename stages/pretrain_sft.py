"""Stage pretrain_sft: the scenario's SFT started from its pretrain adapter, evaluated.

    python -m stages.pretrain_sft medical|legal

train.<scenario> and evaluate.<scenario> exactly as train@/evaluate@<scenario> use them
(same steps, same seed, same held-out prompts and decoding); only the start differs:
adapters/pretrain_<scenario> instead of train.<scenario>.init_from. Writes
adapters/<scenario>_pretrained/ (adapter, run card), its dvclive curves in
reports/train/<scenario>_pretrained/, and reports/metrics/pretrain_sft/<scenario>.json:
the tuned metrics of evaluate@<scenario> (without pretraining, read from
reports/metrics/evaluate/<scenario>.json) next to this run's (with pretraining).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import PRETRAINED


def pretrain_sft(scenario: str) -> None:
    from tunelab.config import load_section
    from tunelab.errors import TunelabError
    from tunelab.training.backends import select_backend

    params = load_section(f"train.{scenario}")
    eval_params = load_section(f"evaluate.{scenario}")
    backend = select_backend(params.backend, f"train.{scenario}.backend")  # before transformers
    from tunelab.evaluation.sft import evaluate_text
    from tunelab.io import read_jsonl, write_json
    from tunelab.training.sft import train_sft

    without_file = Path("reports/metrics/evaluate") / f"{scenario}.json"
    if not without_file.is_file():
        raise TunelabError(str(without_file), f"not found: run `dvc repro evaluate@{scenario}`")
    without = json.loads(without_file.read_text(encoding="utf-8"))["tuned"]
    init = Path("adapters") / f"pretrain_{scenario}"
    base_dir = Path("models/base/text")
    out_dir = Path("adapters") / f"{scenario}_pretrained"
    card = train_sft(
        scenario,
        params,
        backend,
        base_dir=base_dir,
        data_dir=Path("data/prepared") / scenario,
        out_dir=out_dir,
        live_dir=Path("reports/train") / f"{scenario}_pretrained",
        init_adapter=init,
        checkpoint_stage="pretrain_sft",
    ).card
    records = read_jsonl(Path("data/prepared") / scenario / "val.jsonl")[: eval_params.max_samples]
    results, _ = evaluate_text(eval_params, base_dir, out_dir, records, models=("tuned",))
    with_pt = results["tuned"]
    metrics = {
        "without_pretraining": without,
        "with_pretraining": with_pt,
        "delta": {k: round(with_pt[k] - without[k], 4) for k in with_pt if k in without},
        "samples": len(records),
        "steps": card["train"]["global_step"],
        "without_starts_from": params.init_from,  # train@<scenario>'s start
        "with_starts_from": str(init),
    }
    write_json(Path("reports/metrics/pretrain_sft") / f"{scenario}.json", metrics)
    print(
        f"pretrain_sft {scenario}: {card['train']['global_step']} steps from {init}; "
        + "; ".join(f"{k} {without.get(k)} -> {v}" for k, v in with_pt.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=PRETRAINED)
    args = parser.parse_args()
    run_stage(lambda: pretrain_sft(args.scenario))


if __name__ == "__main__":
    main()
