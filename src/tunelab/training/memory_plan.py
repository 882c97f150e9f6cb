"""Memory plan: which gradient checkpointing a training step can afford, decided before loading.

``model.gradient_checkpointing`` takes false | true | gpu | offload | auto:

- false: none; gpu: the layer inputs are kept on the GPU (Unsloth's
  ``use_gradient_checkpointing=True``, transformers' ``gradient_checkpointing_enable``);
  offload: Unsloth's offloaded mode (``"unsloth"``: layer inputs parked in pinned CPU
  memory), which the hf backend does not have; true: the backend's default (Unsloth:
  offload, hf: gpu).
- auto: the fastest mode whose estimated peak fits the budget (none > gpu > offload,
  offload on Unsloth only). When none fits at the configured micro-batch, the micro-batch
  is halved (divided by its smallest factor when odd) and gradient accumulation multiplied
  by the same, so the tokens per optimizer step stay, down to micro-batch 1; when still
  nothing fits, the smallest estimate is taken and the card says it may not fit.

Explicit values are used as they are; their estimate still goes into the run card.
After ``resolve`` the value is one of false | "gpu" | "offload"; the loaders map it to
the library's argument (``unsloth_checkpointing``, ``hf_checkpointing``).

The estimate (bytes, from the base model's config; T = tokens per micro-batch, an upper
bound: micro-batch x max length x rows per example):

- weights: N non-embedding parameters (attention q, o: 2H^2; k, v: 2H x kv width; MLP
  3HI; per layer) at ``NF4_BYTES`` when 4-bit, else the dtype's size; embeddings and
  lm_head (one if tied) in the compute dtype (Unsloth and bitsandbytes leave them
  unquantised); full copies (modules_to_save) of them, trained or frozen;
- trained parameters (LoRA: r x (in + out) per target per layer): fp32 weight and
  gradient plus the optimizer's state (2 bytes for 8-bit optimizers, 8 otherwise);
- activations: a layer holds ``(ACT_H x H + ACT_I x I) x itemsize`` bytes per token;
  none: every layer's; gpu: each layer's input (H x itemsize per token) plus one layer's;
  offload: one layer's plus Unsloth's two transfer buffers of T x H;
- logits and loss: ``LOGITS_BYTES[backend]`` x T x V; plus ``FIXED_GIB``.

The estimate and the choice are tunelab.training.memory_estimate. Calibration (H200,
docs/performance.md and bench/results/sft_throughput_h200_run1.json:
Qwen2.5-7B shape, LoRA r=16 on all seven projections, T = 4 x 2048 = 8192 packed, peak
allocated by torch): Unsloth 4-bit offload 7.45 GiB, Unsloth 4-bit no checkpointing
36.5 GiB, hf (bitsandbytes 4-bit) gpu without Liger 16.0 GiB, hf bf16 gpu at
T = 2 x 512 = 1024 16.8 GiB. tests/test_memory_plan.py pins the estimate to within 20%
of each, on the high side. Not modelled: rollout generation (GRPO's KV cache), FSDP
sharding (the estimate is that of one unsharded copy), CPU-side memory, and Unsloth
keeping offloaded checkpoints on the GPU below a max length of 512 (its own heuristic).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tunelab.errors import TunelabError
from tunelab.training.memory_estimate import (
    GIB,
    ITEMSIZE,
    Batch,
    Dims,
    Plan,
    Setup,
    choose,
    non_embedding_params,
    read_dims,
)

# ------------------------------------------------------------------ values and libraries


def checkpointing_mode(value: Any, backend: str, key: str) -> str | None:
    """none / gpu / offload for a params value on this backend; None for auto."""
    if value == "auto":
        return None
    if value is True:
        return "offload" if backend == "unsloth" else "gpu"
    if value is False:
        return "none"
    if value == "offload" and backend != "unsloth":
        raise TunelabError(
            key,
            "offload is Unsloth's offloaded checkpointing; the hf backend (transformers + "
            "PEFT) keeps checkpoints on the GPU only: set gpu, true or auto",
        )
    return value


def param_value(mode: str) -> bool | str:
    """The resolved params value of a mode: false, gpu or offload."""
    return False if mode == "none" else mode


def _resolved(value: Any, backend: str) -> str:
    mode = checkpointing_mode(value, backend, "model.gradient_checkpointing")
    if mode is None:
        raise TunelabError(
            "model.gradient_checkpointing", "auto reached the loader unresolved (memory_plan)"
        )
    return mode


def unsloth_checkpointing(value: Any) -> bool | str:
    """Unsloth's ``use_gradient_checkpointing`` for a params value: False, True or "unsloth"."""
    return {"none": False, "gpu": True, "offload": "unsloth"}[_resolved(value, "unsloth")]


