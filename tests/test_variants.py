"""LoRA variants: each trains a few steps on the tiny model, evaluates, exports and merges.

For every variant (DoRA, rsLoRA, PiSSA, OLoRA, LoRA+) the model as it stands at the
end of training is kept (its logits on a fixed batch), and the saved adapter must
give the same logits wherever tunelab uses it: evaluate's base + adapter, and the
merged export (DoRA and PiSSA change what a merge computes). PiSSA/OLoRA train on a
residual base, so the adapter is only right for the original base once converted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tunelab.config import load_section
from tunelab.data.alpaca import prepare_alpaca
from tunelab.data.common import split_records, write_prepared
from tunelab.errors import TunelabError

from .conftest import ROOT, params_dict, run_module, section

# Short runs: 2 steps of 2 rows; every value else from params.yaml.
SHORT = {
    "optim__max_steps": 2,
    "optim__per_device_train_batch_size": 2,
    "data__max_length": 64,
    "logging_steps": 1,
    "save_steps": 100,
    "backend": "hf",
}
RATIO = 16.0
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "dora": ({"lora__use_dora": True}, "DoRA"),
    "rslora": ({"lora__use_rslora": True}, "rsLoRA"),
    "pissa": ({"lora__init": "pissa"}, "PiSSA"),  # OLoRA: in the VL test below
    "loraplus": ({"optim__loraplus_lr_ratio": RATIO}, "LoRA+ x16"),
}
IDS = torch.tensor([[1, 5, 9, 42, 7, 3, 100, 17, 250, 11], [4, 8, 15, 16, 23, 42, 99, 2, 7, 1]])


class Capture:
    """Trainer callback: the optimizer's groups at the start, logits of a batch at the end."""

    def __init__(self, batch: dict[str, torch.Tensor] | None = None) -> None:
        self.batch, self.logits, self.groups, self.adapters = batch, None, None, None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
                outer.adapters = list(getattr(model, "peft_config", {}))
                names = {id(p): n for n, p in model.named_parameters()}
                outer.groups = [
                    (g["initial_lr"], [names[id(p)] for p in g["params"]])
                    for g in optimizer.param_groups
                ]

            def on_train_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
                batch = outer.batch
                if batch is None:  # the first training batch (VL: images and all)
                    batch = next(iter(kw["train_dataloader"]))
                    batch = {k: v for k, v in batch.items() if k != "labels"}
                    outer.batch = {k: v.cpu() for k, v in batch.items()}
                was_training = model.training
                model.eval()
                with torch.no_grad():
                    outer.logits = model(**outer.batch).logits.float().cpu()
                model.train(was_training)

        return _CB()


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = section("prepare.alpaca", source=str(ROOT / "data/raw/alpaca/sample.json"))
    records, card = prepare_alpaca(params)
    train, val = split_records(records, params.split)
    out = tmp_path_factory.mktemp("prepared") / "alpaca"
    write_prepared(out, train, val[:4], card)
    return out


def train_variant(
    work: Path, base: Path, prepared: Path, overrides: dict[str, Any], callbacks: list | None = None
) -> dict[str, Any]:
    from tunelab.training.sft import train_sft

    cwd = os.getcwd()
    os.chdir(work)  # checkpoints go to ./.tunelab
    try:
        return train_sft(
            "alpaca",
            section("train.alpaca", **(SHORT | overrides)),
            "hf",
            base,
            prepared,
            work / "adapter",
            work / "live",
            extra_callbacks=callbacks,
        ).card
    finally:
        os.chdir(cwd)


