"""SFT training on the tiny model: both backends, adapter reload and merge."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.data.alpaca import prepare_alpaca
from tunelab.data.common import split_records, write_prepared
from tunelab.training.sft import train_sft

from .conftest import ROOT, run_module, section


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = section("prepare.alpaca", source=str(ROOT / "data/raw/alpaca/sample.json"))
    records, card = prepare_alpaca(params)
    train, val = split_records(records, params.split)
    out = tmp_path_factory.mktemp("prepared") / "alpaca"
    write_prepared(out, train, val[:8], card)
    return out


@pytest.fixture(scope="module")
def hf_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prepared: Path) -> Path:
    work = tmp_path_factory.mktemp("train")
    cwd = os.getcwd()
    os.chdir(work)  # checkpoints go to ./.tunelab
    try:
        params = section(
            "train.alpaca", optim__max_steps=8, logging_steps=2, save_steps=4, backend="hf"
        )
        train_sft("alpaca", params, "hf", tiny_base, prepared, work / "adapter", work / "live")
    finally:
        os.chdir(cwd)
    return work / "adapter"


def test_hf_backend_writes_adapter_tokenizer_run_card_and_curves(hf_adapter: Path) -> None:
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "run_card.json",
    ):
        assert (hf_adapter / name).is_file(), name
    card = json.loads((hf_adapter / "run_card.json").read_text())
    assert card["backend"] == "hf" and card["seed"] == 42
    assert card["train"]["global_step"] == 8
    assert card["inputs"]["train"]["sha256"] and card["libraries"]["trl"]
    assert card["hardware"]["cpu_count"] and card["wall_seconds"] > 0
    assert card["params"]["lora"]["r"] == 16
    loss_tsv = hf_adapter.parent / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    assert (
        loss_tsv.is_file()
        or (hf_adapter.parent / "live" / "plots" / "metrics" / "loss.tsv").is_file()
    )
    assert not (hf_adapter.parent / ".tunelab" / "checkpoints" / "train" / "alpaca").exists()
    assert not any(p.name.startswith(".adapter.tmp") for p in hf_adapter.parent.iterdir())


def test_adapter_reloads_with_peft_and_merges(hf_adapter: Path, tiny_base: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, hf_adapter).eval()
    with torch.no_grad():
        tuned = model(ids).logits
    assert not torch.allclose(tuned, base_logits, atol=1e-4)  # the adapter changes the model
    merged = model.merge_and_unload()
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, tuned, atol=1e-4, rtol=1e-4)


def test_training_is_seeded(
    tiny_base: Path,
    prepared: Path,
    hf_adapter: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    params = section(
        "train.alpaca", optim__max_steps=8, logging_steps=2, save_steps=4, backend="hf"
    )
    train_sft("alpaca", params, "hf", tiny_base, prepared, tmp_path / "adapter", tmp_path / "live")
    a = load_file(hf_adapter / "adapter_model.safetensors")
    b = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_unsloth_backend_trains_through_the_stage(
    tmp_path: Path, tiny_base: Path, prepared: Path
) -> None:
    """The train stage with backend: unsloth (Unsloth's CPU fallback: STACK.md)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["alpaca"]["backend"] = "unsloth"
    params["train"]["alpaca"]["optim"]["max_steps"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "models/base").mkdir(parents=True)
    shutil.copytree(tiny_base, tmp_path / "models/base/text")
    (tmp_path / "data/prepared").mkdir(parents=True)
    shutil.copytree(prepared, tmp_path / "data/prepared/alpaca")
    res = run_module(
        ["stages.train", "alpaca"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "UNSLOTH_DISABLE_STATISTICS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "backend unsloth, 3 steps" in res.stdout
    card = json.loads((tmp_path / "adapters/alpaca/run_card.json").read_text())
    assert card["backend"] == "unsloth" and card["libraries"]["unsloth"]
    assert (tmp_path / "adapters/alpaca/adapter_model.safetensors").is_file()


def test_auto_checkpointing_plans_memory_then_trains(
    tiny_base: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gradient_checkpointing auto on the CPU: the plan's choice is trained and carded."""
    from transformers import TrainerCallback

    from tunelab.training import memory_estimate as me
    from tunelab.training import memory_plan as mp

    monkeypatch.chdir(tmp_path)
    seen: list[bool] = []

    class Checkpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            seen.append(bool(model.is_gradient_checkpointing))

    short = {"optim__max_steps": 2, "logging_steps": 1, "save_steps": 100, "backend": "hf"}
    params = section("train.alpaca", model__gradient_checkpointing="auto", **short)

    def train(params, name: str) -> dict:  # noqa: ANN001
        out, live = tmp_path / name / "adapter", tmp_path / name / "live"
        return train_sft(
            "alpaca", params, "hf", tiny_base, prepared, out, live, [Checkpointing()]
        ).card

    card = train(params, "a")
    plan = card["memory_plan"]
    assert plan["requested"] == "auto" and plan["budget_source"] == "system RAM"
    assert plan["chosen"] == "none" and plan["fits"] and not plan["split"]  # the tiny model
    assert set(plan["estimates_gib"]) == {"none", "gpu"} and plan["measured_peak_gib"] is None
    assert plan["tokens_per_micro_batch"] == 8 * params.data.max_length
    assert card["params"]["model"]["gradient_checkpointing"] is False and seen == [False]

    # a budget with room for checkpoints on the GPU at half the micro-batch only
    setup = me.Setup(
        mp.read_dims(str(tiny_base), None, False),
        "hf",
        False,
        params.model.dtype,
        params.lora.r,
        tuple(params.lora.target_modules),
        params.optim.optim,
    )
    row = params.data.max_length
    low, high = me.estimate_gib(setup, 4 * row, "gpu"), me.estimate_gib(setup, 4 * row, "none")
    high = min(high, me.estimate_gib(setup, 8 * row, "gpu"))
    budget = (low + high) / 2 / (1 - params.model.memory_headroom)
    params = section(
        "train.alpaca",
        model__gradient_checkpointing="auto",
        model__memory_budget_gib=budget,
        **short,
    )
    card = train(params, "b")
    plan = card["memory_plan"]
    assert (plan["chosen"], plan["split"], plan["fits"]) == ("gpu", True, True)
    assert plan["budget_source"] == "memory_budget_gib"
    assert plan["per_device_train_batch_size"] == 4 and plan["gradient_accumulation_steps"] == 2
    used = card["trainer_args"]["used"]
    assert used["per_device_train_batch_size"] == 4 and used["gradient_accumulation_steps"] == 2
    assert card["distributed"]["global_batch_size"] == 8  # as the params' 8 x 1
    assert card["params"]["model"]["gradient_checkpointing"] == "gpu" and seen[-1] is True
