"""The continuous engine's decoder-layer functions: one decode step, one prefill.

Both call the layer's own modules (norms, projections with their LoRA layers, MLP) and
write the slot's keys and values into the engine's cache; ``decode_layer`` is the
function the engine compiles once and reuses for every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def decode_layer(
    layer: Any,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    pos: torch.Tensor,
    valid: torch.Tensor,
    rope: Callable,
    qk_norm: bool,
    kv_heads: int,
    head_dim: int,
) -> torch.Tensor:
    """One decoder layer for one new token per slot; writes the slot's key/value.

    Attention is grouped per key/value head (no repeated heads) over the whole cache row,
    masked to each slot's own length; softmax in float32 as SDPA's math path does.
    """
    import torch

    attn = layer.self_attn
    batch = h.shape[0]
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(batch, 1, -1, head_dim)
    k = attn.k_proj(x).view(batch, 1, -1, head_dim)
    v = attn.v_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
    if qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    keys[rows, :, pos] = k[:, :, 0]
    values[rows, :, pos] = v[:, :, 0]
    heads = q.shape[1]
    qg = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    out = torch.matmul(probs, values).reshape(batch, 1, heads * head_dim)
    h = h + attn.o_proj(out)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def prefill_layer(
    layer: Any,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slot_ids: torch.Tensor,
    inverse: torch.Tensor,
    rope: Callable,
    qk_norm: bool,
    kv_heads: int,
    head_dim: int,
    math_attention: bool = False,
) -> torch.Tensor:
    """One decoder layer over right-padded prompts (causal: padding is never attended by
    a real token); writes the key/values of prompt ``inverse[i]`` into ``slot_ids[i]``.

    ``math_attention``: scores, softmax and weighted sum as matmuls and a softmax (the
    batch-invariant kernels take them), not SDPA's fused kernel."""
    import torch

    attn = layer.self_attn
    n, width = h.shape[:2]
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(n, width, -1, head_dim)
    k = attn.k_proj(x).view(n, width, -1, head_dim)
    v = attn.v_proj(x).view(n, width, -1, head_dim).transpose(1, 2)
    if qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    keys[slot_ids, :, :width] = k[inverse]
    values[slot_ids, :, :width] = v[inverse]
    group = q.shape[1] // kv_heads
    keys, vals = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if math_attention:
        scores = torch.matmul(q, keys.transpose(-1, -2)) * attn.scaling
        causal = torch.ones(width, width, dtype=torch.bool, device=h.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vals.dtype)
        out = torch.matmul(probs, vals)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            q, keys, vals, is_causal=True, scale=attn.scaling
        )
    h = h + attn.o_proj(out.transpose(1, 2).reshape(n, width, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))
