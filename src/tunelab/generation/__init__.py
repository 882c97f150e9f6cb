"""One generation path for GRPO rollouts and the text evaluation stages.

vLLM stays the first choice for GRPO where it is installed (train.gsm8k.vllm). Without
it, plain ``generate`` with a dynamic cache leaves a GPU mostly idle: every decode step
launches hundreds of small kernels from Python. Two engines run here:

* ``continuous`` (``tunelab.generation.engine``, what ``auto`` takes on a GPU for the
  Llama-layout families): tunelab's own decode loop - slots refilled as rows end, one
  CUDA graph replay per decode step; its docstring says what it simplifies;
* ``compiled`` (``auto``'s choice for other models), described here.

The compiled engine is transformers' own static-cache generation with a compiled decode
step (``torch.compile``; mode ``reduce-overhead`` replays it as a CUDA graph), plus what
makes that work on real batches:

* one compiled shape: prompts are left-padded to a multiple of ``prompt_bucket`` tokens
  and the last batch is filled up to ``batch_size`` with copies of a real row (dropped
  afterwards), so a whole evaluation or training run compiles once per bucket;
* ``decode_attention: grouped``: the single-token decode step attends with the query
  heads grouped per key/value head (one batched matmul over the cache), where
  transformers' SDPA path, given a padding mask, first copies every key/value head
  ``num_heads / num_kv_heads`` times (Qwen2.5-7B: 7x the cache traffic each step);
* a LoRA adapter stays attached (PEFT's layers compile with the model), so rollouts see
  the policy's current weights without merging and unmerging them every step;
* a bitsandbytes 4-bit model (QLoRA: the gpu profile) cannot be compiled, so with
  ``quantized: dequantize`` it generates from bf16 weights that hold exactly its NF4
  values: evaluation dequantizes the loaded model in place (transformers'
  ``dequantize()``), and GRPO, whose policy must stay 4-bit for training, samples from a
  dequantized twin (``DequantizedTwin``: ~15 GB for a 7B model) whose LoRA weights are
  copied from the policy before every rollout. ``quantized: generate`` keeps plain
  ``generate`` on the 4-bit weights (a GPU without room for the twin).

Why engines of our own rather than a library: vLLM pins one torch per release and is
absent from most machines, and transformers' continuous batching drops the LoRA layers
PEFT adds. The compiled path is transformers' own static-cache ``generate``, so every
model transformers supports works unchanged and greedy results stay those of
``generate``.

Greedy outputs are token-identical to plain ``generate`` on the CPU (tests); on a GPU,
bf16 kernels that reduce in a different order can flip near-ties (bench/NOTES.md).
Settings: the ``generation`` block of train.gsm8k and evaluate.<text scenario>.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tunelab.config import GenerationEngineParams

GROUPED = "tunelab_grouped"


def is_quantized(model: Any) -> bool:
    """True for a model (or PEFT model) whose base weights bitsandbytes quantized."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(
        type(p).__name__ in ("Params4bit", "Int8Params") for p in base.parameters(recurse=True)
    )


def resolve_engine(params: GenerationEngineParams, model: Any) -> str:
    """``continuous``, ``compiled``, ``dequantize`` or ``generate`` for this model.

    ``auto`` takes the continuous engine (tunelab.generation.engine) on an accelerator
    for the model families it supports, the compiled one for the others, plain
    ``generate`` on the CPU. A bitsandbytes-quantized model runs neither itself (its
    quantizer is not compileable): where the engine would be a fast one and
    ``params.quantized`` is ``dequantize`` the answer is ``dequantize`` (the caller
    generates from bf16 weights holding the same values, see the module docstring),
    otherwise plain ``generate``.
    """
    from tunelab.generation.engine import unsupported

    if params.engine == "generate":
        return "generate"
    device = next(model.parameters()).device
    fast = params.engine in ("compiled", "continuous") or device.type == "cuda"
    if is_quantized(model):
        # Only sections that can load 4-bit offer the choice (evaluate.gsm8k loads bf16).
        wanted = getattr(params, "quantized", None)
        return "dequantize" if fast and wanted == "dequantize" else "generate"
    if not fast:
        return "generate"
    if params.engine == "auto":
        return "compiled" if unsupported(model) else "continuous"
    return params.engine


