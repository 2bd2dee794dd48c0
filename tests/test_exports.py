"""The Runs tab's model downloads (tunelab/ui/exports.py): one zip per run, kind and saved
model, built where Gradio serves files from, so that a download copies nothing."""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from tunelab import RunConfig
from tunelab.common import workspace
from tunelab.training.runfolder import RunError
from tunelab.ui import exports, logic

from .rows import SFT_ROWS, write_jsonl


def _fake_run(name: str) -> Path:
    run_dir = workspace.runs_dir() / name
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    RunConfig().save(run_dir / "config.yaml")
    (run_dir / "model" / "adapter_config.json").write_text("{}")
    (run_dir / "model" / "adapter_model.safetensors").write_bytes(b"123")
    return run_dir


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_download_is_built_once_and_served_without_a_copy(tmp_path, monkeypatch):
    import gradio as gr

    system_tmp = tmp_path / "system-tmp"   # where the old exports left a copy of every download
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    download = gr.File()   # the Runs tab's Download component: its cache folder is where Gradio serves from
    built = []
    real_export = exports.export_folder
    monkeypatch.setattr(exports, "export_folder", lambda *a, **k: built.append(a) or real_export(*a, **k))

    run_dir = _fake_run("20260101-000000-once")
    first = exports.export_zip(run_dir.name, False, download.GRADIO_CACHE)
    assert first.name == "20260101-000000-once-adapter.zip"
    assert sorted(zipfile.ZipFile(first).namelist()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]   # with its model card
    assert exports.export_zip(run_dir.name, False, download.GRADIO_CACHE) == first   # the second download
    assert len(built) == 1
    # Gradio hands it out where it lies; nothing else is left anywhere: no unzipped copy, no temp zip.
    assert download.move_resource_to_block_cache(str(first)) == str(first)
    assert _files(tmp_path / "gradio") == [first] and _files(system_tmp) == []
    assert run_dir.name not in str(first.parent)   # its address is not guessable from the run id

    # The run saved its model again (a resumed run): a new zip, and the old one goes.
    time.sleep(0.01)
    (run_dir / "model" / "adapter_model.safetensors").write_bytes(b"4567")
    second = exports.export_zip(run_dir.name, False, download.GRADIO_CACHE)
    assert second != first and len(built) == 2 and _files(tmp_path / "gradio") == [second]

    # Another kind is its own zip; one idle for over an hour is removed at the next export.
    (run_dir / "model" / "adapter_config.json").unlink()
    os.utime(second, (time.time() - 7200, time.time() - 7200))
    model = exports.export_zip(run_dir.name, False, download.GRADIO_CACHE)
    assert model.name.endswith("-model.zip") and _files(tmp_path / "gradio") == [model]


def test_only_run_ids_are_exported(tmp_path):
    run_dir = _fake_run("20260101-000000-ids")
    assert logic.run_dir(run_dir.name) == run_dir
    for bad in (str(run_dir), "../runs/" + run_dir.name, "..", "", None, "no-such-run"):
        with pytest.raises(RunError):
            exports.export_zip(bad, False, tmp_path)   # never a path a client sent
    (run_dir / "model" / "adapter_config.json").unlink()
    (run_dir / "model" / "adapter_model.safetensors").unlink()
    (run_dir / "model").rmdir()
    with pytest.raises(RunError, match="has no saved model yet"):
        exports.export_zip(run_dir.name, False, tmp_path)


def test_merged_export_of_a_real_run(tiny_model_dir, tmp_path):
    from tunelab import run

    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)
    cfg = RunConfig.from_dict({"method": "lora", "model": tiny_model_dir, "data": {"train": data},
                               "train": {"max_steps": 1, "batch_size": 4, "max_length": 64, "precision": "fp32"}})
    result = run(cfg)
    zipped = exports.export_zip(result.run_dir.name, True, tmp_path / "gradio")
    names = zipfile.ZipFile(zipped).namelist()
    assert "model.safetensors" in names and "config.json" in names and "adapter_config.json" not in names
    assert "README.md" in names
    assert _files(tmp_path / "gradio") == [zipped]   # the merged folder it was zipped from is gone
