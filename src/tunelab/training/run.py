"""The skeleton every training recipe shares: setup, train, save, cleanup.

A recipe (sft, pretrain, grpo, vl, preference) keeps only what is its own: how its model
loads, its trainer class and config, and its extra run-card fields. ``TrainingRun`` owns
the rest, in this order:

1. ``setup``: the base model (models/base/<kind>: a built model or a pointer to a hub
   one), the memory plan (gradient checkpointing, and the micro-batch under ``auto``;
   tunelab.training.memory_plan), the params/data fingerprint and the checkpoint folder.
   Checkpoints go to .tunelab/checkpoints/<stage>/<name>, outside the DVC outputs (which
   DVC deletes before a stage runs), with the fingerprint of the params, the inputs and
   the world size: a rerun after a crash resumes from the newest checkpoint whose
   fingerprint matches;
2. ``start``: the seed set before the model and the adapter are built, the clock started;
   ``adapter_built``: a PiSSA / OLoRA adapter kept as initialised (tunelab.training.variants);
3. ``train``: the recipe's trainer class with the dvclive callback (curves by global
   step, wall-clock figures dropped), LoRA+ when asked for, the throughput meter, and
   ``resume_from_checkpoint`` when its folder holds one;
4. ``finish``: the run card's common fields (params, input hashes, code revision,
   libraries, hardware, wall time, backend, base model, whether it resumed, the loss
   history, throughput and peak memory, the trainer's settings as the libraries left them,
   the memory plan, the LoRA variant) plus the recipe's own, the adapter and its tokenizer
   or processor written atomically (PiSSA / OLoRA converted to plain LoRA), and the
   checkpoint folder removed. Only the main process of a launch writes.

Every recipe returns ``Trained`` (card, model, processor), or None on the other processes
of a multi-process launch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.io import atomic_dir, dump_json, sha256_path

CHECKPOINTS = Path(".tunelab/checkpoints")


@dataclass
class Trained:
    """What a recipe hands back: the run card, the trained (PEFT) model, its tokenizer or
    processor (the stage may evaluate them in memory, as pretrain@<s> does)."""

    card: dict[str, Any]
    model: Any
    processor: Any


def fingerprint(params: Any, inputs: dict[str, Path]) -> str:
    """Hash of the params (as resolved) and of every input file's bytes."""
    h = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode())
    for name in sorted(inputs):
        h.update(name.encode() + sha256_path(inputs[name]).encode())
    return h.hexdigest()


def checkpoint_dir(where: str, fp: str) -> Path:
    """The checkpoint folder for this run, emptied when it holds another run's checkpoints.

    Under a multi-process launch the main process clears a stale folder and the
    others wait for it (accelerate's PartialState barrier; a no-op alone).
    """
    from accelerate import PartialState

    from tunelab.training.launch import is_main_process

    ckpt = CHECKPOINTS / where
    marker = ckpt / "fingerprint.txt"
    if is_main_process():
        if ckpt.exists() and (not marker.is_file() or marker.read_text().strip() != fp):
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        marker.write_text(fp + "\n")
    PartialState().wait_for_everyone()
    return ckpt


def wait_for_everyone() -> None:
    """A barrier across the processes of a launch (a no-op alone)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def newest_checkpoint(folder: Path) -> Path | None:
    """The trainer's newest checkpoint-<step> folder under ``folder`` (None: none)."""
    found = list(Path(folder).glob("checkpoint-*"))
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None


def trainer_args(
    optim: Any, logging_steps: int, save_steps: int, seed: int, dtype: str
) -> dict[str, Any]:
    """The TrainingArguments every tunelab trainer shares, from params (an optim block)."""
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


