"""GGUF export: a merged Qwen2 model as one .gguf file, beside an Ollama Modelfile.

    tunelab export alpaca --format gguf [--quant f16]

The adapter is merged into its bf16 base by the safetensors path
(``tunelab.export.export_adapter``, into a temporary folder), and that folder is
converted the way llama.cpp's ``convert_hf_to_gguf.py`` converts a Qwen2 model,
with the ``gguf`` package (gguf-py) doing the writing:

- tensor names from gguf-py's own table for the qwen2 architecture
  (``gguf.get_tensor_name_map``); a tensor the table does not name stops the export;
- 1-D tensors (norms, biases) stay F32; matrices take the requested type, quantized by
  ``gguf.quants.quantize``; a matrix whose rows do not divide into the type's blocks
  falls back to F16, as llama.cpp does, and the card lists it;
- hyperparameters: context length, sizes, heads, RoPE base, RMS-norm epsilon;
- the tokenizer: GPT-2 style byte-level BPE (``tokenizer.ggml.model = gpt2``), the
  vocabulary with token types, the merges, bos/eos/pad ids (``gguf.SpecialVocab``),
  pre-tokenizer ``qwen2`` (checked: the tokenizer must split text with Qwen2's regex),
  and the chat template.

The chat template written into the file is the training template without TRL's
``{% generation %}`` markers: they only mark assistant tokens for the loss, render
nothing, and are unknown to other Jinja engines (llama-cpp-python's plain Jinja2).

Simplified: text models of the Qwen2 architecture only. gguf-py quantizes to the
types listed in ``tunelab.config.GGUF_QUANTS``; the K-quants (q4_k_m, ...) need
llama.cpp's C++ ``llama-quantize`` on the f16 file. A vision-language model is
refused: llama.cpp keeps its vision tower in a second (mmproj) file. The Qwen2
tokenizer NFC-normalizes text first and llama.cpp does not, so text that NFC changes
(decomposed accents) can split differently there, as with llama.cpp's own Qwen2 files.
The packed tensors are held in memory until the file is written (the size of the file).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from tunelab.config.outputs import GGUF_QUANTS
from tunelab.errors import TunelabError

ARCH = "qwen2"
PRE_TOKENIZER = "qwen2"
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def check_quant(quant: str, where: str) -> str:
    """The quantization name, or one clear error naming ``where``."""
    if quant not in GGUF_QUANTS:
        raise TunelabError(
            where,
            f"unknown GGUF quantization {quant!r} (gguf-py writes {', '.join(GGUF_QUANTS)}; "
            "K-quants such as q4_k_m need llama.cpp's llama-quantize on the f16 file)",
        )
    return quant


def quant_types(quant: str) -> tuple[Any, Any]:
    """(GGMLQuantizationType for matrices, LlamaFileType) of a quantization name."""
    import gguf

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
        "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[quant]
    return gguf.GGMLQuantizationType[quant.upper()], ftype


def check_trained_base(adapter_dir: Path) -> None:
    """Refuse an adapter whose base is gone or differs from the one it was trained on.

    The run card records the base folder and its sha256 when training started; a
    base rebuilt or replaced since then (another architecture, other weights) would
    take the adapter's deltas silently or fail deep inside PEFT. Used by both
    export formats; an adapter without a run card has nothing to compare against.
    """
    from tunelab.io import sha256_path

    adapter_dir = Path(adapter_dir)
    card_path = adapter_dir / "run_card.json"
    if not adapter_dir.is_dir():
        raise TunelabError(str(adapter_dir), "adapter folder not found (run `dvc pull` or train)")
    if not card_path.is_file():
        return
    base = (json.loads(card_path.read_text(encoding="utf-8")).get("inputs") or {}).get("base")
    if not base or not base.get("path") or not base.get("sha256"):
        return
    path = Path(base["path"])
    if not path.exists():
        raise TunelabError(
            str(path), f"the base {adapter_dir} was trained on is missing (run `dvc pull`)"
        )
    if sha256_path(path) != base["sha256"]:
        raise TunelabError(
            str(adapter_dir),
            f"trained on another base: {path} has changed since (sha256 differs from "
            f"{card_path}); retrain the adapter or restore that base",
        )


def inference_template(template: str) -> str:
    """The chat template without TRL's ``{% generation %}`` / ``{% endgeneration %}`` tags."""
    return GENERATION_TAG.sub("", template)


def _split_regex(pre: dict[str, Any]) -> str | None:
    pattern = pre.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def check_qwen2_pretokenizer(tokenizer_json: Path) -> None:
    """Refuse a tokenizer whose pre-tokenizer is not Qwen2's (llama.cpp's ``qwen2``).

    llama.cpp does not read the split rule from the file: ``tokenizer.ggml.pre``
    names one it has built in. Qwen2's is a Split on Qwen's regex (isolated) followed
    by a byte-level mapping without its own regex, which is what tunelab's tiny
    tokenizer is trained with.
    """
    from tunelab.models.tiny import QWEN_SPLIT

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    ok = (
        kinds == ["Split", "ByteLevel"]
        and _split_regex(steps[0]) == QWEN_SPLIT
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert", False)
        and steps[1].get("use_regex") is False
        and not steps[1].get("add_prefix_space", False)
    )
    if not ok or (data.get("model") or {}).get("type") != "BPE":
        raise TunelabError(
            str(tokenizer_json),
            f"the tokenizer is not a byte-level BPE with Qwen2's pre-tokenizer (got {kinds}); "
            "llama.cpp would split text differently, so no GGUF is written",
        )


