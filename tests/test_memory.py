"""The memory gate: a run whose estimated peak is above the memory free now is refused up
front, by the app (jobs.launch, and a queued run at its turn) and by the CLI, with the
estimate, what is free and what to lower; the CLI's --ignore-memory-check starts it anyway.
Before refusing, a batch that would not fit is split into micro-batches that do, with the
same examples a step (train.auto_micro_batch), and the Train tab and the CLI say so."""

import shutil
from pathlib import Path

import pytest
import yaml

from tunelab.service import jobs
from tunelab.service.jobs import Jobs
from tunelab.training import memory
from tunelab.common import workspace
from tunelab.__main__ import build_parser, main
from tunelab.training.estimate import estimate
from tunelab.training.runs import run_status

from .rows import SFT_ROWS, lora_cfg, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def tight(monkeypatch, mb: float = 100.0) -> list:
    """Pretend the machine has `mb` MB free; returns the (device, this_process) of each question."""
    asked = []

    def free(device, this_process=False):
        asked.append((device, this_process))
        return mb, "RAM available"
    monkeypatch.setattr(memory, "free_memory_mb", free)
    return asked


def run_dirs() -> set:
    return {d.name for d in workspace.runs_dir().iterdir()}


def test_the_app_refuses_a_run_that_cannot_fit_and_names_the_figures(tiny_model_dir, tmp_path, monkeypatch):
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS), batch_size=6)
    need = estimate(cfg)["peak_memory_mb"]
    before = run_dirs()
    asked = tight(monkeypatch)
    with pytest.raises(memory.NotEnoughMemory) as refused:
        Jobs().launch(cfg)
    text = str(refused.value)
    assert f"needs about {memory.gb(need)} at its peak" in text and "100 MB is RAM available" in text
    for way in ("train.batch_size (now 6)", "train.max_length", "train.gradient_checkpointing", "use qlora"):
        assert way in text, way
    assert asked == [("cpu", False)]     # the app is not the process that will train
    assert run_dirs() == before          # nothing was created


def test_a_run_that_fits_passes_on_this_machine(tiny_model_dir, tmp_path):
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))
    assert memory.check_memory(cfg)["peak_memory_mb"] > 0   # the real free memory: a tiny run fits


def test_a_queued_run_is_checked_when_its_turn_comes(tiny_model_dir, tmp_path, monkeypatch):
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))
    monkeypatch.setattr(jobs, "training_now", lambda: ["someone-elses-run"])   # the one slot is taken
    tight(monkeypatch)
    run_id = Jobs().launch(cfg)   # queued, not refused: the other run's memory is not free yet
    assert run_status(workspace.runs_dir() / run_id)["status"] == "queued"
    monkeypatch.setattr(jobs, "training_now", lambda: [])                      # its turn
    Jobs().start_queued()
    st = run_status(workspace.runs_dir() / run_id)
    assert st["status"] == "failed"
    assert st["error"].startswith("could not start from the queue: Not enough memory to start this run")


def test_the_cli_refuses_and_the_override_lets_it_through(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(lora_cfg(tiny_model_dir, data, max_steps=1).to_dict()))
    before = run_dirs()
    asked = tight(monkeypatch)
    assert main(["train", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: Not enough memory to start this run" in err and "100 MB is RAM available" in err
    assert "(--ignore-memory-check starts it anyway)" in err
    assert asked == [("cpu", True)]      # the CLI's own process becomes the run
    assert run_dirs() == before

    assert main(["train", str(path), "-q", "--ignore-memory-check"]) == 0
    new = run_dirs() - before
    assert len(new) == 1 and run_status(workspace.runs_dir() / new.pop())["status"] == "finished"


def test_the_override_is_documented():
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--ignore-memory-check" in train_help and "free" in train_help
    assert "--ignore-memory-check" in (ROOT / "docs" / "methods.md").read_text()


def test_on_a_gpu_the_chosen_device_is_asked_and_a_new_context_counted(monkeypatch, tiny_model_dir, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (2 * 2**30, 80 * 2**30) if i == 1 else (0, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Test GPU")
    monkeypatch.setenv("LOCAL_RANK", "1")   # under accelerate launch: this process's GPU
    assert memory.free_memory_mb("cuda") == (2048.0, "free on GPU 1 (Test GPU, 80.0 GB in all)")

    import tunelab.training.estimate
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))
    est = estimate(cfg) | {"device": "cuda", "peak_memory_mb": 2048.0 - memory.CUDA_CONTEXT_MB + 1}
    monkeypatch.setattr(tunelab.training.estimate, "estimate", lambda c: est)
    assert memory.check_memory(cfg, this_process=True) is est           # its context already exists
    with pytest.raises(memory.NotEnoughMemory, match=r"is free on GPU 1 \(Test GPU"):
        memory.check_memory(cfg)                                        # the app: the run adds one


@pytest.mark.parametrize("decisions, starts", [([True, False], False), ([False, True], True)])
def test_launch_decides_once_whether_a_run_queues_and_checks_the_one_that_starts(
        decisions, starts, tiny_model_dir, tmp_path, monkeypatch):
    """A training run can end between two looks at the queue: launch looks once, and a run
    that starts is the run whose memory was checked (it used to look twice, and could start
    a run it had not checked)."""
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))
    answers = iter(decisions)
    monkeypatch.setattr(jobs, "_must_queue", lambda: next(answers))
    checked, spawned = [], []
    monkeypatch.setattr(jobs, "fit_memory", lambda c: checked.append(c.to_dict()) or memory.Fit(c, None))
    monkeypatch.setattr(Jobs, "_spawn", lambda self, run_dir, cmd, c, **kw: spawned.append(run_dir.name) or run_dir.name)
    monkeypatch.setattr(Jobs, "_ensure_scheduler", lambda self: None)
    run_id = Jobs().launch(cfg)
    try:
        assert spawned == ([run_id] if starts else [])
        assert checked == ([cfg.to_dict()] if starts else [])
        if not starts:
            assert run_status(workspace.runs_dir() / run_id)["status"] == "queued"
        assert next(answers) == decisions[1]   # the second answer was never asked for
    finally:
        shutil.rmtree(workspace.runs_dir() / run_id)   # a queued run left behind would queue the next test's


