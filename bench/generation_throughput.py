"""Generation throughput for GRPO rollouts and batched evaluation, one GPU, one command.

    python bench/generation_throughput.py --out bench/results/generation_<tag>.json

Uses the Qwen2.5-7B-shaped random-weight model that bench/sft_throughput.py builds
(built here too when absent). Each path runs in its own process:

* ``hf_bf16`` - plain transformers ``generate`` (dynamic KV cache), bf16;
* ``unsloth_4bit`` / ``unsloth_bf16`` - Unsloth's FastLanguageModel in inference mode
  (its fast path when vLLM is not installed: vLLM is not on the benchmark machine);
* ``hf_4bit`` - plain ``generate`` on the bitsandbytes NF4 model tunelab's loading code
  gives the gpu profile's evaluation (QLoRA's base), and ``tunelab_4bit_dequantized`` the
  same model through ``generation.quantized: dequantize`` (tunelab.generation.for_generation:
  bf16 weights holding the NF4 values, then the compiled engine);
* ``tunelab_compiled`` - tunelab.generation (the path the evaluate stages and GRPO
  rollouts take without vLLM): static cache, compiled decode step with CUDA graphs,
  grouped-query decode attention, settings from params.yaml (evaluate.alpaca.generation);
  ``tunelab_compiled_sdpa`` the same with transformers' SDPA decode attention;
* ``tunelab_continuous`` - tunelab.generation.continuous (what ``auto`` takes on a GPU):
  slots with refill, one CUDA graph per decode step, settings from params.yaml;
  ``tunelab_continuous_autotune`` the same with ``compile_mode: max-autotune`` (inductor
  autotunes the decoder layer's GEMMs for the slot count).

The rollout workload (``--rollouts``): prompts of exactly 256 tokens, 256 new tokens
(min = max), sampling, at 48 (8 prompts x 6) and 192 sequences, for plain ``generate``
(hf_bf16) and tunelab_compiled; then for tunelab_compiled a GRPO step end to end
through tunelab's own trainer class (training/grpo.rollout_trainer) and a 1,319-prompt
evaluation end to end through tunelab's lm-eval model class (evaluation/gsm8k.lm_class),
timed whole (no extrapolation).

With ``--rollouts --varied`` (and ``tunelab_continuous`` among the paths): the same
rows, every path side by side in the printed table, plus for the continuous paths a
profile of one decode step (``decode_profile``: kernels by kind, from the captured graph)
and the workload with real stops (``varied_stops``: 384 rows over 192 slots ending at
lengths drawn from 32..512, with and without refill, rows compared). The command for all
three engines in one call is in docs/performance.md (generation speed).

For each path (without ``--rollouts``):

* GRPO rollout: ``--grpo-prompts`` prompts x num_generations=6 samples
  (temperature 1.0), 256 new tokens each -> generated tokens per second;
* GRPO step: TRL's GRPOTrainer (LoRA r=16, num_generations=6, 4 prompts per step,
  256-token completions, a length reward) for a few steps -> seconds per step
  (generation + scoring + the policy update), timed like the SFT bench;
* evaluation: greedy batched generation (batch ``--eval-batch``, 256 new tokens) over
  the first ``--eval-prompts`` of 1,319 GSM8K-sized prompts -> tokens per second and
  the time the full 1,319 would take at that rate (an extrapolation, said so in the JSON).

Completions are forced to full length (min_new_tokens = max_new_tokens), so a random
model's early end-of-sequence cannot flatter a path. Prompts are the project's own
sample questions through the chat template. ``--tiny`` runs the code paths on a small
model (CPU works).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import QWEN25_7B, ROOT, TINY, build_model, log  # noqa: E402

from tunelab.training.throughput import sync_device  # noqa: E402

NUM_GENERATIONS = 6
NEW_TOKENS = 256
GSM8K_TEST = 1319
PATHS = (
    "hf_bf16",
    "tunelab_compiled",
    "tunelab_continuous",
    "tunelab_continuous_autotune",
    "tunelab_compiled_sdpa",
    "unsloth_4bit",
    "unsloth_bf16",
    "hf_4bit",
    "tunelab_4bit_dequantized",
)
PROMPT_TOKENS = 256  # the rollout workload's prompts
ROLLOUT_SEQUENCES = (48, 192)
# the workload with real stops: rows end at lengths drawn from 32..512
# (new_tokens / 8 .. 2 x new_tokens)
VARIED_ROWS, VARIED_SLOTS = 384, 192


def engine_params(path: str) -> Any:
    """evaluate.alpaca.generation from params.yaml, forced to the path's engine
    (``*continuous*``: the continuous engine, other tunelab paths: compiled).

    ``TUNELAB_BENCH_COMPILE_BACKEND`` (the bench's --compile-backend) overrides the
    backend, e.g. aot_eager for a CPU run of the code paths.
    """
    from tunelab.config import load_section

    # evaluate.alpaca's block: the one that offers generation.quantized (the 4-bit paths)
    gen = load_section("evaluate.alpaca", ROOT / "params.yaml").generation
    update = {
        "engine": "continuous" if "continuous" in path else "compiled",
        "decode_attention": "sdpa" if path.endswith("_sdpa") else gen.decode_attention,
    }
    if path.endswith("_autotune"):  # inductor autotunes the layer's GEMMs (no code change)
        update["compile_mode"] = "max-autotune"
    if os.environ.get("TUNELAB_BENCH_COMPILE_BACKEND"):
        update["compile_backend"] = os.environ["TUNELAB_BENCH_COMPILE_BACKEND"]
    return gen.model_copy(update=update)


def random_prompts(tok: Any, n: int, length: int, seed: int) -> Any:
    """n prompts of exactly ``length`` token ids (no special tokens), seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    pool = torch.tensor([i for i in range(len(tok)) if i not in special])
    return pool[torch.randint(len(pool), (n, length), generator=g)]


def fixed_length_rate(model: Any, tok: Any, path: str, sequences: int, new: int) -> dict:
    """The rollout workload's measurement: ``sequences`` sampled continuations of 256-token prompts.

    One call generates all sequences together (8 prompts x 6 samples at 48); a first
    call of the same shape runs untimed (compilation and CUDA graph capture, reported).
    """
    import torch

    device = next(model.parameters()).device
    ids = random_prompts(tok, sequences, PROMPT_TOKENS, sequences).to(device)
    mask = torch.ones_like(ids)
    kwargs: dict[str, Any] = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": None,
        "pad_token_id": tok.pad_token_id,
    }

    def once() -> int:
        if path.startswith("tunelab"):
            from tunelab.generation import generate_new_tokens

            rows = generate_new_tokens(model, ids, mask, engine_params(path), sequences, kwargs)
            return sum(len(r) for r in rows)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    sync_device()
    t0 = time.perf_counter()
    once()
    sync_device()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated = once()
    sync_device()
    seconds = time.perf_counter() - t0
    log(f"{path} {sequences} sequences: first call {first:.1f} s, then {seconds:.2f} s")
    return {
        "sequences": sequences,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens_per_sequence": new,
        "generated_tokens": generated,
        "first_call_seconds": round(first, 2),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
    } | engine_stats(model)


