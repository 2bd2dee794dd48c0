"""Runs started the way the app starts them: a subprocess per run, followed through files."""

import time

import pytest

from tunelab import RunConfig, jobs
from tunelab.data import DataError
from tunelab.events import read_events
from tunelab.runs import list_runs, run_status

from .test_methods import SFT_ROWS, write_jsonl


def cfg_for(model, data, **train):
    t = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp32"} | train
    return RunConfig.from_dict({"method": "lora", "model": model, "data": {"train": data}, "train": t})


def wait_status(run_id, want, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = run_status(jobs_run_dir(run_id))
        if st["status"] in want:
            return st
        time.sleep(0.2)
    raise AssertionError(f"{run_id} never reached {want}: {run_status(jobs_run_dir(run_id))}")


def jobs_run_dir(run_id):
    from tunelab.runs import find_run
    return find_run(run_id)


def test_launch_follow_and_stop(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for(tiny_model_dir, data, max_steps=1000))
    assert run_status(jobs_run_dir(run_id))["status"] in ("starting", "running")
    t0 = time.time()
    while not any(e["type"] == "step" for e in read_events(jobs_run_dir(run_id))):
        assert time.time() - t0 < 180
        time.sleep(0.2)
    t_stop = time.time()
    assert jobs.stop(run_id, wait=True)
    st = wait_status(run_id, {"stopped"}, timeout=30)
    assert time.time() - t_stop < 20
    assert 0 < st["step"] < 1000
    assert (jobs_run_dir(run_id) / "command.txt").read_text().startswith("python -m tunelab train ")
    assert jobs.reap() == []
    assert jobs.stop(run_id) is False  # already stopped


def test_bad_data_fails_before_any_process(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    before = len(list_runs())
    with pytest.raises(DataError, match="bad.jsonl"):
        jobs.launch(cfg_for(tiny_model_dir, str(bad)))
    assert len(list_runs()) == before


def test_a_child_that_dies_before_training_is_failed_with_its_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    run_id = jobs.launch(cfg_for("./no/such/model", data))
    st = wait_status(run_id, {"failed"}, timeout=120)
    assert "model folder not found" in st["error"]
