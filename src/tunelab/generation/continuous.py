"""tunelab's own decode loop: slots, continuous batching, one CUDA graph per decode step.

Why a loop of our own: transformers' ``generate`` (even static-cache and compiled, the
``compiled`` engine) spends 3-5x the weight-read time per decode step outside the
matmuls (its per-step Python loop, logits processors over every row, a host sync for the
stopping check, cache bookkeeping), keeps finished rows in the batch until the longest
one ends, and its own continuous batching drops PEFT's LoRA layers; vLLM pins one torch
per release. This loop reuses the model's own modules (embedding, norms, projections
with their LoRA layers, MLP, rotary embedding, LM head), so weights, adapters and
numerics are the model's; only the glue between them is ours:

* **slots**: ``slots`` sequences decode together; each slot has its own key/value cache
  rows ``[0, max_len)`` and its own position, so rows of different lengths need no
  padding and a finished row's slot takes the next prompt (``refill``) while the others
  go on; results come back in input order whatever the schedule;
* **one decode step = one CUDA graph replay** (on a GPU with ``cuda_graph``): forward of
  every slot's last token, cache write at each slot's own position, logits processing,
  sampling, the output write and the end checks all stay on the device; the host looks
  only every ``sync_every`` steps (ended rows, stop strings, refill). The decoder layer is
  compiled once and reused for every layer (``compile_backend``; ``torch.compile`` of
  one layer function: the compile is one layer's, not the whole model's);
* **prefill**: new prompts go through the same modules with causal attention, right
  padded, at most ``prefill_tokens`` tokens a call; identical prompts in one admission
  (GRPO's ``num_generations`` copies) are computed once and their cache rows copied.

What it simplifies: decoder-only models of the Llama layout (``FAMILIES``: pre-norm
layers with ``self_attn.{q,k,v,o}_proj``, optional q/k norms, rotary positions, no
sliding window); other models fall back to the ``compiled`` engine under ``auto``.
Sampling supports temperature, top-k, top-p, min-p, repetition penalty and
min/max new tokens (the fields GRPO and the evaluate stages set); samples are drawn by
the exponential race (argmax of probabilities over Exp(1) noise: the multinomial's
distribution, graph-safe), so sampled tokens are reproducible from the seed on one
device and schedule, not equal to ``generate``'s draws. Greedy output is token-identical
to plain ``generate`` on the CPU (tests/test_generation_engine.py); on a GPU, bf16
kernels that reduce in a different order can flip near-ties.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.generation.layers import decode_layer, prefill_layer
from tunelab.generation.sampling import Sampling, choose, process
from tunelab.generation.support import causal_lm, invariant_mode, unsupported

if TYPE_CHECKING:
    import torch

    from tunelab.config.evaluate import GenerationEngineParams


@dataclass
class RunStats:
    """What one ``run`` did; the benchmark reports it."""

    rows: int = 0
    decode_steps: int = 0
    windows: int = 0
    prefill_calls: int = 0
    prefill_tokens: int = 0
    prefill_unique_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    host_seconds: float = 0.0
    capture_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        for k in ("prefill_seconds", "decode_seconds", "host_seconds", "capture_seconds"):
            out[k] = round(out[k], 3)
        if self.decode_steps:
            out["ms_per_decode_step"] = round(1000 * self.decode_seconds / self.decode_steps, 3)
        return out | self.extra


class Engine:
    """Decode state for ``slots`` sequences of at most ``max_len`` tokens on one model.

    Build one per (model, slots, max_len, sampling) and call ``run`` as often as needed:
    the cache and the captured graph are reused (GRPO calls it every step).
    """

    def __init__(
        self,
        model: Any,
        params: GenerationEngineParams,
        slots: int,
        max_len: int,
        sampling: Sampling,
    ) -> None:
        import torch

        reason = unsupported(model)
        if reason:
            raise ValueError(f"the continuous engine cannot run this model: {reason}")
        self.model = model
        self.params = params
        self.sampling = sampling
        self.slots = slots
        self.max_len = max_len
        lm = causal_lm(model)
        self.core, self.head = lm.model, lm.lm_head
        self.layers = list(self.core.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        config = lm.config
        self.kv_heads = config.num_key_value_heads
        self.heads = config.num_attention_heads
        self.qk_norm = hasattr(attn, "q_norm")
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        embed = self.core.embed_tokens.weight
        self.device, self.dtype = embed.device, embed.dtype
        self.vocab = self.head.weight.shape[0]
        dev = self.device
        shape = (slots, self.kv_heads, max_len, self.head_dim)
        self.cache = [
            (
                torch.zeros(shape, dtype=self.dtype, device=dev),
                torch.zeros(shape, dtype=self.dtype, device=dev),
            )
            for _ in self.layers
        ]
        long = {"dtype": torch.long, "device": dev}
        self.rows = torch.arange(slots, **long)
        self.tok = torch.zeros(slots, **long)
        self.pos = torch.zeros(slots, **long)
        self.count = torch.zeros(slots, **long)
        self.limit = torch.zeros(slots, **long)
        self.done = torch.ones(slots, dtype=torch.bool, device=dev)
        self.out = torch.full((slots, sampling.max_new), sampling.pad, **long)
        self.key_index = torch.arange(max_len, **long)
        self.eos = torch.tensor(sampling.eos, **long)
        self.seen = (
            torch.zeros((slots, self.vocab), dtype=torch.bool, device=dev)
            if sampling.repetition_penalty != 1.0
            else None
        )
        self.invariant = params.batch_invariant
        self.layer_fn = self._compiled(decode_layer)
        self.graph: Any = None
        self.stats = RunStats()

    # ------------------------------------------------------------------ compile, graph

    def _compiled(self, fn: Callable) -> Callable:
        import torch

        backend = self.params.compile_backend
        if backend == "eager" or self.invariant:  # inductor would bypass the kernels
            return fn
        # Our own CUDA graph captures the whole step, so inductor must not add its own.
        mode = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(
            self.params.compile_mode, self.params.compile_mode
        )
        kwargs = {"mode": mode} if backend == "inductor" else {}
        # dynamic=None: the first shape compiles static, a second one once with symbolic
        # sizes (slots, cache length), so new batch or prompt widths do not recompile
        return torch.compile(fn, backend=backend, dynamic=None, fullgraph=False, **kwargs)

    def _use_graph(self) -> bool:
        return self.device.type == "cuda" and self.params.cuda_graph

    def _capture(self) -> None:
        """Warm the compiled step up and capture it (state is reset afterwards)."""
        import torch

        t0 = time.perf_counter()
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        torch.cuda.synchronize(self.device)
        self.graph = graph
        self._reset()
        self.stats.capture_seconds += time.perf_counter() - t0

    def _reset(self) -> None:
        self.done.fill_(True)
        self.count.zero_()
        self.pos.zero_()
        self.tok.zero_()
        self.out.fill_(self.sampling.pad)

    # ------------------------------------------------------------------ one decode step

    def _step(self) -> None:
        """Every slot's next token; ended slots compute too but change nothing they own."""
        import torch

        h = self.core.embed_tokens(self.tok[:, None])
        cos, sin = self.core.rotary_emb(h, self.pos[:, None])
        valid = self.key_index[None, :] <= self.pos[:, None]
        for layer, (keys, values) in zip(self.layers, self.cache, strict=True):
            h = self.layer_fn(
                layer, h, cos, sin, keys, values, self.rows, self.pos, valid,
                self.rope, self.qk_norm, self.kv_heads, self.head_dim,
            )  # fmt: skip
        logits = self.head(self.core.norm(h)[:, 0]).float()
        nxt = choose(process(logits, self.count, self.seen, self.eos, self.sampling), self.sampling)
        active = ~self.done
        at = self.count.clamp(max=self.sampling.max_new - 1)
        self.out[self.rows, at] = torch.where(active, nxt, self.out[self.rows, at])
        if self.seen is not None:
            self.seen[self.rows, nxt] |= active
        self.count.add_(active.long())
        ended = active & ((self.count >= self.limit) | torch.isin(nxt, self.eos))
        self.done.logical_or_(ended)
        self.tok.copy_(torch.where(active, nxt, self.tok))
        self.pos.copy_((self.pos + active.long()).clamp(max=self.max_len - 1))

    # ------------------------------------------------------------------ prefill

    def _prefill(self, slots: list[int], prompts: list[torch.Tensor], limits: list[int]) -> None:
        """Write ``prompts`` (1-D token tensors) into ``slots`` and pick each first token."""
        import torch

        t0 = time.perf_counter()
        unique: dict[tuple[int, ...], int] = {}  # prompt -> its row in ``firsts``
        firsts, source = [], []
        for p in prompts:
            row = unique.setdefault(tuple(p.tolist()), len(unique))
            if row == len(firsts):
                firsts.append(p)
            source.append(row)
        lengths = torch.tensor([len(p) for p in firsts], device=self.device)
        width = int(lengths.max())
        ids = torch.full((len(firsts), width), self.sampling.pad, dtype=torch.long)
        for i, p in enumerate(firsts):
            ids[i, : len(p)] = p
        ids = ids.to(self.device)
        slot_ids = torch.tensor(slots, device=self.device)
        inverse = torch.tensor(source, device=self.device)
        h = self.core.embed_tokens(ids)
        positions = torch.arange(width, device=self.device)[None].expand(len(firsts), -1)
        cos, sin = self.core.rotary_emb(h, positions)
        for layer, (keys, values) in zip(self.layers, self.cache, strict=True):
            h = prefill_layer(
                layer, h, cos, sin, keys, values, slot_ids, inverse,
                self.rope, self.qk_norm, self.kv_heads, self.head_dim, self.invariant,
            )  # fmt: skip
        last = h[torch.arange(len(firsts), device=self.device), lengths - 1]
        logits = self.head(self.core.norm(last)).float()[inverse]
        zero = torch.zeros(len(slots), dtype=torch.long, device=self.device)
        seen = None
        if self.seen is not None:
            self.seen[slot_ids] = False
            for s, p in zip(slots, prompts, strict=True):
                self.seen[s, p.to(self.device)] = True
            seen = self.seen[slot_ids]
        first = choose(process(logits, zero, seen, self.eos, self.sampling), self.sampling)
        if self.seen is not None:
            self.seen[slot_ids, first] = True
        n = torch.tensor([len(p) for p in prompts], device=self.device)
        limit = torch.tensor(limits, device=self.device)
        self.out[slot_ids] = self.sampling.pad
        self.out[slot_ids, 0] = first
        self.tok[slot_ids] = first
        self.pos[slot_ids] = n
        self.count[slot_ids] = 1
        self.limit[slot_ids] = limit
        self.done[slot_ids] = (limit <= 1) | torch.isin(first, self.eos)
        self.stats.prefill_calls += 1
        self.stats.prefill_tokens += sum(len(p) for p in prompts)
        self.stats.prefill_unique_tokens += sum(len(p) for p in firsts)
        self._sync()
        self.stats.prefill_seconds += time.perf_counter() - t0

    def _admit(
        self, free: list[int], queue: deque, prompts: list, limits: list, owner: list
    ) -> None:
        """Fill ``free`` slots from the queue, ``prefill_tokens`` prompt tokens a call."""
        group: list[tuple[int, int]] = []
        tokens = 0
        budget = self.params.prefill_tokens
        for slot in free:
            if not queue:
                break
            row = queue[0]
            n = len(prompts[row])
            if group and tokens + n > budget:
                self._prefill_group(group, prompts, limits, owner)
                group, tokens = [], 0
            queue.popleft()
            group.append((slot, row))
            tokens += n
        if group:
            self._prefill_group(group, prompts, limits, owner)

    def _prefill_group(self, group: list, prompts: list, limits: list, owner: list) -> None:
        for slot, row in group:
            owner[slot] = row
        self._prefill(
            [s for s, _ in group], [prompts[r] for _, r in group], [limits[r] for _, r in group]
        )

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        prompts: Sequence[torch.Tensor],
        limits: Sequence[int] | None = None,
        stop: Callable[[list[int], int], int | None] | None = None,
    ) -> list[torch.Tensor]:
        """New tokens for each prompt (1-D token tensors, no padding), in input order.

        ``limits``: each row's max new tokens (default: the sampling's max_new).
        ``stop(tokens, start)``: the index (>= start, the tokens checked before) of the
        token at which a row's generated tokens first meet a stop condition (lm-eval's
        stop strings), or None; checked every ``sync_every`` steps, the row ends at that
        token. A row keeps its EOS.
        """
        import torch

        self.stats = RunStats(rows=len(prompts))
        if not prompts:
            return []
        longest = max(len(p) for p in prompts)
        if longest + self.sampling.max_new > self.max_len:
            raise ValueError(f"a {longest}-token prompt + max_new does not fit {self.max_len}")
        cap = self.sampling.max_new
        limits = [min(cap, int(x)) for x in limits] if limits is not None else [cap] * len(prompts)
        invariant = invariant_mode(self.invariant, self.device.type)
        with torch.no_grad(), invariant, unique_index_writes():
            if self._use_graph() and self.graph is None:
                self._capture()
            self._reset()
            return self._loop(list(prompts), limits, stop)

    def _loop(self, prompts: list, limits: list, stop: Callable | None) -> list:
        import torch

        queue = deque(range(len(prompts)))
        owner = [-1] * self.slots
        results: list[Any] = [None] * len(prompts)
        checked = [0] * self.slots  # tokens of each slot's row already stop-checked
        self._admit(list(range(self.slots)), queue, prompts, limits, owner)
        every = self.params.sync_every
        while True:
            t0 = time.perf_counter()
            for _ in range(every):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()
            self._sync()
            t1 = time.perf_counter()
            self.stats.decode_seconds += t1 - t0
            self.stats.decode_steps += every
            self.stats.windows += 1
            done = self.done.tolist()
            count = self.count.tolist()
            live = [s for s in range(self.slots) if owner[s] >= 0]
            if stop is not None and live:
                rows = self.out[live].tolist()
                for s, toks in zip(live, rows, strict=True):
                    end = stop(toks[: count[s]], checked[s]) if count[s] > checked[s] else None
                    checked[s] = count[s]
                    if end is not None:
                        count[s] = end + 1
                        done[s] = True
            prefilled = self.stats.prefill_seconds
            free = []
            for s in live:
                if done[s]:
                    results[owner[s]] = self.out[s, : count[s]].clone()
                    owner[s] = -1
                    checked[s] = 0
                    free.append(s)
            if free:  # mark stop-string ends on the device too
                idx = torch.tensor(free, device=self.device)
                self.done[idx] = True
            if queue and free and self.params.refill:
                self._admit(free, queue, prompts, limits, owner)
            elif queue and all(o < 0 for o in owner):  # waves: the next one in every slot
                self._admit(list(range(self.slots)), queue, prompts, limits, owner)
            # the host's own time: the looks, not the refill prefills (their own figure)
            refill = self.stats.prefill_seconds - prefilled
            self.stats.host_seconds += time.perf_counter() - t1 - refill
            if not queue and all(o < 0 for o in owner):
                # tokens from decode steps (each row's first comes from its prefill)
                made = sum(len(r) - 1 for r in results)
                self.stats.extra["slot_occupancy"] = round(
                    made / (self.stats.decode_steps * self.slots), 4
                )
                return results


