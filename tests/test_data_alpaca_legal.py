"""Alpaca and legal loaders on the shipped samples, the real files and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.alpaca import prepare_alpaca
from tunelab.data.common import split_records
from tunelab.data.legal import prepare_legal
from tunelab.errors import TunelabError

from .conftest import ROOT, section, shared_dataset


def alpaca(path: Path, **kw: object):
    return prepare_alpaca(section("prepare.alpaca", source=str(path), **kw))


def test_alpaca_json_and_jsonl_give_the_same_records(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Echo.", "input": "x", "output": "x"},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, _ = alpaca(tmp_path / "a.json")
    b, _ = alpaca(tmp_path / "a.jsonl")
    assert [r["messages"] for r in a] == [r["messages"] for r in b]
    assert a[1]["messages"][1]["content"] == "Echo.\n\nx"  # input joins the instruction
    assert a[0]["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        ("", "a.json", "file is empty"),
        ('[{"instruction": "x", "output": "y"},', "a.json line 1", "invalid JSON"),
        ('[{"instruction": "x"}]', "a.json record 1", "missing key 'output'"),
        ('[{"instruction": "x", "output": 3}]', "a.json record 1", "'output' must be a string"),
        ('["just a string"]', "a.json record 1", "expected an object"),
        ('[{"instruction": "x", "output": "y"}, {}]', "a.json record 2", "missing keys"),
        (
            '{"instruction": "x",\n "output": "y"}',
            "a.json",
            "found a JSON object (keys: instruction, output)",
        ),
        ('{"data": [{"instruction": "x", "output": "y"}]}', "a.json", "the list under 'data'"),
        ('{"instruction": "x", "output": "y"}\n{"instruction": ', "a.json line 2", "invalid JSON"),
    ],
)
def test_alpaca_malformed(tmp_path: Path, content: str, where: str, message: str) -> None:
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(TunelabError) as err:
        alpaca(tmp_path / "a.json")
    assert where in str(err.value) and message in str(err.value), str(err.value)


def test_alpaca_samples_drop_empty_duplicate_and_long() -> None:
    records, card = alpaca(ROOT / "data/raw/alpaca/sample.json")
    assert dict(card.dropped) == {"empty": 1, "duplicate": 1, "too_long": 1}
    assert card.rows_read == len(records) + 3


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "alpaca_zh_demo.json"])
def test_real_alpaca_files(name: str) -> None:
    records, card = alpaca(shared_dataset("alpaca", name))
    assert card.rows_read in (999, 1000)
    assert len(records) >= 0.95 * card.rows_read


def test_split_is_seeded_and_bounded() -> None:
    records, _ = alpaca(ROOT / "data/raw/alpaca/sample.json")
    params = section("prepare.alpaca").split
    train, val = split_records(records, params)
    train2, val2 = split_records(records, params)
    assert val == val2 and len(val) == min(
        params.max_val_rows, round(params.val_fraction * len(records))
    )
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in val}


def legal(**kw: object):
    return prepare_legal(section("prepare.legal", **kw))


def test_legal_builder_keeps_the_cited_articles() -> None:
    base = {
        "exam_source": str(ROOT / "data/raw/legal/judicial_exam.json"),
        "counsel_source": str(ROOT / "data/raw/legal/counsel_with_articles.json"),
    }
    records, card = legal(**base)
    counsel = [r for r in records if r["meta"]["kind"] == "counsel"]
    exam = [r for r in records if r["meta"]["kind"] == "exam"]
    assert counsel and exam and card.dropped["empty"] == 1
    for r in counsel:
        assert r["meta"]["laws"]
        assert "相关法条" in r["messages"][1]["content"]
        assert r["meta"]["laws"][0] in r["messages"][1]["content"]
    without, _ = legal(**base, include_articles=False)
    assert all("相关法条" not in r["messages"][1]["content"] for r in without)


def test_real_legal_files() -> None:
    exam = shared_dataset("legal", "judical_examination.json")
    counsel = shared_dataset("legal", "legal_counsel_with_article_v2.json")
    records, card = legal(exam_source=str(exam), counsel_source=str(counsel), max_chars=100000)
    assert card.rows_read == 3000
    kinds = {r["meta"]["kind"] for r in records}
    assert kinds == {"exam", "counsel"}
    with_laws = [r for r in records if r["meta"]["laws"]]
    assert len(with_laws) > 900


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"query": "q"}', "expected a JSON array"),
        ('[{"query": "q", "response": "r", "laws": "art"}]', "'laws' must be a list of strings"),
        ('[{"response": "r"}]', "missing key 'query'"),
    ],
)
def test_legal_malformed_counsel(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(TunelabError, match=message):
        legal(
            exam_source=str(ROOT / "data/raw/legal/judicial_exam.json"),
            counsel_source=str(tmp_path / "c.json"),
        )


def test_real_exam_file_with_input_output_type_records(tmp_path: Path) -> None:
    """Judicial-exam records shaped {input, output, type} (no instruction) read through
    params.prepare.legal.exam_fields; without the map the error names what it found."""
    exam = json.loads(shared_dataset("legal", "judical_examination.json").read_text("utf-8"))
    rows = [{"input": r[0]["instruction"], "output": r[0]["output"], "type": "exam"} for r in exam]
    path = tmp_path / "exam.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    counsel = str(ROOT / "data/raw/legal/counsel_with_articles.json")
    with pytest.raises(TunelabError) as err:
        legal(exam_source=str(path), counsel_source=counsel)
    assert f"{path} record 1: missing key 'instruction' (keys found: input, output, type" in str(
        err.value
    )
    fields = {"instruction": "input", "input": None, "output": "output"}
    records, card = legal(
        exam_source=str(path), counsel_source=counsel, exam_fields=fields, max_chars=100000
    )
    exam_records = [r for r in records if r["meta"]["kind"] == "exam"]
    assert card.inputs[str(path)].rows_read == 2000 and len(exam_records) > 1900
    assert exam_records[0]["messages"][1]["content"] == rows[0]["input"].strip()


def test_alpaca_field_map_and_control_characters(tmp_path: Path) -> None:
    rows = [{"prompt": "Say\x00 hi.", "answer": "hi\x07"}, {"prompt": "Echo.", "answer": "x"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fields = {"instruction": "prompt", "input": None, "output": "answer"}
    records, card = alpaca(tmp_path / "a.jsonl", fields=fields)
    assert records[0]["messages"][1:] == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
    ]
    entry = card.to_dict(records, [])["inputs"][str(tmp_path / "a.jsonl")]
    assert entry["rows_cleaned"] == {"control_characters": 1}
    assert entry["control_characters_removed"] == 2