def engine_stats(model: Any) -> dict:
    """The continuous engine's split of its last run (prefill, decode steps, host)."""
    from tunelab.generation.continuous import held_engine

    engine = held_engine(model)
    return {"engine_stats": engine.stats.as_dict()} if engine else {}


def profile_decode(model: Any, steps: int = 8) -> dict:
    """Where one decode step's GPU time goes: ``steps`` replays of the continuous engine's
    captured graph (its last shape) under torch.profiler, kernels grouped by kind."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunelab.generation.continuous import held_engine

    engine = held_engine(model)
    if engine is None or engine.graph is None:
        return {"note": "no captured graph"}
    engine.graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.graph.replay()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    kinds: dict[str, float] = {}
    kernels: dict[str, list] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name
        low = name.lower()
        kind = (
            "matmul"
            if any(
                k in low for k in ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "splitk")
            )
            else "fused (triton)"
            if low.startswith("triton")
            else "other"
        )
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        kinds[kind] = kinds.get(kind, 0.0) + us
        k = kernels.setdefault(name[:90], [0, 0.0])
        k[0] += 1
        k[1] += us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "slots": engine.slots,
        "cache_len": engine.max_len,
        "wall_ms_per_step": round(1000 * wall, 3),
        "gpu_ms_per_step_by_kind": {k: round(v / steps / 1000, 3) for k, v in kinds.items()},
        "kernels_per_step": round(sum(v[0] for v in kernels.values()) / steps, 1),
        "top_kernels_ms_per_step": {n: round(v[1] / steps / 1000, 3) for n, v in top},
    }


def varied_stops(model: Any, tok: Any, path: str, new: int) -> dict:
    """Rows that end at lengths drawn from 32..512 (greedy; each row's length is its
    own limit, as if EOS came there), VARIED_ROWS prompts over VARIED_SLOTS slots.

    The continuous engine runs it with refill and without (waves of VARIED_SLOTS rows,
    each waiting for its longest), and the two must give the same rows in the same
    order; the compiled engine runs it in batches of VARIED_SLOTS. A fixed-length greedy
    run (``new`` tokens, VARIED_SLOTS sequences) is the figure to compare with.
    """
    import random

    import torch

    from tunelab.generation import generate_new_tokens

    device = next(model.parameters()).device
    lo, hi = max(1, new // 8), 2 * new
    rng = random.Random(0)
    limits = [rng.randint(lo, hi) for _ in range(VARIED_ROWS)]
    ids = random_prompts(tok, VARIED_ROWS, PROMPT_TOKENS, 7).to(device)
    mask = torch.ones_like(ids)
    kwargs = {
        "max_new_tokens": hi,
        "min_new_tokens": hi,  # no early EOS from random weights: the limits end the rows
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tok.pad_token_id,
    }
    params = engine_params(path)

    def timed(p: Any, n: int, limits_: list | None, kw: dict) -> tuple[list, float]:
        sync_device()
        t0 = time.perf_counter()
        rows = generate_new_tokens(model, ids[:n], mask[:n], p, VARIED_SLOTS, kw, limits=limits_)
        sync_device()
        sec = time.perf_counter() - t0
        log(
            f"{path} varied: {n} rows, refill {p.refill}, limits {limits_ is not None}: {sec:.2f} s"
        )
        return rows, sec

    fixed_kw = kwargs | {"max_new_tokens": new, "min_new_tokens": new}
    timed(params, VARIED_SLOTS, None, fixed_kw)  # compile / capture for these shapes
    rows, sec = timed(params, VARIED_SLOTS, None, fixed_kw)
    out: dict[str, Any] = {
        "rows": VARIED_ROWS,
        "slots": VARIED_SLOTS,
        "lengths": f"uniform {lo}..{hi}, mean {sum(limits) / len(limits):.1f}",
        "fixed_greedy_tokens_per_second": round(sum(len(r) for r in rows) / sec, 1),
    }
    timed(params, VARIED_SLOTS, limits[:VARIED_SLOTS], kwargs)  # the max_len=768 shapes
    made = sum(limits)
    rows, sec = timed(params, VARIED_ROWS, limits, kwargs)
    out |= {
        "generated_tokens": made,
        "seconds": round(sec, 3),
        "tokens_per_second": round(made / sec, 1),
        "lengths_as_asked": [len(r) for r in rows] == limits,
    } | engine_stats(model)
    out["ratio_to_fixed_greedy"] = round(
        out["tokens_per_second"] / out["fixed_greedy_tokens_per_second"], 3
    )
    if params.engine == "continuous":
        waves = params.model_copy(update={"refill": False})
        same, wsec = timed(waves, VARIED_ROWS, limits, kwargs)
        equal = [a.tolist() == b.tolist() for a, b in zip(rows, same, strict=True)]
        out["without_refill"] = {
            "seconds": round(wsec, 3),
            "tokens_per_second": round(made / wsec, 1),
            "rows_identical_to_refill": f"{sum(equal)}/{len(equal)}",
        }
    return out


def schedule_invariance(model: Any, tok: Any, path: str, new: int, rows_n: int) -> dict:
    """The same ``rows_n`` greedy prompts at 192 and 48 slots, with and without refill,
    with generation.batch_invariant off and on: tok/s of each, and how many rows equal the
    192-slot refill run of the same setting (all of them, with batch invariance).

    Each setting's first call builds its engine (capture; compile when not invariant) and
    is timed apart from a second, measured call.
    """
    import torch

    from tunelab.generation import generate_new_tokens

    device = next(model.parameters()).device
    ids = random_prompts(tok, rows_n, PROMPT_TOKENS, 11).to(device)
    mask = torch.ones_like(ids)
    kwargs = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tok.pad_token_id,
    }
    out: dict[str, Any] = {"rows": rows_n, "new_tokens": new}
    reference: dict[bool, list] = {}
    for invariant in (False, True):
        base = engine_params(path).model_copy(update={"batch_invariant": invariant})
        for slots, refill in ((192, True), (48, True), (48, False)):
            name = f"{'invariant' if invariant else 'default'}_{slots}_{'refill' if refill else 'waves'}"
            params = base.model_copy(update={"refill": refill})
            try:
                times = []
                for _ in range(2):
                    sync_device()
                    t0 = time.perf_counter()
                    rows = generate_new_tokens(model, ids, mask, params, slots, kwargs)
                    sync_device()
                    times.append(time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - report, go on with the other settings
                out[name] = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[:500]}"}
                log(f"{path} invariance {name} FAILED: {err}")
                continue
            rows = [r.tolist() for r in rows]
            ref = reference.setdefault(invariant, rows)
            made = sum(len(r) for r in rows)
            out[name] = {
                "first_call_seconds": round(times[0], 2),
                "seconds": round(times[1], 3),
                "tokens_per_second": round(made / times[1], 1),
                "rows_identical_to_192_refill": f"{sum(a == b for a, b in zip(rows, ref, strict=True))}/{len(rows)}",
            }
            log(f"{path} invariance {name}: {out[name]}")
    if False in reference and True in reference:
        same = sum(a == b for a, b in zip(reference[False], reference[True], strict=True))
        out["invariant_rows_equal_default_rows"] = f"{same}/{rows_n}"
    fast, slow = out.get("default_192_refill", {}), out.get("invariant_192_refill", {})
    if "tokens_per_second" in fast and "tokens_per_second" in slow:
        out["invariant_cost_ratio_192"] = round(
            slow["tokens_per_second"] / fast["tokens_per_second"], 3
        )
    return out


def gsm8k_eval_end_to_end(path: str, model_dir: Path, work: Path, n: int, max_gen: int) -> dict:
    """``n`` generated GSM8K problems through tunelab's lm-eval model class, timed whole."""
    import random

    from tunelab.config import load_section
    from tunelab.evaluation.gsm8k import run_lm_eval, write_task
    from tunelab.samples.gsm8k import generate_problems

    data = work / "gsm8k-eval"
    data.mkdir(parents=True, exist_ok=True)
    rows = generate_problems(random.Random(0), n)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = load_section("evaluate.gsm8k", ROOT / "params.yaml")
    params = params.model_copy(
        update={
            "generation": engine_params(path),
            "model": params.model.model_copy(update={"dtype": "bfloat16"}),
            "max_samples": None,
            "batch_size": 192,
            "max_gen_toks": max_gen,
        }
    )
    task = work / "gsm8k-task"
    task.mkdir(exist_ok=True)
    write_task(task, data / "train.jsonl", data / "test.jsonl")
    log(f"{path} GSM8K: {n} prompts through lm-eval")
    t0 = time.perf_counter()
    scores, samples = run_lm_eval(task, str(model_dir), None, None, None, params)
    seconds = time.perf_counter() - t0
    return {
        "prompts": len({s["doc_id"] for s in samples}),  # lm-eval logs one row per filter
        "batch_size": params.batch_size,
        "max_gen_toks": max_gen,
        "seconds_end_to_end": round(seconds, 1),
        "note": "model load, lm-eval's request building, generation (compilation included) "
        "and scoring; random weights rarely emit a stop string, so most rows run the full "
        "max_gen_toks",
    }


