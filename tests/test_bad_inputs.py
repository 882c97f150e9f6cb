"""Bad-input suite: each malformed input stops its stage with one clear line and exit 1.

Every case runs the real stage entry point (`python -m stages.<name>`) in a
scratch project, then checks: exit status 1, a single `error:` line naming the
file, row or key, no traceback, and the previous output left untouched (no
half-written or temporary directory beside it). NOTED holds inputs that are
accepted with what was done to them written in the data card. DVC_CASES runs one
case of every kind again through `dvc repro` / `dvc exp run` in a DVC clone: the
`check` stage stops the run before DVC deletes anything, every previous output
intact.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tunelab.scenarios import SCENARIOS

from .conftest import GIT, ROOT, make_clone, run_module, sh

Setup = Callable[[Path], None]


def edit_params(fn: Callable[[dict], None]) -> Setup:
    def setup(root: Path) -> None:
        p = root / "params.yaml"
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        fn(data)
        p.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")

    return setup


def write(rel: str, content: str | bytes) -> Setup:
    def setup(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def remove(rel: str) -> Setup:
    def setup(root: Path) -> None:
        p = root / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return setup


def both(*setups: Setup) -> Setup:
    def setup(root: Path) -> None:
        for s in setups:
            s(root)

    return setup


def only_medical(name: str, content: str | bytes) -> Setup:
    def setup(root: Path) -> None:
        for f in (root / "data/raw/medical").glob("*.csv"):
            f.unlink()
        write(f"data/raw/medical/{name}", content)(root)

    return setup


def gsm8k_line(rel: str, line: str) -> Setup:
    """Append one line to a GSM8K JSONL file."""

    def setup(root: Path) -> None:
        path = root / rel
        path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")

    return setup


def workbook(rows: list[dict], files: dict[str, bytes] | None = None) -> Setup:
    """Replace the car_insurance workbook (and add image files beside it)."""

    def setup(root: Path) -> None:
        from tunelab.samples.odometer import SAMPLE_COLUMNS, write_car_insurance_xlsx

        folder = root / "data/raw/car_insurance"
        for rel, data in (files or {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        write_car_insurance_xlsx(folder / "claims.xlsx", rows, SAMPLE_COLUMNS)

    return setup


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (112, 56), "white").save(buf, format="PNG")
    return buf.getvalue()


def strict(d: dict) -> None:
    d["prepare"]["car_insurance"]["strict"] = True


H = "department,title,ask,answer\n"
# Traditional Chinese written for these tests (Big5 has every character of it).
TRAD = (
    "內科,頭痛,我最近經常頭痛，晚上睡不好，應該怎麼辦？,建議規律作息，多休息，必要時到醫院檢查。\n"
    "消化科,胃痛,吃完飯以後胃很痛，還會噁心，是什麼問題？,可能是胃炎，請清淡飲食，症狀持續請就醫。\n"
    "心血管科,血壓,我的血壓偏高，需要每天吃藥嗎？,請先測量一週血壓，再請醫生決定是否長期服藥。\n"
)
CN_ENCODINGS = ["utf-8-sig", "utf-8", "gbk", "gb18030"]
ALPACA = "data/raw/alpaca/sample.json"
EXAM = "data/raw/legal/judicial_exam.json"
COUNSEL = "data/raw/legal/counsel_with_articles.json"
GSM_TRAIN = "data/raw/gsm8k/train.jsonl"
GSM_TEST = "data/raw/gsm8k/test.jsonl"
CLAIMS = "data/raw/car_insurance/claims.xlsx"
ROW = {"image": "images/odo_0000.jpg", "prompt": "读数？", "answer": "里程数：1 公里"}

# (case id, stage argv, setup, text the error line must contain, output that must be untouched)
CASES: list[tuple[str, list[str], Setup, str, str]] = [
    (
        "alpaca-missing-file",
        ["prepare", "alpaca"],
        remove(ALPACA),
        f"{ALPACA}: file not found",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-empty-file",
        ["prepare", "alpaca"],
        write(ALPACA, ""),
        f"{ALPACA}: file is empty",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-truncated-json",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "a", "output"'),
        f"{ALPACA} line 1: invalid JSON",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-missing-column",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "a", "input": ""}]'),
        f"{ALPACA} record 1: missing key 'output'",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-renamed-column",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"prompt": "a", "output": "b"}]'),
        "missing key 'instruction'",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-wrong-type",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "a", "output": 5}]'),
        f"{ALPACA} record 1: 'output' must be a string",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-gbk-bytes",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "你好，医生。", "output": "x"}]'.encode("gbk")),
        "not UTF-8 text",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-all-rows-empty",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "", "output": ""}]'),
        "prepare.alpaca: only 0 usable rows",
        "data/prepared/alpaca",
    ),
    (
        "medical-folder-missing",
        ["prepare", "medical"],
        remove("data/raw/medical"),
        "data/raw/medical: not a folder",
        "data/prepared/medical",
    ),
    (
        "medical-no-csv",
        ["prepare", "medical"],
        only_medical("notes.txt", "x"),
        "holds no .csv files",
        "data/prepared/medical",
    ),
    (
        "medical-empty-file",
        ["prepare", "medical"],
        only_medical("a.csv", ""),
        "data/raw/medical/a.csv: file is empty",
        "data/prepared/medical",
    ),
    (
        "medical-renamed-column",
        ["prepare", "medical"],
        only_medical("a.csv", "department,title,question,answer\n内科,t,q,a\n"),
        "a.csv: missing column 'ask'",
        "data/prepared/medical",
    ),
    (
        "medical-truncated-csv",
        ["prepare", "medical"],
        only_medical("a.csv", H + '内科,t,"问题没有结束,a\n'),
        "a.csv line",
        "data/prepared/medical",
    ),
    (
        "medical-short-row",
        ["prepare", "medical"],
        only_medical("a.csv", H + "内科,t,q,a\n内科,t,q\n"),
        "a.csv row ending on line 3: has 3 fields",
        "data/prepared/medical",
    ),
    (
        "medical-utf16-be-not-in-params",
        ["prepare", "medical"],
        only_medical("a.csv", (H + TRAD).encode("utf-16-be")),
        "a.csv: does not decode to plausible text as any of utf-8-sig, utf-8, gbk, gb18030, "
        "big5, shift_jis, euc-kr, utf-16 (utf-8: invalid byte at line",
        "data/prepared/medical",
    ),
    (
        "medical-mixed-corrupt-bytes",
        ["prepare", "medical"],
        only_medical(
            "a.csv",
            (H + "内科,t,问,答\n").encode("gbk") + "内科,t,问,答\n".encode() + b"\xff\xfe\n",
        ),
        "a.csv: does not decode to plausible text as any of",
        "data/prepared/medical",
    ),
    (
        "medical-unknown-encoding-param",
        ["prepare", "medical"],
        edit_params(lambda d: d["prepare"]["medical"].__setitem__("encodings", ["klingon"])),
        "unknown encoding 'klingon'",
        "data/prepared/medical",
    ),
    (
        "medical-params-typo",
        ["prepare", "medical"],
        edit_params(lambda d: d["prepare"]["medical"].__setitem__("max_char", 100)),
        "params.yaml: prepare.medical.max_char: unknown key",
        "data/prepared/medical",
    ),
    (
        "medical-negative-limit",
        ["prepare", "medical"],
        edit_params(lambda d: d["prepare"]["medical"].__setitem__("max_chars", -1)),
        "prepare.medical.max_chars: Input should be greater than 0",
        "data/prepared/medical",
    ),
    (
        "legal-not-an-array",
        ["prepare", "legal"],
        write(EXAM, '{"instruction": "q"}'),
        f"{EXAM}: found a JSON object (keys: instruction), expected a JSON array of records",
        "data/prepared/legal",
    ),
    (
        "legal-two-element-item",
        ["prepare", "legal"],
        write(EXAM, '[[{"instruction": "q", "output": "a"}, {}]]'),
        f"{EXAM} record 1: expected a one-element list",
        "data/prepared/legal",
    ),
    (
        "legal-laws-not-a-list",
        ["prepare", "legal"],
        write(COUNSEL, '[{"query": "q", "laws": "第一条", "response": "r"}]'),
        f"{COUNSEL} record 1: 'laws' must be a list of strings",
        "data/prepared/legal",
    ),
    (
        "legal-missing-query",
        ["prepare", "legal"],
        write(COUNSEL, '[{"laws": [], "response": "r"}]'),
        "missing key 'query'",
        "data/prepared/legal",
    ),
    (
        "legal-no-source",
        ["prepare", "legal"],
        edit_params(lambda d: d["prepare"]["legal"].update(exam_source=None, counsel_source=None)),
        "prepare.legal.exam_source: Input should be a valid string (got None); "
        "prepare.legal.counsel_source: Input should be a valid string (got None)",
        "data/prepared/legal",
    ),
    (
        "params-invalid-yaml",
        ["prepare", "alpaca"],
        write("params.yaml", "prepare:\n  alpaca: [oops\n"),
        "params.yaml line",
        "data/prepared/alpaca",
    ),
    (
        "params-missing-section",
        ["train", "alpaca"],
        edit_params(lambda d: d["train"].pop("alpaca")),
        "params.yaml: train.alpaca: missing section",
        "adapters/alpaca",
    ),
    (
        "params-zero-learning-rate",
        ["train", "alpaca"],
        edit_params(lambda d: d["train"]["alpaca"]["optim"].__setitem__("learning_rate", 0.0)),
        "train.alpaca.optim.learning_rate: Input should be greater than 0",
        "adapters/alpaca",
    ),
    (
        "params-negative-batch",
        ["train", "medical"],
        edit_params(
            lambda d: d["train"]["medical"]["optim"].__setitem__("per_device_train_batch_size", -8)
        ),
        "per_device_train_batch_size: Input should be greater than 0",
        "adapters/medical",
    ),
    (
        "params-zero-lora-rank",
        ["train", "legal"],
        edit_params(lambda d: d["train"]["legal"]["lora"].__setitem__("r", 0)),
        "train.legal.lora.r: Input should be greater than 0",
        "adapters/legal",
    ),
    (
        "params-string-for-int",
        ["evaluate", "alpaca"],
        edit_params(lambda d: d["evaluate"]["alpaca"].__setitem__("max_samples", "all")),
        "evaluate.alpaca.max_samples: Input should be a valid integer",
        "reports/metrics/evaluate/alpaca.json",
    ),
    (
        "params-bad-backend",
        ["train", "alpaca"],
        edit_params(lambda d: d["train"]["alpaca"].__setitem__("backend", "cuda")),
        "train.alpaca.backend: Input should be 'auto', 'unsloth' or 'hf'",
        "adapters/alpaca",
    ),
    (
        "base-corpus-missing",
        ["base", "text"],
        remove("data/raw/corpus/corpus.txt"),
        "data/raw/corpus/corpus.txt: corpus file not found",
        "models/base/text",
    ),
    (
        "base-corpus-empty",
        ["base", "text"],
        write("data/raw/corpus/corpus.txt", "\n\n"),
        "corpus is empty",
        "models/base/text",
    ),
    (
        "train-base-model-missing",
        ["train", "alpaca"],
        remove("models/base/text"),
        "models/base/text: no base model here",
        "adapters/alpaca",
    ),
    (
        "train-base-pickle-only",
        ["train", "alpaca"],
        both(
            remove("models/base/text/model.safetensors"),
            write("models/base/text/pytorch_model.bin", b"\x80\x02}q\x00."),
        ),
        "only pickle weights (pytorch_model.bin)",
        "adapters/alpaca",
    ),
    (
        "train-base-path-typo",
        ["train", "alpaca"],
        both(
            remove("models/base/text"),
            write(
                "models/base/text/base.json",
                '{"name_or_path": "models/no-such-model", "revision": null}',
            ),
        ),
        "models/no-such-model: cannot load",
        "adapters/alpaca",
    ),
    (
        "train-data-missing",
        ["train", "alpaca"],
        remove("data/prepared/alpaca/train.jsonl"),
        "data/prepared/alpaca/train.jsonl: file not found",
        "adapters/alpaca",
    ),
    (
        "evaluate-corrupt-adapter",
        ["evaluate", "alpaca"],
        write("adapters/alpaca/adapter_model.safetensors", b"\x00garbage"),
        "adapters/alpaca/adapter_model.safetensors: corrupt adapter weights",
        "reports/metrics/evaluate/alpaca.json",
    ),
    (
        "evaluate-adapter-missing",
        ["evaluate", "alpaca"],
        remove("adapters/alpaca/adapter_config.json"),
        "adapters/alpaca: not a LoRA adapter",
        "reports/metrics/evaluate/alpaca.json",
    ),
    (
        "evaluate-val-bad-line",
        ["evaluate", "alpaca"],
        write("data/prepared/alpaca/val.jsonl", '{"messages": []}\n{not json\n'),
        "data/prepared/alpaca/val.jsonl line 2: invalid JSON",
        "reports/metrics/evaluate/alpaca.json",
    ),
    # ------------------------------------------------ real files nobody here wrote
    (
        "medical-big5-not-in-params",
        ["prepare", "medical"],
        both(
            only_medical("a.csv", (H + TRAD).encode("big5")),
            edit_params(lambda d: d["prepare"]["medical"].__setitem__("encodings", CN_ENCODINGS)),
        ),
        "gb18030: decodes but implausible (mess ratio",
        "data/prepared/medical",
    ),
    (
        "medical-big5-suspected-encoding-named",
        ["prepare", "medical"],
        both(
            only_medical("a.csv", (H + TRAD).encode("big5")),
            edit_params(lambda d: d["prepare"]["medical"].__setitem__("encodings", CN_ENCODINGS)),
        ),
        "it looks like big5 (charset-normalizer): add that to prepare.medical.encodings",
        "data/prepared/medical",
    ),
    (
        "medical-utf8-one-bad-byte",
        ["prepare", "medical"],
        only_medical(
            "a.csv",
            (H + "消化科,胃痛,我胃痛怎么办？,清淡饮食。\n内科,头痛,头痛").encode()
            + b"\xff"
            + "怎么办？,多休息。\n".encode(),
        ),
        "a.csv: looks like utf-8 (valid UTF-8 before that byte) but has an invalid byte "
        "at line 3 (byte offset 103: 0xff)",
        "data/prepared/medical",
    ),
    (
        "medical-two-missing-columns",
        ["prepare", "medical"],
        only_medical("a.csv", "department,title,question,reply\n内科,t,q,a\n"),
        "a.csv: missing columns 'ask', 'answer' (header: department, title, question, reply",
        "data/prepared/medical",
    ),
    (
        "medical-duplicated-column",
        ["prepare", "medical"],
        only_medical("a.csv", "department,title,ask,answer,answer\n内科,t,q,a,b\n"),
        "a.csv: column 'answer' appears 2 times in the header (columns 4, 5)",
        "data/prepared/medical",
    ),
    (
        "medical-upper-case-suffix-is-read",
        ["prepare", "medical"],
        only_medical("A.CSV", H + "内科,t,问题,\n"),
        "prepare.medical: only 0 usable rows",
        "data/prepared/medical",
    ),
    (
        "medical-columns-map-typo",
        ["prepare", "medical"],
        edit_params(
            lambda d: d["prepare"]["medical"]["columns"].__setitem__(
                "answr", d["prepare"]["medical"]["columns"].pop("answer")
            )
        ),
        "prepare.medical.columns.answr: unknown key (did you mean 'answer'?); "
        "prepare.medical.columns.answer: missing key",
        "data/prepared/medical",
    ),
    (
        "medical-max-mess-zero",
        ["prepare", "medical"],
        edit_params(lambda d: d["prepare"]["medical"].__setitem__("max_mess", 0)),
        "prepare.medical.max_mess: Input should be greater than 0",
        "data/prepared/medical",
    ),
    (
        "alpaca-pretty-printed-object",
        ["prepare", "alpaca"],
        write(ALPACA, '{\n  "instruction": "a",\n  "input": "",\n  "output": "b"\n}\n'),
        f"{ALPACA}: found a JSON object (keys: instruction, input, output), expected a JSON "
        "array of records or JSON Lines (one object per line)",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-records-under-a-key",
        ["prepare", "alpaca"],
        write(ALPACA, '{"data": [{"instruction": "a", "output": "b"}]}'),
        "are the records the list under 'data'?",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-jsonl-bad-line",
        ["prepare", "alpaca"],
        write(ALPACA, '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output"\n'),
        f"{ALPACA} line 3: invalid JSON",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-second-record-numbered-2",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "a", "output": "b"}, {"input": "c"}]'),
        f"{ALPACA} record 2: missing keys 'instruction', 'output' (keys found: input; "
        "the names come from prepare.alpaca.fields)",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-field-map-not-in-file",
        ["prepare", "alpaca"],
        edit_params(lambda d: d["prepare"]["alpaca"]["fields"].__setitem__("output", "answer")),
        f"{ALPACA} record 1: missing key 'answer' (keys found: instruction, input, output",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-source-is-a-folder",
        ["prepare", "alpaca"],
        edit_params(lambda d: d["prepare"]["alpaca"].__setitem__("source", "data/raw/alpaca")),
        "data/raw/alpaca: is a folder, expected a file",
        "data/prepared/alpaca",
    ),
    (
        "alpaca-utf16-json",
        ["prepare", "alpaca"],
        write(ALPACA, '[{"instruction": "你好", "output": "好"}]'.encode("utf-16")),
        f"{ALPACA}: not UTF-8 text: invalid byte at line 1 (byte offset 0: 0xff); it looks like "
        "utf_16 (charset-normalizer): convert it to UTF-8",
        "data/prepared/alpaca",
    ),
    (
        "legal-second-record-numbered-2",
        ["prepare", "legal"],
        write(COUNSEL, '[{"query": "q", "laws": [], "response": "r"}, {"query": "q2"}]'),
        f"{COUNSEL} record 2: missing key 'response' (keys found: query)",
        "data/prepared/legal",
    ),
    (
        "legal-exam-input-output-type-without-map",
        ["prepare", "legal"],
        write(EXAM, '[{"input": "问题", "output": "答案", "type": "exam"}]'),
        f"{EXAM} record 1: missing key 'instruction' (keys found: input, output, type; the "
        "names come from prepare.legal.exam_fields)",
        "data/prepared/legal",
    ),
    (
        "legal-json-syntax-line",
        ["prepare", "legal"],
        write(COUNSEL, '[\n  {"query": "q",\n   "laws": [],\n   "response": }\n]'),
        f"{COUNSEL} line 4: invalid JSON",
        "data/prepared/legal",
    ),
    (
        "gsm8k-bad-final-answer",
        ["prepare", "gsm8k"],
        gsm8k_line(GSM_TRAIN, '{"question": "q?", "answer": "3 apples"}'),
        f"{GSM_TRAIN} line 803: answer has no final '#### <number>' line",
        "data/prepared/gsm8k",
    ),
    (
        "gsm8k-not-utf8",
        ["prepare", "gsm8k"],
        write(GSM_TEST, '{"question": "苹果?", "answer": "#### 3"}\n'.encode("gbk")),
        f"{GSM_TEST}: not UTF-8 text: invalid byte at line 1 (byte offset 16: 0xb9)",
        "data/prepared/gsm8k",
    ),
    (
        "gsm8k-fields-map",
        ["prepare", "gsm8k"],
        edit_params(lambda d: d["prepare"]["gsm8k"]["fields"].__setitem__("question", "problem")),
        f"{GSM_TEST} line 1: missing or empty key 'problem'",
        "data/prepared/gsm8k",
    ),
    (
        "gsm8k-missing-test-file",
        ["prepare", "gsm8k"],
        remove(GSM_TEST),
        f"{GSM_TEST}: file not found",
        "data/prepared/gsm8k",
    ),
    (
        "car-insurance-two-missing-columns",
        ["prepare", "car_insurance"],
        edit_params(
            lambda d: d["prepare"]["car_insurance"]["columns"].update(image="照片", answer="答案")
        ),
        f"{CLAIMS} sheet 'claims': missing columns '照片' (columns.image), '答案' (columns.answer)",
        "data/prepared/car_insurance",
    ),
    (
        "car-insurance-strict-uncomputed-formula",
        ["prepare", "car_insurance"],
        both(workbook([ROW, {**ROW, "answer": '="里程数："&"2 公里"'}]), edit_params(strict)),
        f"{CLAIMS} row 3: a formula cell has no computed value (open and save the workbook in "
        "a spreadsheet application) ('标准答案' cell C3: =",
        "data/prepared/car_insurance",
    ),
    (
        "car-insurance-strict-unreadable-image-no-bytesio",
        ["prepare", "car_insurance"],
        both(
            workbook([ROW, {**ROW, "image": "x.jpg"}], files={"x.jpg": b"not an image"}),
            edit_params(strict),
        ),
        f"{CLAIMS} row 3: the image cannot be decoded (cannot identify image file; x.jpg)",
        "data/prepared/car_insurance",
    ),
    (
        "car-insurance-workbook-missing",
        ["prepare", "car_insurance"],
        remove(CLAIMS),
        f"{CLAIMS}: workbook not found",
        "data/prepared/car_insurance",
    ),
    (
        "car-insurance-image-dir-missing-key",
        ["prepare", "car_insurance"],
        edit_params(lambda d: d["prepare"]["car_insurance"].pop("image_dir")),
        "prepare.car_insurance.image_dir: missing key",
        "data/prepared/car_insurance",
    ),
    (
        "params-renamed-lora-key",
        ["train", "alpaca"],
        edit_params(
            lambda d: d["train"]["alpaca"]["lora"].__setitem__(
                "rank", d["train"]["alpaca"]["lora"].pop("r")
            )
        ),
        "params.yaml: train.alpaca.lora.rank: unknown key (did you mean 'r'?); "
        "train.alpaca.lora.r: missing key",
        "adapters/alpaca",
    ),
    (
        "params-added-lora-key",
        ["train", "alpaca"],
        edit_params(lambda d: d["train"]["alpaca"]["lora"].__setitem__("rank", 16)),
        "params.yaml: train.alpaca.lora.rank: unknown key (did you mean 'r'?)",
        "adapters/alpaca",
    ),
    (
        "check-unknown-section",
        ["check"],
        edit_params(lambda d: d.__setitem__("trian", d.pop("train"))),
        "params.yaml: trian: unknown key (did you mean 'train'?)",
        "data/checked.json",
    ),
    (
        "check-other-section-invalid",
        ["check"],
        edit_params(lambda d: d["evaluate"]["legal"]["decoding"].__setitem__("top_p", 0.0)),
        "params.yaml: evaluate.legal.decoding.top_p: Input should be greater than 0",
        "data/checked.json",
    ),
    (
        "check-bad-input-of-a-scenario",
        ["check"],
        write(EXAM, '{"instruction": "q"}'),
        f"{EXAM}: found a JSON object (keys: instruction), expected a JSON array of records",
        "data/checked.json",
    ),
    (
        "base-corpus-not-utf8",
        ["base", "text"],
        write("data/raw/corpus/corpus.txt", "内科医生\n".encode("gbk") * 20),
        "data/raw/corpus/corpus.txt: not UTF-8 text: invalid byte at line 1 (byte offset 0: 0xc4)",
        "models/base/text",
    ),
    (
        "preference-pair-not-a-string",
        ["prepare", "preference"],
        write(
            "data/raw/preference/pairs.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
            '{"prompt": "a", "chosen": 5, "rejected": "c"}\n',
        ),
        "data/raw/preference/pairs.jsonl line 2: 'chosen' must be a string",
        "data/prepared/preference",
    ),
    (
        "pretrain-document-without-text",
        ["pretrain", "medical"],
        write("data/raw/pretrain/medical/domain.jsonl", '{"text": "ok"}\n{"body": "x"}\n'),
        "data/raw/pretrain/medical/domain.jsonl line 2: expected an object with 'text'",
        "data/prepared/pretrain_medical",
    ),
    (
        "pretrain-embedding-rate-without-embeddings",
        ["pretrain", "medical"],
        edit_params(lambda d: d["pretrain"]["medical"]["lora"].update(modules_to_save=[])),
        "pretrain.medical: Value error, optim.embedding_learning_rate: set, but",
        "data/prepared/pretrain_medical",
    ),
    (
        "train-init-from-not-an-adapter",
        ["train", "medical"],
        edit_params(lambda d: d["train"]["medical"].update(init_from="adapters/nothing")),
        "adapters/nothing: not a LoRA adapter",
        "adapters/medical",
    ),
    (
        "train-pref-unknown-method",
        ["train_pref", "dpo"],
        edit_params(lambda d: d["train_pref"]["dpo"].update(method="ppo")),
        "train_pref.dpo.method",
        "adapters/dpo",
    ),
]


# Cases that are accepted, with what was done written in the data card:
# (case id, scenario, setup, check of (prepared folder, data card))
Check = Callable[[Path, dict], None]


def card_input(card: dict, rel: str) -> dict:
    return card["inputs"][rel]


def _nul_alpaca(out: Path, card: dict) -> None:
    assert card_input(card, ALPACA)["rows_cleaned"] == {"control_characters": 1}
    assert card_input(card, ALPACA)["control_characters_removed"] == 2
    text = (out / "train.jsonl").read_text() + (out / "val.jsonl").read_text()
    assert "\\u0000" not in text and "\\u0007" not in text and "Say hello" in text


def _big5_read(out: Path, card: dict) -> None:
    entry = card_input(card, "data/raw/medical/a.csv")
    assert entry["encoding"] == "big5" and "implausible" in entry["rejected_encodings"]["gb18030"]
    assert "應該怎麼辦" in (out / "train.jsonl").read_text() + (out / "val.jsonl").read_text()


def _case_and_skipped(out: Path, card: dict) -> None:
    assert set(card["inputs"]) == {"data/raw/medical/A.CSV", "data/raw/medical/b.Csv"}
    assert card["skipped"] == {"data/raw/medical/notes.txt": "not a .csv file (suffix '.txt')"}
    assert card_input(card, "data/raw/medical/b.Csv")["rows_dropped"] == {"empty": 1}


def _gsm8k_exact(out: Path, card: dict) -> None:
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert rows[-2]["target"] == "1234567890123456789012345678901234567.891"
    assert rows[-1]["target"] == "1080" and rows[-1]["answer"].endswith("#### 1,080")
    assert card["answers"]["train"]["non_ascii_digits"] == 1
    assert card_input(card, GSM_TRAIN)["rows_cleaned"] == {"non_ascii_digits": 1}


def _windows_path(out: Path, card: dict) -> None:
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    rows += [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert sorted(r["meta"]["image_source"] for r in rows) == [
        "images/odo_0001.jpg",
        "images\\odo_0000.jpg",
    ]
    assert card_input(card, CLAIMS)["rows_dropped"] == {"uncomputed_formula": 1}


def _exam_fields(out: Path, card: dict) -> None:
    assert card_input(card, EXAM)["rows_read"] == 2
    text = (out / "train.jsonl").read_text() + (out / "val.jsonl").read_text()
    assert "合同的效力如何" in text


NOTED: list[tuple[str, str, Setup, Check]] = [
    (
        "alpaca-nul-and-bell-stripped",
        "alpaca",
        write(
            ALPACA,
            '[{"instruction": "Say\\u0000 hello.", "output": "hello\\u0007"},'
            ' {"instruction": "Echo.", "output": "echo"}]',
        ),
        _nul_alpaca,
    ),
    (
        "medical-big5-read-as-big5",
        "medical",
        only_medical("a.csv", (H + TRAD).encode("big5")),
        _big5_read,
    ),
    (
        "medical-any-case-suffix-and-skipped-files",
        "medical",
        both(
            only_medical("A.CSV", H + "内科,t,问题一,答案一\n内科,t,问题二,答案二\n"),
            write("data/raw/medical/b.Csv", H + "内科,t,,答\n内科,t,问题三,答案三\n"),
            write("data/raw/medical/notes.txt", "not data"),
        ),
        _case_and_skipped,
    ),
    (
        "gsm8k-40-digits-exact-full-width-noted",
        "gsm8k",
        both(
            gsm8k_line(
                GSM_TRAIN,
                '{"question": "Long?", "answer": "x\\n#### 1234567890123456789012345678901234567.891"}',
            ),
            gsm8k_line(GSM_TRAIN, '{"question": "Wide?", "answer": "x\\n#### １,０８０"}'),
        ),
        _gsm8k_exact,
    ),
    (
        "car-insurance-windows-path-and-formula",
        "car_insurance",
        workbook(
            [
                {**ROW, "image": "images\\odo_0000.jpg"},
                {**ROW, "image": "images/odo_0001.jpg"},
                {**ROW, "answer": '="里程数："&"2 公里"'},
            ]
        ),
        _windows_path,
    ),
    (
        "legal-exam-input-output-type-with-map",
        "legal",
        both(
            write(
                EXAM,
                '[{"input": "合同的效力如何？", "output": "有效。", "type": "exam"},'
                ' {"input": "何为要约？", "output": "希望订立合同的意思表示。", "type": "exam"}]',
            ),
            edit_params(
                lambda d: d["prepare"]["legal"].__setitem__(
                    "exam_fields", {"instruction": "input", "input": None, "output": "output"}
                )
            ),
        ),
        _exam_fields,
    ),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """A scratch project with raw data, a base model, prepared data, an adapter and previous outputs."""
    root = tmp_path_factory.mktemp("template")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(ROOT / "data/raw", root / "data/raw")
    shutil.copytree(tiny_base, root / "models/base/text")
    for s in ("check", "alpaca", "medical", "legal", "gsm8k", "car_insurance"):
        argv = ["stages.check"] if s == "check" else ["stages.prepare", s]
        res = run_module(argv, cwd=root, env={"PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
    for s in ("alpaca", "medical", "legal"):
        adapter = root / "adapters" / s
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        (adapter / "adapter_model.safetensors").write_bytes(b"previous")
    (root / "reports/metrics/evaluate").mkdir(parents=True)
    (root / "reports/metrics/evaluate/alpaca.json").write_text('{"previous": 1}')
    return root


def snapshot(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (or of the file itself)."""
    import hashlib

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def test_the_table_has_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60
    ids = [c[0] for c in CASES] + [c[0] for c in NOTED]
    assert len(set(ids)) == len(ids)
    assert set(DVC_CASES) <= {c[0] for c in CASES}


