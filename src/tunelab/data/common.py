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

from tunelab.config import SplitParams
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
class DataCard:
    """What a prepare stage read, kept and dropped (and why)."""

    scenario: str
    sources: list[str]
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    encodings: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the records (images)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def to_dict(self, train: list[dict], val: list[dict]) -> dict[str, Any]:
        kept = train + val
        return {
            "scenario": self.scenario,
            "sources": self.sources,
            "rows_read": self.rows_read,
            "rows_kept": len(kept),
            "rows_dropped": dict(sorted(self.dropped.items())),
            "train_rows": len(train),
            "val_rows": len(val),
            "encodings": self.encodings,
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


def keep_unique(records: list[dict[str, Any]], card: DataCard) -> list[dict[str, Any]]:
    """Drop records whose (prompt, answer) text repeats an earlier one."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for rec in records:
        key = tuple(m["content"] for m in rec["messages"])
        if key in seen:
            card.drop("duplicate")
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


def write_prepared(out: Path, train: list[dict], val: list[dict], card: DataCard) -> dict[str, Any]:
    """Write train.jsonl, val.jsonl and data_card.json into ``out`` atomically."""
    summary = card.to_dict(train, val)
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", val)
        dump_json(tmp / "data_card.json", summary)
        for rel, data in card.files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    return summary
