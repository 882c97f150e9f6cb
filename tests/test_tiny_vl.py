"""The tiny Qwen2.5-VL: built offline, saved, reloaded through the Auto classes like a hub model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tunelab.models.tiny_vl import VL_CHAT_TEMPLATE, digit_token_ids
from tunelab.samples.odometer import render_odometer

from .conftest import section


@pytest.fixture(scope="module")
def saved(tiny_vl_base: Path) -> Path:
    return tiny_vl_base


def test_auto_classes_round_trip(saved: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(saved, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(saved)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    params = section("base.vision")
    ip = processor.image_processor
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (
        params.image.min_pixels,
        params.image.max_pixels,
    )
    assert model.config.text_config.rope_parameters["mrope_section"] == params.mrope_section
    assert model.config.vision_config.depth == params.vision_tower.depth
    assert processor.chat_template == VL_CHAT_TEMPLATE
    assert (saved / "model.safetensors").is_file()


def test_image_tokens_and_generation(saved: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(saved).eval()
    processor = AutoProcessor.from_pretrained(saved)
    image = render_odometer(123_456, random.Random(0))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "读数？"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>读数？<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    enc = processor(text=[text], images=[image], return_tensors="pt")
    # 224x84 pixels -> 6x16 patches of 14 -> 3x8 merged image tokens
    assert enc["image_grid_thw"].tolist() == [[1, 6, 16]]
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 24
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    # digits are single tokens (Qwen's split), which the tiny reader relies on
    assert len(set(digit_token_ids(processor.tokenizer))) == 10
    ids = processor.tokenizer.encode("里程数：123,456 公里", add_special_tokens=False)
    assert processor.tokenizer.decode(ids) == "里程数：123,456 公里"


def test_assistant_mask_from_the_template(saved: Path) -> None:
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(saved).tokenizer
    conv = [
        {"role": "user", "content": [{"type": "text", "text": "读数？"}]},
        {"role": "assistant", "content": "里程数：1 公里"},
    ]
    enc = tok.apply_chat_template(
        conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "里程数：1 公里<|im_end|>"


def test_vision_params_validate() -> None:
    with pytest.raises(ValueError, match="mrope_section must sum"):
        section("base.vision", mrope_section=[1, 1, 1])
    with pytest.raises(ValueError, match="min_pixels must not exceed"):
        section("base.vision", image__min_pixels=10**6)
