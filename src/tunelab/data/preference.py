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

import json
import random
from pathlib import Path
from typing import Any

from tunelab.config import PreferencePrepareParams
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


# ------------------------------------------------------------------ smoke pairs


def smoke_pairs(rng: random.Random) -> list[dict[str, str]]:
    """Pairs over the sample fact tables, plus one bad row per drop reason."""
    from tunelab.data.samples import (
        ANIMAL_QUESTIONS,
        ANIMALS,
        CAPITAL_QUESTIONS,
        CAPITALS,
        OPPOSITE_QUESTIONS,
        OPPOSITES,
    )

    def pair(prompt: str, chosen: str, wrong: str, bare: str) -> dict[str, str]:
        return {"prompt": prompt, "chosen": chosen, "rejected": rng.choice([wrong, bare])}

    rows: list[dict[str, str]] = []
    cities = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        other = rng.choice([c for c in cities if c != city])
        for q in CAPITAL_QUESTIONS:
            rows.append(
                pair(
                    q.format(x=country),
                    f"The capital of {country} is {city}.",
                    f"The capital of {country} is {other}.",
                    city,
                )
            )
    antonyms = list(OPPOSITES.values())
    for word, opp in OPPOSITES.items():
        other = rng.choice([a for a in antonyms if a != opp])
        for q, inp in OPPOSITE_QUESTIONS:
            prompt = q.format(x=word) + (f"\n\n{inp.format(x=word)}" if inp else "")
            rows.append(
                pair(
                    prompt,
                    f'The opposite of "{word}" is "{opp}".',
                    f'The opposite of "{word}" is "{other}".',
                    opp,
                )
            )
    classes = sorted(set(ANIMALS.values()))
    for animal, cls in ANIMALS.items():
        other = rng.choice([c for c in classes if c != cls])
        for q, inp in ANIMAL_QUESTIONS:
            prompt = q.format(x=animal) + (f"\n\n{inp.format(x=animal)}" if inp else "")
            a, b = ("an" if cls[0] in "aeiou" else "a"), ("an" if other[0] in "aeiou" else "a")
            rows.append(
                pair(prompt, f"The {animal} is {a} {cls}.", f"The {animal} is {b} {other}.", cls)
            )
    rng.shuffle(rows)
    # What prepare must drop: one row per reason.
    rows.insert(5, {"prompt": "What is the capital of Peru?", "chosen": "", "rejected": "Lima"})
    rows.insert(9, {"prompt": "Say it twice.", "chosen": "Twice.", "rejected": " Twice. "})
    rows.insert(13, {"prompt": "Repeat.", "chosen": "word " * 900, "rejected": "no"})
    rows.insert(17, dict(rows[2]))
    return rows


def smoke_file(rng: random.Random) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in smoke_pairs(rng)).encode()
