"""Does the gpu profile work? Every stage of `dvc repro` on this GPU, in one command.

    python bench/gpu_pipeline.py --bundle bench/vendor/site.tar.xz \\
        --out bench/results/gpu_pipeline_h200_run1.json

What it does, in a scratch copy of this checkout (``--workdir``; your clone, its
params.yaml and dvc.lock are left alone):

1. unpacks the package bundle (bench/bundle.py) when given, and puts it first on
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
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = Path("/tmp/tunelab-site")
CHECK = ".gpu-check"  # inside the work dir: models, logs, the python shim
GIT = ["git", "-c", "user.name=tunelab-check", "-c", "user.email=check@example.com"]

# Qwen2.5-7B-Instruct and Qwen2.5-VL-3B-Instruct, from their published config.json files.
QWEN25_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
}
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
}
QWEN25_VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
}
TINY_VL_TEXT = {**TINY_TEXT, "tie_word_embeddings": True, "mrope_section": [2, 3, 3]}
TINY_VL_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
}


# --tiny only (the CPU): 4-bit and packing stay, but float32 and a few short steps, since a
# bitsandbytes 4-bit step in bf16 on a CPU takes minutes even for a tiny model.
_TINY_TRAIN = {
    "model": {"dtype": "float32"},
    "data": {"max_length": 256},
    "optim": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2},
}
TINY_OVERLAY = {
    "train": {
        "alpaca": _TINY_TRAIN,
        "medical": _TINY_TRAIN,
        "legal": _TINY_TRAIN,
        "gsm8k": {
            "model": {"dtype": "float32"},
            "grpo": {
                "max_completion_length": 16,
                "optim": {
                    "per_device_train_batch_size": 8,
                    "gradient_accumulation_steps": 1,
                    "max_steps": 1,
                },
            },
        },
        "car_insurance": {
            "model": {"dtype": "float32"},
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        },
    },
    "pretrain": {
        s: {
            "model": {"dtype": "float32"},
            "data": {"max_length": 128},
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        }
        for s in ("medical", "legal")
    },
    "train_pref": {
        m: {
            "model": {"dtype": "float32"},
            "max_length": 256,
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        }
        for m in ("dpo", "orpo")
    },
    "evaluate_pref": {
        m: {"model": {"dtype": "float32"}, "max_samples": 4, "decoding": {"max_new_tokens": 8}}
        for m in ("dpo", "orpo")
    },
    "evaluate": {
        **{
            s: {"model": {"dtype": "float32"}, "max_samples": 4, "decoding": {"max_new_tokens": 8}}
            for s in ("alpaca", "medical", "legal")
        },
        # bitsandbytes' 4-bit CPU matmul returns an empty row for the tiny vision tower's
        # qkv (width 48) under generate ("shape '[96, 0]' is invalid"); on the H200 the
        # 4-bit VL evaluation runs (gpu_pipeline_h200_run1.json), so only --tiny loads it full.
        "car_insurance": {
            "model": {"dtype": "float32", "load_in_4bit": False},
            "max_samples": 4,
            "decoding": {"max_new_tokens": 8},
        },
        "gsm8k": {"model": {"dtype": "float32"}, "max_samples": 4, "max_gen_toks": 16},
    },
    "lowrank": {"svd": {"lora": {"layers": [0]}}},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ the scratch copy


def make_workdir(workdir: Path) -> None:
    """Tracked and untracked-not-ignored files of this checkout, committed in a new repo.

    Outputs of an earlier pipeline run (reports/, dvc.lock) are left behind, so every
    stage runs; dvclive wants a git revision, hence the commit.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    if workdir.exists():
        shutil.rmtree(workdir)
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/", "dvc.lock", "bench/results/")):
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / rel)
    quiet = {"capture_output": True, "check": True, "cwd": workdir}
    subprocess.run(["git", "init", "-q"], **quiet)
    subprocess.run(["git", "add", "-A"], **quiet)
    subprocess.run([*GIT, "commit", "-qm", "gpu check copy"], **quiet)
    (workdir / CHECK / "bin").mkdir(parents=True, exist_ok=True)
    # dvc.yaml runs `python -m stages...`; some images have only python3. A script, not a
    # link: a virtual environment's interpreter finds its packages from the path it is run by.
    shim = workdir / CHECK / "bin/python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    (workdir / ".git/info/exclude").write_text(f"/{CHECK}/\n")


