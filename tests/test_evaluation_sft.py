"""Evaluation scorers and the assistant-only held-out loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.evaluation.sft import MixedTokenizer, heldout_loss, text_scores


def test_identical_outputs_score_perfectly() -> None:
    refs = ["The capital of France is Paris.", "您好，胃痛可能与胃炎有关。"]
    s = text_scores(refs, refs, "zh", exact_match=True)
    assert s == {"rougeL": 100.0, "bleu": 100.0, "chrf": 100.0, "exact_match": 100.0}


def test_wrong_outputs_score_low_and_exact_match_normalises_whitespace() -> None:
    refs = ["The capital of France is Paris.", "The opposite of hot is cold."]
    preds = ["The capital of  France is Paris. ", "Bananas are yellow."]
    s = text_scores(preds, refs, "13a", exact_match=True)
    assert s["exact_match"] == 50.0
    assert 0 < s["rougeL"] < 100 and s["bleu"] < 100


def test_chinese_rouge_is_character_level() -> None:
    assert MixedTokenizer().tokenize("胃痛 stomach ache，建议") == [
        "胃",
        "痛",
        "stomach",
        "ache",
        "建",
        "议",
    ]
    s = text_scores(["胃痛建议休息"], ["胃痛建议喝水"], "zh", exact_match=False)
    assert "exact_match" not in s
    assert s["rougeL"] == pytest.approx(100 * 4 / 6, abs=0.01)


def test_heldout_loss_counts_only_assistant_tokens(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    conv = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    changed_prompt = [
        {"role": "user", "content": "Something completely different, 12345!"},
        conv[1],
    ]
    a = heldout_loss(model, tok, [conv], batch_size=1)
    b = heldout_loss(model, tok, [changed_prompt], batch_size=1)
    assert a["val_loss"] != b["val_loss"]  # conditioning matters
    batched = heldout_loss(model, tok, [conv, changed_prompt], batch_size=2)
    single = heldout_loss(model, tok, [conv, changed_prompt], batch_size=1)
    assert batched["val_loss"] == pytest.approx(single["val_loss"], abs=1e-3)  # padding is ignored
