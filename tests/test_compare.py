"""Comparing experiments: DVC's params/metrics/plots diffs and `tunelab compare` between commits.

A temporary git + DVC repository with a one-stage pipeline (a few lines of
Python that turn one hyperparameter into a metrics file and a dvclive-style
curve, laid out like the project's stages) stands in for the full smoke
pipeline, which takes minutes; the DVC commands and tunelab compare are the
real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.compare import compare
from tunelab.errors import TunelabError

pytestmark = pytest.mark.slow  # runs dvc repro and dvc exp run

STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))["train"]["toy"]
loss = [1.0 / (1 + p["learning_rate"] * s) for s in range(p["steps"])]
out = pathlib.Path("reports/metrics/evaluate"); out.mkdir(parents=True, exist_ok=True)
json.dump({"base": {"val_loss": 1.0}, "tuned": {"val_loss": loss[-1]}, "samples": 8},
          open(out / "toy.json", "w"))
plots = pathlib.Path("reports/train/toy/plots/metrics"); plots.mkdir(parents=True, exist_ok=True)
(plots / "loss.tsv").write_text("step\\tloss\\n" + "".join(f"{i}\\t{v}\\n" for i, v in enumerate(loss)))
"""

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.toy]
    metrics:
      - reports/metrics/evaluate/toy.json: {cache: false}
    plots:
      - reports/train/toy/plots/metrics: {cache: false, x: step}
"""


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def git(*args: str, cwd: Path) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd)


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two commits of a pipeline that differ in train.toy.learning_rate only."""
    root = tmp_path_factory.mktemp("compare")
    git("init", "-q", cwd=root)
    dvc("init", "-q", cwd=root)
    dvc("config", "--local", "core.site_cache_dir", str(root.parent / "site-cache"), cwd=root)
    (root / "train.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    for lr in ("0.1", "0.3"):
        (root / "params.yaml").write_text(
            f"train:\n  toy:\n    learning_rate: {lr}\n    steps: 5\n"
        )
        dvc("repro", "-q", cwd=root)
        git("add", "-A", cwd=root)
        git("commit", "-qm", f"lr {lr}", cwd=root)
    return root


def test_dvc_params_metrics_plots_diff(repo: Path) -> None:
    params = json.loads(dvc("params", "diff", "HEAD~1", "HEAD", "--json", cwd=repo))
    # exactly the one hyperparameter that differs
    assert params == {
        "params.yaml": {
            "train.toy.learning_rate": {"old": 0.1, "new": 0.3, "diff": pytest.approx(0.2)}
        }
    }

    metrics = json.loads(dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=repo))
    change = metrics["reports/metrics/evaluate/toy.json"]["tuned.val_loss"]
    assert change["old"] == pytest.approx(1 / 1.4) and change["new"] == pytest.approx(1 / 2.2)
    assert "base.val_loss" not in metrics["reports/metrics/evaluate/toy.json"]  # unchanged

    plots = json.loads(dvc("plots", "diff", "HEAD~1", "HEAD", "--json", cwd=repo))
    (rendered,) = plots["data"]["reports/train/toy/plots/metrics/loss.tsv"]
    values = rendered["content"]["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"}
    assert len(values) == 10


def test_tunelab_compare_renders_the_deltas(repo: Path) -> None:
    text = compare("HEAD~1", "HEAD", repo)
    lines = text.splitlines()
    assert lines[0].startswith("## Compare `HEAD~1` (") and "→ `HEAD` (" in lines[0]
    assert "| params.yaml | train.toy.learning_rate | 0.1 | 0.3 |" in lines
    row = next(ln for ln in lines if "tuned.val\\_loss" in ln or "tuned.val_loss" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "reports/metrics/evaluate/toy.json"
    assert float(cells[2]) == pytest.approx(1 / 1.4, abs=1e-4)
    assert float(cells[3]) == pytest.approx(1 / 2.2, abs=1e-4)
    assert float(cells[4]) == pytest.approx(1 / 2.2 - 1 / 1.4, abs=1e-4)
    assert cells[5] == "-36.4%"
    assert "### Metrics that changed (1)" in text
    full = compare("HEAD~1", "HEAD", repo, all_metrics=True)
    assert "base.val" in full and "samples" in full

    # the same through the command line
    cli = run([sys.executable, "-m", "tunelab.cli", "compare", "HEAD~1", "HEAD"], repo)
    assert cli.strip() == text.strip()
    with pytest.raises(TunelabError, match="unknown Git revision 'nope'"):
        compare("HEAD", "nope", repo)


def test_experiment_names_compare_like_commits(repo: Path) -> None:
    """The README's flow: `dvc exp run -S ...`, then compare the experiment with HEAD."""
    dvc("exp", "run", "-q", "-S", "train.toy.learning_rate=0.5", "-n", "lr05", cwd=repo)
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo))
    names = {exp.get("name") for rev in shown for exp in (rev.get("experiments") or [])} | {
        r.get("name") for rev in shown for e in (rev.get("experiments") or []) for r in e["revs"]
    }
    assert "lr05" in names
    text = compare("HEAD", "lr05", repo)
    assert "| params.yaml | train.toy.learning_rate | 0.3 | 0.5 |" in text
    git("checkout", "-q", "--", ".", cwd=repo)  # the exp run applied its results to the workspace


