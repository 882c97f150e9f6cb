"""GRPO rewards and the scorer on hand-written completions (values from params.yaml)."""

from __future__ import annotations

import pytest

from tunelab.data.gsm8k import normalize_number
from tunelab.training.rewards import Scorer, completion_text, reward_functions

from .conftest import section

PARAMS = section("train.gsm8k")
FNS = {f.__name__: f for f in reward_functions(PARAMS.format, PARAMS.rewards)}
SCORER = Scorer(PARAMS.format)

GOOD = "<reasoning>\nTom has 3 + 4 = 7 apples.\n</reasoning>\n<answer>\n7\n</answer>"


def rewards(text: str, target: str = "7") -> dict[str, float]:
    """Every reward of one completion, given in TRL's conversational form."""
    completion = [{"role": "assistant", "content": text}]
    return {name: fn(completions=[completion], target=[target])[0] for name, fn in FNS.items()}


def test_reward_names_and_values_come_from_params() -> None:
    assert list(FNS) == ["correctness", "integer", "strict_format", "soft_format", "xml_count"]
    r = rewards(GOOD)
    assert r == {
        "correctness": PARAMS.rewards.correctness,
        "integer": PARAMS.rewards.integer,
        "strict_format": PARAMS.rewards.strict_format,
        "soft_format": PARAMS.rewards.soft_format,
        "xml_count": 4 * PARAMS.rewards.xml_per_tag,
    }
    assert sum(r.values()) == pytest.approx(4.0)  # 2 + 0.5 + 0.5 + 0.5 + 4 * 0.125


def test_other_reward_values_follow_params() -> None:
    p = section("train.gsm8k", rewards__correctness=3.0, rewards__xml_per_tag=1.0)
    fns = {f.__name__: f for f in reward_functions(p.format, p.rewards)}
    assert fns["correctness"](completions=[GOOD], target=["7"]) == [3.0]
    assert fns["xml_count"](completions=[GOOD]) == [4.0]


def test_wrong_answer_keeps_format_credit_only() -> None:
    r = rewards(GOOD, target="8")
    assert r["correctness"] == 0.0
    assert r["integer"] == PARAMS.rewards.integer
    assert r["strict_format"] == PARAMS.rewards.strict_format


@pytest.mark.parametrize(
    ("answer", "target", "correct", "integer"),
    [
        ("-4", "-4", True, True),  # negative
        ("- 4", "-4", True, True),
        ("1,000", "1000", True, True),  # thousands separator
        ("1000", "1,000", True, True),
        ("12,000", "12000", True, True),
        ("$18", "18", True, True),
        ("2.5", "2.5", True, False),  # decimal
        ("2.50", "2.5", True, False),
        ("7.0", "7", True, True),  # a whole number written with a decimal point
        ("  7  ", "7", True, True),  # whitespace inside the tag
        ("7.", "7", True, True),  # full stop
        ("7 apples", "7", False, False),  # not a bare number
        ("1,00", "100", False, False),  # malformed grouping
        ("seven", "7", False, False),
        ("", "7", False, False),
    ],
)
def test_answer_normalisation(answer: str, target: str, correct: bool, integer: bool) -> None:
    text = f"<reasoning>\nr\n</reasoning>\n<answer>\n{answer}\n</answer>"
    r = rewards(text, target)
    assert (r["correctness"] > 0) is correct
    assert (r["integer"] > 0) is integer


def test_strict_format_needs_the_exact_layout() -> None:
    ok = PARAMS.rewards.strict_format
    assert rewards(GOOD)["strict_format"] == ok
    assert rewards(GOOD + "\n")["strict_format"] == ok  # one final newline is allowed
    multi = "<reasoning>\nline one\nline two\n</reasoning>\n<answer>\n7\n</answer>"
    assert rewards(multi)["strict_format"] == ok  # multi-line reasoning (DOTALL)
    for bad in [
        "<reasoning>Tom has 7.</reasoning><answer>7</answer>",  # no newlines
        "\n" + GOOD,  # leading newline
        "  " + GOOD,  # leading spaces
        GOOD + " Done.",  # text after </answer>
        GOOD + "\n\n",  # more than one trailing newline
        GOOD + "\n<answer>\n8\n</answer>",  # repeated answer tag
        "<reasoning>\na\n</reasoning>\n<reasoning>\nb\n</reasoning>\n<answer>\n7\n</answer>",
        "<answer>\n7\n</answer>",  # no reasoning
        "<reasoning>\nr\n</reasoning>",  # no answer
        "",
    ]:
        assert rewards(bad)["strict_format"] == 0.0, bad


