"""GRPO rewards for the ``<reasoning>...</reasoning><answer>...</answer>`` format, and the scorer.

The five rewards of the R1-style GRPO recipes (willccbb's GSM8K GRPO demo and
the Unsloth/TRL notebooks derived from it), with values and patterns taken from
params.yaml instead of constants:

- correctness: ``rewards.correctness`` when the answer equals the target;
- integer: ``rewards.integer`` when the answer is an integer;
- strict format: ``rewards.strict_format`` when ``format.strict_pattern`` matches;
- soft format: ``rewards.soft_format`` when ``format.soft_pattern`` matches;
- XML count: ``rewards.xml_per_tag`` for each of ``format.xml_tags`` that
  occurs exactly once, minus ``rewards.xml_trailing_penalty`` per non-space
  character after the last ``format.closing_tag`` (``</answer>``).

Differences from the recipe, on purpose: the patterns are matched with
``re.DOTALL`` (the recipe's patterns fail on multi-line reasoning); "the
answer" is the content of the only ``<answer>...</answer>`` pair, so a
completion with no pair or with several pairs gets no correctness or integer
credit (no hedging by listing answers); answers are compared as numbers after
normalisation (``1,000`` == ``1000``, ``$18`` == ``18``, ``2.50`` == ``2.5``,
surrounding whitespace ignored) rather than as raw strings; a negative integer
counts as an integer (``str.isdigit`` in the recipe says no).

The same functions score evaluation generations (answer-tag accuracy and format
compliance), so training and evaluation agree on what "correct" means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tunelab.config.gsm8k import AnswerFormatParams, RewardParams
from tunelab.data.gsm8k import normalize_number

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(
            m["content"] for m in completion if isinstance(m, dict) and m.get("role") == "assistant"
        )
    raise TypeError(f"unexpected completion type {type(completion).__name__}")


class Scorer:
    """Extraction and format checks shared by the rewards and the evaluation."""

    def __init__(self, fmt: AnswerFormatParams) -> None:
        self.strict = re.compile(fmt.strict_pattern, re.DOTALL)
        self.soft = re.compile(fmt.soft_pattern, re.DOTALL)
        self.answer = re.compile(fmt.answer_pattern, re.DOTALL)
        self.tags = list(fmt.xml_tags)
        self.closing = fmt.closing_tag

    def extract_answer(self, text: str) -> str | None:
        """The content of the only answer pair (stripped), or None if there are 0 or 2+."""
        found = self.answer.findall(text)
        return found[0].strip() if len(found) == 1 else None

    def answer_number(self, text: str) -> str | None:
        extracted = self.extract_answer(text)
        return None if extracted is None else normalize_number(extracted)

    def is_correct(self, text: str, target: str) -> bool:
        number = self.answer_number(text)
        return number is not None and number == normalize_number(target)

    def is_integer(self, text: str) -> bool:
        number = self.answer_number(text)
        return number is not None and "." not in number

    def strict_ok(self, text: str) -> bool:
        return self.strict.match(text) is not None

    def soft_ok(self, text: str) -> bool:
        return self.soft.match(text) is not None

    def xml_count(self, text: str, per_tag: float, trailing_penalty: float) -> float:
        score = sum(per_tag for tag in self.tags if text.count(tag) == 1)
        if self.closing in text:
            trailing = text.rsplit(self.closing, 1)[1]
            score -= trailing_penalty * len("".join(trailing.split()))
        return score

    def score(self, text: str, target: str) -> dict[str, bool]:
        """Per-generation evaluation flags."""
        return {
            "answer_correct": self.is_correct(text, target),
            "has_answer": self.extract_answer(text) is not None,
            "format_strict": self.strict_ok(text),
            "format_soft": self.soft_ok(text),
        }


def reward_functions(fmt: AnswerFormatParams, values: RewardParams) -> list[RewardFn]:
    """The five reward functions, in TRL's signature (completions plus dataset columns).

    Their ``__name__`` is what TRL logs (``rewards/<name>/mean``); each returns its
    own scale, so GRPOConfig.reward_weights stays at 1.
    """
    scorer = Scorer(fmt)

    def texts(completions: list[Any]) -> list[str]:
        return [completion_text(c) for c in completions]

    def correctness(completions: list[Any], target: list[str], **_: Any) -> list[float]:
        return [
            values.correctness if scorer.is_correct(t, g) else 0.0
            for t, g in zip(texts(completions), target, strict=True)
        ]

    def integer(completions: list[Any], **_: Any) -> list[float]:
        return [values.integer if scorer.is_integer(t) else 0.0 for t in texts(completions)]

    def strict_format(completions: list[Any], **_: Any) -> list[float]:
        return [values.strict_format if scorer.strict_ok(t) else 0.0 for t in texts(completions)]

    def soft_format(completions: list[Any], **_: Any) -> list[float]:
        return [values.soft_format if scorer.soft_ok(t) else 0.0 for t in texts(completions)]

    def xml_count(completions: list[Any], **_: Any) -> list[float]:
        return [
            scorer.xml_count(t, values.xml_per_tag, values.xml_trailing_penalty)
            for t in texts(completions)
        ]

    return [correctness, integer, strict_format, soft_format, xml_count]
