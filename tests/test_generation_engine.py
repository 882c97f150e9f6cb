"""tunelab.generation.continuous (the continuous engine) against plain `generate` on the CPU.

The tiny Qwen2 has grouped-query attention (4 query heads, 2 key/value heads) and a LoRA
with random A and B on q/v/down, so the adapter changes the outputs. The CUDA graph and
inductor need a GPU (bench/generation_throughput.py); here the decode layer runs eagerly
or through TorchDynamo with the aot_eager backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.generation import generate_new_tokens, resolve_engine
from tunelab.generation.continuous import held_engine
from tunelab.generation.sampling import Sampling, process
from tunelab.generation.stops import stop_strings

from .conftest import section
from .test_generation import PROMPTS, _encode, _greedy, _model_with_adapter, _trim


def _params(**over):
    update = {
        "generation__engine": "continuous",
        "generation__compile_backend": "eager",
        "generation__prompt_bucket": 16,
        "generation__sync_every": 4,
    }
    update |= {f"generation__{k}": v for k, v in over.items()}
    return section("evaluate.alpaca", **update).generation


def _plain(model, tok, prompts, kwargs) -> list[list[int]]:
    out = []
    for p in prompts:  # one at a time: no padding in the reference at all
        enc = _encode(tok, [p])
        with torch.no_grad():
            seqs = model.generate(**enc, **kwargs)
        out.append(_trim(seqs[0, enc["input_ids"].shape[1] :], tok.pad_token_id, tok.eos_token_id))
    return out


@pytest.fixture(scope="module")
def lora_model(tiny_base: Path):
    return _model_with_adapter(tiny_base)


@pytest.mark.parametrize("refill", [True, False])
def test_greedy_matches_plain_generate_with_lora(lora_model, refill: bool) -> None:
    model, tok = lora_model
    kwargs = _greedy(tok, 24)
    plain = _plain(model, tok, PROMPTS, kwargs)
    enc = _encode(tok, PROMPTS)
    params = _params(refill=refill)
    assert resolve_engine(params, model) == "continuous"
    # 2 slots for 5 prompts: slots are refilled (or waves of 2 wait for each other)
    new = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], params, 2, kwargs)
    fast = [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new]
    assert fast == plain
    assert any(len(r) > 3 for r in fast)
    stats = held_engine(model).stats
    assert stats.rows == 5
    if refill:
        assert stats.prefill_calls >= 3
    else:  # waves of 2, 2 and 1 rows, each wave in every slot, also when the rows of a
        # wave end in different host looks
        assert stats.prefill_calls == 3
        ragged = [2, 20, 3, 22, 5]
        rows = generate_new_tokens(
            model, enc["input_ids"], enc["attention_mask"], params, 2, kwargs, limits=ragged
        )
        assert held_engine(model).stats.prefill_calls == 3
        assert [r.tolist() for r in rows] == [
            r[: len(x)].tolist() for r, x in zip(new, rows, strict=True)
        ]
    # the adapter is still attached and active
    from peft import PeftModel

    assert isinstance(model, PeftModel) and model.peft_config


def test_repetition_penalty_and_min_new_tokens_match_generate(lora_model) -> None:
    model, tok = lora_model
    kwargs = _greedy(tok, 20) | {"repetition_penalty": 1.4, "min_new_tokens": 12}
    plain = _plain(model, tok, PROMPTS[:3], kwargs)
    without = _plain(model, tok, PROMPTS[:3], _greedy(tok, 20))
    assert plain != without  # the settings matter for these prompts
    enc = _encode(tok, PROMPTS[:3])
    new = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], _params(), 3, kwargs)
    assert [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new] == plain
    assert all(len(r) >= 12 for r in new)


def test_decode_layer_compiles_once_for_every_layer(lora_model) -> None:
    """Regional compilation: one traced layer serves all four (no recompile per layer)."""
    model, tok = lora_model
    kwargs = _greedy(tok, 12)
    plain = _plain(model, tok, PROMPTS[:2], kwargs)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    enc = _encode(tok, PROMPTS[:2])
    params = _params(compile_backend="aot_eager")
    new = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], params, 2, kwargs)
    assert [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new] == plain
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= graphs < len(model.get_base_model().model.layers)


def test_identical_prompts_share_one_prefill(lora_model) -> None:
    """GRPO's case: num_generations copies of each prompt are prefilled once."""
    model, tok = lora_model
    kwargs = _greedy(tok, 10)
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    enc = _encode(tok, prompts)
    new = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], _params(), 6, kwargs)
    stats = held_engine(model).stats
    assert stats.prefill_unique_tokens * 3 == stats.prefill_tokens
    rows = [_trim(r, tok.pad_token_id, tok.eos_token_id) for r in new]
    assert (
        rows
        == _plain(model, tok, PROMPTS[:1], kwargs) * 3
        + _plain(model, tok, PROMPTS[1:2], kwargs) * 3
    )


