"""End to end: `dvc repro` of the default profile in a temporary clone of the working tree.

One module-scoped run of the whole smoke pipeline (minutes), then checks on
its outputs, a no-op rerun, and a rerun after an evaluation-only change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow
TEXT_SCENARIOS = ("alpaca", "medical", "legal")
GIT = ["git", "-c", "user.name=tunelab-test", "-c", "user.email=test@example.com"]


def sh(cmd: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    )
    return res


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree's files (tracked and untracked-not-ignored), without DVC outputs, as a new repo."""
    dest = tmp_path_factory.mktemp("clone") / "tunelab"
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh([*GIT, "commit", "-qm", "clone"], dest)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(dest.parent / "site-cache")], dest)
    start = time.perf_counter()
    res = sh(["dvc", "repro"], dest)
    print(f"\ndvc repro (smoke profile, from scratch): {time.perf_counter() - start:.0f} s")
    (dest.parent / "repro.log").write_text(res.stdout + res.stderr)
    return dest


def test_every_text_scenario_produces_adapter_and_metrics(clone: Path) -> None:
    for s in TEXT_SCENARIOS:
        assert (clone / f"adapters/{s}/adapter_model.safetensors").is_file()
        card = json.loads((clone / f"adapters/{s}/run_card.json").read_text())
        assert card["params_section"] == f"train.{s}" and card["inputs"]["train"]["sha256"]
        data_card = json.loads((clone / f"data/prepared/{s}/data_card.json").read_text())
        assert data_card["rows_kept"] == data_card["train_rows"] + data_card["val_rows"]
        assert (clone / f"reports/generations/{s}.jsonl").is_file()


def test_tuned_beats_base_on_held_out_prompts(clone: Path) -> None:
    for s in TEXT_SCENARIOS:
        m = json.loads((clone / f"reports/metrics/evaluate/{s}.json").read_text())
        assert m["tuned"]["val_loss"] < m["base"]["val_loss"], s
        assert m["tuned"]["rougeL"] > m["base"]["rougeL"] + 10, s
        assert m["tuned"]["chrf"] > m["base"]["chrf"] + 10, s
    alpaca = json.loads((clone / "reports/metrics/evaluate/alpaca.json").read_text())
    assert alpaca["tuned"]["exact_match"] > alpaca["base"]["exact_match"]


def test_dvc_sees_metrics_and_plots(clone: Path) -> None:
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], clone).stdout)
    files = next(iter(shown.values()))["data"]
    assert "reports/metrics/evaluate/alpaca.json" in files
    sh(["dvc", "plots", "show", "--json"], clone)


def test_second_repro_is_a_no_op(clone: Path) -> None:
    start = time.perf_counter()
    res = sh(["dvc", "repro"], clone)
    print(f"\nsecond dvc repro: {time.perf_counter() - start:.1f} s")
    assert "Running stage" not in res.stdout
    assert "up to date" in res.stdout


def test_evaluation_param_change_reruns_only_evaluation(clone: Path) -> None:
    import yaml

    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["evaluate"]["alpaca"]["decoding"]["max_new_tokens"] += 8
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    res = sh(["dvc", "repro"], clone)
    ran = {
        line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage")
    }
    assert ran == {"evaluate@alpaca"} or ran - {"report"} == {"evaluate@alpaca"}, ran
