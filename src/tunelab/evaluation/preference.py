"""Preference evaluation: does the model rank the chosen answer above the rejected one?

On held-out pairs, per model (base, tuned), with the summed log-probability of each
answer's assistant tokens given the prompt (the quantity DPO's rewards are built on):

- ``pref_accuracy``: % of pairs with log p(chosen) > log p(rejected);
- ``logp_margin``: the mean of log p(chosen) - log p(rejected), in nats. DPO's implicit
  reward margin of the tuned model against the base as reference is beta x (tuned
  margin - base margin);
- ``pref_accuracy_per_token``: the same ranking with length-normalised log-probabilities
  (ORPO's odds use the per-token mean), so that a short rejected answer is not preferred
  for its length alone.
"""

from __future__ import annotations

from typing import Any

from tunelab.evaluation.sft import assistant_logps


def preference_scores(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], batch_size: int
) -> dict[str, float]:
    chosen = assistant_logps(model, tokenizer, [r["messages"] for r in records], batch_size)
    rejected = assistant_logps(
        model,
        tokenizer,
        [[*r["messages"][:-1], {"role": "assistant", "content": r["rejected"]}] for r in records],
        batch_size,
    )
    margins = [c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
    per_token = [
        c / max(1, nc) - r / max(1, nr) for (c, nc), (r, nr) in zip(chosen, rejected, strict=True)
    ]
    n = max(1, len(margins))
    return {
        "pref_accuracy": round(100 * sum(m > 0 for m in margins) / n, 2),
        "logp_margin": round(sum(margins) / n, 4),
        "pref_accuracy_per_token": round(100 * sum(m > 0 for m in per_token) / n, 2),
    }
