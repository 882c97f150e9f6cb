"""SFT evaluation: base versus tuned on the same held-out prompts and decoding.

Both models see the same tokenizer (the adapter's, i.e. the chat template used
in training), the same prompts, the same seed and the same decoding. Scores:
held-out loss / perplexity over the assistant tokens only, and generation
scores against the references: ROUGE-L on characters for CJK text and words
otherwise, sacreBLEU BLEU and chrF (character n-grams suit Chinese), and exact
match (after whitespace normalisation) where answers are exact strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config.evaluate import DecodingParams, GenerationEngineParams, SFTEvaluateParams

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]|[^\W_]+", re.UNICODE)


class MixedTokenizer:
    """ROUGE tokenizer: one token per CJK character, one per word otherwise."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(text.split())


def text_scores(
    predictions: list[str], references: list[str], bleu_tokenize: str, exact_match: bool
) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=MixedTokenizer())
    rouge = [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for pred, ref in zip(predictions, references, strict=True)
    ]
    out = {
        "rougeL": round(100 * sum(rouge) / len(rouge), 2),
        "bleu": round(
            sacrebleu.corpus_bleu(predictions, [references], tokenize=bleu_tokenize).score, 2
        ),
        "chrf": round(sacrebleu.corpus_chrf(predictions, [references]).score, 2),
    }
    if exact_match:
        hits = [normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True)]
        out["exact_match"] = round(100 * sum(hits) / len(hits), 2)
    return out


