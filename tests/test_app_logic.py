"""The app's plain logic (tunelab/ui/logic.py), without a browser: widget values to a
config, the model-path allow list, estimate and progress rendering, the runs table,
config diffs, dataset previews, uploads and export zips."""

import json
import os
import time
from pathlib import Path

import pytest

from tunelab import RunConfig, workspace
from tunelab.config import METHODS, ConfigError
from tunelab.data import DataError
from tunelab.ui import logic

from .test_methods import DPO_ROWS, SFT_ROWS, write_jsonl


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
        assert logic.METHOD_INFO[m][1] in logic.method_html(m).replace("&#x27;", "'")
    assert logic.visible_groups("full", "lora") == {"lora": False, "qlora": False, "dpo": False}
    assert logic.visible_groups("lora", "lora") == {"lora": True, "qlora": False, "dpo": False}
    assert logic.visible_groups("qlora", "lora") == {"lora": True, "qlora": True, "dpo": False}
    assert logic.visible_groups("dpo", "qlora") == {"lora": True, "qlora": True, "dpo": True}
    assert logic.visible_groups("dpo", "full") == {"lora": False, "qlora": False, "dpo": True}


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
    values = [v for _, v in logic.dataset_choices()]
    assert any(v.endswith("pirate_sft.jsonl") for v in values)
    dpo = next(v for v in values if v.endswith("concise_dpo.jsonl"))
    sft = next(v for v in values if v.endswith("pirate_sft.jsonl"))
    assert logic.pick_dataset("dpo", sft, logic.dataset_choices()) == dpo
    assert logic.pick_dataset("lora", sft, logic.dataset_choices()) == sft
    assert logic.pick_dataset("lora", dpo, logic.dataset_choices()) == sft
    assert "messages format" in logic.dataset_line(sft, "lora")
    assert "tl-msg-warn" in logic.dataset_line(sft, "dpo")

    with pytest.raises(ConfigError, match="^data.train: "):
        logic.check_dataset(write_jsonl(tmp_path / "d.jsonl", SFT_ROWS))  # not lab data, not uploaded
    with pytest.raises(ConfigError, match="^data.train: "):
        logic.check_dataset("labs/data/../../README.md")
    with pytest.raises(ConfigError, match="^data.train: "):
        logic.check_dataset(None)


def _values(**over):
    cfg = RunConfig()
    cfg.data.train = "labs/data/pirate_sft.jsonl"
    values = logic.flatten(cfg.to_dict())
    values.update({"name": "", "data.eval": "", "train.max_steps": 12.0, "lora.r": 4.0})
    values.update(over)
    return values


def test_config_from_widget_values():
    cfg = logic.config_from_values(_values(**{"lora.target_modules": "q_proj, v_proj"}))
    assert cfg.train.max_steps == 12 and isinstance(cfg.train.max_steps, int)
    assert cfg.lora.r == 4 and cfg.name is None and cfg.data.eval is None
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert logic.config_from_values(_values()).lora.target_modules == "all-linear"

    with pytest.raises(ConfigError, match=r"^train.lr: must be > 0"):
        logic.config_from_values(_values(**{"train.lr": -1.0}))
    with pytest.raises(ConfigError, match=r"^train.batch_size: "):
        logic.config_from_values(_values(**{"train.batch_size": None}))
    with pytest.raises(ConfigError, match=r"^model: "):
        logic.config_from_values(_values(model="/etc"))
    with pytest.raises(ConfigError, match=r"^data.train: "):
        logic.config_from_values(_values(**{"data.train": "/etc/passwd"}))
    cfg = logic.config_from_values(_values(**{"data.train": "/etc/passwd"}), check_data=False)
    assert cfg.data.train == "/etc/passwd"  # the estimate does not need the data


# --------------------------------------------------------------------------- estimate panel

def test_estimate_html():
    est = {"trainable_params": 4_886_016, "total_params": 139_401_024, "trainable_pct": 3.505,
           "peak_memory_mb": 1234.0, "breakdown": {"weights": 520.0, "gradients": 18.6, "optimizer": 37.3,
                                                    "activations": 258.1, "reference": 0.0, "overhead": 400.0},
           "notes": ["lora: frozen base <in> fp32"]}
    html = logic.estimate_html(est)
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
    ps = logic.progress_state([START, *STEPS, _ev("eval", 105.5, step=5, eval_loss=2.7)],
                              {"status": "running", "max_steps": 10}, now=107.0)
    assert ps["state"] == "running" and ps["step"] == 5 and ps["max_steps"] == 10 and ps["pct"] == 50.0
    assert ps["elapsed_s"] == pytest.approx(7.0)  # live: now - start
    assert ps["eta_s"] == pytest.approx(3.0)  # the last ETA, minus the time since that step
    assert ps["loss"] == pytest.approx(2.5) and ps["eval_loss"] == 2.7 and not ps["done"]
    text = logic.progress_text(ps)
    assert text.startswith("step 5 / 10 · elapsed 0:07 · ETA 0:03 · loss 2.5 · eval loss 2.7")
    html = logic.progress_html(ps, "r")
    assert 'data-state="running"' in html and "width:50.0%" in html and "step 5 / 10" in html


