"""Each method on the tiny random model: what must change did, what must stay frozen is
bit-identical, and every run leaves a complete run folder."""

import json

import pytest
import torch

from tunelab import run
from tunelab.training.events import read_events

from .rows import SFT_ROWS, base_weights, check_run_folder, tiny_cfg, write_jsonl


def test_full_changes_every_trainable_weight(tiny_model_dir, sft_file):
    before = base_weights(tiny_model_dir)
    result = run(tiny_cfg(tiny_model_dir, sft_file, "full"))
    files = check_run_folder(result, "full")
    assert "model.safetensors" in files
    after = dict(result.model.named_parameters())
    assert all(p.requires_grad for p in after.values())
    unchanged = [n for n, p in after.items() if torch.equal(p.detach().float(), before[n].float())]
    assert unchanged == []
    assert result.summary["trainable_params"] == result.summary["total_params"]


def test_lora_trains_only_adapters_and_base_is_bit_identical(tiny_model_dir, sft_file):
    before = base_weights(tiny_model_dir)
    result = run(tiny_cfg(tiny_model_dir, sft_file, "lora"))
    files = check_run_folder(result, "lora")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    lora_b = 0
    for name, p in result.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad, name
            if "lora_B" in name:
                lora_b += 1
                assert p.abs().sum() > 0, f"{name} never moved from its zero init"
        else:
            assert not p.requires_grad, name
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), before[key].to(p.dtype)), f"frozen {key} changed"
    assert lora_b > 0
    s = result.summary
    assert 0 < s["trainable_params"] < 0.2 * s["total_params"]


def test_qlora_uses_linear4bit_and_trains(tiny_model_dir, sft_file):
    import bitsandbytes as bnb
    result = run(tiny_cfg(tiny_model_dir, sft_file, "qlora"))
    check_run_folder(result, "qlora")
    n4 = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(n4) >= 2 * 7  # 7 linear layers a block, 2 blocks
    packed_before = {n: m.weight.detach().clone() for n, m in result.model.named_modules()
                     if isinstance(m, bnb.nn.Linear4bit)}
    assert all(p.dtype == torch.uint8 for p in packed_before.values())
    moved = [n for n, p in result.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved
    events = [e for e in read_events(result.run_dir) if e["type"] == "step"]
    assert all(e["loss"] is not None for e in events)


def test_completion_only_loss_masks_the_prompt(tiny_model_dir, sft_file):
    """With the prompt masked the loss is over fewer tokens, so the two losses differ."""
    masked = run(tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=1))
    cfg = tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=1)
    cfg.data.completion_only = False
    unmasked = run(cfg)
    assert masked.summary["final_loss"] != pytest.approx(unmasked.summary["final_loss"], rel=1e-3)


def test_eval_split_is_held_out_and_evaluated(tiny_model_dir, sft_file):
    cfg = tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=2, eval_steps=1)
    cfg.data.eval_fraction = 0.25
    result = run(cfg)
    start = next(e for e in read_events(result.run_dir) if e["type"] == "start")
    assert (start["train_rows"], start["eval_rows"]) == (6, 2)
    evals = [e for e in read_events(result.run_dir) if e["type"] == "eval"]
    # Once a step: the Trainer evaluates the last step itself; a second evaluate() after
    # it (and its event written twice) made three identical evals at the end (issue #15).
    assert [e["step"] for e in evals] == [1, 2] and all(e["eval_loss"] > 0 for e in evals)
    assert result.summary["final_eval_loss"] == evals[-1]["eval_loss"]