def is_fast(engine: str) -> bool:
    """The engines this package runs itself (callers hand generation to it)."""
    return engine in ("continuous", "compiled")


def for_generation(model: Any, params: GenerationEngineParams) -> Any:
    """The model evaluation should use: dequantized in place when the engine says so.

    Call before attaching an adapter. transformers' ``dequantize()`` replaces every
    bitsandbytes layer with a plain ``Linear`` holding the dequantized NF4 weights, so
    scores and generations are those of the 4-bit model, computed in bf16 (and compiled).
    """
    if resolve_engine(params, model) != "dequantize":
        return model
    return model.dequantize()


class DequantizedTwin:
    """A bf16 copy of a 4-bit PEFT policy for sampling, kept in sync with its LoRA weights.

    Simplified: single process, one adapter (``default``) with LoRA layers only; the base
    weights are copied once (they are frozen), the LoRA weights before every rollout with
    in-place copies, so a captured CUDA graph of the twin stays valid.
    """

    def __init__(self, policy: Any, adapter: str = "default") -> None:
        import copy

        import torch
        from peft import get_peft_model
        from peft.utils.integrations import dequantize_module_weight

        base = policy.get_base_model()
        embed = base.get_input_embeddings().weight
        config = copy.deepcopy(base.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device(embed.device):
            twin = type(base)._from_config(config, dtype=embed.dtype)
        source = dict(base.named_modules())
        with torch.no_grad():
            for name, module in twin.named_modules():
                own = list(module.named_parameters(recurse=False))
                if not own:
                    continue
                other = source[name]
                other = getattr(other, "base_layer", other)  # the layer a LoRA layer wraps
                for pname, param in own:
                    value = (
                        dequantize_module_weight(other)
                        if pname == "weight"
                        else getattr(other, pname)
                    )
                    param.copy_(value.to(param.dtype))
        twin.requires_grad_(False)
        twin.generation_config = copy.deepcopy(base.generation_config)
        self.adapter = adapter
        self.policy = policy
        self.model = get_peft_model(twin, copy.deepcopy(policy.peft_config[adapter])).eval()
        self._pairs = self._lora_pairs()
        self.sync()

    def _lora_pairs(self) -> list[tuple[Any, Any]]:
        mine = dict(self.model.named_parameters())
        pairs = []
        for name, param in self.policy.named_parameters():
            if "lora_" in name and f".{self.adapter}." in name:
                pairs.append((mine[name], param))
        if not pairs:
            raise ValueError(f"the policy has no LoRA weights for adapter {self.adapter!r}")
        return pairs

    def sync(self) -> None:
        """Copy the policy's current LoRA weights into the twin (in place)."""
        import torch

        with torch.no_grad():
            for mine, theirs in self._pairs:
                mine.copy_(theirs.detach().to(mine.dtype))


def _grouped_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Decode-step attention without repeating the key/value heads; SDPA otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or dropout or heads % kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scale = scaling if scaling is not None else head_dim**-0.5
    # Head h uses key/value head h // group (as repeat_kv lays them out).
    q = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # batch, kv, group, keys
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # batch, kv, group, head_dim
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def _register_grouped() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GROUPED, _grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, sdpa_mask)


@contextmanager
def _attention(model: Any, name: str) -> Iterator[None]:
    """Use attention ``name`` inside the block; the previous choice comes back after it."""
    if name == "sdpa":
        yield
        return
    _register_grouped()
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    configs = list({id(c): c for c in configs if hasattr(c, "_attn_implementation")}.values())
    before = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = GROUPED
    try:
        yield
    finally:
        for config, old in zip(configs, before, strict=True):
            config._attn_implementation = old


