"""The run card written next to every adapter: what produced it, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab import stage
from tunelab.io import sha256_path


def run_card(
    scenario: str,
    section: str,
    params: Any,
    inputs: dict[str, Path | str],
    wall_seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """Params used, input hashes, code revision, libraries, hardware, wall time."""
    hashes = {}
    for name, path in inputs.items():
        p = Path(path)
        hashes[name] = {"path": str(path), "sha256": sha256_path(p) if p.exists() else None}
    return {
        "scenario": scenario,
        "params_section": section,
        "params": params.model_dump(),
        "seed": params.seed,
        "inputs": hashes,
        "code": stage.code_revision(),
        "libraries": stage.library_versions(),
        "hardware": stage.hardware(),
        "wall_seconds": round(wall_seconds, 2),
        **extra,
    }
