"""Deterministic mode (params ``reproducibility``): a GPU run that depends on nothing but its
inputs, params and seeds.

On the CPU tunelab's runs are byte-identical from run to run already. On a GPU the
libraries leave choices to the moment: which cuBLAS workspace a reduction gets, which
backward kernel accumulates with atomics, which kernel configuration an autotuner times
fastest, how much memory happens to be free. ``apply`` pins them in every stage process
before CUDA starts (tunelab.runtime.run_stage):

* cuBLAS: CUBLAS_WORKSPACE_CONFIG (``cublas_workspace_config``) fixes its workspaces, NVIDIA's
  condition for cuBLAS results that repeat bit for bit;
* ``torch.use_deterministic_algorithms(True)``: ops with a nondeterministic CUDA kernel
  (index_add / scatter_add / index_put with accumulation, SDPA's flash and memory-efficient
  backward, ...) take their deterministic implementation; an op that has none stops the
  stage with one line naming it, or with ``warn_only`` warns and runs anyway;
* cuDNN: deterministic algorithms only, no choice by benchmark;
* Inductor (torch.compile): no on-device benchmarking that changes numerics
  (``torch._inductor.config.deterministic``, where this torch has it);
* the memory plan budgets from the device's whole memory, not from what happens to be free
  (another process on the GPU could otherwise change the micro-batch: tunelab.training.
  memory_plan reads ``torch.are_deterministic_algorithms_enabled()``).

Seeds are each stage's own (transformers' set_seed: Python, NumPy, torch CPU and CUDA,
before the model is built), the Trainer's data order its data_seed, and the continuous
engine draws from torch's CUDA generator, whose offsets a CUDA graph replay advances the
same way every run. Greedy rows that must not depend on the other rows of their batch
(the slot count, refill) need the batch-invariant kernels as well
(``generation.batch_invariant``, tunelab.generation.invariant): determinism repeats a run,
batch invariance makes its rows independent of the schedule.
"""

from __future__ import annotations

import os
import re
from typing import Any

from tunelab.errors import TunelabError

KEY = "reproducibility.deterministic"
NOT_DETERMINISTIC = re.compile(r"^(\S+?) does not have a deterministic implementation")


def apply(params: Any) -> dict[str, Any]:
    """Pin what ``params`` (the reproducibility section) asks; return what was set."""
    if not params.deterministic:
        return {"deterministic": False}
    wanted = params.cublas_workspace_config
    present = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if present not in (None, wanted):
        raise TunelabError(
            f"{KEY}",
            f"CUBLAS_WORKSPACE_CONFIG is {present!r} in the environment, params ask "
            f"{wanted!r} (reproducibility.cublas_workspace_config): unset one",
        )
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized() and present is None:
        raise TunelabError(
            KEY,
            "CUDA was started before the deterministic settings could be applied "
            "(CUBLAS_WORKSPACE_CONFIG must be set first); apply them at process start",
        )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = wanted
    torch.use_deterministic_algorithms(True, warn_only=params.warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    applied = {
        "deterministic": True,
        "warn_only": params.warn_only,
        "cublas_workspace_config": wanted,
        "cudnn_deterministic": True,
    }
    try:
        import torch._inductor.config as inductor

        if hasattr(inductor, "deterministic"):
            inductor.deterministic = True
            applied["inductor_deterministic"] = True
    except ImportError:
        pass
    return applied


def explain(err: BaseException) -> TunelabError | None:
    """torch's error for an op with no deterministic kernel, as one line naming the op and
    the key that would let it run (None for any other error)."""
    found = NOT_DETERMINISTIC.match(str(err).strip())
    if found is None:
        return None
    return TunelabError(
        KEY,
        f"{found.group(1)} has no deterministic kernel on this device; set "
        "reproducibility.warn_only: true to run it anyway (that op's results may then "
        "differ between runs)",
    )
