"""Stage base: build the tiny base model (smoke) or record the pretrained one (gpu).

python -m stages.base text|vision
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import provenance
from tunelab.runtime import run_stage

OUT = Path("models/base")


def build_text() -> None:
    from tunelab.config import load_section
    from tunelab.io import atomic_dir, dump_json, sha256_path

    params = load_section("base.text")
    out = OUT / "text"
    if params.source == "pretrained":
        with atomic_dir(out) as tmp:
            dump_json(
                tmp / "base.json", {"name_or_path": params.pretrained, "revision": params.revision}
            )
        print(f"base text: {params.pretrained} (revision {params.revision})")
        return

    from transformers import GenerationConfig, set_seed

    from tunelab.data.text import read_corpus
    from tunelab.models.chat import END_OF_TEXT, IM_END
    from tunelab.models.tiny import build_model, pack_blocks, pretrain, train_tokenizer

    corpus = Path(params.corpus)
    lines = read_corpus(corpus)
    with provenance.Timer() as timer:
        set_seed(params.seed)
        tokenizer = train_tokenizer(
            lines, params.tokenizer.vocab_size, params.tokenizer.min_frequency
        )
        model = build_model(params, tokenizer)
        blocks = pack_blocks(lines, tokenizer, params.pretrain.seq_len)
        losses = pretrain(model, blocks, params, params.seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[
            tokenizer.convert_tokens_to_ids(IM_END),
            tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        ],
        pad_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        do_sample=False,
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        dump_json(
            tmp / "base_card.json",
            {
                "params": params.model_dump(),
                "corpus_sha256": sha256_path(corpus),
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
                "blocks": int(blocks.shape[0]),
                "pretrain_loss_first": round(losses[0], 4),
                "pretrain_loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                "wall_seconds": timer.seconds,
                "libraries": provenance.library_versions(),
                "code": provenance.code_revision(),
            },
        )
    print(
        f"base text: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"pretrain loss {losses[0]:.2f} -> {losses[-1]:.2f} in {timer.seconds:.0f}s"
    )


def build_vision() -> None:
    """base.vision: a tiny Qwen2.5-VL + processor (smoke) or a reference to a hub model (gpu)."""
    from tunelab.config import load_section
    from tunelab.io import atomic_dir, dump_json, sha256_path

    params = load_section("base.vision")
    out = OUT / "vision"
    if params.source == "pretrained":
        with atomic_dir(out) as tmp:
            dump_json(
                tmp / "base.json", {"name_or_path": params.pretrained, "revision": params.revision}
            )
        print(f"base vision: {params.pretrained} (revision {params.revision})")
        return

    from tunelab.data.text import read_corpus
    from tunelab.models.tiny_vl import build_vision_base

    corpus = Path(params.corpus)
    lines = read_corpus(corpus)
    with provenance.Timer() as timer:
        model, processor, losses = build_vision_base(params, lines)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        dump_json(
            tmp / "base_card.json",
            {
                "params": params.model_dump(),
                "corpus_sha256": sha256_path(corpus),
                "parameters": sum(p.numel() for p in model.parameters()),
                "vision_parameters": sum(p.numel() for p in model.model.visual.parameters()),
                "vocab_size": len(processor.tokenizer),
                "losses": losses,
                "wall_seconds": timer.seconds,
                "libraries": provenance.library_versions(),
                "code": provenance.code_revision(),
            },
        )
    print(
        f"base vision: {sum(p.numel() for p in model.parameters()):,} parameters; losses "
        + ", ".join(f"{k} {v['first']} -> {v['last']}" for k, v in losses.items())
        + f"; {timer.seconds:.0f}s"
    )


BUILDERS = {"text": build_text, "vision": build_vision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(BUILDERS))
    args = parser.parse_args()
    run_stage(BUILDERS[args.kind])


if __name__ == "__main__":
    main()
