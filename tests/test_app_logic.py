"""The app's plain logic without a browser: the shared helpers (tunelab/ui/logic.py:
formatting, the model-path allow list) and the Train tab's (train_logic.py: widget values
to a config, estimate and progress rendering, the multi-GPU command), the arena's export
folder, and the app building. The Runs and Data tabs' logic: test_runs_data_logic.py."""

import json
import os
import time
from pathlib import Path

import pytest

from tunelab import RunConfig
from tunelab.common import workspace
from tunelab.training.config import METHODS, ConfigError
from tunelab.data import DataError
from tunelab.ui import arena_logic, data_logic, logic, train_logic

from .rows import SFT_ROWS, write_jsonl


# --------------------------------------------------------------------------- formatting

def test_formatting():
    assert logic.fmt_count(4_886_016) == "4.89 M"
    assert logic.fmt_count(134_515_008) == "134.5 M"
    assert logic.fmt_count(1_500_000_000) == "1.50 B"
    assert logic.fmt_count(950) == "950"
    assert logic.fmt_count(None) == "—"
    assert logic.fmt_mb(812.4) == "812 MB" and logic.fmt_mb(0.06) == "61 KB" and logic.fmt_mb(0.1) == "0.1 MB"
    assert logic.fmt_mb(2048) == "2.00 GB"
    assert logic.fmt_duration(83) == "1:23"
    assert logic.fmt_duration(3725) == "1:02:05"
    assert logic.fmt_duration(None) == "—"
    assert logic.fmt_num(2.345678) == "2.346"
    assert logic.fmt_num(float("nan")) == "—"


def test_every_method_is_explained_and_shows_its_groups():
    for m in METHODS:
        assert train_logic.METHOD_INFO[m][1] in train_logic.method_html(m).replace("&#x27;", "'")
    off = {"dpo": False, "kto": False, "orpo": False}
    assert train_logic.visible_groups("full", "lora") == {"lora": False, "qlora": False, **off}
    assert train_logic.visible_groups("lora", "lora") == {"lora": True, "qlora": False, **off}
    assert train_logic.visible_groups("qlora", "lora") == {"lora": True, "qlora": True, **off}
    assert train_logic.visible_groups("dpo", "qlora") == {"lora": True, "qlora": True, **off, "dpo": True}
    assert train_logic.visible_groups("dpo", "full") == {"lora": False, "qlora": False, **off, "dpo": True}
    assert train_logic.visible_groups("kto", "lora") == {"lora": True, "qlora": False, **off, "kto": True}
    assert train_logic.visible_groups("orpo", "full") == {"lora": False, "qlora": False, **off, "orpo": True}


# --------------------------------------------------------------------------- models

def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_model_allow_list(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_MODEL_DIRS", raising=False)
    monkeypatch.delenv("TUNELAB_DEFAULT_MODEL", raising=False)
    assert logic.check_model("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert logic.check_model(" HuggingFaceTB/SmolLM2-360M ") == "HuggingFaceTB/SmolLM2-360M"
    inside = _fake_model(workspace.home() / "my-models" / "m1")
    assert logic.check_model(str(inside)) == str(inside.resolve())

    outside = _fake_model(tmp_path / "elsewhere" / "m2")
    with pytest.raises(ConfigError, match=r"^model: .*outside the folders.*TUNELAB_MODEL_DIRS"):
        logic.check_model(str(outside))
    # A symlink inside the workspace that points outside is judged by its target.
    link = workspace.home() / "sneaky"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="outside the folders"):
        logic.check_model(str(link))
    with pytest.raises(ConfigError, match="outside the folders"):
        logic.check_model(str(workspace.home() / os.path.relpath(outside, workspace.home())))  # home/../..

    monkeypatch.setenv("TUNELAB_MODEL_DIRS", os.pathsep.join(["/nonexistent", str(tmp_path / "elsewhere")]))
    assert logic.check_model(str(outside)) == str(outside.resolve())

    monkeypatch.delenv("TUNELAB_MODEL_DIRS")
    monkeypatch.setenv("TUNELAB_DEFAULT_MODEL", str(outside))
    assert logic.default_model() == str(outside)
    assert logic.model_choices()[0] == str(outside)
    assert logic.check_model(str(outside)) == str(outside.resolve())  # the default model's folder is allowed

    for bad in ("", "   ", "not a model!", "./no/such/folder"):
        with pytest.raises(ConfigError, match="^model: "):
            logic.check_model(bad)
    with pytest.raises(ConfigError, match="^model: .*no config.json"):
        logic.check_model(str(workspace.runs_dir()))


# --------------------------------------------------------------------------- datasets and config

def test_dataset_choices_and_picking(tmp_path):
    values = [v for _, v in data_logic.dataset_choices()]
    assert any(v.endswith("pirate_sft.jsonl") for v in values)
    dpo = next(v for v in values if v.endswith("concise_dpo.jsonl"))
    sft = next(v for v in values if v.endswith("pirate_sft.jsonl"))
    assert train_logic.pick_dataset("dpo", sft, data_logic.dataset_choices()) == dpo
    assert train_logic.pick_dataset("lora", sft, data_logic.dataset_choices()) == sft
    assert train_logic.pick_dataset("lora", dpo, data_logic.dataset_choices()) == sft
    assert "messages format" in train_logic.dataset_line(sft, "lora")
    assert "tl-msg-warn" in train_logic.dataset_line(sft, "dpo")

    with pytest.raises(ConfigError, match="^data.train: "):
        data_logic.check_dataset(write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))  # not lab data, not uploaded
    with pytest.raises(ConfigError, match="^data.train: "):
        data_logic.check_dataset("labs/data/../../README.md")
    with pytest.raises(ConfigError, match="^data.train: "):
        data_logic.check_dataset(None)


