"""Stage pretrain: continual pretraining of one scenario on its domain text.

    python -m stages.pretrain medical|legal

Reads pretrain.<scenario> and the domain documents it names; drops documents that quote
the scenario's SFT held-out set (data/prepared/<scenario>/val.jsonl). Writes
data/prepared/pretrain_<scenario>/ (train/val documents, data_card.json),
adapters/pretrain_<scenario>/ (LoRA and any embedding copies, tokenizer, run card; the
start of train@<scenario> when train.<scenario>.init_from names it), dvclive curves in
reports/train/pretrain_<scenario>/, and reports/metrics/pretrain/<scenario>.json:
held-out perplexity of the base (adapter disabled) and the pretrained model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import PRETRAINED


def pretrain(scenario: str) -> None:
    from tunelab.config import load_section
    from tunelab.training.backends import select_backend

    params = load_section(f"pretrain.{scenario}")
    backend = select_backend(params.backend, f"pretrain.{scenario}.backend")  # before transformers
    from tunelab.data.domain_text import prepare_domain_text, write_domain_text
    from tunelab.evaluation.sft import text_loss
    from tunelab.io import write_json
    from tunelab.training.pretrain import train_pretrain

    train, val, data_card = prepare_domain_text(
        scenario, params.data, Path("data/prepared") / scenario / "val.jsonl"
    )
    data_dir = Path("data/prepared") / f"pretrain_{scenario}"
    write_domain_text(data_dir, train, val, data_card)
    trained = train_pretrain(
        scenario,
        params,
        backend,
        base_dir=Path("models/base/text"),
        data_dir=data_dir,
        out_dir=Path("adapters") / f"pretrain_{scenario}",
        live_dir=Path("reports/train") / f"pretrain_{scenario}",
    )
    card, model, tokenizer = trained.card, trained.model, trained.processor
    model.eval()
    texts = [r["text"] for r in val]
    args = (tokenizer, texts, params.data.max_length, params.eval_batch_size)
    with model.disable_adapter():  # the base: LoRA and the embedding copies switched off
        base = text_loss(model, *args)
    tuned = text_loss(model, *args)
    metrics = {
        "base": base,
        "tuned": tuned,
        "delta": {k: round(tuned[k] - base[k], 4) for k in base},
        "documents": len(texts),
        "train_documents": len(train),
    }
    write_json(Path("reports/metrics/pretrain") / f"{scenario}.json", metrics)
    t = card["train"]
    print(
        f"pretrain {scenario}: backend {backend}, {len(train)} documents, {t['global_step']} steps, "
        f"loss {t['first_logged_loss']} -> {t['last_logged_loss']}; held-out perplexity "
        f"{base['perplexity']} -> {tuned['perplexity']} ({len(texts)} documents), "
        f"{card['wall_seconds']:.0f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=PRETRAINED)
    args = parser.parse_args()
    run_stage(lambda: pretrain(args.scenario))


if __name__ == "__main__":
    main()
