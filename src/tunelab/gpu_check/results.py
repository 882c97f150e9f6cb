"""What came out of a GPU check: the metrics, the run cards, the machine; two runs compared."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tunelab.gpu_check.workdir import CHECK

ENGINE_LINE = re.compile(r"generation engine: (\w+)")


def file_hashes(folder: Path, pattern: str) -> dict[str, str]:
    """sha256 of every file matching ``pattern`` under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob(pattern))
        if p.is_file()
    }


def engines(workdir: Path) -> dict[str, list[str]]:
    """The generation engine(s) each stage's log names (``generation engine: X``)."""
    found = {}
    for log in sorted((workdir / CHECK / "logs").glob("*.log")):
        named = ENGINE_LINE.findall(log.read_text(errors="replace"))
        if named:
            found[log.stem] = sorted(set(named))
    return found


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
    return {
        "metrics": metrics,
        "run_cards": cards,
        "engines": engines(workdir),
        "adapter_files": file_hashes(workdir / "adapters", "*/*.safetensors"),
        "metrics_files": file_hashes(workdir / "reports/metrics", "**/*.json"),
    }


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


def compare(a: Path, b: Path, out: Path | None = None) -> int:
    """Print every metric of two runs side by side and whether their adapters (safetensors
    bytes) and metrics files are identical; exit 1 if anything both runs produced differs.
    What only one run produced (a stage that timed out in the other) is listed apart.
    ``out``: the summary as JSON (what differs, by how much)."""
    ra, rb = (json.loads(p.read_text()) for p in (a, b))
    ma, mb = flatten(ra["metrics"]), flatten(rb["metrics"])
    differ: dict[str, Any] = {}
    both = sorted(k for k in set(ma) & set(mb) if not isinstance(ma[k], list))
    for key in both:
        va, vb = ma[key], mb[key]
        numbers = isinstance(va, (int, float)) and isinstance(vb, (int, float))
        delta = vb - va if va != vb and numbers else None
        if va != vb:
            differ[key] = {"a": va, "b": vb, "delta": delta}
        shown = "" if delta is None else f" {delta:+.4g}"
        print(f"{'  ' if va == vb else '!='} {key}: {va} | {vb}{shown}")
    files = {}
    for kind in ("adapter_files", "metrics_files"):
        fa, fb = ra.get(kind) or {}, rb.get(kind) or {}
        shared = sorted(set(fa) & set(fb))
        files[kind] = {
            "in_both": shared,
            "differ": [k for k in shared if fa[k] != fb[k]],
            "only_in_one": sorted(set(fa) ^ set(fb)),
        }
        f = files[kind]
        print(
            f"{kind}: {len(shared)} in both, differ: {f['differ'] or 'none'}; only in one run: "
            f"{f['only_in_one'] or 'none'}"
        )
    summary = {
        "a": str(a),
        "b": str(b),
        "metrics_in_both": len(both),
        "metrics_only_in_one": len(set(ma) ^ set(mb)),
        "metrics_differ": differ,
        "files": files,
        "identical_where_both_ran": not differ and not any(f["differ"] for f in files.values()),
        "both_complete": not (set(ma) ^ set(mb))
        and not any(f["only_in_one"] for f in files.values()),
    }
    verdict = "identical" if summary["identical_where_both_ran"] else "NOT identical"
    print(
        f"{len(differ)} of {len(both)} metrics in both runs differ: {verdict} where both ran"
        f"{'' if summary['both_complete'] else ' (one run has outputs the other lacks)'}"
    )
    if out is not None:
        out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return 0 if summary["identical_where_both_ran"] and summary["both_complete"] else 1


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        found: dict[str, Any] = {}
        for k, v in d.items():
            found |= flatten(v, f"{prefix}{k}.")
        return found
    return {prefix[:-1]: d}
