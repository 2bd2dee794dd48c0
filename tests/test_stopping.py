"""A stop only sets a flag (tunelab/training/stopping.py): nothing is raised into the code a
signal interrupts, an import in progress finishes whole, and a run reads the flag where
stopping is safe (between its loading phases, and at a step's end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunelab import RunConfig
from tunelab.training import stopping

from .rows import SFT_ROWS, write_jsonl

ROOT = Path(__file__).resolve().parent.parent

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
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield name
    for s, handler in old.items():
        signal.signal(s, handler)
    sys.modules.pop(name, None)


def test_a_stop_while_a_run_loads_sets_its_flag_and_the_import_finishes_whole(slow_module):
    assert threading.current_thread() is threading.main_thread()
    with stopping.RunSignals() as flag:
        __import__(slow_module)          # nothing is raised here
        assert sys.modules[slow_module].FINISHED
        assert flag.is_set() and flag.reason == "SIGTERM"
        with pytest.raises(stopping.StopRequested):   # the run's own check, at its next boundary
            flag.check()
    assert signal.getsignal(signal.SIGTERM) is not flag.handle   # the handlers before are back


def test_the_stop_file_is_seen_at_the_boundary(tmp_path):
    flag = stopping.StopFlag()
    flag.check(tmp_path)                 # no file, no flag: nothing
    (tmp_path / stopping.STOP_FILE).touch()
    with pytest.raises(stopping.StopRequested):
        flag.check(tmp_path)
    assert flag.is_set()


def _in_a_process(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_a_caught_sigterm_lets_the_process_carry_on_and_a_second_ctrl_c_ends_it():
    code = """
import os, signal, time
from tunelab.training import stopping
stopping.catch()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.1)                     # a handler that raised would end the process here
print("carried on", stopping.requested(), flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.1)
os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C once a stop is on its way: at once
time.sleep(60)
print("not reached")
"""
    done = _in_a_process(code)
    assert done.stdout.split() == ["carried", "on", "True"], done.stderr
    assert done.returncode == 130


def test_a_run_asked_to_stop_before_it_began_is_cancelled_by_its_own_check(tiny_model_dir, tmp_path):
    """A SIGTERM that lands while the CLI process starts (before any run code): the run
    ends at its first boundary as "cancelled", with its own finish event, exit code 0."""
    from tunelab.common import workspace
    from tunelab.training.events import read_events
    from tunelab.training.runs import run_status
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    cfg = RunConfig.from_dict({"method": "lora", "model": tiny_model_dir, "data": {"train": data},
                               "train": {"max_steps": 5, "batch_size": 4, "max_length": 64, "precision": "fp32"}})
    cfg.save(tmp_path / "cfg.yaml")
    run_id = f"20261207-000000-stop-early-{os.getpid()}"
    code = """
import os, signal, sys
from tunelab.training import stopping
stopping.catch()
os.kill(os.getpid(), signal.SIGTERM)
from tunelab.training.config import load_config
from tunelab.training.run import run
result = run(load_config(sys.argv[1], []), run_id=sys.argv[2])
print(result.status)
"""
    env_home = str(workspace.home())
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cfg.yaml"), run_id], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=dict(os.environ, TUNELAB_HOME=env_home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "cancelled"
    run_dir = workspace.runs_dir() / run_id
    st = run_status(run_dir)
    assert (st["status"], st["note"], st["step"]) == ("cancelled", stopping.CANCELLED_NOTE, 0)
    assert [(e["type"], e["status"]) for e in read_events(run_dir)] == [("finish", "cancelled")]
