"""Nothing outlives the app, and nothing leaks the host (issue #32).

- A standby or a training run started from the app watches the app's pid (TUNELAB_APP_PID):
  when the app dies, a standby exits at once, even mid-import, and a run stops at its next
  step with a checkpoint, "interrupted" and resumable. A stand-in app (a small parent
  process) is SIGKILLed at each moment; the real `python app.py` once, as its standby imports.
- Exports (adapter, merged, GGUF) name the data by file name and hash and a local base by
  its folder's name: no file in them holds a path of the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab import RunConfig
from tunelab.common import workspace

from .browser_kit import AppServer, open_page
from .rows import SFT_ROWS, write_jsonl
from .waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- exports

def _host_paths(*paths) -> set[str]:
    """Each path as given and resolved (a /tmp that is a symlink), without trailing slashes."""
    out = set()
    for p in paths:
        out |= {str(p).rstrip("/"), str(Path(p).resolve()).rstrip("/")}
    return {p for p in out if len(p) > 1}


def _leaks(folder: Path, needles: set[str]) -> list[str]:
    """'file: path' for each host path found in any file's bytes under `folder`: text files,
    and the strings of a GGUF file's metadata and safetensors headers, which are stored as
    plain UTF-8 in the file."""
    found = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        found += [f"{f.relative_to(folder)}: {n}" for n in needles if n.encode() in data]
    return found


@pytest.fixture(scope="module")
def host_run(tiny_model_dir, tmp_path_factory):
    """A finished LoRA run whose data and base model lie in tmp folders of this host."""
    from tunelab import run
    host = tmp_path_factory.mktemp("host-private")
    model = host / "my-tiny-base"
    shutil.copytree(tiny_model_dir, model)
    data = write_jsonl(host / "pirate_sft.jsonl", SFT_ROWS)
    cfg = RunConfig.from_dict({"method": "lora", "model": str(model), "data": {"train": data},
                               "train": {"max_steps": 1, "batch_size": 4, "max_length": 64, "precision": "fp32"},
                               "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    result = run(cfg)
    needles = _host_paths(host, model, data, workspace.home(), tmp_path_factory.getbasetemp())
    return result, Path(data), needles


def _names_the_data(card: str, data: Path) -> None:
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert f"`{data.name}`, {len(SFT_ROWS)} rows, sha256 {digest[:12]}" in card, card
    assert "`my-tiny-base` (a local model folder of that name)" in card


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_an_export_names_data_by_file_and_hash_and_holds_no_host_path(host_run, tmp_path, merge):
    from tunelab.export.folder import export_folder
    from tunelab.training.runs import export_source
    result, data, needles = host_run
    out = export_folder(export_source(result.run_id), tmp_path / "export", merge=merge)
    leaks = _leaks(out, needles)
    assert not leaks, "\n".join(leaks)
    card = (out / "README.md").read_text()
    _names_the_data(card, data)
    if not merge:   # PEFT names its base in the adapter's config: the folder's name, not its path
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "my-tiny-base"


@pytest.mark.parametrize("adapter", [False, True], ids=["merged", "adapter"])
def test_a_gguf_export_holds_no_host_path(host_run, tmp_path, adapter):
    from tunelab.export import gguf_out
    from tunelab.export.ggufexport import export_gguf
    from tunelab.training.runs import export_source
    result, data, needles = host_run
    done = export_gguf(export_source(result.run_id), tmp_path / "gguf", "f16", adapter=adapter)
    out = Path(done["out"])
    leaks = _leaks(out, needles)
    assert not leaks, "\n".join(leaks)
    for f in done["files"]:   # and, read back, no metadata string names one
        meta = gguf_out.read_back(f["path"])["meta"]
        strings = [v for v in meta.values() if isinstance(v, str)]
        assert not [s for s in strings for n in needles if n in s]
    _names_the_data((out / "README.md").read_text(), data)


# --------------------------------------------------------------------------- children end with the app

# A stand-in for the app: starts the command it is given as the app starts its children
# (TUNELAB_APP_PID set to its own pid, a session of their own, stdin a pipe it holds),
# prints the child's pid, and waits to be killed.
STAND_IN_APP = """
import os, subprocess, sys, time
env = dict(os.environ, TUNELAB_APP_PID=str(os.getpid()))
log = open(sys.argv[1], "ab")
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(3600)
"""


def _start_under_stand_in_app(cmd: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ)
    env.pop("TUNELAB_APP_PID", None)
    app = subprocess.Popen([sys.executable, "-c", STAND_IN_APP, str(log), *cmd], stdout=subprocess.PIPE,
                           text=True, env=env, cwd=ROOT)
    return app, int(app.stdout.readline())


def _kill_app(app: subprocess.Popen) -> None:
    app.send_signal(signal.SIGKILL)   # no chance to close or signal anything: what a crash or `kill -9` does
    app.wait()


def _gone(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE   # ended; its new parent has not reaped it
    except psutil.NoSuchProcess:
        return True


def _end(pid: int) -> None:
    """Clean up a child a failed test left behind."""
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)


def _imports_torch(pid: int) -> bool:
    """Whether `pid` has begun loading torch's native library (its import takes seconds more)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_standby_whose_app_is_killed_while_it_imports_exits(tmp_path):
    app, child = _start_under_stand_in_app([sys.executable, "-m", "tunelab.standby"], tmp_path / "log")
    try:
        wait_for(lambda: _imports_torch(child) or _gone(child), "the standby's import of torch")
        assert not _gone(child), (tmp_path / "log").read_text()
        _kill_app(app)
        # It would read end of input only once its imports are done; it must not wait for that.
        wait_for(lambda: _gone(child), "the standby's exit")
    finally:
        _kill_app(app)
        _end(child)


