"""A stop that lands while the run process imports a module is raised once that import is
done, never halfway through it (tunelab/training/stopping.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from tunelab.training import stopping

# The module signals this process, then keeps importing for a while: a stop raised at
# once would leave it half made (not in sys.modules, FINISHED never set).
SLOW_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGTERM)
t0 = time.time()
while time.time() - t0 < 0.3:
    pass
FINISHED = True
"""


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    name = f"tunelab_slow_import_{os.getpid()}_{len(os.listdir(tmp_path))}"
    (tmp_path / f"{name}.py").write_text(SLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    yield name
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s, handler in old.items():
        signal.signal(s, handler)
    stopping._requested.clear()
    stopping.disarm()
    sys.modules.pop(name, None)


def _import_until_stopped(name):
    try:
        __import__(name)
    except stopping.StopRequested:
        return True
    # Not raised in the import: it must come right after, from the retry timer.
    try:
        threading.Event().wait(1.0)
    except stopping.StopRequested:
        return True
    return False


def test_an_armed_stop_waits_for_the_import_in_progress(slow_module):
    assert threading.current_thread() is threading.main_thread()
    stopping.catch()
    stopping.arm()
    assert _import_until_stopped(slow_module)
    assert sys.modules[slow_module].FINISHED   # the module was imported whole
    assert stopping.requested()


def test_a_stop_while_a_run_loads_waits_for_the_import_in_progress(slow_module):
    flag = threading.Event()
    with stopping.RunSignals(flag):
        assert _import_until_stopped(slow_module)
    assert sys.modules[slow_module].FINISHED and flag.is_set()


def test_a_stop_outside_any_import_is_raised_at_once(slow_module):
    stopping.catch()
    stopping.arm()
    with pytest.raises(stopping.StopRequested):
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(1.0)


def test_training_start_drops_a_stop_still_waiting_for_its_import(tmp_path):
    """A stop that came mid-import while the run loaded, with training starting before it
    was raised, is the graceful stop: `training()` says so and nothing is raised later."""
    flag = threading.Event()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    try:
        with stopping.RunSignals(flag) as signals:
            flag.set()
            stopping._pending = "SIGTERM"
            signal.signal(signal.SIGALRM, stopping._retry)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            assert signals.training(tmp_path)
            threading.Event().wait(0.2)   # no StopRequested from the timer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in old.items():
            signal.signal(s, handler)