def prompts_from_sample(n: int) -> list[list[dict[str, str]]]:
    from tunelab.config import load_section
    from tunelab.data.alpaca import prepare_alpaca

    params = load_section("prepare.alpaca", ROOT / "params.yaml")
    params = params.model_copy(update={"source": str(ROOT / params.source)})
    records, _ = prepare_alpaca(params)
    msgs = [[m for m in r["messages"] if m["role"] != "assistant"] for r in records]
    return [msgs[i % len(msgs)] for i in range(n)]


def generate_rate(
    model: Any, tok: Any, prompts: list, batch: int, new: int, sample: bool, n_return: int
) -> dict[str, Any]:
    import torch

    tok.padding_side = "left"
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": sample,
        "num_return_sequences": n_return,
        "pad_token_id": tok.pad_token_id,
    }
    kwargs |= {"temperature": 1.0, "top_p": 1.0} if sample else {"temperature": None, "top_p": None}
    generated, seconds, batches = 0, 0.0, 0
    for start in range(0, len(prompts), batch):
        texts = [
            tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        sync_device()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        sync_device()
        seconds += time.perf_counter() - t0
        generated += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        batches += 1
    return {
        "prompts": len(prompts),
        "sequences": len(prompts) * n_return,
        "batches": batches,
        "new_tokens_per_sequence": new,
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
    }


def load(path: str, model_dir: Path, cuda: bool) -> tuple[Any, Any]:
    import torch

    if path.startswith("unsloth"):
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir),
            max_seq_length=2048,
            dtype=torch.bfloat16 if cuda else torch.float32,
            load_in_4bit=path.endswith("4bit") and cuda,
            use_safetensors=True,
        )
        FastLanguageModel.for_inference(model)
        return model, tok
    from tunelab.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(model_dir), None, False)
    four_bit = "4bit" in path
    model = load_causal_lm(
        str(model_dir),
        None,
        "bfloat16" if cuda else "float32",
        four_bit,
        False,
        device_map="cuda" if cuda else None,
    )
    if four_bit and path.startswith("tunelab"):
        from tunelab.generation import for_generation

        model = for_generation(model, engine_params(path))
    model.eval()
    return model, tok


