"""Continual pretraining: causal-LM loss on packed domain text, LoRA (+ full embeddings).

TRL's SFTTrainer on a language-modelling dataset (``{"text": ...}``, loss on every token)
with packing; Unsloth's continual-pretraining recipe adds full copies of ``embed_tokens``
and ``lm_head`` (params ``lora.modules_to_save``) trained at a lower rate
(``optim.embedding_learning_rate``): Unsloth's own UnslothTrainer on that backend, the
same two optimizer groups by a small SFTTrainer subclass on the transformers + PEFT one.
The adapter then starts an SFT run (train.<s>.init_from, see tunelab.training.sft).

Checkpoints and resume as in tunelab.training.sft (.tunelab/checkpoints/pretrain/<s>).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunelab.config import ContinualPretrainParams
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, dump_json, read_jsonl
from tunelab.training.sft import checkpoint_dir, fingerprint, trainer_args


def embedding_lr_trainer(backend: str, embedding_lr: float | None) -> type:
    """An SFTTrainer whose modules_to_save copies train at ``embedding_lr``."""
    if backend == "unsloth":
        from unsloth import UnslothTrainer  # reads args.embedding_learning_rate

        return UnslothTrainer
    from trl import SFTTrainer

    if embedding_lr is None:
        return SFTTrainer

    class EmbeddingLRTrainer(SFTTrainer):
        """Optimizer groups as Unsloth's: embeddings at their own rate, the rest at the
        learning rate; weight decay as the Trainer's (not on norms and biases)."""

        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                model = self.model if model is None else model
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                decay = set(self.get_decay_parameter_names(model))
                groups: dict[tuple[bool, float], list[Any]] = {}
                for name, param in model.named_parameters():
                    if param.requires_grad:
                        wd = self.args.weight_decay if name in decay else 0.0
                        groups.setdefault((".modules_to_save." in name, wd), []).append(param)
                # the learning-rate groups first: the Trainer logs the first group's rate
                rate = {False: self.args.learning_rate, True: embedding_lr}
                self.optimizer = cls(
                    [
                        {"params": groups[k], "lr": rate[k[0]], "weight_decay": k[1]}
                        for k in sorted(groups, key=lambda k: (k[0], -k[1]))
                    ],
                    **kwargs,
                )
            return self.optimizer

    return EmbeddingLRTrainer


def train_pretrain(
    scenario: str,
    params: ContinualPretrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
) -> tuple[dict[str, Any], Any, Any]:
    """Pretrain one scenario's adapter on data_dir/train.jsonl; write adapter, tokenizer and
    run card to out_dir. Returns (run card, the trained PEFT model, tokenizer)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig

    from tunelab import stage
    from tunelab.models.loading import resolve_base
    from tunelab.training.backends import load_text_model
    from tunelab.training.live import live_callback
    from tunelab.training.memory_plan import measured_peak_gib, resolve
    from tunelab.training.runcard import run_card

    section = f"pretrain.{scenario}"
    inputs = {"train": data_dir / "train.jsonl", "base": base_dir}
    name_or_path, revision = resolve_base(base_dir)
    params, memory = resolve(
        params,
        section,
        name_or_path,
        revision,
        backend,
        {"optim": params.data.max_length},
        modules_to_save=params.lora.modules_to_save,
    )
    fp = fingerprint(params, inputs)
    ckpt, resumable = checkpoint_dir("pretrain", scenario, fp)
    docs = [r["text"] for r in read_jsonl(inputs["train"])]
    if not docs:
        raise TunelabError(str(inputs["train"]), "no documents to pretrain on")
    saved = list(params.lora.modules_to_save)

    with stage.Timer() as timer:
        set_seed(params.seed)  # before the model and the adapter are built
        model, tokenizer = load_text_model(
            backend, name_or_path, revision, params, params.data.max_length, modules_to_save=saved
        )
        args = SFTConfig(
            output_dir=str(ckpt),
            dataset_text_field="text",
            max_length=params.data.max_length,
            packing=True,
            packing_strategy=params.data.packing_strategy,
            **trainer_args(
                params.optim,
                params.logging_steps,
                params.save_steps,
                params.seed,
                params.model.dtype,
            ),
        )
        args.embedding_learning_rate = params.optim.embedding_learning_rate  # UnslothTrainer's
        callbacks, end_live = live_callback(live_dir, resumable)
        trainer = embedding_lr_trainer(backend, params.optim.embedding_learning_rate)(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"text": d} for d in docs]),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        result = trainer.train(resume_from_checkpoint=True if resumable else None)
        end_live()

    history = [h for h in trainer.state.log_history if "loss" in h]
    card = run_card(
        f"pretrain_{scenario}",
        section,
        params,
        inputs | {"val": data_dir / "val.jsonl"},
        timer.seconds,
        backend=backend,
        base_model={"name_or_path": name_or_path, "revision": revision},
        resumed=resumable,
        train={
            "global_step": trainer.state.global_step,
            "train_loss": round(result.training_loss, 4),
            "first_logged_loss": history[0]["loss"] if history else None,
            "last_logged_loss": history[-1]["loss"] if history else None,
            "documents": len(docs),
            "packed_blocks": len(trainer.train_dataset),
            "modules_to_save": saved,
            "learning_rates": sorted({g["initial_lr"] for g in trainer.optimizer.param_groups}),
        },
        memory_plan=memory | {"measured_peak_gib": measured_peak_gib()},
    )
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        dump_json(tmp / "run_card.json", card)
    shutil.rmtree(ckpt, ignore_errors=True)
    match_saved_module_dtypes(trainer.model)
    return card, trainer.model, tokenizer


def match_saved_module_dtypes(model: Any) -> None:
    """Give the modules_to_save copies their original module's dtype again.

    On a 4-bit base TRL's SFTTrainer keeps the trainable copies (embed_tokens, lm_head) in
    bfloat16 while PEFT's k-bit preparation has put the original modules and the norms in
    float32; outside the trainer's autocast the held-out pass then meets a float32 hidden
    state and a bfloat16 lm_head (bench/gpu_pipeline.py --tiny found it). The saved
    adapter is written before this, as trained.
    """
    from peft.utils import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            weight = getattr(module.original_module, "weight", None)
            if weight is not None:
                module.modules_to_save.to(weight.dtype)
