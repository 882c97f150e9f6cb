"""Typed, validated views of params.yaml.

Every value a stage uses comes from here; the models declare no defaults, so a
key missing from params.yaml is an error, never a silent fallback. A stage
loads only its own section (``load_section("train.alpaca")``); ``load_params``
validates the whole file (``tunelab params check``).
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelab.errors import TunelabError

PARAMS_FILE = Path("params.yaml")

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    """Strict base: unknown keys and wrong types are errors; values are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ParamConflict(ValueError):
    """Two keys of one section that cannot be used together (raised by a validator).

    ``key`` and ``other`` are dotted paths relative to the model that raises it;
    the error line names both in full (``train.alpaca.lora.use_dora: ... with
    train.alpaca.model.load_in_4bit ...``).
    """

    def __init__(self, key: str, other: str, why: str) -> None:
        self.key, self.other, self.why = key, other, why
        super().__init__(f"{key}: {why} with {other}")


# --------------------------------------------------------------------------- base


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


# ------------------------------------------------------------------------ prepare


class SplitParams(Section):
    val_fraction: OpenFraction
    max_val_rows: PosInt
    seed: int


NonEmptyStr = Annotated[str, Field(min_length=1)]


class InstructionFieldsParams(Section):
    """Field names of instruction / input / output records (input: null when there is none)."""

    instruction: NonEmptyStr
    input: NonEmptyStr | None
    output: NonEmptyStr


class AlpacaPrepareParams(Section):
    source: NonEmptyStr  # a DVC dependency (dvc.yaml templates it from here)
    fields: InstructionFieldsParams
    system_prompt: str
    max_chars: PosInt
    split: SplitParams


class MedicalColumnsParams(Section):
    """CSV header names; department and title may be null when the files have no such column."""

    department: NonEmptyStr | None
    title: NonEmptyStr | None
    ask: NonEmptyStr
    answer: NonEmptyStr


class MedicalPrepareParams(Section):
    source: NonEmptyStr  # a folder of CSVs (a DVC dependency)
    encodings: Annotated[list[str], Field(min_length=1)]
    max_mess: PosFloat  # charset-normalizer mess ratio above which a decode is implausible
    columns: MedicalColumnsParams
    system_prompt: str
    max_chars: PosInt
    include_title: bool
    split: SplitParams


class CounselFieldsParams(Section):
    query: NonEmptyStr
    laws: NonEmptyStr | None  # null: the records cite no articles
    response: NonEmptyStr


class LegalPrepareParams(Section):
    exam_source: NonEmptyStr  # both are DVC dependencies (dvc.yaml templates them from here)
    counsel_source: NonEmptyStr
    exam_fields: InstructionFieldsParams
    counsel_fields: CounselFieldsParams
    system_prompt: str
    include_articles: bool
    max_chars: PosInt
    split: SplitParams


# -------------------------------------------------------------------------- train


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


