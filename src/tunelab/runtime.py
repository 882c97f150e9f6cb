"""What every entry point does around its work: process set-up and one-line errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from tunelab.errors import TunelabError


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage body; a TunelabError becomes one line on stderr and exit 1."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from tunelab.gpus import claim_gpu

        claim_gpu()  # one GPU per queued experiment when TUNELAB_GPUS is set
        main()
        close_process_group()
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def close_process_group() -> None:
    """End a launched stage's process group before the process exits (a gloo group torn
    down by the interpreter's exit can abort the process); nothing when torch never ran."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
