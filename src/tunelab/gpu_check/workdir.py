"""The GPU check's scratch copy of the checkout, its environment and the package bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SITE = Path("/tmp/tunelab-site")
CHECK = ".gpu-check"  # inside the work dir: models, logs, the python shim
GIT = ["git", "-c", "user.name=tunelab-check", "-c", "user.email=check@example.com"]


def make_workdir(root: Path, workdir: Path) -> None:
    """Tracked and untracked-not-ignored files of this checkout, committed in a new repo.

    Outputs of an earlier pipeline run (reports/, dvc.lock) are left behind, so every
    stage runs; dvclive wants a git revision, hence the commit.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    if workdir.exists():
        shutil.rmtree(workdir)
    for rel in filter(None, listed.split("\0")):
        src = root / rel
        if src.is_file() and not rel.startswith(("reports/", "dvc.lock", "bench/results/")):
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / rel)
    quiet = {"capture_output": True, "check": True, "cwd": workdir}
    subprocess.run(["git", "init", "-q"], **quiet)
    subprocess.run(["git", "add", "-A"], **quiet)
    subprocess.run([*GIT, "commit", "-qm", "gpu check copy"], **quiet)
    (workdir / CHECK / "bin").mkdir(parents=True, exist_ok=True)
    # dvc.yaml runs `python -m stages...`; some images have only python3. A script, not a
    # link: a virtual environment's interpreter finds its packages from the path it is run by.
    shim = workdir / CHECK / "bin/python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    (workdir / ".git/info/exclude").write_text(f"/{CHECK}/\n")


def child_env(workdir: Path, site: Path | None, tiny: bool) -> dict[str, str]:
    path = [str(site)] if site else []
    path.append(str(workdir / "src"))
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "PATH": f"{workdir / CHECK / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "TQDM_MININTERVAL": "10",
    }
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def unpack_bundle(bundle: Path) -> Path:
    marker = SITE / ".from"
    stamp = f"{bundle.resolve()} {bundle.stat().st_size} {bundle.stat().st_mtime_ns}"
    if marker.is_file() and marker.read_text() == stamp:
        return SITE
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(SITE.parent, filter="data")  # the bundle holds one folder, site/
    (SITE.parent / "site").rename(SITE)
    marker.write_text(stamp)
    return SITE


def run(cmd: list[str], workdir: Path, env: dict[str, str], what: str) -> None:
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: {what} failed:\n{(res.stdout + res.stderr)[-3000:]}")
