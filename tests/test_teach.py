"""The teaching views compute what they claim, checked against independent computations."""

import html
import json
import math

import pandas as pd
import pytest
import torch

from tunelab import RunConfig, run
from tunelab.common import workspace
from tunelab.teach import (DPO_HINT, SHIFT_MAX_NEW_TOKENS, SHIFT_PROMPT, SHIFT_SAMPLING, compare_display,
                           compare_figure, compare_methods, dpo_display, dpo_logps_figure, dpo_note, dpo_summary,
                           lora_figure, lora_html, lora_layers, lora_update, nf4_error, nf4_figure, repeats,
                           token_shift, token_shift_html)

from .rows import DPO_ROWS, SFT_ROWS, make_run, tiny_cfg, write_jsonl


@pytest.fixture(scope="module")
def sft_runs(tiny_model_dir, tmp_path_factory):
    data = write_jsonl(tmp_path_factory.mktemp("teach") / "sft.jsonl", SFT_ROWS)
    return {m: run(tiny_cfg(tiny_model_dir, data, m, max_steps=2)).run_id for m in ("full", "lora", "qlora")}


def test_method_comparison_table(sft_runs):
    table = compare_methods(list(sft_runs.values())).set_index("method")
    assert table.loc["lora", "trainable params"] < table.loc["full", "trainable params"]
    assert table.loc["lora", "saved MB"] < table.loc["full", "saved MB"]
    assert table.loc["full", "trainable %"] == pytest.approx(100.0)
    assert table["final loss"].notna().all() and table["minutes"].gt(0).all()
    assert len(compare_figure(table.reset_index()).data) == 4


def test_lora_update_is_the_merged_change(tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_id = make_run(tiny_model_dir, "20000101-000002-teach-lora", seed=4)
    info = lora_update(run_id, "model.layers.1.mlp.down_proj")
    d, k = info["W"]
    assert info["A"] == [4, k] and info["B"] == [d, 4] and info["params_AB"] == 4 * (d + k)
    assert len(info["singular_values"]) == 4 and info["singular_values"] == sorted(info["singular_values"], reverse=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    w = base.model.layers[1].mlp.down_proj.weight.detach().clone()
    merged = PeftModel.from_pretrained(base, f"{info_dir(run_id)}/model").merge_and_unload()
    delta = merged.model.layers[1].mlp.down_proj.weight.detach() - w
    want = torch.linalg.svdvals(delta)[:4]
    torch.testing.assert_close(torch.tensor(info["singular_values"]), want, rtol=1e-3, atol=1e-5)
    assert info["rel_change"] == pytest.approx(float(delta.norm() / w.norm()), rel=1e-3)
    assert "model.layers.0.self_attn.q_proj" in lora_layers(run_id)
    assert "A and B hold" in lora_html(info) and len(lora_figure(info).data) == 1
    with pytest.raises(ValueError, match="no adapter on 'nope'"):
        lora_update(run_id, "nope")


def info_dir(run_id):
    from tunelab.common import workspace
    return workspace.runs_dir() / run_id


def test_nf4_error_and_memory(tiny_model_dir):
    info = nf4_error(tiny_model_dir)
    assert info["layer"] == "model.layers.0.self_attn.q_proj" and len(info["errors"]) == 64 * 64
    assert 0.03 < info["relative_error"] < 0.2      # 16 levels per block: a few % of the weight
    assert info["max_abs_error"] < info["mean_abs_weight"] * 2
    mem = info["memory_mb"]
    assert mem["fp32"] == pytest.approx(2 * mem["bf16"]) and mem["nf4"] < mem["bf16"]
    assert len(nf4_figure(info).data) == 2


def test_token_shift_base_side_is_the_base_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id = make_run(tiny_model_dir, "20000101-000003-teach-shift", seed=5)
    info = token_shift(run_id, "Say hi.", answer="Ahoy there, matey")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prefix = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True)
    p = tok(prefix, add_special_tokens=False, return_tensors="pt").input_ids
    a = tok("Ahoy there, matey", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.cat([p, a], 1)).logits[0, p.shape[1] - 1:-1], -1)
    want = lp.gather(-1, a[0].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.tensor(info["base_logp"]), want, rtol=1e-4, atol=1e-4)
    assert "".join(info["tokens"]) == "Ahoy there, matey" and any(abs(d) > 1e-3 for d in info["delta"])
    assert token_shift_html(info).count("<span title=") == len(info["tokens"])  # one shaded span a token
    generated = token_shift(run_id, "Say hi.", max_new_tokens=5)
    assert 0 < len(generated["tokens"]) <= 6
    # The tuned answer came from the arena's loop (adapters by mask, PEFT's off); the shift's
    # own tuned rows are still the adapter's.
    assert any(abs(d) > 1e-3 for d in generated["delta"])


