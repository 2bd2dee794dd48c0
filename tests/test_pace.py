"""The ETA in step events, on a simulated clock: a 30-step run whose first step is slow and
which evaluates and saves every 10 steps (the Train tab's defaults)."""

import threading
from types import SimpleNamespace

import pytest

from tunelab.training.pace import Pace

WARMUP, STEP, EVAL, SAVE, EVERY, MAX = 6.0, 2.0, 10.0, 3.0, 10, 30


class Clock:
    t = 1000.0

    def time(self):
        return self.t


def simulate(tmp_path, monkeypatch):
    """Drive callback.py's EventCallback the way the Trainer does; return (step events, the
    time each was emitted, the time the run's last eval and save ended)."""
    import importlib
    callback_module = importlib.import_module("tunelab.training.callback")
    clock = Clock()
    monkeypatch.setattr(callback_module, "time", clock)
    emitted = []
    events = SimpleNamespace(emit=lambda type, **f: emitted.append({"type": type, "time": clock.t, **f}))
    status = SimpleNamespace(update=lambda **f: None)
    # 15 eval batches of a third of a training step each: the guess before the first eval is right.
    pace = Pace(MAX, eval_every=EVERY, save_every=EVERY, final_eval=True, eval_batches=15)
    cb = callback_module.EventCallback(events, status, MAX, threading.Event(), tmp_path, pace)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=1,
                           output_dir=str(tmp_path / "checkpoints"))
    state = SimpleNamespace(global_step=0)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    cb.on_train_begin(args, state, control)
    for s in range(1, MAX + 1):
        clock.t += WARMUP if s == 1 else STEP
        state.global_step = s
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs={"loss": 1.0, "learning_rate": 1e-3})
        if s % EVERY == 0:
            clock.t += EVAL
            cb.on_log(args, state, control, logs={"eval_loss": 1.0})
            cb.on_evaluate(args, state, control)
            clock.t += SAVE
            cb.on_save(args, state, control)
    steps = [e for e in emitted if e["type"] == "step"]
    return steps, clock.t


def test_the_eta_tracks_the_time_left_and_does_not_jump(tmp_path, monkeypatch):
    steps, end = simulate(tmp_path, monkeypatch)
    assert [e["step"] for e in steps] == list(range(1, MAX + 1))
    for e in steps[1:]:   # the first step is warm-up: its ETA can only be a rough guess
        left = end - e["time"]
        assert e["eta_s"] == pytest.approx(left, rel=0.15, abs=1.0), e["step"]
    # Between two steps the ETA falls by about the time that passed; it never jumps up
    # (it went from 0:24 to 1:05 on one step before: issue #15). The one revision allowed
    # is the first checkpoint's cost, unknown until one was written (step 10 here).
    for a, b in zip(steps[1:], steps[2:]):
        assert b["eta_s"] <= a["eta_s"] - (b["time"] - a["time"]) + 0.15 * a["eta_s"] + 1.0, b["step"]
    assert steps[-1]["eta_s"] == pytest.approx(EVAL + SAVE)   # the last step's eval and checkpoint


def test_evals_and_saves_due_count_the_last_step_once():
    pace = Pace(25, eval_every=10, save_every=0, final_eval=True)
    assert [pace.evals_left(s) for s in (1, 10, 11, 20, 21, 25)] == [3, 3, 2, 2, 1, 1]
    assert pace.saves_left(5) == 0
    assert Pace(25, final_eval=True).evals_left(7) == 1    # no eval_steps: one evaluation after training
    assert Pace(25).evals_left(7) == 0 and Pace(25).eta(3) is None
