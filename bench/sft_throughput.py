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
import shutil
import statistics
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
    # Unsloth without TRL's trainer: a plain loop over the same packed batches (the anchor).
    "unsloth_alone": ("unsloth_alone", {}),
    # the 4-bit row at <= 8 GiB: the gpu profile with Unsloth's offloaded checkpointing (the
    # profile's setting before the memory plan; backend auto -> Unsloth on a GPU, 4-bit, packed).
    "tunelab_gpu": ("unsloth", {"model.gradient_checkpointing": "offload"}),
    # the gpu profile as committed: gradient_checkpointing auto, the memory plan picks.
    "tunelab_auto": ("unsloth", {}),
    # the plan under a 16 GiB budget (a 16 GB card's choice, measured on the H200).
    "tunelab_auto_16gib": ("unsloth", {"model.memory_budget_gib": 16}),
    # the same in deterministic mode (params reproducibility; its own process: the cuBLAS
    # workspace is fixed before CUDA starts); compare with tunelab_auto run alone
    "tunelab_auto_deterministic": ("deterministic", {}),
    # tunelab_gpu with every packed micro-batch padded to one length (4 x 2048 = 8192); it
    # shares the process of the setups before it (Unsloth's offload buffers already grown).
    "tunelab_gpu_fixed_shape": (
        "unsloth",
        {"model.gradient_checkpointing": "offload", "data.pad_to_multiple_of": 8192},
    ),
    "tunelab_unsloth_4bit_no_gc": ("unsloth", {"model.gradient_checkpointing": False}),
    "tunelab_unsloth_bf16": ("unsloth", {"model.load_in_4bit": False}),
    # the transformers + PEFT fallback of the same stage (bitsandbytes 4-bit).
    "tunelab_gpu_hf": ("hf", {"backend": "hf"}),
    "tunelab_gpu_hf_liger": ("hf", {"backend": "hf", "liger_kernel": True}),
    "tunelab_gpu_hf_no_liger": ("hf", {"backend": "hf", "liger_kernel": False}),
    # LoRA variants: the gpu profile's path with one variant key changed; PiSSA
    # rewrites the base weights and needs a bf16 base (compare with tunelab_unsloth_bf16).
    "tunelab_gpu_dora": ("variants", {"lora.use_dora": True}),
    "tunelab_gpu_rslora": ("variants", {"lora.use_rslora": True}),
    "tunelab_gpu_loraplus": ("variants", {"optim.loraplus_lr_ratio": 16.0}),
    "tunelab_bf16_pissa": ("variants_bf16", {"model.load_in_4bit": False, "lora.init": "pissa"}),
}
# what a plain `python bench/sft_throughput.py` runs (the default setups), in this order
DEFAULT_SETUPS = [
    "tunelab_gpu",
    "tunelab_auto",
    "tunelab_auto_16gib",
    "unsloth_alone",
    "hf_seed",
]
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
    from tunelab.training.throughput import sync_device as sync

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

    from tunelab.config.train import SFTTrainParams

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
    changes = bench | overrides
    if tiny and changes.get("model.gradient_checkpointing") == "offload":
        changes["model.gradient_checkpointing"] = "gpu"  # offload is Unsloth's (CUDA only)
    for dotted, value in changes.items():
        node = section
        *path, leaf = dotted.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    if tiny and section["data"].get("pad_to_multiple_of"):  # one micro-batch's tokens
        section["data"]["pad_to_multiple_of"] = (
            section["optim"]["per_device_train_batch_size"] * section["data"]["max_length"]
        )
    return SFTTrainParams.model_validate(section)


# Warm-up steps left out of every setup's rate (--warmup-steps): compilation, autotuning,
# cuDNN attention plans per new length and Unsloth's offload buffers all settle there.
WARMUP = {"steps": 2}
# Steps left out of the rate when a setup is profiled: the two profiled steps and the one
# whose end starts the profiler.
PROFILED = 3
HOST_CALLS = (  # CUDA runtime calls that make the GPU wait or cost host time, by name
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaHostAlloc",
    "cudaMallocHost",
    "cudaFreeHost",
    "cudaMalloc",
    "cudaFree",
    "cudaMemcpy",
    "cudaMemcpyAsync",
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
)


