"""How a training run and the arena share the cores (tunelab/common/cpushare.py): the
setting, the two marks in the workspace, and both sides acting on them."""

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tunelab.common import cpushare


@pytest.fixture
def four_cores(monkeypatch, tmp_path):
    """A workspace of its own and a 4-core machine, whatever this one has."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setattr(cpushare, "cores", lambda: 4)
    monkeypatch.setattr(cpushare, "_last_look", (0.0, False))
    monkeypatch.setattr(cpushare, "_last_mark", 0.0)
    return tmp_path


@pytest.mark.parametrize("value, train, chat", [("", 2, 2), ("half", 2, 2), ("1", 1, 3), ("3", 3, 1),
                                                ("4", None, 4), ("all", None, 4)])
def test_the_setting_splits_the_cores(four_cores, monkeypatch, value, train, chat):
    monkeypatch.setenv("TUNELAB_TRAIN_CORES", value)
    assert cpushare.train_cores() == train
    assert cpushare.chat_cores() == chat


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_a_bad_setting_names_itself(four_cores, monkeypatch, value):
    monkeypatch.setenv("TUNELAB_TRAIN_CORES", value)
    with pytest.raises(ValueError, match="TUNELAB_TRAIN_CORES"):
        cpushare.train_cores()


@pytest.mark.parametrize("value, want", [("1", 1), ("2", 2), ("1024", None), ("", None), ("0", None), ("x", None)])
def test_omp_num_threads_caps_the_cores(monkeypatch, value, want):
    """A process told OMP_NUM_THREADS=k computes on k threads at most (a run must not widen
    its pool again at each step); unset or not a whole number >= 1: every core it may use."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    allowed = len(os.sched_getaffinity(0))
    assert cpushare.cores() == (min(want, allowed) if want else allowed)


def test_one_core_is_never_split(monkeypatch):
    monkeypatch.setattr(cpushare, "cores", lambda: 1)
    monkeypatch.delenv("TUNELAB_TRAIN_CORES", raising=False)
    assert cpushare.train_cores() is None and cpushare.chat_cores() == 1


def test_a_run_takes_every_core_unless_someone_chatted_lately(four_cores, monkeypatch):
    monkeypatch.delenv("TUNELAB_TRAIN_CORES", raising=False)
    assert not cpushare.chat_active()
    assert cpushare.threads_for_training() == 4
    now = time.time()
    cpushare.mark_chat(now)
    assert cpushare.chat_active(now + 1)
    assert cpushare.threads_for_training() == 2
    assert not cpushare.chat_active(now + cpushare.CHAT_HOLD_S + 1)   # the room went quiet
    monkeypatch.setenv("TUNELAB_TRAIN_CORES", "all")
    assert cpushare.threads_for_training() == 4


def test_a_training_mark_lives_as_long_as_its_run(four_cores):
    assert not cpushare.training_running(now=100.0)
    with cpushare.training():
        assert cpushare.training_running(now=200.0)
        assert cpushare.training_running(now=200.5)   # looked up once a second at most
    assert cpushare.training_running(now=200.9)       # the last look still holds
    assert not cpushare.training_running(now=300.0)
    assert not list((four_cores / ".cpushare").glob("train-*"))


def test_the_mark_of_a_killed_run_is_dropped(four_cores):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (four_cores / ".cpushare").mkdir(exist_ok=True)
    (four_cores / ".cpushare" / f"train-{dead.pid}").touch()
    assert not cpushare.training_running(now=1000.0)
    assert not (four_cores / ".cpushare" / f"train-{dead.pid}").exists()


def test_the_arena_keeps_to_its_cores_while_a_run_trains(four_cores, monkeypatch):
    from tunelab.arena import chatdevice
    monkeypatch.delenv("TUNELAB_ARENA_THREADS", raising=False)
    monkeypatch.delenv("TUNELAB_TRAIN_CORES", raising=False)
    monkeypatch.setattr(chatdevice, "default_threads", lambda: 4)
    assert chatdevice.generation_threads() == 4
    with cpushare.training():
        monkeypatch.setattr(cpushare, "_last_look", (0.0, False))
        assert chatdevice.generation_threads() == 2
        monkeypatch.setenv("TUNELAB_TRAIN_CORES", "all")
        assert chatdevice.generation_threads() == 4
        monkeypatch.setenv("TUNELAB_ARENA_THREADS", "3")   # the host's fixed count wins
        assert chatdevice.generation_threads() == 3


def test_the_training_callback_sets_the_threads_step_by_step(four_cores, monkeypatch):
    import torch

    from tunelab.training.callback import core_share_callback_class
    monkeypatch.delenv("TUNELAB_TRAIN_CORES", raising=False)
    monkeypatch.setattr(cpushare, "cores", lambda: 2)
    before = torch.get_num_threads()
    cb = core_share_callback_class()()
    args = SimpleNamespace(world_size=1, device="cpu")
    try:
        cpushare.mark_chat()
        cb.on_step_begin(args, None, None)
        assert torch.get_num_threads() == 1
        os.utime(four_cores / ".cpushare" / "chat", (0, 0))   # nobody chatted for a long time
        cb.on_step_begin(args, None, None)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(before)
        cpushare.mark_chat(time.time() + 10)   # the next mark is not held back by the last
        cb.on_step_begin(SimpleNamespace(world_size=1, device="cuda:0"), None, None)   # a GPU run: untouched
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
