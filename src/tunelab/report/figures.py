"""The report's figures: training curves drawn with matplotlib (Agg) as PNG bytes."""

from __future__ import annotations

import fnmatch
import io
from typing import Any

from tunelab.report.discover import Series


def curve_groups(series: dict[str, Series], curves: dict[str, list[str]]) -> dict[str, list[str]]:
    """Figure title -> the series keys its globs match (each series in one figure)."""
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()
    for title, globs in curves.items():
        keys = [
            k for k in series if k not in taken and any(fnmatch.fnmatchcase(k, g) for g in globs)
        ]
        if keys:
            groups[title] = keys
            taken.update(keys)
    return groups


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def curve_figure(title: str, series: dict[str, Series], dpi: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="." if len(steps) < 40 else None, label=name)
    ax.set_title(title)
    ax.set_xlabel("step (dvclive)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig, dpi)
    plt.close(fig)
    return data