def check_lora_variant(lora: Any, model: Any) -> None:
    """Combinations of lora / model keys that cannot run, as a ParamConflict.

    Those that depend on the resolved backend (Unsloth, vLLM, FSDP) are checked
    before loading, in tunelab.training.variants.
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
    if lora.init == "orthogonal" and lora.r % 2:
        raise ParamConflict("lora.init", f"lora.r {lora.r}", "orthogonal needs an even rank")


def check_plain_lora(lora: Any, optim: Any, model: Any) -> None:
    """LoRA variants outside train.<s> (pretrain, train_pref): what those recipes support.

    LoRA+ needs the optimizer train.<s> builds, and PiSSA / OLoRA change the base weights
    unless the adapter is converted when saved, which only train.<s> does.
    """
    check_lora_variant(lora, model)
    if optim.loraplus_lr_ratio is not None:
        raise ValueError("optim.loraplus_lr_ratio: LoRA+ runs in train.<scenario> only; set null")
    if init_mutates_base(lora.init):
        raise ValueError(f"lora.init: {lora.init!r} runs in train.<scenario> only; use default")


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
        check_lora_variant(self.lora, self.model)
        check_checkpointing(self.backend, self.model)
        return self


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
        check_plain_lora(self.lora, self.optim, self.model)
        check_checkpointing(self.backend, self.model)
        if self.optim.embedding_learning_rate is not None and not self.lora.modules_to_save:
            raise ValueError(
                "optim.embedding_learning_rate: set, but lora.modules_to_save is empty "
                "(no embedding is trained): set it null"
            )
        return self


class PreferencePrepareColumns(Section):
    prompt: str
    chosen: str
    rejected: str
    system: str | None  # a column with a per-row system prompt, or null


class PreferencePrepareParams(Section):
    """prepare.preference: JSONL preference pairs (prompt, chosen, rejected)."""

    source: str
    columns: PreferencePrepareColumns
    system_prompt: str  # for rows without their own; empty: no system message
    max_chars: PosInt  # prompt + chosen + rejected longer than this is dropped
    split: SplitParams


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
        check_plain_lora(self.lora, self.optim, self.model)
        check_checkpointing(self.backend, self.model)
        if self.method == "orpo" and self.loss_type != "sigmoid":
            raise ValueError("loss_type: ORPO has a single loss; set sigmoid")
        return self


# ----------------------------------------------------------------------- evaluate


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
    # continuous (tunelab.generation.engine): its own CUDA graph per decode step
    cuda_graph: bool
    sync_every: PosInt  # decode steps between host looks (ended rows, stop strings, refill)
    refill: bool  # a finished row's slot takes the next prompt at once
    prefill_tokens: PosInt  # prompt tokens per prefill call


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


# ------------------------------------------------------------------ report, export


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
    quant: Literal[GGUF_QUANTS]  # the GGUF type of the matrices (tunelab.gguf_export)


# -------------------------------------------------------------------- gsm8k (GRPO)


def _check_regex(pattern: str, groups: int | None = None) -> str:
    import re

    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regular expression ({err})") from None
    if groups is not None and compiled.groups != groups:
        raise ValueError(f"the pattern must have exactly {groups} group(s)")
    return pattern


class QAFieldsParams(Section):
    question: NonEmptyStr
    answer: NonEmptyStr


class GSM8KPrepareParams(Section):
    """prepare.gsm8k: GSM8K-format JSONL -> GRPO prompts with the numeric answer."""

    train_source: NonEmptyStr
    test_source: NonEmptyStr
    fields: QAFieldsParams
    system_prompt: str
    user_template: str
    reference_template: str
    max_train_rows: PosInt | None
    max_test_rows: PosInt | None

    @model_validator(mode="after")
    def _placeholders(self) -> GSM8KPrepareParams:
        if "{question}" not in self.user_template:
            raise ValueError("user_template must contain {question}")
        for name in ("{reasoning}", "{answer}"):
            if name not in self.reference_template:
                raise ValueError(f"reference_template must contain {name}")
        return self


class AnswerFormatParams(Section):
    """The <reasoning>/<answer> format: regexes (re.match, DOTALL) and the tags counted."""

    strict_pattern: str
    soft_pattern: str
    answer_pattern: str
    xml_tags: Annotated[list[str], Field(min_length=1)]
    closing_tag: Annotated[str, Field(min_length=1)]  # text after its last occurrence is penalised

    @model_validator(mode="after")
    def _patterns(self) -> AnswerFormatParams:
        _check_regex(self.strict_pattern)
        _check_regex(self.soft_pattern)
        _check_regex(self.answer_pattern, groups=1)
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
        check_lora_variant(self.lora, self.model)
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


# ------------------------------------------------------ car_insurance (vision-language)


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


class XlsxColumnsParams(Section):
    """Header names of the spreadsheet columns (the image column may be empty when a
    picture is embedded in the sheet and anchored to the row)."""

    image: str
    prompt: str
    answer: str


class ImageCheckParams(PixelBoundsParams):
    """Resize bounds for prepared images, plus the decompression-bomb guard."""

    max_source_pixels: PosInt  # larger source images are rejected before decoding
    max_file_bytes: PosInt


class CarInsurancePrepareParams(Section):
    """prepare.car_insurance: an .xlsx of image + prompt + expected answer rows."""

    source: NonEmptyStr  # the workbook
    image_dir: NonEmptyStr  # image paths in the sheet are relative to it and must stay inside
    sheet: str | None  # None: the first sheet
    columns: XlsxColumnsParams
    default_prompt: str  # used where a row's prompt cell is empty
    system_prompt: str  # empty: no system message
    strict: bool  # true: the first bad row stops the stage (one line naming it)
    image: ImageCheckParams
    split: SplitParams


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
        check_lora_variant(self.lora, self.model)
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
        import re

        try:
            groups = re.compile(self.answer_pattern).groups
        except re.error as err:
            raise ValueError(f"answer_pattern: invalid regular expression ({err})") from None
        if groups != 1:
            raise ValueError("answer_pattern must have exactly one group (the reading)")
        return self


# ------------------------------------------------------------------------ lowrank


class LoraSpectrumParams(Section):
    """lowrank.svd.lora: singular values of trained LoRA updates next to their base weights."""

    base: str  # the base stage's output folder (models/base/text)
    adapters: Annotated[list[str], Field(min_length=1)]  # adapter folders (also dvc.yaml deps)
    layers: list[NonNegInt] | None  # decoder layers analysed; null: every layer
    top_k: Annotated[list[PosInt], Field(min_length=1)]  # energy captured by the top-k directions
    rank_rtol: OpenFraction  # singular values below rank_rtol x the largest count as zero
    # full: SVDs of ΔW and W as they are (the demonstration); factored: ΔW's spectrum from
    # its r x r core (QR of B and Aᵀ, exact) and W's from the eigenvalues of its Gram matrix
    method: Literal["full", "factored"]


class SvdParams(Section):
    """lowrank.svd: rank sweep of an image's truncated SVD, then the LoRA spectra."""

    image: str  # skimage.data.<name> (ships with scikit-image) or an image file path
    ranks: Annotated[list[PosInt], Field(min_length=1)]
    show_ranks: Annotated[list[PosInt], Field(min_length=1)]  # reconstructions drawn
    tolerance: PosFloat  # allowed |error - Eckart-Young optimum| / ||X||_F
    threads: PosInt  # BLAS/LAPACK/torch CPU threads
    lora: LoraSpectrumParams

    @model_validator(mode="after")
    def _ranks(self) -> SvdParams:
        if self.ranks != sorted(set(self.ranks)):
            raise ValueError("ranks must be increasing, without repeats")
        if not set(self.show_ranks) <= set(self.ranks):
            raise ValueError("show_ranks must be a subset of ranks")
        return self


