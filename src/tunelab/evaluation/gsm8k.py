"""GSM8K evaluation: lm-eval-harness's own gsm8k task on local files, plus the <answer> score.

The task is lm-eval's builtin ``gsm8k.yaml``, reused verbatim through
``include:`` (prompt ``Question: ...\\nAnswer:``, greedy decoding, stop strings,
the ``strict-match`` filter that wants ``#### N`` and the ``flexible-extract``
filter that takes the last number, ``exact_match`` after dropping ``,``, ``$``
and a final ``.``). The generated YAML only points it at the prepared files
(``dataset_path: json``) and renames it; its path to the installed
``gsm8k.yaml`` depends on the venv, so it is written at run time, never
committed. Evaluator options are params: few-shot count, chat template with the
training system prompt as system instruction, the generation length cap.

Both models run through lm-eval's ``hf`` model with the same tokenizer (the
base's), prompts, decoding and seeds; the tuned one adds ``peft=<adapter>``.
The project's scorer (tunelab.training.rewards.Scorer, the same code as the GRPO
rewards) then reads lm-eval's logged generations for ``answer_accuracy``
(number in the only ``<answer>`` pair equals the target) and format compliance
(``format_strict``, ``format_soft``). A model trained on the ``<answer>``
format rarely writes ``#### N``, so its strict-match stays near zero; that is
what the metric measures, and why the scores are reported side by side.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tunelab.config.gsm8k import GSM8KEvaluateParams
from tunelab.errors import TunelabError

TASK = "tunelab_gsm8k"
FILTERS = {
    "strict_match": "exact_match,strict-match",
    "flexible_extract": "exact_match,flexible-extract",
}


def builtin_task_yaml() -> Path:
    """The installed lm_eval/tasks/gsm8k/gsm8k.yaml."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    if not path.is_file():
        raise TunelabError(str(path), "lm-eval's builtin gsm8k task is missing")
    return path


def write_task(folder: Path, train_file: Path, test_file: Path) -> Path:
    """Write the task YAML (include of the builtin, local JSON files) into folder."""
    import yaml

    for f in (train_file, test_file):
        if not Path(f).is_file():
            raise TunelabError(str(f), "file not found (run the prepare stage first)")
    spec = {
        "include": str(builtin_task_yaml()),
        "task": TASK,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {
            "data_files": {
                "train": str(Path(train_file).resolve()),
                "test": str(Path(test_file).resolve()),
            }
        },
    }
    path = Path(folder) / f"{TASK}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def lm_class(params: GSM8KEvaluateParams) -> type:
    """lm-eval's ``hf`` model, generating through tunelab.generation.

    With the engine resolving to ``generate`` (auto on the CPU) it is lm-eval's own
    generation untouched. The compiled engine takes each of lm-eval's batches (already
    left-padded, sorted by length) with lm-eval's own stop-string criteria. The
    continuous engine takes all of a task's requests in one call (lm-eval's batch is
    widened to them; ``batch_size`` is then the engine's slots, refilled as rows end)
    with the same stop check (tunelab.generation.stop_strings). The result is shaped as
    ``HFLM._model_generate`` returns it (context + new tokens, pad after the end).
    """
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils_hf import stop_sequences_criteria

    from tunelab.generation import generate_new_tokens, is_fast, resolve_engine
    from tunelab.generation.stops import stop_strings

    class CompiledHFLM(HFLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            engine = resolve_engine(params.generation, self.model)
            print(f"generation engine: {engine}", flush=True)
            if engine != "continuous":
                return super().generate_until(requests, disable_tqdm)
            slots = self.batch_size_per_gpu
            self.batch_size_per_gpu = max(1, len(requests))  # one call: the engine refills
            try:
                return super().generate_until(requests, disable_tqdm)
            finally:
                self.batch_size_per_gpu = slots

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            import torch

            if not is_fast(resolve_engine(params.generation, self.model)):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            pad = self.tokenizer.pad_token_id
            mask = generation_kwargs.pop("attention_mask", None)
            if mask is None:
                mask = context.ne(pad).long()
            kwargs = dict(generation_kwargs)
            if not kwargs.get("do_sample") and kwargs.get("temperature", 0.0) == 0.0:
                kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            kwargs |= {"max_new_tokens": max_length - context.shape[1], "pad_token_id": pad}
            rows = generate_new_tokens(
                self.model,
                context,
                mask,
                params.generation,
                params.batch_size,
                kwargs,
                stopping=lambda width, n: stop_sequences_criteria(self.tokenizer, stop, width, n),
                stop=stop_strings(self.tokenizer, stop),
            )
            new = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=context.dtype)
            for i, r in enumerate(rows):
                new[i, : len(r)] = r
            return torch.cat([context, new.to(context.device)], 1)

    return CompiledHFLM


