"""What every stage entry point shares: one-line errors, run metadata."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from tunelab.errors import TunelabError

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


def run(main: Callable[[], Any]) -> None:
    """Run a stage body; a TunelabError becomes one line on stderr and exit 1."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from tunelab.gpus import claim_gpu

        claim_gpu()  # one GPU per queued experiment when TUNELAB_GPUS is set
        main()
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def code_revision() -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": rev, "dirty": dirty}


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
