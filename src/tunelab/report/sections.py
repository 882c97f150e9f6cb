"""The report's sections across scenarios: continual pretraining, preference optimisation
and the LoRA variants table (which `tunelab variants` builds over experiments too)."""

from __future__ import annotations

from typing import Any

from tunelab.report.discover import Scenario
from tunelab.report.tables import Raw, cell, flatten, is_number, num, table


def _arrow(metrics: dict[str, Any], key: str, before: str = "base", after: str = "tuned") -> str:
    b, a = metrics.get(before, {}).get(key), metrics.get(after, {}).get(key)
    if not (is_number(b) and is_number(a)):
        return "–"
    return f"{num(b)} → {num(a)} ({a - b:+.4g})"


def pretrain_section(scenarios: dict[str, Scenario]) -> str:
    """Held-out perplexity base -> pretrained (reports/metrics/pretrain/<s>.json) and the
    scenario's SFT metrics without -> with pretraining (reports/metrics/pretrain_sft/<s>.json)."""
    found = {n: s.metrics for n, s in scenarios.items() if "pretrain" in s.metrics}
    if not found:
        return ""
    rows = [
        [
            Raw(f"[{cell(n)}](#{n})"),
            m["pretrain"].get("train_documents"),
            m["pretrain"].get("documents"),
            _arrow(m["pretrain"], "perplexity"),
            _arrow(m["pretrain"], "val_loss"),
        ]
        for n, m in found.items()
    ]
    out = [
        "## Continual pretraining\n",
        "Held-out domain text (documents never trained on; none quotes the SFT held-out "
        "set), base (adapter disabled) → after pretrain@<scenario>:\n",
        table(["scenario", "train docs", "held-out docs", "perplexity", "loss"], rows),
    ]
    sft = {n: m["pretrain_sft"] for n, m in found.items() if "pretrain_sft" in m}
    if sft:
        keys = list(dict.fromkeys(k for m in sft.values() for k in m["with_pretraining"]))
        out += [
            "SFT without → with pretraining: train@ / evaluate@<scenario> against "
            "pretrain_sft@<scenario> (same params, steps, seed, held-out prompts):\n",
            table(
                ["scenario", "steps", *keys],
                [
                    [n, m.get("steps")]
                    + [_arrow(m, k, "without_pretraining", "with_pretraining") for k in keys]
                    for n, m in sft.items()
                ],
            ),
        ]
    return "\n".join(out)


def preference_section(scenarios: dict[str, Scenario]) -> str:
    """Preference accuracy, log-prob margin and generation scores, base -> tuned, per run."""
    found = {n: s for n, s in scenarios.items() if "evaluate_pref" in s.metrics}
    if not found:
        return ""
    keys = ["pref_accuracy", "logp_margin", "pref_accuracy_per_token", "rougeL", "chrf"]
    rows = [
        [Raw(f"[{cell(n)}](#{n})"), (s.run_card or {}).get("method", "–")]
        + [_arrow(s.metrics["evaluate_pref"], k) for k in keys]
        for n, s in found.items()
    ]
    return "\n".join(
        [
            "## Preference optimization\n",
            "Held-out pairs, base → tuned: % of pairs where log p(chosen) > log p(rejected) "
            "(summed, and per token), the mean log-probability margin (nats), and the "
            "generations scored against the chosen answers:\n",
            table(["run", "method", *keys], rows),
        ]
    )


def variant_row(
    name: str,
    run_card: dict[str, Any] | None,
    evaluate: dict[str, Any] | None,
    spectrum: dict[str, Any] | None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the variants table from what a run left (any part may be missing).

    ``params``: the train section, for runs whose card has no ``lora_variant``.
    """
    from tunelab.training.variants import variant_label

    card = run_card or {}
    variant = card.get("lora_variant") or {}
    label = variant.get("label")
    if label is None and params:
        lora, optim = params.get("lora", {}), params.get("optim", {})
        label = variant_label(
            bool(lora.get("use_dora")),
            bool(lora.get("use_rslora")),
            str(lora.get("init", "default")),
            optim.get("loraplus_lr_ratio"),
        )
    row: dict[str, Any] = {
        "run": name,
        "variant": label,
        "steps": (card.get("train") or card.get("grpo") or {}).get("global_step"),
        "seed": card.get("seed"),
    }
    tuned = (evaluate or {}).get("tuned") or {}
    base = (evaluate or {}).get("base") or {}
    if "val_loss" in tuned:
        row["held-out loss"] = tuned["val_loss"]
        row["base loss"] = base.get("val_loss")
    row |= {k: v for k, v in flatten(tuned).items() if k not in ("val_loss", "perplexity")}
    row["train s"] = card.get("wall_seconds")
    if variant.get("adapter_bytes") is not None:
        row["adapter MB"] = round(variant["adapter_bytes"] / 1e6, 3)
        row["saved r"] = variant.get("saved_r")
        row["trainable"] = variant.get("trainable_parameters")
    if spectrum:
        top = max((str(k) for k in spectrum.get("dw_energy_top_mean", {})), key=int, default=None)
        row["ΔW rank"] = spectrum.get("dw_max_numerical_rank")
        if top is not None:
            row[f"ΔW top-{top} energy"] = spectrum["dw_energy_top_mean"][top]
        row["‖ΔW‖/‖W‖"] = spectrum.get("dw_over_w_median")
        row["amplification"] = spectrum.get("amplification_median")
    return row


def variants_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one markdown table (columns: the union, in first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return table(columns, [[r.get(c) for c in columns] for r in rows])


VARIANTS_NOTE = (
    "Per adapter: the LoRA variant, held-out loss and the scenario's generation scores "
    "(tuned model), train wall time, saved adapter size and rank (PiSSA/OLoRA adapters are "
    "saved converted to a plain LoRA of rank 2r for the original base), and from the svd "
    "stage the numerical rank of ΔW, the energy share of its top-k directions, the median "
    "‖ΔW‖/‖W‖ and the amplification factor. Compare variants across experiments with "
    "`tunelab variants SCENARIO` (docs/variants.md).\n"
)


def variants_section(scenarios: dict[str, Scenario]) -> str:
    svd = (scenarios.get("svd") or Scenario("svd")).metrics.get("lora") or {}
    rows = [
        variant_row(s.name, s.run_card, s.metrics.get("evaluate"), svd.get(s.name))
        for s in scenarios.values()
        if s.run_card and "lora_variant" in s.run_card
    ]
    if not rows:
        return ""
    return "## LoRA variants\n\n" + VARIANTS_NOTE + "\n" + variants_table(rows)
