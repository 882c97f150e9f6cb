"""Legal: the dataset builder for legal QA and statute-grounded counsel.

Two record shapes (as in Lawyer LLaMA's published data):
- exam: a JSON array whose elements are one-element lists (or plain objects)
  of ``{instruction, input, output}``: judicial-exam questions with reasoning.
- counsel: a JSON array of ``{query, laws: [article, ...], response}``.
Counsel becomes a user turn holding the question (and, when
``include_articles`` is on, the cited articles as context) and an assistant
turn holding the response; the articles are also kept in the record's meta.
The key names of both shapes come from params (``exam_fields``, ``counsel_fields``):
judicial-exam files whose records are ``{input, output, type}`` read with
``exam_fields: {instruction: input, input: null, output: output}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config.prepare import LegalPrepareParams
from tunelab.data.alpaca import check_fields
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.data.text import load_records, read_utf8
from tunelab.errors import TunelabError


def _load_array(path: Path, card: DataCard) -> list[tuple[str, Any]]:
    decoded = read_utf8(path)
    card.add_input(str(path), decoded)
    return load_records(path, decoded.text, jsonl=False)


def _field(row: dict, key: str, kind: type, where: str) -> Any:
    if key not in row:
        found = ", ".join(map(str, row)) or "none"
        raise TunelabError(where, f"missing key {key!r} (keys found: {found})")
    if not isinstance(row[key], kind):
        raise TunelabError(where, f"{key!r} must be a {kind.__name__}")
    return row[key]


def exam_records(path: Path, params: LegalPrepareParams, card: DataCard) -> list[dict]:
    out = []
    src = str(path)
    for i, (where, item) in enumerate(_load_array(path, card)):
        if isinstance(item, list):
            if len(item) != 1:
                raise TunelabError(where, f"expected a one-element list, got {len(item)} elements")
            item = item[0]
        fields = check_fields(where, item, params.exam_fields, "prepare.legal.exam_fields")
        card.read_row(src)
        instruction, inp, output = (f.strip() for f in card.clean(list(fields), src))
        if not instruction or not output:
            card.drop("empty", src)
            continue
        user = f"{instruction}\n{inp}" if inp else instruction
        if len(user) + len(output) > params.max_chars:
            card.drop("too_long", src)
            continue
        out.append(chat_record(params.system_prompt, user, output, kind="exam", row=i, laws=[]))
    return out


def counsel_records(path: Path, params: LegalPrepareParams, card: DataCard) -> list[dict]:
    out = []
    src = str(path)
    f = params.counsel_fields
    for i, (where, item) in enumerate(_load_array(path, card)):
        if not isinstance(item, dict):
            keys = "/".join(k for k in (f.query, f.laws, f.response) if k)
            raise TunelabError(where, f"expected an object with {keys}")
        card.read_row(src)
        query = _field(item, f.query, str, where)
        response = _field(item, f.response, str, where)
        laws = (item.get(f.laws) if f.laws else None) or []
        if not isinstance(laws, list) or not all(isinstance(x, str) for x in laws):
            raise TunelabError(where, f"{f.laws!r} must be a list of strings")
        query, response, *laws = card.clean([query, response, *laws], src)
        query, response = query.strip(), response.strip()
        if not query or not response:
            card.drop("empty", src)
            continue
        user = query
        if params.include_articles and laws:
            user = f"{query}\n\n相关法条：\n" + "\n".join(laws)
        if len(user) + len(response) > params.max_chars:
            card.drop("too_long", src)
            continue
        card.extra["with_articles"] = card.extra.get("with_articles", 0) + bool(laws)
        out.append(
            chat_record(params.system_prompt, user, response, kind="counsel", row=i, laws=laws)
        )
    return out


def prepare_legal(params: LegalPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    sources = [params.exam_source, params.counsel_source]
    card = DataCard("legal", sources)
    exam = exam_records(Path(params.exam_source), params, card)
    counsel = counsel_records(Path(params.counsel_source), params, card)
    origin = [str(Path(params.exam_source))] * len(exam)
    origin += [str(Path(params.counsel_source))] * len(counsel)
    return keep_unique(exam + counsel, card, origin), card
