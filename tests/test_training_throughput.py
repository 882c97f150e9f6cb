"""Throughput meter (run cards' tokens/s) and the benchmark's params, on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from tunelab.training.throughput import WARMUP_STEPS, ThroughputMeter

from .conftest import ROOT, section


class _Fed(torch.nn.Module):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None):  # noqa: ANN001
        return input_ids


def test_meter_counts_real_tokens_of_training_forwards_only() -> None:
    meter = ThroughputMeter()
    model = _Fed()
    model.register_forward_pre_hook(meter.count, with_kwargs=True)
    model.train()
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5])
    model(input_ids=ids, attention_mask=mask)  # padded batch: 8 + 3 real tokens
    meter.mark()  # a mask's sum is read at the step's end, not in the forward
    assert meter.tokens == 11
    model(input_ids=torch.ones(1, 20, dtype=torch.long), position_ids=torch.arange(20)[None])
    assert meter.tokens == 31  # padding-free (packed) batch: every id is real
    model.eval()
    model(input_ids=ids, attention_mask=mask)
    meter.mark()
    assert meter.tokens == 31  # evaluation forwards do not count


def test_meter_leaves_out_warmup_steps() -> None:
    meter = ThroughputMeter()
    meter.mark()
    for step in range(WARMUP_STEPS + 3):
        time.sleep(0.05 if step < WARMUP_STEPS else 0.01)
        meter.tokens += 100
        meter.mark()
    s = meter.summary()
    assert s["steps"] == WARMUP_STEPS + 3 and s["steps_timed"] == 3
    assert s["tokens_timed"] == 300 and s["tokens_per_step"] == 100
    assert len(s["seconds_per_step"]) == WARMUP_STEPS + 3
    assert s["tokens_each_step"] == [100] * (WARMUP_STEPS + 3)
    # the slow warm-up steps are not in the rate: 300 tokens over ~0.03 s, not ~0.13 s
    assert s["tokens_per_second"] > 300 / (sum(s["seconds_per_step"]) - 0.005)
    assert s["device"] == "cpu"


def test_short_run_times_every_step() -> None:
    meter = ThroughputMeter()
    meter.mark()
    meter.tokens += 50
    meter.mark()
    s = meter.summary()
    assert s["steps_timed"] == 1 and s["warmup_steps_left_out"] == 0
    assert s["tokens_timed"] == 50


@pytest.mark.slow
def test_run_card_carries_throughput(tiny_base: Path, tmp_path: Path) -> None:
    from tunelab.data.alpaca import prepare_alpaca
    from tunelab.data.common import split_records, write_prepared
    from tunelab.training.sft import train_sft

    prep = section("prepare.alpaca", source=str(ROOT / "data/raw/alpaca/sample.json"))
    records, card = prepare_alpaca(prep)
    train, val = split_records(records, prep.split)
    write_prepared(tmp_path / "data", train[:64], val[:4], card)
    params = section("train.alpaca", optim__max_steps=4, logging_steps=2, backend="hf")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        train_sft(
            "alpaca", params, "hf", tiny_base, tmp_path / "data", tmp_path / "a", tmp_path / "l"
        )
    finally:
        os.chdir(cwd)
    t = json.loads((tmp_path / "a" / "run_card.json").read_text())["throughput"]
    assert t["steps"] == 4 and t["steps_timed"] == 4 - WARMUP_STEPS
    assert t["tokens_per_second"] > 0
    # padded batches of 8 rows: the real tokens are fewer than rows x longest row
    assert 0 < t["tokens_per_step"] < 8 * params.data.max_length


def _bench():
    spec = importlib.util.spec_from_file_location("sft_bench", ROOT / "bench" / "sft_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_uses_the_gpu_profile_with_its_overrides_only() -> None:
    bench = _bench()
    p = bench.tunelab_params({}, steps=7, tiny=False)
    assert p.backend == "auto" and p.model.load_in_4bit and p.data.packing
    assert p.model.gradient_checkpointing and p.optim.optim == "adamw_8bit"
    assert p.optim.max_steps == 7 and p.optim.gradient_accumulation_steps == 1
    tokens = p.optim.per_device_train_batch_size * p.data.max_length
    assert tokens == 8192  # the 8192 tokens per step
    q = bench.tunelab_params({"backend": "hf", "model.gradient_checkpointing": False}, 3, False)
    assert q.backend == "hf" and not q.model.gradient_checkpointing and q.model.load_in_4bit
    assert set(bench.SETUPS) >= {"hf_seed", "tunelab_gpu", "tunelab_gpu_hf"}


def test_bench_variant_setups_validate_on_the_gpu_profile() -> None:
    """One setup per LoRA variant; each is a valid train.alpaca on the gpu profile."""
    bench = _bench()
    assert set(bench.VARIANT_SETUPS) == {
        "tunelab_gpu_dora",
        "tunelab_gpu_rslora",
        "tunelab_gpu_loraplus",
        "tunelab_bf16_pissa",
    }
    got = {n: bench.tunelab_params(bench.SETUPS[n][1], 5, False) for n in bench.VARIANT_SETUPS}
    assert got["tunelab_gpu_dora"].lora.use_dora and got["tunelab_gpu_dora"].model.load_in_4bit
    assert got["tunelab_gpu_rslora"].lora.use_rslora
    assert got["tunelab_gpu_loraplus"].optim.loraplus_lr_ratio == 16.0
    pissa = got["tunelab_bf16_pissa"]
    assert pissa.lora.init == "pissa" and not pissa.model.load_in_4bit  # PiSSA needs bf16


def test_bench_step_figures_leave_out_warmup_and_profiled_steps() -> None:
    bench = _bench()
    secs = [9.0, 2.0, 1.0, 1.0, 1.2, 1.0, 5.0, 5.0, 5.0]  # warm-up 2, profiled 3
    toks = [100] * 9
    f = bench.step_figures(secs, toks, skip=2, profiled=3)
    assert f["steps_timed"] == 4 and f["tokens_timed"] == 400
    assert f["tokens_per_second"] == round(400 / 4.2, 1)
    assert f["median_step_seconds"] == 1.0 and f["slowest_step_over_median"] == 1.2
    assert not f["steady"]  # 1.2 > 1.15 x the median
    assert bench.step_figures([1.0, 1.0, 1.1], [5, 5, 5], 0, 0)["steady"]


def test_bench_loss_agreement_and_targets_read_the_figures() -> None:
    bench = _bench()
    a = {"setup": "tunelab_auto", "losses": [12.0, 11.0, 10.0], "tokens_per_second": 16_000.0}
    b = {"setup": "tunelab_gpu", "losses": [12.0, 11.1, 10.0], "tokens_per_second": 12_500.0}
    agree = bench.loss_agreement(a, b)
    assert agree["steps_compared"] == 3 and agree["max_abs_diff"] == 0.1
    assert agree["agree_within_2_percent"]  # 0.1 / 11.1 < 2 %
    b["losses"] = [12.0, 13.0, 10.0]
    assert not bench.loss_agreement(a, b)["agree_within_2_percent"]
    assert bench.loss_agreement(a, None) is None
    b |= {"peak_allocated_gib": 8.5, "steady": True, "vs_unsloth_alone": 1.05}
    alone = {"setup": "unsloth_alone", "tokens_per_second": 11_900.0}
    seed = {"setup": "hf_seed", "tokens_per_second": 1_000.0}
    t = bench.targets(
        {"tunelab_gpu": b, "tunelab_auto": a, "unsloth_alone": alone, "hf_seed": seed}
    )
    assert t["tunelab_gpu_tokens_per_second_ge_12200"] and not t["tunelab_gpu_peak_le_8_gib"]
    assert (
        not t["tunelab_gpu_ge_1.1x_unsloth_alone"] and t["tunelab_auto_tokens_per_second_ge_15000"]
    )
    assert t["ge_10x_hf_seed"]


def test_bench_default_setups_are_the_profile_with_one_change() -> None:
    bench = _bench()
    gpu = bench.tunelab_params(bench.SETUPS["tunelab_gpu"][1], 5, False)
    auto = bench.tunelab_params(bench.SETUPS["tunelab_auto"][1], 5, False)
    small = bench.tunelab_params(bench.SETUPS["tunelab_auto_16gib"][1], 5, False)
    fixed = bench.tunelab_params(bench.SETUPS["tunelab_gpu_fixed_shape"][1], 5, False)
    assert gpu.model.gradient_checkpointing == "offload"
    assert auto.model.gradient_checkpointing == "auto" and auto.model.memory_budget_gib is None
    assert small.model.gradient_checkpointing == "auto" and small.model.memory_budget_gib == 16
    assert fixed.data.pad_to_multiple_of == 8192 == 4 * fixed.data.max_length
    # --tiny: offload is Unsloth's (CUDA only), so the CPU path checkpoints on the device
    tiny = bench.tunelab_params(bench.SETUPS["tunelab_gpu_fixed_shape"][1], 5, True)
    assert tiny.model.gradient_checkpointing == "gpu"
    assert tiny.data.pad_to_multiple_of == 4 * tiny.data.max_length
    assert set(bench.DEFAULT_SETUPS) <= set(bench.SETUPS)


@pytest.mark.slow
def test_bench_tiny_runs_unsloth_alone_and_the_plan(tiny_base: Path, tmp_path: Path) -> None:
    """The benchmark's code paths on the CPU (Unsloth alone's loop runs on transformers +
    PEFT there: Unsloth needs CUDA); the figures are the CPU's, only their shape is checked."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "sft_throughput.py"),
        "--tiny",
        "--setups",
        "tunelab_auto,unsloth_alone",
        "--steps",
        "6",
        "--profile",
        "unsloth_alone",
        "--work",
        str(tmp_path / "work"),
        "--tokenizer",
        str(tiny_base),
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    by = {r["setup"]: r for r in report["results"]}
    assert by["tunelab_auto"]["status"] == by["unsloth_alone"]["status"] == "ok"
    auto, alone = by["tunelab_auto"], by["unsloth_alone"]
    assert auto["memory_plan"]["requested"] == "auto" and auto["memory_plan"]["chosen"] == "none"
    assert len(auto["losses"]) == len(alone["losses"]) == 6
    assert alone["steps_timed"] == 6 - 2 - 3  # warm-up and the profiled steps left out
    assert alone["profile"]["steps_profiled"] == 2 and alone["profile"]["top_host_ops_by_self_time"]
    assert "x alone" in res.stdout and auto["vs_unsloth_alone"] > 0