def test_dpo_logps_figure():
    events = [{"type": "start", "method": "dpo"}] + [
        {"type": "step", "step": i, "loss": 0.6, "margin": 0.1 * i, "logps_chosen": -50 + i, "logps_rejected": -60 - i}
        for i in range(1, 4)]
    fig = dpo_logps_figure(events)
    assert [t.name for t in fig.data] == ["chosen", "rejected"] and list(fig.data[1].y) == [-61, -62, -63]


def dpo_folder(name: str, beta: float, lr: float, steps: list[dict], summary: dict | None = None) -> str:
    """A finished DPO run folder with hand-written step events (and a summary.json if given)."""
    d = workspace.runs_dir() / name
    d.mkdir(parents=True)
    cfg = RunConfig.from_dict({"method": "dpo", "model": "smollm2-135m-instruct", "train": {"lr": lr},
                               "data": {"train": "labs/data/concise_dpo.jsonl"}, "dpo": {"beta": beta}})
    cfg.save(d / "config.yaml")
    (d / "status.json").write_text(json.dumps({"run_id": name, "status": "finished", "method": "dpo"}))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    events = [{"type": "start", "method": "dpo"}] + [{"type": "step", **e} for e in steps]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return name


def dpo_step(step, loss, margin, acc, chosen, rejected):
    return {"step": step, "loss": loss, "margin": margin, "accuracy": acc, "rewards_chosen": margin / 2,
            "rewards_rejected": -margin / 2, "logps_chosen": chosen, "logps_rejected": rejected}


@pytest.fixture(scope="module")
def dpo_pair():
    """Lab 4's two runs, by hand: sane (β 0.1, lr 5e-4) and pushed (β 0.02, lr 2e-3)."""
    sane = dpo_folder("20000101-000010-teach-dpo-sane", 0.1, 5e-4, [
        dpo_step(1, 0.69, 0.0, 0.5, -40.0, -80.0), dpo_step(2, 0.5, 1.5, 0.75, -39.0, -84.0),
        dpo_step(3, 0.3, 3.2, 1.0, -38.5, -90.0)], summary={"steps": 3, "final_loss": 0.3})
    pushed = dpo_folder("20000101-000011-teach-dpo-pushed", 0.02, 2e-3, [
        dpo_step(1, 0.69, 0.1, 0.5, -40.0, -80.0), dpo_step(2, 0.1, 9.0, 1.0, -60.0, -200.0),
        dpo_step(4, 0.01, 25.1, 1.0, -80.0, -400.0)])   # stopped: no summary; steps from the events
    return sane, pushed


def test_dpo_summary_numbers(dpo_pair):
    sane, pushed = dpo_pair
    table = dpo_summary([sane, pushed]).set_index("run")
    assert list(table.index) == [sane, pushed]
    a, b = table.loc[sane], table.loc[pushed]
    assert (a["beta"], a["lr"], a["steps"]) == (0.1, 5e-4, 3) and (b["beta"], b["lr"], b["steps"]) == (0.02, 2e-3, 4)
    assert a["final loss"] == pytest.approx(0.3) and b["final loss"] == pytest.approx(0.01)
    assert a["final margin"] == pytest.approx(3.2) and b["final margin"] == pytest.approx(25.1)
    assert a["final accuracy"] == 1.0 and b["final accuracy"] == 1.0
    assert a["chosen logp change"] == pytest.approx(1.5) and a["rejected logp change"] == pytest.approx(-10.0)
    assert b["chosen logp change"] == pytest.approx(-40.0) and b["rejected logp change"] == pytest.approx(-320.0)
    shown = dpo_display(table.reset_index())
    assert list(shown.iloc[1]) == [pushed, "0.02", "2e-3", "4", "0.01", "25.1", "100 %", "−40", "−320"]
    assert list(shown.iloc[0, 1:3]) == ["0.1", "5e-4"] and shown.iloc[0, -2] == "+1.5"


