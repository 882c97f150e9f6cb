"""Decoding settings and logits processing for the continuous engine, graph-safe.

``Sampling`` is ``generate``'s view of a GenerationConfig (refusing the fields the
engine does not implement); ``process`` applies ``generate``'s logits processors in its
order and ``choose`` picks the next tokens, with tensor ops only (no host sync), so both
run inside the captured decode graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# GenerationConfig fields that change which tokens come out and that this loop does not
# implement: set away from their defaults, the loop refuses (``auto``: the compiled engine).
REFUSED = (
    "num_beams",
    "num_beam_groups",
    "penalty_alpha",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_h",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "force_words_ids",
    "constraints",
    "sequence_bias",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "guidance_scale",
    "watermarking_config",
    "stop_strings",
)


@dataclass(frozen=True)
class Sampling:
    """The decoding settings the loop applies (from a merged GenerationConfig)."""

    max_new: int
    min_new: int
    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    eos: tuple[int, ...]
    pad: int

    @classmethod
    def from_kwargs(cls, model: Any, kwargs: dict[str, Any]) -> Sampling:
        """``generate``'s view: the model's generation_config updated with ``kwargs``.

        Raises ValueError naming a field this loop does not implement.
        """
        from transformers import GenerationConfig

        config = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
        config.update(**kwargs)
        default = GenerationConfig()
        for key in REFUSED:
            value = getattr(config, key, None)
            if value is not None and value != getattr(default, key, None):
                raise ValueError(f"generation setting {key}={value!r} is not handled here")
        if (config.num_return_sequences or 1) != 1:
            raise ValueError("num_return_sequences > 1: repeat the prompts instead")
        if config.max_new_tokens is None:
            raise ValueError("max_new_tokens must be set")
        eos = config.eos_token_id
        eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        pad = config.pad_token_id if config.pad_token_id is not None else (eos or (0,))[0]
        greedy = not config.do_sample
        return cls(
            max_new=int(config.max_new_tokens),
            min_new=int(config.min_new_tokens or 0),
            greedy=greedy,
            temperature=1.0 if greedy or config.temperature is None else float(config.temperature),
            top_k=0 if greedy or not config.top_k else int(config.top_k),
            top_p=1.0 if greedy or config.top_p is None else float(config.top_p),
            min_p=0.0 if greedy or not config.min_p else float(config.min_p),
            repetition_penalty=float(config.repetition_penalty or 1.0),
            eos=tuple(int(e) for e in eos),
            pad=int(pad),
        )


def process(
    logits: torch.Tensor,
    count: torch.Tensor,
    seen: torch.Tensor | None,
    eos: torch.Tensor,
    s: Sampling,
) -> torch.Tensor:
    """float32 logits (rows, vocab) through ``generate``'s processors, in its order:
    repetition penalty, min new tokens, then (sampling) temperature, top-k, top-p, min-p.

    ``count``: tokens each row generated so far; ``seen``: a (rows, vocab) bool mask of
    the tokens in each row's prompt and output. Removed tokens get the dtype's lowest
    value. Tensor ops only, no host sync: it runs inside the captured decode graph.
    """
    import torch

    neg = torch.finfo(logits.dtype).min
    if s.repetition_penalty != 1.0 and seen is not None:
        p = s.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if s.min_new > 0 and eos.numel():
        early = (count < s.min_new)[:, None]
        logits = logits.index_copy(1, eos, torch.where(early, neg, logits[:, eos]))
    if s.greedy:
        return logits
    if s.temperature != 1.0:
        logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, neg)
    if s.top_p < 1.0:  # keep the smallest set of tokens whose probability passes top_p
        ordered, order = torch.sort(logits, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= (1 - s.top_p)
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), neg)
    if s.min_p > 0.0:
        probs = logits.softmax(-1)
        top = probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < s.min_p * top, neg)
    return logits


def choose(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Next tokens from ``process``-ed logits: their argmax (greedy), or a draw from their
    softmax by the exponential race (argmax of p / E with E ~ Exp(1) picks token i with
    probability p_i, with one random tensor and no host sync)."""
    import torch

    if s.greedy:
        return logits.argmax(-1)
    noise = torch.empty_like(logits).exponential_()
    return (logits.softmax(-1) / noise).argmax(-1)
