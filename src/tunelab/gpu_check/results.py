"""What came out of a GPU check: the metrics, the run cards, the machine; two runs compared."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def collect(workdir: Path) -> dict[str, Any]:
    metrics = {
        str(p.relative_to(workdir)): json.loads(p.read_text())
        for p in sorted((workdir / "reports/metrics").rglob("*.json"))
    }
    cards = {}
    for card_path in sorted((workdir / "adapters").glob("*/run_card.json")):
        card = json.loads(card_path.read_text())
        cards[card_path.parent.name] = {
            k: card.get(k)
            for k in ("backend", "wall_seconds", "throughput", "hardware", "base_model")
            if k in card
        } | {
            "changed_by_libraries": card.get("trainer_args", {}).get("changed_by_libraries"),
            "rollout_engine": card.get("grpo", {}).get("rollout_engine"),
        }
    return {"metrics": metrics, "run_cards": cards}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["gpus"] = out.splitlines()
    return info


def compare(a: Path, b: Path) -> int:
    """Print every metric of two runs side by side; exit 1 if any differ."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out |= flat(v, f"{prefix}{k}.")
            return out
        return {prefix[:-1]: d}

    ma, mb = (flat(json.loads(p.read_text())["metrics"]) for p in (a, b))
    differ = 0
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        if isinstance(va, list) or isinstance(vb, list):
            continue
        same = va == vb
        differ += not same
        delta = (
            f"{vb - va:+.4g}"
            if not same and isinstance(va, (int, float)) and isinstance(vb, (int, float))
            else ""
        )
        print(f"{'  ' if same else '!='} {key}: {va} | {vb} {delta}")
    print(f"{differ} of {len(set(ma) | set(mb))} metrics differ")
    return 1 if differ else 0
