"""Export: merge a LoRA adapter into its base and write a plain Hugging Face model folder.

    tunelab export alpaca [--out exports/alpaca]

The base named in the adapter's run card (the model it was trained on) is
loaded in ``export.merge.dtype`` (bfloat16 by default) and the adapter is
merged into it with PEFT's ``merge_and_unload``. The merge never happens in a
4-bit base: folding LoRA deltas into NF4 weights would quantize them away, so
an adapter trained with ``load_in_4bit`` (QLoRA) gets its base reloaded in the
export dtype, and the command says so. The folder loads with
``AutoModelForCausalLM.from_pretrained`` alone (no PEFT): safetensors weights,
config, generation config, the adapter's tokenizer and chat template, and an
export_card.json naming the adapter, its hash and the base.
Simplified: text models only (a vision-language adapter is refused with a clear
error); the whole model is merged in memory, so it needs the base's size in RAM.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.config.outputs import ExportMergeParams
from tunelab.errors import TunelabError

CARD = "export_card.json"


def adapter_origin(adapter_dir: Path) -> dict[str, Any]:
    """The base an adapter was trained on and how it was loaded (run card, else adapter config)."""
    adapter_dir = Path(adapter_dir)
    card_path = adapter_dir / "run_card.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        base = card.get("base_model") or {}
        model = (card.get("params") or {}).get("model") or {}
        if base.get("name_or_path"):
            return {
                "name_or_path": base["name_or_path"],
                "revision": base.get("revision"),
                "load_in_4bit": bool(model.get("load_in_4bit", False)),
                "trust_remote_code": bool(model.get("trust_remote_code", False)),
                "source": str(card_path),
            }
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise TunelabError(str(adapter_dir), "not a LoRA adapter (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        raise TunelabError(str(config_path), "names no base model (base_model_name_or_path)")
    return {
        "name_or_path": config["base_model_name_or_path"],
        "revision": config.get("revision"),
        "load_in_4bit": False,
        "trust_remote_code": False,
        "source": str(config_path),
    }


def export_adapter(
    adapter_dir: Path, out_dir: Path, params: ExportMergeParams, log: Any = print
) -> dict[str, Any]:
    """Merge ``adapter_dir`` into its base (never 4-bit) and save a HF model to ``out_dir``."""
    from transformers import AutoConfig

    from tunelab import provenance
    from tunelab.io import atomic_dir, dump_json, sha256_path
    from tunelab.models.loading import load_adapter, load_causal_lm, load_tokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not adapter_dir.is_dir():
        raise TunelabError(str(adapter_dir), "adapter folder not found (run `dvc pull` or train)")
    origin = adapter_origin(adapter_dir)
    name, revision = origin["name_or_path"], origin["revision"]
    config = AutoConfig.from_pretrained(
        name, revision=revision, trust_remote_code=origin["trust_remote_code"]
    )
    if getattr(config, "vision_config", None) is not None:
        raise TunelabError(
            str(adapter_dir), "export of vision-language adapters is not supported yet"
        )
    if origin["load_in_4bit"]:
        log(
            f"export: {adapter_dir} was trained on a 4-bit base (QLoRA); merging into 4-bit "
            f"weights would lose the adapter, so the base {name} is reloaded in "
            f"{params.dtype} and the adapter is merged there"
        )
    start = time.perf_counter()
    base = load_causal_lm(
        name,
        revision,
        params.dtype,
        load_in_4bit=False,
        trust_remote_code=origin["trust_remote_code"],
    )
    model = load_adapter(base, adapter_dir).merge_and_unload()
    model.eval()
    tokenizer = load_tokenizer(str(adapter_dir), None, False)
    card = {
        "adapter": str(adapter_dir),
        "adapter_sha256": sha256_path(adapter_dir / "adapter_model.safetensors"),
        "base_model": {"name_or_path": name, "revision": revision},
        "base_from": origin["source"],
        "trained_in_4bit": origin["load_in_4bit"],
        "dtype": params.dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "libraries": provenance.library_versions(),
        "code": provenance.code_revision(),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=params.max_shard_size)
        tokenizer.save_pretrained(tmp)
        card["wall_seconds"] = round(time.perf_counter() - start, 2)
        dump_json(tmp / CARD, card)
    return card
