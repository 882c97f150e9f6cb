"""The scenario registry: the one place a scenario is named, with what runs for it.

Each scenario has a kind (``sft``: text LoRA SFT, ``grpo``: GRPO on GSM8K, ``vl``:
vision-language SFT, ``pairs``: preference pairs for train_pref), the base model it
adapts (models/base/<base>), its loader (prepare.<name>: the params keys that name its
raw inputs and the function that reads them), its training recipe and its evaluator.
Functions are named as ``module:function`` and imported when used, so that naming a
scenario loads nothing. The stages (prepare, check, train, evaluate) dispatch through
here; dvc.yaml lists the same names in its foreach blocks (a test compares them).

Every recipe takes ``(name, params, backend, base_dir, data_dir, out_dir, live_dir)``
and returns tunelab.training.run.Trained; every evaluator takes ``(params, base_dir,
adapter_dir, data_dir)`` and returns (metrics, generations).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # sft | grpo | vl | pairs
    base: str | None  # models/base/<base>; None: prepare only
    loader: str  # module:function reading prepare.<name>'s inputs
    inputs: tuple[str, ...]  # the keys of prepare.<name> that name its raw inputs
    recipe: str | None = None  # module:function training train.<name>
    evaluator: str | None = None  # module:function evaluating evaluate.<name>
    headline: tuple[str, ...] | None = None  # metrics the evaluate stage prints (None: all)
    splits: tuple[str, str] = ("train", "val")  # the prepared files (gsm8k keeps its test)

    @property
    def base_dir(self) -> Path:
        return Path("models/base") / (self.base or "")

    def load_recipe(self) -> Callable[..., Any]:
        return _function(self.recipe, f"{self.name} has no train recipe")

    def load_evaluator(self) -> Callable[..., Any]:
        return _function(self.evaluator, f"{self.name} has no evaluator")

    def load_loader(self) -> Callable[..., Any]:
        return _function(self.loader, "")


def _function(spec: str | None, missing: str) -> Callable[..., Any]:
    if spec is None:
        raise ValueError(missing)
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


_SFT = dict(
    kind="sft",
    base="text",
    recipe="tunelab.training.sft:train_sft",
    evaluator="tunelab.evaluation.sft:evaluate_sft",
)
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("alpaca", loader="tunelab.data.alpaca:prepare_alpaca", inputs=("source",), **_SFT),
        Scenario(
            "medical", loader="tunelab.data.medical:prepare_medical", inputs=("source",), **_SFT
        ),
        Scenario(
            "legal",
            loader="tunelab.data.legal:prepare_legal",
            inputs=("exam_source", "counsel_source"),
            **_SFT,
        ),
        Scenario(
            "gsm8k",
            kind="grpo",
            base="text",
            loader="tunelab.data.gsm8k:build_gsm8k",
            inputs=("train_source", "test_source"),
            recipe="tunelab.training.grpo:train_grpo",
            evaluator="tunelab.evaluation.gsm8k:evaluate_gsm8k",
            headline=("strict_match", "flexible_extract", "answer_accuracy", "format_strict"),
            splits=("train", "test"),
        ),
        Scenario(
            "car_insurance",
            kind="vl",
            base="vision",
            loader="tunelab.data.car_insurance:prepare_car_insurance",  # + images/
            inputs=("source", "image_dir"),
            recipe="tunelab.training.vl:train_vl",
            evaluator="tunelab.evaluation.vl:evaluate_vl",
        ),
        Scenario(
            "preference",
            kind="pairs",
            base=None,
            loader="tunelab.data.preference:prepare_preference",  # + the rejected answers
            inputs=("source",),
        ),
    )
}
TRAINED = tuple(name for name, s in SCENARIOS.items() if s.recipe)  # train@ / evaluate@
PRETRAINED = ("medical", "legal")  # pretrain@<s>: continual pretraining before SFT
PREFERENCE = ("dpo", "orpo")  # train_pref@ / evaluate_pref@ (method: train_pref.<name>)


def scenario(name: str) -> Scenario:
    """The registered scenario (a KeyError names the known ones)."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return SCENARIOS[name]


def input_paths(name: str, params: Any) -> list[Path]:
    """The files and folders the scenario's prepare params name as its inputs."""
    return [Path(getattr(params, key)) for key in SCENARIOS[name].inputs]


def build(name: str, params: Any) -> Any:
    """Read and check a scenario's raw inputs and build its records in memory
    (tunelab.data.build.Prepared)."""
    from tunelab.data.build import build_prepared

    s = SCENARIOS[name]
    return build_prepared(name, s.load_loader(), params, s.splits)
