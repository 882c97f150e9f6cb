"""Batch-invariant generation (generation.batch_invariant): the Triton kernels against torch,
a row's result independent of the rows beside it, and the continuous engine's greedy rows
the same for every slot count and schedule.

The kernels are Triton's; on the CPU they run in Triton's interpreter (TRITON_INTERPRET=1,
set before Triton compiles them, hence a subprocess), the same kernel code the GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunelab.errors import TunelabError

from .conftest import ROOT, section

pytestmark = pytest.mark.slow  # Triton's interpreter: a minute

KERNELS = r"""
import json, warnings
import torch
warnings.filterwarnings("ignore")
from tunelab.generation import invariant as inv

torch.manual_seed(0)
out = {}
W, b = torch.randn(96, 80), torch.randn(96)
x = torch.randn(37, 80)
out["mm_close"] = torch.allclose(inv.mm(x, W.t()), x @ W.t(), atol=1e-4)
out["addmm_close"] = torch.allclose(inv.addmm(b, x, W.t()), torch.addmm(b, x, W.t()), atol=1e-4)
rows = inv.mm(x, W.t())
out["mm_row_alone"] = all(torch.equal(rows[i : i + 1], inv.mm(x[i : i + 1], W.t())) for i in (0, 5, 36))
out["mm_row_in_other_batch"] = torch.equal(rows[:7], inv.mm(torch.cat([x[:7], torch.randn(50, 80)]), W.t())[:7])
# a longer K whose tail is exact zeros (masked keys) gives the same sums
p = torch.rand(4, 300); v = torch.randn(300, 64)
pad = torch.cat([p, torch.zeros(4, 212)], 1); vpad = torch.cat([v, torch.randn(212, 64)])
out["mm_zero_tail"] = torch.equal(inv.mm(p, v), inv.mm(pad, vpad))
A, B = torch.randn(6, 5, 32), torch.randn(6, 32, 9)
out["bmm_close"] = torch.allclose(inv.bmm(A, B), torch.bmm(A, B), atol=1e-4)
out["bmm_item_alone"] = torch.equal(inv.bmm(A, B)[2:3], inv.bmm(A[2:3], B[2:3]))
h = torch.randn(9, 3000)
out["mean_close"] = torch.allclose(inv.mean(h, [-1], True), h.mean(-1, keepdim=True), atol=1e-6)
out["mean_row_alone"] = torch.equal(inv.mean(h, [-1], True)[3], inv.mean(h[3:4], [-1], True)[0])
s = torch.randn(3, 2500)
out["softmax_close"] = torch.allclose(inv.softmax(s, -1, False), torch.softmax(s, -1), atol=1e-6)
short = torch.randn(1, 700)
masked = torch.cat([short, torch.full((1, 900), torch.finfo(torch.float32).min)], 1)
out["softmax_masked_tail"] = torch.equal(inv.softmax(short, -1, False), inv.softmax(masked, -1, False)[:, :700])
before = dict(inv.CALLS)
with inv.batch_invariant("cpu"):
    y = torch.nn.functional.linear(x, W, b)
    z = torch.softmax(s, -1)
    m = h.mean(-1, keepdim=True)
out["override_used"] = {k: inv.CALLS[k] - before.get(k, 0) for k in ("addmm", "_softmax", "mean.dim")}
out["override_close"] = torch.allclose(y, torch.addmm(b, x, W.t()), atol=1e-4)
n = inv.CALLS.get("mm", 0)
torch.mm(x, W.t())
out["override_off_after"] = inv.CALLS.get("mm", 0) == n
print(json.dumps(out))
"""

ENGINE = r"""
import json, sys, warnings
import torch
warnings.filterwarnings("ignore")
from transformers import AutoModelForCausalLM
from tunelab.generation import generate_new_tokens
from tunelab.generation import invariant as inv
from tunelab.config import load_section

model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
from pathlib import Path
gen = load_section("evaluate.alpaca", Path(sys.argv[2])).generation.model_copy(
    update={"engine": "continuous", "batch_invariant": True, "compile_backend": "eager",
            "prefill_tokens": 64, "sync_every": 2})
torch.manual_seed(0)
lengths = [5, 17, 9, 30, 12, 3, 22]
prompts = [torch.randint(10, model.config.vocab_size, (n,)) for n in lengths]
width = max(lengths)
ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
mask = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), torch.ones(len(p), dtype=torch.long)]) for p in prompts])
kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
runs = {}
calls = dict(inv.CALLS)
for slots in (2, 7):
    for refill in (True, False):
        p = gen.model_copy(update={"refill": refill})
        rows = generate_new_tokens(model, ids, mask, p, slots, kw)
        runs[f"{slots}-{refill}"] = [r.tolist() for r in rows]
plain = generate_new_tokens(model, ids, mask, gen.model_copy(update={"engine": "generate", "batch_invariant": False}), 7, kw)
print(json.dumps({"runs": runs, "plain": [r.tolist() for r in plain],
                  "mm_calls": inv.CALLS.get("mm", 0) + inv.CALLS.get("addmm", 0) - calls.get("mm", 0) - calls.get("addmm", 0)}))
"""


def _interpreted(code: str, *args: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernels_match_torch_and_a_row_ignores_its_neighbours() -> None:
    got = _interpreted(KERNELS)
    used = got.pop("override_used")
    assert all(v is True for v in got.values()), got
    assert used == {"addmm": 1, "_softmax": 1, "mean.dim": 1}


def test_greedy_rows_are_the_same_for_every_slot_count_and_schedule(tiny_base) -> None:
    got = _interpreted(ENGINE, str(tiny_base), str(ROOT / "params.yaml"))
    runs = list(got["runs"].values())
    assert all(r == runs[0] for r in runs), got["runs"]
    assert got["mm_calls"] > 0  # the engine's matmuls went through the kernels
    # the same tokens as plain generate (CPU, float32: far from any near-tie here)
    assert runs[0] == got["plain"]


def test_the_compiled_engine_refuses_batch_invariance_in_one_line() -> None:
    with pytest.raises(Exception) as err:
        section("evaluate.alpaca", generation__engine="compiled", generation__batch_invariant=True)
    assert "batch_invariant" in str(err.value) and "compiled" in str(err.value)


def test_batch_invariance_on_the_cpu_without_the_interpreter_is_refused() -> None:
    from tunelab.generation.invariant import batch_invariant

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    with (
        pytest.raises(TunelabError, match=r"^generation.batch_invariant: .*CUDA GPU"),
        batch_invariant("cpu"),
    ):
        pass
