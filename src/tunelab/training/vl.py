"""Vision-language SFT: LoRA on a Qwen2.5-VL-style model through TRL's SFTTrainer.

The SFT recipe for image + text conversations, on the shared skeleton (training/run.py):

- the model loads through ``AutoModelForImageTextToText`` with its processor
  (hf backend: transformers + PEFT, bitsandbytes for 4-bit) or through
  Unsloth's ``FastVisionModel`` (unsloth backend, on a GPU);
- LoRA placement follows Unsloth's switches (finetune_vision_layers,
  finetune_language_layers, finetune_attention_modules, finetune_mlp_modules);
  on the hf backend they become a PEFT target regex over the language model's
  decoder layers and the vision tower's blocks (the patch merger, embeddings
  and LM head stay frozen, as Unsloth leaves them);
- the processor's image bounds (min/max pixels) come from params and are saved
  with the adapter, so evaluation sees images exactly as training did;
- the data are prompt/completion pairs with their images, batched by TRL's
  vision-language collator on both backends; the loss covers the completion
  only (TRL has no assistant-only masks for images; the prompt is everything
  before the assistant's answer, so it is the same);
- ``model.gradient_checkpointing`` takes the explicit values only (false, true, gpu,
  offload; see tunelab.training.memory_plan): the memory plan has no model of the vision
  tower, so there is no auto here and no estimate in the run card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.base import PixelBoundsParams
from tunelab.config.vl import VLLoraParams, VLModelLoadParams, VLTrainParams
from tunelab.data.common import text_of
from tunelab.io import read_jsonl
from tunelab.training.memory_plan import hf_checkpointing, unsloth_checkpointing
from tunelab.training.run import Trained, TrainingRun, trainer_args
from tunelab.training.variants import lora_kwargs

LANGUAGE_MODULES = {
    "attention": r"self_attn\.(?:q_proj|k_proj|v_proj|o_proj)",
    "mlp": r"mlp\.(?:gate_proj|up_proj|down_proj)",
}
VISION_MODULES = {
    "attention": r"attn\.(?:qkv|proj)",
    "mlp": r"mlp\.(?:gate_proj|up_proj|down_proj)",
}


def lora_target_regex(lora: VLLoraParams) -> str:
    """PEFT ``target_modules`` regex (full match) for Qwen2/2.5-VL module names."""
    kinds = [
        k
        for k, on in (
            ("attention", lora.finetune_attention_modules),
            ("mlp", lora.finetune_mlp_modules),
        )
        if on
    ]
    parts = []
    if lora.finetune_language_layers:
        inner = "|".join(LANGUAGE_MODULES[k] for k in kinds)
        parts.append(rf".*language_model\.layers\.\d+\.(?:{inner})")
    if lora.finetune_vision_layers:
        inner = "|".join(VISION_MODULES[k] for k in kinds)
        parts.append(rf".*visual\.blocks\.\d+\.(?:{inner})")
    return "|".join(f"(?:{p})" for p in parts)


def set_image_bounds(processor: Any, bounds: PixelBoundsParams) -> None:
    """Bound the processor's image size (Qwen2-VL's min_pixels / max_pixels)."""
    ip = processor.image_processor
    ip.size = {"shortest_edge": bounds.min_pixels, "longest_edge": bounds.max_pixels}
    for name, value in (("min_pixels", bounds.min_pixels), ("max_pixels", bounds.max_pixels)):
        # unsloth_zoo (on a GPU) adds read-only properties that read ``size`` back.
        attr = getattr(type(ip), name, None)
        if isinstance(attr, property) and attr.fset is None:
            continue
        if hasattr(ip, name):
            setattr(ip, name, value)
    if (ip.size["shortest_edge"], ip.size["longest_edge"]) != (
        bounds.min_pixels,
        bounds.max_pixels,
    ):
        raise RuntimeError(f"the image processor did not take the bounds {bounds}")


def load_processor(name_or_path: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    from tunelab.errors import TunelabError

    try:
        processor = AutoProcessor.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise TunelabError(
            name_or_path, f"cannot load the processor ({str(err).splitlines()[0]})"
        ) from None
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def load_vl_model(name_or_path: str, revision: str | None, model: VLModelLoadParams | Any) -> Any:
    """AutoModelForImageTextToText from a hub id or local path (safetensors only)."""
    from transformers import AutoModelForImageTextToText

    from tunelab.errors import TunelabError
    from tunelab.models.loading import _default_device, check_safetensors, torch_dtype

    check_safetensors(Path(name_or_path))
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(model.dtype),
        "revision": revision,
        "trust_remote_code": model.trust_remote_code,
        "use_safetensors": True,
    }
    if model.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(model.dtype),
        )
        kwargs["device_map"] = _default_device()
    try:
        return AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise TunelabError(
            name_or_path, f"cannot load the model ({str(err).splitlines()[0]})"
        ) from None


def load_hf_vl(name_or_path: str, revision: str | None, params: VLTrainParams) -> tuple[Any, Any]:
    """transformers + PEFT: LoRA on the layers the switches select."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    processor = load_processor(name_or_path, revision, params.model.trust_remote_code)
    base = load_vl_model(name_or_path, revision, params.model)
    checkpointing = hf_checkpointing(params.model.gradient_checkpointing)
    if params.model.load_in_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    lora = params.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora),
        bias="none",
        **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
    )
    return get_peft_model(base, config), processor


