"""Text SFT: LoRA / QLoRA through TRL's SFTTrainer, one recipe for every text scenario.

Checkpoints go to .tunelab/checkpoints/<stage>/<scenario> (outside the DVC
outputs, which DVC deletes before a stage runs) together with a fingerprint
of the params, data and base model; a rerun after a crash resumes from the
newest checkpoint whose fingerprint matches, and the folder is removed once
the adapter is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tunelab.config import OptimParams, SFTTrainParams
from tunelab.io import atomic_dir, dump_json, read_jsonl, sha256_path

CHECKPOINTS = Path(".tunelab/checkpoints")


def fingerprint(params: Any, inputs: dict[str, Path]) -> str:
    h = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode())
    for name in sorted(inputs):
        h.update(name.encode() + sha256_path(inputs[name]).encode())
    return h.hexdigest()


def checkpoint_dir(stage_name: str, scenario: str, fp: str) -> tuple[Path, bool]:
    """The checkpoint folder for this run and whether it holds a resumable checkpoint.

    Under a multi-process launch the main process clears a stale folder and the
    others wait for it (accelerate's PartialState barrier; a no-op alone).
    """
    from accelerate import PartialState

    from tunelab.launch import is_main_process

    ckpt = CHECKPOINTS / stage_name / scenario
    marker = ckpt / "fingerprint.txt"
    if is_main_process():
        if ckpt.exists() and (not marker.is_file() or marker.read_text().strip() != fp):
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        marker.write_text(fp + "\n")
    PartialState().wait_for_everyone()
    resumable = any(ckpt.glob("checkpoint-*"))
    if resumable and is_main_process():
        newest = max(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        print(f"resuming from {newest}")
    return ckpt, resumable


def dataset_from(path: Path) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(path)])


def trainer_args(
    optim: OptimParams, logging_steps: int, save_steps: int, seed: int, dtype: str
) -> dict[str, Any]:
    """The TrainingArguments every tunelab trainer shares (SFT, GRPO, VL), from params."""
    import torch

    cuda = torch.cuda.is_available()
    o = optim
    return dict(
        learning_rate=o.learning_rate,
        lr_scheduler_type=o.lr_scheduler_type,
        warmup_steps=o.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the steps
        weight_decay=o.weight_decay,
        per_device_train_batch_size=o.per_device_train_batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps,
        max_steps=o.max_steps,
        num_train_epochs=o.num_train_epochs,
        max_grad_norm=o.max_grad_norm,
        optim=o.optim,
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to="none",
        use_cpu=not cuda,
        bf16=cuda and dtype == "bfloat16",
        fp16=cuda and dtype == "float16",
        gradient_checkpointing=False,  # the backends enable it from params.model
        dataloader_num_workers=0,
    )


def sft_config(params: SFTTrainParams, output_dir: Path, **overrides: Any) -> Any:
    """SFTConfig from params; nothing here that params do not name (library defaults aside)."""
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(output_dir),
        max_length=params.data.max_length,
        packing=params.data.packing,
        pad_to_multiple_of=params.data.pad_to_multiple_of,
        assistant_only_loss=params.data.assistant_only_loss,
        **trainer_args(
            params.optim, params.logging_steps, params.save_steps, params.seed, params.model.dtype
        ),
    )
    kwargs.update(overrides)
    from tunelab.training.runcard import with_asked

    return with_asked(SFTConfig(**kwargs), kwargs)


def train_sft(
    scenario: str,
    params: SFTTrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
    extra_callbacks: list[Any] | None = None,
    launch: Any = None,
    init_adapter: Path | None = None,
    checkpoint_stage: str = "train",
) -> dict[str, Any] | None:
    """Train one scenario's adapter; write it, its tokenizer and run card to out_dir.

    ``extra_callbacks`` are added to the Trainer's (bench/ passes a profiler this way).
    ``launch`` (launch.train params) states how the global batch is kept under several
    processes; only the main process writes the adapter (the others return None).
    ``init_adapter``: continue that saved adapter (e.g. pretrain@<s>'s) instead of a fresh
    LoRA; its LoRA shape must be params.lora's, and the full-module copies it trained
    (modules_to_save: embeddings, lm_head) stay as they are: SFT trains the LoRA only.
    ``checkpoint_stage`` names the checkpoint folder (.tunelab/checkpoints/<it>/<scenario>).
    Gradient checkpointing (and, under auto, the micro-batch) comes from the memory plan
    (tunelab.training.memory_plan), before the fingerprint; the card's ``memory_plan``
    says what it chose.
    """
    from transformers import set_seed
    from trl import SFTTrainer

    from tunelab import stage
    from tunelab.launch import effective_batch, is_main_process, world_size
    from tunelab.models.chat import ensure_generation_template
    from tunelab.models.loading import resolve_base
    from tunelab.training.backends import (
        check_lora_matches,
        freeze_saved_modules,
        load_text_model,
    )
    from tunelab.training.live import live_callback
    from tunelab.training.memory_plan import resolve
    from tunelab.training.runcard import run_card, trainer_settings
    from tunelab.training.throughput import ThroughputMeter
    from tunelab.training.variants import save_adapter, save_initial, variant_card, with_loraplus

    inputs = {"train": data_dir / "train.jsonl", "base": base_dir}
    frozen_copies: list[str] = []  # a continued adapter's full-module copies (kept frozen)
    if init_adapter is not None:
        config = check_lora_matches(init_adapter, params.lora, f"train.{scenario}.lora")
        inputs["init"] = init_adapter
        frozen_copies = list(config.get("modules_to_save") or [])
    name_or_path, revision = resolve_base(base_dir)
    # gradient checkpointing resolved, the micro-batch split where auto had to
    params, memory = resolve(
        params,
        f"train.{scenario}",
        name_or_path,
        revision,
        backend,
        {"optim": params.data.max_length},
        modules_to_save=frozen_copies,
        train_saved_modules=False,
    )
    world = world_size()
    accum, global_batch = effective_batch(
        params.optim.per_device_train_batch_size,
        params.optim.gradient_accumulation_steps,
        world,
        launch.keep_global_batch if launch is not None else True,
        f"train.{scenario}.optim.gradient_accumulation_steps",
    )
    fp = f"{fingerprint(params, inputs)}-world{world}"
    ckpt, resumable = checkpoint_dir(checkpoint_stage, scenario, fp)

    with stage.Timer() as timer:
        set_seed(params.seed)  # before the model and the adapter are built
        model, tokenizer = load_text_model(
            backend,
            name_or_path,
            revision,
            params,
            params.data.max_length,
            init_adapter=init_adapter,
        )
        frozen = freeze_saved_modules(model) if init_adapter is not None else []
        initial = save_initial(model, params.lora, ckpt)  # PiSSA / OLoRA: A, B as initialised
        template_replaced = False
        if params.data.assistant_only_loss:
            template_replaced = ensure_generation_template(
                tokenizer, f"{name_or_path} chat template"
            )
        train_ds = dataset_from(inputs["train"])
        callbacks, end_live = live_callback(live_dir, resumable)
        trainer = with_loraplus(SFTTrainer, params.optim.loraplus_lr_ratio)(
            model=model,
            # Liger's kernels on the transformers + PEFT path; Unsloth brings its own.
            args=sft_config(
                params,
                ckpt,
                use_liger_kernel=params.liger_kernel and backend == "hf",
                gradient_accumulation_steps=accum,
            ),
            train_dataset=train_ds,
            processing_class=tokenizer,
            callbacks=[*callbacks, *(extra_callbacks or [])],
        )
        meter = ThroughputMeter().attach(trainer)
        result = trainer.train(resume_from_checkpoint=True if resumable else None)
        end_live()
    if not is_main_process():
        return None

    history = [h for h in trainer.state.log_history if "loss" in h]
    throughput = meter.summary()
    card = run_card(
        scenario,
        f"train.{scenario}",
        params,
        inputs | {"val": data_dir / "val.jsonl"},
        timer.seconds,
        backend=backend,
        base_model={"name_or_path": name_or_path, "revision": revision},
        chat_template_replaced=template_replaced,
        resumed=resumable,
        init_adapter={"path": str(init_adapter), "frozen_modules": frozen}
        if init_adapter is not None
        else None,
        train={
            "global_step": trainer.state.global_step,
            "train_loss": round(result.training_loss, 4),
            "first_logged_loss": history[0]["loss"] if history else None,
            "last_logged_loss": history[-1]["loss"] if history else None,
            "train_rows": len(train_ds),
        },
        throughput=throughput,
        trainer_args=trainer_settings(trainer.args),
        distributed={
            "world_size": world,
            "strategy": launch.strategy if launch is not None and world > 1 else "single",
            "per_device_train_batch_size": params.optim.per_device_train_batch_size,
            "gradient_accumulation_steps": accum,
            "global_batch_size": global_batch,
        },
        memory_plan=memory | {"measured_peak_gib": throughput.get("peak_allocated_gib")},
    )
    with atomic_dir(out_dir) as tmp:
        save_adapter(trainer.model, tmp, initial)
        tokenizer.save_pretrained(tmp)
        card["lora_variant"] = variant_card(trainer.model, params.lora, params.optim, tmp, initial)
        dump_json(tmp / "run_card.json", card)
    shutil.rmtree(ckpt, ignore_errors=True)
    return card
