"""A run's peak memory is its own process's, not the peak of whoever started it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: ru_maxrss is inherited there")
def test_peak_memory_of_a_child_process_leaves_out_the_parents_peak():
    # The app and labs/measure.py start every training as a subprocess, often after loading
    # models themselves; Linux hands the parent's ru_maxrss on through fork + exec.
    ballast = b"\x01" * (300 * 2**20)   # the parent's peak is now over 300 MB
    code = "import importlib; print(importlib.import_module('tunelab.training.run')._peak_memory_mb('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert len(ballast) and float(out.stdout) < 200
