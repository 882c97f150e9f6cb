"""Alpaca: instruction / input / output records (JSON array or JSON Lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.config import AlpacaPrepareParams
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.errors import TunelabError

REQUIRED = ("instruction", "output")


def read_alpaca(path: Path) -> list[dict[str, Any]]:
    """Read rows from a JSON array or JSONL file; malformed files name file and row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TunelabError(str(path), "file not found") from None
    except UnicodeDecodeError as err:
        raise TunelabError(str(path), f"not UTF-8 text (byte {err.start})") from None
    if not text.strip():
        raise TunelabError(str(path), "file is empty")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise TunelabError(f"{path} line {err.lineno}", f"invalid JSON ({err.msg})") from None
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise TunelabError(f"{path} line {i}", f"invalid JSON ({err.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TunelabError(
                f"{path} row {i}", "expected an object with instruction/input/output"
            )
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise TunelabError(f"{path} row {i}", f"missing key {missing[0]!r}")
        for key in ("instruction", "input", "output"):
            if key in row and not isinstance(row[key], str):
                raise TunelabError(f"{path} row {i}", f"{key!r} must be a string")
    return rows


def prepare_alpaca(params: AlpacaPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    path = Path(params.source)
    card = DataCard("alpaca", [params.source])
    rows = read_alpaca(path)
    card.rows_read = len(rows)
    card.encodings[params.source] = "utf-8"
    records = []
    for i, row in enumerate(rows):
        instruction = row["instruction"].strip()
        inp = row.get("input", "").strip()
        output = row["output"].strip()
        if not instruction or not output:
            card.drop("empty")
            continue
        if len(instruction) + len(inp) + len(output) > params.max_chars:
            card.drop("too_long")
            continue
        user = f"{instruction}\n\n{inp}" if inp else instruction
        records.append(chat_record(params.system_prompt, user, output, row=i))
    return keep_unique(records, card), card
