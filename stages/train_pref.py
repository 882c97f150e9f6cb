"""Stage train_pref: LoRA preference optimisation (DPO or ORPO) on the prepared pairs.

    python -m stages.train_pref dpo|orpo

Reads train_pref.<name> (``method`` picks TRL's DPOTrainer or ORPOTrainer) and
data/prepared/preference; writes adapters/<name>/ (LoRA, tokenizer, run card) and the
dvclive curves (loss, rewards/accuracies and margins as TRL logs them) in
reports/train/<name>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage
from tunelab.scenarios import PREFERENCE


def train_pref(name: str) -> None:
    from tunelab.config import load_section
    from tunelab.training.backends import select_backend

    params = load_section(f"train_pref.{name}")
    backend = select_backend(params.backend, f"train_pref.{name}.backend")  # before TRL
    from tunelab.training.preference import train_preference

    card = train_preference(
        name,
        params,
        backend,
        base_dir=Path("models/base/text"),
        data_dir=Path("data/prepared/preference"),
        out_dir=Path("adapters") / name,
        live_dir=Path("reports/train") / name,
    ).card
    t = card["train"]
    print(
        f"train_pref {name}: {params.method} on {backend}, {t['global_step']} steps, "
        + ", ".join(f"{k} {v['first']} -> {v['last']}" for k, v in t["curves"].items())
        + f", {card['wall_seconds']:.0f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=PREFERENCE)
    args = parser.parse_args()
    run_stage(lambda: train_pref(args.name))


if __name__ == "__main__":
    main()
