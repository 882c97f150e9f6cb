"""Profiles: named sets of params.yaml values (profiles/<name>.yaml).

A profile file mirrors params.yaml's nesting; applying it replaces exactly the
leaves it names and nothing else, keeping params.yaml's comments and layout
(ruamel.yaml round trip), so `dvc params diff` shows just those values.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from tunelab.config import PARAMS_FILE, load_params, read_yaml
from tunelab.errors import TunelabError

PROFILES_DIR = Path("profiles")


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping to dotted keys (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= leaves(value, dotted + ".")
        else:
            out[dotted] = value
    return out


def _merge(target: Any, overlay: dict[str, Any], where: str, changed: list[str]) -> None:
    for key, value in overlay.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in target:
            raise TunelabError(dotted, "the profile names a key params.yaml does not have")
        if isinstance(value, dict):
            if not isinstance(target[key], dict):
                raise TunelabError(
                    dotted, "the profile has a mapping where params.yaml has a value"
                )
            _merge(target[key], value, dotted, changed)
        elif target[key] != value:
            target[key] = copy.deepcopy(value)
            changed.append(dotted)


def apply_profile(
    name: str, params_path: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR
) -> list[str]:
    """Write profile ``name`` into params.yaml; return the dotted keys that changed."""
    profile = profiles_dir / f"{name}.yaml"
    if not profile.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise TunelabError(str(profile), f"no such profile (known: {', '.join(known)})")
    overlay = read_yaml(profile)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    rt.representer.add_representer(float, _represent_float)
    doc = rt.load(params_path.read_text(encoding="utf-8"))
    changed: list[str] = []
    _merge(doc, overlay, "", changed)
    if not changed:
        return changed
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    # Validate the result before it replaces params.yaml: a bad profile changes nothing.
    candidate = params_path.with_name(f".{params_path.name}.profile-tmp")
    candidate.write_text(text, encoding="utf-8")
    try:
        try:
            load_params(candidate)
        except TunelabError as err:
            key = err.where.split(": ", 1)[-1]
            raise TunelabError(
                str(profile), f"would make params.yaml invalid at {key}: {err.message}"
            ) from None
        if yaml.safe_load(text) != _expected(params_path, overlay):
            raise TunelabError(str(profile), "applying the profile changed more than its keys")
        candidate.replace(params_path)
    finally:
        candidate.unlink(missing_ok=True)
    return changed


def _represent_float(representer: Any, value: float) -> Any:
    """Floats that YAML 1.1 readers (PyYAML, DVC) read back as floats.

    Python writes 5e-06 and 1e+20, which YAML 1.1 takes for strings: its float needs a
    dot in the mantissa, so the mantissa gets one (5.0e-06).
    """
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _expected(params_path: Path, overlay: dict[str, Any]) -> dict[str, Any]:
    base = read_yaml(params_path)

    def merge(t: dict[str, Any], o: dict[str, Any]) -> None:
        for k, v in o.items():
            if isinstance(v, dict):
                merge(t[k], v)
            else:
                t[k] = v

    merge(base, overlay)
    return base
