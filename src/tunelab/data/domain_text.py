"""Domain text for continual pretraining: documents, checked, split, kept apart from SFT.

Sources: JSONL (one document per object, its text under ``text_key``) or plain text
(.txt / .md, documents separated by blank lines), a file or a folder of them (sorted).
Every document is checked: empty (``empty``), longer than ``max_chars`` (``too_long``),
an exact repeat (``duplicate``), or quoting the scenario's SFT held-out set
(``in_sft_heldout``: it contains a held-out question or reference answer verbatim), so
that pretraining never shows the model what the SFT evaluation later asks. A JSONL row
that is not an object with a string text stops the stage, naming the file and row.

The smoke documents are the project's own (``medical_documents``, ``legal_documents``):
the sample fact tables (tunelab.data.samples) in phrasings that neither the base model's
corpus nor the SFT answers use, plus a few that quote an SFT answer (dropped) and one bad
row per other reason.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tunelab.config import PretrainDataParams
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


# ------------------------------------------------------------------ smoke text


def medical_documents(rng: random.Random) -> list[str]:
    from tunelab.data.samples import DURATIONS, MEDICAL, _medical_answer

    docs = []
    for dept, symptom, cause, advice in MEDICAL:
        d1, d2 = rng.sample(DURATIONS, 2)
        docs += [
            f"健康科普：{symptom}的常见原因是{cause}。{advice}",
            f"在{dept}门诊，{symptom}的患者很多，{cause}是主要原因之一。",
            f"如果{d1}出现{symptom}，要想到{cause}的可能。{advice}",
            f"{cause}会引起{symptom}，{dept}医生提醒大家：{advice}",
            f"问：{symptom}应该挂哪个科？答：{symptom}一般先看{dept}。",
            f"病例：患者{d2}{symptom}，经{dept}检查，考虑{cause}。",
        ]
    # Quoting an SFT answer verbatim: dropped when that answer is in the SFT held-out set.
    for _dept, symptom, cause, advice in MEDICAL[:4]:
        docs.append(f"门诊记录：医生回复“{_medical_answer(cause, symptom, advice)}”")
    rng.shuffle(docs)
    return docs


def legal_documents(rng: random.Random) -> list[str]:
    from tunelab.data.samples import LAWS

    docs = []
    for article, text, topic, question, conclusion in LAWS:
        docs += [
            f"{topic}纠纷中常被引用的是{article}。该条规定，{text}",
            f"律师解读：{conclusion}，依据是{article}。",
            f"法律问答：{question}答：{conclusion}。",
            f"普法小课堂：说到{topic}，{article}写明{text}",
            f"实务提示：处理{topic}问题时，先查{article}。",
        ]
    # Quoting an SFT answer verbatim: dropped when that answer is in the SFT held-out set.
    for article, text, _topic, _question, conclusion in LAWS[:4]:
        docs.append(f"判决书摘录：“根据{article}的规定，{text}因此，{conclusion}。”")
    rng.shuffle(docs)
    return docs


def smoke_file(docs: list[str]) -> bytes:
    """JSONL of the documents plus one bad row per other drop reason."""
    rows = [{"text": d} for d in docs]
    rows.insert(3, {"text": "   "})
    rows.insert(7, dict(rows[1]))
    rows.insert(11, {"text": "没有换行的长文本" * 300})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
