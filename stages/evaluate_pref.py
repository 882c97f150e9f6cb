"""Stage evaluate_pref: base versus preference-tuned on the held-out pairs.

    python -m stages.evaluate_pref dpo|orpo

Preference accuracy and log-probability margin (tunelab.evaluation.preference) and the
generation scores of the SFT scenarios against the chosen answers (same prompts, seed and
decoding for both models). Writes reports/metrics/evaluate_pref/<name>.json and
reports/generations/<name>.jsonl.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import provenance
from tunelab.runtime import run_stage
from tunelab.scenarios import PREFERENCE


def evaluate_pref(name: str) -> None:
    from tunelab.config import load_section
    from tunelab.errors import TunelabError
    from tunelab.evaluation.preference import preference_scores
    from tunelab.evaluation.results import write_results
    from tunelab.evaluation.sft import base_vs_tuned, evaluate_text
    from tunelab.io import read_jsonl

    params = load_section(f"evaluate_pref.{name}")
    val = Path("data/prepared/preference/val.jsonl")
    records = read_jsonl(val)[: params.max_samples]
    if not records or "rejected" not in records[0]:
        raise TunelabError(str(val), "not prepared preference pairs (no 'rejected')")
    with provenance.Timer() as timer:
        results, outputs = evaluate_text(
            params,
            Path("models/base/text"),
            Path("adapters") / name,
            records,
            extra=lambda model, tok: preference_scores(model, tok, records, params.batch_size),
        )
    metrics, generations = base_vs_tuned(records, results, outputs)
    write_results(name, metrics, generations, stage_name="evaluate_pref")
    print(
        f"evaluate_pref {name} ({len(records)} pairs, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {results['base'][k]} -> {results['tuned'][k]}" for k in results["base"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=PREFERENCE)
    args = parser.parse_args()
    run_stage(lambda: evaluate_pref(args.name))


if __name__ == "__main__":
    main()
