"""One generation path for GRPO rollouts, the text evaluation stages and the server.

vLLM stays the first choice for GRPO where it is installed (train.gsm8k.vllm). Without
it, plain ``generate`` with a dynamic cache leaves a GPU mostly idle: every decode step
launches hundreds of small kernels from Python. This package chooses between:

* ``continuous`` (``continuous.py``, what ``auto`` takes on a GPU for the Llama-layout
  families): tunelab's own decode loop - slots refilled as rows end, one CUDA graph
  replay per decode step; its docstring says what it simplifies;
* ``compiled`` (``compiled.py``, ``auto``'s choice for other models): transformers'
  static-cache ``generate`` with a compiled decode step;
* ``generate``: plain ``generate`` (``auto`` on the CPU);
* a bitsandbytes 4-bit model with ``quantized: dequantize`` generates from bf16 weights
  holding its NF4 values (``twin.py``).

Why engines of our own rather than a library: vLLM pins one torch per release and is
absent from most machines, and transformers' continuous batching drops the LoRA layers
PEFT adds. Greedy outputs are token-identical to plain ``generate`` on the CPU (tests);
on a GPU, bf16 kernels that reduce in a different order can flip near-ties
(docs/performance.md). Settings: the ``generation`` block of train.gsm8k and
evaluate.<text scenario>.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunelab.generation.compiled import generate_batches
from tunelab.generation.continuous import held_engine
from tunelab.generation.stops import stop_strings
from tunelab.generation.support import is_fast, is_quantized, resolve_engine
from tunelab.generation.twin import DequantizedTwin, for_generation

if TYPE_CHECKING:
    import torch

    from tunelab.config.evaluate import GenerationEngineParams

__all__ = [
    "DequantizedTwin",
    "for_generation",
    "generate_new_tokens",
    "held_engine",
    "is_fast",
    "is_quantized",
    "resolve_engine",
    "stop_strings",
]


def generate_new_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenerationEngineParams,
    batch_size: int,
    generation_kwargs: dict[str, Any],
    stopping: Callable[[int, int], Any] | None = None,
    stop: Callable[[list[int], int], int | None] | None = None,
    limits: list[int] | None = None,
) -> list[torch.Tensor]:
    """Generate for left-padded prompts; returns each row's new tokens (EOS kept).

    ``generation_kwargs`` are GenerationConfig fields (max_new_tokens, sampling, pad and
    EOS ids, ...). Rows come back in input order. ``batch_size``: rows decoded together
    (the continuous engine's slots). Stop strings: ``stopping(prompt_width, rows)``
    builds transformers stopping criteria for a batch (the compiled and plain paths),
    ``stop`` is the same check for the continuous engine (``stop_strings``).
    ``limits``: per-row max new tokens (a stopping criterion on the other paths, which
    keep decoding a batch until its longest row ends). The continuous engine's
    rows end at their EOS (or stop); the other paths pad them with pad_token_id as
    ``generate`` does.
    """
    engine = resolve_engine(params, model)
    if engine == "dequantize":
        raise ValueError("a 4-bit model: generate from for_generation() or a DequantizedTwin")
    if engine == "continuous":
        rows = _continuous(
            model, input_ids, attention_mask, params, batch_size, generation_kwargs, stop, limits
        )
        if rows is not None:
            return rows
        engine = "compiled"
    return generate_batches(
        model,
        input_ids,
        attention_mask,
        params,
        batch_size,
        generation_kwargs,
        compiled=engine == "compiled",
        stopping=stopping,
        limits=limits,
    )


def _continuous(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenerationEngineParams,
    batch_size: int,
    generation_kwargs: dict[str, Any],
    stop: Callable[[list[int], int], int | None] | None,
    limits: list[int] | None,
) -> list[torch.Tensor] | None:
    """The continuous engine's rows, or None when ``auto`` hands a setting it does not
    implement to the compiled engine (an explicit ``continuous`` raises instead)."""
    from tunelab.generation.continuous import engine_for
    from tunelab.generation.sampling import Sampling

    try:
        sampling = Sampling.from_kwargs(model, generation_kwargs)
    except ValueError as err:
        if params.engine != "auto":
            raise
        print(f"generation: {err}; the compiled engine takes this call")
        return None
    # on the host: the engine reads the tokens there (deduplication, padding)
    pairs = zip(input_ids.cpu(), attention_mask.cpu().bool(), strict=True)
    prompts = [ids[m] for ids, m in pairs]
    longest = max(len(p) for p in prompts)
    bucket = params.prompt_bucket
    max_len = -(-longest // bucket) * bucket + sampling.max_new
    slots = min(batch_size, len(prompts))
    return engine_for(model, params, slots, max_len, sampling).run(prompts, limits, stop)