def test_soft_format_allows_whitespace_but_needs_both_blocks_in_order() -> None:
    ok = PARAMS.rewards.soft_format
    assert rewards("<reasoning>r</reasoning><answer>7</answer>")["soft_format"] == ok
    assert rewards("\n  <reasoning>r</reasoning>\n\n<answer> 7 </answer>")["soft_format"] == ok
    assert rewards(GOOD + " trailing text")["soft_format"] == ok  # prefix match, as in the recipe
    for bad in [
        "<answer>7</answer><reasoning>r</reasoning>",  # wrong order
        "Sure! <reasoning>r</reasoning><answer>7</answer>",  # text before
        "<reasoning>r</reasoning>",
        "<reasoning>r<answer>7</answer>",  # unclosed reasoning
    ]:
        assert rewards(bad)["soft_format"] == 0.0, bad


def test_xml_count_partial_credit_per_tag_and_trailing_penalty() -> None:
    tag, pen = PARAMS.rewards.xml_per_tag, PARAMS.rewards.xml_trailing_penalty
    assert rewards(GOOD)["xml_count"] == pytest.approx(4 * tag)
    # Whitespace after the closing tag costs nothing; other characters cost `pen` each.
    assert rewards(GOOD + "\n  \n")["xml_count"] == pytest.approx(4 * tag)
    assert rewards(GOOD + "\nabc")["xml_count"] == pytest.approx(4 * tag - 3 * pen)
    # Each tag (with its newlines) counts on its own.
    assert rewards("<reasoning>\nr")["xml_count"] == pytest.approx(tag)
    assert rewards("<reasoning>\nr\n</reasoning>\n")["xml_count"] == pytest.approx(2 * tag)
    no_newlines = "<reasoning>r</reasoning><answer>7</answer>"
    assert rewards(no_newlines)["xml_count"] == 0.0
    # A repeated tag earns nothing for that tag.
    repeated = GOOD + "\n<answer>\n8\n</answer>"
    assert rewards(repeated)["xml_count"] == pytest.approx(2 * tag)
    assert rewards("")["xml_count"] == 0.0


def test_missing_or_repeated_answer_tags_get_no_answer_credit() -> None:
    for text in [
        "<reasoning>\n3 + 4 = 7\n</reasoning>\n7",  # no answer tag
        "<reasoning>\nr\n</reasoning>\n<answer>\n7\n",  # unclosed
        "<answer>\n7\n</answer>\n<answer>\n7\n</answer>",  # repeated, even if both right
        "<answer>\n7\n</answer><answer>\n8\n</answer>",  # hedging
    ]:
        r = rewards(text)
        assert r["correctness"] == 0.0 and r["integer"] == 0.0, text
        assert SCORER.extract_answer(text) is None
    # The single pair is found wherever it is, with surrounding whitespace and newlines.
    assert SCORER.extract_answer("\n\n  <answer>\n\n 7 \n</answer>  \n") == "7"
    assert rewards("\n<answer> 7 </answer>\n")["correctness"] == PARAMS.rewards.correctness


def test_completion_text_accepts_strings_and_messages() -> None:
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    with pytest.raises(TypeError):
        completion_text(7)
    # Reward functions score a batch element by element.
    out = FNS["correctness"](completions=[GOOD, GOOD, "nothing"], target=["7", "8", "7"])
    assert out == [PARAMS.rewards.correctness, 0.0, 0.0]


def test_normalize_number_edge_cases() -> None:
    assert normalize_number("-$1,234.50") == "-1234.5"
    assert normalize_number("0.0") == "0"
    assert normalize_number("-0") == "0"
    assert normalize_number(" 18 ") == "18"
    assert normalize_number("3/4") is None
    assert normalize_number("1e3") is None
    assert normalize_number("") is None
