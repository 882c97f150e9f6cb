"""A tiny Qwen2.5-VL (vision tower + language model) and its processor, built offline.

The smoke profile cannot download Qwen2.5-VL, so it makes a model of the same
architecture (``Qwen2_5_VLForConditionalGeneration``: the windowed ViT with 2x2
patch merging, M-RoPE, a Qwen2 language model) at about a million parameters:

1. the tokenizer of the text base (``tiny.train_tokenizer``: byte-level BPE with
   Qwen's split, so digits are single tokens) plus Qwen's vision special tokens,
   and a ChatML template whose user turns take a list of image/text parts;
2. the stock ``Qwen2_5_VLProcessor`` around it (``Qwen2VLImageProcessor`` with
   min/max pixel bounds from params, and the video processor it requires);
3. random initialisation from the seed, a short language-model pretraining on
   the corpus (``tiny.pretrain``), an alignment of the vision tower (each
   digit's image token is pushed towards that digit's token embedding), then
   an image-to-text pretraining of the language model on generated pictures
   of six digits (plain cards and dashboards from ``tunelab.samples.odometer``,
   other seeds than the scenario's data) answered with the bare digits. This
   stands in for the pretraining a real VLM already had: the base reads
   digits somewhat, answers in its own bare format, and the scenario's LoRA
   has the answer format and the reading of the scenario's images to learn.
   AdamW with warmup and cosine decay, nothing more.

What makes such a small model able to read at all, found by trying: digits
as single tokens; each digit in its own 28-pixel cell, i.e. its own merged
image token, in a 224x84 picture (24 image tokens); the question before the
image, so the answer starts at a fixed distance from the digits; M-RoPE with
most rotary pairs on the width axis (``mrope_section``) and a very small
``rope_theta`` (2.0), so that neighbouring image columns differ clearly in
rotation (with 10,000, or even 10, the image-to-text loss stays at the
guessing level, about 1.73, for hundreds of steps); and the dense alignment
phase before image-to-text training.

The output directory loads with ``AutoModelForImageTextToText`` /
``AutoProcessor`` exactly as a hub checkpoint would.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from tunelab.config.base import VisionBaseParams
from tunelab.models.chat import END_OF_TEXT, IM_END

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_TOKENS = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# ChatML as Qwen2.5-VL writes it (content: a string, or a list of image/text parts),
# with {% generation %} markers around assistant turns and no default system prompt.
VL_CHAT_TEMPLATE = (
    "{%- macro render(content) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for part in content %}"
    "{%- if part['type'] == 'image' or 'image' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- render(message['content']) + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + render(message['content']) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CARD_PROMPTS = (
    "图中的数字是什么？",
    "Read the number.",
    "请读出图片里的数字。",
    "What number is shown?",
)


def build_tokenizer(lines: list[str], vocab_size: int, min_frequency: int) -> Any:
    """The text tokenizer (tiny.train_tokenizer) plus Qwen's vision special tokens."""
    from tunelab.models.tiny import train_tokenizer

    tok = train_tokenizer(lines, vocab_size, min_frequency)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.chat_template = VL_CHAT_TEMPLATE
    return tok


