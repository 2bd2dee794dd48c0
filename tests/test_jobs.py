"""Runs started the way the app starts them: a subprocess per run, followed through files."""

import time

import pytest

from tunelab import RunConfig
from tunelab.service.jobs import LOG_FILE, Jobs
from tunelab.data import DataError
from tunelab.training.runfolder import RunError
from tunelab.training.events import read_events
from tunelab.training.runs import list_runs, run_status

from .rows import SFT_ROWS, write_jsonl
from .waiting import wait_for


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    """The app's job queue and child processes, as app.py makes them, on a workspace of the
    test's own (no other test's runs hold the one training slot); afterwards no standby, no
    queued run and no child of it left training."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "jobs-home"))
    made = Jobs()
    yield made
    made.use_standby(False)
    for run_id in made.queued():
        made.stop(run_id)
    for run_id in made.children.running():
        made.stop(run_id, grace_s=5.0, wait=True)


def cfg_for(model, data, **train):
    t = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp32"} | train
    return RunConfig.from_dict({"method": "lora", "model": model, "data": {"train": data}, "train": t})


ENDED = {"finished", "failed", "stopped", "cancelled", "interrupted"}


def wait_status(run_id, want):
    """The run's status once it is one of `want`; fails at once, with the run's error and log,
    when the run ends some other way."""
    def reached():
        st = run_status(jobs_run_dir(run_id))
        if st["status"] in want:
            return st
        if st["status"] in ENDED:
            from tunelab.service.jobs import log_tail
            raise AssertionError(f"{run_id} ended {st['status']}, not {want}: {st.get('error')}\n{log_tail(run_id)}")
        return None
    return wait_for(reached, f"{run_id} reaching {want}")


def wait_first_step(run_id):
    wait_for(lambda: any(e["type"] == "step" for e in read_events(jobs_run_dir(run_id))), f"{run_id}'s first step")


def jobs_run_dir(run_id):
    from tunelab.training.runs import find_run
    return find_run(run_id)


def test_launch_follow_and_stop(jobs, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1000))
    assert run_status(jobs_run_dir(run_id))["status"] in ("starting", "running")
    wait_first_step(run_id)
    assert jobs.stop(run_id, wait=True)
    st = wait_status(run_id, {"stopped"})
    assert 0 < st["step"] < 1000
    assert (jobs_run_dir(run_id) / "command.txt").read_text().startswith("python -m tunelab train ")
    assert jobs.reap() == []
    assert jobs.stop(run_id) is False  # already stopped


def test_a_run_killed_by_sigkill_says_so_and_points_at_memory(jobs, tiny_model_dir, tmp_path):
    import os
    import signal
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1000))
    wait_first_step(run_id)
    os.kill(run_status(jobs_run_dir(run_id))["pid"], signal.SIGKILL)   # what the kernel's OOM killer does
    wait_for(lambda: run_id not in jobs.reap(), "the app noticing its killed run")
    st = run_status(jobs_run_dir(run_id))
    assert st["status"] == "interrupted"
    assert "killed (SIGKILL) at step" in st["error"] and "ran out of memory" in st["error"]


def _stopped_right_after_start(jobs, run_id, how_soon=0.5):
    """Stop `run_id` `how_soon` s after its launch (still importing or loading) and
    return its status once it ended: the app ended the process and recorded it cancelled."""
    time.sleep(how_soon)
    assert jobs.stop(run_id, wait=True, grace_s=60)   # a long grace: the run must end by itself
    st = run_status(jobs_run_dir(run_id))
    assert st["status"] == "cancelled", (st, jobs.log_tail(run_id))
    assert st["note"] == "Stopped before the first training step; nothing was trained"
    assert not st["error"] and not st["resumable"]
    # Its end is recorded as a run's end is: one finish event (the Train tab follows events).
    assert [(e["type"], e["status"]) for e in read_events(jobs_run_dir(run_id))] == [("finish", "cancelled")]
    return st


def test_stop_right_after_start_cancels_the_run_with_a_true_message(jobs, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1000))
    _stopped_right_after_start(jobs, run_id)
    assert jobs.reap() == [] and jobs.stop(run_id) is False


def test_stop_while_a_standby_still_imports_cancels_the_run_it_became(jobs, tiny_model_dir, standby_on):
    jobs.use_standby()
    standby = jobs.children.standby
    run_id = jobs.launch(cfg_for(tiny_model_dir, standby_on, max_steps=1000))   # handed over mid-import
    st = _stopped_right_after_start(jobs, run_id)
    assert st["pid"] == standby.pid
    assert standby.wait(10) is not None   # the process the standby became has ended


def test_ended_runs_leave_no_zombie_children_without_anyone_polling(jobs, tiny_model_dir, tmp_path):
    """Each child has a thread that waits for it: no page tick (reap) is needed."""
    import psutil
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1))
    pid = run_status(jobs_run_dir(run_id))["pid"]
    wait_status(run_id, {"finished"})                 # reads status.json only; reaps nothing
    assert reaped_by_itself(pid), f"the ended run is left as {psutil.Process(pid).status()}"
    assert [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE] == []
    assert run_id not in jobs.reap()


def reaped_by_itself(pid):
    """Whether the ended child `pid` goes away with nobody here polling it (a zombie's
    pid exists until its parent reaps it); a hang guard fails the test if it never does."""
    import psutil
    return wait_for(lambda: not psutil.pid_exists(pid), f"the ended run {pid} being reaped")


def test_bad_data_fails_before_any_process(jobs, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    before = len(list_runs())
    with pytest.raises(DataError, match="bad.jsonl"):
        jobs.launch(cfg_for(tiny_model_dir, str(bad)))
    assert len(list_runs()) == before


def test_a_child_that_dies_before_training_is_failed_with_its_error(jobs, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for("./no/such/model", data))
    st = wait_status(run_id, {"failed"})
    assert "model folder not found" in st["error"]


def launch_to_the_end(jobs, model, data):
    run_id = jobs.launch(cfg_for(model, data))
    st = wait_status(run_id, {"finished", "failed"})
    assert st["status"] == "finished", jobs.log_tail(run_id)
    return run_id, st


@pytest.fixture
def standby_on(tmp_path, monkeypatch):
    """Standbys allowed, and the SFT data file to train on; off again afterwards. The test
    itself calls jobs.use_standby(): pytest's PYTEST_CURRENT_TEST changes between a
    fixture's setup and the test, and a standby only takes a run from the same environment."""
    monkeypatch.setenv("TUNELAB_STANDBY", "1")
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    yield data