class SyntheticRatingsParams(Section):
    """Ratings = mu + b_u + c_i + p_u.q_i + N(0, noise_std^2) on a random subset of pairs."""

    users: Annotated[int, Field(ge=2)]
    items: Annotated[int, Field(ge=2)]
    rank: PosInt
    density: Annotated[float, Field(gt=0, le=1)]  # share of user x item pairs observed
    global_mean: float
    bias_std: NonNegFloat
    factor_std: PosFloat
    noise_std: NonNegFloat
    seed: int


class RatingsSplitParams(Section):
    test_fraction: OpenFraction
    seed: int


class AlsModelParams(Section):
    factors: NonNegInt  # rank k; 0 with biases: the biases-only model
    biases: bool  # mu + b_u + c_i + p.q; false: p.q alone (Spark ML's ALS model)
    reg: PosFloat  # lambda on the factors
    reg_bias: NonNegFloat  # lambda on the biases
    weighted_reg: bool  # scale lambda by each user's/item's rating count (ALS-WR, as Spark)
    init_std: PosFloat
    iterations: PosInt
    clip: Annotated[list[float], Field(min_length=2, max_length=2)] | None  # [low, high]
    seed: int

    @model_validator(mode="after")
    def _model(self) -> AlsModelParams:
        if self.factors == 0 and not self.biases:
            raise ValueError("factors 0 without biases is no model")
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError("clip must be [low, high] with low < high")
        return self


