"""EventCallback: the trainer callback that turns TRL's logs into TuneLab's events.

run.py hands one to SFTTrainer / DPOTrainer. Each logged step becomes a `step` event
(loss, tokens/s, the ETA from pace.py) and a status.json update; each evaluation an
`eval` event, each checkpoint a `save` event. At a step's end it stops training when
Stop was asked for (the flag a signal sets, or a STOP file in the run folder) — on every process at
the same step under DDP — and a NaN loss ends the run.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

from .events import EventWriter, eval_fields, step_fields
from .pace import Pace
from .runfolder import Status
from .stopping import STOP_FILE, StopFlag


def __getattr__(name):  # PEP 562: the callback class needs transformers, so it is built on first use
    if name == "EventCallback":
        return event_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def event_callback_class():
    """The trainer callback class that turns TRL's logs into events and honours Stop
    (built on first use: transformers takes seconds to import)."""
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        def __init__(self, events: EventWriter, status: Status, max_steps: int,
                     stop_flag: StopFlag, run_dir: Path, pace: Pace | None = None):
            self.events, self.status, self.max_steps = events, status, max_steps
            self.stop_flag, self.run_dir = stop_flag, run_dir
            self.pace = pace or Pace(max_steps)
            self.t0 = None
            self.first_step = 0
            self.last_tokens = None
            self.last_time = None
            self.last_loss = None
            self.last_eval = None
            self.last_eval_step = None
            self.nan_step = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.first_step = state.global_step
            self.last_time = self.t0
            self.pace.began(self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            step = state.global_step
            if any(k.startswith("eval_") for k in logs):
                fields = eval_fields(logs)
                if fields:
                    self.last_eval = fields.get("eval_loss", self.last_eval)
                    self.last_eval_step = step
                    self.events.emit("eval", step=step, **fields)
                return
            if "loss" not in logs:
                return
            fields = step_fields(logs)
            elapsed = now - self.t0
            done = max(step - self.first_step, 1)
            tokens = fields.pop("num_tokens", None)
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                fields["tokens_per_s"] = (tokens - self.last_tokens) / (now - self.last_time)
            elif tokens is not None and elapsed > 0:
                fields["tokens_per_s"] = tokens / elapsed
            if tokens is not None:
                self.last_tokens, self.last_time = tokens, now
            fields["samples_per_s"] = (done * args.per_device_train_batch_size * args.gradient_accumulation_steps
                                       * args.world_size / elapsed)   # every process's samples
            self.last_loss = fields.get("loss")
            loss = logs.get("loss")
            if loss is None or (isinstance(loss, float) and not math.isfinite(loss)):
                self.nan_step = step
                control.should_training_stop = True
            self.events.emit("step", step=step, max_steps=self.max_steps, elapsed_s=elapsed,
                             eta_s=self.pace.eta(step), **fields)
            self.status.update(step=step, loss=self.last_loss)

        def on_step_end(self, args, state, control, **kw):
            import torch
            self.pace.step_ended(time.time())
            stop = self.stop_flag.is_set() or (self.run_dir / STOP_FILE).exists()
            if args.world_size > 1:   # every process must stop at the same step, or DDP waits forever
                import torch.distributed as dist
                flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                self.stop_flag.set()
                control.should_training_stop = True
                control.should_save = True  # a checkpoint, so a stopped run can be resumed

        def on_evaluate(self, args, state, control, **kw):
            self.pace.evaluated(time.time())

        def on_save(self, args, state, control, **kw):
            self.pace.saved(time.time())
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.events.emit("save", step=state.global_step, path=str(path.relative_to(self.run_dir)))

    return EventCallback


@functools.cache
def core_share_callback_class():
    """CoreShare: at each step, the run computes on its share of the cores while people chat
    in the arena, and on every core otherwise (tunelab/common/cpushare.py says why)."""
    from transformers import TrainerCallback

    from ..common import cpushare

    class CoreShare(TrainerCallback):
        def __init__(self):
            self.threads = None

        def on_step_begin(self, args, state, control, **kw):
            # GPU runs and DDP's processes (one thread each already) keep their threads.
            import torch
            if args.world_size > 1 or str(args.device).split(":")[0] != "cpu":
                return
            n = cpushare.threads_for_training()
            if n != self.threads:
                torch.set_num_threads(n)
                self.threads = n

    return CoreShare
