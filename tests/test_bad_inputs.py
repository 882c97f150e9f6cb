"""Bad-input suite: each malformed input stops its stage with one clear line and exit 1.

Every case runs the real stage entry point (`python -m stages.<name>`) in a
scratch project, then checks: exit status 1, a single `error:` line naming the
file, row or key, no traceback, and the previous output left untouched (no
half-written or temporary directory beside it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, run_module

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


H = "department,title,ask,answer\n"
ALPACA = "data/raw/alpaca/sample.json"
EXAM = "data/raw/legal/judicial_exam.json"
COUNSEL = "data/raw/legal/counsel_with_articles.json"

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
        f"{ALPACA} row 0: missing key 'output'",
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
        f"{ALPACA} row 0: 'output' must be a string",
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
        "medical-utf16",
        ["prepare", "medical"],
        only_medical("a.csv", (H + "内科,t,q,a\n").encode("utf-16")),
        "a.csv: does not decode as any of",
        "data/prepared/medical",
    ),
    (
        "medical-mixed-corrupt-bytes",
        ["prepare", "medical"],
        only_medical(
            "a.csv",
            (H + "内科,t,问,答\n").encode("gbk") + "内科,t,问,答\n".encode() + b"\xff\xfe\n",
        ),
        "a.csv: does not decode",
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
        f"{EXAM}: expected a JSON array",
        "data/prepared/legal",
    ),
    (
        "legal-two-element-item",
        ["prepare", "legal"],
        write(EXAM, '[[{"instruction": "q", "output": "a"}, {}]]'),
        f"{EXAM} row 0: expected a one-element list",
        "data/prepared/legal",
    ),
    (
        "legal-laws-not-a-list",
        ["prepare", "legal"],
        write(COUNSEL, '[{"query": "q", "laws": "第一条", "response": "r"}]'),
        f"{COUNSEL} row 0: 'laws' must be a list of strings",
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
        "at least one of exam_source / counsel_source",
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
    (
        "preference-pair-not-a-string",
        ["prepare", "preference"],
        write(
            "data/raw/preference/pairs.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
            '{"prompt": "a", "chosen": 5, "rejected": "c"}\n',
        ),
        "data/raw/preference/pairs.jsonl row 1: 'chosen' must be a string",
        "data/prepared/preference",
    ),
    (
        "pretrain-document-without-text",
        ["pretrain", "medical"],
        write("data/raw/pretrain/medical/domain.jsonl", '{"text": "ok"}\n{"body": "x"}\n'),
        "data/raw/pretrain/medical/domain.jsonl row 1: expected an object with 'text'",
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


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """A scratch project with raw data, a base model, prepared data, an adapter and previous outputs."""
    root = tmp_path_factory.mktemp("template")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(ROOT / "data/raw", root / "data/raw")
    shutil.copytree(tiny_base, root / "models/base/text")
    for s in ("alpaca", "medical", "legal"):
        res = run_module(["stages.prepare", s], cwd=root, env={"PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
        adapter = root / "adapters" / s
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        (adapter / "adapter_model.safetensors").write_bytes(b"previous")
    (root / "reports/metrics/evaluate").mkdir(parents=True)
    (root / "reports/metrics/evaluate/alpaca.json").write_text('{"previous": 1}')
    return root


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_the_table_has_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


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
    res = run_module(
        [f"stages.{argv[0]}", *argv[1:]],
        cwd=root,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert res.returncode == 1, f"exit {res.returncode}\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-2000:]
    assert expected in errors[0], errors[0]
    if before is not None:
        assert snapshot(out) == before, f"{output} changed"
    leftovers = (
        [p.name for p in out.parent.glob(f".{out.name}.tmp-*")] if out.parent.exists() else []
    )
    assert leftovers == []
