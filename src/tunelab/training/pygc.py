"""Python's garbage collector during training: collections at step ends, not mid-step.

A training process holds a million or more Python objects (the model's modules and
parameters, compiled graphs, tokenizer, datasets), and every step creates thousands
more (tensor wrappers, autograd nodes). CPython's automatic collector then runs a
full (generation 2) pass from time to time, in the middle of whatever step is
running, scanning every live object: 0.3-1 s on such a heap, a pause of the host that
launches the GPU's kernels. ``train.<s>.gc_every_steps`` (torchtitan's recipe):
at the start of training the heap is collected once and frozen (``gc.freeze``: the
objects alive then are never scanned again), automatic collection is switched off,
and a young-generation pass (``gc.collect(1)``) runs at the end of every N-th step;
at the end of training the collector is back as it was. null: Python's own schedule.
"""

from __future__ import annotations

import gc
from typing import Any


def gc_callback(every_steps: int | None) -> list[Any]:
    """The Trainer callback for ``gc_every_steps`` (none when it is null)."""
    if every_steps is None:
        return []
    from transformers import TrainerCallback

    class StepEndGC(TrainerCallback):
        def __init__(self) -> None:
            self.was_enabled = gc.isenabled()

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.was_enabled = gc.isenabled()
            gc.collect()
            gc.freeze()
            gc.disable()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step % every_steps == 0:
                gc.collect(1)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            gc.unfreeze()
            if self.was_enabled:
                gc.enable()

    return [StepEndGC()]
