"""GSM8K scenario: prepare, GRPO on the tiny model, the lm-eval wrapper, the real test file."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tunelab.data.gsm8k import prepare_gsm8k, read_gsm8k, split_answer
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.samples.gsm8k import generate_problems
from tunelab.training.rewards import Scorer

from .conftest import ROOT, params_dict, run_module, section, shared_dataset

# A few GRPO steps: 2 prompts x 4 completions per step, short completions.
FEW_STEPS = {
    "warmup__optim__max_steps": 4,
    "warmup__logging_steps": 2,
    "grpo__optim__max_steps": 2,
    "grpo__optim__per_device_train_batch_size": 8,
    "grpo__max_completion_length": 24,
    "grpo__logging_steps": 1,
}
EVAL_SMALL = {"max_samples": 4, "batch_size": 4, "max_gen_toks": 24}


def prepare_smoke(out: Path, **overrides: object) -> dict:
    overrides = {
        "train_source": str(ROOT / "data/raw/gsm8k/train.jsonl"),
        "test_source": str(ROOT / "data/raw/gsm8k/test.jsonl"),
        **overrides,
    }
    return prepare_gsm8k(section("prepare.gsm8k", **overrides), out)


# ------------------------------------------------------------------------ prepare


def test_split_answer_strips_annotations_and_reads_the_final_number() -> None:
    answer = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert split_answer(answer) == ("She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.", "18")
    assert split_answer("a\n#### 1,080")[1] == "1080"
    assert split_answer("a\n####  -3 \n")[1] == "-3"
    assert split_answer("a\n#### 2.50")[1] == "2.5"
    assert split_answer("a\n#### $1,234.5")[1] == "1234.5"
    assert split_answer("no final line") is None
    assert split_answer("a\n#### eighteen") is None


def test_long_numbers_are_exact_and_other_digits_are_noted(tmp_path: Path) -> None:
    """A 40-digit decimal stays exact (no 28-digit Decimal context); 29+ digit integers
    raise nothing; full-width and Arabic-Indic answers become ASCII, counted in the card."""
    forty = "1234567890123456789012345678901234567.891"
    assert split_answer(f"a\n#### {forty}")[1] == forty
    assert (
        split_answer("a\n#### 123456789012345678901234567890")[1]
        == "123456789012345678901234567890"
    )
    assert split_answer("a\n#### 0012.500")[1] == "12.5"
    assert split_answer("a\n#### -0.00")[1] == "0"
    rows = [
        {"question": "Full-width?", "answer": "x\n#### １,０８０"},
        {"question": "Arabic-Indic?", "answer": "x\n#### ٣٫٥"},
        {"question": "Long?", "answer": f"x\n#### {forty}"},
        {"question": "NUL\u0000?", "answer": "x\n#### 7"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "t", "answer": "#### 1"}) + "\n")
    card = prepare_smoke(
        tmp_path / "out",
        train_source=str(tmp_path / "train.jsonl"),
        test_source=str(tmp_path / "test.jsonl"),
    )
    train = read_jsonl(tmp_path / "out/train.jsonl")
    assert [r["target"] for r in train] == ["1080", "3.5", forty, "7"]
    assert train[0]["answer"].endswith("#### 1,080") and train[1]["answer"].endswith("#### 3.5")
    assert train[3]["question"] == "NUL?"
    assert card["answers"]["train"]["non_ascii_digits"] == 2
    entry = card["inputs"][str(tmp_path / "train.jsonl")]
    assert entry["rows_cleaned"] == {"control_characters": 1, "non_ascii_digits": 2}
    assert entry["encoding"] == "utf-8" and entry["rows_read"] == 4


def test_prepare_smoke_data(tmp_path: Path) -> None:
    card = prepare_smoke(tmp_path / "gsm8k")
    train = read_jsonl(tmp_path / "gsm8k/train.jsonl")
    test = read_jsonl(tmp_path / "gsm8k/test.jsonl")
    assert card["rows_dropped"] == {"train_duplicate": 1, "train_in_test": 1}
    assert card["train_rows"] == len(train) == card["rows_read"]["train"] - 2
    assert len(test) == card["test_rows"] == card["rows_read"]["test"]
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    p = section("prepare.gsm8k")
    scorer = Scorer(section("train.gsm8k").format)
    for rec in train + test:
        system, user = rec["prompt"]
        assert system == {"role": "system", "content": p.system_prompt}
        assert user["content"] == p.user_template.format(question=rec["question"])
        assert "<<" not in rec["reasoning"] and "####" not in rec["reasoning"]
        # The warm-up targets satisfy the strict format and score as correct.
        assert scorer.strict_ok(rec["reference"]), rec["reference"]
        assert scorer.is_correct(rec["reference"], rec["target"])
        assert rec["answer"].endswith(f"#### {rec['answer'].rsplit('#### ', 1)[1]}")
    # The generator covers what the reader must handle.
    targets = [r["target"] for r in train]
    assert any(t.startswith("-") for t in targets)
    assert any("." in t for t in targets)
    assert card["answers"]["train"]["with_thousands_separator"] > 0
    assert all("," not in t for t in targets)


def test_generator_is_deterministic_and_correct() -> None:
    import random

    a = generate_problems(random.Random(5), 50)
    assert a == generate_problems(random.Random(5), 50)
    assert len({r["question"] for r in a}) == 50
    for row in a:
        reasoning, number = split_answer(row["answer"])
        lhs, rhs = reasoning.replace(",", "").split(" = ")
        assert float(eval(lhs)) == float(rhs) == float(number)  # noqa: S307 - our own digits


def test_no_smoke_question_is_in_the_pretraining_corpus() -> None:
    corpus = (ROOT / section("base.text").corpus).read_text(encoding="utf-8")
    for split in ("train", "test"):
        rows = read_gsm8k(ROOT / f"data/raw/gsm8k/{split}.jsonl")
        assert not [r["question"] for r in rows if r["question"] in corpus], split
    assert "<reasoning>\\n" in corpus  # the markup, with escaped line breaks


def test_prepare_limits_rows(tmp_path: Path) -> None:
    card = prepare_smoke(tmp_path / "g", max_train_rows=10, max_test_rows=3)
    assert (card["train_rows"], card["test_rows"]) == (10, 3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": "a\\n#### 3"', "line 2: invalid JSON"),
        ('{"question": "q"}', "line 2: missing or empty key 'answer'"),
        ('{"question": "", "answer": "#### 3"}', "line 2: missing or empty key 'question'"),
        ('["q", "a"]', "line 2: expected a JSON object"),
        ('{"question": "q", "answer": "3 apples"}', "line 2: answer has no final '#### <number>'"),
        (
            '{"question": "q", "answer": "#### three"}',
            "line 2: answer has no final '#### <number>'",
        ),
    ],
)
def test_bad_rows_are_one_clear_error(tmp_path: Path, line: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "#### 1"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=message) as err:
        read_gsm8k(bad)
    assert str(bad) in str(err.value)


def test_prepare_stage_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/train.jsonl").write_text('{"question": "q", "answer": "no number"}\n')
    shutil.copy(ROOT / "data/raw/gsm8k/test.jsonl", tmp_path / "raw/test.jsonl")
    params = params_dict()
    params["prepare"]["gsm8k"]["train_source"] = "raw/train.jsonl"
    params["prepare"]["gsm8k"]["test_source"] = "raw/test.jsonl"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_module(["stages.prepare", "gsm8k"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: raw/train.jsonl line 1: answer")
    assert not (tmp_path / "data/prepared/gsm8k").exists()


def test_real_gsm8k_files_parse_completely(tmp_path: Path) -> None:
    folder = shared_dataset("gsm8k")
    card = prepare_gsm8k(
        section(
            "prepare.gsm8k",
            train_source=str(folder / "train.jsonl"),
            test_source=str(folder / "test.jsonl"),
            max_train_rows=40,
            max_test_rows=8,
        ),
        tmp_path / "gsm8k",
    )
    assert card["rows_read"] == {"train": 7473, "test": 1319}
    test = read_jsonl(tmp_path / "gsm8k/test.jsonl")
    assert test[0]["target"] == "18"  # Janet's ducks
    assert "<<" not in test[0]["reasoning"] and test[0]["reference"].endswith("18\n</answer>")


# --------------------------------------------------------------------------- GRPO


def test_params_validation_of_the_grpo_batch_and_patterns() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of num_generations"):
        section("train.gsm8k", grpo__optim__per_device_train_batch_size=6)
    with pytest.raises(ValidationError, match="invalid regular expression"):
        section("train.gsm8k", format__strict_pattern="<reasoning>(")
    with pytest.raises(ValidationError, match="exactly 1 group"):
        section("evaluate.gsm8k", format__answer_pattern="<answer>.*</answer>")


def test_vllm_requested_but_missing_is_one_clear_error() -> None:
    from tunelab.training.grpo import check_vllm

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    check_vllm(section("train.gsm8k"), "train.gsm8k")  # not asked for: nothing to check
    with pytest.raises(TunelabError, match=r"vllm.use_vllm: vLLM rollouts requested but vllm"):
        check_vllm(section("train.gsm8k", vllm__use_vllm=True), "train.gsm8k")


@pytest.fixture(scope="module")
def grpo_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Warm-up + two GRPO steps on the tiny model (hf backend), in this process."""
    from tunelab.training.backends import select_backend
    from tunelab.training.grpo import train_grpo

    work = tmp_path_factory.mktemp("grpo")
    prepare_smoke(work / "data", max_train_rows=32, max_test_rows=8)
    params = section("train.gsm8k", backend="hf", **FEW_STEPS)
    cwd = os.getcwd()
    os.chdir(work)  # checkpoints go to ./.tunelab
    try:
        card = train_grpo(
            "gsm8k",
            params,
            select_backend("hf", "test"),
            base_dir=tiny_base,
            data_dir=work / "data",
            out_dir=work / "adapter",
            live_dir=work / "live",
        ).card
    finally:
        os.chdir(cwd)
    return {"card": card, "work": work, "base": tiny_base}