@contextmanager
def unique_index_writes() -> Iterator[None]:
    """torch's deterministic algorithms off while the engine runs (captures) its steps.

    Deterministic mode (tunelab.determinism) reroutes every index write (index_put,
    index_copy, scatter) through a sort-based kernel, dozens per decode step. The
    engine's writes never repeat an index within one call with different values: one
    cache position per slot, one output column per slot, each prompt into its own slot
    (a prompt's repeated tokens all mark the same ``seen`` entry True). Such writes give
    the same bytes whatever the order, so the default kernels stay deterministic without
    the reroute; cuBLAS keeps its fixed workspace (an environment setting, untouched).
    """
    import torch

    on = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if on:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        if on:
            torch.use_deterministic_algorithms(True, warn_only=warn)


def held_engine(model: Any) -> Engine | None:
    """The engine ``model`` generated through last (its ``stats`` say what the run did)."""
    held = getattr(causal_lm(model), "_tunelab_engine", None)
    return held[1] if held else None


def engine_for(
    model: Any, params: GenerationEngineParams, slots: int, max_len: int, sampling: Sampling
) -> Engine:
    """The model's engine for these shapes and settings, built once and kept (one at a
    time) on the underlying transformers model, so the base model's engine is freed when
    the same model comes back with an adapter attached (the evaluate stages' base, then
    tuned) or a new shape arrives."""
    holder = causal_lm(model)
    key = (id(model), slots, max_len, sampling, params, bool(model.training))
    held = getattr(holder, "_tunelab_engine", None)
    if held is not None and held[0] == key:
        return held[1]
    object.__setattr__(holder, "_tunelab_engine", None)
    del held  # the old cache and graph go before the new ones are allocated
    engine = Engine(model, params, slots, max_len, sampling)
    object.__setattr__(holder, "_tunelab_engine", (key, engine))
    return engine
