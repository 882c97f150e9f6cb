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
The skeleton (checkpoints under .tunelab/checkpoints/train_pref/<name>, resume, run card)
is tunelab.training.run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.preference import PreferenceTrainParams
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.training.run import Trained, TrainingRun, trainer_args


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
    from tunelab.training.runcard import with_asked

    if params.method == "dpo":
        from trl import DPOConfig

        common["loss_type"] = [params.loss_type]
        return with_asked(DPOConfig(**common), common)
    from trl.experimental.orpo import ORPOConfig

    return with_asked(ORPOConfig(**common), common)


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


def trainer_kwargs(
    params: PreferenceTrainParams, model: Any, tokenizer: Any, peft_config: Any, records: list
) -> tuple[type, dict[str, Any]]:
    """The trainer class and its arguments besides ``args`` (DPO: no separate reference
    model, see the module docstring; ORPO has none)."""
    from datasets import Dataset

    from tunelab.data.preference import trl_pairs

    kwargs = dict(
        model=model, train_dataset=Dataset.from_list(trl_pairs(records)), processing_class=tokenizer
    )
    if params.method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer, kwargs | {"ref_model": None, "peft_config": peft_config}
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer, kwargs


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
) -> Trained:
    """Train the adapter on data_dir/train.jsonl (prepared pairs); write adapter, tokenizer
    and run card to out_dir."""
    from tunelab.models.chat import ensure_generation_template

    section = f"train_pref.{name}"
    records = read_jsonl(data_dir / "train.jsonl")
    if not records or "rejected" not in records[0]:
        raise TunelabError(str(data_dir / "train.jsonl"), "not prepared pairs (no 'rejected')")
    run = TrainingRun(name, section, params, backend, base_dir, data_dir, out_dir, live_dir)
    params = run.setup({"optim": 2 * params.max_length})  # chosen and rejected: two rows a pair
    run.start()
    model, tokenizer, peft_config = load_model(params, backend, run.name_or_path, run.revision)
    if peft_config is None:  # DPO on hf: the trainer makes the PEFT model (no PiSSA there)
        run.adapter_built(model)
    # the evaluation scores assistant tokens through the template's generation markers
    replaced = ensure_generation_template(tokenizer, f"{run.name_or_path} chat template")
    trainer_cls, kwargs = trainer_kwargs(params, model, tokenizer, peft_config, records)
    trainer, _ = run.train(
        trainer_cls, preference_config(params, run.ckpt), params.optim.loraplus_lr_ratio, **kwargs
    )
    if params.method == "orpo":
        reference = "none (ORPO)"
    elif peft_config is not None:
        reference = "the base, adapter disabled"
    else:
        reference = "frozen fresh adapter copy"
    return run.finish(
        tokenizer,
        selected_adapters=["default"],  # not the frozen "ref" copy TRL adds to a PeftModel
        train={"pairs": len(records), "curves": _curves(trainer.state.log_history)},
        method=params.method,
        reference=reference,
        chat_template_replaced=replaced,
    )
