"""Generation from a bitsandbytes 4-bit model: bf16 weights holding its NF4 values.

A 4-bit model cannot be compiled, so with ``quantized: dequantize`` it generates from
bf16 weights that hold exactly its NF4 values: evaluation dequantizes the loaded model
in place (``for_generation``), and GRPO, whose policy must stay 4-bit for training,
samples from a ``DequantizedTwin`` whose LoRA weights are copied from the policy before
every rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.generation.support import resolve_engine

if TYPE_CHECKING:
    from tunelab.config.evaluate import GenerationEngineParams


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
