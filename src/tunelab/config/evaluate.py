"""evaluate.<text scenario> and evaluate_pref.<name>: decoding, the generation engine, the scores."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    NonNegInt,
    ParamConflict,
    PosFloat,
    PosInt,
    Section,
)


class DecodingParams(Section):
    max_new_tokens: PosInt
    do_sample: bool
    temperature: PosFloat
    top_p: Annotated[float, Field(gt=0, le=1)]
    repetition_penalty: PosFloat


class GenerationEngineParams(Section):
    """How text is generated without vLLM (tunelab.generation): evaluation and GRPO rollouts."""

    # auto: continuous on a GPU (compiled for models it does not support), generate on CPU
    engine: Literal["auto", "continuous", "compiled", "generate"]
    prompt_bucket: PosInt  # prompts padded to a multiple: one compiled shape per bucket
    decode_attention: Literal["grouped", "sdpa"]  # compiled: grouped = no repeated KV heads
    compile_backend: Literal["inductor", "aot_eager", "eager"]
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ]
    # continuous (tunelab.generation.continuous): its own CUDA graph per decode step
    cuda_graph: bool
    sync_every: PosInt  # decode steps between host looks (ended rows, stop strings, refill)
    refill: bool  # a finished row's slot takes the next prompt at once
    prefill_tokens: PosInt  # prompt tokens per prefill call
    # a row's greedy tokens independent of the rows beside it (slot count, refill, prefill
    # group): Triton kernels of a fixed reduction order (tunelab.generation.invariant)
    batch_invariant: bool

    @model_validator(mode="after")
    def _invariant(self) -> GenerationEngineParams:
        if self.batch_invariant and self.engine == "compiled":
            raise ParamConflict(
                "batch_invariant",
                "engine compiled",
                "the compiled engine's graph is inductor's, which lowers the matmuls itself "
                "(use continuous, generate or auto)",
            )
        return self


class QuantizedGenerationParams(GenerationEngineParams):
    """The generation block of sections that may load a bitsandbytes 4-bit model."""

    # dequantize: compile on bf16 weights holding the NF4 values (evaluate: in place;
    # GRPO: a bf16 twin of the policy, ~2 bytes/parameter more); generate: plain generate
    quantized: Literal["dequantize", "generate"]


class EvalModelParams(Section):
    load_in_4bit: bool
    dtype: Literal["float32", "bfloat16", "float16"]
    trust_remote_code: bool


class SFTEvaluateParams(Section):
    seed: int
    model: EvalModelParams
    max_samples: PosInt
    batch_size: PosInt
    decoding: DecodingParams
    generation: QuantizedGenerationParams
    exact_match: bool
    bleu_tokenize: Literal["13a", "zh", "char", "intl", "none"]
    num_examples: NonNegInt
