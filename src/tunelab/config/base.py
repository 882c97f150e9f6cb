"""base.text and base.vision: the tiny models the smoke profile builds, or the pretrained ones the gpu profile names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
)


class TokenizerParams(Section):
    vocab_size: Annotated[int, Field(ge=300)]
    min_frequency: PosInt


class ArchitectureParams(Section):
    hidden_size: PosInt
    num_hidden_layers: PosInt
    num_attention_heads: PosInt
    num_key_value_heads: PosInt
    intermediate_size: PosInt
    max_position_embeddings: PosInt
    rope_theta: PosFloat
    tie_word_embeddings: bool

    @model_validator(mode="after")
    def _heads_divide(self) -> ArchitectureParams:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class PretrainParams(Section):
    steps: PosInt
    batch_size: PosInt
    seq_len: PosInt
    learning_rate: PosFloat
    warmup_steps: NonNegInt
    weight_decay: NonNegFloat
    max_grad_norm: PosFloat


class TextBaseParams(Section):
    """base.text: build a tiny Qwen2 (smoke) or point at a pretrained one (gpu)."""

    source: Literal["build", "pretrained"]
    pretrained: str | None
    revision: str | None
    corpus: str
    seed: int
    tokenizer: TokenizerParams
    architecture: ArchitectureParams
    pretrain: PretrainParams

    @model_validator(mode="after")
    def _pretrained_named(self) -> TextBaseParams:
        if self.source == "pretrained" and not self.pretrained:
            raise ValueError("source is 'pretrained' but 'pretrained' names no model")
        return self


class PixelBoundsParams(Section):
    """Image size bounds in pixels (width x height), as Qwen2-VL's min_pixels / max_pixels."""

    min_pixels: PosInt
    max_pixels: PosInt

    @model_validator(mode="after")
    def _ordered(self) -> PixelBoundsParams:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class VisionTowerParams(Section):
    depth: PosInt
    hidden_size: PosInt
    intermediate_size: PosInt
    num_heads: PosInt
    patch_size: PosInt
    spatial_merge_size: PosInt
    temporal_patch_size: PosInt
    window_size: PosInt
    fullatt_block_indexes: list[NonNegInt]

    @model_validator(mode="after")
    def _shape(self) -> VisionTowerParams:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if any(i >= self.depth for i in self.fullatt_block_indexes):
            raise ValueError("fullatt_block_indexes must be below depth")
        return self


class VLPretrainParams(Section):
    """Image-to-text pretraining on generated number cards (batches of generated images)."""

    steps: NonNegInt
    batch_size: PosInt
    learning_rate: PosFloat
    warmup_steps: NonNegInt
    weight_decay: NonNegFloat
    max_grad_norm: PosFloat


class VisionBaseParams(Section):
    """base.vision: build a tiny Qwen2.5-VL (smoke) or point at a pretrained one (gpu)."""

    source: Literal["build", "pretrained"]
    pretrained: str | None
    revision: str | None
    corpus: str
    seed: int
    tokenizer: TokenizerParams
    architecture: ArchitectureParams
    mrope_section: Annotated[list[PosInt], Field(min_length=3, max_length=3)]  # (t, h, w)
    vision_tower: VisionTowerParams
    image: PixelBoundsParams
    pretrain: PretrainParams
    vl_align: VLPretrainParams  # vision tower alone: digit cells -> digit tokens
    vl_pretrain: VLPretrainParams  # whole model: image -> digits text

    @model_validator(mode="after")
    def _pretrained_named(self) -> VisionBaseParams:
        if self.source == "pretrained" and not self.pretrained:
            raise ValueError("source is 'pretrained' but 'pretrained' names no model")
        half = self.architecture.hidden_size // self.architecture.num_attention_heads // 2
        if sum(self.mrope_section) != half:
            raise ValueError(f"mrope_section must sum to head_dim / 2 = {half}")
        return self