def _left_pad(ids: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> tuple:
    import torch

    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, mask
    pad_ids = torch.full((ids.shape[0], extra), pad_id, dtype=ids.dtype, device=ids.device)
    pad_mask = torch.zeros((mask.shape[0], extra), dtype=mask.dtype, device=mask.device)
    return torch.cat([pad_ids, ids], 1), torch.cat([pad_mask, mask], 1)


class _RowLimits:
    """transformers stopping criterion: row i ends after ``limits[i]`` new tokens."""

    def __init__(self, width: int, limits: list[int]) -> None:
        self.width, self.limits = width, limits
        self._tensor: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if self._tensor is None:
            self._tensor = torch.tensor(self.limits, device=input_ids.device)
        return (input_ids.shape[1] - self.width) >= self._tensor


def generate_new_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenerationEngineParams,
    batch_size: int,
    generation_kwargs: dict[str, Any],
    stopping: Callable[[int, int], Any] | None = None,
    stop: Callable[[list[int], int], int | None] | None = None,
    limits: list[int] | None = None,
) -> list[torch.Tensor]:
    """Generate for left-padded prompts; returns each row's new tokens (EOS kept).

    ``generation_kwargs`` are GenerationConfig fields (max_new_tokens, sampling, pad and
    EOS ids, ...). Rows come back in input order. ``batch_size``: rows decoded together
    (the continuous engine's slots). Stop strings: ``stopping(prompt_width, rows)``
    builds transformers stopping criteria for a batch (the compiled and plain paths),
    ``stop`` is the same check for the continuous engine (engine.stop_strings).
    ``limits``: per-row max new tokens (a stopping criterion on the other paths, which
    keep decoding a batch until its longest row ends). The continuous engine's
    rows end at their EOS (or stop); the other paths pad them with pad_token_id as
    ``generate`` does.
    """
    import torch
    from transformers import CompileConfig, GenerationConfig

    engine = resolve_engine(params, model)
    if engine == "dequantize":
        raise ValueError("a 4-bit model: generate from for_generation() or a DequantizedTwin")
    if engine == "continuous":
        from tunelab.generation.engine import Sampling, engine_for

        try:
            sampling = Sampling.from_kwargs(model, generation_kwargs)
        except ValueError as err:
            if params.engine != "auto":
                raise
            print(f"generation: {err}; the compiled engine takes this call")
            engine = "compiled"
        else:
            # on the host: the engine reads the tokens there (deduplication, padding)
            pairs = zip(input_ids.cpu(), attention_mask.cpu().bool(), strict=True)
            prompts = [ids[m] for ids, m in pairs]
            longest = max(len(p) for p in prompts)
            bucket = params.prompt_bucket
            max_len = -(-longest // bucket) * bucket + sampling.max_new
            slots = min(batch_size, len(prompts))
            return engine_for(model, params, slots, max_len, sampling).run(prompts, limits, stop)
    pad_id = generation_kwargs["pad_token_id"]
    kwargs = {k: v for k, v in generation_kwargs.items() if k != "cache_implementation"}
    if engine == "compiled":
        compile_config = CompileConfig(
            fullgraph=False,
            dynamic=False,
            backend=params.compile_backend,
            mode=params.compile_mode,
        )
        # transformers compiles only on accelerators unless told otherwise (CPU tests).
        compile_config._compile_all_devices = True
        config = GenerationConfig(
            **kwargs,
            cache_implementation="static",
            compile_config=compile_config,
            disable_compile=False,
        )
    else:
        config = GenerationConfig(**kwargs, disable_compile=True)

    rows = input_ids.shape[0]
    out: list[torch.Tensor] = []
    with (
        torch.no_grad(),
        _attention(model, params.decode_attention if engine == "compiled" else "sdpa"),
    ):
        for start in range(0, rows, batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            real = ids.shape[0]
            keep = int(mask.sum(1).max())  # drop the left padding the whole batch shares
            ids, mask = ids[:, -keep:], mask[:, -keep:]
            if engine == "compiled":  # pad to the bucket and fill the batch: one shape
                bucket = params.prompt_bucket
                ids, mask = _left_pad(ids, mask, -(-keep // bucket) * bucket, pad_id)
                if real < batch_size:  # fill the batch with copies of its first row
                    fill = batch_size - real
                    ids = torch.cat([ids, ids[:1].expand(fill, -1)])
                    mask = torch.cat([mask, mask[:1].expand(fill, -1)])
            width = ids.shape[1]
            criteria = list(stopping(width, ids.shape[0])) if stopping else []
            if limits is not None:  # the filled rows take the first row's limit
                mine = limits[start : start + real]
                criteria.append(_RowLimits(width, mine + mine[:1] * (ids.shape[0] - real)))
            extra = {"stopping_criteria": criteria} if criteria else {}
            seqs = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, **extra
            )
            out += list(seqs[:real, width:])
    return out