def run_case(root: Path, argv: list[str]) -> subprocess.CompletedProcess:
    return run_module(
        [f"stages.{argv[0]}", *argv[1:]],
        cwd=root,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-2000:]
    return errors[0]


@pytest.mark.parametrize(
    ("case", "argv", "setup", "expected", "output"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_fails_cleanly(
    tmp_path: Path,
    template: Path,
    case: str,
    argv: list[str],
    setup: Setup,
    expected: str,
    output: str,
) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    if case == "evaluate-corrupt-adapter":  # a real adapter config, so loading reaches the weights
        (root / "adapters/alpaca/adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "r": 4,
                    "lora_alpha": 8,
                    "target_modules": ["q_proj"],
                    "task_type": "CAUSAL_LM",
                }
            )
        )
    setup(root)
    out = root / output
    before = snapshot(out) if out.exists() else None
    res = run_case(root, argv)
    assert res.returncode == 1, f"exit {res.returncode}\n{res.stderr[-2000:]}"
    line = one_error_line(res.stderr)
    assert expected in line, line
    if before is not None:
        assert snapshot(out) == before, f"{output} changed"
    leftovers = (
        [p.name for p in out.parent.glob(f".{out.name}.tmp-*")] if out.parent.exists() else []
    )
    assert leftovers == []


