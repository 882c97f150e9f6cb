"""Continual pretraining: domain text checks, one training step, SFT from its adapter, DVC graph."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.data.domain_text import prepare_domain_text, read_documents
from tunelab.errors import TunelabError
from tunelab.samples.facts import MEDICAL, medical_answer

from .conftest import GIT, ROOT, section, sh

_DEPT, _SYMPTOM, _CAUSE, _ADVICE = MEDICAL[0]  # the stomach ache
HELD_OUT_ANSWER = medical_answer(_CAUSE, _SYMPTOM, _ADVICE)


def _sft_val(path: Path) -> Path:
    record = {
        "messages": [
            {"role": "system", "content": "你是医生。"},
            {"role": "user", "content": "医生您好，我最近总是胃痛，请问该怎么办？"},
            {"role": "assistant", "content": HELD_OUT_ANSWER},
        ]
    }
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def test_every_drop_reason_is_counted(tmp_path: Path) -> None:
    docs = [f"第{i}篇：胃痛的常见原因是胃炎。" for i in range(10)]
    rows = [{"text": d} for d in docs]
    rows += [
        {"text": "  "},  # empty
        {"text": docs[0]},  # duplicate
        {"text": "长" * 3000},  # too_long
        {"text": f"门诊记录：医生回复“{HELD_OUT_ANSWER}”"},  # quotes the SFT held-out answer
        {"text": "患者问：医生您好，我最近总是胃痛，请问该怎么办？"},  # quotes the question
    ]
    src = tmp_path / "domain.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    params = section("pretrain.medical", data__source=str(src)).data
    train, val, card = prepare_domain_text("medical", params, _sft_val(tmp_path / "val.jsonl"))
    assert card["rows_dropped"] == {"duplicate": 1, "empty": 1, "in_sft_heldout": 2, "too_long": 1}
    assert card["rows_read"] == 15 and card["rows_kept"] == 10 == len(train) + len(val)
    assert val and not {r["text"] for r in train} & {r["text"] for r in val}
    assert card["sft_heldout_guard"]["texts"] == 2


def test_the_shipped_smoke_text_is_kept_apart_from_the_sft_heldout_set(tmp_path: Path) -> None:
    src = ROOT / "data/raw/pretrain/medical/domain.jsonl"
    params = section("pretrain.medical", data__source=str(src)).data
    _, _, card = prepare_domain_text("medical", params, _sft_val(tmp_path / "val.jsonl"))
    assert card["rows_dropped"]["in_sft_heldout"] == 1  # the quote of the stomach-ache answer
    assert set(card["rows_dropped"]) == {"empty", "duplicate", "too_long", "in_sft_heldout"}


def test_text_files_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("第一篇。\n还是第一篇。\n\n第二篇。\n", encoding="utf-8")
    assert read_documents(tmp_path / "a.txt", "text") == ["第一篇。\n还是第一篇。", "第二篇。\n"]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(TunelabError, match=r"b.jsonl line 2: expected an object with 'text'"):
        read_documents(bad, "text")
    with pytest.raises(TunelabError, match="not found"):
        prepare_domain_text(
            "medical",
            section("pretrain.medical", data__source=str(tmp_path / "nope")).data,
            _sft_val(tmp_path / "val.jsonl"),
        )


@pytest.fixture(scope="module")
def pretrained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two steps of the real pretrain code on the shipped medical text (tied tiny base)."""
    from tunelab.data.domain_text import write_domain_text
    from tunelab.evaluation.sft import text_loss
    from tunelab.training.pretrain import train_pretrain

    work = tmp_path_factory.mktemp("pretrain")
    params = section(
        "pretrain.medical",
        backend="hf",
        data__source=str(ROOT / "data/raw/pretrain/medical"),
        optim__max_steps=2,
        optim__lr_scheduler_type="constant",
        optim__warmup_ratio=0.0,
        logging_steps=1,
        save_steps=100,
    )
    train, val, card = prepare_domain_text("medical", params.data, _sft_val(work / "val.jsonl"))
    write_domain_text(work / "data", train, val, card)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        trained = train_pretrain(
            "medical", params, "hf", tiny_base, work / "data", work / "adapter", work / "live"
        )
        run_card, model, tok = trained.card, trained.model, trained.processor
    finally:
        os.chdir(cwd)
    model.eval()
    texts = [r["text"] for r in val]
    with model.disable_adapter():
        disabled = text_loss(model, tok, texts, 128, 8)
    tuned = text_loss(model, tok, texts, 128, 8)
    return work / "adapter", {
        "card": run_card,
        "disabled": disabled,
        "tuned": tuned,
        "texts": texts,
    }


