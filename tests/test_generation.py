"""tunelab.generation: the compiled static-cache path against plain `generate`.

The tiny Qwen2 has grouped-query attention (4 query heads, 2 key/value heads), so the
grouped decode attention is exercised for real. On the CPU the compiled step uses
TorchDynamo with the aot_eager backend (the graph capture and AOT autograd tracing
that inductor would lower); inductor's code generation and CUDA graphs need the GPU
run in bench/generation_throughput.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.generation import generate_new_tokens, resolve_engine

from .conftest import section

PROMPTS = [
    "What is the capital of France?",
    "Name a primary color.",
    "Translate 'good morning' into French, please, and explain the greeting briefly.",
    "What is 2 + 3?",
    "Give the opposite of hot.",
]


def _model_with_adapter(base: Path) -> tuple:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    lora.init_lora_weights = False
    model = get_peft_model(model, lora).eval()
    return model, tokenizer


def _encode(tokenizer, prompts: list[str]) -> dict:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _trim(row: torch.Tensor, pad: int, eos: int) -> list[int]:
    out = []
    for t in row.tolist():
        out.append(t)
        if t == eos:
            break
    while out and out[-1] == pad and pad != eos:
        out.pop()
    return out


def _greedy(tok, new_tokens: int) -> dict:
    """GenerationConfig fields for greedy decoding (sampling fields unset)."""
    return {
        "max_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }


@pytest.mark.parametrize("attention", ["grouped", "sdpa"])
def test_compiled_greedy_matches_plain_generate_with_lora(tiny_base: Path, attention: str) -> None:
    model, tok = _model_with_adapter(tiny_base)
    kwargs = _greedy(tok, 24)
    # The reference: plain generate, one batch of 2 and one of 3, dynamic cache.
    plain: list[list[int]] = []
    for chunk in (PROMPTS[:2], PROMPTS[2:]):
        enc = _encode(tok, chunk)
        with torch.no_grad():
            seqs = model.generate(**enc, **kwargs)
        plain += [
            _trim(r, tok.pad_token_id, tok.eos_token_id)
            for r in seqs[:, enc["input_ids"].shape[1] :]
        ]

    params = section(
        "evaluate.alpaca",
        generation__engine="compiled",
        generation__prompt_bucket=16,
        generation__decode_attention=attention,
        generation__compile_backend="aot_eager",
    ).generation
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    enc = _encode(tok, PROMPTS)  # all five padded together; batches of 2 (the last one filled)
    new = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], params, 2, kwargs)
    fast = [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new]

    assert len(fast) == len(PROMPTS)
    assert fast == plain
    assert any(len(r) > 3 for r in fast)  # real generations, not empty strings
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    # The adapter stays attached; the attention choice is restored after generation.
    from peft import PeftModel

    assert isinstance(model, PeftModel) and model.peft_config
    assert model.config._attn_implementation != "tunelab_grouped"


def test_grouped_attention_equals_sdpa_on_a_decode_step() -> None:
    """The grouped kernel alone, with padding and a boolean mask, against SDPA + repeat."""
    from tunelab.generation.compiled import _grouped_attention

    torch.manual_seed(1)
    batch, heads, kv, keys, dim = 3, 8, 2, 11, 16
    q = torch.randn(batch, heads, 1, dim)
    k = torch.randn(batch, kv, keys, dim)
    v = torch.randn(batch, kv, keys, dim)
    mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    mask[0, ..., :4] = False  # left padding of row 0
    mask[2, ..., -3:] = False  # unfilled static-cache slots of row 2
    out, _ = _grouped_attention(None, q, k, v, mask, scaling=dim**-0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1), attn_mask=mask
    ).transpose(1, 2)
    assert out.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # A wrong head grouping (interleaved instead of blocked) must not pass the check.
    wrong = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat(1, heads // kv, 1, 1), v.repeat(1, heads // kv, 1, 1), attn_mask=mask
    ).transpose(1, 2)
    assert not torch.allclose(out, wrong, atol=1e-3)


def test_auto_engine_is_plain_generate_on_the_cpu(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    auto = section("evaluate.alpaca").generation
    assert auto.engine == "auto"
    assert resolve_engine(auto, model) == "generate"
    forced = section("evaluate.alpaca", generation__engine="compiled").generation
    assert resolve_engine(forced, model) == "compiled"


def _plain_greedy(model, enc: dict, kwargs: dict, tok) -> list[list[int]]:
    with torch.no_grad():
        seqs = model.generate(**enc, **kwargs)
    width = enc["input_ids"].shape[1]
    return [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in seqs[:, width:]]


def skip_if_cpu_4bit_matmul_is_off(model) -> None:
    """The references here are bitsandbytes' own 4-bit forward on the CPU. On a Xeon with
    AVX512-BF16 and AMX (bitsandbytes 0.50, without the kernels-community CPU kernel) that
    forward was seen to disagree with its own ``dequantize_4bit`` by more than the outputs'
    size (3.4 against 1.6 on one q_proj), where another CPU agreed to rounding: there the
    reference itself is wrong, so the test says so instead of comparing against it."""
    import bitsandbytes as bnb

    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = layer(x)
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        want = x @ weight.float().T + (0 if layer.bias is None else layer.bias)
    off = float((got - want).abs().max())
    if off > 0.05 * float(want.abs().max()):
        pytest.skip(f"bitsandbytes' CPU 4-bit matmul is off by {off:.3g} on this CPU")


def test_4bit_policy_generates_compiled_through_its_dequantized_twin(tiny_base: Path) -> None:
    """QLoRA's case: a bitsandbytes 4-bit base (CPU kernels here) with a LoRA attached.

    The twin holds the dequantized NF4 weights and the policy's LoRA weights: compiled
    greedy output equals plain generate on the 4-bit policy, before and after the policy's
    LoRA weights move (sync copies them; without it the outputs would differ).
    """
    from peft import LoraConfig, get_peft_model

    from tunelab.generation import DequantizedTwin, for_generation, is_quantized
    from tunelab.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_base), None, False)
    tok.padding_side = "left"
    base = load_causal_lm(str(tiny_base), None, "float32", True, False)
    assert is_quantized(base)
    skip_if_cpu_4bit_matmul_is_off(base)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    lora.init_lora_weights = False
    policy = get_peft_model(base, lora).eval()
    kwargs = _greedy(tok, 16)
    params = section(
        "train.gsm8k",
        generation__engine="compiled",
        generation__prompt_bucket=16,
        generation__compile_backend="aot_eager",
    ).generation
    assert resolve_engine(params, policy) == "dequantize"
    with pytest.raises(ValueError, match="4-bit model"):
        generate_new_tokens(
            policy, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), params, 1, kwargs
        )
    enc = _encode(tok, PROMPTS[:3])
    twin = DequantizedTwin(policy)
    assert not is_quantized(twin.model) and resolve_engine(params, twin.model) == "compiled"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    outputs = []
    for _ in range(2):
        reference = _plain_greedy(policy, enc, kwargs, tok)
        twin.sync()
        new = generate_new_tokens(
            twin.model, enc["input_ids"], enc["attention_mask"], params, 2, kwargs
        )
        assert [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new] == reference
        outputs.append(reference)
        with torch.no_grad():  # the policy learns: its LoRA weights move
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.mul_(-3.0)
    assert outputs[0] != outputs[1]  # the LoRA change mattered, so sync() was tested
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1

    # Evaluation: the loaded 4-bit model dequantized in place gives the same logits.
    quantized = load_causal_lm(str(tiny_base), None, "float32", True, False)
    with torch.no_grad():
        before = quantized(**_encode(tok, PROMPTS[:2])).logits
    evaluated = for_generation(quantized, params)
    assert not is_quantized(evaluated) and resolve_engine(params, evaluated) == "compiled"
    with torch.no_grad():
        after = evaluated(**_encode(tok, PROMPTS[:2])).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    plain = section("train.gsm8k", generation__quantized="generate").generation
    assert (
        resolve_engine(plain, load_causal_lm(str(tiny_base), None, "float32", True, False))
        == "generate"
    )