class AlsParams(Section):
    """lowrank.als: explicit-feedback ALS on planted synthetic ratings or MovieLens."""

    dataset: Literal["synthetic", "movielens"]
    ratings_path: str | None  # movielens: ratings.csv, or the GroupLens zip holding it
    synthetic: SyntheticRatingsParams
    split: RatingsSplitParams
    model: AlsModelParams
    threads: PosInt  # BLAS/LAPACK CPU threads

    @model_validator(mode="after")
    def _data(self) -> AlsParams:
        if self.dataset == "movielens" and not self.ratings_path:
            raise ValueError("dataset movielens needs ratings_path")
        return self


# ------------------------------------------------------------------------- launch


class FSDPParams(Section):
    version: Literal[1, 2]
    transformer_layer_cls_to_wrap: str
    reshard_after_forward: bool
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"]
    offload_params: bool
    cpu_ram_efficient_loading: bool
    activation_checkpointing: bool


class LaunchParams(Section):
    """launch.train: processes and strategy for every train stage (see tunelab.launch)."""

    num_processes: PosInt
    strategy: Literal["ddp", "fsdp"]
    num_machines: PosInt
    machine_rank: NonNegInt
    main_process_ip: str | None
    main_process_port: Annotated[int, Field(ge=1024, le=65535)]
    mixed_precision: Literal["no", "bf16", "fp16"]
    keep_global_batch: bool
    fsdp: FSDPParams

    @model_validator(mode="after")
    def _machines(self) -> LaunchParams:
        if self.num_processes % self.num_machines:
            raise ValueError("num_processes (all machines) must divide by num_machines")
        if self.machine_rank >= self.num_machines:
            raise ValueError("machine_rank must be below num_machines")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("main_process_ip is needed with more than one machine")
        return self


SECTIONS: dict[str, type[Section]] = {
    "launch.train": LaunchParams,
    "base.text": TextBaseParams,
    "base.vision": VisionBaseParams,
    "prepare.alpaca": AlpacaPrepareParams,
    "prepare.medical": MedicalPrepareParams,
    "prepare.legal": LegalPrepareParams,
    "prepare.car_insurance": CarInsurancePrepareParams,
    "prepare.gsm8k": GSM8KPrepareParams,
    "train.alpaca": SFTTrainParams,
    "train.medical": SFTTrainParams,
    "train.legal": SFTTrainParams,
    "train.car_insurance": VLTrainParams,
    "train.gsm8k": GRPOTrainParams,
    "prepare.preference": PreferencePrepareParams,
    "pretrain.medical": ContinualPretrainParams,
    "pretrain.legal": ContinualPretrainParams,
    "train_pref.dpo": PreferenceTrainParams,
    "train_pref.orpo": PreferenceTrainParams,
    "evaluate_pref.dpo": SFTEvaluateParams,
    "evaluate_pref.orpo": SFTEvaluateParams,
    "evaluate.alpaca": SFTEvaluateParams,
    "evaluate.medical": SFTEvaluateParams,
    "evaluate.legal": SFTEvaluateParams,
    "evaluate.car_insurance": VLEvaluateParams,
    "evaluate.gsm8k": GSM8KEvaluateParams,
    "report.content": ReportContentParams,
    "export.merge": ExportMergeParams,
    "export.output": ExportOutputParams,
    "lowrank.svd": SvdParams,
    "lowrank.als": AlsParams,
}


