"""Vision-language evaluation: reading a mileage off a picture, base versus tuned.

Both models see the same processor (the adapter's, i.e. the image bounds used
in training), the same prompts and images, the same seed and decoding. Scores:

- ``exact_match``: the extracted reading equals the reference reading, digits
  normalised (separators, spaces and units dropped, leading zeros ignored);
- ``cer``: character error rate of the extracted digits against the reference
  digits (jiwer's Levenshtein-based CER over the whole set; an empty reading
  counts every reference digit as deleted);
- ``format_compliance``: the whole output matches ``answer_pattern`` (e.g.
  ``里程数：12,345 公里``).

Extraction: the pattern's group when the output complies, else the longest
run of digits with thousands separators in the output (the usual fallback for
free-form answers); simplified: one reading per answer.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.config.evaluate import DecodingParams

_NUMBER = re.compile(r"\d[\d,，.\s]*\d|\d")


def normalise_digits(text: str) -> str:
    """Only the digits, without leading zeros ("012,345" -> "12345"; "000" -> "0")."""
    digits = re.sub(r"\D", "", text)
    return digits.lstrip("0") or ("0" if digits else "")


def extract_reading(output: str, pattern: str) -> str:
    """The mileage an answer states, as normalised digits ('' when none)."""
    match = re.fullmatch(pattern, output.strip())
    if match:
        return normalise_digits(match.group(1))
    runs = _NUMBER.findall(output)
    if not runs:
        return ""
    return normalise_digits(max(runs, key=lambda r: len(normalise_digits(r))))


def reading_scores(outputs: list[str], references: list[str], pattern: str) -> dict[str, float]:
    """exact_match (%), cer (0..1+, lower is better), format_compliance (%)."""
    import jiwer

    refs = [extract_reading(r, pattern) for r in references]
    if not all(refs):
        bad = next(r for r, d in zip(references, refs, strict=True) if not d)
        raise ValueError(f"a reference holds no reading: {bad!r}")
    preds = [extract_reading(o, pattern) for o in outputs]
    hits = sum(p == r for p, r in zip(preds, refs, strict=True))
    comply = sum(bool(re.fullmatch(pattern, o.strip())) for o in outputs)
    # jiwer.cer(reference, hypothesis): corpus-level (total edits / total reference chars)
    cer = jiwer.cer(refs, preds)
    n = len(outputs)
    return {
        "exact_match": round(100 * hits / n, 2),
        "cer": round(float(cer), 4),
        "format_compliance": round(100 * comply / n, 2),
    }


def generate_vl(
    model: Any,
    processor: Any,
    prompts: list[list[dict]],
    images: list[list[Any]],
    decoding: DecodingParams,
    batch_size: int,
) -> list[str]:
    """Batched generation from (messages, images) with left padding; the decoded answers."""
    import torch

    processor.tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": decoding.do_sample,
        "repetition_penalty": decoding.repetition_penalty,
        "pad_token_id": processor.tokenizer.pad_token_id,
    }
    if decoding.do_sample:
        kwargs |= {"temperature": decoding.temperature, "top_p": decoding.top_p}
    else:
        kwargs |= {"temperature": None, "top_p": None, "top_k": None}
    print("generation engine: generate (vision-language: transformers' own)", flush=True)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch_images = images[start : start + batch_size]
        enc = processor(text=texts, images=batch_images, return_tensors="pt", padding=True).to(
            device
        )
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        outputs += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return outputs


def evaluate_vl(
    params: Any, base_dir: Any, adapter_dir: Any, data_dir: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Base then tuned on the held-out records; (metrics, one row per record)."""
    from pathlib import Path

    from PIL import Image
    from transformers import set_seed

    from tunelab import provenance
    from tunelab.data.common import text_of
    from tunelab.io import read_jsonl
    from tunelab.models.loading import load_adapter, resolve_base
    from tunelab.training.vl import load_processor, load_vl_model

    data_dir, adapter_dir = Path(data_dir), Path(adapter_dir)
    records = read_jsonl(data_dir / "val.jsonl")[: params.max_samples]
    name_or_path, revision = resolve_base(Path(base_dir))
    # the processor saved with the adapter: the image bounds used in training
    processor = load_processor(str(adapter_dir), None, params.model.trust_remote_code)
    model = load_vl_model(name_or_path, revision, params.model)
    model.eval()
    prompts = [
        [{"role": m["role"], "content": m["content"]} for m in r["messages"][:-1]] for r in records
    ]
    images = []
    for r in records:
        with Image.open(data_dir / r["images"][0]) as img:
            images.append([img.convert("RGB")])
    refs = [text_of(r["messages"][-1]["content"]) for r in records]
    results, outputs, seconds = {}, {}, {}
    for name in ("base", "tuned"):
        if name == "tuned":
            model = load_adapter(model, adapter_dir)
            model.eval()
        set_seed(params.seed)
        with provenance.Timer() as timer:
            outputs[name] = generate_vl(
                model, processor, prompts, images, params.decoding, params.batch_size
            )
        seconds[name] = timer.seconds
        results[name] = reading_scores(outputs[name], refs, params.answer_pattern)
    metrics = {
        **results,
        "samples": len(records),
        "delta": {k: round(results["tuned"][k] - results["base"][k], 4) for k in results["base"]},
    }
    rows = [
        {
            "image": r["images"][0],
            "prompt": text_of(r["messages"][-2]["content"]),
            "reference": ref,
            "base": b,
            "tuned": t,
            "reading": extract_reading(ref, params.answer_pattern),
            "base_reading": extract_reading(b, params.answer_pattern),
            "tuned_reading": extract_reading(t, params.answer_pattern),
        }
        for r, ref, b, t in zip(records, refs, outputs["base"], outputs["tuned"], strict=True)
    ]
    return metrics, rows
