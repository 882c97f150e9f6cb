"""Preference pairs: (prompt, chosen, rejected) rows for DPO / ORPO.

A prepared record is a chat record whose assistant turn is the chosen answer, plus the
rejected one: ``{"messages": [system?, user, assistant=chosen], "rejected": str, "meta"}``,
so the SFT helpers (prompt_of, reference_of, the data card, generation scores against
the chosen answer) apply unchanged; training turns it into TRL's conversational
preference format (prompt / chosen / rejected message lists).

Every pair is checked: an empty prompt, chosen or rejected answer (``empty``), chosen
equal to rejected after whitespace normalisation (``identical``), prompt + answers over
``max_chars`` (``too_long``), an exact repeat of an earlier pair (``duplicate``). A row
that is not an object with string fields stops the stage, naming the file and row.

The smoke pairs are the project's own (``smoke_pairs``): each fact of the sample tables
asked as in the alpaca data, the reference sentence chosen, and rejected either a wrong
fact in the same sentence (another capital, antonym or class) or the right answer off
format (the bare word, no sentence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.prepare import PreferencePrepareParams
from tunelab.data.common import DataCard, chat_record
from tunelab.data.text import load_records, read_utf8
from tunelab.errors import TunelabError


def _text(row: dict, key: str | None, where: str) -> str:
    if key is None:
        return ""
    if key not in row:
        raise TunelabError(where, f"missing key {key!r}")
    value = row[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TunelabError(where, f"{key!r} must be a string")
    return value.strip()


def _norm(text: str) -> str:
    return " ".join(text.split())


def prepare_preference(params: PreferencePrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    path = Path(params.source)
    decoded = read_utf8(path)
    rows = load_records(path, decoded.text, jsonl=True)  # (where: file line N / record N, row)
    card = DataCard("preference", [params.source], rows_read=len(rows))
    card.encodings[params.source] = decoded.encoding
    cols = params.columns
    records, seen = [], set()
    for i, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise TunelabError(where, "expected an object with prompt/chosen/rejected")
        prompt = _text(row, cols.prompt, where)
        chosen = _text(row, cols.chosen, where)
        rejected = _text(row, cols.rejected, where)
        system = _text(row, cols.system, where) or params.system_prompt
        if not prompt or not chosen or not rejected:
            card.drop("empty")
            continue
        if _norm(chosen) == _norm(rejected):
            card.drop("identical")
            continue
        if len(prompt) + len(chosen) + len(rejected) > params.max_chars:
            card.drop("too_long")
            continue
        key = (system, prompt, chosen, rejected)
        if key in seen:
            card.drop("duplicate")
            continue
        seen.add(key)
        record = chat_record(system, prompt, chosen, row=i)
        records.append({**record, "rejected": rejected})
    card.extra["rejected_chars"] = _mean_len([r["rejected"] for r in records])
    return records, card


def _mean_len(texts: list[str]) -> float:
    return round(sum(len(t) for t in texts) / len(texts), 1) if texts else 0.0


def trl_pairs(records: list[dict[str, Any]]) -> list[dict[str, list[dict[str, str]]]]:
    """TRL's conversational preference rows: prompt messages, chosen and rejected turns."""
    return [
        {
            "prompt": r["messages"][:-1],
            "chosen": [r["messages"][-1]],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in records
    ]