def grpo_steps(path: str, model_dir: Path, prompts: list, steps: int, cuda: bool) -> dict[str, Any]:
    """A few TRL GRPOTrainer steps on a freshly loaded LoRA model of this path."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.training.throughput import ThroughputMeter

    if path.startswith("unsloth"):
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir),
            max_seq_length=2048,
            dtype=torch.bfloat16 if cuda else torch.float32,
            load_in_4bit=path.endswith("4bit") and cuda,
            use_safetensors=True,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            use_gradient_checkpointing="unsloth",
            random_state=0,
        )
    else:
        from peft import LoraConfig, get_peft_model

        model, tok = load(path, model_dir, cuda)
        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=16,
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
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = Dataset.from_list([{"prompt": p} for p in prompts])

    def length_reward(completions: list, **kw: Any) -> list[float]:
        return [len(c[0]["content"]) / 1000 for c in completions]

    config = GRPOConfig(
        output_dir=str(model_dir.parent / f"grpo-{path}"),
        num_generations=NUM_GENERATIONS,
        per_device_train_batch_size=12,
        gradient_accumulation_steps=2,  # generation batch 24 = 4 prompts x 6
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        max_steps=steps,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=not path.startswith("unsloth"),
        seed=0,
    )
    trainer_class = GRPOTrainer
    if path.startswith("tunelab"):  # tunelab's own GRPO trainer: compiled rollouts
        from tunelab.config import load_section
        from tunelab.training.grpo import rollout_trainer

        grpo = load_section("train.gsm8k", ROOT / "params.yaml")
        trainer_class = rollout_trainer(
            grpo.model_copy(update={"generation": engine_params(path)}), "hf"
        )
    log(f"{path} GRPO: {steps} steps")
    trainer = trainer_class(
        model=model,
        reward_funcs=[length_reward],
        args=config,
        train_dataset=ds,
        processing_class=tok,
    )
    meter = ThroughputMeter().attach(trainer)
    trainer.train()
    s = meter.summary()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {
        "steps": s["steps"],
        "prompts_per_step": 4,
        "num_generations": NUM_GENERATIONS,
        "completion_tokens_per_step": 4 * NUM_GENERATIONS * NEW_TOKENS,
        "seconds_per_step": s.get("seconds_per_step"),
        "mean_seconds_per_step_timed": round(s["seconds_timed"] / s["steps_timed"], 2)
        if s.get("steps_timed")
        else None,
        "peak_allocated_gib": s.get("peak_allocated_gib"),
        "mean_completion_length": logs[-1].get("completions/mean_length") if logs else None,
    }


def _generation_done(result: dict, cuda: bool) -> None:
    """Record the generation phase's peak memory and free the cache (the caller dropped
    its model) before a training phase loads its own."""
    import torch

    gc.collect()
    if cuda:
        result["peak_allocated_gib_generation"] = round(
            torch.cuda.max_memory_allocated() / 2**30, 2
        )
        torch.cuda.empty_cache()


def measure(args: argparse.Namespace, path: str, result: dict, cuda: bool) -> None:
    """Rollout and evaluation rates on the project's sample prompts, then GRPO steps."""
    model, tok = load(path, args.model_dir, cuda)
    prompts = prompts_from_sample(GSM8K_TEST)
    # warm-up: one short batch (kernels, allocator, Unsloth's first-call patches)
    generate_rate(model, tok, prompts[:8], 8, 16, True, 1)
    result["grpo_rollout"] = generate_rate(
        model,
        tok,
        prompts[: args.grpo_prompts],
        args.grpo_prompts,
        args.new_tokens,
        True,
        NUM_GENERATIONS,
    )
    ev = generate_rate(
        model, tok, prompts[: args.eval_prompts], args.eval_batch, args.new_tokens, False, 1
    )
    ev["extrapolated_seconds_for_1319_prompts"] = round(
        GSM8K_TEST * args.new_tokens / ev["tokens_per_second"], 1
    )
    ev["note"] = f"measured on the first {args.eval_prompts} prompts; 1,319 extrapolated"
    result["eval"] = ev
    del model
    _generation_done(result, cuda)
    if args.grpo_steps:
        result["grpo_step"] = grpo_steps(path, args.model_dir, prompts[:64], args.grpo_steps, cuda)


