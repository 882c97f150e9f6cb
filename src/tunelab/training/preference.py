"""Preference optimisation: LoRA through TRL's DPOTrainer or ORPOTrainer (params: method).

- DPO (trl.DPOTrainer) needs a reference model: here the base itself, with the adapter
  switched off. On the transformers + PEFT backend the trainer gets the base model and a
  LoraConfig (``peft_config``), makes the PEFT model itself, and computes the reference
  log-probabilities under ``disable_adapter()``: no second copy of the weights
  (TRL 1.14/1.15: "New adapter: disabling adapters yields the base model").
  Unsloth hands over a PeftModel already; TRL then keeps a frozen copy of the fresh
  adapter as "ref" (LoRA matrices only, B = 0: the same function as the base).
- ORPO (trl.experimental.orpo.ORPOTrainer in TRL 1.14/1.15) has no reference model:
  NLL on the chosen answer plus beta x the log odds ratio of chosen over rejected.

With Unsloth installed and chosen, it is imported first (select_backend) and patches
TRL's preference trainers; ``PatchDPOTrainer`` is called where that Unsloth has it.
Checkpoints and resume as in tunelab.training.sft (.tunelab/checkpoints/train_pref/<name>).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunelab.config import PreferenceTrainParams
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, dump_json, read_jsonl
from tunelab.training.sft import checkpoint_dir, fingerprint, trainer_args


def preference_config(params: PreferenceTrainParams, output_dir: Path) -> Any:
    """DPOConfig or ORPOConfig from params (field names as in TRL 1.14/1.15)."""
    common = dict(
        output_dir=str(output_dir),
        beta=params.beta,
        max_length=params.max_length,
        **trainer_args(
            params.optim, params.logging_steps, params.save_steps, params.seed, params.model.dtype
        ),
    )
    if params.method == "dpo":
        from trl import DPOConfig

        return DPOConfig(loss_type=[params.loss_type], **common)
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(**common)


def load_model(
    params: PreferenceTrainParams, backend: str, name_or_path: str, revision: str | None
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): the model the trainer wraps itself when peft_config
    is given (DPO on the hf backend, see the module docstring), else a PEFT model."""
    from tunelab.training.backends import load_hf_base, load_text_model, lora_config

    if backend == "unsloth":
        import unsloth

        if hasattr(unsloth, "PatchDPOTrainer"):
            unsloth.PatchDPOTrainer()
    elif params.method == "dpo":
        base, tokenizer = load_hf_base(name_or_path, revision, params.model)
        return base, tokenizer, lora_config(params.lora)
    model, tokenizer = load_text_model(backend, name_or_path, revision, params, params.max_length)
    return model, tokenizer, None


def build_trainer(
    params: PreferenceTrainParams,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    records: list[dict],
    output_dir: Path,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset

    from tunelab.data.preference import trl_pairs

    dataset = Dataset.from_list(trl_pairs(records))
    args = preference_config(params, output_dir)
    if params.method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _curves(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged rewards/accuracies/margins, as the trainers name them."""
    rows = [h for h in log_history if "loss" in h]
    keys = [k for k in (rows[0] if rows else {}) if k.startswith(("rewards/", "logps/", "nll"))]
    return {
        k: {"first": round(rows[0][k], 4), "last": round(rows[-1][k], 4)}
        for k in ["loss", *keys]
        if k in rows[-1]
    }


def train_preference(
    name: str,
    params: PreferenceTrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
) -> dict[str, Any]:
    """Train the adapter on data_dir/train.jsonl (prepared pairs); write adapter, tokenizer
    and run card to out_dir."""
    from transformers import set_seed

    from tunelab import stage
    from tunelab.models.chat import ensure_generation_template
    from tunelab.models.loading import resolve_base
    from tunelab.training.live import live_callback
    from tunelab.training.memory_plan import measured_peak_gib, resolve
    from tunelab.training.runcard import run_card

    inputs = {"train": data_dir / "train.jsonl", "base": base_dir}
    records = read_jsonl(inputs["train"])
    if not records or "rejected" not in records[0]:
        raise TunelabError(str(inputs["train"]), "not prepared preference pairs (no 'rejected')")
    name_or_path, revision = resolve_base(base_dir)
    # chosen and rejected: two rows of max_length per pair
    params, memory = resolve(
        params,
        f"train_pref.{name}",
        name_or_path,
        revision,
        backend,
        {"optim": 2 * params.max_length},
    )
    fp = fingerprint(params, inputs)
    ckpt, resumable = checkpoint_dir("train_pref", name, fp)

    with stage.Timer() as timer:
        set_seed(params.seed)  # before the model and the adapter are built
        model, tokenizer, peft_config = load_model(params, backend, name_or_path, revision)
        # the evaluation scores assistant tokens through the template's generation markers
        template_replaced = ensure_generation_template(tokenizer, f"{name_or_path} chat template")
        callbacks, end_live = live_callback(live_dir, resumable)
        trainer = build_trainer(params, model, tokenizer, peft_config, records, ckpt, callbacks)
        result = trainer.train(resume_from_checkpoint=True if resumable else None)
        end_live()

    peft_model = trainer.model
    card = run_card(
        name,
        f"train_pref.{name}",
        params,
        inputs | {"val": data_dir / "val.jsonl"},
        timer.seconds,
        backend=backend,
        method=params.method,
        base_model={"name_or_path": name_or_path, "revision": revision},
        reference="none (ORPO)"
        if params.method == "orpo"
        else (
            "the base, adapter disabled" if peft_config is not None else "frozen fresh adapter copy"
        ),
        chat_template_replaced=template_replaced,
        resumed=resumable,
        train={
            "global_step": trainer.state.global_step,
            "train_loss": round(result.training_loss, 4),
            "pairs": len(records),
            "curves": _curves(trainer.state.log_history),
        },
        memory_plan=memory | {"measured_peak_gib": measured_peak_gib()},
    )
    with atomic_dir(out_dir) as tmp:
        # Only the trained adapter (TRL adds a frozen "ref" copy when handed a PeftModel).
        peft_model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        dump_json(tmp / "run_card.json", card)
    shutil.rmtree(ckpt, ignore_errors=True)
    return card