def test_without_eval_steps_the_held_out_rows_are_evaluated_once_at_the_end(tiny_model_dir, sft_file):
    cfg = tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=2, eval_steps=0)
    cfg.data.eval_fraction = 0.25
    result = run(cfg)
    evals = [e for e in read_events(result.run_dir) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [2]
    assert result.summary["final_eval_loss"] == evals[0]["eval_loss"]


def test_a_stop_while_the_model_loads_cancels_the_run_at_once(tiny_model_dir, sft_file, monkeypatch):
    """SIGTERM before the first step ends the run there, without training a step, as
    "cancelled" with a note that says so (it used to train a step first, then stop)."""
    import os
    import signal

    from tunelab.methods import lora
    original = lora.load

    def load_then_stop(cfg, hw):
        os.kill(os.getpid(), signal.SIGTERM)   # the app's Stop, while the model loads
        return original(cfg, hw)
    monkeypatch.setattr(lora, "load", load_then_stop)
    from tunelab.__main__ import Progress
    before = signal.getsignal(signal.SIGTERM)   # SIG_DFL, or another test's in-process `tunelab train`'s
    result = run(tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=50), on_event=Progress())
    assert result.status == "cancelled"
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "cancelled" and status["step"] == 0 and status["error"] is None
    assert status["note"] == "Stopped before the first training step; nothing was trained"
    events = read_events(result.run_dir)
    assert [(e["type"], e["status"]) for e in events] == [("finish", "cancelled")]
    assert not (result.run_dir / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is before   # the handler is put back


def test_loss_falls_when_overfitting_one_batch(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", SFT_ROWS[:4])
    result = run(tiny_cfg(tiny_model_dir, data, "full", max_steps=15, lr=5e-3))
    losses = [e["loss"] for e in read_events(result.run_dir) if e["type"] == "step"]
    assert losses[-1] < 0.75 * losses[0]  # 10.8 -> ~6.3 when training works


def test_nan_loss_fails_the_run_with_a_clear_message(tiny_model_dir, sft_file, monkeypatch):
    import importlib
    import math

    from tunelab import RunError
    callback_module = importlib.import_module("tunelab.training.callback")
    original = callback_module.EventCallback.on_log

    def poisoned(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            logs["loss"] = math.nan  # what a diverged step logs
        return original(self, args, state, control, logs=logs, **kw)
    monkeypatch.setattr(callback_module.EventCallback, "on_log", poisoned)
    with pytest.raises(RunError, match="NaN at step 1; try a lower train.lr"):
        run(tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=5))
    from tunelab.training.runs import list_runs
    latest = list_runs()[0]
    assert latest["status"] == "failed" and "NaN" in latest["error"]
    assert latest["step"] <= 1  # stopped at once, not after all 5 steps


@pytest.mark.parametrize("error", ["cuda", "cpu"])
def test_out_of_memory_fails_the_run_with_a_clear_message_shown_in_the_ui(tiny_model_dir, sft_file,
                                                                         monkeypatch, error):
    import importlib

    from tunelab import RunError
    from tunelab.ui import train_logic
    callback_module = importlib.import_module("tunelab.training.callback")
    original = callback_module.EventCallback.on_step_end

    def allocate_too_much(self, args, state, control, **kw):
        if state.global_step == 2:   # what the allocator raises on a GPU, or Python on the CPU
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") \
                if error == "cuda" else MemoryError()
        return original(self, args, state, control, **kw)
    monkeypatch.setattr(callback_module.EventCallback, "on_step_end", allocate_too_much)
    with pytest.raises(RunError, match="out of memory after step 1"):
        run(tiny_cfg(tiny_model_dir, sft_file, "lora", max_steps=5))
    from tunelab.training.runs import list_runs
    latest = list_runs()[0]
    assert latest["status"] == "failed" and "try a smaller train.batch_size" in latest["error"]
    from tunelab.training.runs import run_status
    shown = train_logic.progress_html(train_logic.progress_state(read_events(latest["path"]), run_status(latest["path"])))
    assert "out of memory after step 1" in shown and "train.batch_size" in shown


def test_lora_input_casts_are_skipped_under_autocast_with_the_same_outputs(tiny_model_dir, sft_file, monkeypatch):
    import peft

    from tunelab.modelio import loading
    from tunelab.methods import lora

    base = loading.load_model(tiny_model_dir, dtype=torch.bfloat16)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)   # a non-zero update, so the adapters count
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    ids = torch.randint(0, 100, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
        assert lora.skip_input_casts(model) > 0
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)

    seen = []
    real = lora.skip_input_casts
    monkeypatch.setattr(lora, "skip_input_casts", lambda m: seen.append(real(m)) or seen[-1])
    run(tiny_cfg(tiny_model_dir, sft_file, "lora", precision="bf16", max_steps=1))
    run(tiny_cfg(tiny_model_dir, sft_file, "lora", precision="fp32", max_steps=1))
    assert len(seen) == 1 and seen[0] > 0   # bf16 (autocast) only