# ------------------------------------------------------------------------ loading


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping safely (yaml.safe_load: no arbitrary objects)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunelabError(str(path), "file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise TunelabError(
            f"{path}{line}", f"invalid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(data, dict):
        raise TunelabError(str(path), "expected a mapping at the top level")
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The Section class that holds the mapping at ``loc`` (None: not a Section there)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates = [field.annotation]
        while candidates:
            ann = candidates.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
                break
            if isinstance(ann, types.UnionType) or typing.get_origin(ann) in (typing.Union,):
                candidates += list(typing.get_args(ann))
        else:
            return None
    return model


def suggest(key: str, known: list[str], likely: list[str] | None = None) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''.

    ``likely`` (names missing beside the unknown one: a rename) are tried first with no
    cutoff; then difflib's close matches among all known names.
    """
    if likely:
        return f" (did you mean {difflib.get_close_matches(key, likely, n=1, cutoff=0.0)[0]!r}?)"
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.4)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _format_error(
    path: Path, prefix: str, err: ValidationError, model: type[BaseModel]
) -> TunelabError:
    """Every error of the section on one line: unknown keys first (with a suggestion), then
    missing keys and bad values, each as ``<dotted key>: <what>``, joined by ``; ``."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    missing = [tuple(e["loc"]) for e in errors if e["type"] == "missing"]
    parts = []
    for e in errors:
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in (prefix, *loc) if p != "")
        msg = e["msg"]
        conflict = (e.get("ctx") or {}).get("error")
        if isinstance(conflict, ParamConflict):  # two keys: name both in full
            parts.append(
                (f"{dotted}.{conflict.key}", f"{conflict.why} with {dotted}.{conflict.other}")
            )
            continue
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent else []
            siblings = [m[-1] for m in missing if m[:-1] == loc[:-1]]
            msg = "unknown key" + (suggest(str(loc[-1]), known, siblings) if known else "")
        elif e["type"] == "missing":
            msg = "missing key"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        parts.append((dotted, msg))
    first, *rest = parts
    message = "; ".join([first[1], *(f"{k}: {m}" for k, m in rest)])
    return TunelabError(f"{path}: {first[0]}", message)


def _lookup(data: dict[str, Any], dotted: str, path: Path) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TunelabError(f"{path}: {dotted}", "missing section")
        node = node[part]
    return node


def load_section(name: str, path: Path = PARAMS_FILE) -> Any:
    """Validate and return one section, e.g. ``load_section("train.alpaca")``."""
    if name not in SECTIONS:
        raise TunelabError(name, f"no such params section (known: {', '.join(sorted(SECTIONS))})")
    raw = _lookup(read_yaml(path), name, path)
    try:
        return SECTIONS[name].model_validate(raw)
    except ValidationError as err:
        raise _format_error(path, name, err, SECTIONS[name]) from None


def load_params(path: Path = PARAMS_FILE) -> dict[str, Section]:
    """Validate every section of the file; unknown top-level or stage keys are errors."""
    data = read_yaml(path)
    known: dict[str, set[str]] = {}
    for name in SECTIONS:
        top, _, sub = name.partition(".")
        known.setdefault(top, set()).add(sub)
    unknown = []
    for top, value in data.items():
        if top not in known:
            unknown.append((str(top), suggest(str(top), list(known))))
        elif not isinstance(value, dict):
            raise TunelabError(f"{path}: {top}", "expected a mapping")
        else:
            unknown += [
                (f"{top}.{sub}", suggest(str(sub), sorted(known[top])))
                for sub in value
                if sub not in known[top]
            ]
    if unknown:
        (key, hint), *rest = unknown
        what = [f"unknown key{h or ' (not a parameter section)'}" for _, h in unknown]
        message = "; ".join(
            [what[0], *(f"{k}: {w}" for (k, _), w in zip(rest, what[1:], strict=True))]
        )
        raise TunelabError(f"{path}: {key}", message)
    return {name: load_section(name, path) for name in SECTIONS}
