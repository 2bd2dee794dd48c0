"""The standby's priority: it imports at nice 19 only where it can come back to the runs'
priority, and comes back as soon as a run is handed over, imports unfinished."""

import resource
import sys

import pytest

from tunelab.service import standby


@pytest.fixture
def as_user(monkeypatch):
    """This process seen as an ordinary user with RLIMIT_NICE `soft` (call with the limit)."""
    def set_(soft):
        monkeypatch.setattr("os.geteuid", lambda: 1000)
        monkeypatch.setattr(resource, "getrlimit",
                            lambda which: (soft, soft) if which == resource.RLIMIT_NICE else (0, 0))
    return set_


def test_root_imports_at_19_and_comes_back(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "0")
    assert standby.preload_niceness() == standby.PRELOAD_NICENESS


def test_a_user_who_could_not_come_back_imports_at_the_runs_priority(monkeypatch, as_user):
    as_user(0)                     # the usual limit: a nice value can only go up
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "0")
    assert not standby.can_return_to(0)
    assert standby.preload_niceness() == 0
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "10")
    assert standby.preload_niceness() == 10


def test_a_user_whose_limit_allows_the_way_back_imports_at_19(monkeypatch, as_user):
    as_user(10)                    # may go down to 20 - 10 = 10
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "10")
    assert standby.can_return_to(10) and standby.preload_niceness() == standby.PRELOAD_NICENESS
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "0")
    assert not standby.can_return_to(0) and standby.preload_niceness() == 0


def test_a_run_handed_over_mid_import_raises_the_priority_for_the_rest(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setenv("TUNELAB_TRAIN_NICE", "0")
    names = [f"tunelab_preload_{i}_{tmp_path.name}" for i in range(3)]   # three real modules, new to this process
    for name in names:
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(standby, "PRELOAD", tuple(names))
    imported = lambda: [n for n in names if n in sys.modules]   # noqa: E731
    calls = []
    monkeypatch.setattr(standby, "set_priority", lambda n: calls.append((n, imported())) or True)
    try:
        standby.preload(lambda: False, lambda: len(imported()) >= 1)   # the job arrives after the first import
        assert imported() == names
        assert calls == [(0, names[:1])]       # once, before the second import
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_no_job_no_change_of_priority(monkeypatch):
    monkeypatch.setattr(standby, "PRELOAD", ("json",))
    calls = []
    monkeypatch.setattr(standby, "set_priority", lambda n: calls.append(n) or True)
    standby.preload(lambda: False)
    assert calls == []
