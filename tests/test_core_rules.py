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
