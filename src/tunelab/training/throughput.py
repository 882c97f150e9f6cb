"""Training throughput as the run card reports it: real tokens per second and peak memory.

Real tokens are the tokens the model is fed, padding excluded: the sum of the
attention mask when the batch has one, else every input id (packed,
padding-free batches carry none). They are counted by a forward pre-hook on
the trained model, so the count is exact whatever the collator or the backend
(Unsloth, PEFT) does, and only training forwards count. The clock is read,
after a device synchronisation, at the end of every optimizer step, so a step's
time is everything between two step ends (data, forward, backward, optimizer,
logging). Simplified: the first ``WARMUP_STEPS`` optimizer steps (compilation,
allocator and autotuning warm-up) are left out of the rate when the run has
more steps than that. Peak memory is the CUDA allocator's peak over the whole
training run (weights included).
"""

from __future__ import annotations

import time
from typing import Any

WARMUP_STEPS = 2


def sync_device() -> None:
    """Wait for the GPU's queued work (nothing on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ThroughputMeter:
    """Attach to a transformers Trainer before ``train()``; read ``summary()`` after."""

    def __init__(self) -> None:
        self.tokens = 0  # real tokens fed in training forwards so far (as of the last mark)
        self._pending: list[Any] = []  # attention-mask sums not read yet (device tensors)
        self.marks: list[tuple[float, int]] = []  # (clock, tokens) at train start and step ends
        self._handle: Any = None

    def count(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: add the real tokens of one training forward."""
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 2:
            # summed on the device and read at the step's end (mark), after its sync: an
            # int() here would stop the host until the GPU had caught up, every forward
            self._pending.append(mask.sum())
        elif ids is not None:
            self.tokens += ids.numel()

    def _settle(self) -> None:
        if self._pending:
            self.tokens += int(sum(int(n) for n in self._pending))
            self._pending.clear()

    def mark(self) -> None:
        sync_device()
        self._settle()
        self.marks.append((time.perf_counter(), self.tokens))

    def attach(self, trainer: Any) -> ThroughputMeter:
        from transformers import TrainerCallback

        meter = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                import torch

                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                meter.mark()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                meter.mark()

        self._handle = trainer.model.register_forward_pre_hook(self.count, with_kwargs=True)
        trainer.add_callback(_Callback())
        return self

    def summary(self) -> dict[str, Any]:
        import torch

        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        steps = max(len(self.marks) - 1, 0)
        skip = WARMUP_STEPS if steps > WARMUP_STEPS else 0
        out: dict[str, Any] = {"steps": steps, "warmup_steps_left_out": skip}
        if steps:
            (t0, n0), (t1, n1) = self.marks[skip], self.marks[-1]
            seconds, tokens = t1 - t0, n1 - n0
            out |= {
                "steps_timed": steps - skip,
                "tokens_timed": tokens,
                "seconds_timed": round(seconds, 3),
                "tokens_per_step": round(tokens / (steps - skip), 1),
                "seconds_per_step": [
                    round(b[0] - a[0], 4) for a, b in zip(self.marks, self.marks[1:], strict=False)
                ],
                "tokens_each_step": [
                    b[1] - a[1] for a, b in zip(self.marks, self.marks[1:], strict=False)
                ],
                "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
            }
        if torch.cuda.is_available():
            out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            out["device"] = torch.cuda.get_device_name(0)
        else:
            out["device"] = "cpu"
        return out
