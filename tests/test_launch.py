"""Multi-process launch: generated accelerate configs, global-batch arithmetic, and a real
two-process DDP run on the CPU (gloo) matching the one-process loss curve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tunelab.config.launch import LaunchParams
from tunelab.errors import TunelabError
from tunelab.training.launch import accelerate_config, effective_batch

from .conftest import ROOT, params_dict, run_module


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(**updates: object) -> LaunchParams:
    data = params_dict()["launch"]["train"] | updates
    return LaunchParams.model_validate(data)


def test_ddp_fsdp_and_cpu_configs() -> None:
    ddp = accelerate_config(launch(num_processes=2), use_cpu=False)
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["num_processes"] == 2
    assert ddp["mixed_precision"] == "bf16" and "fsdp_config" not in ddp
    fsdp = accelerate_config(launch(num_processes=4, strategy="fsdp"), use_cpu=False)
    assert fsdp["distributed_type"] == "FSDP"
    assert fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert fsdp["fsdp_config"]["fsdp_version"] == 2
    cpu = accelerate_config(launch(num_processes=2), use_cpu=True)
    assert cpu["distributed_type"] == "MULTI_CPU" and cpu["mixed_precision"] == "no"
    multi = accelerate_config(
        launch(num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.1.2.3"),
        use_cpu=False,
    )
    assert multi["num_machines"] == 2 and multi["machine_rank"] == 1
    assert multi["main_process_ip"] == "10.1.2.3"


def test_global_batch_is_kept_across_world_sizes() -> None:
    for world, accum in ((1, 8), (2, 4), (4, 2), (8, 1)):
        assert effective_batch(4, 8, world, True, "k") == (accum, 32)
    assert effective_batch(4, 8, 2, False, "k") == (8, 64)
    with pytest.raises(
        TunelabError,
        match="k: keep_global_batch: gradient_accumulation_steps 8 does "
        "not divide by the world size 3",
    ):
        effective_batch(4, 8, 3, True, "k")


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (
            {"num_processes": 3, "num_machines": 2, "main_process_ip": "h"},
            "must divide by num_machines",
        ),
        ({"num_machines": 2, "num_processes": 2}, "main_process_ip is needed"),
        ({"machine_rank": 1}, "machine_rank must be below num_machines"),
        ({"strategy": "deepspeed"}, "'ddp' or 'fsdp'"),
        ({"main_process_port": 80}, "greater than or equal to 1024"),
    ],
)
def test_bad_launch_params(updates: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        launch(**updates)


@pytest.mark.slow
def test_two_cpu_processes_match_one_at_the_same_global_batch(
    tmp_path: Path, tiny_base: Path
) -> None:
    """The train stage relaunches itself under `accelerate launch` (2 gloo processes)."""
    curves, cards = {}, {}
    for world in (1, 2):
        root = tmp_path / f"w{world}"
        (root / "models/base").mkdir(parents=True)
        shutil.copytree(tiny_base, root / "models/base/text")
        shutil.copytree(ROOT / "data/raw", root / "data/raw")
        params = params_dict()
        params["launch"]["train"]["num_processes"] = world
        params["launch"]["train"]["main_process_port"] = free_port()
        opt = params["train"]["alpaca"]["optim"]
        opt.update(max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2)
        params["train"]["alpaca"].update(logging_steps=1, save_steps=100)
        (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
        env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        assert run_module(["stages.prepare", "alpaca"], cwd=root, env=env).returncode == 0
        res = run_module(["stages.train", "alpaca"], cwd=root, env=env, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        if world == 2:
            assert "launching 2 processes (cpu)" in res.stdout
        cards[world] = json.loads((root / "adapters/alpaca/run_card.json").read_text())
        tsv = (root / "reports/train/alpaca/plots/metrics/loss.tsv").read_text().splitlines()[1:]
        curves[world] = [float(line.split("\t")[-1]) for line in tsv]
    assert cards[2]["distributed"] == {
        "world_size": 2,
        "strategy": "ddp",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 8,
    }
    assert cards[1]["distributed"]["global_batch_size"] == 8
    assert cards[1]["distributed"]["gradient_accumulation_steps"] == 2
    assert len(curves[1]) == len(curves[2]) == 6
    for a, b in zip(curves[1], curves[2], strict=True):
        assert b == pytest.approx(a, rel=0.02), (curves[1], curves[2])