@pytest.mark.slow
def test_grpo_few_steps_hf_backend(grpo_run: dict) -> None:
    card, work = grpo_run["card"], grpo_run["work"]
    assert card["backend"] == "hf"
    assert card["warmup"]["global_step"] == 4
    assert card["grpo"]["global_step"] == 2
    adapter = work / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "ref").exists()  # only the trained adapter is saved
    assert not (work / ".tunelab/checkpoints/train/gsm8k").exists()  # removed once written
    # Each reward, the KL and completion lengths per step through dvclive (dvc plots).
    metrics = work / "live/plots/metrics"
    for name in [
        "rewards/correctness/mean",
        "rewards/integer/mean",
        "rewards/strict_format/mean",
        "rewards/soft_format/mean",
        "rewards/xml_count/mean",
        "kl",
        "completions/mean_length",
        "reward",
    ]:
        rows = (metrics / f"{name}.tsv").read_text().strip().splitlines()
        assert rows[0] == f"step\t{name.rsplit('/', 1)[-1]}" and len(rows) == 3, name
    # The KL starts at zero: the reference is the policy as GRPO began.
    kl = (metrics / "kl.tsv").read_text().splitlines()[1].split("\t")[1]
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    assert (work / "live/warmup/plots/metrics/loss.tsv").is_file()
    # The values the trainers ran with, read back from their args (not copied from params).
    used = card["trainer_args"]["used"]
    assert used["epsilon"] == 0.2 and used["epsilon_high"] == 0.2 and used["beta"] == 0.04
    assert used["loss_type"] == "grpo" and used["num_generations"] == 4
    assert card["trainer_args"]["changed_by_libraries"] == {}
    assert card["warmup"]["trainer_args"]["used"]["max_steps"] == 4
    assert card["grpo"]["rollout_engine"] == "generate"  # auto on the CPU


