"""Which generation engine runs a model: the choice ``auto`` makes and the checks behind it.

``resolve_engine`` answers ``continuous``, ``compiled``, ``dequantize`` or ``generate`` for
a model and a ``generation`` params block; ``unsupported`` says why the continuous engine
cannot run a model (the Llama-layout families only).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.config.evaluate import GenerationEngineParams

FAMILIES = ("qwen2", "qwen3", "llama", "mistral")


def causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_quantized(model: Any) -> bool:
    """True for a model (or PEFT model) whose base weights bitsandbytes quantized."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(
        type(p).__name__ in ("Params4bit", "Int8Params") for p in base.parameters(recurse=True)
    )


def unsupported(model: Any) -> str | None:
    """Why this loop cannot run ``model`` (None: it can)."""
    base = causal_lm(model)
    config = getattr(base, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if is_quantized(base):
        return "bitsandbytes-quantized weights (generate from a dequantized copy)"
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no decoder layers / rotary embedding where the Llama layout has them"
    return None


def resolve_engine(params: GenerationEngineParams, model: Any) -> str:
    """``continuous``, ``compiled``, ``dequantize`` or ``generate`` for this model.

    ``auto`` takes the continuous engine (tunelab.generation.continuous) on an accelerator
    for the model families it supports, the compiled one for the others, plain
    ``generate`` on the CPU. A bitsandbytes-quantized model runs neither itself (its
    quantizer is not compileable): where the engine would be a fast one and
    ``params.quantized`` is ``dequantize`` the answer is ``dequantize`` (the caller
    generates from bf16 weights holding the same values, see the module docstring),
    otherwise plain ``generate``.
    """
    if params.engine == "generate":
        return "generate"
    device = next(model.parameters()).device
    fast = params.engine in ("compiled", "continuous") or device.type == "cuda"
    if is_quantized(model):
        # Only sections that can load 4-bit offer the choice (evaluate.gsm8k loads bf16).
        wanted = getattr(params, "quantized", None)
        return "dequantize" if fast and wanted == "dequantize" else "generate"
    if not fast:
        return "generate"
    if params.engine == "auto":
        if unsupported(model):  # the compiled engine cannot run the batch-invariant kernels
            return "generate" if params.batch_invariant else "compiled"
        return "continuous"
    return params.engine


def is_fast(engine: str) -> bool:
    """The engines this package runs itself (callers hand generation to it)."""
    return engine in ("continuous", "compiled")


def invariant_mode(on: bool, device_type: str) -> AbstractContextManager:
    """The batch-invariant kernels while generating (generation.batch_invariant), or nothing."""
    if not on:
        return nullcontext()
    from tunelab.generation.invariant import batch_invariant

    return batch_invariant(device_type)
