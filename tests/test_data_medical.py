"""Medical CSV loader: encodings per file, CSV quirks, filters, one-line errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tunelab.data.common import reference_of
from tunelab.data.medical import detect_encoding, prepare_medical, read_csv_rows
from tunelab.errors import TunelabError

from .conftest import ROOT, section, shared_dataset

CANDIDATES = ["utf-8-sig", "utf-8", "gbk", "gb18030"]
HEADER = "department,title,ask,answer\n"


def params(source: Path | str, **kw: object):
    return section("prepare.medical", source=str(source), **kw)


def csv_file(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gbk"), ("gb18030", "gb18030")],
)
def test_each_encoding_is_detected(tmp_path: Path, encoding: str, expected: str) -> None:
    extra = "𠮷" if encoding == "gb18030" else ""  # GB18030 only differs outside GBK
    text = HEADER + f'消化科,胃痛怎么办,"我胃痛{extra}，\n怎么办？",建议清淡饮食。\n'
    path = csv_file(tmp_path, "a.csv", text, encoding)
    decoded, rows = read_csv_rows(path, params(tmp_path))
    assert decoded.encoding == expected
    assert rows[0][1][2] == f"我胃痛{extra}，\n怎么办？"  # quoted field with an embedded newline


def test_shipped_samples_are_read_with_their_encodings() -> None:
    records, card = prepare_medical(
        section("prepare.medical", source=str(ROOT / "data/raw/medical"))
    )
    by_file = {Path(k).name: v for k, v in card.encodings.items()}
    assert by_file == {
        "utf8.csv": "utf-8",
        "utf8_bom.csv": "utf-8-sig",
        "gbk.csv": "gbk",
        "gb18030.csv": "gb18030",
    }
    assert card.dropped == Counter({"empty": 1, "duplicate": 1, "too_long": 1})
    assert any("𠮷" in r["messages"][1]["content"] for r in records)
    assert all(len(r["messages"][1]["content"]) + len(reference_of(r)) <= 200 for r in records)


def test_length_limit_comes_from_params(tmp_path: Path) -> None:
    csv_file(tmp_path, "a.csv", HEADER + "内科,t,短问题,短回答\n内科,t," + "长" * 150 + ",回答\n")
    for limit, kept in ((200, 2), (100, 1)):
        records, card = prepare_medical(
            section("prepare.medical", source=str(tmp_path), max_chars=limit)
        )
        assert len(records) == kept
        assert card.dropped.get("too_long", 0) == 2 - kept


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("", "a.csv", "file is empty"),
        ("department,title,question,answer\n内科,t,q,a\n", "a.csv", "missing column 'ask'"),
        (
            HEADER + "内科,t,q,a\n内科,t,q\n",
            "a.csv row ending on line 3",
            "has 3 fields, the header has 4",
        ),
        (HEADER + '内科,t,"unterminated,a\n', "a.csv line", "malformed CSV"),
    ],
)
def test_malformed_files_fail_with_file_and_row(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    csv_file(tmp_path, "a.csv", text)
    with pytest.raises(TunelabError) as err:
        prepare_medical(section("prepare.medical", source=str(tmp_path)))
    assert where in str(err.value) and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a.csv", HEADER + "内科,t,q,a\n", "utf-16")
    with pytest.raises(TunelabError) as err:
        detect_encoding(path.read_bytes(), CANDIDATES, str(path), 0.1)
    assert (
        "a.csv: does not decode to plausible text as any of utf-8-sig, utf-8, gbk, gb18030"
        in str(err.value)
    )
    assert (
        "it looks like utf_16 (charset-normalizer): add that to prepare.medical.encodings"
        in str(err.value)
    )


def test_folder_without_csvs(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="holds no .csv files"):
        prepare_medical(section("prepare.medical", source=str(tmp_path)))


def test_real_gbk_file_reads_correctly(tmp_path: Path) -> None:
    src = shared_dataset("medical", "im_sample_5000-6000_excl_neurology.csv")
    folder = tmp_path / "medical"
    folder.mkdir()
    (folder / src.name).symlink_to(src)
    decoded, rows = read_csv_rows(folder / src.name, params(folder))
    assert decoded.encoding == "gbk"
    assert len(rows) == 6540  # SOURCE.md: 6,540 records, each parsed into 4 fields
    departments = Counter(r[1][0] for r in rows)
    assert departments["肝病科"] == 3121 and departments["心血管科"] == 1080
    records, card = prepare_medical(params(folder))
    assert card.rows_read == 6540 and card.encodings[str(folder / src.name)] == "gbk"
    assert 0 < len(records) < 6540 and card.dropped["too_long"] > 0
    assert all(len(r["messages"][1]["content"]) + len(reference_of(r)) <= 200 for r in records)


# ------------------------------------------------------ real text in other encodings


def real_rows(n: int) -> tuple[list[str], list[list[str]]]:
    """The header and the first ``n`` records of the real GBK file (../shared/datasets)."""
    import csv
    import io

    src = shared_dataset("medical", "im_sample_5000-6000_excl_neurology.csv")
    rows = list(csv.reader(io.StringIO(src.read_bytes().decode("gbk"), newline="")))
    return rows[0], rows[1 : n + 1]


def encoded_csv(codec: str, n: int = 40) -> tuple[bytes, list[list[str]]]:
    """Real records re-encoded with ``codec``: the characters it cannot write (simplified
    forms missing from Big5, Shift-JIS, EUC-KR) are left out, the rest is real text."""
    import csv
    import io

    header, body = real_rows(n)
    rows = [[f.encode(codec, "ignore").decode(codec) for f in r] for r in body]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue().encode(codec), rows


@pytest.mark.parametrize(
    ("codec", "expected", "how"),
    [
        ("big5", "big5", "first of prepare.medical.encodings"),
        ("shift_jis", "shift_jis", "first of prepare.medical.encodings"),
        ("euc-kr", "euc-kr", "first of prepare.medical.encodings"),
        ("utf-16", "utf-16", "byte-order mark"),  # with a BOM
        ("utf-16-le", "utf-16", "first of prepare.medical.encodings"),  # without
    ],
)
def test_real_text_in_other_encodings_is_read_right(
    tmp_path: Path, codec: str, expected: str, how: str
) -> None:
    """gb18030 "decodes" Big5 and EUC-KR bytes and gbk decodes Shift-JIS: the mojibake is
    rejected as implausible and the right codec, later in the list, wins."""
    data, rows = encoded_csv(codec)
    (tmp_path / "a.csv").write_bytes(data)
    records, card = prepare_medical(params(tmp_path))
    entry = card.inputs[str(tmp_path / "a.csv")]
    assert entry.encoding == expected and entry.how.startswith(how), entry
    asks = {r[2].strip() for r in rows}
    assert {r["messages"][1]["content"] for r in records} <= asks
    if codec in ("big5", "euc-kr"):
        assert "implausible" in entry.rejected["gb18030"]
        assert "private-use" in entry.rejected["gb18030"]


@pytest.mark.parametrize(("codec", "named"), [("big5", "big5"), ("euc-kr", "cp949")])
def test_no_plausible_candidate_names_the_likely_encoding(
    tmp_path: Path, codec: str, named: str
) -> None:
    data, _ = encoded_csv(codec)
    (tmp_path / "a.csv").write_bytes(data)
    with pytest.raises(TunelabError) as err:
        prepare_medical(params(tmp_path, encodings=CANDIDATES))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'a.csv'}: does not decode to plausible text"), text
    assert "gb18030: decodes but implausible" in text
    assert (
        f"it looks like {named} (charset-normalizer): add that to prepare.medical.encodings" in text
    )
    assert "\n" not in text


def test_one_bad_byte_in_utf8_names_line_and_offset(tmp_path: Path) -> None:
    data, _ = encoded_csv("utf-8")
    line_start = data.index(b"\n", 1500) + 1
    at = line_start + len("肝病科".encode())  # after the first field of that record
    bad = data[:at] + b"\xff" + data[at:]
    (tmp_path / "a.csv").write_bytes(bad)
    with pytest.raises(TunelabError) as err:
        prepare_medical(params(tmp_path))
    line = bad[:at].count(b"\n") + 1
    assert (
        f"looks like utf-8 (valid UTF-8 before that byte) but has an invalid byte at line {line} (byte offset {at}: 0xff)"
        in str(err.value)
    )


def test_data_card_lists_encoding_how_and_drops_per_file(tmp_path: Path) -> None:
    big5, _ = encoded_csv("big5", n=10)
    (tmp_path / "b.CSV").write_bytes(big5)
    csv_file(tmp_path, "a.Csv", HEADER + "内科,t,问\x00题,答\n内科,t,,答\n内科,t,问题,答\n", "gbk")
    csv_file(tmp_path, "notes.txt", "not data")
    (tmp_path / "old").mkdir()
    records, card = prepare_medical(params(tmp_path))
    summary = card.to_dict(records, [])
    a, b = (summary["inputs"][str(tmp_path / n)] for n in ("a.Csv", "b.CSV"))
    assert a["encoding"] == "gbk" and a["how"].startswith("first of prepare.medical.encodings")
    assert a["rejected_encodings"]["utf-8"].startswith("invalid byte at line 2")
    assert a["rows_read"] == 3
    assert a["rows_dropped"] == {"duplicate": 1, "empty": 1}  # NUL stripped: 问题 twice
    assert a["rows_cleaned"] == {"control_characters": 1}
    assert b["encoding"] == "big5" and b["rows_read"] == 10
    assert summary["skipped"] == {
        str(tmp_path / "notes.txt"): "not a .csv file (suffix '.txt')",
        str(tmp_path / "old"): "a folder (only the files directly in the source are read)",
    }
    assert all("\x00" not in r["messages"][1]["content"] for r in records)


def test_duplicated_and_missing_columns_are_named(tmp_path: Path) -> None:
    csv_file(tmp_path, "a.csv", "department,title,ask,answer,ask\n内科,t,q,a,q2\n")
    with pytest.raises(
        TunelabError, match=r"column 'ask' appears 2 times in the header \(columns 3, 5\)"
    ):
        prepare_medical(params(tmp_path))
    csv_file(tmp_path, "a.csv", "department,title,question,reply\n内科,t,q,a\n")
    with pytest.raises(TunelabError, match=r"missing columns 'ask', 'answer' \(header:"):
        prepare_medical(params(tmp_path))


def test_column_names_and_optional_columns_come_from_params(tmp_path: Path) -> None:
    csv_file(tmp_path, "a.csv", "问题,回答\n胃痛怎么办,清淡饮食\n头痛怎么办,多休息\n")
    columns = {"department": None, "title": None, "ask": "问题", "answer": "回答"}
    records, _ = prepare_medical(params(tmp_path, columns=columns))
    assert [r["messages"][1]["content"] for r in records] == ["胃痛怎么办", "头痛怎么办"]
    assert records[0]["meta"]["department"] == ""
