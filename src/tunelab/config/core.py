"""The small core of tunelab's params: the strict base class, shared field types, reading
params.yaml and turning validation errors into one line with a suggestion.

Every value a stage uses comes from params.yaml; the section models declare no
defaults, so a key missing from params.yaml is an error, never a silent fallback.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import TunelabError

PARAMS_FILE = Path("params.yaml")

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    """Strict base: unknown keys and wrong types are errors; values are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ParamConflict(ValueError):
    """Two keys of one section that cannot be used together (raised by a validator).

    ``key`` and ``other`` are dotted paths relative to the model that raises it;
    the error line names both in full (``train.alpaca.lora.use_dora: ... with
    train.alpaca.model.load_in_4bit ...``).
    """

    def __init__(self, key: str, other: str, why: str) -> None:
        self.key, self.other, self.why = key, other, why
        super().__init__(f"{key}: {why} with {other}")


def check_regex(pattern: str, groups: int | None = None) -> str:
    import re

    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regular expression ({err})") from None
    if groups is not None and compiled.groups != groups:
        raise ValueError(f"the pattern must have exactly {groups} group(s)")
    return pattern


NonEmptyStr = Annotated[str, Field(min_length=1)]


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping safely (yaml.safe_load: no arbitrary objects)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunelabError(str(path), "file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise TunelabError(
            f"{path}{line}", f"invalid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(data, dict):
        raise TunelabError(str(path), "expected a mapping at the top level")
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The Section class that holds the mapping at ``loc`` (None: not a Section there)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates = [field.annotation]
        while candidates:
            ann = candidates.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
                break
            if isinstance(ann, types.UnionType) or typing.get_origin(ann) in (typing.Union,):
                candidates += list(typing.get_args(ann))
        else:
            return None
    return model


def suggest(key: str, known: list[str], likely: list[str] | None = None) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''.

    ``likely`` (names missing beside the unknown one: a rename) are tried first with no
    cutoff; then difflib's close matches among all known names.
    """
    if likely:
        return f" (did you mean {difflib.get_close_matches(key, likely, n=1, cutoff=0.0)[0]!r}?)"
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.4)
    return f" (did you mean {match[0]!r}?)" if match else ""


def format_error(
    path: Path, prefix: str, err: ValidationError, model: type[BaseModel]
) -> TunelabError:
    """Every error of the section on one line: unknown keys first (with a suggestion), then
    missing keys and bad values, each as ``<dotted key>: <what>``, joined by ``; ``."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    missing = [tuple(e["loc"]) for e in errors if e["type"] == "missing"]
    parts = []
    for e in errors:
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in (prefix, *loc) if p != "")
        msg = e["msg"]
        conflict = (e.get("ctx") or {}).get("error")
        if isinstance(conflict, ParamConflict):  # two keys: name both in full
            parts.append(
                (f"{dotted}.{conflict.key}", f"{conflict.why} with {dotted}.{conflict.other}")
            )
            continue
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent else []
            siblings = [m[-1] for m in missing if m[:-1] == loc[:-1]]
            msg = "unknown key" + (suggest(str(loc[-1]), known, siblings) if known else "")
        elif e["type"] == "missing":
            msg = "missing key"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        parts.append((dotted, msg))
    first, *rest = parts
    message = "; ".join([first[1], *(f"{k}: {m}" for k, m in rest)])
    return TunelabError(f"{path}: {first[0]}", message)


def lookup(data: dict[str, Any], dotted: str, path: Path) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TunelabError(f"{path}: {dotted}", "missing section")
        node = node[part]
    return node
