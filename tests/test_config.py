"""params.yaml validation: every section loads; bad values stop with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.config import SECTIONS, load_params, load_section
from tunelab.errors import TunelabError

from .conftest import ROOT, params_dict


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_every_section_of_the_shipped_params_validates() -> None:
    sections = load_params(ROOT / "params.yaml")
    assert set(sections) == set(SECTIONS)
    assert sections["train.alpaca"].lora.r > 0


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (
            lambda d: d["train"]["alpaca"]["lora"].__setitem__("rank", 8),
            "train.alpaca.lora.rank",
            "unknown key",
        ),
        (
            lambda d: d["train"]["alpaca"]["lora"].__setitem__("r", 0),
            "train.alpaca.lora.r",
            "greater than 0",
        ),
        (
            lambda d: d["train"]["alpaca"]["lora"].__setitem__("r", "16"),
            "train.alpaca.lora.r",
            "valid integer",
        ),
        (
            lambda d: d["train"]["alpaca"]["optim"].__setitem__("learning_rate", -1.0),
            "train.alpaca.optim.learning_rate",
            "greater than 0",
        ),
        (
            lambda d: d["train"]["alpaca"]["optim"].__setitem__("learning_rate", "2e-4"),
            "train.alpaca.optim.learning_rate",
            "valid number",
        ),
        (
            lambda d: d["train"]["alpaca"]["lora"].__setitem__("dropout", 1.5),
            "train.alpaca.lora.dropout",
            "less than or equal to 1",
        ),
        (
            lambda d: d["train"]["alpaca"].__setitem__("backend", "vllm"),
            "train.alpaca.backend",
            "'auto', 'unsloth' or 'hf'",
        ),
        (
            lambda d: d["train"]["alpaca"]["optim"].pop("max_steps"),
            "train.alpaca.optim.max_steps",
            "missing key",
        ),
        (
            lambda d: d["train"]["alpaca"]["optim"].__setitem__("max_steps", 0),
            "train.alpaca.optim",
            "max_steps must be positive",
        ),
        (
            lambda d: d["prepare"]["medical"].__setitem__("max_chars", -5),
            "prepare.medical.max_chars",
            "greater than 0",
        ),
        (
            lambda d: d["base"]["text"]["architecture"].__setitem__("num_key_value_heads", 3),
            "base.text.architecture",
            "divisible",
        ),
        (
            lambda d: d["evaluate"]["legal"]["decoding"].__setitem__("top_p", 0.0),
            "evaluate.legal.decoding.top_p",
            "greater than 0",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, mutate, key: str, message: str) -> None:
    data = params_dict()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(TunelabError) as err:
        load_params(path)
    text = str(err.value)
    assert "\n" not in text
    assert f"{path}: {key}" in text, text
    assert message in text, text


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    data = params_dict()
    data["trian"] = {}
    with pytest.raises(TunelabError, match="trian: unknown key"):
        load_params(write(tmp_path, data))


def test_a_stage_loads_only_its_own_section(tmp_path: Path) -> None:
    data = params_dict()
    data["train"]["legal"]["lora"]["r"] = -1  # broken elsewhere
    path = write(tmp_path, data)
    assert load_section("train.alpaca", path).lora.r == data["train"]["alpaca"]["lora"]["r"]
    with pytest.raises(TunelabError, match="train.legal.lora.r"):
        load_section("train.legal", path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  alpaca: [unclosed\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"params.yaml line \d+: invalid YAML"):
        load_section("train.alpaca", path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("base: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="invalid YAML"):
        load_params(path)


def test_a_renamed_key_shows_every_error_unknown_first_with_a_suggestion(tmp_path: Path) -> None:
    data = params_dict()
    lora = data["train"]["alpaca"]["lora"]
    lora["rank"] = lora.pop("r")
    data["train"]["alpaca"]["optim"]["learning_rate"] = -1.0
    data["train"]["alpaca"]["max_stpes"] = 3
    with pytest.raises(TunelabError) as err:
        load_section("train.alpaca", write(tmp_path, data))
    text = str(err.value)
    assert "\n" not in text
    parts = text.split(": ", 1)[1].split("; ")
    assert parts[0] == "train.alpaca.lora.rank: unknown key (did you mean 'r'?)", text
    assert parts[1] == "train.alpaca.max_stpes: unknown key (did you mean 'max_length'?)" or (
        "train.alpaca.max_stpes: unknown key" in parts[1]
    )
    assert "train.alpaca.lora.r: missing key" in parts[2:]
    assert any(
        p.startswith("train.alpaca.optim.learning_rate: Input should be greater than 0")
        for p in parts
    )


def test_an_added_key_and_an_unknown_section_get_close_matches(tmp_path: Path) -> None:
    data = params_dict()
    data["train"]["alpaca"]["lora"]["rank"] = 16  # dvc exp run -S +train.alpaca.lora.rank=16
    with pytest.raises(
        TunelabError, match=r"train.alpaca.lora.rank: unknown key \(did you mean 'r'\?\)$"
    ):
        load_section("train.alpaca", write(tmp_path, data))
    data = params_dict()
    data["trian"] = {}
    data["prepare"]["alpacca"] = {}
    with pytest.raises(TunelabError) as err:
        load_params(write(tmp_path, data))
    assert "trian: unknown key (did you mean 'train'?)" in str(err.value)
    assert "prepare.alpacca: unknown key (did you mean 'alpaca'?)" in str(err.value)