def test_a_resume_that_cannot_fit_is_refused_by_the_app_and_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Resuming loads the same model and batch as the run's start: it is checked the same way."""
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS), batch_size=6)
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))   # an interrupted run of its own, out of the others' way
    run_dir = workspace.runs_dir() / "20260101-000000-resume-me"
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.yaml")
    (run_dir / "status.json").write_text('{"status": "interrupted", "step": 2}')
    asked = tight(monkeypatch)
    with pytest.raises(memory.NotEnoughMemory, match="100 MB is RAM available"):
        Jobs().launch_resume(run_dir.name)
    assert asked == [("cpu", False)] and run_status(run_dir)["status"] == "interrupted"   # nothing started
    assert main(["resume", run_dir.name]) == 2
    err = capsys.readouterr().err
    assert "Not enough memory" in err and "--ignore-memory-check resumes it anyway" in err
    assert asked[-1] == ("cpu", True)     # the CLI is the process that will train
    assert run_status(run_dir)["status"] == "interrupted"


def between(cfg, small: int, big: int) -> float:
    """MB free that fits a micro-batch of `small` but not the batch of `big` (their estimates' midpoint)."""
    lo = estimate(cfg_with(cfg, batch_size=small))["peak_memory_mb"]
    hi = estimate(cfg_with(cfg, batch_size=big))["peak_memory_mb"]
    assert lo < hi
    return (lo + hi) / 2


def cfg_with(cfg, **train):
    import copy
    out = copy.deepcopy(cfg)
    for k, v in train.items():
        setattr(out.train, k, v)
    return out


def test_a_batch_that_would_not_fit_trains_as_micro_batches_of_the_same_step(tiny_model_dir, tmp_path, monkeypatch):
    rows = SFT_ROWS * 3
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", rows), batch_size=8, grad_accum=1)
    tight(monkeypatch, between(cfg, 4, 8))   # 8 does not fit, 4 does
    fit = memory.fit_memory(cfg)
    assert (fit.cfg.train.batch_size, fit.cfg.train.grad_accum) == (4, 2)
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (8, 1)   # the caller's config is left as it was
    assert "A batch of 8 would need about" in fit.note and "2 micro-batches of 4" in fit.note
    assert "the same 8 examples a step" in fit.note

    # The app: the run folder holds the config that runs, and the note (no process started here).
    monkeypatch.setattr(jobs, "_must_queue", lambda: False)
    monkeypatch.setattr(Jobs, "_spawn", lambda self, run_dir, cmd, c, **kw: run_dir.name)
    run_id = Jobs().launch(cfg)
    try:
        saved = yaml.safe_load((workspace.runs_dir() / run_id / "config.yaml").read_text())["train"]
        assert (saved["batch_size"], saved["grad_accum"]) == (4, 2)
        assert jobs.memory_note(run_id) == fit.note
    finally:
        shutil.rmtree(workspace.runs_dir() / run_id)

    tight(monkeypatch, between(cfg, 1, 2))   # only one example at a time fits: 8 micro-batches of 1
    assert (memory.fit_memory(cfg).cfg.train.batch_size, memory.fit_memory(cfg).cfg.train.grad_accum) == (1, 8)

    cfg.train.auto_micro_batch = False       # turned off: refused as before
    with pytest.raises(memory.NotEnoughMemory, match="train.batch_size"):
        memory.fit_memory(cfg)