def test_a_standby_process_becomes_the_run_and_is_replaced_after_it(jobs, tiny_model_dir, standby_on):
    jobs.use_standby()
    waiting = jobs.children.standby
    assert waiting.poll() is None
    run_id, st = launch_to_the_end(jobs, tiny_model_dir, standby_on)
    assert st["pid"] == waiting.pid                     # the standby became the run
    log = (jobs_run_dir(run_id) / LOG_FILE).read_text()
    assert "started from a standby process" in log and "run:" in log
    assert jobs.children.standby is not waiting
    assert reaped_by_itself(waiting.pid)                # a run handed to a standby too: no zombie
    jobs.reap()                                         # nothing training: a new one waits
    assert jobs.children.standby.pid != waiting.pid and jobs.children.standby.poll() is None


def test_a_standby_started_under_another_environment_is_not_used(jobs, tiny_model_dir, standby_on, monkeypatch):
    jobs.use_standby()
    stale = jobs.children.standby
    monkeypatch.setenv("HF_HUB_OFFLINE", "0" if jobs.children.standby_env.get("HF_HUB_OFFLINE") == "1" else "1")
    run_id, st = launch_to_the_end(jobs, tiny_model_dir, standby_on)
    assert st["pid"] != stale.pid
    assert "started from a standby process" not in (jobs_run_dir(run_id) / LOG_FILE).read_text()
    assert stale.poll() is not None                     # ended, not left waiting


def test_standby_off_by_environment(jobs, monkeypatch):
    monkeypatch.setenv("TUNELAB_STANDBY", "0")
    jobs.use_standby()
    assert jobs.children.standby is None
    jobs.reap()                                         # nothing training: still none
    assert jobs.children.standby is None


