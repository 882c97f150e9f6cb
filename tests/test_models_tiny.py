"""The tiny base model loads like a hub checkpoint; its tokenizer round-trips ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from tunelab.errors import TunelabError
from tunelab.models.chat import CHATML_TEMPLATE, ensure_generation_template
from tunelab.models.loading import check_safetensors, load_causal_lm, resolve_base

TEXTS = [
    "The capital of France is Paris. 12,345 + 67 = 12412",
    "您好，胃痛可能与胃炎或饮食不规律有关。建议清淡饮食。",
    "根据《民法典》第一千零七十九条的规定 𠮷 ☃ tabs\tand\nnewlines  ",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def test_token_ids_round_trip_through_autotokenizer(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    raw = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
    digits = tok("12345", add_special_tokens=False)["input_ids"]
    assert len(digits) == 5  # Qwen's split: one token per digit


def test_model_loads_as_qwen2_and_generates(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.model_type == "qwen2"
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3
    # pretraining made the corpus predictable: loss far below a uniform guess (ln vocab)
    with torch.no_grad():
        loss = model(
            **tok("The capital of France is Paris.", return_tensors="pt"),
            labels=tok("The capital of France is Paris.", return_tensors="pt")["input_ids"],
        ).loss
    assert loss.item() < 0.5 * torch.log(torch.tensor(float(len(tok)))).item()


def test_chat_template_marks_assistant_tokens(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "the answer"},
    ]
    enc = tok.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(marked) == "the answer<|im_end|>"


def test_non_marked_chatml_template_is_replaced_and_foreign_one_refused() -> None:
    class Tok:
        chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"

    tok = Tok()
    assert ensure_generation_template(tok, "x") is True
    assert tok.chat_template == CHATML_TEMPLATE
    assert ensure_generation_template(tok, "x") is False
    tok.chat_template = "{% for m in messages %}[INST]{{ m.content }}{% endfor %}"
    with pytest.raises(TunelabError, match="not ChatML"):
        ensure_generation_template(tok, "x")


def test_pickle_only_checkpoints_are_refused(tmp_path: Path, tiny_base: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_base / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(TunelabError, match="only pickle weights"):
        check_safetensors(tmp_path)
    with pytest.raises(TunelabError, match="tunelab loads safetensors only"):
        load_causal_lm(str(tmp_path), None, "float32", False, False)


def test_missing_base_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="no base model here"):
        resolve_base(tmp_path / "nowhere")