def _train_cmd(tmp_path: Path, tiny_model_dir: str, run_id: str) -> list[str]:
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    cfg = RunConfig.from_dict({"method": "lora", "model": tiny_model_dir, "data": {"train": data},
                               "train": {"max_steps": 1000, "batch_size": 4, "max_length": 64, "save_steps": 1,
                                         "precision": "fp32"}})
    cfg.save(tmp_path / "cfg.yaml")
    return [sys.executable, "-m", "tunelab", "train", str(tmp_path / "cfg.yaml"), "-q", "--run-id", run_id]


def test_a_run_whose_app_is_killed_while_it_trains_stops_interrupted_and_resumable(tiny_model_dir, tmp_path):
    from tunelab.training.checkpoints import last_checkpoint
    from tunelab.training.events import read_events
    from tunelab.training.runs import run_status
    run_id = "20261206-000000-orphan"
    run_dir = workspace.runs_dir() / run_id
    app, child = _start_under_stand_in_app(_train_cmd(tmp_path, tiny_model_dir, run_id), tmp_path / "log")
    try:
        wait_for(lambda: last_checkpoint(run_dir) is not None or _gone(child), "the run's first checkpoint")
        assert not _gone(child), (tmp_path / "log").read_text()
        _kill_app(app)
        wait_for(lambda: _gone(child), "the run's exit")
    finally:
        _kill_app(app)
        _end(child)
    st = run_status(run_dir)
    assert st["status"] == "interrupted", (st, (tmp_path / "log").read_text())
    step = st["step"]
    assert 0 < step < 1000
    assert st["error"] == (f"the app that started it ended at step {step}; resume it from the Runs tab or "
                           f"`python -m tunelab resume {run_id}`")
    assert st["resumable"] and last_checkpoint(run_dir).name == f"checkpoint-{step}"   # saved as it stopped
    assert read_events(run_dir)[-1] | {"time": 0} == read_events(run_dir)[-1] | {
        "type": "finish", "status": "interrupted", "step": step, "error": st["error"], "time": 0}


def test_a_run_whose_app_is_killed_before_it_trains_ends_at_once_interrupted(tiny_model_dir, tmp_path):
    """As the app starts a run: its folder and config.yaml exist before the process does."""
    from tunelab.training.runfolder import Status
    from tunelab.training.runs import run_status
    run_id = "20261206-000000-orphan-early"
    run_dir = workspace.runs_dir() / run_id
    cmd = _train_cmd(tmp_path, tiny_model_dir, run_id)
    run_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "cfg.yaml", run_dir / "config.yaml")
    Status(run_dir, run_id=run_id).update(status="starting", step=0)
    app, child = _start_under_stand_in_app(cmd, tmp_path / "log")
    try:
        _kill_app(app)
        wait_for(lambda: _gone(child), "the run's exit")
    finally:
        _end(child)
    st = run_status(run_dir)
    assert st["status"] == "interrupted", (st, (tmp_path / "log").read_text())
    assert st["error"] == "the app that started it ended before training began; nothing was trained: start it again"
    assert not st["resumable"] and st["step"] == 0


def test_the_real_app_killed_while_its_standby_imports_leaves_no_standby(browser, tiny_model_dir, tmp_path):
    """`python app.py` as a user starts it: the page's load starts the standby; the app is
    SIGKILLed while the standby imports torch."""
    import psutil

    server = AppServer(tmp_path, tiny_model_dir).start()
    app, child = psutil.Process(server.proc.pid), None

    def standby():
        kids = [p for p in app.children() if "tunelab.standby" in " ".join(p.cmdline())]
        return kids[0] if kids else None
    try:
        with open_page(browser, server):
            wait_for(lambda: standby() is not None, "the app's standby")
            child = standby()
            assert child.environ().get("TUNELAB_APP_PID") == str(app.pid)
            wait_for(lambda: _imports_torch(child.pid) or _gone(child.pid), "the standby's import of torch")
            assert not _gone(child.pid)
            _kill_app(server.proc)
        wait_for(lambda: _gone(child.pid), "the standby's exit")
    finally:
        server.stop()
        if child is not None:
            _end(child.pid)