def test_progress_of_finished_stopped_failed_and_interrupted_runs():
    fin = _ev("finish", 106.0, status="stopped", step=5, summary={"wall_time_s": 5.5})
    ps = logic.progress_state([START, *STEPS, fin], {"status": "stopped"}, now=200.0)
    assert ps["state"] == "stopped" and ps["done"] and ps["eta_s"] is None and ps["elapsed_s"] == 6.0
    assert "Stopped" in logic.progress_html(ps)
    # Without status.json the events decide.
    assert logic.progress_state([START, *STEPS, fin], None)["state"] == "stopped"
    assert logic.progress_state([START], None)["state"] == "running"
    assert logic.progress_state([], None)["state"] == "starting"

    fail = _ev("fail", 103.0, error="train.lr: the loss became <NaN>", step=3)
    ps = logic.progress_state([START, *STEPS[:3], fail], {"status": "failed", "error": None})
    assert ps["state"] == "failed" and ps["error"] == "train.lr: the loss became <NaN>"
    assert "the loss became &lt;NaN&gt;" in logic.progress_html(ps)

    ps = logic.progress_state([START, *STEPS], {"status": "interrupted", "error": "killed"})
    assert ps["state"] == "interrupted" and ps["error"] == "killed" and ps["done"]
    # A resumed run starts over after its resume event: the old finish no longer counts.
    resumed = [START, *STEPS, fin, _ev("resume", 300.0, step=5)]
    ps = logic.progress_state(resumed, None, now=301.0)
    assert ps["state"] == "running" and ps["step"] == 5 and ps["eta_s"] is None and ps["elapsed_s"] == 1.0
    ps = logic.progress_state(resumed + [{**STEPS[0], "step": 6, "time": 302.0, "eta_s": 8.0}], None, now=303.0)
    assert ps["step"] == 6 and ps["eta_s"] == 7.0
    assert logic.progress_html(None).count("No run yet") == 1


def test_a_finished_run_keeps_the_elapsed_time_it_counted_and_shows_its_mean_speed():
    """The live counter runs from the start event through the final eval and save; when
    the run ends the figure must not jump back to the training time alone, and the
    tokens/s shown are the run's mean, not its last step's (issue #15)."""
    summary = {"wall_time_s": 5.0, "tokens_per_s": 420.0}   # training only: 100.0 -> 105.0
    fin = _ev("finish", 109.0, status="finished", step=10, summary=summary)
    just_before = logic.progress_state([START, *STEPS], {"status": "running"}, now=108.9)
    ps = logic.progress_state([START, *STEPS, fin], {"status": "finished", "summary": summary,
                                                     "finished": 108.99}, now=500.0)
    assert ps["elapsed_s"] == pytest.approx(9.0) and ps["elapsed_s"] >= just_before["elapsed_s"]
    assert ps["tokens_per_s"] == 420.0 and STEPS[-1]["tokens_per_s"] == 500.0
    assert "elapsed 0:09" in logic.progress_text(ps) and "420 tokens/s" in logic.progress_text(ps)
    # status.json says finished a moment before the finish event is written: the same figure.
    early = logic.progress_state([START, *STEPS], {"status": "finished", "summary": summary, "finished": 108.99})
    assert early["elapsed_s"] == pytest.approx(8.99)


def test_a_run_stopped_before_its_first_step_says_so():
    note = "Stopped before the first training step; nothing was trained"
    ps = logic.progress_state([_ev("finish", 101.0, status="cancelled", step=0, note=note, summary=None)],
                              {"status": "cancelled", "note": note, "error": None, "max_steps": 30})
    assert ps["state"] == "cancelled" and ps["done"] and not ps["error"]
    html = logic.progress_html(ps, "r")
    assert note in html and "step 0 / 30" in html and "Interrupted" not in html and "Cancelled before" not in html
    # A queued run that was cancelled keeps its own line.
    assert "Cancelled before it started" in logic.progress_html(logic.progress_state([], {"status": "cancelled"}))


