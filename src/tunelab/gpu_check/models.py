"""Random-weight base models of the real shapes (Qwen2.5-7B-Instruct, Qwen2.5-VL-3B-Instruct)
with the project's own tokenizer and processor; tiny ones of the same architectures for
--tiny. Random weights are right for "does it run, how fast, how much memory", not for
quality."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.gpu_check.workdir import CHECK

# Qwen2.5-7B-Instruct and Qwen2.5-VL-3B-Instruct, from their published config.json files.
QWEN25_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
}
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
}
QWEN25_VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
}
TINY_VL_TEXT = {**TINY_TEXT, "tie_word_embeddings": True, "mrope_section": [2, 3, 3]}
TINY_VL_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
}


BUILD = r"""
import json, sys
from pathlib import Path
from tunelab.gpu_check.models import build_models
print(json.dumps(build_models(Path(sys.argv[1]), sys.argv[2] == "tiny")))
"""


def save_model(model: Any, folder: Path, eos: list[int], pad: int) -> dict[str, Any]:
    """Save with a greedy generation config; what was saved, and how long it took."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    start = time.perf_counter()
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="5GB")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "save_seconds": round(time.perf_counter() - start, 1),
        "files_gib": round(sum(f.stat().st_size for f in folder.glob("*")) / 2**30, 2),
    }


def build_text(out: Path, lines: list[str], tiny: bool, device: str) -> dict[str, Any]:
    """Qwen2ForCausalLM of the Qwen2.5-7B shape (or tiny) with tunelab's tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tunelab.config import load_section
    from tunelab.models.chat import END_OF_TEXT, IM_END
    from tunelab.models.tiny import train_tokenizer

    tok_params = load_section("base.text").tokenizer
    tok = train_tokenizer(lines, tok_params.vocab_size, tok_params.min_frequency)
    ids = tok.convert_tokens_to_ids
    shape = dict(TINY_TEXT if tiny else QWEN25_7B)
    theta = shape.pop("rope_theta")
    config = Qwen2Config(
        **shape,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=None,
        eos_token_id=ids(IM_END),
        pad_token_id=ids(END_OF_TEXT),
        dtype="bfloat16",
    )
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    folder = out / "text"
    tok.save_pretrained(folder)
    made = save_model(model, folder, [ids(IM_END), ids(END_OF_TEXT)], ids(END_OF_TEXT))
    return made | {"vocab": len(tok)}


def build_vision(out: Path, lines: list[str], tiny: bool, device: str) -> dict[str, Any]:
    """Qwen2_5_VLForConditionalGeneration of the Qwen2.5-VL-3B shape (or tiny) with the
    stock processor; the image, video and vision start/end ids are the processor's."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tunelab.config import load_section
    from tunelab.models.chat import END_OF_TEXT, IM_END
    from tunelab.models.tiny_vl import (
        IMAGE_PAD,
        VIDEO_PAD,
        VISION_END,
        VISION_START,
        build_processor,
        build_tokenizer,
    )

    tok_params = load_section("base.vision").tokenizer
    vtok = build_tokenizer(lines, tok_params.vocab_size, tok_params.min_frequency)
    bounds = load_section("train.car_insurance").image
    processor = build_processor(vtok, bounds.min_pixels, bounds.max_pixels)
    vids = vtok.convert_tokens_to_ids
    text_shape = dict(TINY_VL_TEXT if tiny else QWEN25_VL_3B_TEXT)
    theta, mrope = text_shape.pop("rope_theta"), text_shape.pop("mrope_section")
    rope = {"rope_type": "default", "rope_theta": theta, "mrope_section": mrope}
    vconfig = Qwen2_5_VLConfig(
        text_config={
            **text_shape,
            "rope_parameters": rope,
            "bos_token_id": None,
            "eos_token_id": vids(IM_END),
            "pad_token_id": vids(END_OF_TEXT),
        },
        vision_config=dict(TINY_VL_VISION if tiny else QWEN25_VL_3B_VISION),
        image_token_id=vids(IMAGE_PAD),
        video_token_id=vids(VIDEO_PAD),
        vision_start_token_id=vids(VISION_START),
        vision_end_token_id=vids(VISION_END),
        tie_word_embeddings=text_shape["tie_word_embeddings"],
        dtype="bfloat16",
    )
    with torch.device(device):
        vmodel = Qwen2_5_VLForConditionalGeneration(vconfig).to(torch.bfloat16)
    folder = out / "vision"
    processor.save_pretrained(folder)
    made = save_model(vmodel, folder, [vids(IM_END), vids(END_OF_TEXT)], vids(END_OF_TEXT))
    # The processor and the model must agree on the special tokens.
    for name, token in (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD)):
        assert getattr(vconfig, name) == vids(token) == getattr(processor, name, vids(token))
    return made | {"image_token_id": vconfig.image_token_id, "vocab": len(vtok)}


def build_models(out: Path, tiny: bool) -> dict[str, Any]:
    """Random-weight Qwen2.5-7B-Instruct / Qwen2.5-VL-3B-Instruct shapes with tunelab's
    tokenizer (base.text.tokenizer on base.text.corpus) and Qwen2.5-VL processor."""
    import torch

    from tunelab.config import load_section

    device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    corpus = Path(load_section("base.text").corpus)
    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln]
    torch.manual_seed(0)
    made = {"text": build_text(out, lines, tiny, device)}
    made["vision"] = build_vision(out, lines, tiny, device)
    return made


def base_models(folder: Path, workdir: Path, env: dict[str, str], tiny: bool) -> dict[str, Any]:
    """Build the bases into ``folder`` (or reuse them: same script, corpus, tokenizer
    params and size), linked into the work dir where the overlay points."""
    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())  # this module's code builds them
    key.update((workdir / "data/raw/corpus/corpus.txt").read_bytes())
    key.update(b"tiny" if tiny else b"real")
    marker = folder / "made.json"
    t = time.perf_counter()
    made = json.loads(marker.read_text()) if marker.is_file() else {}
    if made.get("key") != key.hexdigest():
        shutil.rmtree(folder, ignore_errors=True)
        res = subprocess.run(
            [sys.executable, "-c", BUILD, str(folder), "tiny" if tiny else "real"],
            cwd=workdir,  # its params.yaml (both profiles applied) and its copy of this script
            env=env,
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise SystemExit(f"error: building the base models failed:\n{res.stderr[-3000:]}")
        made = json.loads(res.stdout.strip().splitlines()[-1]) | {"key": key.hexdigest()}
        made["build_seconds"] = round(time.perf_counter() - t, 1)
        marker.write_text(json.dumps(made))
        made["reused"] = False
    else:
        made["reused"] = True
    (workdir / CHECK / "models").symlink_to(folder, target_is_directory=True)
    return made | {"seconds": round(time.perf_counter() - t, 1)}
