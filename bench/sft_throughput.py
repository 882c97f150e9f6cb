"""SFT training throughput: tunelab's own train path against plain transformers + PEFT.

One command, one GPU:

    python bench/sft_throughput.py --out bench/results/sft_throughput_<tag>.json

builds a Qwen2.5-7B-shaped model (hidden 3584, 28 layers, 28/4 heads, intermediate
18944, vocab 152064) from its config with random weights, saves it (safetensors,
with the project's own tokenizer from models/base/text) and then, each setup in
its own process (Unsloth patches transformers on import, and peak memory must
not leak between setups):

* ``hf_seed`` - plain transformers + PEFT, bf16, LoRA r=16 on all seven
  projections, batches of 2 x 512 padded, gradient checkpointing, 8 micro-batches
  per step (8192 padded tokens per step): the seed's setting, a hand-written loop.
* ``tunelab_*`` - ``tunelab.training.sft.train_sft``, the code `dvc repro` runs,
  with params.yaml + profiles/gpu.yaml (train.alpaca), the model loaded through
  tunelab's loading code, overridden only where the setup says so and in
  max_steps / gradient_accumulation_steps=1 (4 x 2048 = 8192 tokens per step).
  ``tunelab_gpu_{dora,rslora,loraplus}`` and ``tunelab_bf16_pissa`` change one LoRA
  variant key each (``--setups variants`` runs them with their two baselines); their
  results also carry the train wall time (load + init + steps + save) and the run
  card's ``lora_variant`` (adapter size, saved rank).

Same model, same rows (the project's alpaca sample run through tunelab's prepare
code, repeated), same LoRA rank and targets. Figures: real (non-padding) tokens per
second over the timed steps (the first two steps are left out), peak allocated
CUDA memory, and MFU = tokens/s x 6 x 6.53e9 / the bf16 matmul rate measured
here on an 8192^3 product (6.53e9: Qwen2.5-7B's non-embedding parameters; the
issue's formula, which ignores attention FLOPs and the gradient-checkpointing
recompute). ``--tiny`` runs every code path on a small model (CPU works) for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NON_EMBEDDING_PARAMS = 6.53e9  # Qwen2.5-7B, the issue's MFU formula
TURNS = 3  # sample QA pairs per benchmark conversation

QWEN25_7B = {
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 4096,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

# name -> (process group, spec). Setups of one group share a process, in this order.
SETUPS: dict[str, tuple[str, dict[str, Any]]] = {
    "hf_seed": ("plain", {"batch": 2, "seq": 512, "accum": 8, "gradient_checkpointing": True}),
    # tunelab's gpu profile as committed (backend auto -> Unsloth on a GPU, 4-bit, packed).
    "tunelab_gpu": ("unsloth", {}),
    "tunelab_unsloth_4bit_no_gc": ("unsloth", {"model.gradient_checkpointing": False}),
    "tunelab_unsloth_bf16": ("unsloth", {"model.load_in_4bit": False}),
    # the transformers + PEFT fallback of the same stage (bitsandbytes 4-bit).
    "tunelab_gpu_hf": ("hf", {"backend": "hf"}),
    "tunelab_gpu_hf_liger": ("hf", {"backend": "hf", "liger_kernel": True}),
    "tunelab_gpu_hf_no_liger": ("hf", {"backend": "hf", "liger_kernel": False}),
    # LoRA variants (issue 19): the gpu profile's path with one variant key changed; PiSSA
    # rewrites the base weights and needs a bf16 base (compare with tunelab_unsloth_bf16).
    "tunelab_gpu_dora": ("variants", {"lora.use_dora": True}),
    "tunelab_gpu_rslora": ("variants", {"lora.use_rslora": True}),
    "tunelab_gpu_loraplus": ("variants", {"optim.loraplus_lr_ratio": 16.0}),
    "tunelab_bf16_pissa": ("variants_bf16", {"model.load_in_4bit": False, "lora.init": "pissa"}),
}
VARIANT_SETUPS = [n for n, (group, _) in SETUPS.items() if group.startswith("variants")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- model and data


def build_model(model_dir: Path, shape: dict[str, Any], tokenizer_dir: Path, device: str) -> None:
    """A Qwen2 of the given shape with random weights, saved as safetensors + tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        **shape,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    log(f"built {n / 1e9:.2f}B-parameter model in {model_dir}")