@pytest.mark.parametrize(("case", "scenario", "setup", "check"), NOTED, ids=[c[0] for c in NOTED])
def test_accepted_input_is_noted_in_the_data_card(
    tmp_path: Path, template: Path, case: str, scenario: str, setup: Setup, check: Check
) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    setup(root)
    res = run_case(root, ["prepare", scenario])
    assert res.returncode == 0, res.stderr[-2000:]
    out = root / "data/prepared" / scenario
    check(out, json.loads((out / "data_card.json").read_text(encoding="utf-8")))


def test_prepared_folders_and_files_follow_the_umask(tmp_path: Path) -> None:
    """mkdtemp / mkstemp make 0700 / 0600: outputs are chmod-ed to what the umask allows."""
    from tunelab.io import atomic_dir, write_json

    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o640


# ------------------------------------------------------------- through `dvc repro`
#
# The same setups, applied to a DVC clone in which train@alpaca (tiny settings) and
# every prepare stage already ran: `dvc repro` must stop in `check` with the stage's
# one line, before DVC deletes any output, and every previous output must be intact.
# One case of every kind (params typo, params value, each loader's input, the corpus).

KEPT = (
    "data/prepared",
    "adapters/alpaca",
    "reports/train/alpaca",
    "models/base/text",
)
# case id -> (dvc command, or None for `dvc repro <target>`; target)
DVC_CASES: dict[str, str] = {
    "params-added-lora-key": "exp run -S +train.alpaca.lora.rank=16",
    "params-renamed-lora-key": "repro train@alpaca",
    "params-zero-learning-rate": "repro train@alpaca",
    "params-missing-section": "repro train@alpaca",
    "check-unknown-section": "repro train@alpaca",
    "medical-params-typo": "repro prepare@medical",
    "alpaca-truncated-json": "repro train@alpaca",
    "alpaca-second-record-numbered-2": "repro prepare@alpaca",
    "medical-big5-suspected-encoding-named": "repro prepare@medical",
    "medical-duplicated-column": "repro prepare@medical",
    "legal-exam-input-output-type-without-map": "repro prepare@legal",
    "gsm8k-bad-final-answer": "repro prepare@gsm8k",
    "car-insurance-strict-uncomputed-formula": "repro prepare@car_insurance",
    "base-corpus-empty": "repro train@alpaca",
}
# A key that dvc.yaml interpolates (here train.alpaca.init_from, train@alpaca's starting
# point) is read by DVC itself while it parses dvc.yaml, before any stage: without it DVC
# stops with its own one line naming dvc.yaml and the key, and runs nothing.
DVC_PARSE_ERRORS = {
    "params-missing-section": "Could not find 'train.alpaca.init_from'",
    "check-unknown-section": "Could not find 'train.alpaca.init_from'",
}


