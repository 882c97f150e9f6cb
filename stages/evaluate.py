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


def write_results(scenario: str, metrics: dict, generations: list[dict]) -> None:
    """reports/metrics/evaluate/<s>.json and reports/generations/<s>.jsonl, each atomic."""
    import json

    from tunelab.io import atomic_file, write_json

    write_json(Path("reports/metrics/evaluate") / f"{scenario}.json", metrics)
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
    from transformers import set_seed

    from tunelab.data.common import prompt_of, reference_of
    from tunelab.evaluation.sft import generate, heldout_loss, text_scores
    from tunelab.generation import for_generation, resolve_engine
    from tunelab.io import read_jsonl
    from tunelab.models.loading import (
        check_adapter,
        load_adapter,
        load_causal_lm,
        load_tokenizer,
        resolve_base,
    )

    adapter_dir = Path("adapters") / scenario
    records = read_jsonl(Path("data/prepared") / scenario / "val.jsonl")[: params.max_samples]
    name_or_path, revision = resolve_base(Path("models/base/text"))
    check_adapter(adapter_dir)  # before anything is loaded: a broken adapter fails fast
    tokenizer = load_tokenizer(str(adapter_dir), None, False)  # the template used in training
    model = load_causal_lm(
        name_or_path,
        revision,
        params.model.dtype,
        params.model.load_in_4bit,
        params.model.trust_remote_code,
    )
    # A 4-bit model generates compiled from its dequantized weights (generation.quantized).
    model = for_generation(model, params.generation).eval()
    engine = resolve_engine(params.generation, model)
    prompts = [prompt_of(r) for r in records]
    refs = [reference_of(r) for r in records]
    convs = [r["messages"] for r in records]

    results, outputs = {}, {}
    with stage.Timer() as timer:
        for name in ("base", "tuned"):
            if name == "tuned":
                model = load_adapter(model, adapter_dir)
                model.eval()
            set_seed(params.seed)
            outputs[name] = generate(
                model, tokenizer, prompts, params.decoding, params.batch_size, params.generation
            )
            results[name] = heldout_loss(model, tokenizer, convs, params.batch_size) | text_scores(
                outputs[name], refs, params.bleu_tokenize, params.exact_match
            )
    metrics = {
        **results,
        "samples": len(records),
        "delta": {k: round(results["tuned"][k] - results["base"][k], 4) for k in results["base"]},
    }
    generations = [
        {"prompt": p[-1]["content"], "reference": ref, "base": b, "tuned": t}
        for p, ref, b, t in zip(prompts, refs, outputs["base"], outputs["tuned"], strict=True)
    ]
    write_results(scenario, metrics, generations)
    print(
        f"evaluate {scenario} ({len(records)} prompts, engine {engine}, {timer.seconds:.0f}s): "
        + "; ".join(f"{k} {results['base'][k]} -> {results['tuned'][k]}" for k in results["base"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    args = parser.parse_args()
    stage.run(lambda: evaluate(args.scenario))


if __name__ == "__main__":
    main()