def build_data(data_dir: Path, min_rows: int) -> dict[str, Any]:
    """Chat rows from the project's alpaca sample through tunelab's prepare code, repeated."""
    from tunelab.config import load_section
    from tunelab.data.alpaca import prepare_alpaca
    from tunelab.io import write_jsonl

    params = load_section("prepare.alpaca", ROOT / "params.yaml")
    params = params.model_copy(update={"source": str(ROOT / params.source)})
    records, _ = prepare_alpaca(params)
    # Three sample QA pairs per conversation (system, then user/assistant x 3): the
    # sample's rows are short, and whole conversations of this length are closer to
    # alpaca-cleaned's under a real tokenizer (a few hundred tokens, many under 512).
    rows = []
    for i in range(0, len(records) - TURNS + 1, TURNS):
        group = records[i : i + TURNS]
        messages = [group[0]["messages"][0]]
        for r in group:
            messages += [m for m in r["messages"] if m["role"] != "system"]
        rows.append({"messages": messages})
    out = (rows * (min_rows // len(rows) + 1))[:min_rows]
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", out)
    write_jsonl(data_dir / "val.jsonl", rows[:8])
    return {
        "rows": len(out),
        "distinct_rows": len(rows),
        "qa_pairs_per_row": TURNS,
        "source": "prepare.alpaca (the project's sample), repeated",
    }


def matmul_peak_tflops() -> float | None:
    """bf16 8192^3 matmul on random data: mean of 10 after 3 warm-ups (KINDS.md's recipe)."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    secs = start.elapsed_time(end) / 1e3 / 10
    del a, b
    torch.cuda.empty_cache()
    return round(2 * n**3 / secs / 1e12, 1)


# ------------------------------------------------------------------------------- setups


def run_plain(spec: dict[str, Any], model_dir: Path, data_dir: Path, steps: int) -> dict[str, Any]:
    """The seed's setting: transformers + PEFT, padded batches, a plain training loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.io import read_jsonl

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.bfloat16 if cuda else torch.float32,
        device_map="cuda" if cuda else None,
        use_safetensors=True,
    )
    model.config.use_cache = False
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            task_type="CAUSAL_LM",
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    seq, batch, accum = spec["seq"], spec["batch"], spec["accum"]
    encoded = []
    for row in read_jsonl(data_dir / "train.jsonl"):
        ids = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)
        encoded.append(ids["input_ids"][:seq])
    device = "cuda" if cuda else "cpu"

    def micro_batch(i: int) -> dict[str, Any]:
        rows = [encoded[(i * batch + j) % len(encoded)] for j in range(batch)]
        ids = torch.full((batch, seq), pad, dtype=torch.long)
        mask = torch.zeros((batch, seq), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "labels": labels.to(device),
        }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    marks, tokens, padded, i = [], 0, 0, 0
    sync()
    marks.append((time.perf_counter(), 0, 0))
    for _ in range(steps):
        for _ in range(accum):
            b = micro_batch(i)
            i += 1
            tokens += int(b["attention_mask"].sum())
            padded += b["input_ids"].numel()
            loss = model(**b).loss / accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        marks.append((time.perf_counter(), tokens, padded))
    skip = 2 if steps > 2 else 0
    (t0, n0, p0), (t1, n1, p1) = marks[skip], marks[-1]
    out = {
        "steps": steps,
        "warmup_steps_left_out": skip,
        "steps_timed": steps - skip,
        "tokens_timed": n1 - n0,
        "seconds_timed": round(t1 - t0, 3),
        "tokens_per_step": round((n1 - n0) / (steps - skip), 1),
        "padded_tokens_per_step": round((p1 - p0) / (steps - skip), 1),
        "real_token_fraction": round((n1 - n0) / (p1 - p0), 3),
        "seconds_per_step": [round(b[0] - a[0], 4) for a, b in zip(marks, marks[1:], strict=False)],
        "tokens_per_second": round((n1 - n0) / (t1 - t0), 1),
        "last_loss": round(float(loss) * accum, 4),
    }
    if cuda:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def tunelab_params(overrides: dict[str, Any], steps: int, tiny: bool) -> Any:
    """train.alpaca from params.yaml with profiles/gpu.yaml on top, then the setup's overrides."""
    import yaml

    from tunelab.config import SFTTrainParams

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    gpu = yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text(encoding="utf-8"))

    def merge(t: dict[str, Any], o: dict[str, Any]) -> None:
        for k, v in o.items():
            if isinstance(v, dict) and isinstance(t.get(k), dict):
                merge(t[k], v)
            else:
                t[k] = v

    merge(params, gpu)
    section = params["train"]["alpaca"]
    bench = {
        "optim.max_steps": steps,
        "optim.gradient_accumulation_steps": 1,  # 4 x 2048 = 8192 tokens per step
        "logging_steps": 1,
        "save_steps": 10_000,
    }
    if tiny:  # code paths only: no CUDA kernels, no 4-bit, no 8-bit optimizer
        bench |= {
            "model.load_in_4bit": False,
            "model.dtype": "float32",
            "optim.optim": "adamw_torch",
            "liger_kernel": False,
            "data.max_length": 256,
        }
    for dotted, value in (bench | overrides).items():
        node = section
        *path, leaf = dotted.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return SFTTrainParams.model_validate(section)