VARIANT_STAGE = """\
import json, pathlib, yaml

p = yaml.safe_load(open("params.yaml"))["train"]["alpaca"]
dora = p["lora"]["use_dora"]
loss = 0.25 if dora else 0.3
out = pathlib.Path("reports/metrics"); (out / "evaluate").mkdir(parents=True, exist_ok=True)
(out / "svd").mkdir(parents=True, exist_ok=True)
json.dump({"base": {"val_loss": 4.8, "rougeL": 0.0}, "tuned": {"val_loss": loss, "rougeL": 80.0}},
          open(out / "evaluate/alpaca.json", "w"))
json.dump({"alpaca": {"dw_max_numerical_rank": 128 if dora else 16,
                      "dw_energy_top_mean": {"1": 0.5, "16": 0.9 if dora else 1.0},
                      "dw_over_w_median": 0.3, "amplification_median": 2.0}},
          open(out / "svd/lora.json", "w"))
card = pathlib.Path("adapters/alpaca"); card.mkdir(parents=True, exist_ok=True)
json.dump({"seed": 42, "wall_seconds": 31.5, "train": {"global_step": 150},
           "lora_variant": {"label": "DoRA" if dora else "LoRA", "adapter_bytes": 2_000_000,
                            "saved_r": 16, "trainable_parameters": 500_000}},
          open(card / "run_card.json", "w"))
"""

VARIANT_DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.alpaca]
    outs: [adapters/alpaca]
    metrics:
      - reports/metrics/evaluate/alpaca.json: {cache: false}
      - reports/metrics/svd/lora.json: {cache: false}
"""


def test_tunelab_variants_reads_each_experiment(tmp_path: Path) -> None:
    """`tunelab variants alpaca`: HEAD and an experiment, the adapter's run card read from
    the DVC cache at each revision (a toy stage writes files shaped like the real ones)."""
    from tunelab.compare import variants

    root = tmp_path / "repo"
    root.mkdir()
    git("init", "-q", cwd=root)
    dvc("init", "-q", cwd=root)
    dvc("config", "--local", "core.site_cache_dir", str(tmp_path / "site-cache"), cwd=root)
    (root / "train.py").write_text(VARIANT_STAGE)
    (root / "dvc.yaml").write_text(VARIANT_DVC_YAML)
    (root / "params.yaml").write_text(
        "train:\n  alpaca:\n    lora: {use_dora: false, use_rslora: false, init: default}\n"
        "    optim: {loraplus_lr_ratio: null}\n"
    )
    dvc("repro", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-qm", "baseline", cwd=root)
    dvc("exp", "run", "-q", "-S", "train.alpaca.lora.use_dora=true", "-n", "dora", cwd=root)
    git("checkout", "-q", "--", ".", cwd=root)
    dvc("checkout", "-q", cwd=root)

    text = variants("alpaca", None, root)
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("| run"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {
        cells[0]: dict(zip(columns, cells, strict=True))
        for ln in lines[lines.index(header) + 2 :]
        if ln.startswith("|")
        for cells in [[c.strip() for c in ln.strip("|").split("|")]]
    }
    assert set(rows) == {"HEAD", "dora"}
    assert rows["HEAD"]["variant"] == "LoRA" and rows["dora"]["variant"] == "DoRA"
    assert rows["HEAD"]["held-out loss"] == "0.3" and rows["dora"]["held-out loss"] == "0.25"
    assert rows["dora"]["ΔW rank"] == "128" and rows["dora"]["adapter MB"] == "2"
    assert rows["HEAD"]["train s"] == "31.5" and rows["HEAD"]["steps"] == "150"
    with pytest.raises(TunelabError, match="revision nope"):
        variants("alpaca", ["nope"], root)
