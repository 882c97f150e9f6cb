"""The command line a benchmark writes into its result file, free of this machine's paths.

A result JSON is committed and read on other machines: the device's output folder
($OUT there) is written as ``$OUT`` and paths inside the repository relative to it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command_line(script: str, argv: list[str]) -> str:
    """``python bench/<script> <args>`` with $OUT and the repository's root taken out."""
    out = os.environ.get("OUT")
    args = []
    for arg in argv:
        if out and arg.startswith(out.rstrip("/") + "/"):
            args.append("$OUT/" + arg[len(out.rstrip("/")) + 1 :])  # unquoted: expands there
            continue
        if arg.startswith(str(ROOT) + os.sep):
            arg = os.path.relpath(arg, ROOT)
        args.append(shlex.quote(arg))
    return " ".join([f"python bench/{script}", *args])