def test_runs_beyond_the_limit_queue_first_in_first_out_and_can_be_cancelled(jobs, tiny_model_dir, tmp_path, monkeypatch):
    from tunelab.ui import logic, train_logic
    monkeypatch.setenv("TUNELAB_MAX_TRAININGS", "1")
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    first = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1000))
    second = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=2))
    third = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=2))
    assert run_status(jobs_run_dir(second))["status"] == "queued"
    assert jobs.queued() == [second, third]
    assert jobs.queue_position(third) == (2, 2)
    assert "Queued " + third + ": 2 of 2 in line" in logic.launched_text(third, jobs.queue_position(third))
    shown = train_logic.progress_html(train_logic.progress_state([], {**run_status(jobs_run_dir(third)), "queue": (2, 2)}))
    assert "2 of 2 in line" in shown and "Stop cancels it" in shown

    assert jobs.stop(third)                                    # leaves the line, never trains
    assert run_status(jobs_run_dir(third))["status"] == "cancelled"
    assert jobs.queued() == [second]
    from tunelab.training.runs import delete_run
    with pytest.raises(RunError, match="queued to train; cancel it first"):
        delete_run(second)

    wait_status(first, {"running"})
    assert jobs.stop(first, wait=True)
    st = wait_status(second, {"finished"})                    # started by the queue's own thread
    assert st["step"] == 2 and jobs.queued() == []
    assert not (jobs_run_dir(third) / "events.jsonl").exists()


def test_training_can_be_turned_off(jobs, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ALLOW_TRAINING", "0")
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    before = len(list_runs())
    with pytest.raises(RunError, match="training is turned off"):
        jobs.launch(cfg_for(tiny_model_dir, data))
    assert len(list_runs()) == before


def test_a_signed_in_user_stops_only_their_own_runs(jobs, tiny_model_dir, tmp_path, monkeypatch):
    import json
    import os

    from tunelab.training.runfolder import process_start_time
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    busy = tmp_path / "home" / "runs" / "20260101-000000-busy"
    busy.mkdir(parents=True)
    (busy / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                  "pid_start": process_start_time(os.getpid())}))
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data), owner="ana")       # queued behind "busy"
    assert run_status(jobs_run_dir(run_id))["owner"] == "ana"
    with pytest.raises(RunError, match="is ana's run: only ana or an admin can stop it"):
        jobs.stop(run_id, by="ben")
    assert run_status(jobs_run_dir(run_id))["status"] == "queued"
    assert jobs.stop(run_id, by="ana")
    assert run_status(jobs_run_dir(run_id))["status"] == "cancelled"


def left_queued(model, data) -> str:
    """A run a stopped app left in the line: its folder, config and "queued" status."""
    import json

    from tunelab.common import workspace
    run_dir = workspace.runs_dir() / "20260101-000000-left-queued"
    run_dir.mkdir(parents=True)
    cfg_for(model, data, max_steps=2).save(run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"run_id": run_dir.name, "status": "queued",
                                                     "queued_at": time.time(), "queued_kind": "train"}))
    return run_dir.name


def test_a_queue_left_by_a_stopped_app_carries_on_when_it_starts_again(jobs, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = left_queued(tiny_model_dir, data)
    assert jobs.queued() == [run_id]
    assert jobs.resume_queue()                      # what app.py does once it listens
    st = wait_status(run_id, {"finished"})
    assert st["step"] == 2 and jobs.queued() == []


def test_two_queues_on_one_workspace_start_a_queued_run_once(jobs, tiny_model_dir, tmp_path):
    """Two Jobs objects (two apps on a shared folder, or an app and a CLI) both carry on with
    the same queue: the workspace's queue lock lets one of them start the run, once."""
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = left_queued(tiny_model_dir, data)
    other = Jobs()
    assert jobs.resume_queue() and other.resume_queue()
    wait_status(run_id, {"finished"})
    started = [ln for ln in (jobs_run_dir(run_id) / LOG_FILE).read_text().splitlines() if ln.startswith("run: ")]
    assert len(started) == 1, started
    assert jobs.queued() == []
