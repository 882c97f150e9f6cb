"""Reading raw text files: which encoding, decided how, and records from JSON or JSON Lines.

A decode that succeeds is not evidence: GB18030 decodes almost any byte string,
and a Big5 file read as GB18030 comes out as valid but meaningless text full of
private-use characters. So every candidate that decodes strictly is also judged
for plausibility with charset-normalizer's mess ratio (unprintable, private-use
and unassigned code points, suspicious script mixes, a low share of common CJK
characters), plus U+FFFD replacement characters, which it does not count and
which mean the text was already damaged by an earlier lossy conversion. When no
candidate is plausible the error names charset-normalizer's best guess.

JSON and JSON Lines are UTF-8 (RFC 8259; a byte-order mark is accepted). Row
numbers in errors are the ones a person sees in an editor: line numbers for
JSON Lines and for JSON syntax errors, 1-based record numbers in a JSON array.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0/C1 but tab, LF, CR
REPLACEMENT = "\ufffd"
CONTROL_NOISE = 0.02  # control characters up to this share of a text are data noise
_SAMPLE_CHARS = 1 << 21  # judge at most ~2M characters (16 evenly spaced chunks beyond)


@dataclass
class Decoded:
    """A decoded file: its text, the encoding, how that was decided, what was rejected."""

    text: str
    encoding: str
    how: str
    rejected: dict[str, str] = field(default_factory=dict)


def clean_text(value: str) -> tuple[str, int]:
    """``value`` without C0/C1 control characters (tab, newline, CR kept); and how many."""
    return CONTROL.subn("", value)


def position(data: bytes, offset: int) -> str:
    """'line L (byte offset N: 0xXX)' for a byte offset, as an editor counts lines."""
    line = data.count(b"\n", 0, offset) + 1
    return f"line {line} (byte offset {offset}: 0x{data[offset]:02x})"


def _sample(text: str) -> str:
    if len(text) <= _SAMPLE_CHARS:
        return text
    step, size = len(text) // 16, _SAMPLE_CHARS // 16
    return "".join(text[i : i + size] for i in range(0, len(text), step))


def mess(text: str) -> float:
    """charset-normalizer's mess ratio of ``text`` (0: clean), U+FFFD counted as unprintable.

    Control characters (a stray NUL) are the same bytes in every ASCII-compatible codec,
    so they tell no candidate apart: they are left out of the ratio (the loaders strip and
    count them) unless they are more than CONTROL_NOISE of the text, as when UTF-16 is
    read with an 8-bit codec (a NUL beside every ASCII character); then they count as
    charset-normalizer counts unprintable characters.
    """
    from charset_normalizer.md import mess_ratio

    sample = _sample(text)
    if not sample:
        return 0.0
    clean, controls = CONTROL.subn("", sample)
    score = mess_ratio(clean, maximum_threshold=1.0) if clean else 0.0
    score += 8 * sample.count(REPLACEMENT) / len(sample)
    if controls > CONTROL_NOISE * len(sample):
        score += 8 * controls / len(sample)
    return score


def implausible_detail(text: str) -> str:
    """The most telling shares of odd characters in ``text``, for an error message."""
    import unicodedata

    sample = _sample(text)
    counts = {"private-use": 0, "unassigned": 0, "replacement (U+FFFD)": 0, "control": 0}
    for ch in sample:
        cat = unicodedata.category(ch)
        if cat == "Co":
            counts["private-use"] += 1
        elif cat == "Cn":
            counts["unassigned"] += 1
        elif ch == REPLACEMENT:
            counts["replacement (U+FFFD)"] += 1
        elif cat == "Cc" and ch not in "\t\n\r":
            counts["control"] += 1
    shares = [f"{n / len(sample):.0%} {name} characters" for name, n in counts.items() if n]
    return ", ".join(shares) if shares else "uncommon characters and script mixes"


def guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's best guess for ``data`` (None: none), if it is a multi-byte
    codec or its text reads as some language: a single-byte code page that merely
    decodes a damaged file, in no language, would mislead."""
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding

    best = from_bytes(data).best()
    if best and (best.coherence > 0 or is_multi_byte_encoding(best.encoding)):
        return best.encoding
    return None


