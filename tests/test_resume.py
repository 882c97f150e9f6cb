"""Resume after a crash: SIGKILL a train stage mid-run, `dvc repro` again, same adapter.

The scratch pipeline is the real one with a smaller smoke setting (fewer
pretraining and training steps, a checkpoint every 10 steps). The resumed
adapter must be bitwise identical to an uninterrupted run on the CPU: the
Trainer restores model, optimizer, scheduler and RNG state and skips the
batches it already consumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import make_clone, sh

pytestmark = pytest.mark.slow
CKPT = Path(".tunelab/checkpoints/train/alpaca")


def shrink(root: Path) -> None:
    p = root / "params.yaml"
    data = yaml.safe_load(p.read_text())
    data["base"]["text"]["pretrain"]["steps"] = 60
    data["train"]["alpaca"]["optim"]["max_steps"] = 60
    data["train"]["alpaca"]["save_steps"] = 10
    p.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


def test_sigkill_then_repro_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    root = make_clone(tmp_path / "repo")
    shrink(root)
    sh(["dvc", "repro", "train@alpaca"], root)
    reference = (root / "adapters/alpaca/adapter_model.safetensors").read_bytes()
    ref_metrics = (root / "reports/train/alpaca/metrics.json").read_bytes()

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "train@alpaca"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    target = root / CKPT / "checkpoint-30" / "trainer_state.json"
    while not target.exists():
        assert proc.poll() is None, "the stage finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "adapters/alpaca/adapter_model.safetensors").exists()

    res = sh(["dvc", "repro", "train@alpaca"], root)
    assert "resuming from" in res.stdout + res.stderr
    assert "checkpoint-" in res.stdout + res.stderr
    assert (root / "adapters/alpaca/adapter_model.safetensors").read_bytes() == reference
    import json

    card = json.loads((root / "adapters/alpaca/run_card.json").read_text())
    assert card["resumed"] is True and card["train"]["global_step"] == 60
    # Per-step values (loss, grad norm, learning rate, step, epoch) match exactly. Two
    # running totals do not survive a resume in TRL/transformers and are left out:
    # num_tokens and the end-of-training mean loss count only the steps after the resume.
    final = json.loads((root / "reports/train/alpaca/metrics.json").read_text())
    ref = json.loads(ref_metrics)
    for volatile in ("num_tokens", "train"):
        final.pop(volatile, None)
        ref.pop(volatile, None)
    assert final == ref
    assert not (root / CKPT).exists()  # removed once the adapter is written


# The new trainers (continual pretraining, DPO/ORPO) resume the same way; their stage
# modules run directly in a scratch project (no DVC), on the session's tiny base, with
# a checkpoint every 4 of 12 steps.
FRONTIER = {
    "pretrain": (["pretrain", "medical"], "pretrain", "medical", "adapters/pretrain_medical"),
    "train_pref": (["train_pref", "dpo"], "train_pref", "dpo", "adapters/dpo"),
}


@pytest.fixture(scope="module")
def scratch(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from .conftest import ROOT, run_module

    root = tmp_path_factory.mktemp("frontier")
    shutil.copytree(ROOT / "data/raw", root / "data/raw")
    shutil.copytree(tiny_base, root / "models/base/text")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in (data["pretrain"]["medical"], data["train_pref"]["dpo"]):
        section["optim"] |= {"max_steps": 12, "per_device_train_batch_size": 4}
        section |= {"save_steps": 4, "logging_steps": 2, "backend": "hf"}
    (root / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    for s in ("medical", "preference"):
        res = run_module(["stages.prepare", s], root, env=_env())
        assert res.returncode == 0, res.stderr[-2000:]
    return root


def _env() -> dict:
    from .conftest import ROOT

    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", "DVC_NO_ANALYTICS": "1"}


@pytest.mark.parametrize("which", sorted(FRONTIER))
def test_new_trainers_resume_after_sigkill_to_the_same_adapter(scratch: Path, which: str) -> None:
    import shutil
    import sys

    from .conftest import run_module

    argv, stage_dir, name, adapter = FRONTIER[which]
    weights = scratch / adapter / "adapter_model.safetensors"
    done = run_module([f"stages.{argv[0]}", argv[1]], scratch, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    reference = weights.read_bytes()
    shutil.rmtree(scratch / adapter)

    proc = subprocess.Popen(
        [sys.executable, "-m", f"stages.{argv[0]}", argv[1]],
        cwd=scratch,
        env={**os.environ, **_env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = scratch / ".tunelab/checkpoints" / stage_dir / name
    deadline = time.monotonic() + 600
    while not (ckpt / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None, "the stage finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not weights.exists()

    res = run_module([f"stages.{argv[0]}", argv[1]], scratch, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout + res.stderr
    assert weights.read_bytes() == reference
    import json

    card = json.loads((scratch / adapter / "run_card.json").read_text())
    assert card["resumed"] is True and card["train"]["global_step"] == 12
    assert not ckpt.exists()
