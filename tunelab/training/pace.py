"""How long a run has left: the ETA of each step event.

The plain estimate, elapsed / steps done × steps left, is thrown about by the two things
that are not training steps: the first step pays for warm-up (allocations, kernels chosen,
lazy imports), and every `eval_steps` / `save_steps` an evaluation or a checkpoint adds
seconds that land on one step. On a 30-step LoRA run the ETA jumped from 0:24 to 1:05
between two steps (issue #15). So the pace is measured in its parts:

    step   mean wall time of a training step, the session's first (warm-up) step left out
    eval   mean time of an evaluation so far; before the first, a guess: its batches at a
           third of a training micro-batch each (a forward pass, no backward)
    save   mean time of a checkpoint so far (none yet: 0)

    ETA = steps left × step + evals left × eval + saves left × save

counting the evaluation and checkpoint still due at the step just logged (the Trainer
logs a step before it evaluates and saves there) and the ones it adds at the last step.
The callback in run.py feeds it the moments each step, evaluation and save ended.
"""

from __future__ import annotations

import math


class Pace:
    def __init__(self, max_steps: int, eval_every: int = 0, save_every: int = 0, final_eval: bool = False,
                 eval_batches: int = 0, grad_accum: int = 1):
        self.max_steps = max_steps
        self.eval_every, self.save_every, self.final_eval = eval_every, save_every, final_eval
        self.eval_batches, self.grad_accum = eval_batches, max(grad_accum, 1)
        self.mark = None          # when the last step, eval or save ended
        self.warmup = None        # the session's first step
        self.steps: list[float] = []
        self.evals: list[float] = []
        self.saves: list[float] = []

    def began(self, now: float) -> None:
        self.mark = now

    def step_ended(self, now: float) -> None:
        if self.mark is not None:
            if self.warmup is None:
                self.warmup = now - self.mark
            else:
                self.steps.append(now - self.mark)
        self.mark = now

    def evaluated(self, now: float) -> None:
        self._overhead(self.evals, now)

    def saved(self, now: float) -> None:
        self._overhead(self.saves, now)

    def _overhead(self, into: list, now: float) -> None:
        if self.mark is not None:
            into.append(now - self.mark)
        self.mark = now

    def step_s(self) -> float | None:
        return sum(self.steps) / len(self.steps) if self.steps else self.warmup

    def eval_s(self) -> float:
        if self.evals:
            return sum(self.evals) / len(self.evals)
        step = self.step_s() or 0.0
        return self.eval_batches * step / self.grad_accum / 3

    def save_s(self) -> float:
        return sum(self.saves) / len(self.saves) if self.saves else 0.0

    def evals_left(self, step: int) -> int:
        """Evaluations still due after training step `step` (its own included)."""
        if self.eval_every:
            return _due(step, self.max_steps, self.eval_every)
        return int(self.final_eval)   # run.py evaluates once after training

    def saves_left(self, step: int) -> int:
        return _due(step, self.max_steps, self.save_every) if self.save_every else 0

    def eta(self, step: int) -> float | None:
        """Seconds left after training step `step` was logged; None before any step ended."""
        step_s = self.step_s()
        if step_s is None:
            return None
        left = max(self.max_steps - step, 0)
        return left * step_s + self.evals_left(step) * self.eval_s() + self.saves_left(step) * self.save_s()


def _due(step: int, max_steps: int, every: int) -> int:
    """Multiples of `every` in [step, max_steps], plus max_steps itself when it is not one
    (the Trainer evaluates and saves at the last step too)."""
    if step > max_steps:
        return 0
    step = max(step, 1)
    n = max_steps // every - (step - 1) // every
    return n + (1 if max_steps % every else 0)


def batches(rows: int, batch_size: int) -> int:
    return math.ceil(rows / max(batch_size, 1)) if rows else 0