def test_a_batch_larger_than_the_data_is_refused_not_split(tiny_model_dir, tmp_path, monkeypatch):
    """Batch 1000 on 24 rows holds the 24 rows: split into micro-batches of a divisor of 1000,
    each step would go through the data some 40 times. It is refused, naming what fits."""
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS * 3), batch_size=1000)
    tight(monkeypatch, between(cfg_with(cfg, batch_size=24), 1, 24))
    with pytest.raises(memory.NotEnoughMemory, match=r"train.batch_size \(1000, of which 24 rows fit in a batch\)"):
        memory.fit_memory(cfg)


def test_micro_batches_of_an_odd_batch_divide_it(tiny_model_dir, tmp_path, monkeypatch):
    cfg = lora_cfg(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", SFT_ROWS * 3), batch_size=6, grad_accum=2)
    tight(monkeypatch, between(cfg, 3, 4))   # 4 would fit, but does not divide 6: 3 does
    fit = memory.fit_memory(cfg)
    assert (fit.cfg.train.batch_size, fit.cfg.train.grad_accum) == (3, 4)
    assert "the same 12 examples a step" in fit.note


def test_the_cli_says_when_it_trains_in_micro_batches_and_they_train_the_same_step(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Gradient accumulation keeps the step: the first step's loss and gradient norm are the
    same as the whole batch's, within float error."""
    from tunelab.training.events import read_events
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS[:4])
    cfg = lora_cfg(tiny_model_dir, data, batch_size=4, max_steps=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))

    def first_step(before):
        new = run_dirs() - before
        assert len(new) == 1
        run_dir = workspace.runs_dir() / new.pop()
        return yaml.safe_load((run_dir / "config.yaml").read_text())["train"], \
            next(e for e in read_events(run_dir) if e["type"] == "step")

    before = run_dirs()
    assert main(["train", str(path), "-q"]) == 0   # the real free memory: it fits as set
    whole_cfg, whole = first_step(before)
    assert "micro-batches" not in capsys.readouterr().err

    tight(monkeypatch, between(cfg, 2, 4))
    before = run_dirs()
    assert main(["train", str(path), "-q"]) == 0
    assert "it trains as 2 micro-batches of 2" in capsys.readouterr().err
    micro_cfg, micro = first_step(before)
    assert (whole_cfg["batch_size"], whole_cfg["grad_accum"]) == (4, 1)
    assert (micro_cfg["batch_size"], micro_cfg["grad_accum"]) == (2, 2)
    assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    assert micro["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-3)


def test_the_train_tabs_estimate_says_what_start_will_do():
    from tunelab.ui.train_logic import estimate_html
    est = {"trainable_params": 10, "total_params": 100, "trainable_pct": 10.0, "peak_memory_mb": 900.0,
           "breakdown": {"weights": 500.0}, "notes": []}
    assert "At Start: it trains as 2 micro-batches" in estimate_html(est, "it trains as 2 micro-batches")
    assert "Not enough memory to start" in estimate_html(est, None, "Not enough memory to start this run")
    assert "At Start" not in estimate_html(est)


def test_the_train_tab_says_before_start_that_the_batch_will_train_as_micro_batches(monkeypatch):
    """The estimate panel asks the same fit as Start: micro-batches where they fit, else the refusal."""
    import gradio as gr

    import tunelab.training.estimate as estimate_module
    from tunelab.ui import train_tab

    def figures(cfg):   # 100 MB, and 50 MB more a row of the batch
        b = cfg.train.batch_size
        return {"trainable_params": 1, "total_params": 2, "trainable_pct": 50.0, "peak_memory_mb": 100.0 + 50 * b,
                "breakdown": {"weights": 100.0}, "notes": [], "device": "cpu", "batch_size": b, "seq_length": 64}
    monkeypatch.setattr(train_tab, "estimate", figures)
    monkeypatch.setattr(estimate_module, "estimate", figures)   # what the fit asks for each micro-batch
    monkeypatch.setattr(train_tab, "wait_note", lambda model: None)
    with gr.Blocks():
        tab = train_tab.build(Jobs())
    values = {comp: comp.value for comp in tab.fields.values()}
    values[tab.fields["train.batch_size"]] = 8

    tight(monkeypatch, 100 + 50 * 4 + 1)     # 8 rows do not fit, 4 do
    shown = list(tab.on_estimate(values))[-1]
    assert "trainable parameters" in shown and "At Start: A batch of 8 would need about" in shown
    assert "it trains as 2 micro-batches of 4" in shown

    tight(monkeypatch, 100 + 50 * 8 + 1)     # it fits as set: nothing to say
    assert "At Start" not in list(tab.on_estimate(values))[-1]

    tight(monkeypatch, 120)                  # not even one row fits
    shown = list(tab.on_estimate(values))[-1]
    assert "Not enough memory to start this run" in shown and "At Start" not in shown