def test_trainer_settings_name_what_a_library_changed() -> None:
    """A library that rewrites a setting (as Unsloth's GRPO config does with epsilon_high
    for dapo on a GPU; simulated here, Unsloth's CPU backend leaves TRL's config alone)."""
    from trl import GRPOConfig

    from tunelab.training.grpo import grpo_config
    from tunelab.training.runcard import trainer_settings

    config = grpo_config(section("train.gsm8k", grpo__loss_type="dapo"), Path("/tmp/x"))
    assert isinstance(config, GRPOConfig)
    assert trainer_settings(config)["changed_by_libraries"] == {}
    config.epsilon_high = 0.28
    settings = trainer_settings(config)
    assert settings["used"]["epsilon_high"] == 0.28 and "output_dir" not in settings["used"]
    assert settings["changed_by_libraries"] == {"epsilon_high": {"asked": 0.2, "used": 0.28}}


@pytest.mark.slow
def test_grpo_few_steps_unsloth_backend_through_the_stage(grpo_run: dict, tmp_path: Path) -> None:
    """Unsloth must be imported before transformers/TRL: a fresh process, via the stage."""
    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed")
    shutil.copytree(grpo_run["work"] / "data", tmp_path / "data/prepared/gsm8k")
    (tmp_path / "models/base").mkdir(parents=True)
    (tmp_path / "models/base/text").symlink_to(grpo_run["base"])
    params = params_dict()
    node = params["train"]["gsm8k"]
    node["backend"] = "unsloth"
    node["warmup"]["optim"]["max_steps"] = 2
    node["grpo"]["optim"]["max_steps"] = 1
    node["grpo"]["optim"]["per_device_train_batch_size"] = 4
    node["grpo"]["max_completion_length"] = 16
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    res = run_module(["stages.train", "gsm8k"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train gsm8k: backend unsloth, warm-up 2 steps, GRPO 1 steps" in res.stdout
    card = json.loads((tmp_path / "adapters/gsm8k/run_card.json").read_text())
    assert card["backend"] == "unsloth" and card["grpo"]["global_step"] == 1
    assert (tmp_path / "reports/train/gsm8k/plots/metrics/kl.tsv").is_file()


# ------------------------------------------------------------------------ lm-eval


def lm_eval_judge(task_dir: Path, docs: list[dict], responses: list[str]) -> dict[str, list]:
    """lm-eval's own filters and metric (from the task it builds) on given responses."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from tunelab.evaluation.gsm8k import TASK

    task = get_task_dict([TASK], TaskManager(include_path=str(task_dir)))[TASK]
    out: dict[str, list] = {}
    for ensemble in task._filters:
        resps = [[r] for r in responses]
        for make in ensemble.filters:
            resps = list(make().apply(resps, docs))
        out[ensemble.name] = [
            (filtered, task.process_results(doc, [filtered])["exact_match"])
            for doc, filtered in zip(docs, resps, strict=True)
        ]
    return out


def test_scorer_agrees_with_lm_eval_filters_where_definitions_coincide(tmp_path: Path) -> None:
    """flexible-extract takes the last number; the scorer the only <answer> pair.

    Where the answer pair holds a bare number and no number follows it, both
    read the same number, so their verdicts must agree. strict-match reads
    "#### N", which the <answer> format does not write: it must find nothing.
    """
    from tunelab.evaluation.gsm8k import write_task

    prepare_smoke(tmp_path / "data", max_train_rows=8, max_test_rows=4)
    write_task(tmp_path, tmp_path / "data/train.jsonl", tmp_path / "data/test.jsonl")
    scorer = Scorer(section("evaluate.gsm8k").format)
    target = "1200"
    doc = {"question": "q", "answer": "x\n#### 1,200", "target": target}
    responses = [
        "<reasoning>\n600 + 600 = 1,200\n</reasoning>\n<answer>\n1,200\n</answer>",
        "<reasoning>\n600 + 600 = 1200\n</reasoning>\n<answer>\n1200\n</answer>",
        "<reasoning>\n600 + 600 = 1100\n</reasoning>\n<answer>\n1100\n</answer>",
        "<reasoning>\n2 - 3 = -1\n</reasoning>\n<answer>\n-1\n</answer>",
        "<reasoning>\nr\n</reasoning>\n<answer>\n$1,200\n</answer>\n",
        "  <answer> 1200 </answer>  ",
        "<answer>\n1200.\n</answer>",
        "<reasoning>\nabout 1200\n</reasoning>\n<answer>\n1200\n</answer> (checked 2 times)",
        "<reasoning>\n1200\n</reasoning>\nno answer tag",
        "<answer>\n1200\n</answer><answer>\n1300\n</answer>",
    ]
    verdicts = lm_eval_judge(tmp_path, [doc] * len(responses), responses)
    coincide = 0
    for i, text in enumerate(responses):
        number = scorer.answer_number(text)
        tail = text.rsplit(PARAMS_CLOSING, 1)[-1] if PARAMS_CLOSING in text else text
        if number is not None and not any(c.isdigit() for c in tail):
            coincide += 1
            flexible = verdicts["flexible-extract"][i][1]
            assert flexible == float(scorer.is_correct(text, target)), (text, verdicts)
        assert verdicts["strict-match"][i] == ("[invalid]", 0.0)
    assert coincide >= 7
    # Where they do not coincide they may disagree: a trailing number wins in lm-eval.
    assert verdicts["flexible-extract"][7] == ("2", 0.0)
    assert scorer.is_correct(responses[7], target)
    # "#### N" is what strict-match reads, and exact_match drops "," and a final ".".
    strict = lm_eval_judge(tmp_path, [doc], ["so #### 1,200."])["strict-match"][0]
    assert strict == ("1,200.", 1.0)


PARAMS_CLOSING = section("evaluate.gsm8k").format.closing_tag


@pytest.mark.slow
def test_lm_eval_wrapper_base_and_adapter(grpo_run: dict) -> None:
    from tunelab.evaluation.gsm8k import evaluate_gsm8k

    work = grpo_run["work"]
    params = section("evaluate.gsm8k", **EVAL_SMALL)
    metrics, generations = evaluate_gsm8k(params, grpo_run["base"], work / "adapter", work / "data")
    keys = {"strict_match", "flexible_extract", "answer_accuracy", "has_answer"}
    keys |= {"format_strict", "format_soft"}
    assert set(metrics["base"]) == set(metrics["tuned"]) == set(metrics["delta"]) == keys
    assert metrics["samples"] == len(generations) == 4
    for name in ("base", "tuned"):
        for v in metrics[name].values():
            assert 0.0 <= v <= 100.0
    scorer = Scorer(params.format)
    test = read_jsonl(work / "data/test.jsonl")[:4]
    for g, rec in zip(generations, test, strict=True):
        assert g["question"] == rec["question"] and g["target"] == rec["target"]
        for who in ("base", "tuned"):
            assert g[f"{who}_scores"]["answer_correct"] == scorer.is_correct(g[who], g["target"])
            assert set(g[f"{who}_scores"]) >= {"strict-match", "flexible-extract"}
    # The adapter changes what the model writes (a LoRA at init would not).
    assert [g["base"] for g in generations] != [g["tuned"] for g in generations]


@pytest.mark.slow
def test_real_gsm8k_through_prepare_and_evaluation(grpo_run: dict, tmp_path: Path) -> None:
    from tunelab.evaluation.gsm8k import evaluate_gsm8k

    folder = shared_dataset("gsm8k")
    prepare_gsm8k(
        section(
            "prepare.gsm8k",
            train_source=str(folder / "train.jsonl"),
            test_source=str(folder / "test.jsonl"),
            max_train_rows=20,
            max_test_rows=3,
        ),
        tmp_path / "gsm8k",
    )
    params = section("evaluate.gsm8k", **(EVAL_SMALL | {"max_samples": 3}))
    metrics, generations = evaluate_gsm8k(
        params, grpo_run["base"], grpo_run["work"] / "adapter", tmp_path / "gsm8k"
    )
    assert metrics["samples"] == 3
    assert [g["target"] for g in generations] == ["18", "3", "70000"]
    assert generations[0]["question"].startswith("Janet")


def _fast(engine: str) -> dict:
    return {
        "generation__engine": engine,
        "generation__prompt_bucket": 32,
        "generation__sync_every": 4,
        "generation__compile_backend": "aot_eager",  # inductor's codegen is for the GPU bench
    }


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["compiled", "continuous"])
def test_lm_eval_through_the_fast_engines_matches_plain_generate(
    grpo_run: dict, engine: str
) -> None:
    """Same greedy generations and scores from lm-eval's own loop and tunelab's engines
    (compiled: lm-eval's batches of 4, the second filled up to 4 rows; continuous: all 6
    requests in one call over 4 slots, refilled, lm-eval's stop strings checked by it)."""
    import torch

    from tunelab.evaluation.gsm8k import evaluate_gsm8k

    work = grpo_run["work"]
    plain = section("evaluate.gsm8k", **EVAL_SMALL | {"max_samples": 6})
    fast = section("evaluate.gsm8k", **EVAL_SMALL | {"max_samples": 6}, **_fast(engine))
    m_plain, g_plain = evaluate_gsm8k(plain, grpo_run["base"], work / "adapter", work / "data")
    torch._dynamo.utils.counters.clear()
    m_fast, g_fast = evaluate_gsm8k(fast, grpo_run["base"], work / "adapter", work / "data")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert [(g["base"], g["tuned"]) for g in g_fast] == [(g["base"], g["tuned"]) for g in g_plain]
    assert m_fast == m_plain


@pytest.mark.slow
@pytest.mark.parametrize(
    ("four_bit", "setting", "engine"),
    [
        (False, "compiled", "compiled"),
        (False, "continuous", "continuous"),
        (True, "continuous", "dequantized_twin"),
    ],
    ids=["bf16-compiled", "bf16-continuous", "4bit-continuous"],
)
def test_grpo_rollouts_through_the_fast_engines(
    grpo_run: dict, tmp_path: Path, four_bit: bool, setting: str, engine: str
) -> None:
    """Compiled or continuous rollouts; a 4-bit (QLoRA, bitsandbytes CPU kernels) policy
    samples from its dequantized bf16 twin through the continuous engine."""
    import torch

    from tunelab.training.grpo import train_grpo

    params = section(
        "train.gsm8k",
        backend="hf",
        model__load_in_4bit=four_bit,
        **FEW_STEPS | {"grpo__optim__max_steps": 1, "warmup__enabled": False},
        **_fast(setting),
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    torch._dynamo.utils.counters.clear()
    try:
        card = train_grpo(
            "gsm8k",
            params,
            "hf",
            base_dir=grpo_run["base"],
            data_dir=grpo_run["work"] / "data",
            out_dir=tmp_path / "adapter",
            live_dir=tmp_path / "live",
        ).card
    finally:
        os.chdir(cwd)
    assert card["grpo"]["rollout_engine"] == engine
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # rollouts compiled
    assert card["grpo"]["global_step"] == 1
    lengths = (tmp_path / "live/plots/metrics/completions/mean_length.tsv").read_text()
    assert 0 < float(lengths.splitlines()[1].split("\t")[1]) <= 24
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()