def child_env(workdir: Path, site: Path | None, tiny: bool) -> dict[str, str]:
    path = [str(site)] if site else []
    path.append(str(workdir / "src"))
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "PATH": f"{workdir / CHECK / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "TQDM_MININTERVAL": "10",
    }
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def unpack_bundle(bundle: Path) -> Path:
    marker = SITE / ".from"
    stamp = f"{bundle.resolve()} {bundle.stat().st_size} {bundle.stat().st_mtime_ns}"
    if marker.is_file() and marker.read_text() == stamp:
        return SITE
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(SITE.parent, filter="data")  # the bundle holds one folder, site/
    (SITE.parent / "site").rename(SITE)
    marker.write_text(stamp)
    return SITE


def run(cmd: list[str], workdir: Path, env: dict[str, str], what: str) -> None:
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: {what} failed:\n{(res.stdout + res.stderr)[-3000:]}")


# ------------------------------------------------------------------ random-weight bases


BUILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
from gpu_pipeline import build_models
print(json.dumps(build_models(Path(sys.argv[1]), sys.argv[2] == "tiny")))
"""


def build_models(out: Path, tiny: bool) -> dict[str, Any]:
    """Random-weight Qwen2.5-7B-Instruct / Qwen2.5-VL-3B-Instruct shapes with tunelab's
    tokenizer (base.text.tokenizer on base.text.corpus) and Qwen2.5-VL processor."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from tunelab.config import load_section
    from tunelab.models.chat import END_OF_TEXT, IM_END
    from tunelab.models.tiny import train_tokenizer
    from tunelab.models.tiny_vl import (
        IMAGE_PAD,
        VIDEO_PAD,
        VISION_END,
        VISION_START,
        build_processor,
        build_tokenizer,
    )

    device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    text_params = load_section("base.text")
    lines = [ln for ln in Path(text_params.corpus).read_text(encoding="utf-8").splitlines() if ln]
    tok_params = text_params.tokenizer
    torch.manual_seed(0)
    made: dict[str, Any] = {}

    def finish(model: Any, folder: Path, eos: list[int], pad: int) -> None:
        model.generation_config = GenerationConfig(
            eos_token_id=eos, pad_token_id=pad, do_sample=False
        )
        start = time.perf_counter()
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="5GB")
        made[folder.name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "save_seconds": round(time.perf_counter() - start, 1),
            "files_gib": round(sum(f.stat().st_size for f in folder.glob("*")) / 2**30, 2),
        }

    # text: Qwen2ForCausalLM
    tok = train_tokenizer(lines, tok_params.vocab_size, tok_params.min_frequency)
    ids = tok.convert_tokens_to_ids
    shape = dict(TINY_TEXT if tiny else QWEN25_7B)
    theta = shape.pop("rope_theta")
    config = Qwen2Config(
        **shape,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=None,
        eos_token_id=ids(IM_END),
        pad_token_id=ids(END_OF_TEXT),
        dtype="bfloat16",
    )
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    folder = out / "text"
    tok.save_pretrained(folder)
    finish(model, folder, [ids(IM_END), ids(END_OF_TEXT)], ids(END_OF_TEXT))
    del model

    # vision: Qwen2_5_VLForConditionalGeneration with the stock processor
    vis_params = load_section("base.vision")
    vtok = build_tokenizer(
        lines, vis_params.tokenizer.vocab_size, vis_params.tokenizer.min_frequency
    )
    bounds = load_section("train.car_insurance").image
    processor = build_processor(vtok, bounds.min_pixels, bounds.max_pixels)
    vids = vtok.convert_tokens_to_ids
    text_shape = dict(TINY_VL_TEXT if tiny else QWEN25_VL_3B_TEXT)
    theta, mrope = text_shape.pop("rope_theta"), text_shape.pop("mrope_section")
    vconfig = Qwen2_5_VLConfig(
        text_config={
            **text_shape,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": theta,
                "mrope_section": mrope,
            },
            "bos_token_id": None,
            "eos_token_id": vids(IM_END),
            "pad_token_id": vids(END_OF_TEXT),
        },
        vision_config=dict(TINY_VL_VISION if tiny else QWEN25_VL_3B_VISION),
        image_token_id=vids(IMAGE_PAD),
        video_token_id=vids(VIDEO_PAD),
        vision_start_token_id=vids(VISION_START),
        vision_end_token_id=vids(VISION_END),
        tie_word_embeddings=text_shape["tie_word_embeddings"],
        dtype="bfloat16",
    )
    with torch.device(device):
        vmodel = Qwen2_5_VLForConditionalGeneration(vconfig).to(torch.bfloat16)
    folder = out / "vision"
    processor.save_pretrained(folder)
    finish(vmodel, folder, [vids(IM_END), vids(END_OF_TEXT)], vids(END_OF_TEXT))
    # The processor and the model must agree on the special tokens.
    for name, token in (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD)):
        assert getattr(vconfig, name) == vids(token) == getattr(processor, name, vids(token))
    made["vision"]["image_token_id"] = vconfig.image_token_id
    made["vision"]["vocab"] = len(vtok)
    made["text"]["vocab"] = len(tok)
    return made