def shrink(data: dict) -> None:
    """Tiny settings: a base in a few steps, two training steps."""
    data["base"]["text"]["pretrain"]["steps"] = 4
    data["train"]["alpaca"]["optim"]["max_steps"] = 2
    data["train"]["alpaca"]["logging_steps"] = 1


@pytest.fixture(scope="module")
def dvc_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone after `dvc repro train@alpaca` and every prepare stage, all committed."""
    root = make_clone(tmp_path_factory.mktemp("dvc") / "repo")
    edit_params(shrink)(root)
    start = time.perf_counter()
    targets = ["train@alpaca", *(f"prepare@{s}" for s in SCENARIOS)]
    sh(["dvc", "repro", *targets], root)
    print(f"\ndvc repro {' '.join(targets)} (tiny): {time.perf_counter() - start:.0f} s")
    sh(["git", "add", "-A"], root)
    sh([*GIT, "commit", "-qm", "ran"], root)
    return root


def kept(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in KEPT:
        assert (root / rel).exists(), rel
        out |= snapshot(root / rel)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DVC_CASES))
def test_bad_input_under_dvc_keeps_every_previous_output(dvc_clone: Path, case: str) -> None:
    _, _, setup, expected, _ = next(c for c in CASES if c[0] == case)
    before = kept(dvc_clone)
    if not DVC_CASES[case].startswith("exp run"):  # exp run -S makes the params edit itself
        setup(dvc_clone)
    try:
        res = sh(["dvc", *DVC_CASES[case].split()], dvc_clone, check=False)
        output = res.stdout + res.stderr
        assert res.returncode != 0, output[-3000:]
        ran = [ln for ln in res.stdout.splitlines() if ln.startswith("Running stage")]
        if case in DVC_PARSE_ERRORS:
            assert "Traceback" not in output, output[-3000:]
            errors = [ln for ln in output.splitlines() if ln.startswith("ERROR: ")]
            assert len(errors) == 1, output[-2000:]
            assert "in 'dvc.yaml'" in errors[0] and DVC_PARSE_ERRORS[case] in errors[0]
            assert ran == [], ran
        else:
            assert expected in one_error_line(output)
            assert ran == ["Running stage 'check':"], ran
        assert kept(dvc_clone) == before
    finally:
        sh(["git", "checkout", "--", "."], dvc_clone)
        sh(["git", "clean", "-fdq", "--", "data/raw", "params.yaml"], dvc_clone)


@pytest.mark.slow
def test_after_a_refused_run_the_fixed_pipeline_is_up_to_date(dvc_clone: Path) -> None:
    """The check's own output is restored from DVC's run-cache: nothing reruns."""
    res = sh(["dvc", "repro", "train@alpaca"], dvc_clone)
    assert [ln for ln in res.stdout.splitlines() if ln.startswith("Running stage")] == []
    assert sh(["dvc", "status", "train@alpaca"], dvc_clone).stdout.strip().endswith("up to date.")


def dep_paths(root: Path) -> dict[str, set[str]]:
    """Stage name -> its dependency paths (relative where inside ``root``), read by DVC."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.name: {
                os.path.relpath(d.fs_path, root) if d.fs_path.startswith(str(root)) else d.fs_path
                for d in stage.deps
            }
            for stage in repo.index.stages
        }