class ProfileSteps:
    """Trainer callback: a torch.profiler trace of the last ``n`` steps, summarised."""

    def __init__(self, first_step: int, n: int, out: Path) -> None:
        self.first, self.last, self.out, self.prof = first_step, first_step + n, out, None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                import torch

                if state.global_step == outer.first and outer.prof is None:
                    outer.prof = torch.profiler.profile(
                        activities=[
                            torch.profiler.ProfilerActivity.CPU,
                            torch.profiler.ProfilerActivity.CUDA,
                        ]
                    )
                    outer.prof.__enter__()
                elif state.global_step == outer.last and outer.prof is not None:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    outer.prof.__exit__(None, None, None)
                    outer.summarise()

        return _CB()

    def summarise(self) -> None:
        events = self.prof.key_averages()
        rows = []
        for e in events:
            if "CUDA" not in str(getattr(e, "device_type", "")):
                continue  # CPU-side ops carry their kernels' time too: count kernels only
            dev = getattr(e, "self_device_time_total", None)
            if dev is None:
                dev = getattr(e, "self_cuda_time_total", 0)
            if dev:
                rows.append((dev, e.count, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows) or 1
        cats: dict[str, float] = {}
        for dev, _, key in rows:
            cats[kernel_category(key)] = cats.get(kernel_category(key), 0) + dev
        self.result = {
            "steps_profiled": self.last - self.first,
            "device_ms_per_step": round(total / 1e3 / (self.last - self.first), 1),
            "share_by_category": {
                k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda x: -x[1])
            },
            "top_kernels": [
                {"share": round(d / total, 4), "calls": c, "name": k[:160]} for d, c, k in rows[:25]
            ],
        }
        self.out.write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")


def kernel_category(name: str) -> str:
    n = name.lower()
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset (incl. offload)"
    if any(k in n for k in ("dequant", "kdequantize", "bnb", "4bit", "nf4")):
        return "4-bit dequantize"
    if any(k in n for k in ("flash", "fmha", "attention", "attn", "varlen")):
        return "attention"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "nvjet", "matmul", "wgmma", "sm90_")):
        return "matmul (GEMM)"
    if any(k in n for k in ("cross_entropy", "logsumexp", "_ce_", "lm_head", "log_softmax")):
        return "cross-entropy"
    if "triton" in n or n.startswith("_"):
        return "triton kernels (fused norm/rope/swiglu/...)"
    if any(k in n for k in ("adam", "foreach", "optimizer")):
        return "optimizer"
    if any(k in n for k in ("elementwise", "vectorized", "reduce", "copy", "cat", "fill")):
        return "elementwise/reduce (torch)"
    return "other"


