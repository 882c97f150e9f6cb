"""Alpaca: instruction / input / output records (JSON array or JSON Lines).

The record keys come from ``prepare.alpaca.fields`` (``input`` may be null for
records that have none). Errors name the record as an editor shows it: the
1-based record number in a JSON array, the line number in JSON Lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.prepare import AlpacaPrepareParams, InstructionFieldsParams
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.data.text import load_records, read_utf8
from tunelab.errors import TunelabError


def check_fields(
    where: str, row: Any, fields: InstructionFieldsParams, param: str
) -> tuple[str, str, str]:
    """(instruction, input, output) of one record; every missing or mistyped key named."""
    names = {"instruction": fields.instruction, "input": fields.input, "output": fields.output}
    if not isinstance(row, dict):
        keys = "/".join(n for n in names.values() if n)
        raise TunelabError(where, f"expected an object with {keys}, found {type(row).__name__}")
    missing = [repr(names[k]) for k in ("instruction", "output") if names[k] not in row]
    if missing:
        found = ", ".join(map(str, row)) or "none"
        raise TunelabError(
            where,
            f"missing key{'s' * (len(missing) > 1)} {', '.join(missing)} "
            f"(keys found: {found}; the names come from {param})",
        )
    values = []
    for key in ("instruction", "input", "output"):
        name = names[key]
        value = row.get(name) if name else None
        if value is None and key == "input":
            value = ""
        if not isinstance(value, str):
            raise TunelabError(where, f"{name!r} must be a string, found {type(value).__name__}")
        values.append(value)
    return values[0], values[1], values[2]


def read_alpaca(path: Path, fields: InstructionFieldsParams, card: DataCard) -> list[tuple]:
    """(where, instruction, input, output) of every record; malformed files name file and row."""
    decoded = read_utf8(path)
    card.add_input(str(path), decoded)
    return [
        (where, *check_fields(where, row, fields, "prepare.alpaca.fields"))
        for where, row in load_records(path, decoded.text, jsonl=True)
    ]


def prepare_alpaca(params: AlpacaPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    path = Path(params.source)
    card = DataCard("alpaca", [params.source])
    rows = read_alpaca(path, params.fields, card)
    src = str(path)
    records = []
    for i, (_, *fields) in enumerate(rows):
        card.read_row(src)
        instruction, inp, output = (f.strip() for f in card.clean(fields, src))
        if not instruction or not output:
            card.drop("empty", src)
            continue
        if len(instruction) + len(inp) + len(output) > params.max_chars:
            card.drop("too_long", src)
            continue
        user = f"{instruction}\n\n{inp}" if inp else instruction
        records.append(chat_record(params.system_prompt, user, output, row=i))
    return keep_unique(records, card, [src] * len(records)), card
