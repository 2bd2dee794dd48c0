"""labs/matrix.py: a lab's check across CPU kernels, threads and seeds.

The slow test is CI's slice of the matrix: lab 4 (the lesson that once broke on an AVX2
CPU) trained and checked with torch's kernels held to AVX2, on one thread, for two seeds.
A change that breaks the lesson on such a machine fails it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _matrix():
    return importlib.import_module("labs.matrix")   # the repository root is the tests' root


def _row(**kw):
    row = {"lab": 4, "key": "dpo", "variant": "card", "cap": "avx2", "threads": 1, "seed": 0, "precision": "fp32",
           "s_per_step": 5.0, "process_minutes": 4.0, "peak_memory_mb": 2500, "tuned": {"words": 20, "facts": 0.9},
           "thresholds": {"words": ["<=", 30], "facts": [">=", 0.6]}, "margin": {"words": 10, "facts": 0.3},
           "passes": True}
    return row | kw


def test_margins_are_inside_positive_and_outside_negative():
    m = _matrix()
    check = {"words": ("<=", 30.0), "facts": (">=", 0.6)}
    assert m.margins(check, {"words": 44, "facts": 0.875}) == {"words": -14.0, "facts": 0.275}
    assert m.margins(check, {"words": 12}) == {"words": 18.0, "facts": None}


def test_summary_gives_ranges_over_cells_per_machine_class():
    m = _matrix()
    rows = [_row(seed=0), _row(seed=1, tuned={"words": 28, "facts": 0.7}, margin={"words": 2, "facts": 0.1},
                               s_per_step=7.0, threads=2),
            _row(seed=2, passes=False, tuned={"words": 44, "facts": 0.9}, margin={"words": -14, "facts": 0.3}),
            _row(seed=3, load=5.0, process_minutes=14.0),   # shared its cores: scores count, times don't
            _row(cap="avx512", precision="bf16", s_per_step=1.5)]
    s = m.summarise(rows)
    g = s["4:card:avx2-fp32"]
    assert (g["cells"], g["passed"]) == (4, 3)
    assert g["tuned"] == {"words": [20, 44], "facts": [0.7, 0.9]}
    assert g["margin"] == {"words": -14, "facts": 0.1}
    assert g["s_per_step"] == [5.0, 7.0] and g["threads"] == [1, 2] and g["seeds"] == [0, 1, 2, 3]
    assert g["process_minutes"] == [4.0, 4.0]   # the crowded cell's 14 minutes measured the crowd
    only_crowded = m.summarise([_row(load=5.0, process_minutes=14.0)])["4:card:avx2-fp32"]
    assert only_crowded["process_minutes"] == [14.0, 14.0] and "timed" not in only_crowded
    # the rows timed no check: unmeasured, not "0 minutes"
    assert g["timed"] == {"1": {"process_minutes": [4.0, 4.0], "check_minutes": None},
                          "2": {"process_minutes": [4.0, 4.0], "check_minutes": None}}
    timed = m.summarise([_row(check_minutes=0.5), _row(seed=1, check_minutes=0.7), _row(seed=2)])
    assert timed["4:card:avx2-fp32"]["timed"]["1"]["check_minutes"] == [0.5, 0.7]
    assert s["4:card:avx512-bf16"]["cells"] == 1
    assert "1/1" in m.table({"summary": s}) and "3/4" in m.table({"summary": s})


def test_kernels_the_cpu_lacks_are_not_offered():
    from tunelab.modelio.loading import cpu_flags
    m = _matrix()
    flags = cpu_flags()
    assert m.available("avx2") == ("avx2" in flags)
    assert m.available("avx512") == ("avx512f" in flags)


@pytest.mark.slow
def test_ci_slice_lab4_passes_with_avx2_kernels_on_two_seeds(bundled_model_dir, tmp_path):
    out = tmp_path / "matrix.json"
    p = subprocess.run([sys.executable, "-m", "labs.matrix", "--lab", "4", "--variant", "card",
                        "--cap", "avx2", "--threads", "1", "--seeds", "0", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=3000)
    print(p.stdout[-4000:], p.stderr[-3000:])
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    for r in rows:
        assert r["capability"] == "AVX2" and r["precision"] == "fp32" and r["threads"] == 1
        assert r["passes"], f"seed {r['seed']}: {r['misses']}"
        assert all(v > 0 for v in r["margin"].values()), r["margin"]
    assert p.returncode == 0


def _summary(cls: str, minutes: float, check: float = 1.2) -> dict:
    out = {}
    for variant in ("card", "kto", "orpo"):
        out[f"6:{variant}:{cls}"] = {"lab": 6, "variant": variant, "class": cls, "cells": 6, "passed": 6,
                                     "tuned": {"words": [12, 22], "facts": [0.75, 1.0]},
                                     "margin": {"words": 8, "facts": 0.15}, "s_per_step": [3.0, 4.0],
                                     "process_minutes": [minutes - 1, minutes], "check_minutes": [check - 0.5, check],
                                     "peak_memory_mb": [2300, 2800], "threads": [1, 2], "seeds": [0, 1, 2],
                                     "timed": {"2": {"process_minutes": [minutes - 1, minutes],
                                                     "check_minutes": [check - 0.5, check]},
                                               "1": {"process_minutes": [minutes, minutes * 2],
                                                     "check_minutes": [check, check * 2]}}}
    return out


def cpushare_cores() -> int:
    from tunelab.common.cpushare import cores
    return cores()


def test_time_promises_come_from_this_machines_class():
    from tunelab.teach import labs
    from tunelab.ui import labs_logic
    lab = labs.get_lab("feedback")
    both = _summary("avx2-fp32", 4.0) | _summary("avx512-bf16", 1.5)
    assert labs.lab_minutes(lab, "avx2-fp32", both, cores=2) == (12.0, "avx2-fp32")   # card + its two arms
    assert labs.lab_minutes(lab, "avx2-fp32", both, cores=1) == (24.0, "avx2-fp32")   # one core: 1-thread cells
    assert labs.lab_minutes(lab, "avx2-fp32", both, cores=16) == (12.0, "avx2-fp32")  # the widest measured
    assert labs.lab_minutes(lab, "avx512-bf16", both, cores=2) == (4.5, "avx512-bf16")
    if cpushare_cores() >= 2:
        assert labs_logic.time_line(lab, both, "avx2-fp32") == ("Expected time here (AVX2 kernels, fp32)", "~12 min")
    # a class nobody timed: the card's own figure, saying so
    label, value = labs_logic.time_line(lab, both, "default-fp32")
    assert "not yet timed on default-fp32" in label and value == f"~{lab.expected['minutes_fp32']:g} min"
    assert labs.lab_minutes(lab, "avx2-fp32", both, field="check_minutes", cores=2) == (3.6, "avx2-fp32")
    # a class that timed the arms but not the card run: no sum that leaves a run out
    partial = {k: v for k, v in both.items() if k != "6:card:avx2-fp32"}
    assert labs.lab_minutes(lab, "avx2-fp32", partial, cores=2) == (lab.expected["minutes_fp32"], None)
    # nothing measured: the card's own figure, fp32's where this machine computes in fp32
    assert labs.lab_minutes(lab, "avx2-fp32", {}) == (lab.expected["minutes_fp32"], None)
    assert labs.lab_minutes(lab, "avx512-bf16", {}) == (lab.minutes, None)
    assert labs.lab_minutes(lab, "avx2-fp32", {}, field="check_minutes") == (None, None)


def test_the_card_view_reports_each_class_with_ranges_over_seeds():
    from tunelab.teach import labs
    from tunelab.ui import labs_logic
    lab = labs.get_lab("feedback")
    text = labs_logic.class_lines(lab, _summary("avx2-fp32", 4.0))
    assert "AVX2 kernels, fp32: 6/6 runs pass (seeds 0, 1, 2; 1, 2 threads)" in text
    assert "words 12–22, facts 75 %–100 %" in text and "KTO, AVX2" in text and "3.0–4.0 s a step" in text


def test_measure_runs_are_filed_as_cells_of_this_machines_class(tmp_path):
    from tunelab.teach.labs import get_lab, machine_class
    m = _matrix()
    lab = get_lab("dpo")
    check = {"base": {"words": 52.5, "facts": 0.625}, "tuned": {"words": 12, "facts": 0.875}, "misses": []}
    push = {"base": check["base"], "tuned": {"words": 9, "facts": 0.25}, "misses": ["tuned facts 25 % is below 60 %"]}
    common = {"s_per_step": 4.8, "process_minutes": 3.9, "check_minutes": 1.1, "peak_memory_mb": 2600,
              "final_loss": 0.2, "precision": "fp32"}
    rows = [{"variant": "card", "check": check, **common}, {"variant": "push", "check": push, **common},
            {"variant": "r=4", "check": check, **common}]   # not a verdict: left out
    out = tmp_path / "matrix.json"
    m.add_measured(lab, rows, out)
    if machine_class().rpartition("-")[0] not in m.CAPS:
        assert not out.exists()
        return
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == ["card", "push"]
    card, step = data["rows"]
    assert card["passes"] and card["margin"] == {"words": 18.0, "facts": 0.275}
    assert step["passes"] and step["breaks"] == ["facts"]   # meant to break facts, and did
    assert card["source"] == "labs/measure.py" and card["seed"] == lab.config.train.seed
    m.add_measured(lab, rows[:1], out)   # measured again: the cell is replaced, not added
    assert len(json.loads(out.read_text())["rows"]) == 2


def test_a_card_says_when_its_figures_predate_its_data():
    from tunelab.teach import labs
    name = "labs/data/pirate_sft.jsonl"
    now = labs.file_sha(ROOT / name)
    fresh = {"rows": [{"lab": 2, "variant": "card", "data": {name: now}}]}
    old = {"rows": [{"lab": 2, "variant": "card", "data": {name: "0" * 64}}, {"lab": 3, "data": {name: "1" * 64}}]}
    assert labs.stale_data(2, fresh) == []
    assert labs.stale_data(2, old) == [name]
    assert labs.stale_data(2, {"rows": [{"lab": 2, "variant": "card"}]}) == []   # no fingerprint: nothing to say


@pytest.mark.parametrize("held", ["", "default", "avx2", "avx512"])
def test_this_machines_class_is_told_without_torch_as_torch_tells_it(held):
    """The Labs tab names this machine's class while the first page is built, before torch
    is imported: the CPU's flags must give the class torch's own kernels and `auto` give."""
    from tunelab.modelio.loading import cpu_flags
    if held == "avx512" and "avx512f" not in cpu_flags():
        held = "avx2"   # a CPU cannot be raised above what it has (torch would believe it anyway)
    code = ("import sys; from tunelab.teach.labs import machine_class; before = machine_class(); "
            "assert 'torch' not in sys.modules; import torch; print(before, machine_class())")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"} | (
        {"ATEN_CPU_CAPABILITY": held} if held else {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    without, with_torch = done.stdout.split()
    assert without == with_torch
    if held in ("default", "avx2"):
        assert without == f"{held}-fp32"   # held below AVX-512: bf16 would be emulated
