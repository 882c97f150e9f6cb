"""Preference pairs (prompt, chosen, rejected) over the sample fact tables."""

from __future__ import annotations

import json
import random

from tunelab.samples.facts import (
    ANIMAL_QUESTIONS,
    ANIMALS,
    CAPITAL_QUESTIONS,
    CAPITALS,
    OPPOSITE_QUESTIONS,
    OPPOSITES,
)


def smoke_pairs(rng: random.Random) -> list[dict[str, str]]:
    """Pairs over the sample fact tables, plus one bad row per drop reason."""

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