def run_tunelab(
    name: str,
    overrides: dict[str, Any],
    model_dir: Path,
    data_dir: Path,
    work: Path,
    steps: int,
    tiny: bool,
    profile_out: Path | None,
) -> dict[str, Any]:
    from tunelab.training.backends import select_backend

    params = tunelab_params(overrides, steps, tiny)
    backend = select_backend(params.backend, f"bench {name}")
    from tunelab.training.sft import train_sft

    callbacks, prof = [], None
    if profile_out is not None and steps > 4:
        prof = ProfileSteps(steps - 2, 2, profile_out)
        callbacks.append(prof.callback())
    card = train_sft(
        f"bench-{name}",
        params,
        backend,
        base_dir=model_dir,
        data_dir=data_dir,
        out_dir=work / "adapters" / name,
        live_dir=work / "live" / name,
        extra_callbacks=callbacks,
    )
    t = dict(card["throughput"])
    if prof is not None:
        # the profiled steps run slower: take the rate over the steps before them
        secs = t["seconds_per_step"]
        skip = t["warmup_steps_left_out"]
        window = secs[skip : steps - 2]
        t["tokens_per_second_with_profiled_steps"] = t["tokens_per_second"]
        t["tokens_per_second"] = round(t["tokens_per_step"] * len(window) / sum(window), 1)
        t["profile"] = getattr(prof, "result", None)
    t |= {
        "backend": backend,
        "params": {
            "load_in_4bit": params.model.load_in_4bit,
            "dtype": params.model.dtype,
            "gradient_checkpointing": params.model.gradient_checkpointing,
            "liger_kernel": params.liger_kernel and backend == "hf",
            "packing": params.data.packing,
            "max_length": params.data.max_length,
            "per_device_train_batch_size": params.optim.per_device_train_batch_size,
            "optim": params.optim.optim,
        },
        "last_logged_loss": card["train"]["last_logged_loss"],
        "adapter_files": sorted(p.name for p in (work / "adapters" / name).iterdir()),
        "train_wall_seconds": card["wall_seconds"],  # load + adapter init + steps + save
        "lora_variant": card["lora_variant"],
    }
    return t