class StepProfiler:
    """torch.profiler over optimizer steps (first, first + n], summarised.

    Besides device-kernel time by category (what the GPU does), it reports what the
    host does while the GPU waits: the window's wall time per step against the union
    of device-busy intervals (kernels and copies on any stream), the CUDA runtime calls
    that block or allocate (synchronisations, pinned and device allocations) and the
    host ops with the most self time. ``callback()`` drives it from a Trainer;
    ``step_end(step)`` from a plain loop.
    """

    def __init__(self, first_step: int, n: int, out: Path) -> None:
        self.first, self.last, self.out, self.prof = first_step, first_step + n, out, None
        self.t0 = 0.0
        self.result: dict[str, Any] | None = None

    def step_end(self, step: int) -> None:
        import torch

        if step == self.first and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif step == self.last and self.prof is not None and self.result is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            self.summarise(wall)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                outer.step_end(state.global_step)

        return _CB()

    def summarise(self, wall: float) -> None:
        n = self.last - self.first
        events = self.prof.key_averages()
        rows, host, calls = [], [], {}
        for e in events:
            on_device = "CUDA" in str(getattr(e, "device_type", ""))
            if on_device:
                dev = getattr(e, "self_device_time_total", None)
                if dev is None:
                    dev = getattr(e, "self_cuda_time_total", 0)
                if dev:
                    rows.append((dev, e.count, e.key))
            elif e.key in HOST_CALLS:
                calls[e.key] = {
                    "calls_per_step": round(e.count / n, 1),
                    "ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 2),
                }
            else:
                host.append((e.self_cpu_time_total, e.count, e.key))
        rows.sort(reverse=True)
        host.sort(reverse=True)
        total = sum(r[0] for r in rows) or 1
        cats: dict[str, float] = {}
        for dev, _, key in rows:
            cats[kernel_category(key)] = cats.get(kernel_category(key), 0) + dev
        busy = device_busy_us(self.prof.events())
        self.result = {
            "steps_profiled": n,
            "wall_ms_per_step": round(wall * 1e3 / n, 1),
            "device_busy_ms_per_step": round(busy / 1e3 / n, 1) if busy is not None else None,
            "device_idle_share": round(1 - busy / 1e6 / wall, 3) if busy is not None else None,
            "device_ms_per_step": round(total / 1e3 / n, 1),
            "kernels_per_step": round(sum(r[1] for r in rows) / n),
            "share_by_category": {
                k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda x: -x[1])
            },
            "top_kernels": [
                {"share": round(d / total, 4), "calls": c, "name": k[:160]} for d, c, k in rows[:25]
            ],
            "cuda_runtime_calls": dict(sorted(calls.items(), key=lambda kv: -kv[1]["ms_per_step"])),
            "top_host_ops_by_self_time": [
                {
                    "ms_per_step": round(t / 1e3 / n, 2),
                    "calls_per_step": round(c / n, 1),
                    "name": k[:120],
                }
                for t, c, k in host[:25]
            ],
        }
        self.out.write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")