def _norm(name: str, param: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise TunelabError(param, f"unknown encoding {name!r} in params") from None


def decode_bytes(
    data: bytes, candidates: list[str], max_mess: float, where: str, param: str
) -> Decoded:
    """Decode ``data`` with the first candidate that decodes strictly to plausible text.

    A byte-order mark (UTF-8, UTF-16) decides when its codec is a candidate. ``param``
    names the candidates in params (for messages). Nothing plausible: one line naming
    every candidate's failure and charset-normalizer's guess.
    """
    norms = [_norm(c, param) for c in candidates]
    bom = None
    if data.startswith(codecs.BOM_UTF8):
        bom = "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        bom = "utf-16"
    order = list(candidates)
    if bom in norms:  # the mark decides first
        order.insert(0, order.pop(norms.index(bom)))
    rejected: dict[str, str] = {}
    failed_at: dict[str, int] = {}
    for name in order:
        norm = _norm(name, param)
        if norm == "utf-8-sig" and bom != "utf-8-sig":
            continue  # only for files that carry the mark
        try:
            text = data.decode(name)
        except UnicodeDecodeError as err:
            failed_at[norm] = err.start
            rejected[name] = f"invalid byte at {position(data, err.start)}"
            continue
        score = mess(text)
        if score > max_mess:
            rejected[name] = (
                f"decodes but implausible (mess ratio {score:.2f} > max_mess {max_mess}: "
                f"{implausible_detail(text)})"
            )
            continue
        if norm == bom:
            how = f"byte-order mark ({name}); text plausible (mess ratio {score:.3f})"
        else:
            how = (
                f"first of {param} that decodes strictly to plausible text "
                f"(mess ratio {score:.3f} <= {max_mess})"
            )
        return Decoded(text.removeprefix("\ufeff"), name, how, rejected)
    guess = guess_encoding(data)
    tried = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    norm_guess = _norm(guess, param) if guess else None
    by = "charset-normalizer"
    if norm_guess is None and "utf-8" in failed_at:
        # Non-ASCII text that is valid UTF-8 up to one bad byte is UTF-8, damaged there.
        prefix = data[: failed_at["utf-8"]].decode("utf-8", errors="ignore")
        if sum(not ch.isascii() for ch in prefix) >= 4:
            guess, norm_guess, by = "utf-8", "utf-8", "valid UTF-8 before that byte"
    if norm_guess in failed_at:
        raise TunelabError(
            where,
            f"looks like {guess} ({by}) but has an invalid byte at "
            f"{position(data, failed_at[norm_guess])}; no candidate of {param} decodes "
            f"to plausible text ({tried})",
        )
    hint = ""
    if guess and norm_guess not in norms:
        hint = f"; it looks like {guess} (charset-normalizer): add that to {param}"
    raise TunelabError(
        where,
        f"does not decode to plausible text as any of {', '.join(candidates)} ({tried}){hint}",
    )


def read_utf8(path: Path) -> Decoded:
    """A JSON / JSON Lines file's text: UTF-8 (byte-order mark accepted), else one line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TunelabError(str(path), "file not found") from None
    except IsADirectoryError:
        raise TunelabError(str(path), "is a folder, expected a file") from None
    encoding = "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        guess = guess_encoding(data)
        hint = f"; it looks like {guess} (charset-normalizer): convert it to UTF-8" if guess else ""
        raise TunelabError(
            str(path), f"not UTF-8 text: invalid byte at {position(data, err.start)}{hint}"
        ) from None
    how = "byte-order mark" if encoding == "utf-8-sig" else "JSON is UTF-8 (RFC 8259)"
    return Decoded(text, encoding, f"{how}; decoded strictly")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(map(str, list(value)[:8])) or "none"
        return f"a JSON object (keys: {keys})"
    return f"a JSON {type(value).__name__.replace('str', 'string')}"


def load_records(path: Path, text: str, jsonl: bool) -> list[tuple[str, Any]]:
    """(where, record) pairs of a JSON array, or, when ``jsonl``, of JSON Lines too.

    ``where`` is '<path> record N' (1-based) in an array and '<path> line N' in JSON
    Lines. Anything else says what it found and what is expected.
    """
    expected = "a JSON array of records" + (" or JSON Lines (one object per line)" if jsonl else "")
    if not text.strip():
        raise TunelabError(str(path), "file is empty")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as err:
        if not jsonl or text.lstrip().startswith("["):  # else: JSON Lines, read line by line
            raise TunelabError(f"{path} line {err.lineno}", f"invalid JSON ({err.msg})") from None
        whole = None
    else:
        if isinstance(whole, list):
            return [(f"{path} record {i}", row) for i, row in enumerate(whole, 1)]
        lists = [
            k
            for k, v in (whole.items() if isinstance(whole, dict) else [])
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        one_line = len(text.strip().splitlines()) == 1
        if lists or not (jsonl and isinstance(whole, dict) and one_line):
            inside = f"; are the records the list under {lists[0]!r}?" if lists else ""
            raise TunelabError(str(path), f"found {_describe(whole)}, expected {expected}{inside}")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path} line {i}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise TunelabError(f"{path} line {i}", f"invalid JSON ({err.msg})") from None
    return rows


def read_corpus(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 pretraining corpus; missing, empty or undecodable
    files are one-line errors."""
    if not path.is_file():
        raise TunelabError(str(path), "corpus file not found")
    decoded = read_utf8(path)
    lines = [ln for ln in decoded.text.splitlines() if ln.strip()]
    if not lines:
        raise TunelabError(str(path), "corpus is empty")
    return lines
