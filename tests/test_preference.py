"""Preference pairs, DPO and ORPO on the tiny model, and the preference scores."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from tunelab.data.common import split_records, write_prepared
from tunelab.data.preference import prepare_preference
from tunelab.errors import TunelabError

from .conftest import ROOT, section


def test_prepare_counts_every_drop_reason() -> None:
    params = section("prepare.preference", source=str(ROOT / "data/raw/preference/pairs.jsonl"))
    records, card = prepare_preference(params)
    assert card.dropped == Counter({"empty": 1, "identical": 1, "too_long": 1, "duplicate": 1})
    assert card.rows_read == len(records) + 4
    r = records[0]
    assert r["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert r["rejected"] and r["rejected"] != r["messages"][-1]["content"]
    kinds = {("The " in r["rejected"]) for r in records}
    assert kinds == {True, False}  # wrong facts and off-format answers both present


def test_prepare_names_file_and_row_of_a_malformed_pair(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TunelabError, match=r"pairs.jsonl line 2: 'chosen' must be a string"):
        prepare_preference(section("prepare.preference", source=str(path)))
    path.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(TunelabError, match=r"line 1: missing key 'rejected'"):
        prepare_preference(section("prepare.preference", source=str(path)))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = section("prepare.preference", source=str(ROOT / "data/raw/preference/pairs.jsonl"))
    records, card = prepare_preference(params)
    train, val = split_records(records, params.split)
    out = tmp_path_factory.mktemp("prepared") / "preference"
    write_prepared(out, train[:32], val[:8], card)
    return out


def _train(method: str, tiny_base: Path, pairs: Path, work: Path, **updates: object) -> dict:
    from tunelab.training.preference import train_preference

    params = section(
        f"train_pref.{method}",
        backend="hf",
        optim__max_steps=1,
        optim__per_device_train_batch_size=4,
        optim__lr_scheduler_type="constant",  # no warm-up: the one step moves the adapter
        optim__warmup_ratio=0.0,
        logging_steps=1,
        **updates,
    )
    cwd = os.getcwd()
    os.chdir(work)  # checkpoints go to ./.tunelab
    try:
        return train_preference(
            method, params, "hf", tiny_base, pairs, work / "adapter", work / "live"
        ).card
    finally:
        os.chdir(cwd)


def test_dpo_reference_is_the_base_with_the_adapter_disabled(tiny_base: Path, pairs: Path) -> None:
    """No second copy of the weights: no ref_model, no "ref" adapter; the reference
    log-probabilities are the base model's, before and after a training step."""
    from transformers import AutoModelForCausalLM

    from tunelab.io import read_jsonl
    from tunelab.training.preference import load_model, preference_config, trainer_kwargs

    params = section(
        "train_pref.dpo",
        backend="hf",
        optim__max_steps=1,
        optim__lr_scheduler_type="constant",
        optim__warmup_ratio=0.0,
        logging_steps=1,
    )
    model, tokenizer, peft_config = load_model(params, "hf", str(tiny_base), None)
    assert peft_config is not None  # TRL wraps the base itself
    records = read_jsonl(pairs / "train.jsonl")[:8]
    trainer_cls, kwargs = trainer_kwargs(params, model, tokenizer, peft_config, records)
    trainer = trainer_cls(args=preference_config(params, pairs.parent / "dpo-ckpt"), **kwargs)
    peft_model = trainer.model
    assert trainer.ref_model is None
    assert list(peft_model.peft_config) == ["default"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    n_base = sum(p.numel() for p in base.parameters())
    n_frozen = sum(p.numel() for p in peft_model.parameters() if not p.requires_grad)
    assert n_frozen == n_base  # the base's weights, once
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        expected = base(ids).logits
    trainer.train()
    peft_model.eval()
    with torch.no_grad(), peft_model.disable_adapter():
        ref = peft_model(input_ids=ids).logits
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
    assert torch.allclose(ref, expected, atol=1e-5)
    assert not torch.allclose(tuned, expected, atol=1e-6)  # the step moved the adapter


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_one_training_step_writes_adapter_and_run_card(
    method: str, tiny_base: Path, pairs: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    card = _train(method, tiny_base, pairs, tmp_path)
    assert card["method"] == method and card["train"]["global_step"] == 1
    assert card["params_section"] == f"train_pref.{method}"
    weights = load_file(str(tmp_path / "adapter/adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at 0: it trained
    assert not any(".ref." in k for k in weights)
    logged = card["train"]["curves"]
    assert "loss" in logged
    if method == "dpo":
        assert "rewards/accuracies" in logged and card["reference"].startswith("the base")
    else:
        assert card["reference"] == "none (ORPO)"
    assert (tmp_path / "live/metrics.json").is_file()
    assert not (tmp_path / ".tunelab/checkpoints/train_pref" / method).exists()


def test_orpo_refuses_a_dpo_loss_type() -> None:
    with pytest.raises(Exception, match="ORPO has a single loss"):
        section("train_pref.orpo", loss_type="ipo")


def test_assistant_logps_and_preference_scores(tiny_base: Path, pairs: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluation.preference import preference_scores
    from tunelab.evaluation.sft import assistant_logps
    from tunelab.io import read_jsonl

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    records = read_jsonl(pairs / "val.jsonl")
    conv = records[0]["messages"]
    (logp, n), *_ = assistant_logps(model, tok, [conv, records[1]["messages"]], batch_size=2)
    enc = tok.apply_chat_template(
        conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logprobs = model(ids).logits.log_softmax(-1)[0, :-1]
    mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
    manual = logprobs.gather(1, ids[0, 1:, None])[:, 0][mask].sum().item()
    assert n == int(mask.sum()) > 0
    assert logp == pytest.approx(manual, abs=1e-4)  # padding in the batch changes nothing

    scores = preference_scores(model, tok, records, batch_size=4)
    swapped = [
        {
            **r,
            "messages": [*r["messages"][:-1], {"role": "assistant", "content": r["rejected"]}],
            "rejected": r["messages"][-1]["content"],
        }
        for r in records
    ]
    flipped = preference_scores(model, tok, swapped, batch_size=4)
    assert flipped["logp_margin"] == pytest.approx(-scores["logp_margin"], abs=1e-3)
    assert flipped["pref_accuracy"] == pytest.approx(100 - scores["pref_accuracy"])