def test_dpo_note_says_what_the_numbers_show(dpo_pair):
    sane, pushed = dpo_pair
    note = dpo_note(dpo_summary([sane, pushed]))
    assert note.startswith("The run with β 0.02 / lr 2e-3 ends with margin 25.1 against 3.2")
    assert "chosen answers' log-probability fell by 40 nats (the other run's rose by 1.5 nats)" in note
    assert "pushed both answers down, the rejected further" in note
    assert note.endswith("with a lower β and a higher learning rate it moved further from it.")
    assert dpo_note(dpo_summary([pushed, sane])) == note       # which dropdown holds which run does not matter
    one = dpo_note(dpo_summary([sane]))
    assert one.startswith("The run with β 0.1 / lr 5e-4 ends with margin 3.2 and 100% of the pairs ranked right")
    assert "rose by 1.5 nats, while the rejected's fell by 10 nats" in one and "pushed" not in one
    assert dpo_note(dpo_summary([])) == DPO_HINT


def test_dpo_summary_missing_values(dpo_pair):
    bare = dpo_folder("20000101-000012-teach-dpo-bare", 0.1, 1e-4, [{"step": 1, "loss": 0.69}])
    row = dpo_summary([bare]).iloc[0]
    assert row["steps"] == 1 and row["final loss"] == pytest.approx(0.69)
    for col in ("final margin", "final accuracy", "chosen logp change", "rejected logp change"):
        assert pd.isna(row[col]), col
    assert list(dpo_display(dpo_summary([bare])).iloc[0, 5:]) == ["—"] * 4
    assert "logged no reward margin" in dpo_note(dpo_summary([dpo_pair[0], bare]))
    empty = workspace.runs_dir() / "20000101-000013-teach-dpo-empty"   # no config, no events
    empty.mkdir()
    (empty / "config.yaml").write_text("method: [\n")
    row = dpo_summary([empty]).iloc[0]
    assert pd.isna(row["beta"]) and pd.isna(row["steps"]) and pd.isna(row["final margin"])
    assert set(dpo_display(dpo_summary([empty])).iloc[0, 1:]) == {"—"}


def test_dpo_summary_on_real_runs(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "dpo.jsonl", DPO_ROWS)
    ids = []
    for beta, lr in ((0.1, 1e-3), (0.02, 5e-3)):
        cfg = tiny_cfg(tiny_model_dir, data, "dpo", max_steps=3, lr=lr)
        cfg.dpo.beta = beta
        ids.append(run(cfg).run_id)
    table = dpo_summary(ids)
    assert list(table["beta"]) == [0.1, 0.02] and list(table["lr"]) == [1e-3, 5e-3] and list(table["steps"]) == [3, 3]
    assert table.drop(columns="run").notna().all().all()   # every column found in what a real run logs
    assert dpo_note(table).startswith("The run with β ")


def test_inside_tab_dpo_view(dpo_pair):
    from tunelab.ui.inside_logic import dpo_view

    sane, pushed = dpo_pair
    table, note, r1, l1, r2, l2, two = dpo_view(sane, pushed)
    assert list(table["run"]) == [sane, pushed] and two and "25.1 against 3.2" in note
    assert list(l1.data[0].y) == [-40.0, -39.0, -38.5] and list(l2.data[0].y) == [-40.0, -60.0, -80.0]
    assert r1 is not None and r2 is not None
    table, note, r1, l1, r2, l2, two = dpo_view(None, pushed)   # only Compare with: it fills the first column
    assert list(table["run"]) == [pushed] and not two and r2 is None and l2 is None
    assert list(l1.data[0].y) == [-40.0, -60.0, -80.0]
    table, note, *_ = dpo_view(sane, sane)
    assert len(table) == 1
    table, note, *_ = dpo_view("nope", None)
    assert table.empty and "tl-msg-error" in note
    assert dpo_view(None, None)[1] and dpo_view(None, None)[-1] is False


