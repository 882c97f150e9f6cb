"""The memory plan's estimate: peak training memory per checkpointing mode, from the base
model's config, and the choice of the fastest mode that fits (tunelab.training.memory_plan
says how it is used and how it was calibrated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30
MODES = ("none", "gpu", "offload")  # fastest first
NF4_BYTES = 0.53  # per 4-bit weight: NF4 (0.5) + double-quantised absmax per 64-block
ACT_H, ACT_I = 5, 3  # a layer's activations per token: (5 H + 3 I) x itemsize (calibrated)
# logits and loss per token x vocab: Unsloth's chunked cross-entropy never holds the full
# fp32 logits; the hf backend holds bf16 logits and their fp32 upcast. Liger's fused loss
# measured only 2 GiB below that (docs/performance.md), so hf keeps the figure with it too.
LOGITS_BYTES = {"unsloth": 0.5, "hf": 6.0}
FIXED_GIB = 1.0  # CUDA context, cuBLAS workspaces, allocator slack
TRAINED_BYTES = 4 + 4  # fp32 weight + gradient per trained parameter (optimizer state apart)
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Dims:
    """The shape of a decoder-only model, from its config."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool


def dims_from_config(config: Any) -> Dims:
    """Dims of a transformers config (its ``text_config`` when it has one)."""
    text = getattr(config, "text_config", None) or config
    values = {}
    for name in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
        value = getattr(text, name, None)
        if not isinstance(value, int):
            raise ValueError(f"the model config has no {name}")
        values[name] = value
    heads = getattr(text, "num_attention_heads", None)
    if not isinstance(heads, int):
        raise ValueError("the model config has no num_attention_heads")
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or values["hidden_size"] // heads
    tied = getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))
    return Dims(
        **values,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=bool(tied),
    )


def read_dims(name_or_path: str, revision: str | None, trust_remote_code: bool) -> Dims:
    """Dims from the model's config.json (a hub id or a local folder; no weights)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    return dims_from_config(config)


@dataclass(frozen=True)
class Setup:
    """Everything the estimate needs besides the mode and the tokens per micro-batch."""

    dims: Dims
    backend: str  # unsloth | hf
    load_in_4bit: bool
    dtype: str
    lora_r: int
    target_modules: tuple[str, ...]
    optim: str  # the optimizer's name: 8-bit ones keep 2 bytes of state per parameter
    modules_to_save: tuple[str, ...] = ()  # full copies of embed_tokens / lm_head
    train_saved_modules: bool = True  # false: the copies are frozen (a continued adapter)


def projection_shapes(dims: Dims) -> dict[str, tuple[int, int]]:
    """(in, out) of a layer's seven projections (Qwen2 / Llama names)."""
    h, i = dims.hidden_size, dims.intermediate_size
    q, kv = dims.num_attention_heads * dims.head_dim, dims.num_key_value_heads * dims.head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def non_embedding_params(dims: Dims) -> int:
    """The attention and MLP weights of every layer (norms left out)."""
    return dims.num_hidden_layers * sum(a * b for a, b in projection_shapes(dims).values())


def lora_params(dims: Dims, r: int, target_modules: tuple[str, ...]) -> int:
    """LoRA's trained parameters: r x (in + out) per target module per layer."""
    h, i = dims.hidden_size, dims.intermediate_size
    shapes = projection_shapes(dims)
    names = list(shapes) if "all-linear" in target_modules else target_modules
    # a name outside Qwen2/Llama's seven: counted as an MLP projection (the largest)
    per_layer = sum(sum(shapes.get(n, (h, i))) for n in names)
    return r * per_layer * dims.num_hidden_layers


def breakdown(setup: Setup, tokens: int, mode: str) -> dict[str, float]:
    """The estimate's parts in GiB for one micro-batch of ``tokens`` tokens."""
    d, size = setup.dims, ITEMSIZE[setup.dtype]
    h, i, v, layers = d.hidden_size, d.intermediate_size, d.vocab_size, d.num_hidden_layers
    weights = non_embedding_params(d) * (NF4_BYTES if setup.load_in_4bit else size)
    tables = 1 if d.tie_word_embeddings else 2  # embed_tokens and lm_head
    embeddings = tables * v * h * size
    trained = TRAINED_BYTES + (2 if "8bit" in setup.optim else 8)
    copies = min(len(set(setup.modules_to_save)), tables) * v * h
    saved = copies * (trained if setup.train_saved_modules else size)
    lora = lora_params(d, setup.lora_r, setup.target_modules) * trained
    layer = tokens * size * (ACT_H * h + ACT_I * i)
    if mode == "none":
        activations = layers * layer
    elif mode == "gpu":
        activations = layers * tokens * h * size + layer
    else:  # offload: one layer's, plus the GPU buffers the layer inputs go through
        activations = layer + 2 * tokens * h * size
    parts = {
        "weights": weights,
        "embeddings": embeddings + saved,
        "trained": lora,
        "activations": activations,
        "logits": tokens * v * LOGITS_BYTES[setup.backend],
    }
    return {k: x / GIB for k, x in parts.items()} | {"fixed": FIXED_GIB}


def estimate_gib(setup: Setup, tokens: int, mode: str) -> float:
    """Estimated peak memory of a training step in GiB."""
    return sum(breakdown(setup, tokens, mode).values())


def modes_for(backend: str) -> tuple[str, ...]:
    """The modes a backend has (hf has no offloaded checkpointing)."""
    return MODES if backend == "unsloth" else MODES[:2]


@dataclass(frozen=True)
class Batch:
    """One training phase's batch: micro-batch, accumulation and tokens per row."""

    micro_batch: int
    accumulation: int
    row_tokens: int  # max length x rows per example (DPO/ORPO: chosen and rejected)


@dataclass(frozen=True)
class Plan:
    """What ``choose`` decided, with the estimates it decided on."""

    mode: str  # none | gpu | offload
    batches: tuple[Batch, ...]  # as planned (split or not)
    tokens: int  # tokens of the largest micro-batch
    estimates_gib: dict[str, float]  # per mode, at these batches
    fits: bool
    split: bool


def _smallest_factor(n: int) -> int:
    return next(f for f in range(2, n + 1) if n % f == 0)


def _split(batch: Batch) -> Batch:
    if batch.micro_batch == 1:
        return batch
    f = _smallest_factor(batch.micro_batch)
    return Batch(batch.micro_batch // f, batch.accumulation * f, batch.row_tokens)


def choose(setup: Setup, requested: str, batches: tuple[Batch, ...], usable_gib: float) -> Plan:
    """The plan for ``requested`` (auto, or an explicit none / gpu / offload).

    Every phase's micro-batch is split together; the largest one sets the estimate.
    """
    modes = modes_for(setup.backend)
    current = tuple(batches)
    while True:
        tokens = max(b.micro_batch * b.row_tokens for b in current)
        est = {m: estimate_gib(setup, tokens, m) for m in modes}
        split = current != tuple(batches)
        if requested != "auto":
            return Plan(requested, current, tokens, est, est[requested] <= usable_gib, False)
        for mode in modes:
            if est[mode] <= usable_gib:
                return Plan(mode, current, tokens, est, True, split)
        if all(b.micro_batch == 1 for b in current):
            smallest = min(modes, key=est.__getitem__)
            return Plan(smallest, current, tokens, est, False, split)
        current = tuple(_split(b) for b in current)
