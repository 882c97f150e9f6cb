"""The compiled engine: transformers' static-cache ``generate`` with a compiled decode step.

``auto`` takes it for models the continuous engine does not support (and plain
``generate`` runs through the same function with compilation off). What makes it work
on real batches:

* one compiled shape: prompts are left-padded to a multiple of ``prompt_bucket`` tokens
  and the last batch is filled up to ``batch_size`` with copies of a real row (dropped
  afterwards), so a whole evaluation or training run compiles once per bucket;
* ``decode_attention: grouped``: the single-token decode step attends with the query
  heads grouped per key/value head (one batched matmul over the cache), where
  transformers' SDPA path, given a padding mask, first copies every key/value head
  ``num_heads / num_kv_heads`` times (Qwen2.5-7B: 7x the cache traffic each step);
* a LoRA adapter stays attached (PEFT's layers compile with the model), so rollouts see
  the policy's current weights without merging and unmerging them every step.

Greedy results stay those of ``generate``: it is transformers' own generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tunelab.config.evaluate import GenerationEngineParams

GROUPED = "tunelab_grouped"


def _grouped_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Decode-step attention without repeating the key/value heads; SDPA otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or dropout or heads % kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scale = scaling if scaling is not None else head_dim**-0.5
    # Head h uses key/value head h // group (as repeat_kv lays them out).
    q = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # batch, kv, group, keys
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # batch, kv, group, head_dim
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def _register_grouped() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GROUPED, _grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, sdpa_mask)


@contextmanager
def _attention(model: Any, name: str) -> Iterator[None]:
    """Use attention ``name`` inside the block; the previous choice comes back after it."""
    if name == "sdpa":
        yield
        return
    _register_grouped()
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    configs = list({id(c): c for c in configs if hasattr(c, "_attn_implementation")}.values())
    before = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = GROUPED
    try:
        yield
    finally:
        for config, old in zip(configs, before, strict=True):
            config._attn_implementation = old


def _left_pad(ids: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> tuple:
    import torch

    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, mask
    pad_ids = torch.full((ids.shape[0], extra), pad_id, dtype=ids.dtype, device=ids.device)
    pad_mask = torch.zeros((mask.shape[0], extra), dtype=mask.dtype, device=mask.device)
    return torch.cat([pad_ids, ids], 1), torch.cat([pad_mask, mask], 1)


class _RowLimits:
    """transformers stopping criterion: row i ends after ``limits[i]`` new tokens."""

    def __init__(self, width: int, limits: list[int]) -> None:
        self.width, self.limits = width, limits
        self._tensor: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if self._tensor is None:
            self._tensor = torch.tensor(self.limits, device=input_ids.device)
        return (input_ids.shape[1] - self.width) >= self._tensor


def generate_batches(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenerationEngineParams,
    batch_size: int,
    generation_kwargs: dict[str, Any],
    compiled: bool,
    stopping: Callable[[int, int], Any] | None = None,
    limits: list[int] | None = None,
) -> list[torch.Tensor]:
    """``generate`` over batches of ``batch_size`` rows: compiled (static cache, one shape
    per bucket) or plain; each row's new tokens, padded with pad_token_id as ``generate``
    pads them. ``stopping`` and ``limits`` as in ``tunelab.generation.generate_new_tokens``."""
    import torch
    from transformers import CompileConfig, GenerationConfig

    pad_id = generation_kwargs["pad_token_id"]
    kwargs = {k: v for k, v in generation_kwargs.items() if k != "cache_implementation"}
    if compiled:
        compile_config = CompileConfig(
            fullgraph=False,
            dynamic=False,
            backend=params.compile_backend,
            mode=params.compile_mode,
        )
        # transformers compiles only on accelerators unless told otherwise (CPU tests).
        compile_config._compile_all_devices = True
        config = GenerationConfig(
            **kwargs,
            cache_implementation="static",
            compile_config=compile_config,
            disable_compile=False,
        )
    else:
        config = GenerationConfig(**kwargs, disable_compile=True)

    from tunelab.generation.support import invariant_mode

    rows = input_ids.shape[0]
    out: list[torch.Tensor] = []
    invariant = invariant_mode(params.batch_invariant and not compiled, input_ids.device.type)
    attention = _attention(model, params.decode_attention if compiled else "sdpa")
    with torch.no_grad(), attention, invariant:
        for start in range(0, rows, batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            real = ids.shape[0]
            keep = int(mask.sum(1).max())  # drop the left padding the whole batch shares
            ids, mask = ids[:, -keep:], mask[:, -keep:]
            if compiled:  # pad to the bucket and fill the batch: one shape
                bucket = params.prompt_bucket
                ids, mask = _left_pad(ids, mask, -(-keep // bucket) * bucket, pad_id)
                if real < batch_size:  # fill the batch with copies of its first row
                    fill = batch_size - real
                    ids = torch.cat([ids, ids[:1].expand(fill, -1)])
                    mask = torch.cat([mask, mask[:1].expand(fill, -1)])
            width = ids.shape[1]
            criteria = list(stopping(width, ids.shape[0])) if stopping else []
            if limits is not None:  # the filled rows take the first row's limit
                mine = limits[start : start + real]
                criteria.append(_RowLimits(width, mine + mine[:1] * (ids.shape[0] - real)))
            extra = {"stopping_criteria": criteria} if criteria else {}
            seqs = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, **extra
            )
            out += list(seqs[:real, width:])
    return out
