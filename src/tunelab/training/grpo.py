"""GSM8K GRPO: LoRA through TRL's GRPOTrainer, with an optional SFT warm-up first.

One LoRA adapter is trained in up to two phases:

1. warm-up (``train.gsm8k.warmup.enabled``): TRL's SFTTrainer on the prepared
   ``reference`` answers (the ``<reasoning>/<answer>`` format written from the
   worked solutions), the same recipe as tunelab.training.sft. A tiny or weak
   base model rarely produces the format by chance; without it every
   completion of a group gets the same reward and GRPO has nothing to learn
   from.
2. GRPO: TRL's GRPOTrainer samples ``num_generations`` completions per prompt
   and scores them with tunelab.training.rewards. With ``beta > 0`` TRL copies the
   adapter into a frozen "ref" adapter at the start of GRPO, so the KL term is
   measured against the warm-up policy (or the base when there is no warm-up).
   Rollouts come from ``model.generate`` or, when ``vllm.use_vllm`` is set,
   from vLLM in TRL's colocate (or server) mode; with the Unsloth backend the
   model is loaded with ``fast_inference`` and Unsloth drives vLLM itself.

Checkpoints live under .tunelab/checkpoints/train/gsm8k with the params/data
fingerprint (see tunelab.training.run): ``warmup/`` and ``grpo/`` hold the
trainers' checkpoints, ``warmup_adapter/`` the finished warm-up, so a rerun
after a crash skips a completed warm-up and resumes GRPO from its newest
checkpoint. Curves: the warm-up's dvclive run in ``<live_dir>/warmup``, GRPO's
(each reward's mean, the total reward and its spread, the KL and completion
lengths per step) in ``<live_dir>``. The memory plan (tunelab.training.memory_plan)
covers both phases' micro-batches and takes vLLM's colocated share, or the dequantized
twin, off the budget.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from tunelab.config.gsm8k import GRPOTrainParams
from tunelab.config.train import SFTTrainParams
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, read_jsonl
from tunelab.training.run import Trained, TrainingRun, trainer_args
from tunelab.training.sft import sft_config
from tunelab.training.variants import check_backend


def check_vllm(params: GRPOTrainParams, section: str) -> None:
    """Fail early, in one line, when vLLM rollouts are asked for but cannot run."""
    if not params.vllm.use_vllm:
        return
    if importlib.util.find_spec("vllm") is None:
        raise TunelabError(
            f"{section}.vllm.use_vllm",
            "vLLM rollouts requested but vllm is not installed "
            "(install it on a CUDA machine, or set use_vllm: false)",
        )
    import torch

    if not torch.cuda.is_available():
        raise TunelabError(
            f"{section}.vllm.use_vllm", "vLLM rollouts need a CUDA GPU; set use_vllm: false"
        )


def warmup_params(params: GRPOTrainParams) -> SFTTrainParams:
    """The warm-up as an SFT section, so that sft_config builds its SFTConfig.

    ``model_construct``: the values are validated already (as train.gsm8k), and
    SFT-only switches that sft_config does not read stay unset.
    """
    return SFTTrainParams.model_construct(
        seed=params.seed,
        backend=params.backend,
        model=params.model,
        lora=params.lora,
        data=params.warmup.data,
        optim=params.warmup.optim,
        logging_steps=params.warmup.logging_steps,
        save_steps=params.save_steps,
    )


def grpo_config(params: GRPOTrainParams, output_dir: Path, **overrides: Any) -> Any:
    """GRPOConfig from params (field names as in TRL 1.14/1.15)."""
    from trl import GRPOConfig

    g, o = params.grpo, params.grpo.optim
    kwargs = dict(
        output_dir=str(output_dir),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        num_iterations=g.num_iterations,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        mask_truncated_completions=g.mask_truncated_completions,
        use_vllm=params.vllm.use_vllm,
        vllm_mode=params.vllm.mode,
        vllm_gpu_memory_utilization=params.vllm.gpu_memory_utilization,
        **trainer_args(o, g.logging_steps, params.save_steps, params.seed, params.model.dtype),
    )
    kwargs.update(overrides)
    from tunelab.training.runcard import with_asked

    return with_asked(GRPOConfig(**kwargs), kwargs)


def rollout_engine(params: GRPOTrainParams, backend: str, model: Any) -> str:
    """Where rollouts come from: vllm, continuous, compiled, dequantized_twin, unsloth
    or generate.

    With the unsloth backend a quantized policy samples through Unsloth's own decode
    (it replaces the Qwen2 forward functions with its own, which keep no transformers
    cache, so the static-cache engine cannot run on that model or on a copy of it). A
    bf16 Unsloth policy keeps the compiled engine under ``auto``: the continuous engine
    calls the layers' submodules, which Unsloth patches with its own kernels, and that
    pairing has not run on a GPU yet.
    """
    from tunelab.generation import resolve_engine

    if params.vllm.use_vllm:
        return "vllm"
    engine = resolve_engine(params.generation, model)
    if engine == "dequantize":
        return "unsloth" if backend == "unsloth" else "dequantized_twin"
    if engine == "generate" and backend == "unsloth":
        return "unsloth"
    if engine == "continuous" and backend == "unsloth" and params.generation.engine == "auto":
        return "compiled"
    return engine


def rollout_trainer(params: GRPOTrainParams, backend: str) -> type:
    """GRPOTrainer whose transformers rollouts use tunelab.generation's compiled engine.

    vLLM (``vllm.use_vllm``) and TRL's own paths are left as they are; with the engine
    resolving to ``generate`` (auto on the CPU) this is TRL's plain ``generate``. The
    whole generation batch (prompts x num_generations) is one batch; the LoRA adapter
    stays attached, so each step samples from the current policy. A 4-bit policy with
    ``generation.quantized: dequantize`` samples from a bf16 twin (tunelab.generation's
    DequantizedTwin), its LoRA weights copied from the policy before every rollout.
    """
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import pad

    from tunelab.generation import DequantizedTwin, generate_new_tokens

    class RolloutGRPOTrainer(GRPOTrainer):
        _twin: DequantizedTwin | None = None

        def _generate_single_turn(
            self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
        ):
            import torch

            engine = rollout_engine(params, backend, self.model)
            plain_text = not any(images or []) and not multimodal_fields
            if (
                self.use_transformers_continuous_batching
                or engine not in ("continuous", "compiled", "dequantized_twin")
                or not plain_text
            ):
                return super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                )
            gen = params.generation
            if engine == "compiled" and gen.engine == "auto":  # auto's choice made above
                gen = gen.model_copy(update={"engine": "compiled"})
            prompts = [torch.tensor(p) for p in prompt_ids]  # left-padded, as TRL does
            ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left")
            mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
            device = self.accelerator.device
            if engine == "dequantized_twin":
                if self._twin is None:
                    self._twin = DequantizedTwin(self.accelerator.unwrap_model(self.model))
                self._twin.sync()
                rows = generate_new_tokens(
                    self._twin.model,
                    ids.to(device),
                    mask.to(device),
                    gen,
                    len(prompt_ids),
                    self.generation_kwargs,
                )
            else:
                with (
                    unwrap_model_for_generation(
                        self.model_wrapped,
                        self.accelerator,
                        generation_kwargs=self.generation_kwargs,
                    ) as unwrapped,
                    self._dist.summon_full_params(self.model_wrapped, recurse=False),
                ):
                    rows = generate_new_tokens(
                        unwrapped,
                        ids.to(device),
                        mask.to(device),
                        gen,
                        len(prompt_ids),
                        self.generation_kwargs,
                    )
            eos = set(self.eos_token_ids)
            completions = []
            for row in rows:  # up to and including the first EOS, as TRL's own path
                tokens = row.tolist()
                end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens) - 1)
                completions.append(tokens[: end + 1])
            return completions, None

    return RolloutGRPOTrainer


def load_model(
    params: GRPOTrainParams, backend: str, name_or_path: str, revision: str | None
) -> tuple[Any, Any]:
    """The LoRA model and tokenizer through training/backends.py."""
    from tunelab.training.backends import load_text_model

    extra = {}
    if params.vllm.use_vllm:  # Unsloth's own vLLM rollouts (ignored by the hf backend)
        extra = {
            "fast_inference": True,
            "gpu_memory_utilization": params.vllm.gpu_memory_utilization,
            "max_lora_rank": params.lora.r,
        }
    return load_text_model(
        backend, name_or_path, revision, params, params.max_seq_length, extra=extra
    )


def rollout_memory(params: GRPOTrainParams, backend: str) -> tuple[float, bool]:
    """What rollouts hold on the training GPU, for the memory plan: (vLLM's share of the
    GPU, whether a dense twin of the 4-bit policy is built; see rollout_engine)."""
    import torch

    v, g = params.vllm, params.generation
    in_process = v.use_vllm and (backend == "unsloth" or v.mode == "colocate")
    compiles = g.engine in ("compiled", "continuous") or (
        g.engine == "auto" and torch.cuda.is_available()
    )
    twin = (
        not v.use_vllm
        and backend == "hf"
        and params.model.load_in_4bit
        and g.quantized == "dequantize"
        and compiles
    )
    return (v.gpu_memory_utilization if in_process else 0.0), twin


def run_warmup(
    run: TrainingRun, model: Any, tokenizer: Any, params: GRPOTrainParams, records: list[dict]
) -> dict[str, Any]:
    """SFT on the formatted references; the finished adapter is kept in ckpt/warmup_adapter,
    so a rerun after a crash in GRPO loads it instead of training it again."""
    from datasets import Dataset
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from trl import SFTTrainer

    from tunelab.training.run import loss_summary
    from tunelab.training.runcard import trainer_settings

    done = run.ckpt / "warmup_adapter"
    if (done / "adapter_model.safetensors").is_file():
        set_peft_model_state_dict(model, load_file(str(done / "adapter_model.safetensors")))
        print(f"warm-up already done: loaded {done}")
        return {"skipped": "loaded from an earlier run's checkpoint"}
    folder = run.ckpt / "warmup"
    dataset = Dataset.from_list(
        [
            {"messages": [*r["prompt"], {"role": "assistant", "content": r["reference"]}]}
            for r in records
        ]
    )
    trainer, result = run.train(
        SFTTrainer,
        sft_config(warmup_params(params), folder),
        params.warmup.optim.loraplus_lr_ratio,
        live_dir=run.live_dir / "warmup",
        last=False,
        model=model,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    with atomic_dir(done) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    return loss_summary(trainer, result) | {
        "rows": len(dataset),
        "trainer_args": trainer_settings(trainer.args),
    }


def prepared_records(path: Path) -> list[dict[str, Any]]:
    """The prepared gsm8k rows (prompt, target, reference), refused in one line otherwise."""
    records = read_jsonl(path)
    missing = [k for k in ("prompt", "target", "reference") if records and k not in records[0]]
    if not records or missing:
        raise TunelabError(str(path), f"not a prepared gsm8k file (missing {missing})")
    return records


def _summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged values of the GRPO curves worth a glance in the run card."""
    rows = [h for h in log_history if "reward" in h]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k.startswith("rewards/") and k.endswith("/mean")]
    keys += [k for k in ("reward", "reward_std", "kl", "completions/mean_length") if k in rows[0]]
    return {
        k: {"first": round(rows[0][k], 4), "last": round(rows[-1][k], 4)}
        for k in keys
        if k in rows[-1]
    }


