"""Multi-process training through `accelerate launch` (DDP or FSDP).

With ``launch.train.num_processes > 1`` a train stage does not train in its
own process: it writes an accelerate config generated from params to
.tunelab/accelerate/<stage>-<scenario>.yaml and re-runs itself under
``accelerate launch`` (one process per GPU; on a CPU-only machine, gloo
processes started by torchrun, since accelerate runs CPU processes only through
mpirun; that is how the launch logic is tested here). Inside the launched
processes ``WORLD_SIZE`` is set and the stage trains normally; the Trainer
(through accelerate) wraps the model in DDP or FSDP.

The global batch is per_device_train_batch_size x gradient_accumulation_steps
x world size. With ``keep_global_batch`` the params' batch is read as the
global batch of one process, and gradient accumulation is divided by the
world size, so a run on 1, 2 or 8 GPUs takes the same optimisation steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError

CONFIG_DIR = Path(".tunelab/accelerate")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def inside_launch() -> bool:
    """True in a launched worker; a launcher that started no distributed worker is an error."""
    if "WORLD_SIZE" in os.environ:
        return True
    if os.environ.get("TUNELAB_LAUNCHED"):
        raise TunelabError(
            "launch.train",
            "the launcher started a process without WORLD_SIZE (not a distributed worker); "
            "refusing to launch again",
        )
    return False


def effective_batch(
    per_device: int, grad_accum: int, world: int, keep_global_batch: bool, where: str
) -> tuple[int, int]:
    """Return (gradient_accumulation_steps to use, global batch size)."""
    if not keep_global_batch:
        return grad_accum, per_device * grad_accum * world
    if grad_accum % world:
        raise TunelabError(
            where,
            f"keep_global_batch: gradient_accumulation_steps {grad_accum} "
            f"does not divide by the world size {world}",
        )
    return grad_accum // world, per_device * grad_accum


def accelerate_config(launch: Any, use_cpu: bool) -> dict[str, Any]:
    """The accelerate config file for these launch params (see `accelerate config`)."""
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_processes": launch.num_processes,
        "num_machines": launch.num_machines,
        "machine_rank": launch.machine_rank,
        "main_process_port": launch.main_process_port,
        "mixed_precision": "no" if use_cpu else launch.mixed_precision,
        "use_cpu": use_cpu,
        "rdzv_backend": "static",
        "same_network": True,
        "downcast_bf16": "no",
    }
    if launch.main_process_ip:
        cfg["main_process_ip"] = launch.main_process_ip
    if use_cpu:
        cfg["distributed_type"] = "MULTI_CPU"
    elif launch.strategy == "fsdp":
        f = launch.fsdp
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {
            "fsdp_version": f.version,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": f.transformer_layer_cls_to_wrap,
            "fsdp_reshard_after_forward": f.reshard_after_forward,
            "fsdp_state_dict_type": f.state_dict_type,
            "fsdp_offload_params": f.offload_params,
            "fsdp_cpu_ram_efficient_loading": f.cpu_ram_efficient_loading,
            "fsdp_activation_checkpointing": f.activation_checkpointing,
        }
    else:
        cfg["distributed_type"] = "MULTI_GPU"
    return cfg


def relaunch(stage: str, scenario: str, launch: Any) -> int:
    """Run this stage in launch.num_processes processes; return the launcher's exit code.

    GPUs: `accelerate launch` with the generated config. CPU: torchrun (gloo),
    since accelerate runs several CPU processes only through mpirun. The
    children carry TUNELAB_LAUNCHED so that a launcher which fails to start
    distributed workers is an error instead of a launch loop.
    """
    import torch

    per_machine = launch.num_processes // launch.num_machines
    use_cpu = not torch.cuda.is_available()
    if not use_cpu and torch.cuda.device_count() < per_machine:
        raise TunelabError(
            "launch.train.num_processes",
            f"{per_machine} processes per machine but {torch.cuda.device_count()} GPUs are visible",
        )
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    config = CONFIG_DIR / f"{stage}-{scenario}.yaml"
    config.write_text(yaml.safe_dump(accelerate_config(launch, use_cpu), sort_keys=True))
    if use_cpu:
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={per_machine}",
            f"--nnodes={launch.num_machines}",
            f"--node_rank={launch.machine_rank}",
            f"--master_addr={launch.main_process_ip or '127.0.0.1'}",
            f"--master_port={launch.main_process_port}",
        ]
    else:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    argv += ["-m", f"stages.{stage}", scenario]
    print(
        f"launching {launch.num_processes} processes ({'cpu' if use_cpu else launch.strategy}): "
        + " ".join(argv[1:]),
        flush=True,
    )
    env = {**os.environ, "TUNELAB_LAUNCHED": "1"}
    return subprocess.run(argv, check=False, env=env).returncode