def _values(**over):
    cfg = RunConfig()
    cfg.data.train = "labs/data/pirate_sft.jsonl"
    values = logic.flatten(cfg.to_dict())
    values.update({"name": "", "data.eval": "", "train.max_steps": 12.0, "lora.r": 4.0})
    values.update(over)
    return values


def test_config_from_widget_values():
    cfg = train_logic.config_from_values(_values(**{"lora.target_modules": "q_proj, v_proj"}))
    assert cfg.train.max_steps == 12 and isinstance(cfg.train.max_steps, int)
    assert cfg.lora.r == 4 and cfg.name is None and cfg.data.eval is None
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert train_logic.config_from_values(_values()).lora.target_modules == "all-linear"

    with pytest.raises(ConfigError, match=r"^train.lr: must be > 0"):
        train_logic.config_from_values(_values(**{"train.lr": -1.0}))
    with pytest.raises(ConfigError, match=r"^train.batch_size: "):
        train_logic.config_from_values(_values(**{"train.batch_size": None}))
    with pytest.raises(ConfigError, match=r"^model: "):
        train_logic.config_from_values(_values(model="/etc"))
    with pytest.raises(ConfigError, match=r"^data.train: "):
        train_logic.config_from_values(_values(**{"data.train": "/etc/passwd"}))
    cfg = train_logic.config_from_values(_values(**{"data.train": "/etc/passwd"}), check_data=False)
    assert cfg.data.train == "/etc/passwd"  # the estimate does not need the data


# --------------------------------------------------------------------------- estimate panel

def test_estimate_html():
    est = {"trainable_params": 4_886_016, "total_params": 139_401_024, "trainable_pct": 3.505,
           "peak_memory_mb": 1234.0, "breakdown": {"weights": 520.0, "gradients": 18.6, "optimizer": 37.3,
                                                    "activations": 258.1, "reference": 0.0, "overhead": 400.0},
           "notes": ["lora: frozen base <in> fp32"]}
    html = train_logic.estimate_html(est)
    assert "4.89 M" in html and "3.50 %" in html and "139.4 M" in html and "1.21 GB" in html
    assert "weights 520 MB" in html and "reference" not in html  # empty parts are left out
    assert "&lt;in&gt;" in html  # notes are escaped


# --------------------------------------------------------------------------- progress

def _ev(type, t, **kw):
    return {"type": type, "time": t, **kw}


START = _ev("start", 100.0, max_steps=10, run_id="r")
STEPS = [_ev("step", 100.0 + s, step=s, max_steps=10, loss=3.0 - 0.1 * s, lr=1e-3, tokens_per_s=500.0,
             elapsed_s=float(s), eta_s=float(10 - s)) for s in range(1, 6)]


