"""Typed, validated views of params.yaml: one module per params section beside a small core.

A stage loads only its own section (``load_section("train.alpaca")``); ``load_params``
validates the whole file (``tunelab params``, the ``check`` stage). The models declare
no defaults, so a key missing from params.yaml is an error, never a silent fallback.
A new section: its model in the module of its kind, its name in ``SECTIONS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.config.base import TextBaseParams, VisionBaseParams
from tunelab.config.core import PARAMS_FILE, Section, format_error, lookup, read_yaml, suggest
from tunelab.config.evaluate import SFTEvaluateParams
from tunelab.config.gsm8k import GRPOTrainParams, GSM8KEvaluateParams
from tunelab.config.launch import LaunchParams
from tunelab.config.lowrank import AlsParams, SvdParams
from tunelab.config.outputs import ExportMergeParams, ExportOutputParams, ReportContentParams
from tunelab.config.preference import PreferenceTrainParams
from tunelab.config.prepare import (
    AlpacaPrepareParams,
    CarInsurancePrepareParams,
    GSM8KPrepareParams,
    LegalPrepareParams,
    MedicalPrepareParams,
    PreferencePrepareParams,
)
from tunelab.config.pretrain import ContinualPretrainParams
from tunelab.config.reproducibility import ReproducibilityParams
from tunelab.config.train import SFTTrainParams
from tunelab.config.vl import VLEvaluateParams, VLTrainParams
from tunelab.errors import TunelabError

__all__ = ["PARAMS_FILE", "SECTIONS", "load_params", "load_section", "read_yaml", "suggest"]


SECTIONS: dict[str, type[Section]] = {
    "reproducibility": ReproducibilityParams,
    "launch.train": LaunchParams,
    "base.text": TextBaseParams,
    "base.vision": VisionBaseParams,
    "prepare.alpaca": AlpacaPrepareParams,
    "prepare.medical": MedicalPrepareParams,
    "prepare.legal": LegalPrepareParams,
    "prepare.car_insurance": CarInsurancePrepareParams,
    "prepare.gsm8k": GSM8KPrepareParams,
    "train.alpaca": SFTTrainParams,
    "train.medical": SFTTrainParams,
    "train.legal": SFTTrainParams,
    "train.car_insurance": VLTrainParams,
    "train.gsm8k": GRPOTrainParams,
    "prepare.preference": PreferencePrepareParams,
    "pretrain.medical": ContinualPretrainParams,
    "pretrain.legal": ContinualPretrainParams,
    "train_pref.dpo": PreferenceTrainParams,
    "train_pref.orpo": PreferenceTrainParams,
    "evaluate_pref.dpo": SFTEvaluateParams,
    "evaluate_pref.orpo": SFTEvaluateParams,
    "evaluate.alpaca": SFTEvaluateParams,
    "evaluate.medical": SFTEvaluateParams,
    "evaluate.legal": SFTEvaluateParams,
    "evaluate.car_insurance": VLEvaluateParams,
    "evaluate.gsm8k": GSM8KEvaluateParams,
    "report.content": ReportContentParams,
    "export.merge": ExportMergeParams,
    "export.output": ExportOutputParams,
    "lowrank.svd": SvdParams,
    "lowrank.als": AlsParams,
}


def load_section(name: str, path: Path = PARAMS_FILE) -> Any:
    """Validate and return one section, e.g. ``load_section("train.alpaca")``."""
    if name not in SECTIONS:
        raise TunelabError(name, f"no such params section (known: {', '.join(sorted(SECTIONS))})")
    raw = lookup(read_yaml(path), name, path)
    try:
        return SECTIONS[name].model_validate(raw)
    except ValidationError as err:
        raise format_error(path, name, err, SECTIONS[name]) from None


def load_params(path: Path = PARAMS_FILE) -> dict[str, Section]:
    """Validate every section of the file; unknown top-level or stage keys are errors."""
    data = read_yaml(path)
    known: dict[str, set[str]] = {}
    for name in SECTIONS:
        top, _, sub = name.partition(".")
        known.setdefault(top, set()).add(sub)
    unknown = []
    for top, value in data.items():
        if top not in known:
            unknown.append((str(top), suggest(str(top), list(known))))
        elif not isinstance(value, dict):
            raise TunelabError(f"{path}: {top}", "expected a mapping")
        elif "" in known[top]:
            continue  # a section of its own at the top (reproducibility): its model checks it
        else:
            unknown += [
                (f"{top}.{sub}", suggest(str(sub), sorted(known[top])))
                for sub in value
                if sub not in known[top]
            ]
    if unknown:
        (key, hint), *rest = unknown
        what = [f"unknown key{h or ' (not a parameter section)'}" for _, h in unknown]
        message = "; ".join(
            [what[0], *(f"{k}: {w}" for (k, _), w in zip(rest, what[1:], strict=True))]
        )
        raise TunelabError(f"{path}: {key}", message)
    return {name: load_section(name, path) for name in SECTIONS}
