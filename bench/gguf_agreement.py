"""File size and read-back agreement of `tunelab export --format gguf`, per quantization.

    python bench/gguf_agreement.py --project . --scenario alpaca --out bench/results/x.json

In a project folder that holds adapters/<scenario> (with its run card), the base it
names and the prepared data, every quantization is exported, then read back by
transformers' GGUF loader and by llama.cpp (llama-cpp-python, when installed) and
compared with the merged safetensors model (float32) on the scenario's held-out
prompts plus held-out medical and legal prompts (Chinese) prepared from the project's
sample data: logits (max / mean |diff|, argmax agreement), greedy continuations of
--steps tokens (identical prompts out of all), token ids of the prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chinese_prompts(params_file: Path, per_source: int) -> list[list[dict[str, str]]]:
    import yaml

    from tunelab.config import SECTIONS
    from tunelab.data.common import prompt_of, split_records
    from tunelab.data.legal import prepare_legal
    from tunelab.data.medical import prepare_medical

    prep = yaml.safe_load(params_file.read_text(encoding="utf-8"))["prepare"]
    prep["medical"]["source"] = str(ROOT / "data/raw/medical")
    prep["legal"]["exam_source"] = str(ROOT / "data/raw/legal/judicial_exam.json")
    prep["legal"]["counsel_source"] = str(ROOT / "data/raw/legal/counsel_with_articles.json")
    out = []
    for name, prepare in (("medical", prepare_medical), ("legal", prepare_legal)):
        params = SECTIONS[f"prepare.{name}"].model_validate(prep[name])
        _, val = split_records(prepare(params)[0], params.split)
        out += [prompt_of(r) for r in val[:per_source]]
    return out


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".", help="folder with adapters/, models/, data/")
    ap.add_argument("--scenario", default="alpaca")
    ap.add_argument("--quants", default="f32,f16,bf16,q8_0,q5_1,q5_0,q4_1,q4_0")
    ap.add_argument("--steps", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config import load_section
    from tunelab.data.common import prompt_of
    from tunelab.export import readback as rb
    from tunelab.export.gguf import export_gguf
    from tunelab.export.merge import export_adapter

    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
    params_file = Path(args.params).resolve()
    merge = load_section("export.merge", params_file)
    out_file = Path(args.out).resolve()
    os.chdir(args.project)  # the run card names base and data relative to the project
    adapter = Path("adapters") / args.scenario
    val = Path("data/prepared") / args.scenario / "val.jsonl"
    rows = [json.loads(line) for line in val.open(encoding="utf-8")]
    own = [prompt_of(r) for r in rows]
    prompts = own + chinese_prompts(params_file, 4)
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = [
        tok(
            tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for m in prompts
    ]
    torch.set_num_threads(2)
    results: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "scenario": args.scenario,
        "prompts": {"scenario_held_out": len(own), "chinese_held_out": len(prompts) - len(own)},
        "greedy_steps": args.steps,
        "quants": {},
        "libraries": {
            n: metadata.version(n)
            for n in ("transformers", "gguf", "llama_cpp_python", "torch")
            if _installed(n)
        },
    }
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        export_adapter(adapter, work / "merged", merge, log=lambda _: None)
        ref = AutoModelForCausalLM.from_pretrained(work / "merged", dtype=torch.float32).eval()
        ref_logits = [rb.hf_logits(ref, x) for x in ids]
        ref_greedy = [rb.hf_greedy(ref, x, args.steps) for x in ids[: len(own)]]
        results["parameters"] = sum(p.numel() for p in ref.parameters())
        for quant in args.quants.split(","):
            start = time.perf_counter()
            card = export_gguf(
                adapter, work / quant, merge, quant, f"{args.scenario}-{quant}", log=lambda _: None
            )
            row = {
                "file_bytes": card["file_bytes"],
                "export_seconds": round(time.perf_counter() - start, 1),
                "tensor_types": card["gguf"]["tensor_types"],
            }
            path = work / quant / card["file"]
            readers = {"transformers": rb.hf_gguf_model(path)}
            if have_llama:
                readers["llama.cpp"] = rb.llama_cpp_model(path, 1024, 2)
            for name, model in readers.items():
                logits = rb.hf_logits if name == "transformers" else rb.llama_cpp_logits
                greedy = rb.hf_greedy if name == "transformers" else rb.llama_cpp_greedy
                stats = [
                    rb.compare_logits(logits(model, x), r)
                    for x, r in zip(ids, ref_logits, strict=True)
                ]
                same = sum(
                    greedy(model, x, args.steps) == g
                    for x, g in zip(ids[: len(own)], ref_greedy, strict=True)
                )
                row[name] = {
                    "max_abs_diff": round(max(s["max_abs_diff"] for s in stats), 5),
                    "mean_abs_diff": round(sum(s["mean_abs_diff"] for s in stats) / len(stats), 5),
                    "argmax_agreement": round(
                        sum(s["argmax_agreement"] for s in stats) / len(stats), 4
                    ),
                    "greedy_identical": f"{same}/{len(own)}",
                }
                if name == "llama.cpp":
                    texts = [tok.decode(x) for x in ids]
                    row[name]["same_token_ids"] = sum(
                        model.tokenize(t.encode("utf-8"), add_bos=False, special=True) == x
                        for t, x in zip(texts, ids, strict=True)
                    )
                    model.close()
            results["max_abs_logit"] = round(max(float(abs(r).max()) for r in ref_logits), 2)
            results["quants"][quant] = row
            print(quant, json.dumps(row), flush=True)
        gguf_tok = AutoTokenizer.from_pretrained(
            work / "f16", gguf_file=f"{args.scenario}-f16.gguf"
        )
        results["transformers_tokenizer_same_ids"] = sum(
            gguf_tok(tok.decode(x), add_special_tokens=False)["input_ids"] == x for x in ids
        )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