def test_progress_of_a_running_run():
    ps = train_logic.progress_state([START, *STEPS, _ev("eval", 105.5, step=5, eval_loss=2.7)],
                              {"status": "running", "max_steps": 10}, now=107.0)
    assert ps["state"] == "running" and ps["step"] == 5 and ps["max_steps"] == 10 and ps["pct"] == 50.0
    assert ps["elapsed_s"] == pytest.approx(7.0)  # live: now - start
    assert ps["eta_s"] == pytest.approx(3.0)  # the last ETA, minus the time since that step
    assert ps["loss"] == pytest.approx(2.5) and ps["eval_loss"] == 2.7 and not ps["done"]
    text = train_logic.progress_text(ps)
    assert text.startswith("step 5 / 10 · elapsed 0:07 · ETA 0:03 · loss 2.5 · eval loss 2.7")
    html = train_logic.progress_html(ps, "r")
    assert 'data-state="running"' in html and "width:50.0%" in html and "step 5 / 10" in html


def test_progress_of_finished_stopped_failed_and_interrupted_runs():
    fin = _ev("finish", 106.0, status="stopped", step=5, summary={"wall_time_s": 5.5})
    ps = train_logic.progress_state([START, *STEPS, fin], {"status": "stopped"}, now=200.0)
    assert ps["state"] == "stopped" and ps["done"] and ps["eta_s"] is None and ps["elapsed_s"] == 6.0
    assert "Stopped" in train_logic.progress_html(ps)
    # Without status.json the events decide.
    assert train_logic.progress_state([START, *STEPS, fin], None)["state"] == "stopped"
    assert train_logic.progress_state([START], None)["state"] == "running"
    assert train_logic.progress_state([], None)["state"] == "starting"

    fail = _ev("fail", 103.0, error="train.lr: the loss became <NaN>", step=3)
    ps = train_logic.progress_state([START, *STEPS[:3], fail], {"status": "failed", "error": None})
    assert ps["state"] == "failed" and ps["error"] == "train.lr: the loss became <NaN>"
    assert "the loss became &lt;NaN&gt;" in train_logic.progress_html(ps)

    ps = train_logic.progress_state([START, *STEPS], {"status": "interrupted", "error": "killed"})
    assert ps["state"] == "interrupted" and ps["error"] == "killed" and ps["done"]
    # A resumed run starts over after its resume event: the old finish no longer counts.
    resumed = [START, *STEPS, fin, _ev("resume", 300.0, step=5)]
    ps = train_logic.progress_state(resumed, None, now=301.0)
    assert ps["state"] == "running" and ps["step"] == 5 and ps["eta_s"] is None and ps["elapsed_s"] == 1.0
    ps = train_logic.progress_state(resumed + [{**STEPS[0], "step": 6, "time": 302.0, "eta_s": 8.0}], None, now=303.0)
    assert ps["step"] == 6 and ps["eta_s"] == 7.0
    assert train_logic.progress_html(None).count("No run yet") == 1


def test_a_finished_run_keeps_the_elapsed_time_it_counted_and_shows_its_mean_speed():
    """The live counter runs from the start event through the final eval and save; when
    the run ends the figure must not jump back to the training time alone, and the
    tokens/s shown are the run's mean, not its last step's (issue #15)."""
    summary = {"wall_time_s": 5.0, "tokens_per_s": 420.0}   # training only: 100.0 -> 105.0
    fin = _ev("finish", 109.0, status="finished", step=10, summary=summary)
    just_before = train_logic.progress_state([START, *STEPS], {"status": "running"}, now=108.9)
    ps = train_logic.progress_state([START, *STEPS, fin], {"status": "finished", "summary": summary,
                                                     "finished": 108.99}, now=500.0)
    assert ps["elapsed_s"] == pytest.approx(9.0) and ps["elapsed_s"] >= just_before["elapsed_s"]
    assert ps["tokens_per_s"] == 420.0 and STEPS[-1]["tokens_per_s"] == 500.0
    assert "elapsed 0:09" in train_logic.progress_text(ps) and "420 tokens/s" in train_logic.progress_text(ps)
    # status.json says finished a moment before the finish event is written: the same figure.
    early = train_logic.progress_state([START, *STEPS], {"status": "finished", "summary": summary, "finished": 108.99})
    assert early["elapsed_s"] == pytest.approx(8.99)


def test_a_run_stopped_before_its_first_step_says_so():
    note = "Stopped before the first training step; nothing was trained"
    ps = train_logic.progress_state([_ev("finish", 101.0, status="cancelled", step=0, note=note, summary=None)],
                              {"status": "cancelled", "note": note, "error": None, "max_steps": 30})
    assert ps["state"] == "cancelled" and ps["done"] and not ps["error"]
    html = train_logic.progress_html(ps, "r")
    assert note in html and "step 0 / 30" in html and "Interrupted" not in html and "Cancelled before" not in html
    # A queued run that was cancelled keeps its own line.
    assert "Cancelled before it started" in train_logic.progress_html(train_logic.progress_state([], {"status": "cancelled"}))