def base_models(folder: Path, workdir: Path, env: dict[str, str], tiny: bool) -> dict[str, Any]:
    """Build the bases into ``folder`` (or reuse them: same script, corpus, tokenizer
    params and size), linked into the work dir where the overlay points."""
    import hashlib

    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())
    key.update((workdir / "data/raw/corpus/corpus.txt").read_bytes())
    key.update(b"tiny" if tiny else b"real")
    marker = folder / "made.json"
    t = time.perf_counter()
    made = json.loads(marker.read_text()) if marker.is_file() else {}
    if made.get("key") != key.hexdigest():
        shutil.rmtree(folder, ignore_errors=True)
        res = subprocess.run(
            [sys.executable, "-c", BUILD, str(folder), "tiny" if tiny else "real"],
            cwd=workdir,  # its params.yaml (both profiles applied) and its copy of this script
            env=env,
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise SystemExit(f"error: building the base models failed:\n{res.stderr[-3000:]}")
        made = json.loads(res.stdout.strip().splitlines()[-1]) | {"key": key.hexdigest()}
        made["build_seconds"] = round(time.perf_counter() - t, 1)
        marker.write_text(json.dumps(made))
        made["reused"] = False
    else:
        made["reused"] = True
    (workdir / CHECK / "models").symlink_to(folder, target_is_directory=True)
    return made | {"seconds": round(time.perf_counter() - t, 1)}


# ------------------------------------------------------------------ the stage graph


GRAPH = r"""
import json
from dvc.repo import Repo
graph = Repo(".").index.graph
print(json.dumps({
    "stages": [s.addressing for s in graph.nodes],
    "needs": [[a.addressing, b.addressing] for a, b in graph.edges],
}))
"""


class GpuPoller:
    """Peak GPU memory per process tree, from the driver (NVML), polled twice a second."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}  # root pid -> peak bytes
        self.roots: set[int] = set()
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # noqa: BLE001 - no NVIDIA driver: no figures
            self._nvml = None
            return
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            used: dict[int, int] = {}
            for h in self._handles:
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                    used[proc.pid] = used.get(proc.pid, 0) + (proc.usedGpuMemory or 0)
            for root in list(self.roots):
                try:
                    tree = [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
                except psutil.NoSuchProcess:
                    continue
                total = sum(used.get(pid, 0) for pid in tree)
                self.peaks[root] = max(self.peaks.get(root, 0), total)

    def peak_gib(self, pid: int) -> float | None:
        if self._nvml is None:
            return None
        return round(self.peaks.get(pid, 0) / 2**30, 2)

    def stop(self) -> None:
        self._stop.set()


def error_line(text: str) -> str | None:
    """The stage's one-line error, else the last line of a traceback."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    patterns = (r"^error: ", r"^[A-Za-z_.]*(Error|Exception)\b", r"^ERROR: ")  # stage, Python, DVC
    for pattern in patterns:
        for ln in reversed(lines):
            if re.match(pattern, ln):
                return ln[:500]
    return lines[-1][:500] if lines else None


def schedule(
    workdir: Path, env: dict[str, str], jobs: int, deadline: float, poller: GpuPoller
) -> list[dict[str, Any]]:
    """Run every stage once its upstream stages succeeded; a failure skips its descendants."""
    res = subprocess.run(
        [sys.executable, "-c", GRAPH], cwd=workdir, env=env, capture_output=True, text=True
    )
    if res.returncode:
        raise SystemExit(f"error: reading dvc.yaml's stages failed:\n{res.stderr[-2000:]}")
    graph = json.loads(res.stdout)
    needs: dict[str, set[str]] = {s: set() for s in graph["stages"]}
    for stage, dep in graph["needs"]:
        needs[stage].add(dep)
    below: dict[str, int] = {}

    def descendants(s: str) -> int:
        if s not in below:
            kids = [t for t in needs if s in needs[t]]
            below[s] = len(kids) + sum(descendants(k) for k in kids)
        return below[s]

    logs = workdir / CHECK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    order = sorted(needs, key=lambda s: (-descendants(s), s))
    while len(results) < len(needs):
        for stage in order:
            if stage in results or stage in running:
                continue
            failed = [d for d in needs[stage] if d in results and results[d]["status"] != "ok"]
            if failed:
                results[stage] = {
                    "stage": stage,
                    "status": "skipped",
                    "reason": f"{failed[0]} failed",
                }
                continue
            if len(running) >= jobs or not all(d in results for d in needs[stage]):
                continue
            fh = (logs / f"{stage}.log").open("w")
            cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)
            poller.roots.add(proc.pid)
            running[stage] = (proc, time.perf_counter(), fh)
            log(f"start {stage}")
        for stage, (proc, start, fh) in list(running.items()):
            if proc.poll() is None and time.perf_counter() < deadline:
                continue
            timed_out = proc.poll() is None
            if timed_out:
                proc.kill()
                proc.wait()
            fh.close()
            text = (logs / f"{stage}.log").read_text(errors="replace")
            ok = proc.returncode == 0
            results[stage] = {
                "stage": stage,
                "status": "ok" if ok else ("timeout" if timed_out else "failed"),
                "exit": proc.returncode,
                "seconds": round(time.perf_counter() - start, 1),
                "peak_gpu_gib": poller.peak_gib(proc.pid),
            }
            if not ok:
                results[stage]["error"] = error_line(text)
                results[stage]["log_tail"] = text[-2500:]
            poller.roots.discard(proc.pid)
            del running[stage]
            log(f"{results[stage]['status']:>7} {stage} {results[stage]['seconds']}s")
        time.sleep(0.2)
    return [results[s] for s in order]