def measure_rollouts(args: argparse.Namespace, path: str, result: dict, cuda: bool) -> None:
    """The rollout workload: 48 and 192 sequences; for tunelab paths a GRPO step and a 1,319-prompt eval.

    The result file is rewritten after every phase (status ``partial``), so a path that
    runs past ``--timeout`` still reports what it measured.
    """

    def save() -> None:
        out = args.work / f"gen-{path}.json"
        out.write_text(json.dumps(result | {"status": "partial"}, indent=2) + "\n")

    model, tok = load(path, args.model_dir, cuda)
    log(f"{path} loaded")
    result["fixed_length"] = []
    for n in ROLLOUT_SEQUENCES:
        result["fixed_length"].append(fixed_length_rate(model, tok, path, n, args.new_tokens))
        save()
    if "continuous" in path and cuda:
        result["decode_profile"] = profile_decode(model)
        save()
    if args.varied and "continuous" in path:
        result["varied_stops"] = varied_stops(model, tok, path, args.new_tokens)
        save()
    if args.invariance and "continuous" in path:
        result["schedule_invariance"] = schedule_invariance(
            model, tok, path, args.new_tokens, args.invariance_rows
        )
        save()
    del model
    _generation_done(result, cuda)
    if args.grpo_steps and (path.startswith("tunelab") or path == "hf_bf16"):
        result["grpo_step"] = grpo_steps(
            path, args.model_dir, prompts_from_sample(64), args.grpo_steps, cuda
        )
        save()
    if args.eval_prompts and path.startswith("tunelab"):
        result["gsm8k_eval"] = gsm8k_eval_end_to_end(
            path, args.model_dir, args.work, args.eval_prompts, args.new_tokens
        )


