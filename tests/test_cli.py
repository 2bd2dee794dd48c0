"""The CLI end to end: train, list, export; one-line errors and exit codes; stop, kill, resume."""

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.__main__ import main
from tunelab.training.events import read_events
from tunelab.training.runs import list_runs, run_status

from .rows import DPO_ROWS, write_config, write_jsonl
from .waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]



def cli(*args, wait=True, **kw):
    p = subprocess.Popen([sys.executable, "-m", "tunelab", *map(str, args)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if not wait:
        return p
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def test_train_list_export_merge(tiny_model_dir, tmp_path, capsys):
    cfg = write_config(tmp_path, tiny_model_dir)
    code, out, err = cli("train", cfg, "--set", "train.max_steps=3", "--name", "cli-test")
    assert code == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    assert run_dir.name.endswith("cli-test") and (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert out.splitlines()[0] == f"run: {run_dir}"
    assert "step 3/3" in err  # the progress line
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_steps"] == 3

    assert main(["runs"]) == 0
    listing = capsys.readouterr().out
    assert run_dir.name in listing and "finished" in listing and "lora" in listing

    out_dir = tmp_path / "merged"
    assert main(["export", run_dir.name, "--merge", "--out", str(out_dir)]) == 0
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    assert not list(out_dir.glob("adapter_*"))
    # The merged model is plain transformers and computes what base + adapter computes.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(out_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        run_dir / "model")
    ids = torch.tensor([[3, 14, 15, 92, 6]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4)

    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: transformers" in card
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"| final training loss | {summary['final_loss']:.4g} |" in card and "| LoRA rank r | 4 |" in card
    assert "| steps trained | 3 |" in card and "lora.jsonl`, 8 rows" in card

    adapter_out = tmp_path / "adapter"
    assert main(["export", run_dir.name, "--out", str(adapter_out)]) == 0
    assert (adapter_out / "adapter_model.safetensors").is_file()
    card = (adapter_out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained(base" in card
    # The adapter alone is plain PEFT: loaded onto the base it names, with the card beside it.
    adapted_again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_out)
    with torch.no_grad():
        assert torch.allclose(adapted_again(input_ids=ids).logits, adapted(input_ids=ids).logits)
    assert main(["export", run_dir.name, "--out", str(adapter_out)]) == 1  # not empty: refused
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--set", "method=sgd"], ["method: must be one of full, lora, qlora, dpo"]),
    (["--set", "lora.r=0"], ["lora.r: must be >= 1"]),
    (["--set", "data.train=nope.jsonl"], ["nope.jsonl"]),
    (["--set", "model=./no/such/folder"], ["model folder not found"]),
    (["--set", "train.max_steps"], ["expected FIELD=VALUE"]),
])
def test_bad_input_exits_2_with_one_line(tiny_model_dir, tmp_path, capsys, args, words):
    cfg = write_config(tmp_path, tiny_model_dir)
    runs_before = len(list_runs())
    assert main(["train", str(cfg), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err
    assert len(list_runs()) == runs_before  # nothing half-made


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for field in ("lora.r", "qlora.double_quant", "dpo.adapter", "train.precision"):
        assert field in text


def _wait_for(run_dir_holder, proc, predicate):
    """The run's folder once the CLI named it and `predicate(events)` holds."""
    def seen():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()}")
        line = proc.stdout.readline() if run_dir_holder[0] is None else ""
        if line.startswith("run: "):
            run_dir_holder[0] = Path(line[5:].strip())
        return run_dir_holder[0] is not None and predicate(read_events(run_dir_holder[0])) and run_dir_holder[0]
    return wait_for(seen, "the run's event", every=0.05)


def _resume(run_dir):
    """Check the killed run is interrupted and resumable, resume it from the CLI, and
    return its events and the resume event."""
    st = run_status(run_dir)
    assert st["status"] == "interrupted" and st["resumable"]
    code, out, err = cli("resume", run_dir.name)
    assert code == 0, err
    events = read_events(run_dir)
    return events, next(e for e in events if e["type"] == "resume")


def test_kill_then_resume_continues_the_step_count(tiny_model_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, max_steps=8, save_steps=2)
    proc = cli("train", cfg, "-q", wait=False)
    holder = [None]
    run_dir = _wait_for(holder, proc, lambda ev: any(e["type"] == "save" for e in ev))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    events, resumed = _resume(run_dir)
    assert resumed["step"] >= 2
    steps_after = [e["step"] for e in events[events.index(resumed):] if e["type"] == "step"]
    assert steps_after[0] > resumed["step"] and steps_after[-1] == 8
    assert run_status(run_dir)["status"] == "finished"


KILL_DURING_SAVE = """
import os, signal, sys
import transformers
from tunelab.__main__ import main
save_rest = transformers.Trainer._save_optimizer_and_scheduler
def kill_mid_save(self, output_dir):
    # The adapter of this checkpoint is on disk; optimizer and trainer_state.json are not.
    if self.state.global_step == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rest(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = kill_mid_save
sys.exit(main(sys.argv[1:]))
"""


def _losses(events, after=None):
    start = events.index(after) if after else 0
    return {e["step"]: e["loss"] for e in events[start:] if e["type"] == "step" and e.get("loss") is not None}


def test_kill_while_writing_a_checkpoint_resumes_from_the_last_complete_one(tiny_model_dir, tmp_path):
    # 8 rows in batches of 4: two steps an epoch, so the resume at step 3 is inside the
    # second epoch, where the data order must still match an uninterrupted run's.
    cfg = write_config(tmp_path, tiny_model_dir, max_steps=8, save_steps=3, logging_steps=1)
    env = os.environ | {"KILL_AT_SAVE": "6"}
    p = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, "train", str(cfg), "-q"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run_dir = Path(p.stdout.splitlines()[0][len("run: "):])
    half = run_dir / "checkpoints" / "checkpoint-6"
    assert half.is_dir() and not (half / "trainer_state.json").exists()   # it died mid-save
    events, resumed = _resume(run_dir)
    assert resumed["checkpoint"] == "checkpoints/checkpoint-3" and resumed["step"] == 3
    assert resumed["dropped_incomplete"] == ["checkpoint-6"]
    after = _losses(events, resumed)
    assert sorted(after) == [4, 5, 6, 7, 8]                      # the step count continues
    assert run_status(run_dir)["status"] == "finished"
    assert (run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()

    # The same config without the kill: the resumed run follows it (same data order,
    # optimizer and RNG state restored from the checkpoint).
    code, out, err = cli("train", cfg, "-q")
    assert code == 0, err
    reference = _losses(read_events(Path(out.strip().splitlines()[-1])))
    for step in after:
        assert after[step] == pytest.approx(reference[step], rel=1e-3, abs=1e-4), step


def test_sigterm_stops_within_seconds_and_marks_stopped(tiny_model_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, max_steps=500)
    proc = cli("train", cfg, "-q", wait=False)
    holder = [None]
    run_dir = _wait_for(holder, proc, lambda ev: any(e["type"] == "step" for e in ev))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)   # a guard against a hang; benchmarks/ui_latency.py measures Stop's time
    assert proc.returncode == 0
    st = run_status(run_dir)
    assert st["status"] == "stopped" and st["step"] < 500
    assert st["resumable"]   # it saved a checkpoint at the step where it stopped
    assert (run_dir / "checkpoints" / f"checkpoint-{st['step']}" / "trainer_state.json").is_file()
    assert read_events(run_dir)[-1]["type"] == "finish"


def test_a_crash_ends_with_a_fail_event(tiny_model_dir, tmp_path, monkeypatch):
    run_module = importlib.import_module("tunelab.training.run")  # the module; tunelab.run is the function
    cfg = write_config(tmp_path, tiny_model_dir)

    def boom(*a, **k):
        raise RuntimeError("simulated crash while building the trainer")
    monkeypatch.setattr(run_module, "_sft_trainer", boom)
    assert main(["train", str(cfg), "-q"]) == 1
    failed = [r for r in list_runs() if r["status"] == "failed"]
    assert failed and "simulated crash" in failed[0]["error"]
    last = read_events(failed[0]["path"])[-1]
    assert last["type"] == "fail" and "simulated crash" in last["error"]
    assert json.loads((Path(failed[0]["path"]) / "status.json").read_text())["status"] == "failed"


def test_labels_import_export_and_board(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", DPO_ROWS)
    assert main(["labels", "import", "cli-set", pairs]) == 0
    assert "4 pairs (preference), 4 new in 'cli-set'" in capsys.readouterr().out
    assert main(["labels", "sets"]) == 0
    assert "cli-set" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    assert main(["labels", "export", "cli-set", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["labels", "board", "cli-set"]) == 0   # imported pairs: one source, nothing to rank
    assert "MODEL" in capsys.readouterr().out
    assert main(["labels", "export", "no-such-set", str(tmp_path / "x.jsonl")]) == 2
    assert "no preference set named 'no-such-set'" in capsys.readouterr().err
    assert main(["labels", "import", "cli-set", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err


def test_labels_leave_out_identical_answers_and_say_so(tmp_path, capsys):
    same = {"prompt": "Capital of Australia?", "chosen": "Canberra.", "rejected": "Canberra. "}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", DPO_ROWS[:2] + [same])
    assert main(["labels", "import", "cli-same", pairs]) == 0
    assert "3 pairs (preference), 2 new in 'cli-same'; 1 left out: identical answers" in capsys.readouterr().out
    assert main(["labels", "export", "cli-same", str(tmp_path / "out.jsonl")]) == 0
    assert "2 pairs (left out 0 ties, 0 both bad, 0 identical answers)" in capsys.readouterr().out


def test_labels_thumbs_import_and_unpaired_export(tmp_path, capsys):
    thumbs = tmp_path / "thumbs.jsonl"
    thumbs.write_text("".join(json.dumps({"prompt": f"Colour {i}?", "completion": "Blue." if i % 2 else "Hmm, hard.",
                                          "label": bool(i % 2)}) + "\n" for i in range(4)))
    assert main(["labels", "import", "cli-thumbs", str(thumbs)]) == 0
    assert "4 labelled answers (unpaired), 4 new in 'cli-thumbs'" in capsys.readouterr().out
    pairs = write_jsonl(tmp_path / "pairs.jsonl", DPO_ROWS[:1])
    assert main(["labels", "import", "cli-thumbs", pairs]) == 0   # a pair adds a good and a bad answer for KTO
    assert main(["labels", "sets"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cli-thumbs"))
    assert "1 A/B vote " in line and "2 👍" in line and "2 👎" in line
    assert "DPO/ORPO: 1 pair " in line and "KTO: 3 good + 3 bad answers" in line
    out = tmp_path / "out.jsonl"
    assert main(["labels", "export", "cli-thumbs", str(out), "--unpaired"]) == 0
    assert "6 answers, 3 good and 3 bad (4 thumbs, 2 from A/B votes; left out 0 ties)" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "completion", "label"} and [r["label"] for r in rows].count(True) == 3
    assert main(["labels", "import", "cli-thumbs", str(out), "--unpaired"]) == 2