def test_sampling_is_reproducible_and_per_row_limits_hold(lora_model) -> None:
    model, tok = lora_model
    kwargs = {
        "max_new_tokens": 16,
        "min_new_tokens": 16,
        "do_sample": True,
        "temperature": 1.3,
        "top_k": 40,
        "top_p": 0.95,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    enc = _encode(tok, PROMPTS)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        new = generate_new_tokens(
            model, enc["input_ids"], enc["attention_mask"], _params(), 3, kwargs
        )
        runs.append([r.tolist() for r in new])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(len(r) == 16 for r in runs[0])
    limits = [3, 16, 7, 1, 11]
    new = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], _params(), 2, kwargs, limits=limits
    )
    assert [len(r) for r in new] == limits
    # top_k=1 sampling is greedy
    greedy = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], _params(), 5, _greedy(tok, 16)
    )
    one = generate_new_tokens(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        _params(),
        5,
        kwargs | {"top_k": 1, "min_new_tokens": 0},
    )
    assert [r.tolist() for r in one] == [r.tolist() for r in greedy]


def test_processors_equal_transformers_warpers() -> None:
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(3)
    rows, vocab, prompt = 4, 50, 6
    logits = torch.randn(rows, vocab) * 3
    ids = torch.randint(vocab, (rows, prompt + 2))
    count = torch.tensor([0, 1, 2, 5])
    seen = torch.zeros(rows, vocab, dtype=torch.bool)
    seen[torch.arange(rows)[:, None], ids] = True
    eos = torch.tensor([7, 9])
    s = Sampling(16, 3, False, 0.8, 12, 0.9, 0.05, 1.3, (7, 9), 0)
    got = process(logits, count, seen, eos, s)
    want = logits.clone()
    want = RepetitionPenaltyLogitsProcessor(1.3)(ids, want)
    for r in range(rows):  # min new tokens counts per row (the prompt width differs)
        proc = MinNewTokensLengthLogitsProcessor(prompt, 3, [7, 9])
        want[r : r + 1] = proc(
            torch.zeros(1, prompt + int(count[r]), dtype=torch.long), want[r : r + 1]
        )
    for warp in (
        TemperatureLogitsWarper(0.8),
        TopKLogitsWarper(12),
        TopPLogitsWarper(0.9),
        MinPLogitsWarper(0.05),
    ):
        want = warp(ids, want)
    kept = want > torch.finfo(want.dtype).min
    assert torch.equal(got > torch.finfo(got.dtype).min, kept)
    assert 0 < int(kept.sum()) < rows * 12
    torch.testing.assert_close(got[kept], want[kept])


def test_stop_strings_end_rows_where_lm_eval_would(lora_model) -> None:
    """lm-eval's stop check: a row ends at the token that completes a stop string."""
    from lm_eval.models.utils_hf import stop_sequences_criteria

    model, tok = lora_model
    kwargs = _greedy(tok, 24)
    enc = _encode(tok, PROMPTS)
    free = generate_new_tokens(model, enc["input_ids"], enc["attention_mask"], _params(), 5, kwargs)
    # a stop string that occurs in the middle of some rows' free-running text
    texts = [tok.decode(r) for r in free]
    stop = next(t[len(t) // 2 : len(t) // 2 + 2] for t in texts if len(t) > 10)
    stop = stop if stop.strip() else texts[0][3:5]
    width = enc["input_ids"].shape[1]
    with torch.no_grad():  # lm-eval's own path: generate with its criteria
        seqs = model.generate(
            **enc, **kwargs, stopping_criteria=stop_sequences_criteria(tok, [stop], width, 5)
        )
    want = [tok.decode(r).split(stop)[0] for r in seqs[:, width:]]
    new = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], _params(), 5, kwargs,
        stop=stop_strings(tok, [stop]),
    )  # fmt: skip
    got = [tok.decode(r) for r in new]
    assert [g.split(stop)[0] for g in got] == want
    ended = [g for g in got if stop in g]
    assert ended and all(g.endswith(stop) or not g.split(stop)[-1].strip() for g in ended)
    assert any(len(n) < len(f) for n, f in zip(new, free, strict=True))


def test_unsupported_models_and_settings_are_refused_by_name(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.generation.support import unsupported

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert unsupported(model) is None
    model.config.use_sliding_window, model.config.sliding_window = True, 8
    assert "sliding" in unsupported(model)
    assert resolve_engine(_params(engine="compiled"), model) == "compiled"
    with pytest.raises(ValueError, match="sliding"):
        generate_new_tokens(
            model, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), _params(), 1,
            {"max_new_tokens": 2, "pad_token_id": 0},
        )  # fmt: skip
    with pytest.raises(ValueError, match="num_beams"):
        Sampling.from_kwargs(
            AutoModelForCausalLM.from_pretrained(tiny_base), {"max_new_tokens": 2, "num_beams": 2}
        )


def test_per_row_limits_on_the_other_paths_match_the_engine(lora_model) -> None:
    """``limits`` is a stopping criterion for plain generate: the same rows, padded."""
    model, tok = lora_model
    kwargs = _greedy(tok, 12) | {"min_new_tokens": 12}
    enc = _encode(tok, PROMPTS)
    limits = [4, 12, 1, 7, 9]
    fast = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], _params(), 5, kwargs, limits=limits
    )
    plain = generate_new_tokens(
        model, enc["input_ids"], enc["attention_mask"], _params(engine="generate"), 5, kwargs,
        limits=limits,
    )  # fmt: skip
    assert [len(r) for r in fast] == limits
    assert [r[:n].tolist() for r, n in zip(plain, limits, strict=True)] == [
        r.tolist() for r in fast
    ]
    assert all(
        set(r[n:].tolist()) <= {tok.pad_token_id} for r, n in zip(plain, limits, strict=True)
    )
