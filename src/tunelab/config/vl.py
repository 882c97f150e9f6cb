"""train.car_insurance and evaluate.car_insurance: vision-language LoRA SFT and its evaluation."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator, model_validator

from tunelab.config.base import PixelBoundsParams
from tunelab.config.core import (
    Fraction,
    NonNegInt,
    PosInt,
    Section,
)
from tunelab.config.evaluate import DecodingParams, EvalModelParams
from tunelab.config.train import (
    GradientCheckpointing,
    LoraInit,
    OptimParams,
    check_checkpointing,
    check_lora_variant,
)


class VLModelLoadParams(Section):
    """The model block of the vision-language section: no memory plan, so no auto."""

    load_in_4bit: bool
    dtype: Literal["float32", "bfloat16", "float16"]
    trust_remote_code: bool
    gradient_checkpointing: GradientCheckpointing

    @field_validator("gradient_checkpointing")
    @classmethod
    def _explicit(cls, value: bool | str) -> bool | str:
        if value == "auto":
            raise ValueError(
                "auto is for the text stages (the memory plan does not model a vision "
                "tower); set false, true, gpu or offload"
            )
        return value


class VLLoraParams(Section):
    """LoRA on a vision-language model; the layer switches are Unsloth FastVisionModel's."""

    r: PosInt
    alpha: PosInt
    dropout: Fraction
    use_dora: bool
    use_rslora: bool
    init: LoraInit
    finetune_vision_layers: bool
    finetune_language_layers: bool
    finetune_attention_modules: bool
    finetune_mlp_modules: bool

    @model_validator(mode="after")
    def _something(self) -> VLLoraParams:
        if not (self.finetune_vision_layers or self.finetune_language_layers):
            raise ValueError("finetune_vision_layers or finetune_language_layers must be true")
        if not (self.finetune_attention_modules or self.finetune_mlp_modules):
            raise ValueError("finetune_attention_modules or finetune_mlp_modules must be true")
        return self


class VLDataParams(Section):
    max_length: PosInt


class VLTrainParams(Section):
    """train.car_insurance: LoRA SFT of a vision-language model through TRL."""

    seed: int
    backend: Literal["auto", "unsloth", "hf"]
    model: VLModelLoadParams
    lora: VLLoraParams
    image: PixelBoundsParams  # the processor's bounds, saved with the adapter
    data: VLDataParams
    optim: OptimParams
    logging_steps: PosInt
    save_steps: PosInt

    @model_validator(mode="after")
    def _variant(self) -> VLTrainParams:
        check_lora_variant(self.lora, self.model, self.optim, "vl")
        check_checkpointing(self.backend, self.model)
        return self


class VLEvaluateParams(Section):
    """evaluate.car_insurance: base versus tuned reading of held-out images."""

    seed: int
    model: EvalModelParams
    max_samples: PosInt
    batch_size: PosInt
    decoding: DecodingParams
    answer_pattern: str  # the expected answer format; group 1 is the reading
    num_examples: NonNegInt

    @model_validator(mode="after")
    def _pattern(self) -> VLEvaluateParams:

        try:
            groups = re.compile(self.answer_pattern).groups
        except re.error as err:
            raise ValueError(f"answer_pattern: invalid regular expression ({err})") from None
        if groups != 1:
            raise ValueError("answer_pattern must have exactly one group (the reading)")
        return self
