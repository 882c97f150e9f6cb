"""Shared pieces of the prepare stages: chat records, splitting, data cards.

A prepared record is ``{"messages": [system?, user, assistant], "meta": {...}}``,
the conversational form TRL's SFTTrainer takes directly.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.prepare import SplitParams
from tunelab.data.text import Decoded, clean_text
from tunelab.io import atomic_dir, dump_json, write_jsonl


def chat_record(system: str, user: str, assistant: str, **meta: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "meta": meta}


def prompt_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """The messages up to (not including) the final assistant turn."""
    return record["messages"][:-1]


def reference_of(record: dict[str, Any]) -> str:
    return record["messages"][-1]["content"]


@dataclass
class InputCard:
    """One input file: its encoding, how that was decided, its rows and what became of them."""

    encoding: str
    how: str
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why not
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    cleaned: Counter = field(default_factory=Counter)  # rows changed, per kind of cleaning
    control_characters_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding, "how": self.how}
        if self.rejected:
            out["rejected_encodings"] = self.rejected
        out["rows_read"] = self.rows_read
        out["rows_dropped"] = dict(sorted(self.dropped.items()))
        out["rows_cleaned"] = dict(sorted(self.cleaned.items()))
        if self.control_characters_removed:
            out["control_characters_removed"] = self.control_characters_removed
        return out


@dataclass
class DataCard:
    """What a prepare stage read, kept and dropped (and why), in total and per input file."""

    scenario: str
    sources: list[str]
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    encodings: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the records (images)
    inputs: dict[str, InputCard] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # files in a source folder not read
    cleaned: Counter = field(default_factory=Counter)  # rows changed, per kind of cleaning

    def add_input(self, path: str, decoded: Decoded | None = None, **kw: Any) -> InputCard:
        """Register an input file (its decoding, or encoding= and how= for other formats)."""
        if decoded is not None:
            kw = {"encoding": decoded.encoding, "how": decoded.how, "rejected": decoded.rejected}
        self.inputs[path] = InputCard(**kw)
        self.encodings[path] = self.inputs[path].encoding
        return self.inputs[path]

    def read_row(self, source: str | None = None) -> None:
        self.rows_read += 1
        if source in self.inputs:
            self.inputs[source].rows_read += 1

    def drop(self, reason: str, source: str | None = None) -> None:
        self.dropped[reason] += 1
        if source in self.inputs:
            self.inputs[source].dropped[reason] += 1

    def clean(self, values: list[str], source: str | None = None) -> list[str]:
        """The row's text fields without control characters (NUL and the like), counted."""
        out, removed = [], 0
        for value in values:
            cleaned, n = clean_text(value)
            out.append(cleaned)
            removed += n
        if removed:
            self.cleaned["control_characters"] += 1
            if source in self.inputs:
                self.inputs[source].cleaned["control_characters"] += 1
                self.inputs[source].control_characters_removed += removed
        return out

    def to_dict(self, train: list[dict], val: list[dict]) -> dict[str, Any]:
        kept = train + val
        for path, encoding in self.encodings.items():  # registered without add_input
            if path not in self.inputs:
                self.inputs[path] = InputCard(encoding, "not recorded")
        return {
            "scenario": self.scenario,
            "sources": self.sources,
            "rows_read": self.rows_read,
            "rows_kept": len(kept),
            "rows_dropped": dict(sorted(self.dropped.items())),
            "rows_cleaned": dict(sorted(self.cleaned.items())),
            "train_rows": len(train),
            "val_rows": len(val),
            "encodings": self.encodings,
            "inputs": {path: card.to_dict() for path, card in self.inputs.items()},
            "skipped": dict(sorted(self.skipped.items())),
            "lengths_chars": {
                "prompt": length_stats(
                    [sum(len(text_of(m["content"])) for m in r["messages"][:-1]) for r in kept]
                ),
                "answer": length_stats([len(text_of(reference_of(r))) for r in kept]),
            },
            **self.extra,
        }


def text_of(content: str | list[dict[str, Any]]) -> str:
    """The text of a message content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": float(statistics.median(ordered)),
        "p95": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max": ordered[-1],
    }


def keep_unique(
    records: list[dict[str, Any]], card: DataCard, sources: list[str] | None = None
) -> list[dict[str, Any]]:
    """Drop records whose (prompt, answer) text repeats an earlier one.

    ``sources`` (the input file of each record) attributes the drops per file in the card.
    """
    seen: set[tuple[str, ...]] = set()
    out = []
    for i, rec in enumerate(records):
        key = tuple(m["content"] for m in rec["messages"])
        if key in seen:
            card.drop("duplicate", sources[i] if sources else None)
            continue
        seen.add(key)
        out.append(rec)
    return out


def split_records(records: list[dict[str, Any]], params: SplitParams) -> tuple[list, list]:
    """Seeded shuffle, then min(val_fraction * n, max_val_rows) rows to validation."""
    order = list(range(len(records)))
    random.Random(params.seed).shuffle(order)
    n_val = min(params.max_val_rows, max(1, round(params.val_fraction * len(records))))
    if len(records) < 2:
        n_val = 0
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def write_splits(
    out: Path, splits: dict[str, list[dict]], card: dict[str, Any], files: dict[str, bytes]
) -> None:
    """Write <split>.jsonl for each split, data_card.json and ``files`` into ``out`` atomically."""
    with atomic_dir(out) as tmp:
        for name, rows in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        dump_json(tmp / "data_card.json", card)
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)


def write_prepared(out: Path, train: list[dict], val: list[dict], card: DataCard) -> dict[str, Any]:
    """Write train.jsonl, val.jsonl and data_card.json into ``out`` atomically."""
    summary = card.to_dict(train, val)
    write_splits(out, {"train": train, "val": val}, summary, card.files)
    return summary
