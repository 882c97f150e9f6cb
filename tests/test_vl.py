"""VL recipe: a few LoRA steps on the tiny Qwen2.5-VL, the adapter reloads, the scorers score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.car_insurance import prepare_car_insurance
from tunelab.data.common import split_records, write_prepared
from tunelab.evaluation.vl import extract_reading, normalise_digits, reading_scores
from tunelab.training.vl import lora_target_regex

from .conftest import ROOT, section

PATTERN = section("evaluate.car_insurance").answer_pattern


def test_extraction_and_normalisation() -> None:
    assert normalise_digits("012,345") == "12345"
    assert normalise_digits("000") == "0" and normalise_digits("abc") == ""
    assert extract_reading("里程数：12,345 公里", PATTERN) == "12345"
    assert extract_reading("The odometer shows 12 345 km.", PATTERN) == "12345"
    assert extract_reading("读数 7 还是 123,456？", PATTERN) == "123456"
    assert extract_reading("看不清", PATTERN) == ""


def test_reading_scores_exact_match_cer_format() -> None:
    refs = [
        "里程数：12,345 公里",
        "里程数：200,000 公里",
        "里程数：99,999 公里",
        "里程数：10,000 公里",
    ]
    outs = ["里程数：12,345 公里", "200000", "里程数：99,998 公里", ""]
    scores = reading_scores(outs, refs, PATTERN)
    # edits: 0 + 0 + 1 + 5 (all deleted) over 5 + 6 + 5 + 5 reference digits
    assert scores == {"exact_match": 50.0, "cer": round(6 / 21, 4), "format_compliance": 50.0}


def test_lora_targets_follow_the_switches(tiny_vl_base: Path) -> None:
    import re

    from transformers import AutoModelForImageTextToText

    names = [
        n for n, _ in AutoModelForImageTextToText.from_pretrained(tiny_vl_base).named_modules()
    ]

    def targets(**switches: bool) -> set[str]:
        lora = section("train.car_insurance", **{f"lora__{k}": v for k, v in switches.items()}).lora
        rx = re.compile(lora_target_regex(lora))
        return {n for n in names if rx.fullmatch(n)}

    both = targets()
    language = targets(finetune_vision_layers=False)
    vision = targets(finetune_language_layers=False)
    attn_only = targets(finetune_mlp_modules=False)
    assert language and vision and both == language | vision
    assert all("language_model" in n for n in language)
    assert all(".visual.blocks." in n for n in vision)
    assert not any("merger" in n or "lm_head" in n or "embed" in n for n in both)
    assert attn_only and not any(".mlp." in n for n in attn_only)
    with pytest.raises(ValueError, match="finetune_vision_layers or finetune_language_layers"):
        section(
            "train.car_insurance",
            lora__finetune_vision_layers=False,
            lora__finetune_language_layers=False,
        )


@pytest.mark.slow
def test_few_vl_lora_steps_then_evaluate(tiny_vl_base: Path, tmp_path: Path, monkeypatch) -> None:
    from tunelab.evaluation.vl import evaluate_vl
    from tunelab.training.vl import train_vl

    records, card = prepare_car_insurance(
        section("prepare.car_insurance", source=str(ROOT / "data/raw/car_insurance/claims.xlsx"))
    )
    records = records[:24]
    card.files = {r["images"][0]: card.files[r["images"][0]] for r in records}
    train, val = split_records(records, section("prepare.car_insurance").split)
    data = tmp_path / "prepared"
    write_prepared(data, train, val, card)
    monkeypatch.chdir(tmp_path)  # checkpoints go to ./.tunelab
    params = section(
        "train.car_insurance",
        optim__max_steps=3,
        optim__per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=2,
    )
    run = train_vl(
        "car_insurance", params, "hf", tiny_vl_base, data, tmp_path / "adapter", tmp_path / "live"
    ).card
    adapter = tmp_path / "adapter"
    assert run["train"]["global_step"] == 3 and run["backend"] == "hf"
    assert run["train"]["first_logged_loss"] > 0
    assert (adapter / "adapter_model.safetensors").is_file()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert "visual" in cfg["target_modules"] and "language_model" in cfg["target_modules"]
    # the processor's image bounds travel with the adapter (transformers 5: processor_config.json)
    saved = json.loads((adapter / "processor_config.json").read_text())["image_processor"]
    assert saved["size"] == {
        "shortest_edge": params.image.min_pixels,
        "longest_edge": params.image.max_pixels,
    }
    assert (tmp_path / "live" / "plots" / "metrics").is_dir()
    assert not (tmp_path / ".tunelab/checkpoints/train/car_insurance").exists()
    # the run card holds the values the trainer ran with, read back from its args
    used = run["trainer_args"]["used"]
    assert used["learning_rate"] == params.optim.learning_rate and used["max_steps"] == 3
    assert used["per_device_train_batch_size"] == 4 and used["lr_scheduler_type"] == "cosine"
    assert run["trainer_args"]["changed_by_libraries"] == {}

    ev = section("evaluate.car_insurance", max_samples=3, batch_size=2, decoding__max_new_tokens=6)
    metrics, rows = evaluate_vl(ev, tiny_vl_base, adapter, data)
    assert metrics["samples"] == len(rows) == min(3, len(val))
    for name in ("base", "tuned"):
        assert set(metrics[name]) == {"exact_match", "cer", "format_compliance"}
    assert rows[0]["reading"] and rows[0]["image"].startswith("images/")


UNSLOTH_PATCHED_BOUNDS = """
import sys, types
import unsloth  # noqa: F401  (unsloth_zoo refuses to import without it)
from unsloth_zoo.temporary_patches.misc import patch_qwen2vl_image_processor_pixel_attrs
from transformers import Qwen2VLImageProcessor
from tunelab.config.base import PixelBoundsParams
from tunelab.training.vl import set_image_bounds

patch_qwen2vl_image_processor_pixel_attrs()  # what importing unsloth does on a GPU
assert isinstance(Qwen2VLImageProcessor.__dict__["min_pixels"], property)
ip = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12544)
set_image_bounds(types.SimpleNamespace(image_processor=ip), PixelBoundsParams(min_pixels=4000, max_pixels=9000))
print(ip.size["shortest_edge"], ip.size["longest_edge"], ip.min_pixels, ip.max_pixels)
"""


def test_image_bounds_under_unsloth_zoos_read_only_properties(tmp_path: Path) -> None:
    """On a GPU, importing Unsloth makes min_pixels / max_pixels read-only properties.

    The patch is unsloth_zoo's own function, applied here by hand because the CPU backend
    of Unsloth does not apply it (a fresh process: it changes the class for good).
    """
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed")
    res = subprocess.run(
        [sys.executable, "-c", UNSLOTH_PATCHED_BOUNDS],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-4:] == ["4000", "9000", "4000", "9000"]
