"""tunelab.provenance: the run card's code revision ignores what DVC and the pipeline write."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.provenance import code_revision

from .conftest import GIT, sh

DVC_YAML = """stages:
  train:
    cmd: python train.py
    deps: [train.py]
    outs:
      - out
      - reports/train/params.yaml:
          cache: false
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repository with a committed dvc.lock and git-tracked outputs."""
    root = tmp_path / "repo"
    (root / "reports/train/plots").mkdir(parents=True)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "train.py").write_text("print('train')\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "reports/train/params.yaml").write_text("a: 1\n")
    (root / "reports/train/plots/loss.tsv").write_text("step\tloss\n")  # beside a declared out
    (root / ".gitignore").write_text("/out\n")
    sh(["git", "init", "-q"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh([*GIT, "commit", "-qm", "init"], root)
    monkeypatch.chdir(root)
    return root


def test_dvc_files_and_declared_outputs_are_not_dirt(repo: Path) -> None:
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / ".dvc/config").write_text("[core]\n    autostage = true\n")
    (repo / ".gitignore").write_text("/out\n/other\n")  # DVC keeps it beside its outputs
    (repo / "reports/train/params.yaml").write_text("a: 2\n")
    (repo / "reports/train/plots/loss.tsv").write_text("step\tloss\n1\t0.5\n")
    code = code_revision()
    assert code["commit"] and code["dirty"] is False and code["dirty_files"] == []


def test_a_code_change_is_dirt_and_named(repo: Path) -> None:
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "train.py").write_text("print('changed')\n")
    code = code_revision()
    assert code["dirty"] is True and code["dirty_files"] == ["train.py"]
