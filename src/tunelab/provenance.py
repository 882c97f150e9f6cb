"""Where a result came from: the code revision, library versions, hardware, wall time.

Run cards (tunelab.training.runcard), base cards and export cards record these.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "unsloth",
    "unsloth_zoo",
    "bitsandbytes",
    "vllm",
    "lm_eval",
    "dvc",
    "dvclive",
    "tunelab",
)


DVC_OWN_FILES = ("dvc.lock", ".dvcignore")  # and everything under .dvc/, *.dvc pointers


def pipeline_outputs() -> tuple[list[str], list[str]]:
    """(declared outputs of dvc.yaml, folders of its git-tracked outputs), relative paths.

    Read with DVC's own parser (templating and foreach resolved). A stage command runs
    while `dvc repro` has released the repository lock, so this works inside a stage.
    The folders of git-tracked (cache: false) outputs count whole: dvclive writes more
    files there than the declared ones (train@gsm8k's warm-up curves beside its own).
    """
    try:
        from dvc.repo import Repo

        with Repo(".") as repo:
            outs = list(repo.index.outs)
            root = repo.root_dir
    except Exception:  # noqa: BLE001 - no DVC, not a DVC repo, or a dvc.yaml DVC cannot read
        return [], []
    declared = sorted({os.path.relpath(o.fs_path, root) for o in outs})
    tracked = sorted(
        {os.path.dirname(os.path.relpath(o.fs_path, root)) for o in outs if not o.use_cache}
    )
    return declared, [d for d in tracked if d]


def _is_pipeline_file(path: str, declared: list[str], folders: list[str]) -> bool:
    name = os.path.basename(path)
    if path in DVC_OWN_FILES or path.startswith(".dvc/") or path.endswith(".dvc"):
        return True
    inside = [*declared, *folders]
    if any(path == p or path.startswith(p + "/") for p in inside):
        return True
    # DVC keeps the .gitignore beside each cached output up to date.
    return name == ".gitignore" and any(
        os.path.dirname(p) == os.path.dirname(path) for p in declared
    )


def code_revision() -> dict[str, Any]:
    """The commit, and whether the work tree differs from it in anything but the pipeline's
    own files (dvc.lock, .dvc/, *.dvc, the .gitignore files DVC keeps) and its declared
    outputs: a fresh clone's `dvc repro` rewrites those between stages and is not dirty."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "dirty_files": []}
    entries = status.split("\0")
    changed, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        changed.append(entry[3:])
        if entry[0] in "RC":  # a rename or copy: the next entry is the original path
            changed.append(entries[i])
            i += 1
    if changed:
        declared, folders = pipeline_outputs()
        changed = [p for p in changed if not _is_pipeline_file(p, declared, folders)]
    return {"commit": rev, "dirty": bool(changed), "dirty_files": sorted(changed)[:50]}


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["gpu_memory_gib"] = round(
                torch.cuda.get_device_properties(0).total_memory / 2**30, 1
            )
    except ImportError:
        pass
    return info


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.perf_counter() - self.start, 2)


def command_line(program: str, argv: list[str], root: Path) -> str:
    """The command line a benchmark or check writes into its committed result file, free of
    this machine's paths: the device's output folder ($OUT there) as ``$OUT``, paths
    inside the repository (``root``) relative to it."""
    out = os.environ.get("OUT")
    args = []
    for arg in argv:
        if out and arg.startswith(out.rstrip("/") + "/"):
            args.append("$OUT/" + arg[len(out.rstrip("/")) + 1 :])  # unquoted: expands there
            continue
        if arg.startswith(str(root) + os.sep):
            arg = os.path.relpath(arg, root)
        args.append(shlex.quote(arg))
    return " ".join([program, *args])
