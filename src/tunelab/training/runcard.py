"""The run card written next to every adapter: what produced it, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab import provenance
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
        "code": provenance.code_revision(),
        "libraries": provenance.library_versions(),
        "hardware": provenance.hardware(),
        "wall_seconds": round(wall_seconds, 2),
        **extra,
    }


ASKED = "tunelab_asked"  # attribute of a trainer config: the keyword arguments tunelab gave it


def with_asked(config: Any, kwargs: dict[str, Any]) -> Any:
    """Remember on a TRL config what tunelab asked for (see trainer_settings)."""
    setattr(config, ASKED, dict(kwargs))
    return config


def _plain(value: Any) -> Any:
    value = getattr(value, "value", value)  # transformers' enums (schedulers, optimizers)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def trainer_settings(args: Any) -> dict[str, Any]:
    """What the trainer ran with, read back from its args after every library had its say.

    ``used``: each setting tunelab passed (from params), as the trainer holds it now;
    ``changed_by_libraries``: those whose value differs from what params asked (Unsloth,
    for one, rewrites some GRPO settings in its config class). Output paths and logging
    integrations (``report_to``, which transformers turns from "none" into []) are left out.
    """
    asked = getattr(args, ASKED, {})
    skip = {"output_dir", "report_to"}
    used = {k: _plain(getattr(args, k, None)) for k in sorted(asked) if k not in skip}
    changed = {
        k: {"asked": _plain(asked[k]), "used": v} for k, v in used.items() if v != _plain(asked[k])
    }
    return {"used": used, "changed_by_libraries": changed}
