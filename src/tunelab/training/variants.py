"""LoRA variants shared by every trainer (SFT, GRPO, VL): DoRA, rsLoRA, PiSSA/OLoRA, LoRA+.

- ``lora.use_dora`` / ``lora.use_rslora`` / ``lora.init`` go to PEFT's ``LoraConfig``
  (``init_lora_weights``; ``default`` is PEFT's ``True``) or to Unsloth's
  ``get_peft_model``, which takes the same three.
- PiSSA and OLoRA (``init_mutates_base``) put the top of each base weight W into A and
  B and train on the residual W - s·B·A, so the trained A, B mean nothing next to the
  original base. ``save_initial`` keeps the adapter as initialised (in the checkpoint
  folder) and ``save_adapter`` hands it to PEFT's ``save_pretrained(...,
  path_initial_model_for_weight_conversion=...)``, which writes ΔW = s(B·A - B₀·A₀) as
  a plain LoRA of rank 2r for the original base: evaluate (base + adapter), export
  (merge) and the svd stage read it like any other adapter. The price is a saved
  adapter twice the trained size.
- ``optim.loraplus_lr_ratio`` (LoRA+): the Trainer's optimizer is built by PEFT's
  ``create_loraplus_optimizer`` (B's learning rate = ratio x A's) from the optimizer
  class and arguments the Trainer itself would use for ``optim``. It is a
  ``create_optimizer`` override rather than ``optimizers=(...)``, so the Trainer still
  creates it after wrapping the model (FSDP refuses a ready-made optimizer) and
  restores its state on resume like its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.train import init_mutates_base
from tunelab.errors import TunelabError

INITIAL = "initial_adapter"  # under the checkpoint folder
INIT_NAMES = {"gaussian": "Gaussian init", "orthogonal": "orthogonal init", "olora": "OLoRA"}


def lora_kwargs(lora: Any) -> dict[str, Any]:
    """The variant's arguments for PEFT's LoraConfig and Unsloth's get_peft_model."""
    return {
        "use_dora": lora.use_dora,
        "use_rslora": lora.use_rslora,
        "init_lora_weights": True if lora.init == "default" else lora.init,
    }


def variant_label(use_dora: bool, use_rslora: bool, init: str, loraplus: float | None) -> str:
    """A short name: ``LoRA``, ``DoRA``, ``PiSSA``, ``rsLoRA + LoRA+ x16``, ..."""
    parts = []
    if use_dora:
        parts.append("DoRA")
    if use_rslora:
        parts.append("rsLoRA")
    if init != "default":
        parts.append("PiSSA" if init.startswith("pissa") else INIT_NAMES.get(init, init))
        if init.startswith("pissa_niter_"):
            parts[-1] += f" ({init.removeprefix('pissa_niter_')} fast-SVD iterations)"
    if loraplus is not None:
        parts.append(f"LoRA+ x{loraplus:g}")
    return " + ".join(parts) or "LoRA"


def check_backend(section: str, lora: Any, backend: str, use_vllm: bool) -> None:
    """Stop, before anything loads, on a variant the resolved backend cannot run."""
    if backend != "unsloth" or not use_vllm:
        return
    # Unsloth's fast_inference hands the adapter to vLLM as a LoRA of the weights vLLM
    # loaded from disk (TRL's own vLLM path merges the adapter first, which works).
    if lora.use_dora:
        raise TunelabError(
            f"{section}.lora.use_dora",
            "vLLM serves plain LoRA adapters only (no DoRA magnitude) with "
            f"{section}.vllm.use_vllm true on the unsloth backend (use backend hf)",
        )
    if init_mutates_base(lora.init):
        raise TunelabError(
            f"{section}.lora.init",
            f"{lora.init} trains on a residual base that vLLM does not hold with "
            f"{section}.vllm.use_vllm true on the unsloth backend (use backend hf)",
        )


def save_initial(model: Any, lora: Any, ckpt: Path) -> Path | None:
    """For PiSSA / OLoRA: keep the adapter as initialised, before any training step.

    The live config then says ``init_lora_weights=True``, so that nothing re-runs the
    decomposition on the already-residual base: TRL's GRPO "ref" adapter (a copy of
    this one's config), checkpoint configs, a resumed run's adapter reload.
    """
    from tunelab.training.launch import is_main_process

    if not init_mutates_base(lora.init):
        return None
    folder = Path(ckpt) / INITIAL
    if is_main_process():
        model.save_pretrained(folder, safe_serialization=True, selected_adapters=["default"])
    for config in model.peft_config.values():
        config.init_lora_weights = True
    return folder


def save_adapter(
    model: Any, out: Path, initial: Path | None, selected_adapters: list[str] | None = None
) -> None:
    """save_pretrained; an adapter trained from PiSSA / OLoRA is converted to plain LoRA."""
    kwargs: dict[str, Any] = {"safe_serialization": True, "selected_adapters": selected_adapters}
    if initial is not None:
        kwargs["path_initial_model_for_weight_conversion"] = str(Path(initial).resolve())
    model.save_pretrained(out, **kwargs)
    # Unsloth marks fast-PiSSA adapters for its loaders; the converted one is plain LoRA.
    (Path(out) / "unsloth_lora_init.json").unlink(missing_ok=True)


def with_loraplus(trainer_cls: type, ratio: float | None) -> type:
    """``trainer_cls`` whose optimizer is PEFT's LoRA+ one (``ratio`` None: unchanged)."""
    if ratio is None:
        return trainer_cls

    class LoraPlusTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                from peft.optimizers import create_loraplus_optimizer

                target = self.model if model is None else model
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
                kwargs = dict(kwargs)
                lr = kwargs.pop("lr", self.args.learning_rate)
                self.optimizer = create_loraplus_optimizer(
                    target,
                    cls,
                    lr=lr,
                    loraplus_lr_ratio=ratio,
                    loraplus_weight_decay=self.args.weight_decay,
                    **kwargs,
                )
            return self.optimizer

    LoraPlusTrainer.__name__ = LoraPlusTrainer.__qualname__ = f"LoraPlus{trainer_cls.__name__}"
    return LoraPlusTrainer


def variant_card(model: Any, lora: Any, optim: Any, out: Path, initial: Path | None) -> dict:
    """The run card's ``lora_variant``: what was trained and what the saved adapter is."""
    import json

    saved = json.loads((Path(out) / "adapter_config.json").read_text(encoding="utf-8"))
    return {
        "label": variant_label(lora.use_dora, lora.use_rslora, lora.init, optim.loraplus_lr_ratio),
        "use_dora": lora.use_dora,
        "use_rslora": lora.use_rslora,
        "init": lora.init,
        "loraplus_lr_ratio": optim.loraplus_lr_ratio,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter_bytes": (Path(out) / "adapter_model.safetensors").stat().st_size,
        "saved_r": saved.get("r"),
        "converted_to_plain_lora": initial is not None,
    }
