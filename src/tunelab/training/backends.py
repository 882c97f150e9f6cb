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

from tunelab.config import LoraParams, ModelLoadParams
from tunelab.errors import TunelabError
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


def load_hf(
    name_or_path: str, revision: str | None, model: ModelLoadParams, lora: LoraParams, seed: int
) -> tuple[Any, Any]:
    """transformers + PEFT: (Q)LoRA on AutoModelForCausalLM."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from tunelab.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(name_or_path, revision, model.trust_remote_code)
    base = load_causal_lm(
        name_or_path, revision, model.dtype, model.load_in_4bit, model.trust_remote_code
    )
    if model.load_in_4bit:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=model.gradient_checkpointing
        )
    elif model.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
    )
    return get_peft_model(base, config), tokenizer


def load_unsloth(
    name_or_path: str,
    revision: str | None,
    model: ModelLoadParams,
    lora: LoraParams,
    seed: int,
    max_length: int,
    extra: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Unsloth FastLanguageModel + its get_peft_model (same LoRA settings).

    ``extra`` goes to ``from_pretrained`` as is (GRPO passes ``fast_inference`` etc.
    there when vLLM rollouts are asked for).
    """
    from unsloth import FastLanguageModel

    from tunelab.models.loading import check_safetensors, torch_dtype

    check_safetensors(Path(name_or_path))
    base, tokenizer = FastLanguageModel.from_pretrained(
        model_name=name_or_path,
        revision=revision,
        max_seq_length=max_length,
        dtype=torch_dtype(model.dtype),
        load_in_4bit=model.load_in_4bit,
        trust_remote_code=model.trust_remote_code,
        use_safetensors=True,
        **(extra or {}),
    )
    peft_model = FastLanguageModel.get_peft_model(
        base,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if model.gradient_checkpointing else False,
        random_state=seed,
        **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return peft_model, tokenizer
