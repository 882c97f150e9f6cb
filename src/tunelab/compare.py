"""`tunelab compare REV_A REV_B`: params and metric deltas of two revisions as markdown.

A thin layer over DVC's own diffs: ``dvc params diff --json`` and ``dvc metrics
diff --json`` between two git revisions (commits, branches, tags, or experiment
names from ``dvc exp show``), rendered as two markdown tables. DVC reads the
metrics files committed at each revision (reports/metrics/**, reports/train/*/
metrics.json), so nothing is recomputed. Simplified: no notion of "better";
the delta is REV_B minus REV_A and the relative delta is against |REV_A|.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.report import _is_number, _num, table


def dvc_json(args: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``dvc <args> --json`` in ``cwd`` and parse its output."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        message = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise TunelabError(f"dvc {' '.join(args)}", message.removeprefix("ERROR: ") or "failed")
    return json.loads(done.stdout or "{}")


def _label(rev: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=cwd, capture_output=True, text=True
    )
    short = done.stdout.strip()
    return f"`{rev}` ({short})" if done.returncode == 0 and short and short != rev else f"`{rev}`"


def compare(rev_a: str, rev_b: str, cwd: Path = Path("."), all_metrics: bool = False) -> str:
    """Markdown: the params that differ and the metric deltas from rev_a to rev_b."""
    params = dvc_json(["params", "diff", rev_a, rev_b], cwd)
    metrics = dvc_json(["metrics", "diff", rev_a, rev_b, *(["--all"] if all_metrics else [])], cwd)
    a, b = _label(rev_a, cwd), _label(rev_b, cwd)
    out = [f"## Compare {a} → {b}\n"]

    rows = [
        [path, key, change.get("old"), change.get("new")]
        for path, changes in sorted(params.items())
        for key, change in sorted(changes.items())
    ]
    out.append(f"### Params that differ ({len(rows)})\n")
    out.append(table(["file", "param", rev_a, rev_b], rows) if rows else "None.\n")

    rows = []
    for path, changes in sorted(metrics.items()):
        for key, change in sorted(changes.items()):
            old, new = change.get("old"), change.get("new")
            delta = change.get("diff")
            if delta is None and _is_number(old) and _is_number(new):
                delta = new - old
            rel = (
                f"{100 * delta / abs(old):+.1f}%"
                if _is_number(delta) and _is_number(old) and old != 0
                else "–"
            )
            rows.append(
                [path, key, old, new, f"{delta:+.4g}" if _is_number(delta) else _num(delta), rel]
            )
    what = "Metrics" if all_metrics else "Metrics that changed"
    out.append(f"### {what} ({len(rows)})\n")
    out.append(table(["file", "metric", rev_a, rev_b, "Δ", "Δ %"], rows) if rows else "None.\n")
    return "\n".join(out)
