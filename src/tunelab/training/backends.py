"""Training backends: Unsloth's FastLanguageModel or transformers + PEFT.

``auto`` picks Unsloth when a CUDA GPU is present and Unsloth is installed,
plain transformers + PEFT otherwise. Unsloth must be imported before
transformers, TRL and PEFT; ``select_backend`` is called by the stage before
anything imports them, and imports Unsloth when it is chosen.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunelab.config.train import LoraParams, ModelLoadParams
from tunelab.errors import TunelabError
from tunelab.training.memory_plan import hf_checkpointing, unsloth_checkpointing
from tunelab.training.variants import lora_kwargs


def select_backend(requested: str, where: str) -> str:
    """Resolve ``auto``; import Unsloth now if it is the backend."""
    import torch

    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        backend = "unsloth" if (torch.cuda.is_available() and has_unsloth) else "hf"
    else:
        backend = requested
    if backend == "unsloth":
        if not has_unsloth:
            raise TunelabError(where, "backend 'unsloth' requested but unsloth is not installed")
        import unsloth  # noqa: F401  (patches transformers/TRL/PEFT on import)
    return backend


def lora_config(
    lora: LoraParams, modules_to_save: list[str] | None = None, tied: bool = False
) -> Any:
    """PEFT's LoraConfig from params; ``modules_to_save`` trains full copies of those modules
    (``tied``: the model ties embed_tokens and lm_head, and the copies stay tied)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        ensure_weight_tying=bool(modules_to_save) and tied,
        **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
    )


def load_hf_base(
    name_or_path: str, revision: str | None, model: ModelLoadParams
) -> tuple[Any, Any]:
    """The base model ready for adapters (4-bit prepared, gradient checkpointing) and tokenizer.

    ``model.gradient_checkpointing`` is resolved already (tunelab.training.memory_plan).
    """
    from peft import prepare_model_for_kbit_training

    from tunelab.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(name_or_path, revision, model.trust_remote_code)
    base = load_causal_lm(
        name_or_path, revision, model.dtype, model.load_in_4bit, model.trust_remote_code
    )
    checkpointing = hf_checkpointing(model.gradient_checkpointing)  # resolved: no offload
    if model.load_in_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    return base, tokenizer


def load_hf(
    name_or_path: str,
    revision: str | None,
    model: ModelLoadParams,
    lora: LoraParams,
    seed: int,
    init_adapter: Path | None = None,
    modules_to_save: list[str] | None = None,
) -> tuple[Any, Any]:
    """transformers + PEFT: (Q)LoRA on AutoModelForCausalLM; a fresh adapter, or
    ``init_adapter`` (a saved one) loaded trainable to continue it."""
    from peft import PeftModel, get_peft_model

    base, tokenizer = load_hf_base(name_or_path, revision, model)
    if init_adapter is not None:
        return PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True), tokenizer
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    return get_peft_model(base, lora_config(lora, modules_to_save, tied)), tokenizer


def load_unsloth(
    name_or_path: str,
    revision: str | None,
    model: ModelLoadParams,
    lora: LoraParams,
    seed: int,
    max_length: int,
    extra: dict[str, Any] | None = None,
    init_adapter: Path | None = None,
    modules_to_save: list[str] | None = None,
) -> tuple[Any, Any]:
    """Unsloth FastLanguageModel + its get_peft_model (same LoRA settings).

    ``extra`` goes to ``from_pretrained`` as is (GRPO passes ``fast_inference`` etc.
    there when vLLM rollouts are asked for). ``init_adapter``: Unsloth loads that
    adapter folder (and the base its config names) trainable, instead of a fresh LoRA.
    """
    from unsloth import FastLanguageModel

    from tunelab.models.loading import check_safetensors, torch_dtype

    check_safetensors(Path(name_or_path))
    checkpointing = unsloth_checkpointing(model.gradient_checkpointing)  # resolved already
    base, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(init_adapter) if init_adapter is not None else name_or_path,
        revision=revision,
        max_seq_length=max_length,
        dtype=torch_dtype(model.dtype),
        load_in_4bit=model.load_in_4bit,
        trust_remote_code=model.trust_remote_code,
        use_safetensors=True,
        use_gradient_checkpointing=checkpointing,  # also a continued adapter's
        **(extra or {}),
    )
    if init_adapter is not None:  # already a PEFT model with that adapter, trainable
        peft_model = base
    else:
        peft_model = FastLanguageModel.get_peft_model(
            base,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            use_gradient_checkpointing=checkpointing,
            random_state=seed,
            modules_to_save=list(modules_to_save) if modules_to_save else None,
            **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return peft_model, tokenizer


def load_text_model(
    backend: str,
    name_or_path: str,
    revision: str | None,
    params: Any,
    max_length: int,
    init_adapter: Path | None = None,
    modules_to_save: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a text section (its ``model``, ``lora``, ``seed``) on its
    backend: a fresh LoRA, or ``init_adapter`` continued; ``modules_to_save`` trained in
    full beside it; ``extra`` for Unsloth's from_pretrained (see load_unsloth)."""
    if backend == "unsloth":
        return load_unsloth(
            name_or_path,
            revision,
            params.model,
            params.lora,
            params.seed,
            max_length,
            extra=extra,
            init_adapter=init_adapter,
            modules_to_save=modules_to_save,
        )
    return load_hf(
        name_or_path,
        revision,
        params.model,
        params.lora,
        params.seed,
        init_adapter=init_adapter,
        modules_to_save=modules_to_save,
    )


def check_lora_matches(adapter_dir: Path, lora: LoraParams, where: str) -> dict[str, Any]:
    """An adapter continues with its own LoRA shape: refuse params that say otherwise.

    Returns the adapter's config (adapter_config.json)."""
    import json

    from tunelab.models.loading import check_adapter

    check_adapter(adapter_dir)
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    theirs = {
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "dropout": config.get("lora_dropout"),
        "target_modules": sorted(config.get("target_modules") or []),
        "use_dora": bool(config.get("use_dora")),
    }
    ours = {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": sorted(lora.target_modules),
        "use_dora": lora.use_dora,
    }
    for key, value in ours.items():
        if theirs[key] != value:
            raise TunelabError(
                f"{where}.{key}",
                f"{value!r}, but the starting adapter {adapter_dir} has {theirs[key]!r} "
                "(an adapter is continued with its own LoRA shape)",
            )
    return config


def freeze_saved_modules(model: Any) -> list[str]:
    """Freeze the full-module copies (modules_to_save) of a loaded adapter; their names."""
    names = set()
    for name, param in model.named_parameters(remove_duplicate=False):  # tied copies too
        if ".modules_to_save." in name:
            param.requires_grad_(False)
            names.add(name.split(".modules_to_save.")[0].rsplit(".", 1)[-1])
    return sorted(names)