def test_event_cache_reads_only_new_lines(tmp_path):
    cache = logic.EventCache()
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
    from tunelab.events import EventWriter, read_events
    (tmp_path / "events.jsonl").write_text(json.dumps(START) + "\n" + '{"type": "step", "st')  # killed mid-write
    writer = EventWriter(tmp_path)
    writer.emit("resume", step=2)
    writer.close()
    assert [e["type"] for e in read_events(tmp_path)] == ["start", "resume"]


# --------------------------------------------------------------------------- runs table, details, diff

ROW = {"run_id": "20260101-120000-lora", "status": "finished", "method": "lora",
       "model": "/tmp/x/tiny-llama0", "data": "labs/data/pirate_sft.jsonl", "step": 30, "max_steps": 30,
       "loss": 1.23456, "eval_loss": None, "wall_time_s": 83.2, "tokens_per_s": 1234.5, "peak_memory_mb": 812.0,
       "trainable_pct": 3.5049, "error": None, "resumable": False, "path": "/tmp/r"}


def test_runs_table():
    df = logic.runs_table([ROW, {"run_id": "20260101-130000-dpo", "status": "running"}])
    assert list(df.columns) == logic.RUN_COLUMNS
    first = df.iloc[0].to_dict()
    assert first == {"run": ROW["run_id"], "status": "finished", "method": "lora", "model": "tiny-llama0",
                     "data": "pirate_sft.jsonl", "trainable": "3.50 %", "steps": "30 / 30", "time": "1:23",
                     "tok/s": "1,234", "peak mem": "812 MB", "loss": "1.235", "eval loss": "—"}
    assert len(logic.RUN_COLUMN_WIDTHS) == len(logic.RUN_COLUMNS)
    assert df.iloc[1]["steps"] == "0 / ?" and df.iloc[1]["model"] == "—"
    assert logic.runs_table([]).empty and list(logic.runs_table([]).columns) == logic.RUN_COLUMNS
    assert logic.runs_table([{**ROW, "model": "HuggingFaceTB/SmolLM2-135M"}]).iloc[0]["model"] == \
        "HuggingFaceTB/SmolLM2-135M"


def test_run_details():
    html = logic.run_details_html({**ROW, "status": "failed", "error": "boom <b>"})
    assert "tl-failed" in html and "boom &lt;b&gt;" in html
    assert "Resumable" in logic.run_details_html({**ROW, "status": "stopped", "resumable": True})
    assert "Pick a run" in logic.run_details_html(None)


def test_config_diff_highlights_differences():
    a = RunConfig().to_dict()
    b = RunConfig.from_dict({"lora": {"r": 16}, "train": {"lr": 1e-4}}).to_dict()
    df = logic.config_diff({"run-a": a, "run-b": b})
    assert list(df.columns) == ["field", "run-a", "run-b", "differs"]
    assert set(df[df["differs"]]["field"]) == {"lora.r", "train.lr"}
    assert df.set_index("field").loc["lora.r", "run-b"] == "16"
    html = logic.config_diff_html(df)
    assert html.count('class="tl-diff"') == 2 and "2 fields differ" in html
    assert logic.config_diff_html(df, only_differences=True).count("<tr") == 3  # header + 2
    assert "Select runs" in logic.config_diff_html(logic.config_diff({}))
    assert "One run selected" in logic.config_diff_html(logic.config_diff({"run-a": a}))


# --------------------------------------------------------------------------- dataset preview and uploads

def test_preview_renders_conversations_and_pairs():
    sft = [{"prompt": [{"role": "user", "content": "Hi <script>"}],
            "completion": [{"role": "assistant", "content": "Arr!"}]}]
    html = logic.preview_html(sft, "sft")
    assert "tl-user" in html and "tl-assistant" in html and "&lt;script&gt;" in html and "<script>" not in html
    dpo = [{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "Short."}],
            "rejected": [{"role": "assistant", "content": "Long answer."}]}]
    html = logic.preview_html(dpo, "dpo")
    assert "✓ chosen" in html and "✗ rejected" in html and "Short." in html and "Long answer." in html
    info = {"rows": 1200, "format": "preference", "objective": "dpo"}
    assert "1,200" in logic.summary_html(info) and "DPO" in logic.summary_html(info)
    assert "Saved as workspace/data/x.jsonl" in logic.summary_html(info, "workspace/data/x.jsonl")


