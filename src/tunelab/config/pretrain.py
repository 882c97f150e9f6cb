"""pretrain.<scenario>: continual pretraining on domain text."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from tunelab.config.core import (
    PosFloat,
    PosInt,
    Section,
)
from tunelab.config.prepare import SplitParams
from tunelab.config.train import (
    LoraParams,
    ModelLoadParams,
    OptimParams,
    check_checkpointing,
    check_lora_variant,
)


class PretrainLoraParams(LoraParams):
    """LoRA for continual pretraining; modules_to_save trains full copies (Unsloth's recipe:
    embed_tokens and lm_head), at optim.embedding_learning_rate."""

    modules_to_save: list[Literal["embed_tokens", "lm_head"]]


class PretrainOptimParams(OptimParams):
    embedding_learning_rate: PosFloat | None  # modules_to_save's rate; null: learning_rate


class PretrainDataParams(Section):
    """Domain text: JSONL (one document per object, under text_key) or .txt/.md (documents
    separated by blank lines); a file or a folder of them."""

    source: str
    text_key: str
    max_chars: PosInt  # longer documents are dropped (a file without breaks, a dump)
    max_length: PosInt  # tokens per packed training block and per held-out document
    packing_strategy: Literal["wrapped", "bfd", "bfd_split"]  # TRL's; wrapped: concatenate, cut
    split: SplitParams


class ContinualPretrainParams(Section):
    """pretrain.<scenario>: continual pretraining (causal-LM loss on packed domain text)."""

    seed: int
    backend: Literal["auto", "unsloth", "hf"]
    model: ModelLoadParams
    lora: PretrainLoraParams
    data: PretrainDataParams
    optim: PretrainOptimParams
    eval_batch_size: PosInt  # held-out perplexity, base and pretrained
    logging_steps: PosInt
    save_steps: PosInt

    @model_validator(mode="after")
    def _embeddings(self) -> ContinualPretrainParams:
        check_lora_variant(self.lora, self.model, self.optim, "pretrain")
        check_checkpointing(self.backend, self.model)
        if self.optim.embedding_learning_rate is not None and not self.lora.modules_to_save:
            raise ValueError(
                "optim.embedding_learning_rate: set, but lora.modules_to_save is empty "
                "(no embedding is trained): set it null"
            )
        return self
