"""Project rules that code review alone would let slip."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for p in (ROOT / "tunelab").rglob("*.py") if "ui" not in p.relative_to(ROOT / "tunelab").parts[:-1]]


def test_the_core_never_imports_gradio():
    for p in CORE:
        assert not re.search(r"^\s*(import|from)\s+gradio", p.read_text(), re.M), p
    code = ("import sys, tunelab, tunelab.training.runs, tunelab.service.jobs, tunelab.data, tunelab.modelio.models, "
            "tunelab.__main__; print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_remote_code_is_never_trusted_and_weights_are_safetensors():
    for p in [*CORE, ROOT / "app.py"]:
        text = p.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), p
        assert "torch.load(" not in text, p


def test_the_first_page_is_built_without_importing_torch(tmp_path):
    """Building the app's page (every tab) must not wait on torch's import, which takes
    seconds on a small CPU: the app imports torch in the background once it listens."""
    import os
    code = ("import runpy, sys; runpy.run_path('app.py', run_name='tunelab_page'); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=os.environ | {"TUNELAB_HOME": str(tmp_path / "home"), "TUNELAB_STANDBY": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
