"""launch.train: processes and strategy for every train stage (tunelab.training.launch)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    NonNegInt,
    PosInt,
    Section,
)


class FSDPParams(Section):
    version: Literal[1, 2]
    transformer_layer_cls_to_wrap: str
    reshard_after_forward: bool
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"]
    offload_params: bool
    cpu_ram_efficient_loading: bool
    activation_checkpointing: bool


class LaunchParams(Section):
    """launch.train: processes and strategy for every train stage (see tunelab.training.launch)."""

    num_processes: PosInt
    strategy: Literal["ddp", "fsdp"]
    num_machines: PosInt
    machine_rank: NonNegInt
    main_process_ip: str | None
    main_process_port: Annotated[int, Field(ge=1024, le=65535)]
    mixed_precision: Literal["no", "bf16", "fp16"]
    keep_global_batch: bool
    fsdp: FSDPParams

    @model_validator(mode="after")
    def _machines(self) -> LaunchParams:
        if self.num_processes % self.num_machines:
            raise ValueError("num_processes (all machines) must divide by num_machines")
        if self.machine_rank >= self.num_machines:
            raise ValueError("machine_rank must be below num_machines")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("main_process_ip is needed with more than one machine")
        return self
