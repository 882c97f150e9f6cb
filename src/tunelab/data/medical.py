"""Medical: a folder of (department, title, ask, answer) CSVs in mixed encodings.

Encoding detection is a deliberate cascade over the candidates in params, per
file: a UTF-8 byte-order mark selects utf-8-sig; otherwise the first candidate
that decodes the whole file strictly wins. GBK is tried before GB18030 because
GB18030 is a superset that also decodes every GBK file; a file is reported as
gb18030 only when it holds characters GBK lacks. (A statistical detector such
as charset-normalizer guesses among dozens of codecs and confuses these
Chinese encodings on short files; with a known candidate set, strict decoding
is exact.)
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Any

from tunelab.config import MedicalPrepareParams
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.errors import TunelabError


def detect_encoding(data: bytes, candidates: list[str], where: str) -> str:
    for name in candidates:
        try:
            norm = codecs.lookup(name).name
        except LookupError:
            raise TunelabError(where, f"unknown encoding {name!r} in params") from None
        if norm == "utf-8-sig" and not data.startswith(codecs.BOM_UTF8):
            continue
        try:
            data.decode(name)
        except UnicodeDecodeError:
            continue
        return name
    raise TunelabError(where, f"does not decode as any of {', '.join(candidates)}")


def read_csv_rows(
    path: Path, candidates: list[str], columns: list[str]
) -> tuple[str, list[tuple[int, list[str]]]]:
    """Decode and parse one CSV; return (encoding, [(line number, [fields in `columns` order])])."""
    data = path.read_bytes()
    if not data.strip():
        raise TunelabError(str(path), "file is empty")
    encoding = detect_encoding(data, candidates, str(path))
    text = data.decode(encoding)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as err:
        raise TunelabError(f"{path} row 1", f"unreadable header ({err})") from None
    header = [h.strip() for h in header]
    for col in columns:
        if col not in header:
            raise TunelabError(f"{path}", f"missing column {col!r} (header: {', '.join(header)})")
    index = [header.index(c) for c in columns]
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                rows.append((line, [""] * len(columns)))
                continue
            if len(fields) != len(header):
                raise TunelabError(
                    f"{path} row ending on line {line}",
                    f"has {len(fields)} fields, the header has {len(header)}",
                )
            rows.append((line, [fields[i] for i in index]))
    except csv.Error as err:
        raise TunelabError(f"{path} line {reader.line_num}", f"malformed CSV ({err})") from None
    return encoding, rows


def prepare_medical(params: MedicalPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    folder = Path(params.source)
    if not folder.is_dir():
        raise TunelabError(str(folder), "not a folder of CSV files")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise TunelabError(str(folder), "holds no .csv files")
    card = DataCard("medical", [str(f) for f in files])
    records = []
    for path in files:
        encoding, rows = read_csv_rows(path, params.encodings, params.columns)
        card.encodings[str(path)] = encoding
        for line, (department, title, ask, answer) in rows:
            card.rows_read += 1
            ask, answer, title = ask.strip(), answer.strip(), title.strip()
            if not ask or not answer:
                card.drop("empty")
                continue
            if len(ask) + len(answer) > params.max_chars:
                card.drop("too_long")
                continue
            user = f"{title}\n{ask}" if params.include_title and title else ask
            records.append(
                chat_record(
                    params.system_prompt,
                    user,
                    answer,
                    file=path.name,
                    line=line,
                    department=department.strip(),
                )
            )
    return keep_unique(records, card), card
