"""Read an exported .gguf back with readers that are not its writer, and compare.

Two independent readers: transformers' GGUF loader (``from_pretrained(...,
gguf_file=...)``: its own dequantizer, tensor-name map and tokenizer converter, then
PyTorch's forward pass) and llama.cpp through llama-cpp-python (its own loader,
tokenizer and CPU kernels). Both are compared with the merged safetensors model of the
same adapter on the same token ids: logits (max and mean absolute difference, argmax
agreement) and greedy continuations of a fixed length (end-of-turn tokens do not stop
them, so every position is compared). Used by tests/test_gguf_export.py and
bench/gguf_agreement.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hf_gguf_model(path: Path) -> Any:
    """The .gguf loaded by transformers (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def hf_logits(model: Any, ids: list[int]) -> Any:
    """Float32 logits [len(ids), vocab] as a numpy array."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model: Any, ids: list[int], steps: int) -> list[int]:
    import torch

    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,  # compare every position, past an end-of-turn token too
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


def llama_cpp_model(path: Path, n_ctx: int, threads: int) -> Any:
    """The .gguf loaded by llama.cpp (llama-cpp-python), logits kept for every position.

    Without llama.cpp's extra CPU buffer types (``use_extra_bufts``: weight repacking and
    the AMX kernels): on a CPU with AMX, the AMX path of llama.cpp as built by
    llama-cpp-python 0.3.36 segfaulted in ``decode`` on the tiny test model (a 2-core
    Xeon with AMX-INT8; a CPU without AMX ran it). The read-back checks the file's
    tensors, and the plain CPU kernels read the same tensors. ``Llama`` does not take the
    flag, so its default model params are swapped for the call.
    """
    import llama_cpp.llama as api
    from llama_cpp import Llama

    default = api.llama_cpp.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    api.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            logits_all=True,
            verbose=False,
            seed=0,
        )
    finally:
        api.llama_cpp.llama_model_default_params = default


def llama_cpp_detokenize(llm: Any, ids: list[int]) -> str:
    """llama.cpp's own ``llama_detokenize`` (special tokens rendered).

    Not ``Llama.detokenize``: llama-cpp-python 0.3.36 converts token by token into a
    32-byte buffer and cuts a longer piece (a tiny BPE merges whole Chinese phrases).
    """
    import ctypes

    import llama_cpp

    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 + 32 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(llm._model.vocab, tokens, len(ids), buf, size, False, True)
    if n < 0:
        raise ValueError(f"llama_detokenize needs {-n} bytes")
    return buf.raw[:n].decode("utf-8")


def llama_cpp_logits(llm: Any, ids: list[int]) -> Any:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_cpp_greedy(llm: Any, ids: list[int], steps: int) -> list[int]:
    """llama.cpp's own sampler at temperature 0 (greedy), ``steps`` tokens."""
    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == steps:
            break
    return out


def compare_logits(got: Any, want: Any) -> dict[str, float]:
    diff = abs(got - want)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
        "max_abs_logit": float(abs(want).max()),
    }
