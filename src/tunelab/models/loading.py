"""Loading base models, tokenizers and adapters: hub id or local path, safely.

Only safetensors weights are loaded (``use_safetensors=True``) and remote code
runs only when params set ``trust_remote_code``. The base stage writes either a
built model (smoke) or a ``base.json`` reference to a hub id / local path
(gpu); ``resolve_base`` turns both into what ``from_pretrained`` takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

REF_FILE = "base.json"


def resolve_base(base_dir: Path) -> tuple[str, str | None]:
    """Return (name_or_path, revision) for the model the base stage produced."""
    base_dir = Path(base_dir)
    ref = base_dir / REF_FILE
    if ref.is_file():
        data = json.loads(ref.read_text(encoding="utf-8"))
        return data["name_or_path"], data.get("revision")
    if not (base_dir / "config.json").is_file():
        raise TunelabError(
            str(base_dir),
            "no base model here (no config.json or base.json): run `dvc repro base@text` first",
        )
    return str(base_dir), None


def check_safetensors(model_dir: Path) -> None:
    """Refuse a local checkpoint that has pickle weights but no safetensors."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) enforces it
    if not list(model_dir.glob("*.safetensors")):
        pickles = [p.name for p in model_dir.glob("*.bin")] + [
            p.name for p in model_dir.glob("*.pt")
        ]
        what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
        raise TunelabError(str(model_dir), f"{what}: tunelab loads safetensors only")


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise TunelabError(
            name_or_path, f"cannot load the tokenizer ({str(err).splitlines()[0]})"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name_or_path: str,
    revision: str | None,
    dtype: str,
    load_in_4bit: bool,
    trust_remote_code: bool,
    device_map: Any = None,
) -> Any:
    """AutoModelForCausalLM from a hub id or local path; 4-bit NF4 through bitsandbytes."""
    from transformers import AutoModelForCausalLM

    check_safetensors(Path(name_or_path))
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
        )
        kwargs["device_map"] = device_map or _default_device()
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise TunelabError(
            name_or_path, f"cannot load the model ({str(err).splitlines()[0]})"
        ) from None


def _default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_adapter(adapter_dir: Path) -> None:
    """Refuse a folder that is not a readable LoRA adapter (safetensors only)."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise TunelabError(
            str(adapter_dir),
            "not a LoRA adapter (adapter_config.json and adapter_model.safetensors expected)",
        )
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            list(fh.keys())
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise TunelabError(str(weights), f"corrupt adapter weights ({err})") from None


def load_adapter(model: Any, adapter_dir: Path, is_trainable: bool = False) -> Any:
    """Attach a saved LoRA adapter (safetensors only) to a loaded base model."""
    from peft import PeftModel

    check_adapter(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