def evaluate_stage(project: Path, base: Path, adapter: Path, prepared: Path) -> dict[str, Any]:
    """stages/evaluate.py's alpaca path, in this process, on 4 held-out prompts."""
    from stages.evaluate import evaluate

    data = params_dict()
    data["evaluate"]["alpaca"] |= {"max_samples": 4, "batch_size": 4}
    data["evaluate"]["alpaca"]["decoding"]["max_new_tokens"] = 8
    for link, target in (
        ("models/base/text", base),
        ("adapters/alpaca", adapter),
        ("data/prepared/alpaca", prepared),
    ):
        (project / link).parent.mkdir(parents=True, exist_ok=True)
        (project / link).symlink_to(target)
    (project / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        evaluate("alpaca")
    finally:
        os.chdir(cwd)
    return json.loads((project / "reports/metrics/evaluate/alpaca.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_base: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each variant trained once: its adapter, run card, final logits and optimizer groups."""
    out = {}
    for name, (overrides, _) in VARIANTS.items():
        work = tmp_path_factory.mktemp(name)
        capture = Capture({"input_ids": IDS})
        card = train_variant(work, tiny_base, prepared, overrides, [capture.callback()])
        out[name] = {
            "adapter": work / "adapter",
            "card": card,
            "logits": capture.logits,
            "groups": capture.groups,
            "prepared": prepared,
        }
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_and_its_adapter_is_the_trained_model(
    name: str, runs: dict, tiny_base: Path
) -> None:
    """evaluate's loading (base + adapter) and a float32 merge both give the trained logits."""
    from transformers import AutoModelForCausalLM

    from tunelab.export.merge import export_adapter
    from tunelab.models.loading import load_adapter, load_causal_lm

    run = runs[name]
    variant = run["card"]["lora_variant"]
    assert variant["label"] == VARIANTS[name][1]
    assert run["card"]["train"]["global_step"] == 2
    config = json.loads((run["adapter"] / "adapter_config.json").read_text())
    assert config["use_dora"] is (name == "dora") and config["use_rslora"] is (name == "rslora")
    assert config["init_lora_weights"] is True  # whatever the init, a plain adapter is saved
    r = section("train.alpaca").lora.r
    assert variant["saved_r"] == config["r"] == (2 * r if name == "pissa" else r)
    assert variant["converted_to_plain_lora"] is (name == "pissa")
    assert variant["adapter_bytes"] == (run["adapter"] / "adapter_model.safetensors").stat().st_size

    batch = {"input_ids": IDS}
    base = load_causal_lm(str(tiny_base), None, "float32", False, False)
    plain = logits(base, batch)
    tuned = logits(load_adapter(base, run["adapter"]), batch)  # as stages/evaluate.py loads it
    torch.testing.assert_close(tuned, run["logits"], atol=1e-4, rtol=1e-4)
    assert (tuned - plain).abs().max() > 0.05  # the adapter changed the model

    project = run["adapter"].parent / "project"
    metrics = evaluate_stage(project, tiny_base, run["adapter"], run["prepared"])
    assert metrics["samples"] == 4 and metrics["tuned"]["val_loss"] != metrics["base"]["val_loss"]

    out = run["adapter"].parent / "merged32"
    export_adapter(run["adapter"], out, section("export.merge", dtype="float32"), log=print)
    merged = logits(AutoModelForCausalLM.from_pretrained(out), batch)
    torch.testing.assert_close(merged, run["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["dora", "pissa"])
def test_bf16_export_of_dora_and_pissa_matches_base_plus_adapter(
    name: str, runs: dict, tiny_base: Path, tmp_path: Path
) -> None:
    """The default export dtype: the merge happens in bf16, so bf16 rounding only."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.export.merge import export_adapter

    export_adapter(runs[name]["adapter"], tmp_path / "m", section("export.merge"), log=print)
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert {p.dtype for p in merged_model.parameters()} == {torch.bfloat16}
    merged = logits(merged_model, {"input_ids": IDS})
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16)
    tuned = logits(PeftModel.from_pretrained(base, runs[name]["adapter"]), {"input_ids": IDS})
    # as tests/test_export.py: bf16 rounds W + ΔW once, the unmerged model each term
    torch.testing.assert_close(merged, tuned, atol=0.25, rtol=0.05)
    assert (merged.argmax(-1) == tuned.argmax(-1)).float().mean() >= 0.9


def test_loraplus_gives_b_its_own_learning_rate(runs: dict) -> None:
    lr = section("train.alpaca").optim.learning_rate
    for name, expect_b in (("loraplus", RATIO * lr), ("dora", lr)):
        rates = {}
        for rate, names in runs[name]["groups"]:
            for n in names:
                rates[n] = rate
        b = [v for n, v in rates.items() if "lora_B" in n]
        a = [v for n, v in rates.items() if "lora_A" in n]
        assert a and b and len(a) == len(b), name
        assert a == pytest.approx([lr] * len(a)) and b == pytest.approx([expect_b] * len(b)), name


def test_svd_spectra_of_the_variants(runs: dict, tiny_base: Path, tmp_path: Path) -> None:
    """DoRA's ΔW equals what PEFT's merge adds; PiSSA's converted ΔW has rank <= 2r."""
    from safetensors.torch import load_file

    from tunelab.export.merge import export_adapter
    from tunelab.lowrank import svd as lsvd
    from tunelab.models.loading import resolve_base

    weights = lsvd.BaseWeights(*resolve_base(tiny_base))
    r = section("train.alpaca").lora.r
    summaries = {}
    for name in VARIANTS:
        modules = lsvd.lora_spectra(runs[name]["adapter"], weights, [0], [1, 4, 16], 1e-8, "full")
        summaries[name] = lsvd.summarise(modules, [1, 4, 16])
    assert summaries["pissa"]["lora_r"] == [2 * r] and summaries["pissa"]["dw_rank_within_r"]
    assert summaries["rslora"]["dw_max_numerical_rank"] <= r
    # DoRA rescales whole rows of W: its update is not confined to rank r
    assert summaries["dora"]["dw_max_numerical_rank"] > r

    export_adapter(
        runs["dora"]["adapter"], tmp_path / "m", section("export.merge", dtype="float32")
    )
    merged = {}
    for f in (tmp_path / "m").glob("*.safetensors"):
        merged |= load_file(f)
    for u in lsvd.read_lora(runs["dora"]["adapter"])[:6]:
        w = weights.get(u.module)
        expect = merged[f"{u.module}.weight"].double() - w
        torch.testing.assert_close(u.delta(w), expect, atol=2e-6, rtol=1e-4)


def test_resume_with_pissa_and_loraplus_ends_with_the_same_adapter(
    tiny_base: Path, prepared: Path, tmp_path: Path
) -> None:
    """A crash after the checkpoint at step 2, then a rerun: PiSSA is re-initialised from the
    original base, the LoRA+ optimizer state restored, and the adapter is bit for bit equal."""
    from transformers import TrainerCallback

    overrides = {
        "lora__init": "pissa",
        "optim__loraplus_lr_ratio": RATIO,
        "optim__max_steps": 3,
        "save_steps": 2,
    }
    (tmp_path / "a").mkdir()
    train_variant(tmp_path / "a", tiny_base, prepared, overrides)
    reference = (tmp_path / "a/adapter/adapter_model.safetensors").read_bytes()

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == 3:
                raise RuntimeError("crash")

    work = tmp_path / "b"
    work.mkdir()
    with pytest.raises(RuntimeError, match="crash"):
        train_variant(work, tiny_base, prepared, overrides, [Crash()])
    assert any((work / ".tunelab/checkpoints/train/alpaca").glob("checkpoint-2"))
    assert not (work / "adapter").exists()
    card = train_variant(work, tiny_base, prepared, overrides)
    assert card["resumed"] is True and card["train"]["global_step"] == 3
    assert (work / "adapter/adapter_model.safetensors").read_bytes() == reference


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (
            {"lora__use_dora": True, "lora__init": "pissa"},
            "train.alpaca.lora.use_dora",
            "drops DoRA's magnitude vector with train.alpaca.lora.init pissa",
        ),
        (
            {"lora__init": "pissa_niter_4", "model__load_in_4bit": True},
            "train.alpaca.lora.init",
            "with train.alpaca.model.load_in_4bit true",
        ),
        (
            {"lora__init": "orthogonal", "lora__r": 15},
            "train.alpaca.lora.init",
            "even rank with train.alpaca.lora.r 15",
        ),
        ({"lora__init": "eva"}, "train.alpaca.lora.init", "should match pattern"),
        (
            {"optim__loraplus_lr_ratio": 0.5},
            "train.alpaca.optim.loraplus_lr_ratio",
            "greater than or equal to 1",
        ),
    ],
)
def test_unsupported_combinations_name_both_keys(
    tmp_path: Path, overrides: dict, key: str, message: str
) -> None:
    data = params_dict()
    for dotted, value in overrides.items():
        node = data["train"]["alpaca"]
        *path, leaf = dotted.split("__")
        for p in path:
            node = node[p]
        node[leaf] = value
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(TunelabError) as err:
        load_section("train.alpaca", params)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{params}: {key}: "), text
    assert message in text, text


@pytest.mark.parametrize(
    ("section", "overrides", "refused"),
    [
        # PiSSA / OLoRA train on a residual base: refused where "adapter off" is the base
        ("pretrain.medical", {"lora": {"init": "pissa"}}, "the pretrain recipe"),
        ("train_pref.dpo", {"lora": {"init": "olora"}}, "the dpo recipe"),
        ("train_pref.orpo", {"lora": {"init": "pissa"}}, None),  # no reference: it runs
        ("train.gsm8k", {"lora": {"init": "pissa"}}, None),  # its KL reference is a copy
        # LoRA+ runs in every recipe, unless another rule builds the optimizer's groups
        ("train_pref.dpo", {"optim": {"loraplus_lr_ratio": 16.0}}, None),
        ("pretrain.medical", {"optim": {"loraplus_lr_ratio": 16.0}}, "embedding_learning_rate"),
        (
            "pretrain.medical",
            {
                "optim": {"loraplus_lr_ratio": 16.0, "embedding_learning_rate": None},
                "lora": {"modules_to_save": []},
            },
            None,
        ),
    ],
)
def test_one_variant_rule_for_every_recipe(
    tmp_path: Path, section: str, overrides: dict, refused: str | None
) -> None:
    data = params_dict()
    node = data
    for part in section.split("."):
        node = node[part]
    for block, values in overrides.items():
        node[block] |= values
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    if refused is None:
        load_section(section, params)
        return
    with pytest.raises(TunelabError) as err:
        load_section(section, params)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{params}: {section}.") and refused in text


def test_the_train_stage_stops_on_a_conflict_before_loading(tmp_path: Path) -> None:
    data = params_dict()
    data["train"]["car_insurance"]["lora"]["init"] = "olora"
    data["train"]["car_insurance"]["model"]["load_in_4bit"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    path = os.pathsep.join([str(ROOT), str(ROOT / "src")])  # this checkout's code
    res = run_module(["stages.train", "car_insurance"], tmp_path, {"PYTHONPATH": path})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: params.yaml: train.car_insurance.lora.init: olora rewrites the base weights"
    ), lines[-3:]
    assert lines[-1].endswith("with train.car_insurance.model.load_in_4bit true")
    assert not (tmp_path / "adapters").exists()


def test_unsloth_with_vllm_refuses_dora_and_pissa() -> None:
    from tunelab.training.variants import check_backend

    lora = section("train.gsm8k", lora__use_dora=True).lora
    with pytest.raises(TunelabError, match=r"^train.gsm8k.lora.use_dora: .*vllm.use_vllm true"):
        check_backend("train.gsm8k", lora, "unsloth", use_vllm=True)
    check_backend("train.gsm8k", lora, "hf", use_vllm=True)  # TRL merges before syncing: fine
    lora = section("train.gsm8k", lora__init="pissa").lora
    with pytest.raises(TunelabError, match=r"^train.gsm8k.lora.init: pissa trains on a residual"):
        check_backend("train.gsm8k", lora, "unsloth", use_vllm=True)
    check_backend("train.gsm8k", lora, "unsloth", use_vllm=False)


@pytest.mark.slow
def test_grpo_with_pissa_loraplus_and_a_kl_reference(tiny_base: Path, tmp_path: Path) -> None:
    """beta > 0: TRL copies the adapter's config into a "ref" adapter; with PiSSA that copy
    must not decompose the (already residual) base again. The saved adapter on the original
    base gives the trained policy's logits."""
    from tunelab.models.loading import load_adapter, load_causal_lm
    from tunelab.training.grpo import train_grpo

    from .test_gsm8k import prepare_smoke

    prepare_smoke(tmp_path / "data", max_train_rows=8, max_test_rows=4)
    params = section(
        "train.gsm8k",
        backend="hf",
        lora__init="pissa",
        warmup__optim__max_steps=2,
        warmup__optim__per_device_train_batch_size=4,
        warmup__logging_steps=1,
        grpo__optim__max_steps=1,
        grpo__optim__per_device_train_batch_size=4,
        grpo__optim__loraplus_lr_ratio=RATIO,
        grpo__max_completion_length=12,
        grpo__logging_steps=1,
    )
    assert params.grpo.beta > 0
    capture = Capture({"input_ids": IDS})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        card = train_grpo(
            "gsm8k",
            params,
            "hf",
            tiny_base,
            tmp_path / "data",
            tmp_path / "adapter",
            tmp_path / "live",
            extra_callbacks=[capture.callback()],
        ).card
    finally:
        os.chdir(cwd)
    assert card["lora_variant"]["label"] == "PiSSA + LoRA+ x16"
    assert card["grpo"]["global_step"] == 1
    assert capture.adapters == ["default", "ref"]  # TRL's frozen KL reference
    rates = {n: rate for rate, names in capture.groups for n in names}
    b = [v for n, v in rates.items() if "lora_B" in n]
    assert b and b == pytest.approx([RATIO * params.grpo.optim.learning_rate] * len(b))
    base = load_causal_lm(str(tiny_base), None, "float32", False, False)
    tuned = logits(load_adapter(base, tmp_path / "adapter"), {"input_ids": IDS})
    torch.testing.assert_close(tuned, capture.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_vl_with_olora_rslora_loraplus(tiny_vl_base: Path, tmp_path: Path, monkeypatch) -> None:
    """The VL recipe with the variant keys: base + saved adapter = the trained model, images
    included (LoRA on the vision blocks too)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunelab.data.car_insurance import prepare_car_insurance
    from tunelab.training.vl import train_vl

    records, card = prepare_car_insurance(
        section("prepare.car_insurance", source=str(ROOT / "data/raw/car_insurance/claims.xlsx"))
    )
    records = records[:8]
    card.files = {r["images"][0]: card.files[r["images"][0]] for r in records}
    train, val = split_records(records, section("prepare.car_insurance").split)
    write_prepared(tmp_path / "prepared", train, val, card)
    monkeypatch.chdir(tmp_path)
    params = section(
        "train.car_insurance",
        lora__init="olora",
        lora__use_rslora=True,
        optim__loraplus_lr_ratio=RATIO,
        optim__max_steps=2,
        optim__per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=100,
    )
    capture = Capture()
    run = train_vl(
        "car_insurance",
        params,
        "hf",
        tiny_vl_base,
        tmp_path / "prepared",
        tmp_path / "adapter",
        tmp_path / "live",
        extra_callbacks=[capture.callback()],
    ).card
    assert run["lora_variant"]["label"] == "rsLoRA + OLoRA + LoRA+ x16"
    assert run["lora_variant"]["saved_r"] == 2 * params.lora.r
    assert "pixel_values" in capture.batch
    base = AutoModelForImageTextToText.from_pretrained(tiny_vl_base)
    plain = logits(base, capture.batch)
    tuned = logits(PeftModel.from_pretrained(base, tmp_path / "adapter"), capture.batch)
    torch.testing.assert_close(tuned, capture.logits, atol=1e-4, rtol=1e-4)
    assert (tuned - plain).abs().max() > 1e-3
    shutil.rmtree(tmp_path / ".tunelab", ignore_errors=True)