def hf_checkpointing(value: Any) -> bool:
    """Whether the hf backend enables gradient checkpointing for a params value."""
    return _resolved(value, "hf") == "gpu"


# ------------------------------------------------------------------------- budget


def system_available_bytes() -> int:
    """Available system RAM: psutil's, else /proc/meminfo's MemAvailable."""
    try:
        import psutil
    except ImportError:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    return int(psutil.virtual_memory().available)


def system_total_bytes() -> int:
    """The machine's whole RAM: psutil's, else /proc/meminfo's MemTotal."""
    try:
        import psutil
    except ImportError:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemTotal"].split()[0]) * 1024
    return int(psutil.virtual_memory().total)


def device_budget_gib() -> tuple[float, str]:
    """Free memory of the device this process trains on, and what it is.

    Under a multi-process launch every process takes the smallest of all, so that they
    plan alike; processes of one machine share its RAM. In deterministic mode
    (tunelab.determinism) the device's whole memory: what happens to be free depends on
    the other processes of the moment, and the plan must not.
    """
    import torch

    from tunelab.training.launch import world_size

    world = world_size()
    if world > 1:
        from accelerate import PartialState

        PartialState()  # sets this process's GPU and starts the process group
    whole = torch.are_deterministic_algorithms_enabled()
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        gib, source = (total if whole else free) / GIB, "free GPU memory"
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        ram = system_total_bytes() if whole else system_available_bytes()
        gib, source = ram / GIB / local, "system RAM"
    if whole:
        source = source.replace("free ", "") + ", whole (deterministic)"
    if world > 1:
        import torch.distributed as dist

        values: list[Any] = [None] * world
        dist.all_gather_object(values, gib)
        gib = min(values)
    return gib, source


def total_device_gib() -> float:
    """The whole memory of this process's GPU (0 without one)."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.mem_get_info()[1] / GIB


def measured_peak_gib() -> float | None:
    """torch's peak allocated CUDA memory in GiB (None on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / GIB, 2)


# ------------------------------------------------------------------------ resolve