# --------------------------------------------------------------------------- what a user reads (issue 15)

WALK = pd.DataFrame([
    {"run": "20261128-101010-19-walk-full", "method": "full", "trainable params": 134515008, "trainable %": 100.0,
     "saved MB": 513.1, "peak memory MB": 3953.3633, "minutes": 4.2, "final loss": 1.1234},
    {"run": "20261128-111111-21-walk-lora", "method": "lora", "trainable params": 2442240, "trainable %": 1.78,
     "saved MB": 9.4, "peak memory MB": 2512.2, "minutes": 0.5, "final loss": 1.3}])


def test_compare_shows_whole_run_names_and_formatted_numbers():
    fig = compare_figure(WALK)
    params, saved, memory, minutes = fig.data
    # Whole run ids (they were cut to their last 12 characters: "21-walk-lora").
    assert all(run in label for run, label in zip(WALK["run"], params.y))
    assert list(params.text) == ["135 M", "2.44 M"] and list(memory.text) == ["3,953 MB", "2,512 MB"]
    assert list(saved.text) == ["513 MB", "9.4 MB"] and list(minutes.text) == ["4.2 min", "30 s"]
    # The log axis is ticked at powers of ten only, named 1M, 10M... (not "2, 10M, 5, 2, 1M, 5").
    log_axis = fig.layout.xaxis
    assert log_axis.type == "log" and all(math.log10(v).is_integer() for v in log_axis.tickvals)
    assert "1M" in log_axis.ticktext and "100M" in log_axis.ticktext
    assert all(t.cliponaxis is False for t in fig.data)   # the value labels right of the bars stay whole
    assert fig.layout.xaxis4.tickformat != "~s"           # no "500m" for half a minute
    table = compare_display(WALK)
    assert table.loc[0, "trainable params"] == "135 M" and table.loc[1, "trainable params"] == "2.44 M"
    assert table.loc[0, "peak memory"] == "3,953 MB" and table.loc[1, "time"] == "30 s"


def test_compare_without_runs_says_what_to_pick():
    fig = compare_figure(compare_methods([]))
    assert not fig.data and "Pick two or more finished runs" in fig.layout.annotations[0].text


def test_nf4_memory_labels_are_not_clipped():
    info = {"layer": "model.layers.0.self_attn.q_proj", "errors": torch.randn(64) * 0.01,
            "memory_mb": {"fp32": 513.1, "bf16": 256.6, "nf4": 106.0}}
    bars = nf4_figure(info).data[1]
    assert list(bars.text) == ["513 MB", "257 MB", "106 MB"]
    # Room above the tallest bar for its label, and the label may draw outside the plot area.
    assert bars.cliponaxis is False and nf4_figure(info).layout.yaxis2.range[1] >= 513.1 * 1.15


def test_repeats_finds_a_loop():
    assert repeats("Boil an egg:\n\n" * 9)          # what greedy decoding gave on the old default
    assert not repeats("Water is essential for our survival and well-being. It helps regulate body "
                       "temperature, aids digestion, and supports bodily functions.")


def zero_adapter_run(model_dir, run_id):
    """An adapter run whose B matrices are all zero: it stopped before its first update (or
    its updates were zero), so the tuned model is exactly the base."""
    from safetensors.torch import load_file, save_file
    make_run(model_dir, run_id)
    f = info_dir(run_id) / "model" / "adapter_model.safetensors"
    save_file({k: (v * 0 if "lora_B" in k else v) for k, v in load_file(str(f)).items()}, str(f))
    return run_id