def test_event_cache_reads_only_new_lines(tmp_path):
    cache = train_logic.EventCache()
    path = tmp_path / "events.jsonl"
    assert cache.events(tmp_path) == []
    path.write_text(json.dumps(START) + "\n")
    assert len(cache.events(tmp_path)) == 1
    with open(path, "a") as fh:
        fh.write(json.dumps(STEPS[0]) + "\n" + '{"type": "st')  # a torn last line waits
    assert [e["type"] for e in cache.events(tmp_path)] == ["start", "step"]
    with open(path, "a") as fh:
        fh.write('ep", "time": 1}\n')
    assert len(cache.events(tmp_path)) == 3
    path.write_text(json.dumps(START) + "\n")  # replaced by a shorter file: start over
    assert len(cache.events(tmp_path)) == 1
    cache.forget(tmp_path)
    assert len(cache.events(tmp_path)) == 1


def test_a_new_writer_ends_a_torn_last_line_so_no_later_event_is_lost(tmp_path):
    from tunelab.training.events import EventWriter, read_events
    (tmp_path / "events.jsonl").write_text(json.dumps(START) + "\n" + '{"type": "step", "st')  # killed mid-write
    writer = EventWriter(tmp_path)
    writer.emit("resume", step=2)
    writer.close()
    assert [e["type"] for e in read_events(tmp_path)] == ["start", "resume"]


# --------------------------------------------------------------------------- exports

def test_export_dir_drops_files_older_than_an_hour():
    # (A run's model downloads: tests/test_exports.py.)
    old = arena_logic.export_dir() / "stale.zip"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    arena_logic.export_dir()
    assert not old.exists()


# --------------------------------------------------------------------------- the app builds

def test_app_builds(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TUNELAB_DEFAULT_MODEL", tiny_model_dir)
    import importlib

    import gradio as gr

    import app
    app = importlib.reload(app)
    assert isinstance(app.demo, gr.Blocks)
    monkeypatch.delenv("TUNELAB_HOST", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    opts = app.launch_options()
    assert opts["server_name"] == "127.0.0.1" and opts["max_file_size"] > 0
    ids = {getattr(b, "elem_id", None) for b in app.demo.blocks.values()}
    for elem in ("tab-train", "tab-data", "tab-runs", "train-start", "train-stop", "chart-loss", "data-upload",
                 "runs-table", "runs-delete-yes"):
        assert elem in ids, elem


def test_the_multi_gpu_command_trains_the_same_config(tmp_path):
    import yaml
    cfg = train_logic.config_from_values({"method": "lora", "model": "smollm2-135m-instruct", "name": "pirate v2",
                                    "data.train": "labs/data/pirate_sft.jsonl", "lora.r": 16})
    text = train_logic.multi_gpu_command(cfg, gpus=4)
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 " \
           "-m tunelab train pirate-v2.yaml" in text
    body = text.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert RunConfig.from_dict(yaml.safe_load(body)).to_dict() == cfg.to_dict()   # the very config
    assert "copy " not in text                         # lab data is in every checkout
    upload = workspace.data_dir() / "mine.jsonl"
    upload.write_text('{"prompt": "a", "completion": "b"}\n')
    cfg.data.train = str(upload)
    assert f"# copy {upload} there too, and point data.train at it" in train_logic.multi_gpu_command(cfg)


def test_messages_show_code_spans_as_code_not_backticks():
    """The core quotes paths and commands in `backticks` (read in a terminal); on the page
    they are code, escaped like the rest (the DPO-on-SFT error showed them raw)."""
    from tunelab.data import load_examples

    with pytest.raises(DataError) as e:
        load_examples("labs/data/pirate_sft.jsonl", "dpo")
    html = logic.message_html(str(e.value), "error")
    assert "`" not in html and "<code>labs/data/pirate_sft.jsonl</code> holds SFT examples" in html
    assert logic.message_html("run `rm <x>` & see") == ('<div class="tl-msg tl-msg-info">run <code>rm &lt;x&gt;</code> '
                                                        '&amp; see</div>')
    failed = train_logic.progress_html(dict(train_logic.progress_state([], {"status": "failed"}), error="`a` broke"))
    assert "<code>a</code> broke" in failed
