"""The memory plan: its estimate against H200 measurements, its choices, its errors."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tunelab.config import load_section
from tunelab.errors import TunelabError
from tunelab.training import memory_estimate as me
from tunelab.training import memory_plan as mp

from .conftest import params_dict, section

# Qwen2.5-7B's shape, as bench/sft_throughput.py builds it (docs/performance.md).
QWEN_7B = me.Dims(
    hidden_size=3584,
    num_hidden_layers=28,
    intermediate_size=18944,
    vocab_size=152064,
    num_attention_heads=28,
    num_key_value_heads=4,
    head_dim=128,
    tie_word_embeddings=False,
)
ALL_SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPU_BATCH = (me.Batch(micro_batch=4, accumulation=4, row_tokens=2048),)  # T = 8192, packed


def setup_7b(backend: str, load_in_4bit: bool, optim: str = "adamw_8bit") -> me.Setup:
    return me.Setup(QWEN_7B, backend, load_in_4bit, "bfloat16", 16, ALL_SEVEN, optim)


def usable(budget_gib: float) -> float:
    return budget_gib * 0.9  # the shipped memory_headroom


@pytest.mark.parametrize(
    ("what", "setup", "tokens", "mode", "measured_gib"),
    [
        ("unsloth 4-bit offload", setup_7b("unsloth", True), 8192, "offload", 7.45),
        ("unsloth 4-bit no checkpointing", setup_7b("unsloth", True), 8192, "none", 36.5),
        ("hf bitsandbytes 4-bit gpu, no Liger", setup_7b("hf", True), 8192, "gpu", 16.0),
        ("hf bf16 gpu, 2 x 512", setup_7b("hf", False, "adamw_torch"), 1024, "gpu", 16.8),
    ],
)
def test_the_estimate_is_calibrated_on_h200_measurements(
    what: str, setup: me.Setup, tokens: int, mode: str, measured_gib: float
) -> None:
    """Peak allocated on an H200 (docs/performance.md, run 1); the estimate errs high, by < 20%."""
    estimate = me.estimate_gib(setup, tokens, mode)
    assert measured_gib <= estimate <= 1.2 * measured_gib, (what, estimate)


def test_auto_picks_the_fastest_mode_that_fits() -> None:
    unsloth = setup_7b("unsloth", True)
    # 139 GiB free (an H200): no checkpointing (~39.1 GiB)
    plan = me.choose(unsloth, "auto", GPU_BATCH, usable(139))
    assert (plan.mode, plan.batches, plan.fits, plan.split) == ("none", GPU_BATCH, True, False)
    # 16 GiB: none is ~39.1, gpu ~9.9 GiB: checkpoints on the GPU fit 90% of it (14.4)
    plan = me.choose(unsloth, "auto", GPU_BATCH, usable(16))
    assert plan.mode == "gpu" and plan.batches == GPU_BATCH and plan.fits
    # 8 GiB (7.2 usable): offload is ~8.5 GiB at micro-batch 4 and ~7.5 at 2 (the measured
    # 7.45 at 4 would not leave the headroom either); at micro-batch 1 it is ~7.1: offload,
    # with accumulation x4 so that the tokens per optimizer step stay
    plan = me.choose(unsloth, "auto", GPU_BATCH, usable(8))
    assert plan.mode == "offload" and plan.fits and plan.split
    assert plan.batches == (me.Batch(1, 16, 2048),) and plan.tokens == 2048
    assert plan.estimates_gib["offload"] == pytest.approx(7.08, abs=0.01)
    # 6 GiB: the 4-bit weights and embeddings alone are ~5.3 GiB: the smallest (offload at
    # micro-batch 1), flagged as possibly not fitting
    plan = me.choose(unsloth, "auto", GPU_BATCH, usable(6))
    assert plan.mode == "offload" and not plan.fits
    assert plan.batches == (me.Batch(1, 16, 2048),)


@pytest.mark.parametrize("budget", [200, 139, 24, 16, 8, 6, 1])
def test_the_hf_backend_never_offloads(budget: float) -> None:
    plan = me.choose(setup_7b("hf", True), "auto", GPU_BATCH, usable(budget))
    assert plan.mode in ("none", "gpu") and "offload" not in plan.estimates_gib
    assert me.choose(setup_7b("hf", True), "gpu", GPU_BATCH, usable(budget)).mode == "gpu"


def test_hf_4bit_choices() -> None:
    hf = setup_7b("hf", True)
    assert me.choose(hf, "auto", GPU_BATCH, usable(139)).mode == "none"  # ~45.5 GiB
    assert me.choose(hf, "auto", GPU_BATCH, usable(24)).mode == "gpu"  # ~16.3 GiB
    plan = me.choose(hf, "auto", GPU_BATCH, usable(16))  # 16.3 > 14.4: split once
    assert (plan.mode, plan.batches, plan.fits) == ("gpu", (me.Batch(2, 8, 2048),), True)


def test_odd_micro_batches_split_by_their_smallest_factor() -> None:
    plan = me.choose(setup_7b("unsloth", True), "auto", (me.Batch(6, 2, 2048),), usable(8))
    assert plan.batches == (me.Batch(1, 12, 2048),)
    plan = me.choose(setup_7b("unsloth", True), "auto", (me.Batch(6, 2, 2048),), usable(9))
    assert plan.batches == (me.Batch(3, 4, 2048),) and plan.mode == "offload"


# ------------------------------------------------------------------------ resolve


def gpu_alpaca(**updates: object) -> object:
    """train.alpaca shaped as the gpu profile's (4-bit bf16, 4 x 2048, adamw_8bit)."""
    base = {
        "model__load_in_4bit": True,
        "model__dtype": "bfloat16",
        "optim__optim": "adamw_8bit",
        "optim__per_device_train_batch_size": 4,
        "optim__gradient_accumulation_steps": 4,
        "data__max_length": 2048,
        "data__packing": True,
        "model__gradient_checkpointing": "auto",
    }
    return section("train.alpaca", **(base | updates))


