"""The first start: the bundled model is converted from its GGUF file during set-up
(`python -m tunelab prepare`, which `scripts/run.sh setup` and `app` run), once; until it
is, the Train tab's estimate says what it waits for instead of a bare "Estimating…"."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from tunelab.modelio import models
from tunelab.__main__ import main
from tunelab.training.estimate import wait_note

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = "smollm2-135m-instruct"


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """A workspace where nothing has been converted, and a conversion that takes no time."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    monkeypatch.delenv("TUNELAB_DEFAULT_MODEL", raising=False)
    calls = []

    def convert(spec, out):
        calls.append(out)
        for name in models._BUNDLED_FILES:
            (out / name).write_text("{}")
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return home, calls


def test_prepare_converts_once_and_is_instant_after(fresh_home, capsys):
    home, calls = fresh_home
    assert models.bundled_pending(BUNDLED)
    assert wait_note(BUNDLED).startswith("Preparing the bundled model (first use: converting it from its GGUF file")
    assert main(["prepare"]) == 0
    out, err = capsys.readouterr()
    assert "converting from its GGUF file, once" in err
    assert f"{BUNDLED}: converted in" in out and str(home / "models" / BUNDLED) in out
    assert main(["prepare"]) == 0
    assert f"{BUNDLED}: ready: {home / 'models' / BUNDLED}" in capsys.readouterr().out
    assert len(calls) == 1
    assert not models.bundled_pending(BUNDLED) and wait_note(BUNDLED) is None


def test_the_train_tab_says_it_is_preparing_the_model(fresh_home, monkeypatch):
    import gradio as gr

    from tunelab.service.jobs import Jobs
    from tunelab.ui import train_tab
    figures = {"trainable_params": 1, "total_params": 2, "trainable_pct": 50.0, "peak_memory_mb": 10.0,
               "breakdown": {"weights": 10.0}, "notes": []}
    monkeypatch.setattr(train_tab, "estimate", lambda cfg: figures)
    with gr.Blocks():
        tab = train_tab.build(Jobs())
    assert "Preparing the bundled model" in tab.estimate_box.value           # what the page opens with
    shown = list(tab.on_estimate({comp: comp.value for comp in tab.fields.values()}))
    assert "Preparing the bundled model" in shown[0] and "under a minute" in shown[0]
    assert "trainable parameters" in shown[1]                                 # then the figures


def _installed() -> bool:
    """Whether .venv is scripts/run.sh's and up to date: its stamp is the hash run.sh takes of
    the files that decide what is installed (read from run.sh, so the two cannot drift apart)."""
    stamp = ROOT / ".venv" / ".tunelab-installed"
    script = (ROOT / "scripts" / "run.sh").read_text()
    files = re.search(r'want="\$\(cat ([^|]+)\|', script).group(1).split()
    want = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in files)).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == want


def test_setup_prepares_the_model_for_the_app_and_test_does_not(tmp_path, bundled_model_dir):
    text = (ROOT / "scripts" / "run.sh").read_text()
    branches = {line.split(")")[0].strip(): line for line in text.splitlines() if line.startswith("  ") and ")" in line}
    assert "prepare_model" in branches["setup"] and "prepare_model" in branches["app"]
    assert "prepare_model" not in branches["test"]   # the tests convert into their own cache, if at all
    if not _installed():
        pytest.skip("scripts/run.sh setup would install packages first (.venv is not from run.sh)")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / BUNDLED).symlink_to(Path(bundled_model_dir).resolve(), target_is_directory=True)
    out = subprocess.run(["bash", "scripts/run.sh", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=os.environ | {"TUNELAB_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert f"{BUNDLED}: ready: {home / 'models' / BUNDLED}" in out.stdout
