"""GPU claiming for queued experiments: distinct GPUs per process, released on exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.gpus import claim_gpu

HOLD = (
    "import sys, time; from tunelab.gpus import claim_gpu; g = claim_gpu(wait_seconds=0.5, poll=0.05); "
    "import os; print(g, os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); time.sleep(float(sys.argv[1]))"
)


def claimed(proc: subprocess.Popen) -> list[str]:
    assert proc.stdout.readline().startswith("using GPU ")
    return proc.stdout.readline().split()


def holder(locks: Path, pool: str, seconds: float) -> subprocess.Popen:
    env = {"TUNELAB_GPUS": pool, "TUNELAB_GPU_LOCKS": str(locks), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(seconds)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_each_process_gets_its_own_gpu_and_a_dead_one_frees_it(tmp_path: Path) -> None:
    a = holder(tmp_path, "0,1", 30)
    assert claimed(a) == ["0", "0"]
    b = holder(tmp_path, "0,1", 30)
    assert claimed(b) == ["1", "1"]
    c = holder(tmp_path, "0,1", 0)
    c.wait(timeout=60)
    assert c.returncode == 1 and "no GPU of 0,1 became free" in c.stderr.read()
    a.kill()
    a.wait()
    d = holder(tmp_path, "0,1", 0)
    assert claimed(d) == ["0", "0"]  # the killed process released GPU 0
    d.wait(timeout=60)
    b.kill()
    b.wait()


def test_no_pool_or_preset_devices_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELAB_GPUS", raising=False)
    assert claim_gpu() is None
    monkeypatch.setenv("TUNELAB_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim_gpu() is None


def test_bad_pool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TUNELAB_GPUS", "0,gpu1")
    with pytest.raises(TunelabError, match="TUNELAB_GPUS: expected comma-separated GPU ids"):
        claim_gpu()