@pytest.fixture
def qwen_7b_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mp, "read_dims", lambda *args: QWEN_7B)


def resolve(params: object, backend: str = "unsloth") -> tuple[object, dict]:
    return mp.resolve(params, "train.alpaca", "Qwen/Qwen2.5-7B", None, backend, {"optim": 2048})


@pytest.mark.usefixtures("qwen_7b_config")
def test_resolve_splits_the_micro_batch_and_keeps_the_tokens_per_step() -> None:
    params, card = resolve(gpu_alpaca(model__memory_budget_gib=8.0))
    assert params.model.gradient_checkpointing == "offload"
    assert params.optim.per_device_train_batch_size == 1
    assert params.optim.gradient_accumulation_steps == 16  # 1 x 16 = 4 x 4 rows per step
    assert card == {
        "requested": "auto",
        "chosen": "offload",
        "budget_gib": 8.0,
        "budget_source": "memory_budget_gib",
        "headroom": 0.1,
        "reserved_gib": 0.0,
        "usable_gib": 7.2,
        "tokens_per_micro_batch": 2048,
        "estimates_gib": {"none": 14.76, "gpu": 7.44, "offload": 7.08},
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 16,
        "split": True,
        "fits": True,
    }
    params, card = resolve(gpu_alpaca(model__memory_budget_gib=139.0))
    assert params.model.gradient_checkpointing is False and card["chosen"] == "none"
    assert params.optim.per_device_train_batch_size == 4 and not card["split"]


@pytest.mark.usefixtures("qwen_7b_config")
@pytest.mark.parametrize(
    ("value", "backend", "resolved", "mode"),
    [
        (False, "unsloth", False, "none"),
        (True, "unsloth", "offload", "offload"),
        (True, "hf", "gpu", "gpu"),
        ("gpu", "unsloth", "gpu", "gpu"),
        ("offload", "unsloth", "offload", "offload"),
    ],
)
@pytest.mark.parametrize("budget", [6.0, 139.0])
def test_explicit_values_are_never_overridden(
    value: object, backend: str, resolved: object, mode: str, budget: float
) -> None:
    asked = gpu_alpaca(model__gradient_checkpointing=value, model__memory_budget_gib=budget)
    params, card = resolve(asked, backend)
    assert params.model.gradient_checkpointing == resolved
    assert params.optim == asked.optim  # no split
    assert card["requested"] == value and card["chosen"] == mode and not card["split"]
    assert card["fits"] == (card["estimates_gib"][mode] <= card["usable_gib"])


@pytest.mark.usefixtures("qwen_7b_config")
def test_every_phase_of_grpo_is_split_and_rollout_memory_is_reserved() -> None:
    grpo = section(
        "train.gsm8k",
        model__load_in_4bit=True,
        model__dtype="bfloat16",
        model__gradient_checkpointing="auto",
        model__memory_budget_gib=40.0,
    )
    batches = {"grpo.optim": 1024, "warmup.optim": 2048}
    params, card = mp.resolve(grpo, "train.gsm8k", "x", None, "hf", batches)
    twin_params, twin_card = mp.resolve(
        grpo, "train.gsm8k", "x", None, "hf", batches, dense_twin=True
    )
    # the bf16 twin: every weight once more in bf16 (~14.2 GiB for the 7B shape)
    assert twin_card["reserved_gib"] == pytest.approx(14.2, abs=0.05)
    assert twin_card["usable_gib"] == pytest.approx(card["usable_gib"] - 14.2, abs=0.05)
    for p, c in ((params, card), (twin_params, twin_card)):
        for path in batches:
            before, after = mp._get(grpo, path), mp._get(p, path)
            assert (
                before.per_device_train_batch_size * before.gradient_accumulation_steps
                == after.per_device_train_batch_size * after.gradient_accumulation_steps
            )
            assert c["batches"][path]["per_device_train_batch_size"] == (
                after.per_device_train_batch_size
            )
    assert twin_params.warmup.optim.per_device_train_batch_size < (
        params.warmup.optim.per_device_train_batch_size
    )


