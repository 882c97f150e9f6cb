"""Text SFT: LoRA / QLoRA through TRL's SFTTrainer, one recipe for every text scenario.

The shared skeleton (checkpoints, resume, seed, live curves, run card, atomic save) is
tunelab.training.run; this recipe adds what is SFT's own: the chat records as a
``messages`` dataset, TRL's SFTConfig from ``data``, Liger's kernels on the hf backend,
the global batch kept under several processes, and continuing a saved adapter
(``init_from``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.train import SFTTrainParams
from tunelab.io import read_jsonl
from tunelab.training.run import Trained, TrainingRun, trainer_args


def dataset_from(path: Path) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(path)])


def sft_config(params: SFTTrainParams, output_dir: Path, **overrides: Any) -> Any:
    """SFTConfig from params; nothing here that params do not name (library defaults aside)."""
    from trl import SFTConfig

    from tunelab.training.runcard import with_asked

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
    return with_asked(SFTConfig(**kwargs), kwargs)


def global_batch(params: SFTTrainParams, launch: Any, world: int, section: str) -> dict[str, Any]:
    """The run card's ``distributed``: gradient accumulation under ``world`` processes (the
    global batch kept when launch.train.keep_global_batch says so)."""
    from tunelab.training.launch import effective_batch

    o = params.optim
    keep = launch.keep_global_batch if launch is not None else True
    where = f"{section}.optim.gradient_accumulation_steps"
    accum, batch = effective_batch(
        o.per_device_train_batch_size, o.gradient_accumulation_steps, world, keep, where
    )
    return {
        "world_size": world,
        "strategy": launch.strategy if launch is not None and world > 1 else "single",
        "per_device_train_batch_size": o.per_device_train_batch_size,
        "gradient_accumulation_steps": accum,
        "global_batch_size": batch,
    }


def continued_copies(
    init_adapter: Path | None, params: SFTTrainParams, section: str, inputs: dict[str, Path]
) -> list[str]:
    """A continued adapter (its LoRA shape checked against params, added to ``inputs``):
    the full-module copies it trained, which SFT keeps frozen (none for a fresh LoRA)."""
    from tunelab.training.backends import check_lora_matches

    if init_adapter is None:
        return []
    config = check_lora_matches(init_adapter, params.lora, f"{section}.lora")
    inputs["init"] = init_adapter
    return list(config.get("modules_to_save") or [])


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
) -> Trained | None:
    """Train one scenario's adapter; write it, its tokenizer and run card to out_dir.

    ``extra_callbacks`` are added to the Trainer's (bench/ passes a profiler this way).
    ``launch`` (launch.train params) states how the global batch is kept under several
    processes; only the main process writes the adapter (the others return None).
    ``init_adapter``: continue that saved adapter (e.g. pretrain@<s>'s) instead of a fresh
    LoRA; its LoRA shape must be params.lora's, and the full-module copies it trained
    (modules_to_save: embeddings, lm_head) stay as they are: SFT trains the LoRA only.
    ``checkpoint_stage`` names the checkpoint folder (.tunelab/checkpoints/<it>/<scenario>).
    """
    from trl import SFTTrainer

    from tunelab.models.chat import ensure_generation_template
    from tunelab.training.backends import freeze_saved_modules, load_text_model
    from tunelab.training.launch import world_size

    section = f"train.{scenario}"
    dirs, ckpt = (base_dir, data_dir, out_dir, live_dir), f"{checkpoint_stage}/{scenario}"
    run = TrainingRun(scenario, section, params, backend, *dirs, extra_callbacks, checkpoint=ckpt)
    copies = continued_copies(init_adapter, params, section, run.inputs)
    world = world_size()
    batches = {"optim": params.data.max_length}
    params = run.setup(batches, world, modules_to_save=copies, train_saved_modules=False)
    distributed = global_batch(params, launch, world, section)
    run.start()
    max_len = params.data.max_length
    model, tokenizer = load_text_model(backend, *run.base, params, max_len, init_adapter)
    init = None
    if init_adapter is not None:
        init = {"path": str(init_adapter), "frozen_modules": freeze_saved_modules(model)}
    run.adapter_built(model)
    template_replaced = params.data.assistant_only_loss and ensure_generation_template(
        tokenizer, f"{run.name_or_path} chat template"
    )
    train_ds = dataset_from(run.inputs["train"])
    accum = distributed["gradient_accumulation_steps"]
    liger = params.liger_kernel and backend == "hf"  # Unsloth brings its own kernels
    args = sft_config(params, run.ckpt, gradient_accumulation_steps=accum, use_liger_kernel=liger)
    data = {"model": model, "train_dataset": train_ds, "processing_class": tokenizer}
    run.train(SFTTrainer, args, params.optim.loraplus_lr_ratio, **data)
    return run.finish(
        tokenizer,
        train={"train_rows": len(train_ds)},
        chat_template_replaced=bool(template_replaced),
        init_adapter=init,
        distributed=distributed,
    )
