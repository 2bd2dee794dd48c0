"""The Runs and Data tabs' logic (tunelab/ui/runs_logic.py, data_logic.py), without a
browser: the runs table, run details and config diffs; dataset previews, uploads and
token-length histograms. The shared helpers and the Train tab's logic are in
test_app_logic.py."""

import json
from pathlib import Path

import pytest

from tunelab import RunConfig
from tunelab.common import workspace
from tunelab.data import DataError
from tunelab.ui import data_logic, runs_logic

from .rows import DPO_ROWS, SFT_ROWS, write_jsonl


# --------------------------------------------------------------------------- runs table, details, diff

ROW = {"run_id": "20260101-120000-lora", "status": "finished", "method": "lora",
       "model": "/tmp/x/tiny-llama0", "data": "labs/data/pirate_sft.jsonl", "step": 30, "max_steps": 30,
       "loss": 1.23456, "eval_loss": None, "wall_time_s": 83.2, "tokens_per_s": 1234.5, "peak_memory_mb": 812.0,
       "trainable_pct": 3.5049, "error": None, "resumable": False, "path": "/tmp/r"}


def test_runs_table():
    df = runs_logic.runs_table([ROW, {"run_id": "20260101-130000-dpo", "status": "running"}])
    assert list(df.columns) == runs_logic.RUN_COLUMNS
    first = df.iloc[0].to_dict()
    assert first == {"run": ROW["run_id"], "title": "", "status": "finished", "owner": "—", "method": "lora",
                     "model": "tiny-llama0",
                     "data": "pirate_sft.jsonl", "trainable": "3.50 %", "steps": "30 / 30", "time": "1:23",
                     "tok/s": "1,234", "peak mem": "812 MB", "loss": "1.235", "eval loss": "—"}
    assert len(runs_logic.RUN_COLUMN_WIDTHS) == len(runs_logic.RUN_COLUMNS)
    assert df.iloc[1]["steps"] == "0 / ?" and df.iloc[1]["model"] == "—"
    assert runs_logic.runs_table([]).empty and list(runs_logic.runs_table([]).columns) == runs_logic.RUN_COLUMNS
    assert runs_logic.runs_table([{**ROW, "model": "HuggingFaceTB/SmolLM2-135M"}]).iloc[0]["model"] == \
        "HuggingFaceTB/SmolLM2-135M"


def test_run_details():
    html = runs_logic.run_details_html({**ROW, "status": "failed", "error": "boom <b>"})
    assert "tl-failed" in html and "boom &lt;b&gt;" in html
    assert "Resumable" in runs_logic.run_details_html({**ROW, "status": "stopped", "resumable": True})
    assert "Pick a run" in runs_logic.run_details_html(None)


def test_config_diff_highlights_differences():
    a = RunConfig().to_dict()
    b = RunConfig.from_dict({"lora": {"r": 16}, "train": {"lr": 1e-4}}).to_dict()
    df = runs_logic.config_diff({"run-a": a, "run-b": b})
    assert list(df.columns) == ["field", "run-a", "run-b", "differs"]
    assert set(df[df["differs"]]["field"]) == {"lora.r", "train.lr"}
    assert df.set_index("field").loc["lora.r", "run-b"] == "16"
    html = runs_logic.config_diff_html(df)
    assert html.count('class="tl-diff"') == 2 and "2 fields differ" in html
    assert runs_logic.config_diff_html(df, only_differences=True).count("<tr") == 3  # header + 2
    assert "Select runs" in runs_logic.config_diff_html(runs_logic.config_diff({}))
    assert "One run selected" in runs_logic.config_diff_html(runs_logic.config_diff({"run-a": a}))


# --------------------------------------------------------------------------- dataset preview and uploads