def assistant_batch(tokenizer: Any, conversations: list[list[dict]]) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 outside assistant tokens)."""
    import torch

    enc = [
        tokenizer.apply_chat_template(
            conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for conv in conversations
    ]
    width = max(len(e["input_ids"]) for e in enc)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    attn = torch.zeros((len(enc), width), dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    for i, e in enumerate(enc):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        attn[i, :n] = 1
        mask = torch.tensor(e["assistant_masks"], dtype=torch.bool)
        labels[i, :n] = torch.where(mask, ids[i, :n], torch.tensor(-100))
    return ids, attn, labels


def text_batch(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Any, Any, Any]:
    """Plain text (no chat template), truncated to max_length tokens; every token a label."""
    import torch

    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True)
    ids = torch.tensor(enc["input_ids"])
    attn = torch.tensor(enc["attention_mask"])
    return ids, attn, torch.where(attn.bool(), ids, torch.tensor(-100))


def _mean_nll(model: Any, batches: Any) -> dict[str, float]:
    """Token-weighted mean NLL over the labelled tokens of (ids, mask, labels) batches."""
    import torch

    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for ids, attn, labels in batches:
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1).to(device)
        nll = torch.nn.functional.cross_entropy(
            shift_logits, shift_labels, ignore_index=-100, reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((shift_labels != -100).sum())
    loss = total_nll / max(1, total_tokens)
    return {"val_loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50.0)), 3)}


def heldout_loss(
    model: Any, tokenizer: Any, conversations: list[list[dict]], batch_size: int
) -> dict[str, float]:
    """Token-weighted mean NLL over assistant tokens, and its perplexity."""
    batches = (
        assistant_batch(tokenizer, conversations[i : i + batch_size])
        for i in range(0, len(conversations), batch_size)
    )
    return _mean_nll(model, batches)


def text_loss(
    model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int
) -> dict[str, float]:
    """Token-weighted mean NLL of plain documents (each cut at max_length), and perplexity."""
    tokenizer.padding_side = "right"
    batches = (
        text_batch(tokenizer, texts[i : i + batch_size], max_length)
        for i in range(0, len(texts), batch_size)
    )
    return _mean_nll(model, batches)


def assistant_logps(
    model: Any, tokenizer: Any, conversations: list[list[dict]], batch_size: int
) -> list[tuple[float, int]]:
    """Per conversation: summed log-probability of its assistant tokens, and their count."""
    import torch

    out: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    for start in range(0, len(conversations), batch_size):
        ids, attn, labels = assistant_batch(tokenizer, conversations[start : start + batch_size])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        labels = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        counts = (labels != -100).sum(dim=1)
        out += [(-float(n), int(c)) for n, c in zip(nll.sum(dim=1), counts, strict=True)]
    return out


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]],
    decoding: DecodingParams,
    batch_size: int,
    engine: GenerationEngineParams,
) -> list[str]:
    """Batched generation with left padding (tunelab.generation); the decoded completions."""
    from tunelab.generation import generate_new_tokens

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": decoding.do_sample,
        "repetition_penalty": decoding.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if decoding.do_sample:
        kwargs |= {"temperature": decoding.temperature, "top_p": decoding.top_p}
    else:
        kwargs |= {"temperature": None, "top_p": None, "top_k": None}
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    new = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], engine, batch_size, kwargs
    )
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate_text(
    params: SFTEvaluateParams,
    base_dir: Path,
    adapter_dir: Path,
    records: list[dict[str, Any]],
    models: tuple[str, ...] = ("base", "tuned"),
    extra: Callable[[Any, Any], dict[str, float]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Base and/or tuned (base + adapter) on the same records, prompts, seed and decoding:
    held-out loss, generation scores, and ``extra(model, tokenizer)``'s metrics.

    Returns (metrics per model, generations per model). The tokenizer is the adapter's
    (the chat template used in training) for both models.
    """
    from transformers import set_seed

    from tunelab.data.common import prompt_of, reference_of
    from tunelab.generation import for_generation, resolve_engine
    from tunelab.models.loading import (
        check_adapter,
        load_adapter,
        load_causal_lm,
        load_tokenizer,
        resolve_base,
    )

    name_or_path, revision = resolve_base(base_dir)
    check_adapter(adapter_dir)  # before anything is loaded: a broken adapter fails fast
    tokenizer = load_tokenizer(str(adapter_dir), None, False)
    model = load_causal_lm(
        name_or_path,
        revision,
        params.model.dtype,
        params.model.load_in_4bit,
        params.model.trust_remote_code,
    )
    # A 4-bit model generates compiled from its dequantized weights (generation.quantized).
    model = for_generation(model, params.generation).eval()
    print(f"generation engine: {resolve_engine(params.generation, model)}")
    prompts = [prompt_of(r) for r in records]
    refs = [reference_of(r) for r in records]
    convs = [r["messages"] for r in records]
    results, outputs = {}, {}
    for name in ("base", "tuned"):
        if name == "tuned":
            model = load_adapter(model, adapter_dir)
            model.eval()
        if name not in models:
            continue
        set_seed(params.seed)
        outputs[name] = generate(
            model, tokenizer, prompts, params.decoding, params.batch_size, params.generation
        )
        results[name] = heldout_loss(model, tokenizer, convs, params.batch_size) | text_scores(
            outputs[name], refs, params.bleu_tokenize, params.exact_match
        )
        if extra is not None:
            results[name] |= extra(model, tokenizer)
    return results, outputs


def base_vs_tuned(
    records: list[dict[str, Any]], results: dict[str, dict], outputs: dict[str, list[str]]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The metrics file (base, tuned, delta, samples) and the side-by-side generations."""
    from tunelab.data.common import prompt_of, reference_of

    metrics = {
        **results,
        "samples": len(records),
        "delta": {k: round(results["tuned"][k] - results["base"][k], 4) for k in results["base"]},
    }
    generations = [
        {"prompt": prompt_of(r)[-1]["content"], "reference": reference_of(r), "base": b, "tuned": t}
        for r, b, t in zip(records, outputs["base"], outputs["tuned"], strict=True)
    ]
    return metrics, generations


def evaluate_sft(
    params: SFTEvaluateParams, base_dir: Path, adapter_dir: Path, data_dir: Path
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A text scenario's held-out records (the first max_samples of val.jsonl), base versus
    tuned: the metrics file and the side-by-side generations."""
    from tunelab.io import read_jsonl

    records = read_jsonl(Path(data_dir) / "val.jsonl")[: params.max_samples]
    results, outputs = evaluate_text(params, base_dir, adapter_dir, records)
    return base_vs_tuned(records, results, outputs)