def loss_summary(trainer: Any, result: Any) -> dict[str, Any]:
    """global step, the trainer's mean training loss, the first and last logged loss."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    loss = getattr(result, "training_loss", None)
    return {
        "global_step": trainer.state.global_step,
        "train_loss": round(loss, 4) if loss is not None else None,
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
    }


@dataclass
class TrainingRun:
    """One adapter's training, from params to the saved adapter (see the module docstring).

    ``name``: the adapter's name (the card's scenario); ``section``: its params section,
    named in errors and the card; ``checkpoint``: its folder under .tunelab/checkpoints
    (by default the section's: train/alpaca, pretrain/medical, train_pref/dpo).
    ``inputs``: the files the fingerprint and the card hash besides the train data and
    the base (the card adds data_dir/val.jsonl where there is one). ``extra_callbacks`` go
    to the last trainer built (bench/ passes a profiler).
    """

    name: str
    section: str
    params: Any
    backend: str
    base_dir: Path
    data_dir: Path
    out_dir: Path
    live_dir: Path
    extra_callbacks: list[Any] | None = None
    checkpoint: str = ""  # default: the section as a path (train/alpaca, pretrain/medical)
    inputs: dict[str, Path] = field(default_factory=dict)
    name_or_path: str = ""
    revision: str | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    ckpt: Path = Path()
    initial: Path | None = None
    resumed: bool = False
    trainer: Any = None
    result: Any = None
    meter: Any = None
    _started: float = 0.0

    def __post_init__(self) -> None:
        self.inputs = {"train": self.data_dir / "train.jsonl", "base": self.base_dir} | self.inputs
        self.extra_callbacks = list(self.extra_callbacks or [])

    @property
    def base(self) -> tuple[str, str | None]:
        """(name_or_path, revision) of the base model, once ``setup`` resolved it."""
        return self.name_or_path, self.revision

    def setup(self, batches: dict[str, int] | None = None, world: int = 1, **plan: Any) -> Any:
        """Resolve the base, the memory plan and the checkpoint folder; return the params
        as resolved (gradient checkpointing, and the micro-batch under auto).

        ``batches``: each phase's optim block -> tokens per row, for the plan's estimate
        (None: explicit checkpointing only, the vision-language stage); ``plan``: the
        memory plan's other arguments (modules_to_save, reserve_fraction, ...).
        """
        from tunelab.models.loading import resolve_base
        from tunelab.training.memory_plan import resolve, resolve_explicit

        self.name_or_path, self.revision = resolve_base(self.base_dir)
        if batches is None:
            self.params, self.memory = resolve_explicit(self.params, self.section, self.backend)
        else:
            self.params, self.memory = resolve(
                self.params,
                self.section,
                self.name_or_path,
                self.revision,
                self.backend,
                batches,
                **plan,
            )
        fp = f"{fingerprint(self.params, self.inputs)}-world{world}"
        self.ckpt = checkpoint_dir(self.checkpoint or self.section.replace(".", "/"), fp)
        return self.params

    def start(self) -> None:
        """Seed everything (before the model and the adapter are built); start the clock."""
        import time

        from transformers import set_seed

        self._started = time.perf_counter()
        set_seed(self.params.seed)

    def adapter_built(self, model: Any) -> None:
        """Call once the fresh adapter exists: PiSSA / OLoRA keep it as initialised."""
        from tunelab.training.variants import save_initial

        self.initial = save_initial(model, self.params.lora, self.ckpt)

    def train(
        self,
        trainer_cls: type,
        args: Any,
        loraplus: float | None,
        live_dir: Path | None = None,
        last: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Build ``trainer_cls(args=args, **kwargs)`` with the live callback (LoRA+ when
        ``loraplus`` is a ratio) and train it, resuming from its output folder's newest
        checkpoint. ``last``: the run's final trainer (the one the card and the meter
        describe; GRPO's warm-up is not)."""
        from tunelab.training.launch import is_main_process
        from tunelab.training.live import live_callback
        from tunelab.training.throughput import ThroughputMeter
        from tunelab.training.variants import with_loraplus

        newest = newest_checkpoint(Path(args.output_dir))
        if newest is not None and is_main_process():
            print(f"resuming from {newest}")
        callbacks, end_live = live_callback(live_dir or self.live_dir, newest is not None)
        callbacks += kwargs.pop("callbacks", [])
        if last:
            callbacks += self.extra_callbacks
        trainer = with_loraplus(trainer_cls, loraplus)(args=args, callbacks=callbacks, **kwargs)
        meter = ThroughputMeter().attach(trainer) if last else None
        result = trainer.train(resume_from_checkpoint=True if newest is not None else None)
        end_live()
        if last:
            self.trainer, self.result, self.meter = trainer, result, meter
            self.resumed = newest is not None
        return trainer, result

    def finish(
        self,
        processor: Any,
        selected_adapters: list[str] | None = None,
        train: dict[str, Any] | None = None,
        **card: Any,
    ) -> Trained | None:
        """Write the adapter, ``processor`` and the run card; remove the checkpoints.

        ``train``: the recipe's fields beside the loss summary in the card's ``train``
        block; ``card``: its other fields. ``selected_adapters``: save only these (TRL
        adds a frozen "ref" copy in some trainers).
        """
        import time

        from tunelab.training.launch import is_main_process
        from tunelab.training.runcard import run_card, trainer_settings
        from tunelab.training.variants import save_adapter, variant_card

        if not is_main_process():
            wait_for_everyone()  # the main process writes; the others wait for it
            return None
        model, optim = self.trainer.model, self._optim()
        throughput = self.meter.summary()
        val = self.data_dir / "val.jsonl"
        full = run_card(
            self.name,
            self.section,
            self.params,
            self.inputs | ({"val": val} if val.is_file() else {}),
            time.perf_counter() - self._started,
            backend=self.backend,
            base_model={"name_or_path": self.name_or_path, "revision": self.revision},
            resumed=self.resumed,
            train=loss_summary(self.trainer, self.result) | (train or {}),
            throughput=throughput,
            trainer_args=trainer_settings(self.trainer.args),
            memory_plan=self.memory | {"measured_peak_gib": throughput.get("peak_allocated_gib")},
            **card,
        )
        with atomic_dir(self.out_dir) as tmp:
            save_adapter(model, tmp, self.initial, selected_adapters)
            processor.save_pretrained(tmp)
            full["lora_variant"] = variant_card(model, self.params.lora, optim, tmp, self.initial)
            dump_json(tmp / "run_card.json", full)
        shutil.rmtree(self.ckpt, ignore_errors=True)
        wait_for_everyone()
        return Trained(full, model, processor)

    def _optim(self) -> Any:
        """The optim block of the last phase (GRPO: grpo.optim)."""
        grpo = getattr(self.params, "grpo", None)
        return grpo.optim if grpo is not None else self.params.optim
