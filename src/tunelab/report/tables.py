"""Markdown tables for the report and `tunelab compare`: cells escaped for GitHub and
markdown-it alike, metric files as base | tuned | delta tables or matrices, run cards."""

from __future__ import annotations

import html
import re
from typing import Any


def num(value: Any) -> str:
    """A number as the report shows it (booleans lower-case, None as a dash)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "–"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


# Markdown punctuation that could format a cell; "_" only where it could open or close
# emphasis (not inside words, so that keys like rows_kept stay readable in the .md).
_MD_SPECIAL = re.compile(r"([\\`*\[\]#!|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


class Raw(str):
    """Markdown that a table cell takes as it is (a link the report itself wrote)."""


def cell(value: Any, max_chars: int | None = None) -> str:
    """Text safe inside a markdown table cell (GitHub and markdown-it alike)."""
    if isinstance(value, Raw):
        return str(value)
    text = value if isinstance(value, str) else num(value)
    if isinstance(value, list | tuple):
        text = ", ".join(num(v) for v in value)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    text = html.escape(text, quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r", "").replace("\n", "<br>")


def table(header: list[str], rows: list[list[Any]], max_chars: int | None = None) -> str:
    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v, max_chars) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists of scalars stay one value."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
    else:
        out[prefix.rstrip(".")] = obj
    return out


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def matrix(value: Any) -> tuple[list[str], list[str], dict[str, dict[str, Any]]] | None:
    """A mapping of two or more mappings with the same (flattened) keys, as rows x columns."""
    if not isinstance(value, dict) or len(value) < 2:
        return None
    if not all(isinstance(v, dict) for v in value.values()):
        return None
    flat = {str(k): flatten(v) for k, v in value.items()}
    columns = list(next(iter(flat.values())))
    if not columns or any(list(v) != columns for v in flat.values()):
        return None
    return sorted(flat, key=_key_order), columns, flat


def _matrix_table(name: str, rows: list[str], columns: list[str], flat: dict) -> str:
    if len(columns) > len(rows) + 2:  # wide: one row per metric instead
        return table([name or "metric", *rows], [[c, *(flat[r][c] for r in rows)] for c in columns])
    return table([name or "", *columns], [[r, *(flat[r][c] for c in columns)] for r in rows])


def metric_table(metrics: dict[str, Any]) -> str:
    """base | tuned | delta when the file compares two models; a matrix for a mapping of
    like mappings (per rank, per scenario); key | value for the rest."""
    if isinstance(metrics.get("base"), dict) and isinstance(metrics.get("tuned"), dict):
        base, tuned = flatten(metrics["base"]), flatten(metrics["tuned"])
        rows = []
        for key in list(base) + [k for k in tuned if k not in base]:
            b, t = base.get(key), tuned.get(key)
            delta = round(t - b, 6) if is_number(b) and is_number(t) else None
            rows.append([key, b, t, f"{delta:+.4g}" if delta is not None else "–"])
        rest = {
            k: v
            for k, v in flatten(
                {k: v for k, v in metrics.items() if k not in ("base", "tuned")}
            ).items()
            if not k.startswith("delta.")
        }
        text = table(["metric", "base", "tuned", "Δ (tuned − base)"], rows)
        if rest:
            text += "\n" + ", ".join(f"{k}: {num(v)}" for k, v in rest.items()) + "\n"
        return text
    whole = matrix(metrics)
    if whole:
        return _matrix_table("", *whole)
    parts, rest = [], {}
    for key, value in metrics.items():
        found = matrix(value)
        if found:
            parts.append(_matrix_table(str(key), *found))
        else:
            rest |= flatten(value, f"{key}.")
    text = table(["metric", "value"], [[k, v] for k, v in rest.items()]) if rest else ""
    return "\n".join([text, *parts]) if text else "\n".join(parts)


def _short(key: str, value: Any) -> Any:
    if isinstance(value, str) and (key.endswith("sha256") or key.endswith("commit")):
        return value[:12]
    return value


def run_card_markdown(card: dict[str, Any]) -> str:
    params = card.get("params")
    shown = {k: v for k, v in card.items() if k not in ("params", "libraries")}
    rows = [[k, _short(k, v)] for k, v in flatten(shown).items()]
    libraries = card.get("libraries") or {}
    if libraries:
        rows.append(["libraries", ", ".join(f"{k} {v}" for k, v in sorted(libraries.items()))])
    text = table(["field", "value"], rows)
    if isinstance(params, dict):
        section = card.get("params_section", "params")
        text += (
            f"\n<details><summary>params ({html.escape(str(section))})</summary>\n\n"
            + table(["key", "value"], [[k, v] for k, v in flatten(params).items()])
            + "\n</details>\n"
        )
    return text
