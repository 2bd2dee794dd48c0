"""Every bad input of the docs' reliability table (docs/reliability.md), through the app's own entry points.

Each case feeds one bad input the way a user would (an upload in the Data tab, Start in
the Train tab, a label through the /add_label API, a config file for the CLI), checks
the error names the problem, and checks that nothing already saved in the workspace
changed: a finished run, the label database and an uploaded dataset are fingerprinted
before and after. The per-module tests (test_data, test_config, test_models,
test_app_logic) go into each case's details; this file keeps the table honest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from tunelab import ConfigError, RunConfig
from tunelab.service.jobs import Jobs, QueueLock
from tunelab.common import workspace
from tunelab import data as data_mod
from tunelab.ui import data_logic, label_api, train_logic

from .conftest import BUNDLED

GOOD_SFT = {"prompt": "What is LoRA?", "completion": "Two small matrices beside a frozen weight."}
GOOD_PREF = {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "Greetings, esteemed human."}


def _fingerprint(root: Path) -> dict[str, str]:
    """Every file under the workspace (symlinked model folders are not entered): its
    sha256, so any change to what was saved shows."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink() or p.name.endswith(("-wal", "-shm")) or p.name == QueueLock.FILE:
                continue  # SQLite's side files change on every open (labels.db itself must not); the
                #           queue's empty lock file is made by the first launch that asks for it
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def saved(bundled_model_dir):
    """Work a user already has: a finished run, labels, an uploaded dataset, and two
    files that only a hand (or the CLI) could have put in the workspace."""
    home = workspace.home()
    run = workspace.runs_dir() / "20260101-000000-saved"
    (run / "model").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "lora", "model": BUNDLED}))
    (run / "status.json").write_text(json.dumps({"run_id": run.name, "status": "finished", "step": 3}))
    (run / "model" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    label_api.api_label("workshop", "Say hi.", "Hi.", "Greetings.", "a", "ann1", key="saved-1")
    data_dir = workspace.data_dir()
    (data_dir / "good.jsonl").write_text(json.dumps(GOOD_SFT) + "\n")
    (data_dir / "prefs-no-rejected.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in GOOD_PREF.items() if k != "rejected"}) + "\n" for _ in range(3)))
    pickle_only = home / "models" / "pickle-only"
    pickle_only.mkdir(parents=True, exist_ok=True)
    (pickle_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickle_only / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return home


@pytest.fixture
def unchanged(saved, monkeypatch):
    """Fails the test if the workspace changed, and if any case got as far as starting a process."""
    def no_process(*a, **k):
        raise AssertionError("a training process was started for a bad input")
    monkeypatch.setattr(Jobs, "_spawn", no_process)
    before = _fingerprint(saved)
    yield
    assert _fingerprint(saved) == before


def upload(tmp_path, name: str, content: bytes | str) -> str:
    """The Data tab's upload: validate with the core's reader, then save under a safe name."""
    src = tmp_path / name
    src.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(data_mod.DataError) as e:
        data_logic.ingest_upload(src)
    return str(e.value)


def start(**values) -> str:
    """The Train tab's Start: the form's values become a config, then jobs.launch."""
    form = {"method": "lora", "model": BUNDLED, "data.train": "labs/data/pirate_sft.jsonl", "name": "",
            "lora.r": 8, "train.lr": 1e-3, "train.max_length": 128, "train.max_steps": 5} | values
    with pytest.raises((ConfigError, data_mod.DataError, ValueError)) as e:
        Jobs().launch(train_logic.config_from_values(form))
    return str(e.value)


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# Each case: (id, how it is fed, what the message must contain). docs/reliability.md's table lists the same ids.
UPLOADS = [
    ("empty file", "empty.jsonl", "", ["empty.jsonl: file is empty"]),
    ("truncated file", "cut.jsonl", jsonl(GOOD_SFT, GOOD_SFT) + json.dumps(GOOD_SFT)[:25],
     ["cut.jsonl: line 3: not valid JSON", "truncated"]),
    ("non-UTF-8 bytes", "latin1.csv", "prompt,completion\na,b\ncaf\xe9,b\n".encode("latin-1"),
     ["latin1.csv: line 3: not UTF-8"]),
    ("wrong format (a .txt)", "notes.txt", "just some text", ["notes.txt", "unsupported", ".jsonl"]),
    ("wrong format (not Parquet inside)", "d.parquet", "this is not parquet", ["d.parquet: not a readable Parquet file"]),
    ("wrong columns", "qa.jsonl", jsonl({"question": "q", "answer": "a"}),
     ["qa.jsonl", "answer, question", "prompt+completion"]),
    ("a row missing its answer", "rows.jsonl", jsonl(GOOD_SFT, GOOD_SFT, {"prompt": "only a prompt"}),
     ["rows.jsonl: line 3: field 'completion' is missing"]),
]


@pytest.mark.parametrize("case,name,content,words", UPLOADS, ids=[c[0] for c in UPLOADS])
def test_bad_dataset_uploads(tmp_path, unchanged, case, name, content, words):
    msg = upload(tmp_path, name, content)
    for w in words:
        assert w in msg, msg
    assert not (workspace.data_dir() / name).exists()


def test_huge_upload_is_refused_before_it_is_read(tmp_path, unchanged, monkeypatch):
    monkeypatch.setattr(data_mod.files, "MAX_FILE_BYTES", 1024)   # TUNELAB_MAX_UPLOAD_MB in real use
    msg = upload(tmp_path, "big.jsonl", jsonl(*[GOOD_SFT] * 40))  # 3 KB
    assert msg == "big.jsonl: 3 KB is over the upload limit of 1 KB"


STARTS = [
    ("preference file without 'rejected', for DPO",
     {"method": "dpo", "data.train": "WORKSPACE/data/prefs-no-rejected.jsonl"},
     ["prefs-no-rejected.jsonl: line 1: field 'rejected' is missing"]),
    ("rank 0", {"lora.r": 0}, ["lora.r:", ">= 1", "got 0"]),
    ("negative learning rate", {"train.lr": -0.001}, ["train.lr:", "> 0.0"]),
    ("unknown method", {"method": "sgd"}, ["method:", "full, lora, qlora, dpo", "'sgd'"]),
    ("max length 0", {"train.max_length": 0}, ["train.max_length:", ">= 1"]),
    ("model folder that does not exist", {"model": "WORKSPACE/models/no-such-model"},
     ["model: no model folder at", "no-such-model"]),
    ("model folder with pickle (.bin) weights only", {"model": "WORKSPACE/models/pickle-only"},
     ["model:", "pickle-only", "safetensors"]),
    ("model folder outside the allowed ones", {"model": "/etc"}, ["model: /etc is outside", "TUNELAB_MODEL_DIRS"]),
    ("dataset path outside the allowed ones", {"data.train": "labs/data/../../README.md"}, ["data.train: labs/data/../../README.md is not a lab dataset or an uploaded one"]),
    ("run name of nothing but ../ and slashes", {"name": "../..//"}, ["has no usable characters"]),
]


@pytest.mark.parametrize("case,values,words", STARTS, ids=[c[0] for c in STARTS])
def test_bad_training_starts(unchanged, case, values, words):
    home = str(workspace.home())
    values = {k: v.replace("WORKSPACE", home) if isinstance(v, str) else v for k, v in values.items()}
    msg = start(**values)
    for w in words:
        assert w in msg, msg


def test_run_name_with_a_path_in_it_stays_inside_the_runs_folder(unchanged):
    from tunelab.training.runfolder import new_run_id
    cfg = train_logic.config_from_values({"method": "lora", "model": BUNDLED, "data.train": "labs/data/pirate_sft.jsonl",
                                    "name": "../../../etc/cron.d/x y?"})
    run_id = new_run_id(cfg)
    assert run_id.endswith("-etc-cron.d-x-y") and "/" not in run_id and ".." not in run_id
    assert (workspace.runs_dir() / run_id).resolve().parent == workspace.runs_dir().resolve()


def test_config_file_asking_for_remote_code_is_refused(tmp_path, unchanged):
    with pytest.raises(ConfigError, match="trust_remote_code"):
        RunConfig.from_dict({"method": "lora", "model": BUNDLED, "trust_remote_code": True})


def test_label_set_names_with_paths_stay_inside_and_empty_ones_are_refused(saved):
    out = label_api.api_label("../../../tmp/evil", "Say hi.", "Hi.", "Hello.", "a", "ann1", key="path-set")
    assert out["set"] == "tmp-evil"
    with pytest.raises(ValueError, match="no usable characters"):
        label_api.api_label("../", "Say hi.", "Hi.", "Hello.", "a", "ann1", key="dots-set")
    assert not Path("/tmp/evil").exists()
