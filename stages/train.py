"""Stage train: one scenario's adapter -> adapters/<scenario>/.

    python -m stages.train alpaca|medical|legal|gsm8k|car_insurance

The scenario's recipe comes from tunelab.scenarios (text SFT, GRPO for gsm8k,
vision-language SFT for car_insurance). Text SFT runs under ``accelerate launch`` when
launch.train.num_processes > 1; GRPO and vision-language train in one process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import TRAINED, scenario


def train(name: str) -> None:
    from tunelab.config import load_section
    from tunelab.errors import TunelabError
    from tunelab.training.backends import select_backend
    from tunelab.training.launch import inside_launch, relaunch

    s = scenario(name)
    params = load_section(f"train.{name}")
    launch = load_section("launch.train")
    requested = params.backend
    kwargs = {}
    if s.kind == "sft":
        kwargs["launch"] = launch
        init = Path(params.init_from)  # the base (a fresh LoRA), or an adapter to continue
        kwargs["init_adapter"] = None if init == s.base_dir else init
    if launch.num_processes > 1:
        if s.kind != "sft":
            raise TunelabError(
                "launch.train.num_processes",
                f"the {s.kind} recipe of {name} runs in one process (not under accelerate "
                "launch); set 1",
            )
        if requested == "unsloth":
            raise TunelabError(
                f"train.{name}.backend",
                "unsloth trains on one GPU; use hf (or auto) with launch.train.num_processes > 1",
            )
        requested = "hf"
        if not inside_launch():
            code = relaunch("train", name, launch)
            if code:
                raise TunelabError(f"train.{name}", f"accelerate launch exited with status {code}")
            return
    backend = select_backend(requested, f"train.{name}.backend")  # before transformers
    trained = s.load_recipe()(
        name,
        params,
        backend,
        base_dir=s.base_dir,
        data_dir=Path("data/prepared") / name,
        out_dir=Path("adapters") / name,
        live_dir=Path("reports/train") / name,
        **kwargs,
    )
    if trained is None:  # not the main process
        return
    print(summary(name, backend, trained.card))


def summary(name: str, backend: str, card: dict) -> str:
    """The stage's last line: steps and the loss (GRPO: warm-up steps and the reward)."""
    if "grpo" in card:
        reward = card["grpo"]["curves"].get("reward", {})
        return (
            f"train {name}: backend {backend}, warm-up {card['warmup'].get('global_step', '-')} "
            f"steps, GRPO {card['grpo']['global_step']} steps, reward {reward.get('first')} -> "
            f"{reward.get('last')}, {card['wall_seconds']:.0f}s"
        )
    t = card["train"]
    return (
        f"train {name}: backend {backend}, {t['global_step']} steps, loss "
        f"{t['first_logged_loss']} -> {t['last_logged_loss']}, {card['wall_seconds']:.0f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=TRAINED)
    args = parser.parse_args()
    run_stage(lambda: train(args.scenario))


if __name__ == "__main__":
    main()
