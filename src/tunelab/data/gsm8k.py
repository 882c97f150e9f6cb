"""GSM8K: the reader that builds GRPO prompts, and the smoke profile's problem generator.

GSM8K rows are ``{"question": ..., "answer": "<worked solution>\\n#### <number>"}``;
the worked solution carries calculator annotations such as ``<<16-3-4=9>>``.
``prepare_gsm8k`` keeps both fields verbatim (lm-eval's gsm8k task reads them
from the prepared files) and adds:

- ``prompt``: the chat prompt GRPO samples from (system prompt asking for the
  ``<reasoning>/<answer>`` format, then ``user_template`` around the question);
- ``target``: the final number in canonical form (thousands separators and a
  leading ``$`` stripped, ``-`` kept, decimals kept, trailing zeros of a
  decimal dropped: ``1,000`` -> ``1000``, ``-3`` -> ``-3``, ``2.50`` -> ``2.5``);
- ``reasoning``: the worked solution without annotations and without the
  ``####`` line, and ``reference``: the formatted answer built from it, which
  the optional SFT warm-up trains on.

A row without a parsable ``#### <number>`` line is an error (file, line), not a
silent drop; exact duplicate questions and training questions that also appear
in the test file are dropped and counted in the data card. Numbers are kept
exactly at any length (no decimal arithmetic); a final answer written in
full-width or Arabic-Indic digits is rewritten in ASCII (lm-eval's gsm8k regex
reads ASCII only) and counted in the data card (``non_ascii_digits``), as are
control characters stripped from the text.

``generate_problems`` writes simple one-step arithmetic word problems in the
same format with known answers (single-digit operands; a few negative,
decimal and thousands answers so the whole reader is exercised). It is what the
smoke profile trains on: small enough that the tiny model learns the format
and much of the arithmetic within a CPU minute.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.config.prepare import GSM8KPrepareParams
from tunelab.data.common import InputCard, length_stats, write_splits
from tunelab.data.text import clean_text, load_records, read_utf8
from tunelab.errors import TunelabError

FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
ANNOTATION = re.compile(r"<<[^<>]*>>")
_PLAIN = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_GROUPED = re.compile(r"-?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?")
_SEPARATORS = {"\u066b": ".", "\u066c": ",", "\u2212": "-"}  # Arabic decimal/thousands, minus


def ascii_digits(text: str) -> str:
    """``text`` with full-width forms (NFKC) and other decimal digits (Arabic-Indic, ...)
    written as ASCII digits, ``.``, ``,`` and ``-``."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        str(unicodedata.decimal(ch))
        if ch.isdecimal() and not ch.isascii()
        else _SEPARATORS.get(ch, ch)
        for ch in text
    )


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as GSM8K writes answers, or None.

    Accepts surrounding whitespace, a leading ``$`` (after an optional ``-``),
    thousands separators in groups of three, a trailing full stop, decimals and
    negatives; non-ASCII digits are read as their ASCII values (``ascii_digits``).
    Anything else (words, units, two numbers) is not a number. The canonical form
    is exact at any length (string arithmetic, no rounding): leading zeros and a
    decimal's trailing zeros dropped, ``-0`` is ``0``.
    """
    s = ascii_digits(text).strip().rstrip(".").strip()
    negative = s.startswith("-")
    if negative:
        s = s[1:].lstrip()
    s = s.removeprefix("$").strip()
    if _GROUPED.fullmatch(s):
        s = s.replace(",", "")
    elif not _PLAIN.fullmatch(s):
        return None
    whole, _, fraction = s.partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    out = f"{whole}.{fraction}" if fraction else whole
    return f"-{out}" if negative and out != "0" else out


def split_answer(answer: str) -> tuple[str, str] | None:
    """(reasoning without annotations or the #### line, canonical final number)."""
    found = list(FINAL.finditer(answer))
    if not found:
        return None
    number = normalize_number(found[-1].group(1))
    if number is None:
        return None
    body = answer[: found[-1].start()]
    reasoning = "\n".join(
        line.strip() for line in ANNOTATION.sub("", body).splitlines() if line.strip()
    )
    return reasoning, number


def ascii_final_line(answer: str) -> str:
    """``answer`` with its final ``#### <number>`` written in ASCII digits (lm-eval's
    gsm8k regex reads ASCII only); unchanged when it already is."""
    final = list(FINAL.finditer(answer))[-1]
    return answer[: final.start(1)] + ascii_digits(final.group(1)) + answer[final.end(1) :]


def read_gsm8k(
    path: Path, fields: Any = None, card: InputCard | None = None
) -> list[dict[str, Any]]:
    """Rows of a GSM8K JSONL file (or JSON array), each checked; errors name file and line.

    ``fields`` maps question/answer to the file's keys (prepare.gsm8k.fields; default the
    GSM8K names). Control characters are stripped and final answers in non-ASCII digits
    rewritten in ASCII, both counted in ``card``.
    """
    path = Path(path)
    q_key, a_key = (fields.question, fields.answer) if fields else ("question", "answer")
    decoded = read_utf8(path)
    if card is not None:
        card.encoding, card.how = decoded.encoding, decoded.how
    rows = []
    for where, row in load_records(path, decoded.text, jsonl=True):
        if not isinstance(row, dict):
            raise TunelabError(where, f"expected a JSON object with {q_key} and {a_key}")
        for key in (q_key, a_key):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise TunelabError(where, f"missing or empty key '{key}'")
        (question, n_q), (answer, n_a) = clean_text(row[q_key]), clean_text(row[a_key])
        parts = split_answer(answer)
        if parts is None:
            raise TunelabError(
                where, "answer has no final '#### <number>' line with a number after it"
            )
        converted = ascii_final_line(answer)
        if card is not None:
            card.rows_read += 1
            if n_q or n_a:
                card.cleaned["control_characters"] += 1
                card.control_characters_removed += n_q + n_a
            if converted != answer:
                card.cleaned["non_ascii_digits"] += 1
        rows.append({"question": question, "answer": converted, "_parts": parts})
    return rows


def build_record(row: dict[str, Any], params: GSM8KPrepareParams) -> dict[str, Any]:
    reasoning, target = row["_parts"]
    return {
        "question": row["question"],
        "answer": row["answer"],
        "prompt": [
            {"role": "system", "content": params.system_prompt},
            {"role": "user", "content": params.user_template.format(question=row["question"])},
        ],
        "target": target,
        "reasoning": reasoning,
        "reference": params.reference_template.format(reasoning=reasoning, answer=target),
    }


def build_gsm8k(params: GSM8KPrepareParams) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Read and check train and test sources: (train records, test records, data card)."""
    dropped: Counter = Counter()
    inputs = {split: InputCard("", "") for split in ("train", "test")}  # filled in by read_gsm8k
    test_rows = read_gsm8k(Path(params.test_source), params.fields, inputs["test"])
    train_rows = read_gsm8k(Path(params.train_source), params.fields, inputs["train"])
    read = {"train": len(train_rows), "test": len(test_rows)}

    def drop(reason: str, split: str) -> None:
        dropped[f"{split}_{reason}"] += 1
        inputs[split].dropped[reason] += 1

    def unique(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        seen: set[str] = set()
        kept = []
        for row in rows:
            key = " ".join(row["question"].split())
            if key in seen:
                drop("duplicate", split)
                continue
            seen.add(key)
            kept.append(row)
        return kept

    test_rows = unique(test_rows, "test")
    test_questions = {" ".join(r["question"].split()) for r in test_rows}
    train_rows = unique(train_rows, "train")
    kept_train = []
    for row in train_rows:
        if " ".join(row["question"].split()) in test_questions:
            drop("in_test", "train")
        else:
            kept_train.append(row)
    train = [build_record(r, params) for r in kept_train[: params.max_train_rows]]
    test = [build_record(r, params) for r in test_rows[: params.max_test_rows]]
    for split, records in (("train", train), ("test", test)):
        if not records:
            source = params.train_source if split == "train" else params.test_source
            raise TunelabError(source, f"no usable {split} rows")
    card = {
        "scenario": "gsm8k",
        "sources": [params.train_source, params.test_source],
        "rows_read": read,
        "rows_dropped": dict(sorted(dropped.items())),
        "train_rows": len(train),
        "test_rows": len(test),
        "inputs": {
            source: inputs[split].to_dict()
            for split, source in (("train", params.train_source), ("test", params.test_source))
        },
        "answers": {
            split: {
                "negative": sum(r["target"].startswith("-") for r in recs),
                "decimal": sum("." in r["target"] for r in recs),
                "with_thousands_separator": sum(
                    bool(re.search(r"####\s*-?\$?[0-9]{1,3},[0-9]{3}", r["answer"])) for r in recs
                ),
                "non_ascii_digits": inputs[split].cleaned["non_ascii_digits"],
            }
            for split, recs in (("train", train), ("test", test))
        },
        "lengths_chars": {
            "question": length_stats([len(r["question"]) for r in train + test]),
            "reference": length_stats([len(r["reference"]) for r in train + test]),
        },
    }
    return train, test, card


def prepare_gsm8k(params: GSM8KPrepareParams, out: Path) -> dict[str, Any]:
    """Read train and test sources, build records, write out/{train,test}.jsonl + data card."""
    train, test, card = build_gsm8k(params)
    write_splits(out, {"train": train, "test": test}, card, {})
    return card