def test_token_shift_decodes_base_and_tuned_alike_and_says_when_nothing_changed(tiny_model_dir):
    # The same fair decoding for both: a run that did not change the model answers as the base does.
    info = token_shift(zero_adapter_run(tiny_model_dir, "20000101-000004-teach-zero"), "Say hi.", max_new_tokens=12)
    assert info["sampling"] == {**SHIFT_SAMPLING, "max_new_tokens": 12} and SHIFT_SAMPLING["temperature"] > 0
    assert info["answer"] == info["base_answer"] and info["unchanged"] and info["max_abs_delta"] < 1e-3
    page = token_shift_html(info)
    assert "has not changed the model" in page and "Mean shift" not in page   # not a meaningless +0.00
    assert "temperature 0.2, top-p 0.9, seed 0" in page
    # A run that changed the model: shaded, with its mean shift, and the base's answer beside it.
    moved = token_shift(make_run(tiny_model_dir, "20000101-000005-teach-moved", seed=6), "Say hi.", max_new_tokens=12)
    assert not moved["unchanged"] and moved["base_answer"] == info["base_answer"]
    page = token_shift_html(moved)
    assert "Mean shift" in page and "has not changed" not in page and html.escape(moved["base_answer"]) in page


@pytest.mark.slow
def test_default_prompt_gets_a_sensible_base_answer(bundled_model_dir):
    """On the view's default prompt and decoding the bundled base answers and stops, with no
    loop; greedy decoding on the old default ("How do I boil an egg?") looped."""
    from tunelab.arena.chat import BASE, Arena, Request, Sampling

    arena = Arena(bundled_model_dir)

    def answer(prompt, sampling):
        for replies in arena.stream([Request(BASE, [{"role": "user", "content": prompt}], sampling)]):
            pass
        return replies[0]

    for seed in (0, 1, 2):   # the view's seed and two more: sensible answers, none looping
        reply = answer(SHIFT_PROMPT, Sampling(**{**SHIFT_SAMPLING, "seed": seed}, max_new_tokens=SHIFT_MAX_NEW_TOKENS))
        assert not reply.error and not repeats(reply.text) and "water" in reply.text.lower()
    greedy = answer("How do I boil an egg?", Sampling(temperature=0.0, max_new_tokens=60))
    assert repeats(greedy.text)


def test_feedback_view_and_check_on_dpo_kto_orpo_runs(tiny_model_dir, tmp_path):
    """Lab 6's view on real tiny runs: a row and a chart a run, each method's own signal,
    and the lab's check on each (the base answering once)."""
    from tunelab import run
    from tunelab.teach import feedback_checks, feedback_display, feedback_summary
    from tunelab.teach.labs import get_lab
    from tunelab.ui import inside_logic
    lab = get_lab("feedback")
    ids = []
    for arm in (None, "kto", "orpo"):
        cfg = lab.arm_config(arm) if arm else RunConfig.from_dict(lab.config.to_dict())
        cfg.model, cfg.train.max_steps, cfg.train.max_length, cfg.train.precision = tiny_model_dir, 2, 64, "fp32"
        ids.append(run(cfg).run_id)
    table = feedback_summary(ids).set_index("method")
    assert list(table.index) == ["dpo", "kto", "orpo"]
    assert table.loc["orpo", "learns from"] == "pairs, no reference" and table.loc["kto", "beta"] == 0.1
    assert table.loc["dpo", "signal"].startswith("accuracy") and table.loc["kto", "signal"].startswith("KL")
    assert table.loc["orpo", "signal"].startswith("log-odds gap")
    assert (table["steps"] == 2).all() and (table["s a step"] > 0).all() and (table["peak MB"] > 0).all()
    shown = feedback_display(feedback_summary(ids))
    assert list(shown["method"]) == ["DPO", "KTO", "ORPO"]
    out = inside_logic.feedback_view([ids[0], None, ids[2], ids[2]])   # an empty column, a run twice
    assert len(out[0]) == 2 and out[2] is not None and out[3] is not None and out[4] is None
    assert ids[0] in inside_logic.finished("feedback") and all(i in inside_logic.finished("feedback") for i in ids)
    checks = feedback_checks(ids, lab.check, limit=2)
    assert list(checks["run"]) == ids and set(checks.columns) == {"run", "words", "facts", "passes"}
    assert all("→" in v for v in checks["words"])
    table, note = inside_logic.feedback_check([None, None, None])
    assert table is None and "Pick a run" in note
