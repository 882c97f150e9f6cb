"""Stage train: LoRA / QLoRA SFT of one text scenario -> adapters/<scenario>/.

python -m stages.train alpaca|medical|legal|gsm8k|car_insurance
(gsm8k: GRPO, tunelab.training.grpo; car_insurance: vision-language, tunelab.training.vl)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import stage

SCENARIOS = ("alpaca", "medical", "legal", "gsm8k", "car_insurance")


def train_gsm8k(params: object, backend: str) -> None:
    from tunelab.training.grpo import train_grpo

    card = train_grpo(
        params,
        backend,
        base_dir=Path("models/base/text"),
        data_dir=Path("data/prepared/gsm8k"),
        out_dir=Path("adapters/gsm8k"),
        live_dir=Path("reports/train/gsm8k"),
    )
    curves = card["grpo"]["curves"]
    reward = curves.get("reward", {})
    print(
        f"train gsm8k: backend {backend}, warm-up {card['warmup'].get('global_step', '-')} steps, "
        f"GRPO {card['grpo']['global_step']} steps, reward {reward.get('first')} -> "
        f"{reward.get('last')}, {card['wall_seconds']:.0f}s"
    )


def train_car_insurance(params: object) -> None:
    """Vision-language LoRA (tunelab.training.vl), one process; Unsloth FastVisionModel on a GPU."""
    from tunelab.training.backends import select_backend

    backend = select_backend(params.backend, "train.car_insurance.backend")  # before transformers
    from tunelab.training.vl import train_vl

    card = train_vl(
        "car_insurance",
        params,
        backend,
        base_dir=Path("models/base/vision"),
        data_dir=Path("data/prepared/car_insurance"),
        out_dir=Path("adapters/car_insurance"),
        live_dir=Path("reports/train/car_insurance"),
    )
    t = card["train"]
    print(
        f"train car_insurance: backend {backend}, {t['global_step']} steps, loss "
        f"{t['first_logged_loss']} -> {t['last_logged_loss']}, {card['wall_seconds']:.0f}s"
    )


def train(scenario: str) -> None:
    from tunelab.config import load_section
    from tunelab.errors import TunelabError
    from tunelab.launch import inside_launch, relaunch
    from tunelab.training.backends import select_backend

    params = load_section(f"train.{scenario}")
    if scenario == "car_insurance":
        return train_car_insurance(params)
    launch = load_section("launch.train")
    requested = params.backend
    if launch.num_processes > 1:
        if scenario == "gsm8k":
            raise TunelabError(
                "launch.train.num_processes",
                "the gsm8k GRPO recipe runs in one process (not yet under accelerate launch); set 1",
            )
        if requested == "unsloth":
            raise TunelabError(
                f"train.{scenario}.backend",
                "unsloth trains on one GPU; use hf (or auto) with launch.train.num_processes > 1",
            )
        requested = "hf"
        if not inside_launch():
            code = relaunch("train", scenario, launch)
            if code:
                raise TunelabError(
                    f"train.{scenario}", f"accelerate launch exited with status {code}"
                )
            return None
    backend = select_backend(requested, f"train.{scenario}.backend")  # before transformers
    if scenario == "gsm8k":
        return train_gsm8k(params, backend)
    from tunelab.training.sft import train_sft

    base_dir = Path("models/base/text")
    init = Path(params.init_from)  # the base (a fresh LoRA), or an adapter to continue
    card = train_sft(
        scenario,
        params,
        backend,
        base_dir=base_dir,
        data_dir=Path("data/prepared") / scenario,
        out_dir=Path("adapters") / scenario,
        live_dir=Path("reports/train") / scenario,
        launch=launch,
        init_adapter=None if init == base_dir else init,
    )
    if card is None:  # not the main process
        return None
    t = card["train"]
    print(
        f"train {scenario}: backend {backend}, {t['global_step']} steps, loss "
        f"{t['first_logged_loss']} -> {t['last_logged_loss']}, {card['wall_seconds']:.0f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    args = parser.parse_args()
    stage.run(lambda: train(args.scenario))


if __name__ == "__main__":
    main()
