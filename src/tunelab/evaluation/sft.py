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
from typing import Any

from tunelab.config import DecodingParams, GenerationEngineParams

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


def heldout_loss(
    model: Any, tokenizer: Any, conversations: list[list[dict]], batch_size: int
) -> dict[str, float]:
    """Token-weighted mean NLL over assistant tokens, and its perplexity."""
    import torch

    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        enc = [
            tokenizer.apply_chat_template(
                conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            for conv in batch
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
