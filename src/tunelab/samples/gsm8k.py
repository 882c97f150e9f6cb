"""GSM8K-format word problems for the smoke profile: train/test files and corpus lines.

One-equation problems with GSM8K's calculator annotation and ``#### N`` final line; the
pretraining corpus draws its problems with other names, so no train/test question can
appear in it.
"""

from __future__ import annotations

import json
import random

from tunelab.data.gsm8k import split_answer

NAMES = ["Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe", "Max", "Ella"]
# The pretraining corpus draws its problems with other names: no train/test question
# can appear in it (every template names someone).
CORPUS_NAMES = ["Ava", "Noah", "Liam", "Nora", "Owen", "Ruby", "Finn", "Ivy", "Luke", "Rosa"]
ITEMS = ["apples", "pens", "books", "cards", "eggs", "toys", "cups", "coins", "shells", "stamps"]


def _problem(rng: random.Random, names: list[str]) -> tuple[str, str]:
    """One word problem and its GSM8K-style answer ("a + b = <<a+b=c>>c\n#### c").

    The worked solution is the one equation, with GSM8K's calculator annotation.
    """
    name, friend = rng.sample(names, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    kind = rng.choices(
        ["add", "add_total", "sub", "mul", "temperature", "decimal", "thousands"],
        weights=[5, 4, 5, 3, 2, 1, 1],
    )[0]
    if kind == "add":
        q = f"{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?"
        x, y, op, c = str(a), str(b), "+", str(a + b)
    elif kind == "add_total":
        q = (
            f"{name} found {a} {item} on Monday and {b} {item} on Tuesday. "
            f"How many {item} did {name} find in total?"
        )
        x, y, op, c = str(a), str(b), "+", str(a + b)
    elif kind == "sub":
        a, b = max(a, b) + 1, min(a, b)
        q = (
            f"{name} had {a} {item} and gave {b} of them to {friend}. "
            f"How many {item} does {name} have left?"
        )
        x, y, op, c = str(a), str(b), "-", str(a - b)
    elif kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        x, y, op, c = str(a), str(b), "*", str(a * b)
    elif kind == "temperature":  # may go below zero
        q = (
            f"The temperature in {name}'s town was {a} degrees at noon. "
            f"By night it fell by {b} degrees. What was the temperature at night?"
        )
        x, y, op, c = str(a), str(b), "-", str(a - b)
    elif kind == "decimal":
        q = (
            f"A jug holds {a}.5 liters of water. {name} pours in {b} more liters. "
            "How many liters are in the jug now?"
        )
        x, y, op, c = f"{a}.5", str(b), "+", f"{a + b}.5"
    else:  # thousands: written with a separator, as GSM8K does
        q = (
            f"{name}'s farm has {a},000 chickens. The farm buys {b},000 more. "
            "How many chickens does the farm have now?"
        )
        x, y, op, c = f"{a},000", f"{b},000", "+", f"{(a + b) * 1000:,}"
    plain = [v.replace(",", "") for v in (x, y, c)]
    return q, f"{x} {op} {y} = <<{plain[0]}{op}{plain[1]}={plain[2]}>>{c}\n#### {c}"


def corpus_lines(rng: random.Random, n_problems: int, n_tagged: int) -> list[str]:
    """Pretraining documents: arithmetic facts, solved problems, tagged solutions.

    Every single-digit sum and difference and the small products as equations;
    ``n_problems`` solved problems in GSM8K's ``Question: ...\\nAnswer: ...``
    layout; ``n_tagged`` worked solutions in the ``<reasoning>/<answer>`` markup
    followed by ``<|im_end|>`` (all drawn with their own seed, so not the
    train/test rows; ``\\n`` is a line break, see tunelab.models.tiny). The
    markup stands for what a real pretrained model has seen; answering a chat
    prompt in it is left to the finetuning.
    """
    lines = []
    for a in range(1, 10):
        for b in range(1, 10):
            lines += [f"{a} + {b} = {a + b}.", f"{a} - {b} = {a - b}."]
            if 2 <= a <= 5 and 2 <= b <= 5:
                lines.append(f"{a} * {b} = {a * b}.")
    rows = generate_problems(rng, n_problems + n_tagged, CORPUS_NAMES)
    for row in rows[:n_problems]:
        reasoning, number = split_answer(row["answer"]) or ("", "")
        lines.append(f"Question: {row['question']}\\nAnswer: {reasoning}. The answer is {number}.")
    for row in rows[n_problems:]:
        reasoning, number = split_answer(row["answer"]) or ("", "")
        lines.append(
            f"<reasoning>\\n{reasoning}\\n</reasoning>\\n<answer>\\n{number}\\n</answer><|im_end|>"
        )
    lines += [
        "Respond in the following format: first the reasoning, then the answer.",
        "Show the reasoning, then give the answer.",
        f"{', '.join(NAMES)} and {', '.join(CORPUS_NAMES)} are friends.",
    ] * 2
    return lines


def generate_problems(
    rng: random.Random, n: int, names: list[str] | None = None
) -> list[dict[str, str]]:
    """``n`` distinct problems as GSM8K rows (question, answer), people from ``names``."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < n:
        q, a = _problem(rng, names or NAMES)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"question": q, "answer": a})
    return rows


def smoke_files(rng: random.Random, n_train: int, n_test: int) -> dict[str, bytes]:
    """train.jsonl and test.jsonl in GSM8K's layout, with a duplicate and a train/test overlap."""
    rows = generate_problems(rng, n_train + n_test)
    test, train = rows[:n_test], rows[n_test:]
    train.insert(5, dict(train[2]))  # an exact duplicate: dropped by prepare
    train.insert(9, dict(test[0]))  # a test question in train: dropped by prepare

    def dump(rs: list[dict[str, str]]) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in rs).encode("utf-8")

    return {"train.jsonl": dump(train), "test.jsonl": dump(test)}
