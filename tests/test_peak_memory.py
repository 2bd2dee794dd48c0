"""A run's peak memory is its own process's, not the peak of whoever started it."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: ru_maxrss is inherited there")
def test_peak_memory_of_a_child_process_leaves_out_the_parents_peak():
    # The app and labs/measure.py start every training as a subprocess, often after loading
    # models themselves; Linux hands the parent's ru_maxrss on through fork + exec.
    # The child imports torch (its own peak is ~250-300 MB); the parent's is pushed past
    # 600 MB more than that, so an inherited figure cannot pass for the child's own.
    ballast = b"\x01" * (900 * 2**20)
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    code = "from tunelab.training.run import peak_memory_mb; print(peak_memory_mb('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert len(ballast) and parent_peak > 900
    assert float(out.stdout) < parent_peak - 500, (out.stdout, parent_peak)