def test_preview_renders_conversations_and_pairs():
    sft = [{"prompt": [{"role": "user", "content": "Hi <script>"}],
            "completion": [{"role": "assistant", "content": "Arr!"}]}]
    html = data_logic.preview_html(sft, "sft")
    assert "tl-user" in html and "tl-assistant" in html and "&lt;script&gt;" in html and "<script>" not in html
    dpo = [{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "Short."}],
            "rejected": [{"role": "assistant", "content": "Long answer."}]}]
    html = data_logic.preview_html(dpo, "dpo")
    assert "✓ chosen" in html and "✗ rejected" in html and "Short." in html and "Long answer." in html
    info = {"rows": 1200, "format": "preference", "objective": "dpo"}
    assert "1,200" in data_logic.summary_html(info) and "DPO" in data_logic.summary_html(info)
    assert "Saved as workspace/data/x.jsonl" in data_logic.summary_html(info, "workspace/data/x.jsonl")


def test_upload_is_saved_under_a_safe_name_without_overwriting(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    src = Path(write_jsonl(tmp_path / "a.jsonl", SFT_ROWS))
    path, reused = data_logic.save_upload(src, "../../my data?.jsonl", dest)
    assert path == dest / "my-data.jsonl" and not reused and path.read_bytes() == src.read_bytes()
    assert data_logic.save_upload(src, "my data?.jsonl", dest) == (path, True)  # same bytes: reused
    other = Path(write_jsonl(tmp_path / "b.jsonl", SFT_ROWS[:2]))
    path2, reused = data_logic.save_upload(other, "my data?.jsonl", dest)
    assert path2 == dest / "my-data-2.jsonl" and not reused and path.read_bytes() == src.read_bytes()
    assert data_logic.save_upload(src, "....jsonl", dest)[0] == dest / "dataset.jsonl"
    with pytest.raises(DataError, match="over the upload limit"):
        data_logic.save_upload(src, "a.jsonl", dest, max_bytes=10)
    with pytest.raises(DataError, match="unsupported file type"):
        data_logic.save_upload(src, "a.exe", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["dataset.jsonl", "my-data-2.jsonl", "my-data.jsonl"]


def test_ingest_validates_with_the_core_and_names_the_users_file(tmp_path):
    bad_dir = tmp_path / "gradio-tmp-123"
    bad_dir.mkdir()
    bad = bad_dir / "mine.jsonl"
    bad.write_text(json.dumps(DPO_ROWS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError) as e:
        data_logic.ingest_upload(bad, tmp_path / "out")
    assert str(e.value).startswith("mine.jsonl: line 2") and "gradio-tmp-123" not in str(e.value)
    good = Path(write_jsonl(bad_dir / "prefs.jsonl", DPO_ROWS))
    (tmp_path / "out").mkdir()
    info, dest, reused = data_logic.ingest_upload(good, tmp_path / "out")
    assert info["rows"] == len(DPO_ROWS) and info["objective"] == "dpo" and dest.name == "prefs.jsonl"
    # Saved into the workspace data folder by default, and then offered as a dataset.
    info, dest, _ = data_logic.ingest_upload(good)
    assert dest.parent == workspace.data_dir()
    # Where it really is: TUNELAB_HOME is a temporary folder here, not ./workspace.
    assert info["saved_as"] == str(workspace.data_dir() / "prefs.jsonl")
    assert info["path"] in [v for _, v in data_logic.dataset_choices()]
    assert data_logic.check_dataset(info["path"]) == info["path"]


class _CharTokenizer:
    """One token a character: enough to test the counting without a model."""

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text)}


def test_token_lengths_and_histogram():
    sft = [{"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "c"}]}]
    assert data_logic.token_lengths(sft, _CharTokenizer(), "sft") == {"examples": [len("<user>ab<assistant>c")]}
    dpo = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "bbb"}]}]
    lengths = data_logic.token_lengths(dpo, _CharTokenizer(), "dpo")
    assert lengths == {"chosen": [19], "rejected": [21]}
    fig = data_logic.length_histogram(lengths, max_length=20)
    assert len(fig.data) == 2 and "1 longer than max_length 20: truncated" in fig.layout.title.text
    assert "all fit max_length 256" in data_logic.length_histogram(lengths, max_length=256).layout.title.text
