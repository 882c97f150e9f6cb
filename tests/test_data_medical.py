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
COLUMNS = ["department", "title", "ask", "answer"]
HEADER = "department,title,ask,answer\n"


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
    enc, rows = read_csv_rows(path, CANDIDATES, COLUMNS)
    assert enc == expected
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
    with pytest.raises(
        TunelabError, match=r"a.csv: does not decode as any of utf-8-sig, utf-8, gbk, gb18030"
    ):
        detect_encoding(path.read_bytes(), CANDIDATES, str(path))


def test_folder_without_csvs(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="holds no .csv files"):
        prepare_medical(section("prepare.medical", source=str(tmp_path)))


def test_real_gbk_file_reads_correctly(tmp_path: Path) -> None:
    src = shared_dataset("medical", "im_sample_5000-6000_excl_neurology.csv")
    folder = tmp_path / "medical"
    folder.mkdir()
    (folder / src.name).symlink_to(src)
    enc, rows = read_csv_rows(folder / src.name, CANDIDATES, COLUMNS)
    assert enc == "gbk"
    assert len(rows) == 6540  # SOURCE.md: 6,540 records, each parsed into 4 fields
    departments = Counter(r[1][0] for r in rows)
    assert departments["肝病科"] == 3121 and departments["心血管科"] == 1080
    records, card = prepare_medical(section("prepare.medical", source=str(folder)))
    assert card.rows_read == 6540 and card.encodings[str(folder / src.name)] == "gbk"
    assert 0 < len(records) < 6540 and card.dropped["too_long"] > 0
    assert all(len(r["messages"][1]["content"]) + len(reference_of(r)) <= 200 for r in records)
