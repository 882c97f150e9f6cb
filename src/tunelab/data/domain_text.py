"""Domain text for continual pretraining: documents, checked, split, kept apart from SFT.

Sources: JSONL (one document per object, its text under ``text_key``) or plain text
(.txt / .md, documents separated by blank lines), a file or a folder of them (sorted).
Every document is checked: empty (``empty``), longer than ``max_chars`` (``too_long``),
an exact repeat (``duplicate``), or quoting the scenario's SFT held-out set
(``in_sft_heldout``: it contains a held-out question or reference answer verbatim), so
that pretraining never shows the model what the SFT evaluation later asks. A JSONL row
that is not an object with a string text stops the stage, naming the file and row.

The smoke documents are the project's own (``medical_documents``, ``legal_documents``):
the sample fact tables (tunelab.samples) in phrasings that neither the base model's
corpus nor the SFT answers use, plus a few that quote an SFT answer (dropped) and one bad
row per other reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.pretrain import PretrainDataParams
from tunelab.data.common import DataCard, length_stats, split_records
from tunelab.data.text import load_records, read_utf8
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, dump_json, read_jsonl, write_jsonl

SUFFIXES = (".jsonl", ".txt", ".md")


def source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise TunelabError(str(source), "not found (a .jsonl/.txt/.md file or a folder of them)")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise TunelabError(str(source), f"holds no {'/'.join(SUFFIXES)} files")
    return files


def read_documents(path: Path, text_key: str) -> list[str]:
    """The documents of one file, in order (empty ones kept, for the data card)."""
    if path.suffix == ".jsonl":
        docs = []
        for where, row in load_records(path, read_utf8(path).text, jsonl=True):
            if not isinstance(row, dict) or text_key not in row:
                raise TunelabError(where, f"expected an object with {text_key!r}")
            if not isinstance(row[text_key], str):
                raise TunelabError(where, f"{text_key!r} must be a string")
            docs.append(row[text_key])
        return docs
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TunelabError(str(path), f"not UTF-8 text (byte {err.start})") from None
    return [block for block in text.replace("\r\n", "\n").split("\n\n")]


def heldout_texts(sft_val: Path) -> list[str]:
    """The SFT held-out questions and answers (user and assistant turns)."""
    return [
        m["content"]
        for r in read_jsonl(sft_val)
        for m in r["messages"]
        if m["role"] in ("user", "assistant") and isinstance(m["content"], str)
    ]


def prepare_domain_text(
    scenario: str, params: PretrainDataParams, sft_val: Path
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(train documents, held-out documents, data card) from params.source."""
    files = source_files(Path(params.source))
    card = DataCard(f"pretrain_{scenario}", [str(f) for f in files])
    guarded = [t for t in heldout_texts(sft_val) if t.strip()]
    records, seen = [], set()
    for path in files:
        card.encodings[str(path)] = "utf-8"
        for i, doc in enumerate(read_documents(path, params.text_key)):
            card.rows_read += 1
            doc = doc.strip()
            if not doc:
                card.drop("empty")
            elif len(doc) > params.max_chars:
                card.drop("too_long")
            elif doc in seen:
                card.drop("duplicate")
            elif any(t in doc for t in guarded):
                card.drop("in_sft_heldout")
            else:
                seen.add(doc)
                records.append({"text": doc, "meta": {"file": path.name, "row": i}})
    if len(records) < 2:
        raise TunelabError(
            f"pretrain.{scenario}.data.source",
            f"only {len(records)} usable documents (dropped: {dict(card.dropped)})",
        )
    train, val = split_records(records, params.split)
    summary = {
        "scenario": card.scenario,
        "sources": card.sources,
        "rows_read": card.rows_read,
        "rows_kept": len(records),
        "rows_dropped": dict(sorted(card.dropped.items())),
        "train_rows": len(train),
        "val_rows": len(val),
        "encodings": card.encodings,
        "sft_heldout_guard": {"file": str(sft_val), "texts": len(guarded)},
        "lengths_chars": {"document": length_stats([len(r["text"]) for r in records])},
    }
    return train, val, summary


def write_domain_text(out: Path, train: list[dict], val: list[dict], card: dict) -> None:
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", val)
        dump_json(tmp / "data_card.json", card)
