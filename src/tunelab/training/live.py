"""Step curves through dvclive, minus the values that differ on every run.

transformers' DVCLiveCallback logs everything the Trainer logs, wall-clock
figures included (runtime, samples per second, FLOs); those would make two
identical runs' metrics files differ and `dvc metrics diff` noisy, so they
are dropped here. Steps are the Trainer's global steps. Curves go to <dir>/plots/metrics/*.tsv (declared as DVC
plots), summaries to <dir>/metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

VOLATILE = ("runtime", "per_second", "flos", "step_time")  # step_time: GRPO's


def live_callback(live_dir: Path, resume: bool) -> tuple[list[Any], Callable[[], None]]:
    """Trainer callbacks writing to ``live_dir`` (not touching dvc.yaml) and their closer.

    Only the main process logs: under several processes every rank would otherwise open
    the same dvclive folder and read the others' half-written files.
    """
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class StableDVCLiveCallback(DVCLiveCallback):
        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            model: Any = None,
            logs: dict | None = None,
            **kwargs: Any,
        ) -> None:
            logs = {k: v for k, v in (logs or {}).items() if not any(s in k for s in VOLATILE)}
            # The curve's x is the Trainer's global step, so a resumed run continues it
            # (DVC removed the old files; dvclive alone would restart its count at 0).
            self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    from tunelab.training.launch import is_main_process

    if not is_main_process():
        return [], lambda: None
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume)
    return [StableDVCLiveCallback(live=live)], live.end
