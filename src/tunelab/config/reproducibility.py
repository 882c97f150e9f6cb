"""reproducibility: the deterministic mode every stage applies at start (tunelab.determinism)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tunelab.config.core import Section


class ReproducibilityParams(Section):
    """reproducibility: what pins a GPU run to its inputs, params and seeds.

    deterministic: torch's deterministic algorithms, cuDNN's, a fixed cuBLAS workspace,
    Inductor without numerics-changing autotuning, and a memory plan from the device's
    whole memory (docs/reliability.md says what each costs and what it cannot pin).
    warn_only: an op with no deterministic kernel warns and runs (true) or stops the
    stage with its name (false). cublas_workspace_config: CUBLAS_WORKSPACE_CONFIG's value
    (NVIDIA's ':4096:8' or ':16:8').
    """

    deterministic: bool
    warn_only: bool
    cublas_workspace_config: Annotated[str, Field(pattern=r"^(:[0-9]+:[0-9]+)+$")]