def test_one_pretraining_step_trains_lora_and_embeddings_at_their_rates(
    pretrained: tuple[Path, dict], tiny_base: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluation.sft import text_loss

    adapter, out = pretrained
    train = out["card"]["train"]
    assert train["global_step"] == 2 and train["modules_to_save"] == ["embed_tokens", "lm_head"]
    assert train["learning_rates"] == [0.003, 0.01]  # embeddings below the LoRA rate
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    emb = next(w for k, w in weights.items() if "embed_tokens" in k)
    assert emb.shape == base.get_input_embeddings().weight.shape
    assert not torch.equal(emb, base.get_input_embeddings().weight)  # the copy trained
    # The base perplexity is the base model's: adapter and embedding copies switched off.
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert text_loss(base, tok, out["texts"], 128, 8) == out["disabled"]
    assert out["tuned"] != out["disabled"]


def test_sft_continues_the_pretrained_adapter(
    pretrained: tuple[Path, dict], tiny_base: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from tunelab.data.alpaca import prepare_alpaca
    from tunelab.data.common import split_records, write_prepared
    from tunelab.training.sft import train_sft

    adapter, _ = pretrained
    prep = section("prepare.alpaca", source=str(ROOT / "data/raw/alpaca/sample.json"))
    records, card = prepare_alpaca(prep)
    train, val = split_records(records, prep.split)
    write_prepared(tmp_path / "data", train[:16], val[:4], card)
    params = section(
        "train.alpaca",
        backend="hf",
        optim__max_steps=1,
        optim__lr_scheduler_type="constant",
        optim__warmup_ratio=0.0,
        logging_steps=1,
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run = train_sft(
            "alpaca",
            params,
            "hf",
            tiny_base,
            tmp_path / "data",
            tmp_path / "sft",
            tmp_path / "live",
            init_adapter=adapter,
        ).card
        with pytest.raises(TunelabError, match=r"train.alpaca.lora.r: 8, but the starting"):
            train_sft(
                "alpaca",
                section("train.alpaca", lora__r=8),
                "hf",
                tiny_base,
                tmp_path / "data",
                tmp_path / "x",
                tmp_path / "live2",
                init_adapter=adapter,
            )
    finally:
        os.chdir(cwd)
    assert run["init_adapter"] == {
        "path": str(adapter),
        "frozen_modules": ["embed_tokens", "lm_head"],
    }
    assert run["inputs"]["init"]["sha256"]
    before, after = (
        load_file(str(d / "adapter_model.safetensors")) for d in (adapter, tmp_path / "sft")
    )
    assert before.keys() == after.keys()
    # the embedding copies stay as pretraining left them; the LoRA matrices move on
    # (PEFT saves a modules_to_save copy under the module's own name, e.g.
    # base_model.model.model.embed_tokens.weight, without "modules_to_save.default")
    saved = [k for k in before if "lora_" not in k]
    assert {k.rsplit(".", 2)[-2] for k in saved} >= {"embed_tokens"}, sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in saved)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)


def test_dvc_lists_the_pretrain_adapter_only_when_train_starts_from_it(tmp_path: Path) -> None:
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    sh(["git", "init", "-q"], tmp_path)
    sh(["dvc", "init", "-q"], tmp_path)
    sh([*GIT, "commit", "-qm", "init"], tmp_path)

    def upstream() -> str:
        return sh(["dvc", "dag", "--md", "train@medical"], tmp_path).stdout

    assert "pretrain@medical" not in upstream()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["medical"]["init_from"] = "adapters/pretrain_medical"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    assert "pretrain@medical" in upstream()
    assert "pretrain@legal" not in upstream()


def test_saved_module_copies_get_their_original_dtype_back(tiny_base: Path) -> None:
    """On a 4-bit base TRL leaves the modules_to_save copies in bf16 beside fp32 originals;
    the held-out pass after pretraining needs them in the original dtype again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.training.pretrain import match_saved_module_dtypes

    config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), config)
    copies = [p for n, p in model.named_parameters() if ".modules_to_save." in n]
    assert copies
    for p in copies:
        p.data = p.data.to(torch.bfloat16)  # as the trainer leaves them
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), pytest.raises(RuntimeError, match="dtype"):
        model(input_ids=ids)
    match_saved_module_dtypes(model)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lm_head" in n)
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype == torch.float32
