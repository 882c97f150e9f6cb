"""Does the gpu profile work? Every stage of `dvc repro` on this GPU, in one command.

    tunelab gpu-check --out gpu_check.json
    python3 -m tunelab.gpu_check --bundle bench/vendor/site.tar.xz --out gpu_check.json

(the second on a machine that has only the bundle: this package needs nothing beyond
Python's standard library until the bundle is unpacked)

What it does, in a scratch copy of this checkout (``--workdir``; your clone, its
params.yaml and dvc.lock are left alone):

1. unpacks the package bundle (tools/bundle.py) when given, and puts it first on
   PYTHONPATH for every process it starts;
2. builds random-weight base models of the real shapes from their configs, saved as
   safetensors with the project's own tokenizer and processor: Qwen2.5-7B-Instruct
   (text) and Qwen2.5-VL-3B-Instruct (vision tower included; the image, video and
   vision start/end token ids are the processor's). Random weights are right for
   "does it run, how fast, how much memory", not for quality;
3. applies ``tunelab profile gpu`` and then ``tunelab profile gpu-check``: the overlay
   changes only base paths, data sources (the project's smoke data), step counts,
   sample counts and token caps (random weights never stop early), and turns vLLM off
   (it cannot be installed beside the image's torch); every code path is the gpu
   profile's;
4. runs every stage of dvc.yaml with ``dvc repro --single-item <stage>`` as soon as its
   upstream stages are done, ``--jobs`` at a time (DVC releases its repository lock
   while a stage's command runs; ``--wait-for-lock`` covers the short writes), so a
   failing stage stops only its descendants, as ``--keep-going`` would;
5. writes ``--out``: per stage its exit status, wall seconds, peak GPU memory (the
   driver's per-process figure, polled), the error line of a failure and the log's
   tail; every metrics file; what each run card says about backend, engine and
   throughput; the machine; and the total wall time.

``--tiny`` builds tiny models of the same architectures and runs on the CPU: the code
paths of this script and of every stage under the gpu profile (bitsandbytes 4-bit,
packing, the plan), minutes on two cores. ``--compare A.json B.json`` prints the
metrics of two runs side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tunelab.gpu_check.models import base_models
from tunelab.gpu_check.overlay import TINY_OVERLAY
from tunelab.gpu_check.results import collect, compare, machine
from tunelab.gpu_check.scheduler import GpuPoller, log, schedule
from tunelab.gpu_check.workdir import child_env, make_workdir, run, unpack_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tunelab gpu-check``."""
    parser.add_argument("--out", type=Path, help="the results JSON")
    parser.add_argument("--bundle", type=Path, help="tools/bundle.py's site.tar.xz, if needed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunelab-gpu-check"))
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("/tmp/tunelab-gpu-check-models"),
        help="where the random-weight bases go; reused by a later run of the same code",
    )
    parser.add_argument("--jobs", type=int, default=3, help="stages run at the same time")
    parser.add_argument("--timeout", type=float, default=570, help="seconds for everything")
    parser.add_argument(
        "--min-free-gib",
        type=float,
        default=0.0,
        help="start a stage beside running ones only with this much GPU memory free (0: off)",
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=20.0, help="with --min-free-gib: between starts"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models, on the CPU")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="two results files side by side: metrics, adapters' and metrics files' bytes "
        "(with --out: the summary as JSON)",
    )


def run_check(args: argparse.Namespace, argv: list[str], program: str = "tunelab gpu-check") -> int:
    """The check (or ``--compare``); the exit status: 0 green / identical, 1 otherwise.

    Runs from the checkout's root (it copies that checkout); ``program`` and ``argv`` are
    recorded as the command in the results file.
    """
    from tunelab.provenance import command_line

    if args.compare:
        return compare(*args.compare, out=args.out)
    if not args.out:
        raise SystemExit("error: --out is required")
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise SystemExit(f"error: {root}: no dvc.yaml here; run from the checkout's root")
    start = time.perf_counter()
    deadline = start + args.timeout
    site = unpack_bundle(args.bundle) if args.bundle else None
    log(f"bundle ready ({time.perf_counter() - start:.0f}s)")
    workdir = args.workdir.resolve()
    make_workdir(root, workdir)
    env = child_env(workdir, site, args.tiny)
    cli = [sys.executable, "-m", "tunelab.cli", "profile"]
    run([*cli, "gpu"], workdir, env, "tunelab profile gpu")
    run([*cli, "gpu-check"], workdir, env, "tunelab profile gpu-check")
    if args.tiny:  # the scratch copy's own profile, by the same mechanism
        (workdir / "profiles/gpu-check-tiny.yaml").write_text(json.dumps(TINY_OVERLAY))
        run([*cli, "gpu-check-tiny"], workdir, env, "tunelab profile gpu-check-tiny")
    models = base_models(args.models.resolve(), workdir, env, args.tiny)
    log(f"models ready ({models['seconds']}s): {models}")

    poller = GpuPoller()
    stages = schedule(
        workdir, env, args.jobs, deadline, poller, args.min_free_gib, args.settle_seconds
    )
    poller.stop()
    out = {
        "command": command_line(program, argv, root),
        "green": all(s["status"] == "ok" for s in stages),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
        "models": models,
        "stages": stages,
        **collect(workdir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".partial")
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    print_table(stages)
    print(f"green: {out['green']}; {out['wall_seconds']} s in all; {args.out}")
    return 0 if out["green"] else 1


def print_table(stages: list[dict]) -> None:
    print(f"\n{'stage':<24} {'status':<8} {'s':>7} {'GPU GiB':>8}  error")
    for s in stages:
        gib = s.get("peak_gpu_gib")
        print(
            f"{s['stage']:<24} {s['status']:<8} {s.get('seconds', ''):>7} "
            f"{gib if gib is not None else '-':>8}  {s.get('error') or s.get('reason') or ''}"
        )
