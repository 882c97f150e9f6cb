"""`tunelab gpu-check`'s scheduler on a real DVC repository of small stages.

The GPU check itself runs on a GPU (bench/results/gpu_check_h200_*.json) or with
--tiny on the CPU (~20 minutes, not in CI); here: stage order, parallel runs, a failure
that skips only its descendants, the error lines, the comparison of two runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tunelab.gpu_check.results import compare
from tunelab.gpu_check.scheduler import GpuPoller, schedule
from tunelab.gpu_check.workdir import CHECK

from .conftest import GIT, sh

STEP = """
import sys, time
what, out = sys.argv[1], sys.argv[2]
if what == "fail":
    print("error: data/x.csv: row 3: bad")
    sys.exit(1)
if what == "crash":
    raise KeyError("train.alpaca.lora.rank")
time.sleep(float(what))
open(out, "w").write(out)
"""
DVC_YAML = """
stages:
  first: {cmd: python step.py 0 a.txt, deps: [step.py], outs: [a.txt]}
  broken: {cmd: python step.py fail b.txt, deps: [a.txt], outs: [b.txt]}
  after_broken: {cmd: python step.py 0 c.txt, deps: [b.txt], outs: [c.txt]}
  crash: {cmd: python step.py crash d.txt, deps: [a.txt], outs: [d.txt]}
  sibling: {cmd: python step.py 1 e.txt, deps: [a.txt], outs: [e.txt]}
"""


def test_stages_run_once_their_upstream_passed_and_a_failure_skips_only_descendants(
    tmp_path: Path,
) -> None:
    sh(["git", "init", "-q"], tmp_path)
    sh([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "step.py").write_text(STEP)
    sh(["git", "add", "-A"], tmp_path)
    sh([*GIT, "commit", "-qm", "stages"], tmp_path)
    shim = tmp_path / "bin"  # dvc.yaml says `python`; the test interpreter runs it
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{shim}:{os.environ['PATH']}"}
    (tmp_path / CHECK).mkdir()
    poller = GpuPoller()
    results = schedule(tmp_path, env, 3, time.perf_counter() + 600, poller)
    poller.stop()
    by = {r["stage"]: r for r in results}
    assert set(by) == {"first", "broken", "after_broken", "crash", "sibling"}
    assert by["first"]["status"] == by["sibling"]["status"] == "ok"
    assert by["broken"]["status"] == "failed" and by["broken"]["exit"] != 0  # dvc: 255
    assert by["broken"]["error"] == "error: data/x.csv: row 3: bad"  # the stage's own line
    assert by["crash"]["error"] == "KeyError: 'train.alpaca.lora.rank'"  # a traceback's last
    assert by["after_broken"] == {
        "stage": "after_broken",
        "status": "skipped",
        "reason": "broken failed",
    }
    assert (tmp_path / "e.txt").read_text() == "e.txt" and not (tmp_path / "c.txt").exists()
    assert by["first"]["peak_gpu_gib"] is None  # no NVIDIA driver here: no figure, not 0
    assert (tmp_path / CHECK / "logs/broken.log").is_file()


def test_compare_lists_differing_metrics_and_files(tmp_path: Path, capsys) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    files = {"adapter_files": {"x/adapter_model.safetensors": "aa"}, "metrics_files": {}}
    a.write_text(
        json.dumps({"metrics": {"m.json": {"base": {"loss": 1.5, "rougeL": 2.0}}}} | files)
    )
    b.write_text(
        json.dumps({"metrics": {"m.json": {"base": {"loss": 1.5, "rougeL": 2.5}}}} | files)
    )
    other = {"adapter_files": {"x/adapter_model.safetensors": "ab"}, "metrics_files": {}}
    c.write_text(json.dumps({"metrics": {"m.json": {"base": {"loss": 1.5}}}} | other))
    assert compare(a, a) == 0
    assert "0 of 2 metrics in both runs differ: identical" in capsys.readouterr().out
    assert compare(a, b, out=tmp_path / "ab.json") == 1
    out = capsys.readouterr().out
    assert "!= m.json.base.rougeL: 2.0 | 2.5 +0.5" in out and "1 of 2 metrics in both" in out
    summary = json.loads((tmp_path / "ab.json").read_text())
    assert summary["metrics_differ"] == {"m.json.base.rougeL": {"a": 2.0, "b": 2.5, "delta": 0.5}}
    assert compare(a, c, out=tmp_path / "ac.json") == 1  # the adapter's bytes differ
    summary = json.loads((tmp_path / "ac.json").read_text())
    assert summary["files"]["adapter_files"]["differ"] == ["x/adapter_model.safetensors"]
    assert summary["metrics_only_in_one"] == 1 and not summary["both_complete"]


def test_a_memory_floor_spaces_the_starts(tmp_path: Path) -> None:
    """With --min-free-gib, a stage starts beside running ones only after --settle-seconds
    (here no NVIDIA driver reports free memory, so the wait alone spaces them)."""
    sh(["git", "init", "-q"], tmp_path)
    sh([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        + "".join(
            f"  s{i}: {{cmd: python step.py 2 o{i}.txt, deps: [step.py], outs: [o{i}.txt]}}\n"
            for i in range(3)
        )
    )
    (tmp_path / "step.py").write_text(STEP)
    sh(["git", "add", "-A"], tmp_path)
    sh([*GIT, "commit", "-qm", "stages"], tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{shim}:{os.environ['PATH']}"}
    (tmp_path / CHECK).mkdir()
    poller = GpuPoller()
    results = schedule(tmp_path, env, 3, time.perf_counter() + 600, poller, 8.0, 1.5)
    poller.stop()
    starts = sorted(r["started_at_seconds"] for r in results)
    assert all(r["status"] == "ok" for r in results)
    assert all(b - a >= 1.4 for a, b in zip(starts, starts[1:], strict=False)), starts