def build_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    """The stock Qwen2.5-VL processor around ``tokenizer``, images bounded in pixels."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=VL_CHAT_TEMPLATE,
    )


def build_vl_model(params: VisionBaseParams, tokenizer: Any) -> Any:
    """A randomly initialised Qwen2_5_VLForConditionalGeneration; call after seeding."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    arch, vis = params.architecture, params.vision_tower
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "max_position_embeddings": arch.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": arch.rope_theta,
            "mrope_section": list(params.mrope_section),
        },
        "tie_word_embeddings": arch.tie_word_embeddings,
        "bos_token_id": None,
        "eos_token_id": ids(IM_END),
        "pad_token_id": ids(END_OF_TEXT),
    }
    vision_config = {
        "depth": vis.depth,
        "hidden_size": vis.hidden_size,
        "intermediate_size": vis.intermediate_size,
        "num_heads": vis.num_heads,
        "out_hidden_size": arch.hidden_size,
        "patch_size": vis.patch_size,
        "spatial_merge_size": vis.spatial_merge_size,
        "temporal_patch_size": vis.temporal_patch_size,
        "window_size": vis.window_size,
        "fullatt_block_indexes": list(vis.fullatt_block_indexes),
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        tie_word_embeddings=arch.tie_word_embeddings,
        dtype="float32",
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "0".."9" (Qwen's split makes every digit a token of its own)."""
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("the tokenizer does not encode each digit as one token")
    return [i[0] for i in ids]


def align_vision(model: Any, processor: Any, params: VisionBaseParams, seed: int) -> list[float]:
    """Teach the vision tower to see digits: dense, per-cell supervision; the loss per step.

    Every generated picture (a plain card or a dashboard) puts one digit in
    each of six 28-pixel cells of its middle row, i.e. in six known merged
    image tokens. Those tokens are pushed,
    through the language model's own (tied) output embedding, towards the token
    of the digit drawn there, updating only the vision tower and its merger.
    This is the cheap analogue of a VLM's alignment stage: afterwards an image
    token "looks like" the digit it shows to the language model, and the
    image-to-text stage only has to learn to read the tokens out in order.
    """
    from tqdm import tqdm

    from tunelab.samples.odometer import CELL, SLOTS

    cfg = params.vl_align
    rng = random.Random(seed)
    visual = model.model.visual
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    digit_ids = torch.tensor(digit_token_ids(processor.tokenizer), device=device)
    opt = torch.optim.AdamW(
        visual.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.warmup_steps, cfg.steps))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="align vision", mininterval=2.0)
    for _ in bar:
        texts = [f"{rng.randint(0, 999_999):0{SLOTS}d}" for _ in range(cfg.batch_size)]
        images = [digit_image(t, rng) for t in texts]
        enc = processor.image_processor(images=images, return_tensors="pt").to(device)
        grid = enc["image_grid_thw"][0]
        rows, cols = int(grid[1]) // 2, int(grid[2]) // 2
        if (rows, cols) != (3, 8):
            raise ValueError(f"expected a 3x8 token grid for {CELL}-pixel cells, got {rows}x{cols}")
        tokens = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        cells = tokens.view(cfg.batch_size, rows, cols, -1)[:, 1, 1 : 1 + SLOTS]
        target = digit_ids[torch.tensor([[int(c) for c in t] for t in texts], device=device)]
        loss = torch.nn.functional.cross_entropy(
            head(cells).reshape(-1, head.weight.shape[0]), target.reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def _schedule(warmup: int, total: int) -> Any:
    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return lr_at


def digit_image(text: str, rng: random.Random) -> Any:
    """Six digits drawn on a plain card or on a dashboard, half and half."""
    from tunelab.samples.odometer import plain_card, render_odometer

    return plain_card(text, rng) if rng.random() < 0.5 else render_odometer(int(text), rng)


def card_example(rng: random.Random) -> dict[str, Any]:
    """One generic reading example: six digits in a picture, answered with the bare digits."""
    text = f"{rng.randint(0, 999_999):06d}"
    question = {"type": "text", "text": rng.choice(CARD_PROMPTS)}
    return {
        "prompt": [{"role": "user", "content": [question, {"type": "image"}]}],
        "completion": [{"role": "assistant", "content": text}],
        "images": [digit_image(text, rng)],
    }


def pretrain_vl(model: Any, processor: Any, params: VisionBaseParams, seed: int) -> list[float]:
    """Full-parameter image-to-text pretraining on generated cards; the loss per step.

    Batches come from TRL's vision-language collator (prompt-completion, loss on
    the completion only), so the pretraining sees inputs built exactly as in SFT.
    """
    from tqdm import tqdm
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    cfg = params.vl_pretrain
    rng = random.Random(seed)
    collate = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    device = next(model.parameters()).device
    # the vision tower keeps what align_vision taught it; the language model learns to read
    language = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    opt = torch.optim.AdamW(language, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="pretrain image-to-text", mininterval=2.0)
    for _ in bar:
        batch = collate([card_example(rng) for _ in range(cfg.batch_size)]).to(device)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(language, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def build_vision_base(params: VisionBaseParams, lines: list[str]) -> tuple[Any, Any, dict]:
    """Tokenizer, processor and model, then the three pretraining phases; seeded.

    Returns (model, processor, {phase: {"first", "last", "steps"}}); the model
    is on the CPU in eval mode with a generation config for ChatML.
    """
    from transformers import GenerationConfig, set_seed

    from tunelab.models.tiny import pack_blocks, pretrain
    from tunelab.samples.odometer import PROMPTS, format_answer, random_mileage

    set_seed(params.seed)
    # The language model also reads sentences in the answer format (other
    # mileages than the scenario's): a token pretraining never sees keeps its
    # random, near-zero tied embedding, and a LoRA then spends its steps on
    # making such tokens likely instead of on reading.
    rng = random.Random(params.seed)
    vl_text = [*CARD_PROMPTS] + [
        f"{rng.choice(PROMPTS)}{format_answer(random_mileage(rng))}" for _ in range(100)
    ]
    lines = lines + vl_text
    tok = build_tokenizer(lines, params.tokenizer.vocab_size, params.tokenizer.min_frequency)
    processor = build_processor(tok, params.image.min_pixels, params.image.max_pixels)
    model = build_vl_model(params, tok)
    losses: dict[str, list[float]] = {}
    if params.pretrain.steps:
        blocks = pack_blocks(lines, tok, params.pretrain.seq_len)
        losses["text"] = pretrain(model, blocks, params, params.seed)
    if params.vl_align.steps:
        losses["align"] = align_vision(model, processor, params, params.seed + 1)
    if params.vl_pretrain.steps:
        losses["image_to_text"] = pretrain_vl(model, processor, params, params.seed + 2)
    ids = tok.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        eos_token_id=[ids(IM_END), ids(END_OF_TEXT)], pad_token_id=ids(END_OF_TEXT), do_sample=False
    )
    model.eval()

    def summary(values: list[float]) -> dict[str, float]:
        tail = values[-10:]
        return {
            "first": round(values[0], 4),
            "last": round(sum(tail) / len(tail), 4),
            "steps": len(values),
        }

    return model, processor, {k: summary(v) for k, v in losses.items()}