def _get(params: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        params = getattr(params, part)
    return params


def _replace(params: Any, dotted: str, **values: Any) -> Any:
    """A copy of frozen params with the fields at ``dotted`` (a nested block) replaced."""
    head, _, rest = dotted.partition(".")
    inner = getattr(params, head)
    inner = _replace(inner, rest, **values) if rest else inner.model_copy(update=values)
    return params.model_copy(update={head: inner})


def _r(x: float) -> float:
    return round(x, 2)


def _setup(params: Any, backend: str, dims: Dims, first_optim: Any, **saved: Any) -> Setup:
    model = params.model
    return Setup(
        dims=dims,
        backend=backend,
        load_in_4bit=model.load_in_4bit,
        dtype=model.dtype,
        lora_r=params.lora.r,
        target_modules=tuple(params.lora.target_modules),
        optim=first_optim.optim,
        modules_to_save=tuple(saved["modules_to_save"]),
        train_saved_modules=saved["train_saved_modules"],
    )


def _budget(model: Any, dims: Dims, reserve_fraction: float, dense_twin: bool) -> dict[str, Any]:
    """The budget, what else takes from it (vLLM's share, a dense twin) and what is usable."""
    if model.memory_budget_gib is not None:
        budget, source = model.memory_budget_gib, "memory_budget_gib"
    else:
        budget, source = device_budget_gib()
    reserved = reserve_fraction * total_device_gib()
    if dense_twin:  # the whole model once more in the compute dtype
        tables = 1 if dims.tie_word_embeddings else 2
        dense = non_embedding_params(dims) + tables * dims.vocab_size * dims.hidden_size
        reserved += dense * ITEMSIZE[model.dtype] / GIB
    usable = budget * (1 - model.memory_headroom) - reserved
    return {
        "budget_gib": budget,
        "budget_source": source,
        "headroom": model.memory_headroom,
        "reserved_gib": reserved,
        "usable_gib": usable,
    }


def resolve(
    params: Any,
    section: str,
    name_or_path: str,
    revision: str | None,
    backend: str,
    batches: Mapping[str, int],
    modules_to_save: tuple[str, ...] | list[str] = (),
    train_saved_modules: bool = True,
    reserve_fraction: float = 0.0,
    dense_twin: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """(params with gradient checkpointing resolved, the run card's ``memory_plan``).

    ``batches``: each phase's optim block (a dotted path in params, e.g. ``optim``,
    ``grpo.optim``) -> tokens per row (max length x rows per example); auto may split
    those blocks' micro-batches. ``reserve_fraction``: the share of the GPU something
    else takes (vLLM colocated rollouts); ``dense_twin``: a dense copy of the weights for
    rollouts (GRPO's DequantizedTwin). Both are taken from the budget.
    """
    model = params.model
    key = f"{section}.model.gradient_checkpointing"
    requested = model.gradient_checkpointing
    explicit = checkpointing_mode(requested, backend, key)
    card: dict[str, Any] = {"requested": requested}
    try:
        dims = read_dims(name_or_path, revision, model.trust_remote_code)
    except (OSError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        if explicit is None:
            raise TunelabError(
                key,
                f"auto needs the dims of the base model's config ({why}); "
                "set false, true, gpu or offload",
            ) from None
        resolved = _replace(params, "model", gradient_checkpointing=param_value(explicit))
        return resolved, card | {"chosen": explicit, "estimates_gib": None, "note": why}

    optims = [_get(params, path) for path in batches]
    setup = _setup(
        params,
        backend,
        dims,
        optims[0],
        modules_to_save=modules_to_save,
        train_saved_modules=train_saved_modules,
    )
    budget = _budget(model, dims, reserve_fraction, dense_twin)
    wanted = tuple(
        Batch(o.per_device_train_batch_size, o.gradient_accumulation_steps, tokens)
        for o, tokens in zip(optims, batches.values(), strict=True)
    )
    plan = choose(setup, explicit or "auto", wanted, budget["usable_gib"])
    resolved = _replace(params, "model", gradient_checkpointing=param_value(plan.mode))
    for path, batch in zip(batches, plan.batches, strict=True):
        resolved = _replace(
            resolved,
            path,
            per_device_train_batch_size=batch.micro_batch,
            gradient_accumulation_steps=batch.accumulation,
        )
    card |= _plan_card(plan, budget, list(batches))
    from tunelab.training.launch import is_main_process

    if is_main_process():
        print(summary(card), flush=True)
    return resolved, card


def _plan_card(plan: Plan, budget: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    first = plan.batches[0]
    card = {k: _r(v) if isinstance(v, float) and k != "headroom" else v for k, v in budget.items()}
    card = {
        "chosen": plan.mode,
        **card,
        "tokens_per_micro_batch": plan.tokens,
        "estimates_gib": {m: _r(x) for m, x in plan.estimates_gib.items()},
        "per_device_train_batch_size": first.micro_batch,
        "gradient_accumulation_steps": first.accumulation,
        "split": plan.split,
        "fits": plan.fits,
    }
    if len(paths) > 1:
        card["batches"] = {
            path: {
                "per_device_train_batch_size": b.micro_batch,
                "gradient_accumulation_steps": b.accumulation,
            }
            for path, b in zip(paths, plan.batches, strict=True)
        }
    return card


def resolve_explicit(params: Any, section: str, backend: str) -> tuple[Any, dict[str, Any]]:
    """An explicit value resolved for the backend, with no estimate (vision-language)."""
    key = f"{section}.model.gradient_checkpointing"
    requested = params.model.gradient_checkpointing
    mode = checkpointing_mode(requested, backend, key)
    if mode is None:
        raise TunelabError(key, "auto needs the memory plan, which this stage does not have")
    resolved = _replace(params, "model", gradient_checkpointing=param_value(mode))
    note = "no estimate: the memory plan does not model vision-language models"
    return resolved, {"requested": requested, "chosen": mode, "estimates_gib": None, "note": note}


def summary(card: dict[str, Any]) -> str:
    """One line for the log: the mode, its estimate against the budget, the batch."""
    mode, asked = card["chosen"], card["requested"]
    asked = str(asked).lower() if isinstance(asked, bool) else asked
    line = (
        f"memory plan: gradient checkpointing {mode} (asked: {asked}), "
        f"~{card['estimates_gib'][mode]} GiB of {card['usable_gib']} GiB usable "
        f"({card['budget_source']} {card['budget_gib']} GiB), micro-batch "
        f"{card['per_device_train_batch_size']}, accumulation {card['gradient_accumulation_steps']}"
    )
    if card["split"]:
        line += " (split to fit)"
    if not card["fits"]:
        line += "; may not fit: the estimate is above the budget"
    return line