def test_the_measured_budget_is_system_ram_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gib, source = mp.device_budget_gib()
    assert source == "system RAM" and gib > 0
    monkeypatch.setitem(sys.modules, "psutil", None)  # no psutil: /proc/meminfo
    assert mp.system_available_bytes() / 2**30 == pytest.approx(gib, rel=0.25)


# ------------------------------------------------------------------------- errors


def test_offload_on_the_hf_backend_names_the_key(qwen_7b_config: None) -> None:
    with pytest.raises(TunelabError) as err:
        resolve(gpu_alpaca(model__gradient_checkpointing="offload"), "hf")
    assert str(err.value).startswith("train.alpaca.model.gradient_checkpointing: offload is")
    assert "hf backend" in str(err.value)


def write(tmp_path: Path, mutate) -> Path:
    data = params_dict()
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        (
            "train.alpaca",
            lambda d: d["train"]["alpaca"]["model"].__setitem__("gradient_checkpointing", "gpus"),
            "train.alpaca.model.gradient_checkpointing: Input should be False, True, 'gpu', "
            "'offload' or 'auto' (got 'gpus')",
        ),
        (
            "train.alpaca",
            lambda d: d["train"]["alpaca"].update(
                backend="hf",
                model=d["train"]["alpaca"]["model"] | {"gradient_checkpointing": "offload"},
            ),
            "train.alpaca.model.gradient_checkpointing: offload is Unsloth's offloaded "
            "checkpointing; transformers + PEFT keeps checkpoints on the GPU (set gpu, true or "
            "auto) with train.alpaca.backend hf",
        ),
        (
            "pretrain.medical",
            lambda d: d["pretrain"]["medical"]["model"].__setitem__("memory_budget_gib", 0),
            "pretrain.medical.model.memory_budget_gib: Input should be greater than 0",
        ),
        (
            "train_pref.dpo",
            lambda d: d["train_pref"]["dpo"]["model"].__setitem__("memory_headroom", 1.0),
            "train_pref.dpo.model.memory_headroom: Input should be less than 1",
        ),
        (
            "train.car_insurance",
            lambda d: d["train"]["car_insurance"]["model"].__setitem__(
                "gradient_checkpointing", "auto"
            ),
            "train.car_insurance.model.gradient_checkpointing: Value error, auto is for the "
            "text stages",
        ),
        (
            "train.car_insurance",
            lambda d: d["train"]["car_insurance"]["model"].__setitem__("memory_budget_gib", 8),
            "train.car_insurance.model.memory_budget_gib: unknown key",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, name: str, mutate, message: str) -> None:
    path = write(tmp_path, mutate)
    with pytest.raises(TunelabError) as err:
        load_section(name, path)
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_auto_without_a_readable_config_is_an_error_an_explicit_value_is_not(
    tmp_path: Path,
) -> None:
    with pytest.raises(TunelabError, match=r"^train.alpaca.model.gradient_checkpointing: auto"):
        mp.resolve(gpu_alpaca(), "train.alpaca", str(tmp_path), None, "hf", {"optim": 2048})
    explicit = gpu_alpaca(model__gradient_checkpointing=True)
    params, card = mp.resolve(explicit, "train.alpaca", str(tmp_path), None, "hf", {"optim": 2048})
    assert params.model.gradient_checkpointing == "gpu"
    assert card["chosen"] == "gpu" and card["estimates_gib"] is None and card["note"]


def test_the_library_values_of_each_mode() -> None:
    assert [mp.unsloth_checkpointing(v) for v in (False, "gpu", "offload", True)] == [
        False,
        True,
        "unsloth",
        "unsloth",
    ]
    assert [mp.hf_checkpointing(v) for v in (False, "gpu", True)] == [False, True, True]
    with pytest.raises(TunelabError, match="offload is"):
        mp.hf_checkpointing("offload")
    with pytest.raises(TunelabError, match="unresolved"):
        mp.unsloth_checkpointing("auto")


def test_dims_come_from_the_text_config_of_a_multimodal_config() -> None:
    text = SimpleNamespace(
        hidden_size=2048,
        num_hidden_layers=36,
        intermediate_size=11008,
        vocab_size=151936,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    dims = me.dims_from_config(SimpleNamespace(text_config=text, vision_config=object()))
    assert dims.num_hidden_layers == 36 and dims.head_dim == 128 and dims.tie_word_embeddings
    with pytest.raises(ValueError, match="intermediate_size"):
        me.dims_from_config(SimpleNamespace(hidden_size=8, num_hidden_layers=1, vocab_size=9))


def test_the_shipped_profiles_plan_every_text_stage() -> None:
    """gpu: auto in every text train section; VL keeps an explicit value."""
    gpu = yaml.safe_load((Path(__file__).parents[1] / "profiles/gpu.yaml").read_text())
    for top, name in [
        ("train", "alpaca"),
        ("train", "gsm8k"),
        ("pretrain", "medical"),
        ("pretrain", "legal"),
        ("train_pref", "dpo"),
        ("train_pref", "orpo"),
    ]:
        assert gpu[top][name]["model"]["gradient_checkpointing"] == "auto", (top, name)
    assert gpu["train"]["car_insurance"]["model"]["gradient_checkpointing"] is True
