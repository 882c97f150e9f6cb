"""Adapters through real DVC remotes: push from one clone, pull into a fresh one, same generations.

Repository A is a git + DVC repository with the project's own .dvc/config (its
default local remote) whose outputs are DVC outputs of stages named like the
pipeline's: base -> models/base/text (the tiny base) and train -> adapters/alpaca
(an adapter trained 4 steps by the real SFT code), recorded with `dvc commit`
instead of being re-run. Each test pushes A to one remote, clones A into a fresh
B (its own DVC cache, no outputs), pulls, and checks that B's base + adapter give
token-identical greedy generations. Remotes: the shipped local-directory default;
S3 served by rclone on 127.0.0.1 (credentials in A's .dvc/config.local, in B's
environment); SSH to a throwaway sshd on 127.0.0.1 (key in .dvc/config.local).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .servers import openssh, rclone_s3

pytestmark = pytest.mark.slow  # starts S3 and SSH servers on 127.0.0.1

DVC_YAML = """\
stages:
  base:
    cmd: python -m stages.base text
    outs:
      - models/base/text
  train:
    cmd: python -m stages.train alpaca
    deps:
      - models/base/text
      - data/prepared/alpaca/train.jsonl
    outs:
      - adapters/alpaca
"""
OUTPUTS = ("models/base/text", "adapters/alpaca")


def sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    full = {**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})}
    done = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def git(cwd: Path, *args: str) -> str:
    return sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd)


def dvc(cwd: Path, *args: str, env: dict | None = None) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd, env)


def file_hashes(root: Path) -> dict[str, str]:
    from tunelab.io import sha256_path

    return {
        f"{out}/{p.relative_to(root / out)}": sha256_path(p)
        for out in OUTPUTS
        for p in sorted((root / out).rglob("*"))
        if p.is_file()
    }


def greedy_ids(repo: Path, prompts: list[list[dict]]) -> list[list[int]]:
    """Token ids that base + adapter of ``repo`` generate greedily for the prompts."""
    import torch

    from tunelab.models.loading import load_adapter, load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(repo / "adapters/alpaca"), None, False)
    tok.padding_side = "left"
    base = load_causal_lm(str(repo / "models/base/text"), None, "float32", False, False)
    model = load_adapter(base, repo / "adapters/alpaca").eval()
    texts = [
        tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=24,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
    return out[:, enc["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def origin(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Repository A with base and adapter as committed DVC outputs; its greedy generations."""
    work = tmp_path_factory.mktemp("remotes")
    a = work / "a"
    a.mkdir()
    git(a, "init", "-q")
    dvc(a, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", a / ".dvc/config")  # the shipped remote set-up
    dvc(a, "config", "--local", "core.site_cache_dir", str(work / "site-cache"))
    for rel in (*OUTPUTS, "data/prepared/alpaca"):
        shutil.copytree(tiny_run / rel, a / rel)
    (a / "dvc.yaml").write_text(DVC_YAML)
    dvc(a, "commit", "-f", "-q")  # record the outputs as the stages' outs in dvc.lock
    git(a, "add", "-A")
    git(a, "commit", "-qm", "base and adapter as DVC outputs")
    lock = (a / "dvc.lock").read_text()
    assert "adapters/alpaca" in lock and "models/base/text" in lock
    rows = [json.loads(x) for x in (a / "data/prepared/alpaca/val.jsonl").open()][:4]
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]
    return {
        "work": work,
        "a": a,
        "prompts": prompts,
        "ids": greedy_ids(a, prompts),
        "hashes": file_hashes(a),
    }


