"""train_pref.<name>: DPO / ORPO preference optimisation."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from tunelab.config.core import (
    PosFloat,
    PosInt,
    Section,
)
from tunelab.config.train import (
    LoraParams,
    ModelLoadParams,
    OptimParams,
    check_checkpointing,
    check_lora_variant,
)


class PreferenceTrainParams(Section):
    """train_pref.<name>: LoRA preference optimisation, TRL's DPOTrainer or ORPOTrainer."""

    seed: int
    backend: Literal["auto", "unsloth", "hf"]
    method: Literal["dpo", "orpo"]
    beta: PosFloat  # DPO: KL strength to the reference (the base); ORPO: odds-ratio weight
    loss_type: str  # DPO's loss_type (sigmoid, ipo, ...); ORPO has one loss: must be sigmoid
    max_length: PosInt  # prompt + completion tokens
    model: ModelLoadParams
    lora: LoraParams
    optim: OptimParams
    logging_steps: PosInt
    save_steps: PosInt

    @model_validator(mode="after")
    def _loss(self) -> PreferenceTrainParams:
        check_lora_variant(self.lora, self.model, self.optim, self.method)
        check_checkpointing(self.backend, self.model)
        if self.method == "orpo" and self.loss_type != "sigmoid":
            raise ValueError("loss_type: ORPO has a single loss; set sigmoid")
        return self