def worker(args: argparse.Namespace) -> None:
    """Run the named setups (one process group) and write one JSON per setup."""
    import torch

    for name in args.worker.split(","):
        group, spec = SETUPS[name]
        result: dict[str, Any] = {"setup": name, "group": group}
        if torch.cuda.is_available():
            result["allocated_before_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        log(f"setup {name} ...")
        t0 = time.perf_counter()
        try:
            if group == "plain":
                result |= run_plain(spec, args.model_dir, args.data_dir, args.steps)
            else:
                prof = args.work / f"profile-{name}.json" if name in args.profile else None
                result |= run_tunelab(
                    name,
                    spec,
                    args.model_dir,
                    args.data_dir,
                    args.work,
                    args.steps,
                    args.tiny,
                    prof,
                )
            result["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one failed setup must not stop the others
            result |= {
                "status": "failed",
                "error": f"{type(err).__name__}: {str(err)[:2000]}",
                "traceback": traceback.format_exc()[-4000:],
            }
            log(f"setup {name} FAILED: {type(err).__name__}: {str(err)[:300]}")
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        (args.work / f"result-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- orchestrator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="JSON result file (e.g. bench/results/...)")
    parser.add_argument(
        "--setups",
        default=",".join(n for n in SETUPS if n not in VARIANT_SETUPS),
        help="comma-separated, in order; 'variants': the LoRA-variant setups and baselines",
    )
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per setup")
    parser.add_argument("--profile", default="tunelab_gpu", help="setups to profile (last 2 steps)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (model, data)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: code paths only")
    parser.add_argument("--group-timeout", type=float, default=None, help="seconds per process")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "base" / "text")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.profile = [p for p in args.profile.split(",") if p]
    if args.worker:
        return worker(args)

    import torch

    cuda = torch.cuda.is_available()
    if args.work is None:
        shm = Path("/dev/shm")  # RAM: the 15 GB checkpoint saves and loads fast there
        roomy = shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30
        args.work = (shm if roomy else ROOT / ".tunelab") / "bench-sft"
    args.work.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.setups.split(",") if n]
    if names == ["variants"]:  # the variant setups with the two baselines they differ from
        names = ["tunelab_gpu", "tunelab_unsloth_bf16", *VARIANT_SETUPS]
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        sys.exit(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    command = "python bench/sft_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    t_start = time.perf_counter()
    for stale in args.work.glob("result-*.json"):
        stale.unlink()
    peak = matmul_peak_tflops()
    log(f"bf16 matmul peak: {peak} TFLOP/s")
    model_dir, data_dir = args.work / "model", args.work / "data"
    if not (model_dir / "config.json").is_file():
        build_model(
            model_dir, TINY if args.tiny else QWEN25_7B, args.tokenizer, "cuda" if cuda else "cpu"
        )
    data = build_data(data_dir, min_rows=4000)
    # one process per group, groups in the order their first setup is named
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(SETUPS[n][0], []).append(n)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    meta = {
        "command": command,
        "model": "tiny" if args.tiny else "Qwen2.5-7B shape, random weights",
        "shape": TINY if args.tiny else QWEN25_7B,
        "tokens_per_step_target": 8192,
        "matmul_peak_tflops": peak,
        "data": data,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "libraries": _versions(),
    }
    for group, members in groups.items():
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            ",".join(members),
            "--steps",
            str(args.steps),
            "--work",
            str(args.work),
            "--model-dir",
            str(model_dir),
            "--data-dir",
            str(data_dir),
            "--profile",
            ",".join(args.profile),
        ] + (["--tiny"] if args.tiny else [])
        log(f"group {group}: {', '.join(members)}")
        try:
            rc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=args.group_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if rc:
            log(f"group {group} ended with {rc}")
        report = collect(args, names, peak, meta, time.perf_counter() - t_start)
    print()
    print(f"{'setup':30} {'status':7} {'tok/s':>9} {'peak GiB':>9} {'MFU':>6} {'x seed':>7}")
    for r in report["results"]:
        print(
            f"{r['setup']:30} {r.get('status', '?'):7} {r.get('tokens_per_second') or '-':>9} "
            f"{r.get('peak_allocated_gib', '-'):>9} {r.get('mfu', '-'):>6} "
            f"{r.get('speedup_vs_hf_seed', '-'):>7}"
        )


def collect(
    args: argparse.Namespace, names: list[str], peak: float | None, meta: dict, wall: float
) -> dict[str, Any]:
    """Gather the setups' results so far and (re)write the report file."""
    results = []
    for n in names:
        f = args.work / f"result-{n}.json"
        r = json.loads(f.read_text()) if f.is_file() else {"setup": n, "status": "not run"}
        if peak and r.get("tokens_per_second"):
            r["mfu"] = round(r["tokens_per_second"] * 6 * NON_EMBEDDING_PARAMS / (peak * 1e12), 4)
        results.append(r)
    base = next(
        (r for r in results if r["setup"] == "hf_seed" and r.get("tokens_per_second")), None
    )
    for r in results:
        if base and r.get("tokens_per_second"):
            r["speedup_vs_hf_seed"] = round(r["tokens_per_second"] / base["tokens_per_second"], 2)
    report = {**meta, "wall_seconds": round(wall, 1), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    return report


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "unsloth",
        "unsloth_zoo",
        "bitsandbytes",
        "liger_kernel",
        "triton",
        "datasets",
        "accelerate",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


if __name__ == "__main__":
    main()
