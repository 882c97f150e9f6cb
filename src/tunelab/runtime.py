"""What every entry point does around its work: process set-up (the GPU claim, the
deterministic mode of params ``reproducibility``) and one-line errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from tunelab.errors import TunelabError


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage body; a TunelabError becomes one line on stderr and exit 1, and so does
    torch's stop on an op with no deterministic kernel (deterministic mode)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab.determinism import explain

    try:
        from tunelab.config import load_section
        from tunelab.determinism import apply
        from tunelab.gpus import claim_gpu

        claim_gpu()  # one GPU per queued experiment when TUNELAB_GPUS is set
        apply(load_section("reproducibility"))  # before anything starts CUDA
        main()
        close_process_group()
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as err:
        named = explain(err)  # an op with no deterministic kernel: one line naming it
        if named is None:
            raise
        print(f"error: {named}", file=sys.stderr)
        sys.exit(1)


def close_process_group() -> None:
    """End a launched stage's process group before the process exits (a gloo group torn
    down by the interpreter's exit can abort the process); nothing when torch never ran."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