def device_busy_us(events: Any) -> float | None:
    """Microseconds in which at least one kernel or copy ran on the device (interval union)."""
    spans = []
    for e in events:
        if "CUDA" not in str(getattr(e, "device_type", "")):
            continue
        r = getattr(e, "time_range", None)
        if r is not None and r.end > r.start:
            spans.append((r.start, r.end))
    if not spans:
        return None
    spans.sort()
    busy, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            busy += hi - lo
            lo, hi = a, b
        else:
            hi = max(hi, b)
    return busy + hi - lo


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

    gcs: list = []
    watch = GcWatch()
    callbacks, prof = [gc_recorder(watch, gcs)], None
    if profile_out is not None and steps > PROFILED + 2:
        prof = StepProfiler(steps - 2, 2, profile_out)
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
    ).card
    t = dict(card["throughput"])
    t["meter_tokens_per_second"] = t["tokens_per_second"]
    t["warmup_steps_left_out"] = WARMUP["steps"] if steps > WARMUP["steps"] else 0
    t |= step_figures(
        t["seconds_per_step"],
        t["tokens_each_step"],
        t["warmup_steps_left_out"],
        PROFILED if prof is not None else 0,
    )
    t["profile"] = prof.result if prof is not None else None
    t["losses"] = logged_losses(work / "live" / name)
    t["python_gc_ms_and_full_collections_each_step"] = gcs
    watch.close()
    t["memory_plan"] = card.get("memory_plan")
    t |= {
        "backend": backend,
        "params": {
            "load_in_4bit": params.model.load_in_4bit,
            "dtype": params.model.dtype,
            "gradient_checkpointing": card["params"]["model"]["gradient_checkpointing"],
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


def step_figures(seconds: list[float], tokens: list[int], skip: int, profiled: int) -> dict:
    """Rate and steadiness over the timed steps: after ``skip`` warm-up steps and before the
    last ``profiled`` ones (the profiler slows those). Steady: slowest within 15% of the median."""
    end = len(seconds) - profiled
    secs, toks = seconds[skip:end], tokens[skip:end]
    if not secs:
        return {}
    median = statistics.median(secs)
    return {
        "steps_timed": len(secs),
        "tokens_timed": sum(toks),
        "seconds_timed": round(sum(secs), 3),
        "tokens_per_step": round(sum(toks) / len(secs), 1),
        "tokens_per_second": round(sum(toks) / sum(secs), 1),
        "median_step_seconds": round(median, 4),
        "slowest_step_over_median": round(max(secs) / median, 3),
        "steady": max(secs) <= 1.15 * median,
    }


class GcWatch:
    """Host time spent in Python's garbage collector (gc.callbacks), read per step."""

    def __init__(self) -> None:
        self.ms, self.full, self._t = 0.0, 0, None
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.ms += (time.perf_counter() - self._t) * 1e3
            self.full += info.get("generation") == 2
            self._t = None

    def take(self) -> list:
        """[ms in the collector, full collections] since the last take."""
        out, self.ms, self.full = [round(self.ms, 1), self.full], 0.0, 0
        return out

    def close(self) -> None:
        gc.callbacks.remove(self._cb)


def gc_recorder(watch: GcWatch, into: list) -> Any:
    """Trainer callback: the step's time in Python's garbage collector, at every step end."""
    from transformers import TrainerCallback

    class _CB(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            into.append(watch.take())

    return _CB()


def logged_losses(live_dir: Path) -> list[float]:
    """The per-step training loss dvclive wrote (train/loss), in step order."""
    files = sorted(live_dir.rglob("loss.tsv"))
    files = [f for f in files if "eval" not in f.parts] or files
    if not files:
        return []
    rows = files[0].read_text(encoding="utf-8").splitlines()[1:]
    return [round(float(r.split("\t")[-1]), 4) for r in rows if r.strip()]


def run_unsloth_alone(
    model_dir: Path, data_dir: Path, steps: int, tiny: bool, profile_out: Path | None
) -> dict[str, Any]:
    """Unsloth alone, as its users write it without TRL's trainer: FastLanguageModel (4-bit),
    its get_peft_model with its offloaded gradient checkpointing, and a plain loop (forward,
    backward, clip, 8-bit AdamW step) over the same packed batches the trainer gets: the
    project's rows tokenised with the chat template, packed by TRL's ``pack_dataset`` (BFD,
    max_length) and collated padding-free by TRL's collator, ``per_device_train_batch_size``
    packed rows per step. LoRA, lengths, batch, learning rate, clipping and seed are the gpu
    profile's (tunelab_params). ``--tiny`` (or no CUDA): the same loop on transformers + PEFT,
    since Unsloth needs a CUDA GPU; it runs the code path, not Unsloth.
    """
    import torch

    params = tunelab_params({}, steps, tiny)
    cuda = torch.cuda.is_available() and not tiny
    if cuda:
        import unsloth  # noqa: F401  (before transformers, TRL and PEFT)
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir),
            max_seq_length=params.data.max_length,
            dtype=torch.bfloat16,
            load_in_4bit=params.model.load_in_4bit,
            use_safetensors=True,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=params.lora.r,
            lora_alpha=params.lora.alpha,
            lora_dropout=params.lora.dropout,
            target_modules=list(params.lora.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=params.seed,
        )
        loader = "unsloth FastLanguageModel, use_gradient_checkpointing='unsloth'"
    else:
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunelab.training.backends import lora_config

        tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, lora_config(params.lora))
        loader = "transformers + PEFT (tiny / no CUDA: Unsloth needs a CUDA GPU)"
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunelab.io import read_jsonl
    from tunelab.training.memory_plan import measured_peak_gib
    from tunelab.training.throughput import sync_device as sync

    length = params.data.max_length
    ids = [
        tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][
            :length
        ]
        for r in read_jsonl(data_dir / "train.jsonl")
    ]
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), length, strategy="bfd")
    order = torch.randperm(len(packed), generator=torch.Generator().manual_seed(params.seed))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)
    rows = params.optim.per_device_train_batch_size
    device = "cuda" if cuda else "cpu"

    def batch(i: int) -> dict[str, Any]:
        picked = [packed[int(order[(i * rows + j) % len(order)])] for j in range(rows)]
        return {k: v.to(device, non_blocking=True) for k, v in collate(picked).items()}

    trainable = [p for p in model.parameters() if p.requires_grad]
    o = params.optim
    if cuda and o.optim == "adamw_8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(trainable, lr=o.learning_rate, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(trainable, lr=o.learning_rate, weight_decay=o.weight_decay)
    prof = StepProfiler(steps - 2, 2, profile_out) if profile_out and steps > PROFILED + 2 else None

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    seconds, tokens, losses, gcs = [], [], [], []
    watch = GcWatch()
    sync()
    last = time.perf_counter()
    for step in range(1, steps + 1):
        b = batch(step - 1)
        tokens.append(b["input_ids"].numel())
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, o.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        now = time.perf_counter()
        seconds.append(round(now - last, 4))
        losses.append(round(float(loss), 4))
        gcs.append(watch.take())
        if prof is not None:
            prof.step_end(step)
        last = time.perf_counter()  # the profiler's start and stop are not a step's time
    skip = WARMUP["steps"] if steps > WARMUP["steps"] else 0
    out = step_figures(seconds, tokens, skip, PROFILED if prof is not None else 0)
    out |= {
        "steps": steps,
        "warmup_steps_left_out": skip,
        "loader": loader,
        "seconds_per_step": seconds,
        "tokens_each_step": tokens,
        "losses": losses,
        "python_gc_ms_and_full_collections_each_step": gcs,
        "profile": prof.result if prof is not None else None,
    }
    watch.close()
    if cuda:
        out["peak_allocated_gib"] = measured_peak_gib()
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def worker(args: argparse.Namespace) -> None:
    """Run the named setups (one process group) and write one JSON per setup."""
    if any(SETUPS[n][0] == "deterministic" for n in args.worker.split(",")):
        from tunelab.config import load_section
        from tunelab.determinism import apply

        section = load_section("reproducibility", ROOT / "params.yaml")
        log(f"deterministic mode: {apply(section.model_copy(update={'deterministic': True}))}")
    import torch

    for name in args.worker.split(","):
        group, spec = SETUPS[name]
        result: dict[str, Any] = {"setup": name, "group": group}
        if torch.cuda.is_available():
            result["allocated_before_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        log(f"setup {name} ...")
        t0 = time.perf_counter()
        try:
            prof = args.work / f"profile-{name}.json" if name in args.profile else None
            if group == "plain":
                result |= run_plain(spec, args.model_dir, args.data_dir, args.steps)
            elif group == "unsloth_alone":
                result |= run_unsloth_alone(
                    args.model_dir, args.data_dir, args.steps, args.tiny, prof
                )
            else:
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
        default=",".join(DEFAULT_SETUPS),
        help="comma-separated, in order; 'variants': the LoRA-variant setups and baselines; "
        "'all': every setup but the variants",
    )
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per setup")
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="first steps left out of the rate"
    )
    parser.add_argument(
        "--profile", default="tunelab_gpu,unsloth_alone", help="setups to profile (last 2 steps)"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (model, data)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: code paths only")
    parser.add_argument("--group-timeout", type=float, default=None, help="seconds per process")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "base" / "text")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.profile = [p for p in args.profile.split(",") if p]
    WARMUP["steps"] = args.warmup_steps
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
    elif names == ["all"]:
        names = [n for n in SETUPS if n not in VARIANT_SETUPS]
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        sys.exit(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    from tunelab.provenance import command_line

    command = command_line("python bench/sft_throughput.py", sys.argv[1:], ROOT)
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
            "--warmup-steps",
            str(args.warmup_steps),
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
    print(
        f"{'setup':26} {'status':7} {'tok/s':>9} {'peak GiB':>9} {'MFU':>6} {'x seed':>7} "
        f"{'x alone':>8} {'slow/med':>9}"
    )
    for r in report["results"]:
        print(
            f"{r['setup']:26} {r.get('status', '?'):7} {r.get('tokens_per_second') or '-':>9} "
            f"{r.get('peak_allocated_gib', '-'):>9} {r.get('mfu', '-'):>6} "
            f"{r.get('speedup_vs_hf_seed', '-'):>7} {r.get('vs_unsloth_alone', '-'):>8} "
            f"{r.get('slowest_step_over_median', '-'):>9}"
        )
    print("loss agreement:", json.dumps(report["loss_agreement"]))
    print("targets:", json.dumps(report["targets"]))


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
    by = {r["setup"]: r for r in results if r.get("tokens_per_second")}
    for r in results:
        if r.get("tokens_per_second"):
            for anchor, key in (
                ("hf_seed", "speedup_vs_hf_seed"),
                ("unsloth_alone", "vs_unsloth_alone"),
            ):
                if anchor in by:
                    r[key] = round(r["tokens_per_second"] / by[anchor]["tokens_per_second"], 2)
    report = {
        **meta,
        "wall_seconds": round(wall, 1),
        "loss_agreement": loss_agreement(by.get("tunelab_auto"), by.get("tunelab_gpu")),
        "targets": targets(by),
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    return report


def loss_agreement(a: dict | None, b: dict | None) -> dict[str, Any] | None:
    """Per-step training losses of two setups over the same steps (same data order, seed).

    bf16 noise: the two runs differ in what is recomputed or kept (checkpointing), which
    changes the rounding of bf16 activations, not the math; 2% of the loss is the bar.
    """
    if not a or not b or not a.get("losses") or not b.get("losses"):
        return None
    pairs = list(zip(a["losses"], b["losses"], strict=False))
    diffs = [abs(x - y) for x, y in pairs]
    rel = max(d / max(abs(y), 1e-6) for d, (_, y) in zip(diffs, pairs, strict=True))
    return {
        "setups": [a["setup"], b["setup"]],
        "steps_compared": len(pairs),
        "max_abs_diff": round(max(diffs), 4),
        "max_rel_diff": round(rel, 4),
        "agree_within_2_percent": rel <= 0.02,
    }


def targets(by: dict[str, dict]) -> dict[str, Any]:
    """The SFT speed targets, read off this run's figures (None where a setup did not run)."""
    gpu, auto, alone, seed = (
        by.get(n) for n in ("tunelab_gpu", "tunelab_auto", "unsloth_alone", "hf_seed")
    )
    out: dict[str, Any] = {}
    if gpu:
        out["tunelab_gpu_tokens_per_second_ge_12200"] = gpu["tokens_per_second"] >= 12_200
        if gpu.get("peak_allocated_gib") is not None:
            out["tunelab_gpu_peak_le_8_gib"] = gpu["peak_allocated_gib"] <= 8.0
        out["tunelab_gpu_steady"] = gpu.get("steady")
        if alone:
            out["tunelab_gpu_ge_1.1x_unsloth_alone"] = gpu.get("vs_unsloth_alone", 0) >= 1.1
    if auto:
        out["tunelab_auto_tokens_per_second_ge_15000"] = auto["tokens_per_second"] >= 15_000
    if seed and (gpu or auto):
        best = max(r["tokens_per_second"] for r in (gpu, auto) if r)
        out["ge_10x_hf_seed"] = best / seed["tokens_per_second"] >= 10
    return out


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
