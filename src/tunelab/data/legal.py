"""Legal: the dataset builder for legal QA and statute-grounded counsel.

Two record shapes (as in Lawyer LLaMA's published data):
- exam: a JSON array whose elements are one-element lists (or plain objects)
  of ``{instruction, input, output}``: judicial-exam questions with reasoning.
- counsel: a JSON array of ``{query, laws: [article, ...], response}``.
Counsel becomes a user turn holding the question (and, when
``include_articles`` is on, the cited articles as context) and an assistant
turn holding the response; the articles are also kept in the record's meta.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.config import LegalPrepareParams
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.errors import TunelabError


def _load_array(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TunelabError(str(path), "file not found") from None
    except UnicodeDecodeError as err:
        raise TunelabError(str(path), f"not UTF-8 text (byte {err.start})") from None
    if not text.strip():
        raise TunelabError(str(path), "file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TunelabError(f"{path} line {err.lineno}", f"invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise TunelabError(str(path), "expected a JSON array of records")
    return data


def _field(row: dict, key: str, kind: type, where: str) -> Any:
    if key not in row:
        raise TunelabError(where, f"missing key {key!r}")
    if not isinstance(row[key], kind):
        raise TunelabError(where, f"{key!r} must be a {kind.__name__}")
    return row[key]


def exam_records(path: Path, params: LegalPrepareParams, card: DataCard) -> list[dict]:
    out = []
    for i, item in enumerate(_load_array(path)):
        where = f"{path} row {i}"
        if isinstance(item, list):
            if len(item) != 1:
                raise TunelabError(where, f"expected a one-element list, got {len(item)} elements")
            item = item[0]
        if not isinstance(item, dict):
            raise TunelabError(where, "expected an object with instruction/input/output")
        card.rows_read += 1
        instruction = _field(item, "instruction", str, where).strip()
        inp = str(item.get("input") or "").strip()
        output = _field(item, "output", str, where).strip()
        if not instruction or not output:
            card.drop("empty")
            continue
        user = f"{instruction}\n{inp}" if inp else instruction
        if len(user) + len(output) > params.max_chars:
            card.drop("too_long")
            continue
        out.append(chat_record(params.system_prompt, user, output, kind="exam", row=i, laws=[]))
    return out


def counsel_records(path: Path, params: LegalPrepareParams, card: DataCard) -> list[dict]:
    out = []
    for i, item in enumerate(_load_array(path)):
        where = f"{path} row {i}"
        if not isinstance(item, dict):
            raise TunelabError(where, "expected an object with query/laws/response")
        card.rows_read += 1
        query = _field(item, "query", str, where).strip()
        response = _field(item, "response", str, where).strip()
        laws = item.get("laws") or []
        if not isinstance(laws, list) or not all(isinstance(x, str) for x in laws):
            raise TunelabError(where, "'laws' must be a list of strings")
        if not query or not response:
            card.drop("empty")
            continue
        user = query
        if params.include_articles and laws:
            user = f"{query}\n\n相关法条：\n" + "\n".join(laws)
        if len(user) + len(response) > params.max_chars:
            card.drop("too_long")
            continue
        card.extra["with_articles"] = card.extra.get("with_articles", 0) + bool(laws)
        out.append(
            chat_record(params.system_prompt, user, response, kind="counsel", row=i, laws=laws)
        )
    return out


def prepare_legal(params: LegalPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    sources = [s for s in (params.exam_source, params.counsel_source) if s]
    card = DataCard("legal", sources)
    records: list[dict] = []
    if params.exam_source:
        records += exam_records(Path(params.exam_source), params, card)
    if params.counsel_source:
        records += counsel_records(Path(params.counsel_source), params, card)
    for s in sources:
        card.encodings[s] = "utf-8"
    return keep_unique(records, card), card