# ------------------------------------------------------------------ what came out


def collect(workdir: Path) -> dict[str, Any]:
    metrics = {
        str(p.relative_to(workdir)): json.loads(p.read_text())
        for p in sorted((workdir / "reports/metrics").rglob("*.json"))
    }
    cards = {}
    for card_path in sorted((workdir / "adapters").glob("*/run_card.json")):
        card = json.loads(card_path.read_text())
        cards[card_path.parent.name] = {
            k: card.get(k)
            for k in ("backend", "wall_seconds", "throughput", "hardware", "base_model")
            if k in card
        } | {
            "changed_by_libraries": card.get("trainer_args", {}).get("changed_by_libraries"),
            "rollout_engine": card.get("grpo", {}).get("rollout_engine"),
        }
    return {"metrics": metrics, "run_cards": cards}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["gpus"] = out.splitlines()
    return info


def compare(a: Path, b: Path) -> int:
    """Print every metric of two runs side by side; exit 1 if any differ."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out |= flat(v, f"{prefix}{k}.")
            return out
        return {prefix[:-1]: d}

    ma, mb = (flat(json.loads(p.read_text())["metrics"]) for p in (a, b))
    differ = 0
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        if isinstance(va, list) or isinstance(vb, list):
            continue
        same = va == vb
        differ += not same
        delta = (
            f"{vb - va:+.4g}"
            if not same and isinstance(va, (int, float)) and isinstance(vb, (int, float))
            else ""
        )
        print(f"{'  ' if same else '!='} {key}: {va} | {vb} {delta}")
    print(f"{differ} of {len(set(ma) | set(mb))} metrics differ")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="the results JSON")
    parser.add_argument("--bundle", type=Path, help="bench/bundle.py's site.tar.xz, if needed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunelab-gpu-check"))
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("/tmp/tunelab-gpu-check-models"),
        help="where the random-weight bases go; reused by a later run of the same code",
    )
    parser.add_argument("--jobs", type=int, default=3, help="stages run at the same time")
    parser.add_argument("--timeout", type=float, default=570, help="seconds for everything")
    parser.add_argument("--tiny", action="store_true", help="tiny models, on the CPU")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.out:
        parser.error("--out is required")

    start = time.perf_counter()
    deadline = start + args.timeout
    site = unpack_bundle(args.bundle) if args.bundle else None
    log(f"bundle ready ({time.perf_counter() - start:.0f}s)")
    workdir = args.workdir.resolve()
    make_workdir(workdir)
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
    stages = schedule(workdir, env, args.jobs, deadline, poller)
    poller.stop()
    from recorded import command_line  # bench/recorded.py (bench/ is the script's folder)

    out = {
        "command": command_line("gpu_pipeline.py", sys.argv[1:]),
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
    print(f"\n{'stage':<24} {'status':<8} {'s':>7} {'GPU GiB':>8}  error")
    for s in stages:
        print(
            f"{s['stage']:<24} {s['status']:<8} {s.get('seconds', ''):>7} "
            f"{s.get('peak_gpu_gib') if s.get('peak_gpu_gib') is not None else '-':>8}  "
            f"{s.get('error') or s.get('reason') or ''}"
        )
    print(f"green: {out['green']}; {out['wall_seconds']} s in all; {args.out}")
    sys.exit(0 if out["green"] else 1)


if __name__ == "__main__":
    main()