def train_grpo(
    scenario: str,
    params: GRPOTrainParams,
    backend: str,
    base_dir: Path,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path,
    extra_callbacks: list[Any] | None = None,
) -> Trained:
    """Warm-up (optional) then GRPO; write the adapter, tokenizer and run card to out_dir.

    ``extra_callbacks`` are added to the GRPO trainer's (the tests read the trained model so).
    """
    from datasets import Dataset

    from tunelab.models.chat import ensure_generation_template
    from tunelab.training.rewards import reward_functions

    section = f"train.{scenario}"
    check_vllm(params, section)
    check_backend(section, params.lora, backend, params.vllm.use_vllm)
    records = prepared_records(data_dir / "train.jsonl")
    dirs = (base_dir, data_dir, out_dir, live_dir)
    run = TrainingRun(scenario, section, params, backend, *dirs, extra_callbacks)
    batches = {"grpo.optim": params.max_seq_length}  # a row: prompt + completion
    if params.warmup.enabled:
        batches["warmup.optim"] = params.warmup.data.max_length
    vllm_share, twin = rollout_memory(params, backend)
    params = run.setup(batches, reserve_fraction=vllm_share, dense_twin=twin)
    run.start()
    model, tokenizer = load_model(params, backend, run.name_or_path, run.revision)
    # PiSSA / OLoRA: A, B as initialised; also keeps TRL's "ref" copy from re-running it
    run.adapter_built(model)
    warmup: dict[str, Any] = {"enabled": params.warmup.enabled}
    replaced = False
    if params.warmup.enabled:
        replaced = params.warmup.data.assistant_only_loss and ensure_generation_template(
            tokenizer, f"{run.name_or_path} chat template"
        )
        warmup |= run_warmup(run, model, tokenizer, params, records)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "target": r["target"]} for r in records])
    trainer, _ = run.train(
        rollout_trainer(params, backend),
        grpo_config(params, run.ckpt / "grpo"),
        params.grpo.optim.loraplus_lr_ratio,
        model=model,
        reward_funcs=reward_functions(params.format, params.rewards),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    adapters = list(getattr(trainer.model, "peft_config", {}) or {})
    return run.finish(
        tokenizer,
        # only the trained adapter: TRL adds a frozen "ref" copy when beta > 0
        selected_adapters=["default"] if adapters else None,
        chat_template_replaced=bool(replaced),
        warmup=warmup,
        grpo={
            "global_step": trainer.state.global_step,
            "rollout_engine": rollout_engine(params, backend, trainer.model),
            "resumed": run.resumed,
            "prompts": len(dataset),
            "curves": _summary(trainer.state.log_history),
        },
    )
