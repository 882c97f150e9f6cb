"""Continual pretraining: causal-LM loss on packed domain text, LoRA (+ full embeddings).

TRL's SFTTrainer on a language-modelling dataset (``{"text": ...}``, loss on every token)
with packing; Unsloth's continual-pretraining recipe adds full copies of ``embed_tokens``
and ``lm_head`` (params ``lora.modules_to_save``) trained at a lower rate
(``optim.embedding_learning_rate``): Unsloth's own UnslothTrainer on that backend, the
same two optimizer groups by a small SFTTrainer subclass on the transformers + PEFT one.
The adapter then starts an SFT run (train.<s>.init_from, see tunelab.training.sft).
The skeleton (checkpoints under .tunelab/checkpoints/pretrain/<s>, resume, run card) is
tunelab.training.run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.pretrain import ContinualPretrainParams
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.training.run import Trained, TrainingRun, trainer_args


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


def pretrain_config(params: ContinualPretrainParams, output_dir: Path) -> Any:
    """SFTConfig for packed language modelling (loss on every token) from params."""
    from trl import SFTConfig

    from tunelab.training.runcard import with_asked

    kwargs = dict(
        output_dir=str(output_dir),
        dataset_text_field="text",
        max_length=params.data.max_length,
        packing=True,
        packing_strategy=params.data.packing_strategy,
        **trainer_args(
            params.optim, params.logging_steps, params.save_steps, params.seed, params.model.dtype
        ),
    )
    args = with_asked(SFTConfig(**kwargs), kwargs)
    args.embedding_learning_rate = params.optim.embedding_learning_rate  # UnslothTrainer's
    return args


def train_pretrain(
    scenario: str,
    params: ContinualPretrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
) -> Trained:
    """Pretrain one scenario's adapter on data_dir/train.jsonl; write adapter, tokenizer and
    run card to out_dir. The returned model's full-module copies are in their original
    dtype again (match_saved_module_dtypes), ready for the held-out pass."""
    from datasets import Dataset

    from tunelab.training.backends import load_text_model

    section = f"pretrain.{scenario}"
    name = f"pretrain_{scenario}"
    run = TrainingRun(name, section, params, backend, base_dir, data_dir, out_dir, live_dir)
    saved = list(params.lora.modules_to_save)
    params = run.setup({"optim": params.data.max_length}, modules_to_save=saved)
    docs = [r["text"] for r in read_jsonl(run.inputs["train"])]
    if not docs:
        raise TunelabError(str(run.inputs["train"]), "no documents to pretrain on")
    run.start()
    model, tokenizer = load_text_model(
        backend,
        run.name_or_path,
        run.revision,
        params,
        params.data.max_length,
        modules_to_save=saved,
    )
    run.adapter_built(model)
    trainer, _ = run.train(
        embedding_lr_trainer(backend, params.optim.embedding_learning_rate),
        pretrain_config(params, run.ckpt),
        params.optim.loraplus_lr_ratio,
        model=model,
        train_dataset=Dataset.from_list([{"text": d} for d in docs]),
        processing_class=tokenizer,
    )
    trained = run.finish(
        tokenizer,
        train={
            "documents": len(docs),
            "packed_blocks": len(trainer.train_dataset),
            "modules_to_save": saved,
            "learning_rates": sorted({g["initial_lr"] for g in trainer.optimizer.param_groups}),
        },
    )
    match_saved_module_dtypes(trainer.model)
    return trained


def match_saved_module_dtypes(model: Any) -> None:
    """Give the modules_to_save copies their original module's dtype again.

    On a 4-bit base TRL's SFTTrainer keeps the trainable copies (embed_tokens, lm_head) in
    bfloat16 while PEFT's k-bit preparation has put the original modules and the norms in
    float32; outside the trainer's autocast the held-out pass then meets a float32 hidden
    state and a bfloat16 lm_head (`tunelab gpu-check --tiny` found it). The saved
    adapter is written before this, as trained.
    """
    from peft.utils import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            weight = getattr(module.original_module, "weight", None)
            if weight is not None:
                module.modules_to_save.to(weight.dtype)
