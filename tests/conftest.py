"""Shared fixtures: repository paths, the shared datasets, a tiny base model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# The `slow` lane (`pytest -m "not slow"` leaves it out): every test that trains, runs
# `dvc repro` / `dvc exp run`, or starts a server or a browser. Tests that use a fixture
# which trains (these build or train a model) are marked here; the others carry the mark.
TRAINING_FIXTURES = frozenset({"tiny_base", "tiny_vl_base", "tiny_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def shared_dataset(*parts: str) -> Path:
    """A path under ../shared/datasets, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not available: {path} (../shared/datasets is absent)")
    return path


def params_dict() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def section(name: str, **updates: object) -> object:
    """A validated params section from params.yaml with dotted-key overrides."""
    from tunelab.config import SECTIONS

    data = params_dict()
    for part in name.split("."):
        data = data[part]
    for dotted, value in updates.items():
        node = data
        *path, leaf = dotted.split("__")
        for p in path:
            node = node[p]
        node[leaf] = value
    return SECTIONS[name].model_validate(data)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 built by the real base stage code, with a short pretraining."""
    from transformers import set_seed

    from tunelab.models.tiny import build_model, pack_blocks, pretrain, train_tokenizer

    params = section("base.text", pretrain__steps=120)
    lines = [ln for ln in (ROOT / params.corpus).read_text(encoding="utf-8").splitlines() if ln]
    set_seed(params.seed)
    tok = train_tokenizer(lines, params.tokenizer.vocab_size, params.tokenizer.min_frequency)
    model = build_model(params, tok)
    pretrain(model, pack_blocks(lines, tok, params.pretrain.seq_len), params, params.seed)
    out = tmp_path_factory.mktemp("base") / "text"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def run_module(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run `python -m ...` in cwd with the test interpreter.

    A PYTHONPATH in ``env`` is put before the one this process has (which may name the
    checkout's src/ ahead of an editable install elsewhere).
    """
    full_env = {**os.environ, **(env or {})}
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        full_env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], os.environ["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project-shaped folder with one real, briefly trained scenario (alpaca).

    The real prepare and SFT code: data/prepared/alpaca (with data_card.json),
    adapters/alpaca (LoRA, tokenizer, run_card.json) trained 4 steps on tiny_base,
    reports/train/alpaca (dvclive curves). models/base/text is a copy of tiny_base.
    """
    import shutil

    from tunelab.data.alpaca import prepare_alpaca
    from tunelab.data.common import split_records, write_prepared
    from tunelab.training.sft import train_sft

    root = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_base, root / "models/base/text")
    params = section("prepare.alpaca", source=str(ROOT / "data/raw/alpaca/sample.json"))
    records, card = prepare_alpaca(params)
    train, val = split_records(records, params.split)
    write_prepared(root / "data/prepared/alpaca", train, val[:8], card)
    cwd = os.getcwd()
    os.chdir(root)  # checkpoints go to ./.tunelab of this folder
    try:
        train_params = section(
            "train.alpaca", optim__max_steps=4, logging_steps=1, save_steps=100, backend="hf"
        )
        train_sft(
            "alpaca",
            train_params,
            "hf",
            base_dir=Path("models/base/text"),
            data_dir=Path("data/prepared/alpaca"),
            out_dir=Path("adapters/alpaca"),
            live_dir=Path("reports/train/alpaca"),
        )
    finally:
        os.chdir(cwd)
    shutil.rmtree(root / ".tunelab", ignore_errors=True)
    return root


GIT = ["git", "-c", "user.name=tunelab-test", "-c", "user.email=test@example.com"]


def sh(
    cmd: list[str], cwd: Path, timeout: int = 1800, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command with DVC analytics off; on failure show the end of its output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, (
            f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def make_clone(dest: Path) -> Path:
    """Copy the working tree (tracked and untracked-not-ignored files, no results) into a new git+DVC repo."""
    import shutil

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
    return dest


@pytest.fixture(scope="session")
def tiny_vl_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL + processor built by the real base-stage code, few pretraining steps."""
    from tunelab.models.tiny_vl import build_vision_base

    params = section(
        "base.vision",
        pretrain__steps=3,
        pretrain__batch_size=4,
        vl_align__steps=3,
        vl_align__batch_size=4,
        vl_pretrain__steps=3,
        vl_pretrain__batch_size=4,
    )
    lines = [ln for ln in (ROOT / params.corpus).read_text(encoding="utf-8").splitlines() if ln]
    model, processor, _ = build_vision_base(params, lines)
    out = tmp_path_factory.mktemp("base") / "vision"
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