def test_upload_is_saved_under_a_safe_name_without_overwriting(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    src = Path(write_jsonl(tmp_path / "a.jsonl", SFT_ROWS))
    path, reused = logic.save_upload(src, "../../my data?.jsonl", dest)
    assert path == dest / "my-data.jsonl" and not reused and path.read_bytes() == src.read_bytes()
    assert logic.save_upload(src, "my data?.jsonl", dest) == (path, True)  # same bytes: reused
    other = Path(write_jsonl(tmp_path / "b.jsonl", SFT_ROWS[:2]))
    path2, reused = logic.save_upload(other, "my data?.jsonl", dest)
    assert path2 == dest / "my-data-2.jsonl" and not reused and path.read_bytes() == src.read_bytes()
    assert logic.save_upload(src, "....jsonl", dest)[0] == dest / "dataset.jsonl"
    with pytest.raises(DataError, match="over the upload limit"):
        logic.save_upload(src, "a.jsonl", dest, max_bytes=10)
    with pytest.raises(DataError, match="unsupported file type"):
        logic.save_upload(src, "a.exe", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["dataset.jsonl", "my-data-2.jsonl", "my-data.jsonl"]


def test_ingest_validates_with_the_core_and_names_the_users_file(tmp_path):
    bad_dir = tmp_path / "gradio-tmp-123"
    bad_dir.mkdir()
    bad = bad_dir / "mine.jsonl"
    bad.write_text(json.dumps(DPO_ROWS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError) as e:
        logic.ingest_upload(bad, tmp_path / "out")
    assert str(e.value).startswith("mine.jsonl: line 2") and "gradio-tmp-123" not in str(e.value)
    good = Path(write_jsonl(bad_dir / "prefs.jsonl", DPO_ROWS))
    (tmp_path / "out").mkdir()
    info, dest, reused = logic.ingest_upload(good, tmp_path / "out")
    assert info["rows"] == len(DPO_ROWS) and info["objective"] == "dpo" and dest.name == "prefs.jsonl"
    # Saved into the workspace data folder by default, and then offered as a dataset.
    info, dest, _ = logic.ingest_upload(good)
    assert dest.parent == workspace.data_dir()
    # Where it really is: TUNELAB_HOME is a temporary folder here, not ./workspace.
    assert info["saved_as"] == str(workspace.data_dir() / "prefs.jsonl")
    assert info["path"] in [v for _, v in logic.dataset_choices()]
    assert logic.check_dataset(info["path"]) == info["path"]


class _CharTokenizer:
    """One token a character: enough to test the counting without a model."""

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text)}


def test_token_lengths_and_histogram():
    sft = [{"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "c"}]}]
    assert logic.token_lengths(sft, _CharTokenizer(), "sft") == {"examples": [len("<user>ab<assistant>c")]}
    dpo = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "bbb"}]}]
    lengths = logic.token_lengths(dpo, _CharTokenizer(), "dpo")
    assert lengths == {"chosen": [19], "rejected": [21]}
    fig = logic.length_histogram(lengths, max_length=20)
    assert len(fig.data) == 2 and "1 longer than max_length 20: truncated" in fig.layout.title.text
    assert "all fit max_length 256" in logic.length_histogram(lengths, max_length=256).layout.title.text


# --------------------------------------------------------------------------- exports

def test_export_dir_drops_files_older_than_an_hour():
    # (A run's model downloads: tests/test_exports.py.)
    old = logic.export_dir() / "stale.zip"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    logic.export_dir()
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
    cfg = logic.config_from_values({"method": "lora", "model": "smollm2-135m-instruct", "name": "pirate v2",
                                    "data.train": "labs/data/pirate_sft.jsonl", "lora.r": 16})
    text = logic.multi_gpu_command(cfg, gpus=4)
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 " \
           "-m tunelab train pirate-v2.yaml" in text
    body = text.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert RunConfig.from_dict(yaml.safe_load(body)).to_dict() == cfg.to_dict()   # the very config
    assert "copy " not in text                         # lab data is in every checkout
    upload = workspace.data_dir() / "mine.jsonl"
    upload.write_text('{"prompt": "a", "completion": "b"}\n')
    cfg.data.train = str(upload)
    assert f"# copy {upload} there too, and point data.train at it" in logic.multi_gpu_command(cfg)


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
    failed = logic.progress_html(dict(logic.progress_state([], {"status": "failed"}), error="`a` broke"))
    assert "<code>a</code> broke" in failed
