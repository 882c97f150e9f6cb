"""Deterministic mode (params ``reproducibility``): applied in every stage process before
CUDA starts, and refused in one line where it cannot be honoured. On the CPU the settings
are the ones a GPU run gets (the GPU figures: docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, params_dict, run_module

PROBE = """
import json, os
import torch
from tunelab.runtime import run_stage

def main():
    import torch._inductor.config as inductor
    {body}
    print(json.dumps({{
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "inductor_deterministic": getattr(inductor, "deterministic", None),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }}))

run_stage(main)
"""


def _project(tmp_path: Path, **reproducibility: object) -> Path:
    data = params_dict()
    data["reproducibility"] |= reproducibility
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return tmp_path


def _probe(root: Path, body: str = "pass", env: dict | None = None) -> object:
    (root / "probe.py").write_text(PROBE.format(body=body))
    clean = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    import subprocess

    return subprocess.run(
        [sys.executable, "probe.py"],
        cwd=root,
        env={**clean, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_stage_process_runs_with_every_deterministic_setting(tmp_path: Path) -> None:
    root = _project(tmp_path, deterministic=True, warn_only=False)
    done = _probe(root)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    wanted = params_dict()["reproducibility"]["cublas_workspace_config"]
    assert got == {
        "deterministic": True,
        "warn_only": False,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "inductor_deterministic": True,
        "cublas": wanted,
    }


def test_the_mode_off_changes_nothing(tmp_path: Path) -> None:
    done = _probe(_project(tmp_path, deterministic=False))
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["deterministic"] is False and got["cublas"] is None


def test_another_cublas_workspace_in_the_environment_is_refused(tmp_path: Path) -> None:
    root = _project(tmp_path, deterministic=True, cublas_workspace_config=":4096:8")
    done = _probe(root, env={"CUBLAS_WORKSPACE_CONFIG": ":16:8"})
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: reproducibility.deterministic: CUBLAS_WORKSPACE_CONFIG is")
    assert "':16:8'" in line and "':4096:8'" in line


def test_an_op_without_a_deterministic_kernel_stops_the_stage_naming_it(tmp_path: Path) -> None:
    # a real op with no deterministic implementation, on the CPU too (on a GPU: index_add's
    # atomics, say): torch's own alert
    body = (
        "x, i = torch.nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True); "
        "torch.nn.functional.max_unpool2d(x, i, 2)"
    )
    done = _probe(_project(tmp_path, deterministic=True, warn_only=False), body)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    op = "max_unpooling2d_forward_out"
    assert line.startswith(f"error: reproducibility.deterministic: {op} has no "), line
    assert "reproducibility.warn_only: true" in line
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    warned = _probe(_project(tmp_path, deterministic=True, warn_only=True), body)
    assert warned.returncode == 0, warned.stderr[-2000:]
    assert f"{op} does not have a deterministic implementation" in warned.stderr


def test_a_bad_workspace_value_is_named(tmp_path: Path) -> None:
    root = _project(tmp_path, cublas_workspace_config="4096:8")
    done = run_module(["stages.check"], root, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "reproducibility.cublas_workspace_config" in line and "\n" not in line


def test_the_memory_plan_budgets_the_whole_machine_when_deterministic() -> None:
    import psutil
    import torch

    from tunelab.training.memory_plan import GIB, device_budget_gib

    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        free, source = device_budget_gib()
        assert source == "system RAM"
        torch.use_deterministic_algorithms(True)
        whole, source = device_budget_gib()
        assert source == "system RAM, whole (deterministic)"
        assert whole == pytest.approx(psutil.virtual_memory().total / GIB)
        assert whole >= free
    finally:
        torch.use_deterministic_algorithms(before)


def test_the_engine_writes_the_same_rows_with_the_deterministic_reroute_off(tiny_base) -> None:
    """The continuous engine turns torch's sort-based index writes off while it runs (its
    indices never collide) and gives the same rows; the setting comes back afterwards."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.generation import generate_new_tokens

    from .conftest import section

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    gen = section("evaluate.alpaca").generation.model_copy(update={"engine": "continuous"})
    torch.manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (5, 12))
    mask = torch.ones_like(ids)
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        free = [r.tolist() for r in generate_new_tokens(model, ids, mask, gen, 3, kw)]
        torch.use_deterministic_algorithms(True, warn_only=True)
        pinned = [r.tolist() for r in generate_new_tokens(model, ids, mask, gen, 3, kw)]
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
    assert pinned == free
