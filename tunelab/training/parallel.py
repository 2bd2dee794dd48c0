"""Several processes training one run: `accelerate launch -m tunelab train` (or torchrun).

Every process runs the same CLI. The main process (rank 0) names the run folder and
tells the others (`shared_run_id`); it alone writes config, events, status and outputs,
while the others write through `Quiet`. The Trainer, built by accelerate, does the
data-parallel part (DDP over gloo on CPUs or nccl on GPUs, or FSDP/DeepSpeed as the
launch config says). No gradio here.
"""

from __future__ import annotations

import os
from typing import Callable

from ..common import workspace
from .config import RunConfig


def world() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) unless started by `accelerate launch` or torchrun."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def shared_run_id(cfg: RunConfig, run_id: str | None, new_run_id: Callable[[RunConfig], str]) -> str:
    """One run folder for all the processes of a data-parallel launch: the main process
    names it (`run_id`, or `new_run_id(cfg)`) and the others learn the name from it."""
    if world()[1] == 1:
        return workspace.safe_name(run_id) if run_id else new_run_id(cfg)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    state = PartialState()   # joins the process group the Trainer will use (gloo on CPU, nccl on CUDA)
    box = [None]
    if state.is_main_process:
        box[0] = workspace.safe_name(run_id) if run_id else new_run_id(cfg)
    broadcast_object_list(box)
    return box[0]


class Quiet:
    """What the other processes of a data-parallel run write instead of events and status:
    nothing (the main process writes the run folder)."""

    def __init__(self, state: dict | None = None):
        self.state = dict(state or {})

    def emit(self, type: str, **fields) -> dict:
        return {"type": type, **fields}

    def update(self, **fields) -> None:
        self.state.update(fields)

    def close(self) -> None:
        pass
