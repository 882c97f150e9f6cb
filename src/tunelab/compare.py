"""`tunelab compare REV_A REV_B`: params and metric deltas of two revisions as markdown.

(`tunelab variants SCENARIO [REV ...]`, at the end: the LoRA-variants table over
revisions and experiments.)

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
from tunelab.report.sections import VARIANTS_NOTE, variant_row, variants_table
from tunelab.report.tables import is_number, num, table


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
            if delta is None and is_number(old) and is_number(new):
                delta = new - old
            rel = (
                f"{100 * delta / abs(old):+.1f}%"
                if is_number(delta) and is_number(old) and old != 0
                else "–"
            )
            rows.append(
                [path, key, old, new, f"{delta:+.4g}" if is_number(delta) else num(delta), rel]
            )
    what = "Metrics" if all_metrics else "Metrics that changed"
    out.append(f"### {what} ({len(rows)})\n")
    out.append(table(["file", "metric", rev_a, rev_b, "Δ", "Δ %"], rows) if rows else "None.\n")
    return "\n".join(out)


def experiment_names(cwd: Path) -> list[str]:
    """Names of the experiments based on HEAD (``dvc exp list --name-only``)."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--name-only"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise TunelabError("dvc exp list", (done.stderr.strip().splitlines() or ["failed"])[-1])
    return sorted(ln.strip() for ln in done.stdout.splitlines() if ln.strip())


def variants(scenario: str, revs: list[str] | None = None, cwd: Path = Path(".")) -> str:
    """Markdown: the LoRA-variants table of ``scenario`` over git revisions / experiments.

    Default revisions: HEAD and every experiment based on it. Each revision's params
    (train.<scenario>), evaluate metrics, svd spectra and adapter run card are read at
    that revision through DVC (git for tracked files, the DVC cache for the adapter).
    """
    import yaml
    from dvc.api import DVCFileSystem

    revs = revs or ["HEAD", *experiment_names(cwd)]
    rows = []
    for rev in revs:
        try:
            fs = DVCFileSystem(str(cwd), rev=rev)
        except Exception as err:  # noqa: BLE001 - unknown revision, not a DVC repo
            raise TunelabError(f"revision {rev}", f"cannot read it ({err})") from None

        def read(path: str, fs: Any = fs) -> Any:
            if not fs.exists(path):
                return None
            text = fs.read_text(path, encoding="utf-8")
            return yaml.safe_load(text) if path.endswith(".yaml") else json.loads(text)

        params = ((read("params.yaml") or {}).get("train") or {}).get(scenario)
        if params is None:
            raise TunelabError(f"revision {rev}: params.yaml", f"no train.{scenario} section")
        rows.append(
            variant_row(
                rev,
                read(f"adapters/{scenario}/run_card.json"),
                read(f"reports/metrics/evaluate/{scenario}.json"),
                (read("reports/metrics/svd/lora.json") or {}).get(scenario),
                params,
            )
        )
    return f"## LoRA variants: {scenario}\n\n{VARIANTS_NOTE}\n{variants_table(rows)}"