def vocabulary(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order and their GGUF token types (as llama.cpp's gpt2 vocab)."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise TunelabError(
            str(model_dir), f"tokenizer ids reach {max(vocab.values())} >= vocab_size {vocab_size}"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding has rows the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise TunelabError("config.json", f"rope_type {rope_type!r} is not exported to GGUF")
    return float(params["rope_theta"])


def write_gguf(model_dir: Path, out_file: Path, quant: str, name: str) -> dict[str, Any]:
    """Convert a merged Qwen2 folder (safetensors) into one GGUF file; return what it holds."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != ARCH:
        raise TunelabError(
            str(model_dir), f"GGUF export covers Qwen2 models, not {config.model_type!r}"
        )
    if getattr(config, "use_sliding_window", False):
        raise TunelabError(str(model_dir), "sliding-window attention is not exported to GGUF")
    check_qwen2_pretokenizer(model_dir / "tokenizer.json")
    qtype, ftype = quant_types(quant)
    arch = gguf.MODEL_ARCH.QWEN2
    layers = config.num_hidden_layers
    names = gguf.get_tensor_name_map(arch, layers)
    allowed = {
        gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[arch] for b in range(layers)
    }

    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(ftype)
    if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = vocabulary(model_dir, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise TunelabError(str(model_dir / "tokenizer.json"), "no BPE merges found")
    if isinstance(special.chat_template, str):
        special.chat_template = inference_template(special.chat_template)
    special.add_to_gguf(writer, quiet=True)

    counts: dict[str, int] = {}
    fallback: list[str] = []
    files = sorted(model_dir.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                if key == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None or gguf_name.rsplit(".", 1)[0] not in allowed:
                    raise TunelabError(
                        f"{path.name}: {key}", "no GGUF tensor name for it in the qwen2 table"
                    )
                data = fh.get_tensor(key).float().numpy()
                kind = qtype if data.ndim > 1 else gguf.GGMLQuantizationType.F32
                try:
                    packed = gguf.quants.quantize(data, kind)
                except gguf.QuantError:  # rows not a multiple of the block size
                    kind = gguf.GGMLQuantizationType.F16
                    packed = gguf.quants.quantize(data, kind)
                    fallback.append(gguf_name)
                writer.add_tensor(gguf_name, packed, raw_dtype=kind)
                counts[kind.name] = counts.get(kind.name, 0) + 1
    if not counts:
        raise TunelabError(str(model_dir), "no safetensors weights to convert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "architecture": ARCH,
        "tokenizer_pre": PRE_TOKENIZER,
        "tensor_types": dict(sorted(counts.items())),
        "f16_fallback": fallback,
        "vocab_size": len(tokens),
    }


def export_gguf(
    adapter_dir: Path,
    out_dir: Path,
    merge_params: Any,
    quant: str,
    model_name: str,
    log: Any = print,
) -> dict[str, Any]:
    """Merge ``adapter_dir``, write ``<model_name>.gguf``, a Modelfile and the export card."""
    import time
    from importlib import metadata

    from transformers import AutoConfig, AutoTokenizer

    from tunelab.export.merge import CARD, adapter_origin, export_adapter
    from tunelab.export.ollama import MODELFILE, modelfile_text, training_system_prompt
    from tunelab.io import atomic_dir, dump_json, sha256_path

    start = time.perf_counter()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_quant(quant, "quant")
    if not adapter_dir.is_dir():
        raise TunelabError(str(adapter_dir), "adapter folder not found (run `dvc pull` or train)")
    origin = adapter_origin(adapter_dir)
    base_config = AutoConfig.from_pretrained(
        origin["name_or_path"],
        revision=origin["revision"],
        trust_remote_code=origin["trust_remote_code"],
    )
    if getattr(base_config, "vision_config", None) is not None:
        raise TunelabError(
            str(adapter_dir),
            "GGUF export of a vision-language model is not supported: llama.cpp keeps the "
            "vision tower in a separate mmproj file, which one .gguf cannot hold",
        )
    system = training_system_prompt(adapter_dir)
    gguf_name = f"{model_name}.gguf"
    with atomic_dir(out_dir) as tmp:
        with tempfile.TemporaryDirectory(prefix=".merged-", dir=tmp) as work:
            merged = Path(work) / "hf"
            card = export_adapter(adapter_dir, merged, merge_params, log=log)
            tokenizer = AutoTokenizer.from_pretrained(merged)
            modelfile = modelfile_text(
                gguf_name, tokenizer, system["text"], f"{adapter_dir}: chat template"
            )
            info = write_gguf(merged, tmp / gguf_name, quant, model_name)
        (tmp / MODELFILE).write_text(modelfile, encoding="utf-8")
        card.update(
            format="gguf",
            quant=quant,
            file=gguf_name,
            file_bytes=(tmp / gguf_name).stat().st_size,
            sha256=sha256_path(tmp / gguf_name),
            gguf=info,
            modelfile={"file": MODELFILE, "system_prompt_from": system["source"]},
        )
        card["libraries"]["gguf"] = metadata.version("gguf")
        card["wall_seconds"] = round(time.perf_counter() - start, 2)  # merge + conversion
        dump_json(tmp / CARD, card)
    return card