def test_deps_follow_the_params_in_both_profiles_and_outside_sources(tmp_path: Path) -> None:
    """Item 3: a source outside data/raw is a DVC dependency (edit it: `dvc status` says
    stale), and every input either profile's params name is a dep of prepare@<s> and check."""
    from tunelab.config import load_section
    from tunelab.scenarios import input_paths

    root = make_clone(tmp_path / "repo")
    for profile in ("gpu", "smoke"):
        res = run_module(["tunelab.cli", "profile", profile], cwd=root)
        assert res.returncode == 0, res.stderr
        deps = dep_paths(root)
        for s in SCENARIOS:
            named = {
                str(p) for p in input_paths(s, load_section(f"prepare.{s}", root / "params.yaml"))
            }
            assert named <= deps[f"prepare@{s}"] and named <= deps["check"], (profile, s)
        if profile == "gpu":
            assert "data/raw/alpaca/alpaca_data_cleaned.json" in deps["prepare@alpaca"]
    outside = tmp_path / "elsewhere" / "alpaca.json"
    outside.parent.mkdir()
    rows = json.loads((ROOT / ALPACA).read_text(encoding="utf-8"))
    outside.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    edit_params(lambda d: d["prepare"]["alpaca"].__setitem__("source", str(outside)))(root)
    sh(["dvc", "repro", "prepare@alpaca"], root)
    assert "up to date" in sh(["dvc", "status", "prepare@alpaca"], root).stdout
    outside.write_text(json.dumps(rows[:-1], ensure_ascii=False), encoding="utf-8")
    status = json.loads(
        sh(["dvc", "status", "--json", "--with-deps", "prepare@alpaca"], root).stdout
    )
    changed = {
        stage: [entry["changed deps"] for entry in entries if "changed deps" in entry]
        for stage, entries in status.items()
    }
    assert changed["prepare@alpaca"] == [{str(outside): "modified"}], status
    assert changed["check"] == [{str(outside): "modified"}], status
