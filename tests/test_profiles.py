"""Profiles: `tunelab profile gpu` changes exactly the overlay's keys; smoke is the shipped file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tunelab.config import load_params
from tunelab.config.profiles import apply_profile, leaves
from tunelab.errors import TunelabError

from .conftest import ROOT, run_module


def overlay(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text(encoding="utf-8"))


def test_profiles_name_the_same_keys() -> None:
    assert set(leaves(overlay("gpu"))) == set(leaves(overlay("smoke")))


def test_params_yaml_is_the_smoke_profile(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert apply_profile("smoke", params, ROOT / "profiles") == []
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_gpu_then_smoke_round_trips_and_keeps_comments(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    changed = apply_profile("gpu", params, ROOT / "profiles")
    gpu = load_params(params)
    assert gpu["base.text"].pretrained == "Qwen/Qwen2.5-7B-Instruct"
    assert gpu["train.medical"].model.load_in_4bit is True
    assert gpu["train.legal"].data.packing is True
    assert "# tunelab parameters" in params.read_text(encoding="utf-8")
    assert (
        "&"
        not in params.read_text(encoding="utf-8").split("# tunelab parameters")[1].split("lora")[0]
    )
    flat_gpu = leaves(overlay("gpu"))
    flat_smoke = leaves(overlay("smoke"))
    assert set(changed) == {k for k in flat_gpu if flat_gpu[k] != flat_smoke[k]}
    apply_profile("smoke", params, ROOT / "profiles")
    assert yaml.safe_load(params.read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text())


def test_unknown_key_in_a_profile_changes_nothing(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.yaml").write_text("train:\n  alpaca:\n    lora:\n      rank: 4\n")
    (profiles / "worse.yaml").write_text("train:\n  alpaca:\n    lora:\n      r: -4\n")
    with pytest.raises(TunelabError, match=r"train.alpaca.lora.rank"):
        apply_profile("bad", params, profiles)
    with pytest.raises(TunelabError, match=r"invalid at train.alpaca.lora.r"):
        apply_profile("worse", params, profiles)
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_dvc_params_diff_shows_exactly_the_profile(tmp_path: Path) -> None:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "smoke"], cwd=tmp_path, check=True)
    res = run_module(["tunelab.cli", "profile", "gpu"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    diff = subprocess.run(
        ["dvc", "params", "diff", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    changed = set(json.loads(diff.stdout)["params.yaml"])
    flat_gpu, flat_smoke = leaves(overlay("gpu")), leaves(overlay("smoke"))
    expected = {k for k in flat_gpu if flat_gpu[k] != flat_smoke[k]}
    assert changed == expected


def test_small_and_large_floats_stay_floats_for_yaml_1_1_readers(tmp_path: Path) -> None:
    """PyYAML and DVC read 5e-06 as a string; the profile writer must add the mantissa dot."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny_lr.yaml").write_text(
        "train:\n  alpaca:\n    optim:\n      learning_rate: 5.0e-06\n      weight_decay: 1.0e-10\n"
    )
    assert apply_profile("tiny_lr", params, profiles) == [
        "train.alpaca.optim.learning_rate",
        "train.alpaca.optim.weight_decay",
    ]
    optim = yaml.safe_load(params.read_text())["train"]["alpaca"]["optim"]
    assert optim["learning_rate"] == 5e-06 and optim["weight_decay"] == 1e-10
    assert load_params(params)["train.alpaca"].optim.learning_rate == 5e-06


def test_gpu_check_overlay_changes_only_keys_the_gpu_profile_sets(tmp_path: Path) -> None:
    """`tunelab gpu-check` applies gpu, then gpu-check: paths, data, steps, caps, vLLM off,
    and a memory budget per training stage (several share the GPU)."""
    flat_check, flat_gpu = leaves(overlay("gpu-check")), leaves(overlay("gpu"))
    assert set(flat_check) <= set(flat_gpu)  # so `tunelab profile smoke` restores them all
    allowed = re.compile(
        r"^(base\.\w+\.(pretrained|revision)"
        r"|prepare\.\w+\.(source|\w+_source|split\.\w+|columns\.\w+)"
        r"|pretrain\.\w+\.(data\.(source|max_length|split\.\w+)|optim\.max_steps|logging_steps"
        r"|model\.memory_budget_gib)"
        r"|(train|train_pref)\.\w+\.(optim\.max_steps|grpo\.optim\.max_steps|logging_steps"
        r"|model\.memory_budget_gib"
        r"|grpo\.max_completion_length|vllm\.use_vllm)"
        r"|(evaluate|evaluate_pref)\.\w+\.(max_samples|max_gen_toks|decoding\.max_new_tokens)"
        r"|lowrank\.als\.(dataset|ratings_path))$"
    )
    assert [k for k in flat_check if not allowed.match(k)] == []
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_profile("gpu", params, ROOT / "profiles")
    changed = apply_profile("gpu-check", params, ROOT / "profiles")
    assert set(changed) <= set(flat_check) and "train.gsm8k.vllm.use_vllm" in changed
    checked = load_params(params)
    assert checked["train.alpaca"].model.load_in_4bit is True  # still the gpu profile
    assert checked["base.text"].pretrained == ".gpu-check/models/text"