def round_trip(
    origin: dict,
    name: str,
    remote: str | None,
    configure_b: object = None,
    env_a: dict | None = None,
    env_b: dict | None = None,
) -> dict[str, float]:
    """Push A to ``remote``; clone B fresh, pull, compare bytes and greedy generations."""
    a, work = origin["a"], origin["work"]
    target = ["-r", remote] if remote else []
    start = time.perf_counter()
    dvc(a, "push", *target, env=env_a)
    pushed = time.perf_counter() - start
    b = work / f"b-{name}"
    git(work, "clone", "-q", str(a), str(b))
    dvc(b, "config", "--local", "core.site_cache_dir", str(work / "site-cache-b"))
    if configure_b:
        configure_b(b)
    assert not any((b / out).exists() for out in OUTPUTS)  # a fresh clone has no outputs
    cache = b / ".dvc/cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    start = time.perf_counter()
    dvc(b, "pull", *target, env=env_b)
    pulled = time.perf_counter() - start
    assert file_hashes(b) == origin["hashes"]
    assert not (b / "adapters/alpaca").is_symlink()
    ids = greedy_ids(b, origin["prompts"])
    assert ids == origin["ids"]  # token-identical greedy generations
    assert all(len(seq) > 0 for seq in ids)
    size = sum(p.stat().st_size for out in OUTPUTS for p in (b / out).rglob("*") if p.is_file())
    timing = {"push_s": round(pushed, 2), "pull_s": round(pulled, 2), "bytes": size}
    print(f"\nremote round trip {name}: {timing}")
    return timing


def tracked_text(repo: Path) -> str:
    files = git(repo, "ls-files").split()
    return "\n".join((repo / f).read_text(errors="replace") for f in files if (repo / f).is_file())


def test_default_local_remote(origin: dict) -> None:
    """The shipped default: a folder beside the repository (../tunelab-remote)."""
    remote_dir = origin["work"] / "tunelab-remote"
    assert not remote_dir.exists()
    round_trip(origin, "local", None)
    assert remote_dir.is_dir() and any(remote_dir.rglob("*"))  # what the README promises


def test_s3_remote_rclone(origin: dict) -> None:
    a = origin["a"]
    with rclone_s3(origin["work"] / "s3") as s3:
        dvc(a, "remote", "add", "s3", f"s3://{s3.bucket}/tunelab")
        dvc(a, "remote", "modify", "s3", "endpointurl", s3.endpoint)
        dvc(a, "remote", "modify", "--local", "s3", "access_key_id", s3.access_key)
        dvc(a, "remote", "modify", "--local", "s3", "secret_access_key", s3.secret_key)
        git(a, "add", ".dvc/config")
        git(a, "commit", "-qm", "s3 remote (no credentials)")
        # credentials live in the git-ignored config.local only
        assert s3.access_key not in tracked_text(a) and s3.secret_key not in tracked_text(a)
        assert s3.secret_key in (a / ".dvc/config.local").read_text()
        git(a, "check-ignore", "-q", ".dvc/config.local")
        # B gets the credentials from its environment, as CI or a colleague would
        env_b = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        round_trip(origin, "s3", "s3", env_b=env_b)
        stored = list((origin["work"] / "s3/data" / s3.bucket).rglob("*"))
        assert any(p.is_file() for p in stored)  # the objects are on the S3 server's disk


def test_ssh_remote_openssh(origin: dict) -> None:
    a, work = origin["a"], origin["work"]
    with openssh(work / "sshd") as server:
        home = work / "ssh-home"  # known_hosts of the client, not the user's own
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh/known_hosts").write_text(server.known_hosts_line + "\n")
        env = {"HOME": str(home)}
        store = work / "ssh-store"
        dvc(a, "remote", "add", "ssh", f"ssh://{server.host}:{server.port}{store}")
        dvc(a, "remote", "modify", "--local", "ssh", "user", server.user)
        dvc(a, "remote", "modify", "--local", "ssh", "keyfile", str(server.keyfile))
        git(a, "add", ".dvc/config")
        git(a, "commit", "-qm", "ssh remote (no key path)")
        assert str(server.keyfile) not in tracked_text(a)

        def configure_b(b: Path) -> None:
            dvc(b, "remote", "modify", "--local", "ssh", "user", server.user)
            dvc(b, "remote", "modify", "--local", "ssh", "keyfile", str(server.keyfile))

        round_trip(origin, "ssh", "ssh", configure_b, env_a=env, env_b=env)
        assert any(p.is_file() for p in store.rglob("*"))
