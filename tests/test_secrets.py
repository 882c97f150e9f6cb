"""No credentials in tracked files or run cards; remote credentials live in .dvc/config.local."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

PATTERNS = {
    "AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(
        r"(?i)secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{30,}"
    ),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "password setting": re.compile(r"(?i)\bpassword\s*=\s*\S+"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
}


def scan(text: str) -> list[str]:
    return [name for name, pat in PATTERNS.items() if pat.search(text)]


def test_the_scanner_catches_each_kind() -> None:
    samples = [
        "AKIAABCDEFGHIJKLMNOP",
        "aws_secret_access_key = " + "a" * 40,
        "hf_" + "x" * 34,
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "password = hunter2",
        "ghp_" + "y" * 36,
    ]
    assert [scan(s) for s in samples] == [[n] for n in PATTERNS]


def test_tracked_files_hold_no_secrets() -> None:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    hits = []
    for rel in filter(None, files):
        path = ROOT / rel
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if rel == "tests/test_secrets.py":
            continue
        hits += [f"{rel}: {name}" for name in scan(text)]
    assert hits == []


def test_run_cards_do_not_copy_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.training.runcard import run_card

    from .conftest import section

    token, secret = "hf_" + "Q" * 34, "S" * 40
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    (tmp_path / "train.jsonl").write_text("{}\n")
    card = json.dumps(
        run_card(
            "alpaca",
            "train.alpaca",
            section("train.alpaca"),
            {"train": tmp_path / "train.jsonl"},
            1.0,
            backend="hf",
        )
    )
    assert token not in card and secret not in card and scan(card) == []
    for existing in (ROOT / "adapters").glob("*/run_card.json"):
        assert scan(existing.read_text(encoding="utf-8")) == [], existing


def test_local_dvc_config_is_never_tracked() -> None:
    ignored = (ROOT / ".dvc/.gitignore").read_text()
    assert "/config.local" in ignored
    tracked = subprocess.run(
        ["git", "ls-files", ".dvc"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert ".dvc/config.local" not in tracked
