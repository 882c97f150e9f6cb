"""train.gsm8k (GRPO, with its optional SFT warm-up) and evaluate.gsm8k (lm-eval's gsm8k task)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    NonNegFloat,
    NonNegInt,
    OpenFraction,
    PosFloat,
    PosInt,
    Section,
    check_regex,
)
from tunelab.config.evaluate import GenerationEngineParams, QuantizedGenerationParams
from tunelab.config.train import (
    LoraParams,
    ModelLoadParams,
    OptimParams,
    SFTDataParams,
    check_checkpointing,
    check_lora_variant,
)


class AnswerFormatParams(Section):
    """The <reasoning>/<answer> format: regexes (re.match, DOTALL) and the tags counted."""

    strict_pattern: str
    soft_pattern: str
    answer_pattern: str
    xml_tags: Annotated[list[str], Field(min_length=1)]
    closing_tag: Annotated[str, Field(min_length=1)]  # text after its last occurrence is penalised

    @model_validator(mode="after")
    def _patterns(self) -> AnswerFormatParams:
        check_regex(self.strict_pattern)
        check_regex(self.soft_pattern)
        check_regex(self.answer_pattern, groups=1)
        return self


class RewardParams(Section):
    """Reward values (R1-style GRPO recipe); each function returns its own scale."""

    correctness: NonNegFloat
    integer: NonNegFloat
    strict_format: NonNegFloat
    soft_format: NonNegFloat
    xml_per_tag: NonNegFloat
    xml_trailing_penalty: NonNegFloat  # per non-space character after the closing tag


class WarmupParams(Section):
    """Optional SFT warm-up on formatted examples before GRPO (same LoRA adapter)."""

    enabled: bool
    data: SFTDataParams
    optim: OptimParams
    logging_steps: PosInt


class GRPOParams(Section):
    num_generations: Annotated[int, Field(ge=2)]
    max_completion_length: PosInt
    temperature: PosFloat
    top_p: Annotated[float, Field(gt=0, le=1)]
    beta: NonNegFloat
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]
    scale_rewards: Literal["group", "batch", "none"]
    num_iterations: PosInt
    epsilon: PosFloat
    epsilon_high: PosFloat  # upper clip (DAPO's "clip higher"); = epsilon for symmetric clipping
    mask_truncated_completions: bool
    optim: OptimParams
    logging_steps: PosInt

    @model_validator(mode="after")
    def _batch(self) -> GRPOParams:
        # TRL: generation batch = per_device_train_batch_size x steps_per_generation
        # (= gradient_accumulation_steps here) and must divide by num_generations.
        batch = self.optim.per_device_train_batch_size * self.optim.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps ({batch}) "
                f"must be a multiple of num_generations ({self.num_generations})"
            )
        return self


class VLLMParams(Section):
    use_vllm: bool
    mode: Literal["colocate", "server"]
    gpu_memory_utilization: OpenFraction


class GRPOTrainParams(Section):
    """train.gsm8k: LoRA GRPO through TRL's GRPOTrainer, optional SFT warm-up first."""

    seed: int
    backend: Literal["auto", "unsloth", "hf"]
    max_seq_length: PosInt  # Unsloth's max_seq_length (prompt + completion)
    model: ModelLoadParams
    lora: LoraParams
    format: AnswerFormatParams
    rewards: RewardParams
    warmup: WarmupParams
    grpo: GRPOParams
    vllm: VLLMParams
    generation: QuantizedGenerationParams  # rollouts when vllm.use_vllm is false
    save_steps: PosInt

    @model_validator(mode="after")
    def _variant(self) -> GRPOTrainParams:
        check_lora_variant(self.lora, self.model, self.grpo.optim, "grpo")
        check_checkpointing(self.backend, self.model)
        return self


class LmEvalModelParams(Section):
    dtype: Literal["float32", "bfloat16", "float16"]
    trust_remote_code: bool


class GSM8KEvaluateParams(Section):
    """evaluate.gsm8k: lm-eval's builtin gsm8k task on local files, plus the <answer> score."""

    seed: int
    model: LmEvalModelParams
    max_samples: PosInt | None
    batch_size: PosInt
    num_fewshot: NonNegInt | None  # None: the task's own (5)
    apply_chat_template: bool
    fewshot_as_multiturn: bool
    max_gen_toks: PosInt
    generation: GenerationEngineParams
    format: AnswerFormatParams