def load_unsloth_vl(
    name_or_path: str, revision: str | None, params: VLTrainParams
) -> tuple[Any, Any]:
    """Unsloth FastVisionModel + its get_peft_model with the same switches."""
    from unsloth import FastVisionModel

    from tunelab.models.loading import check_safetensors, torch_dtype

    check_safetensors(Path(name_or_path))
    base, processor = FastVisionModel.from_pretrained(
        model_name=name_or_path,
        revision=revision,
        dtype=torch_dtype(params.model.dtype),
        load_in_4bit=params.model.load_in_4bit,
        trust_remote_code=params.model.trust_remote_code,
        use_gradient_checkpointing=unsloth_checkpointing(params.model.gradient_checkpointing),
    )
    lora = params.lora
    model = FastVisionModel.get_peft_model(
        base,
        finetune_vision_layers=lora.finetune_vision_layers,
        finetune_language_layers=lora.finetune_language_layers,
        finetune_attention_modules=lora.finetune_attention_modules,
        finetune_mlp_modules=lora.finetune_mlp_modules,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias="none",
        random_state=params.seed,
        **lora_kwargs(lora),  # use_dora, use_rslora, init_lora_weights
    )
    FastVisionModel.for_training(model)
    return model, processor


def vl_records(path: Path) -> list[dict[str, Any]]:
    """Prepared records -> prompt/completion pairs with image paths (relative to the records).

    User turns keep their list of parts (the image placeholder where the record
    puts it); TRL fills the placeholders with the decoded images.
    """
    rows = []
    for rec in read_jsonl(path):
        messages = rec["messages"]
        prompt = [
            m
            if m["role"] == "user"
            else {"role": m["role"], "content": [{"type": "text", "text": text_of(m["content"])}]}
            for m in messages[:-1]
        ]
        completion = [{"role": "assistant", "content": text_of(messages[-1]["content"])}]
        images = [str(path.parent / rel) for rel in rec["images"]]
        rows.append({"prompt": prompt, "completion": completion, "images": images})
    return rows


def vl_dataset(path: Path) -> Any:
    """A datasets.Dataset whose images decode lazily to PIL (datasets.Image)."""
    from datasets import Dataset, Image, List

    ds = Dataset.from_list(vl_records(path))
    return ds.cast_column("images", List(Image()))


def vl_config(params: VLTrainParams, output_dir: Path) -> Any:
    """SFTConfig for image + text pairs; nothing here that params do not name."""
    from trl import SFTConfig

    from tunelab.training.runcard import with_asked

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_length=params.data.max_length,
        packing=False,  # TRL packs no image datasets
        assistant_only_loss=False,  # not supported with images: completion_only_loss instead
        completion_only_loss=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        **trainer_args(
            params.optim, params.logging_steps, params.save_steps, params.seed, params.model.dtype
        ),
    )
    return with_asked(SFTConfig(**kwargs), kwargs)


def train_vl(
    scenario: str,
    params: VLTrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
    extra_callbacks: list[Any] | None = None,
) -> Trained:
    """Train the scenario's VL adapter; write it, the processor and the run card to out_dir.

    ``extra_callbacks`` are added to the Trainer's (the tests read the trained model so).
    """
    from trl import SFTTrainer

    dirs = (base_dir, data_dir, out_dir, live_dir)
    run = TrainingRun(
        scenario,
        f"train.{scenario}",
        params,
        backend,
        *dirs,
        extra_callbacks,
        inputs={"images": data_dir / "images"},
    )
    params = run.setup()  # explicit checkpointing: the plan has no vision-tower model
    run.start()
    load = load_unsloth_vl if backend == "unsloth" else load_hf_vl
    model, processor = load(run.name_or_path, run.revision, params)
    run.adapter_built(model)
    set_image_bounds(processor, params.image)
    train_ds = vl_dataset(run.inputs["train"])
    run.train(
        SFTTrainer,
        vl_config(params, run.ckpt),
        params.optim.loraplus_lr_ratio,
        model=model,
        train_dataset=train_ds,
        processing_class=processor,
    )
    return run.finish(
        processor,
        train={"train_rows": len(train_ds)},
        lora_target_modules=lora_target_regex(params.lora) if backend == "hf" else "unsloth",
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
