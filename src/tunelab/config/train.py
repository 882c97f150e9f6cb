"""train.<text scenario> (LoRA / QLoRA SFT) and the blocks every text training section shares: model
loading, LoRA, data, optimizer, and the checks of their combinations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    Fraction,
    NonNegFloat,
    ParamConflict,
    PosFloat,
    PosInt,
    Section,
)

# false | true | gpu | offload | auto (tunelab.training.memory_plan): gpu keeps the layer
# inputs on the GPU, offload is Unsloth's offloaded mode, true the backend's default
# (Unsloth: offload, hf: gpu), auto the fastest mode the memory plan finds room for.
GradientCheckpointing = Literal[False, True, "gpu", "offload", "auto"]


class ModelLoadParams(Section):
    """The model block of a text train section (loaded through training/backends.py)."""

    load_in_4bit: bool
    dtype: Literal["float32", "bfloat16", "float16"]
    trust_remote_code: bool
    gradient_checkpointing: GradientCheckpointing
    memory_budget_gib: PosFloat | None  # what the memory plan may use; null: the free memory
    memory_headroom: Annotated[float, Field(ge=0, lt=1)]  # share of the budget left free


def check_checkpointing(backend: str, model: Any) -> None:
    """Offloaded checkpointing is Unsloth's: refuse it with backend hf (auto is checked
    once resolved, in tunelab.training.memory_plan)."""
    if backend == "hf" and model.gradient_checkpointing == "offload":
        raise ParamConflict(
            "model.gradient_checkpointing",
            "backend hf",
            "offload is Unsloth's offloaded checkpointing; transformers + PEFT keeps "
            "checkpoints on the GPU (set gpu, true or auto)",
        )


# lora.init: PEFT's init_lora_weights names ("default" is PEFT's True: B = 0, a no-op
# at the start). The data-driven ones (eva, corda, lora_ga, loftq) need a preprocessing
# pass or a config of their own and are not offered.
LORA_INIT_PATTERN = r"^(default|gaussian|orthogonal|olora|pissa|pissa_niter_[0-9]+)$"
LoraInit = Annotated[str, Field(pattern=LORA_INIT_PATTERN)]


def init_mutates_base(init: str) -> bool:
    """PiSSA and OLoRA move the top of W into A, B and train on the residual base."""
    return init == "olora" or init.startswith("pissa")


# The one rule for LoRA variants across recipes. PiSSA / OLoRA train on a residual base
# W - s·B0·A0, so "the model with the adapter switched off" is no longer the base: a recipe
# that uses the adapter-off model as the base refuses them (why, by recipe).
ADAPTER_OFF_IS_THE_BASE = {
    "pretrain": "the base's held-out perplexity is measured with the adapter switched off",
    "dpo": "DPO's reference model is the base with the adapter switched off",
}


def check_lora_variant(lora: Any, model: Any, optim: Any, recipe: str) -> None:
    """Combinations of lora / model / optim keys that cannot run, as a ParamConflict; the
    same rule for every recipe (``recipe``: sft, grpo, vl, pretrain, dpo, orpo).

    Those that depend on the resolved backend (Unsloth with vLLM) are checked before
    loading, in tunelab.training.variants.
    """
    mutates = init_mutates_base(lora.init)
    if mutates and model.load_in_4bit:
        raise ParamConflict(
            "lora.init",
            "model.load_in_4bit true",
            f"{lora.init} rewrites the base weights as W - B·A and needs them in full precision "
            "(PEFT's 4-bit path for it is a separate pre-processing step), not on a 4-bit base",
        )
    if mutates and lora.use_dora:
        raise ParamConflict(
            "lora.use_dora",
            f"lora.init {lora.init}",
            "DoRA cannot be saved as a plain adapter of the original base: PEFT's conversion "
            "keeps A and B and drops DoRA's magnitude vector",
        )
    if mutates and recipe in ADAPTER_OFF_IS_THE_BASE:
        raise ParamConflict(
            "lora.init",
            f"the {recipe} recipe",
            f"{lora.init} trains on a residual base, but {ADAPTER_OFF_IS_THE_BASE[recipe]}",
        )
    if lora.init == "orthogonal" and lora.r % 2:
        raise ParamConflict("lora.init", f"lora.r {lora.r}", "orthogonal needs an even rank")
    embedding_lr = getattr(optim, "embedding_learning_rate", None)
    if optim.loraplus_lr_ratio is not None and embedding_lr is not None:
        raise ParamConflict(
            "optim.loraplus_lr_ratio",
            "optim.embedding_learning_rate",
            "LoRA+ and the embedding copies' own rate each build the optimizer's groups; "
            "set one of them null",
        )


class LoraParams(Section):
    r: PosInt
    alpha: PosInt
    dropout: Fraction
    target_modules: Annotated[list[str], Field(min_length=1)]
    use_dora: bool  # DoRA: magnitude and direction trained apart
    use_rslora: bool  # rank-stabilised scaling alpha / sqrt(r) instead of alpha / r
    init: LoraInit  # default | gaussian | orthogonal | olora | pissa | pissa_niter_<n>


class SFTDataParams(Section):
    max_length: PosInt
    packing: bool
    assistant_only_loss: bool
    # TRL's: pad every micro-batch (packed: its one flattened row) to a multiple of this, so
    # that steps have one shape; null: pad only to the longest row
    pad_to_multiple_of: PosInt | None


class OptimParams(Section):
    learning_rate: PosFloat
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    warmup_ratio: Fraction
    weight_decay: NonNegFloat
    per_device_train_batch_size: PosInt
    gradient_accumulation_steps: PosInt
    max_steps: Annotated[int, Field(ge=-1)]
    num_train_epochs: PosFloat
    max_grad_norm: PosFloat
    optim: str
    loraplus_lr_ratio: Annotated[float, Field(ge=1)] | None  # LoRA+: B's lr / A's; null: off

    @model_validator(mode="after")
    def _steps(self) -> OptimParams:
        if self.max_steps == 0:
            raise ValueError("max_steps must be positive, or -1 to train num_train_epochs")
        return self


class SFTTrainParams(Section):
    """train.<text scenario>: LoRA / QLoRA SFT through TRL."""

    seed: int
    backend: Literal["auto", "unsloth", "hf"]
    # The folder training starts from: the base model folder (models/base/text: a fresh
    # LoRA) or an adapter folder (adapters/pretrain_<s>: continue that adapter). A path,
    # so that dvc.yaml can list it as a dependency (see the train stage there).
    init_from: Annotated[str, Field(min_length=1)]
    liger_kernel: bool  # Liger's fused kernels on the hf backend (Unsloth has its own)
    model: ModelLoadParams
    lora: LoraParams
    data: SFTDataParams
    optim: OptimParams
    logging_steps: PosInt
    save_steps: PosInt

    @model_validator(mode="after")
    def _variant(self) -> SFTTrainParams:
        check_lora_variant(self.lora, self.model, self.optim, "sft")
        check_checkpointing(self.backend, self.model)
        return self
