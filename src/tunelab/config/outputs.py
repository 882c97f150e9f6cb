"""report.content, export.merge and export.output: what the report shows and what `tunelab export` writes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunelab.config.core import (
    NonNegInt,
    PosInt,
    Section,
)


class ReportContentParams(Section):
    """report.content: what the report shows (it discovers scenarios from the files present)."""

    examples: NonNegInt
    text_max_chars: PosInt
    figure_dpi: PosInt
    curves: Annotated[dict[str, Annotated[list[str], Field(min_length=1)]], Field(min_length=1)]


class ExportMergeParams(Section):
    """export.merge: merge an adapter into its base and save a plain Hugging Face model."""

    dtype: Literal["bfloat16", "float16", "float32"]
    max_shard_size: str


GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


class ExportOutputParams(Section):
    """export.output: what `tunelab export` writes (its --format / --quant flags override)."""

    format: Literal["safetensors", "gguf"]
    quant: Literal[GGUF_QUANTS]  # the GGUF type of the matrices (tunelab.export.gguf)