def worker(args: argparse.Namespace) -> None:
    if args.deterministic:  # before CUDA starts: the cuBLAS workspace is fixed then
        from tunelab.config import load_section
        from tunelab.determinism import apply

        section = load_section("reproducibility", ROOT / "params.yaml")
        log(f"deterministic mode: {apply(section.model_copy(update={'deterministic': True}))}")
    import torch

    cuda = torch.cuda.is_available()
    path = args.worker
    result: dict[str, Any] = {"path": path}
    t0 = time.perf_counter()
    try:
        (measure_rollouts if args.rollouts else measure)(args, path, result, cuda)
        result["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - report and let the other paths run
        result |= {
            "status": "failed",
            "error": f"{type(err).__name__}: {str(err)[:2000]}",
            "traceback": traceback.format_exc()[-4000:],
        }
        log(f"{path} FAILED: {type(err).__name__}: {str(err)[:300]}")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (args.work / f"gen-{path}.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--grpo-prompts", type=int, default=8, help="prompts per rollout batch (x6)")
    p.add_argument("--grpo-steps", type=int, default=4, help="GRPOTrainer steps (0: skip)")
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--compile-backend", help="override params' compile_backend (CPU: aot_eager)")
    p.add_argument(
        "--rollouts",
        action="store_true",
        help="256-token prompts at 48 and 192 sequences; GRPO step and --eval-prompts "
        "GSM8K problems end to end for tunelab paths",
    )
    p.add_argument(
        "--varied",
        action="store_true",
        help="with --rollouts: rows with real stops (lengths 32..512) for tunelab paths",
    )
    p.add_argument(
        "--invariance",
        action="store_true",
        help="with --rollouts: greedy rows at 48 and 192 slots, with and without refill, "
        "with and without generation.batch_invariant, rows compared (continuous paths)",
    )
    p.add_argument("--invariance-rows", type=int, default=192, help="prompts of --invariance")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="every path process in deterministic mode (params reproducibility)",
    )
    p.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "base" / "text")
    p.add_argument("--timeout", type=float, default=None, help="seconds per path process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    cuda = torch.cuda.is_available()
    if args.work is None:
        shm = Path("/dev/shm")
        args.work = (shm if shm.is_dir() else ROOT / ".tunelab") / "bench-sft"
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"
    if not (model_dir / "config.json").is_file():
        build_model(
            model_dir, TINY if args.tiny else QWEN25_7B, args.tokenizer, "cuda" if cuda else "cpu"
        )
    from tunelab.provenance import command_line

    command = command_line("python bench/generation_throughput.py", sys.argv[1:], ROOT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if args.compile_backend:
        env["TUNELAB_BENCH_COMPILE_BACKEND"] = args.compile_backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    results = []
    for path in [x for x in args.paths.split(",") if x]:
        f = args.work / f"gen-{path}.json"
        f.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path]
        cmd += ["--model-dir", str(model_dir), "--work", str(args.work)]
        for k in ("grpo_prompts", "grpo_steps", "eval_prompts", "eval_batch", "new_tokens"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        cmd += ["--rollouts"] if args.rollouts else []
        cmd += ["--varied"] if args.varied else []
        cmd += (
            ["--invariance", "--invariance-rows", str(args.invariance_rows)]
            if args.invariance
            else []
        )
        cmd += ["--deterministic"] if args.deterministic else []
        log(f"path {path}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(cmd, env=env, cwd=ROOT, timeout=args.timeout)
        results.append(
            json.loads(f.read_text()) if f.is_file() else {"path": path, "status": "no result"}
        )
        report = {
            "command": command,
            "model": "tiny" if args.tiny else "Qwen2.5-7B shape, random weights",
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "num_generations": NUM_GENERATIONS,
            "results": results,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.rollouts:
        print_side_by_side(results)
        return
    print(
        f"\n{'path':14} {'status':7} {'GRPO gen tok/s':>15} {'GRPO s/step':>12} {'eval tok/s':>11} {'1319 s':>8}"
    )
    for r in results:
        g, e, s = r.get("grpo_rollout", {}), r.get("eval", {}), r.get("grpo_step", {})
        print(
            f"{r['path']:14} {r.get('status', '?'):7} {g.get('tokens_per_second', '-'):>15} "
            f"{s.get('mean_seconds_per_step_timed', '-'):>12} {e.get('tokens_per_second', '-'):>11} "
            f"{e.get('extrapolated_seconds_for_1319_prompts', '-'):>8}"
        )


def rollout_rows(r: dict) -> dict[str, Any]:
    """One path's figures for the side-by-side table (``-``: not measured for this path)."""
    fixed = {f["sequences"]: f["tokens_per_second"] for f in r.get("fixed_length", [])}
    varied = r.get("varied_stops", {})
    waves = varied.get("without_refill", {})
    return {
        "48 sequences, tok/s": fixed.get(48, "-"),
        "192 sequences, tok/s": fixed.get(192, "-"),
        "GRPO step, s": r.get("grpo_step", {}).get("mean_seconds_per_step_timed", "-"),
        "GSM8K 1,319 end to end, s": r.get("gsm8k_eval", {}).get("seconds_end_to_end", "-"),
        "real stops, tok/s": varied.get("tokens_per_second", "-"),
        "real stops / fixed greedy": varied.get("ratio_to_fixed_greedy", "-"),
        "real stops without refill, tok/s": waves.get("tokens_per_second", "-"),
        "rows identical with/without refill": waves.get("rows_identical_to_refill", "-"),
        "status": r.get("status", "?"),
    }


def print_side_by_side(results: list[dict]) -> None:
    """Every rollout-workload row with one column per path, side by side."""
    columns = [(r["path"], rollout_rows(r)) for r in results]
    if not columns:
        return
    width = max(len(k) for k in columns[0][1]) + 1
    print("\n" + " " * width + "".join(f"{name:>26}" for name, _ in columns))
    for key in columns[0][1]:
        print(f"{key:{width}}" + "".join(f"{str(rows[key]):>26}" for _, rows in columns))


if __name__ == "__main__":
    main()
