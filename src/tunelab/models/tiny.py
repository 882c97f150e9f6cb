"""Tiny Qwen2 models built offline, deterministically from a seed.

The smoke profile cannot download Qwen, so it makes a model of the same
architecture (``Qwen2ForCausalLM``) at a few million parameters:

1. a byte-level BPE tokenizer trained on the project's corpus with Qwen's own
   pre-tokenizer split (so ``AutoTokenizer`` rebuilds it as ``Qwen2Tokenizer``
   and ids round-trip), ChatML special tokens and a chat template with
   generation markers;
2. random initialisation from the seed;
3. a short full-parameter pretraining on the corpus (next-token prediction on
   packed blocks) so that a later LoRA has features to adapt: LoRA on a random
   base does not learn.

The corpus has one document per line; the two characters ``\\n`` inside a line
stand for a line break (``unescape``), so that the newline token, which chat
answers use, is trained too. A token the pretraining never sees keeps its
random, near-zero embedding (tied to the output layer), and LoRA alone cannot
make it likely: sampled text would never produce it.

The output directory loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``
exactly as a hub checkpoint would.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tunelab.config.base import TextBaseParams
from tunelab.models.chat import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START

# Qwen2's pre-tokenizer split (as in Qwen2Tokenizer): digits one at a time.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]


def unescape(line: str) -> str:
    """A corpus line is one document; ``\\n`` in it stands for a line break."""
    return line.replace("\\n", "\n")


def train_tokenizer(lines: list[str], vocab_size: int, min_frequency: int) -> Any:
    """Train a byte-level BPE with Qwen's split; return a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([unescape(line) for line in lines], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def build_model(params: TextBaseParams, tokenizer: Any) -> Any:
    """A randomly initialised Qwen2ForCausalLM; call after seeding."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    arch = params.architecture
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def pack_blocks(lines: list[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """Tokenise lines, join them with end-of-text, cut into seq_len blocks."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    ids: list[int] = []
    for line in lines:
        ids.extend(tokenizer(unescape(line), add_special_tokens=False)["input_ids"])
        ids.append(eot)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def pretrain(model: Any, blocks: torch.Tensor, params: TextBaseParams, seed: int) -> list[float]:
    """Full-parameter next-token pretraining; returns the loss per step.

    A plain AdamW loop with linear warmup and cosine decay over random batches
    of packed blocks: the simplest recipe that makes the tiny base useful. It
    stands in for the pretraining a real base model already had.
    """
    from tqdm import tqdm

    cfg = params.pretrain
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="pretrain", mininterval=2.0)
    for _ in bar:
        idx = torch.randint(0, blocks.shape[0], (cfg.batch_size,), generator=gen)
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
