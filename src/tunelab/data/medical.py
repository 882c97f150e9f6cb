"""Medical: a folder of (department, title, ask, answer) CSVs in mixed encodings.

Every ``*.csv`` file of the folder (any case: ``.CSV`` and ``.Csv`` too) is
read; anything else in it is listed in the data card under ``skipped`` with the
reason. The encoding is decided per file (tunelab.data.text.decode_bytes): a
byte-order mark decides; otherwise the first of ``prepare.medical.encodings``
that decodes the whole file strictly and reads as plausible text. GBK comes
before GB18030 because GB18030 is a superset that also decodes every GBK file
(a file is reported as gb18030 only when it holds characters GBK lacks), and
both before Big5 and the others because GB18030 also "decodes" a Big5 file,
into text that the plausibility check rejects. The data card records, per
file, the encoding, how it was decided, the candidates rejected and why, and
the rows dropped per reason.

The header names come from ``prepare.medical.columns`` (department and title
may be null); a used name that is missing or appears twice is an error.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tunelab.config.prepare import MedicalColumnsParams, MedicalPrepareParams
from tunelab.data.common import DataCard, chat_record, keep_unique
from tunelab.data.text import Decoded, decode_bytes
from tunelab.errors import TunelabError

ENCODINGS_PARAM = "prepare.medical.encodings"
FIELDS = ("department", "title", "ask", "answer")


def detect_encoding(data: bytes, candidates: list[str], where: str, max_mess: float) -> Decoded:
    return decode_bytes(data, candidates, max_mess, where, ENCODINGS_PARAM)


def column_index(header: list[str], columns: MedicalColumnsParams, where: str) -> list[int | None]:
    """Position of each of FIELDS in the header (None: not mapped); all problems named."""
    names = {f: getattr(columns, f) for f in FIELDS}
    missing = [repr(n) for n in names.values() if n is not None and n not in header]
    if missing:
        raise TunelabError(
            where,
            f"missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
            f"(header: {', '.join(header)}; the names come from prepare.medical.columns)",
        )
    index: list[int | None] = []
    for name in names.values():
        if name is None:
            index.append(None)
            continue
        at = [i + 1 for i, h in enumerate(header) if h == name]
        if len(at) > 1:
            raise TunelabError(
                where,
                f"column {name!r} appears {len(at)} times in the header "
                f"(columns {', '.join(map(str, at))}): which one is meant?",
            )
        index.append(at[0] - 1)
    return index


def read_csv_rows(
    path: Path, params: MedicalPrepareParams
) -> tuple[Decoded, list[tuple[int, list[str]]]]:
    """Decode and parse one CSV; return (decoding, [(line number, [department, title, ask,
    answer])]), unmapped columns as empty strings."""
    data = path.read_bytes()
    if not data.strip():
        raise TunelabError(str(path), "file is empty")
    decoded = detect_encoding(data, params.encodings, str(path), params.max_mess)
    reader = csv.reader(io.StringIO(decoded.text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as err:
        raise TunelabError(f"{path} row 1", f"unreadable header ({err})") from None
    header = [h.strip() for h in header]
    index = column_index(header, params.columns, str(path))
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                rows.append((line, [""] * len(FIELDS)))
                continue
            if len(fields) != len(header):
                raise TunelabError(
                    f"{path} row ending on line {line}",
                    f"has {len(fields)} fields, the header has {len(header)}",
                )
            rows.append((line, [fields[i] if i is not None else "" for i in index]))
    except csv.Error as err:
        raise TunelabError(f"{path} line {reader.line_num}", f"malformed CSV ({err})") from None
    return decoded, rows


def list_csv_files(folder: Path, card: DataCard) -> list[Path]:
    """The folder's CSV files (suffix in any case), sorted; the rest go to card.skipped."""
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            card.skipped[str(entry)] = "a folder (only the files directly in the source are read)"
        elif entry.suffix.lower() != ".csv":
            card.skipped[str(entry)] = f"not a .csv file (suffix {entry.suffix or 'none'!r})"
        else:
            files.append(entry)
    return files


def prepare_medical(params: MedicalPrepareParams) -> tuple[list[dict[str, Any]], DataCard]:
    folder = Path(params.source)
    if not folder.is_dir():
        raise TunelabError(str(folder), "not a folder of CSV files")
    card = DataCard("medical", [])
    files = list_csv_files(folder, card)
    if not files:
        raise TunelabError(str(folder), "holds no .csv files")
    card.sources = [str(f) for f in files]
    records, origin = [], []
    for path in files:
        src = str(path)
        decoded, rows = read_csv_rows(path, params)
        card.add_input(src, decoded)
        for line, fields in rows:
            card.read_row(src)
            department, title, ask, answer = (f.strip() for f in card.clean(fields, src))
            if not ask or not answer:
                card.drop("empty", src)
                continue
            if len(ask) + len(answer) > params.max_chars:
                card.drop("too_long", src)
                continue
            user = f"{title}\n{ask}" if params.include_title and title else ask
            records.append(
                chat_record(
                    params.system_prompt,
                    user,
                    answer,
                    file=path.name,
                    line=line,
                    department=department,
                )
            )
            origin.append(src)
    return keep_unique(records, card, origin), card