def run_lm_eval(
    task_dir: Path,
    base: str,
    revision: str | None,
    adapter: Path | None,
    system_instruction: str | None,
    params: GSM8KEvaluateParams,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One lm-eval run; returns (strict/flexible exact match in %, per-document samples)."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model_args: dict[str, Any] = {
        "pretrained": base,
        "dtype": params.model.dtype,
        "trust_remote_code": params.model.trust_remote_code,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if revision:
        model_args["revision"] = revision
    if adapter is not None:
        model_args["peft"] = str(adapter)
    lm = lm_class(params)(**model_args, batch_size=params.batch_size)
    out = simple_evaluate(
        model=lm,
        tasks=[TASK],
        num_fewshot=params.num_fewshot,
        batch_size=params.batch_size,
        limit=params.max_samples,
        log_samples=True,
        system_instruction=system_instruction if params.apply_chat_template else None,
        apply_chat_template=params.apply_chat_template,
        fewshot_as_multiturn=params.fewshot_as_multiturn and params.apply_chat_template,
        gen_kwargs={"max_gen_toks": params.max_gen_toks},
        task_manager=TaskManager(include_path=str(task_dir)),
        random_seed=params.seed,
        numpy_random_seed=params.seed,
        torch_random_seed=params.seed,
        fewshot_random_seed=params.seed,
    )
    if out is None:  # only on non-zero ranks of a distributed run
        raise TunelabError("lm-eval", "no results returned")
    res = out["results"][TASK]
    scores = {name: round(100 * float(res[key]), 2) for name, key in FILTERS.items()}
    return scores, out["samples"][TASK]


def responses_by_doc(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per document (lm-eval logs one entry per document and filter)."""
    seen: dict[int, dict[str, Any]] = {}
    for s in samples:
        row = seen.setdefault(
            s["doc_id"], {"doc_id": s["doc_id"], "doc": s["doc"], "response": s["resps"][0][0]}
        )
        row[f"lm_eval/{s['filter']}"] = {
            "extracted": s["filtered_resps"][0],
            "exact_match": float(s["exact_match"]),
        }
    return [seen[k] for k in sorted(seen)]


def project_scores(rows: list[dict[str, Any]], scorer: Any) -> tuple[dict[str, float], list[dict]]:
    """answer_accuracy / has_answer / format_strict / format_soft (in %) and per-row flags."""
    flags = [scorer.score(r["response"], r["doc"]["target"]) for r in rows]
    n = max(1, len(flags))
    summary = {
        "answer_accuracy": round(100 * sum(f["answer_correct"] for f in flags) / n, 2),
        "has_answer": round(100 * sum(f["has_answer"] for f in flags) / n, 2),
        "format_strict": round(100 * sum(f["format_strict"] for f in flags) / n, 2),
        "format_soft": round(100 * sum(f["format_soft"] for f in flags) / n, 2),
    }
    return summary, flags


def evaluate_gsm8k(
    params: GSM8KEvaluateParams,
    base_dir: Path,
    adapter_dir: Path,
    data_dir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Base and base + adapter through lm-eval; returns (metrics, generations)."""
    from transformers import set_seed

    from tunelab.io import read_jsonl
    from tunelab.models.loading import resolve_base
    from tunelab.training.rewards import Scorer

    train_file, test_file = data_dir / "train.jsonl", data_dir / "test.jsonl"
    head = read_jsonl(test_file)[:1] if test_file.is_file() else []
    if head and ("target" not in head[0] or "prompt" not in head[0]):
        raise TunelabError(str(test_file), "not a prepared gsm8k file (no target/prompt)")
    system = next(
        (m["content"] for m in (head[0]["prompt"] if head else []) if m["role"] == "system"), None
    )
    name_or_path, revision = resolve_base(base_dir)
    scorer = Scorer(params.format)
    metrics: dict[str, Any] = {}
    per_model: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-lmeval-") as tmp:
        write_task(Path(tmp), train_file, test_file)
        for name, adapter in (("base", None), ("tuned", adapter_dir)):
            set_seed(params.seed)
            scores, samples = run_lm_eval(
                Path(tmp), name_or_path, revision, adapter, system, params
            )
            rows = responses_by_doc(samples)
            own, flags = project_scores(rows, scorer)
            metrics[name] = scores | own
            for row, flag in zip(rows, flags, strict=True):
                row["scores"] = flag
            per_model[name] = rows
    metrics["delta"] = {
        k: round(metrics["tuned"][k] - metrics["base"][k], 2) for k in metrics["base"]
    }
    metrics["samples"] = len(per_model["base"])
    metrics["lm_eval"] = {
        "task": f"{TASK} (include: lm_eval/tasks/gsm8k/gsm8k.yaml)",
        "num_fewshot": params.num_fewshot,
        "apply_chat_template": params.apply_chat_template,
        "system_instruction": bool(system) and params.apply_chat_template,
        "max_gen_toks": params.max_gen_toks,
    }
    generations = []
    for b, t in zip(per_model["base"], per_model["tuned"], strict=True):
        generations.append(
            {
                "question": b["doc"]["question"],
                "target": b["doc"]["target"],
                "base": b["response"],
                "tuned": t["response"],
                "base_scores": b["scores"] | _lm_flags(b),
                "tuned_scores": t["scores"] | _lm_flags(t),
            }
        )
    return metrics, generations


def _lm_flags(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k.split("/", 1)[1]: v["exact_match"] == 1.0
        for k, v in row.items()
        if k.startswith("lm_eval/")
    }
