"""The teaching views compute what they claim, checked against independent computations."""

import html
import math

import pandas as pd
import pytest
import torch

from tunelab import run
from tunelab.teach import (SHIFT_MAX_NEW_TOKENS, SHIFT_PROMPT, SHIFT_SAMPLING, compare_display, compare_figure,
                           compare_methods, dpo_logps_figure, lora_figure, lora_html, lora_layers, lora_update,
                           nf4_error, nf4_figure, repeats, token_shift, token_shift_html)

from .test_chat import make_run
from .test_methods import SFT_ROWS, tiny_cfg, write_jsonl


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
    from tunelab import workspace
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


def test_dpo_logps_figure():
    events = [{"type": "start", "method": "dpo"}] + [
        {"type": "step", "step": i, "loss": 0.6, "margin": 0.1 * i, "logps_chosen": -50 + i, "logps_rejected": -60 - i}
        for i in range(1, 4)]
    fig = dpo_logps_figure(events)
    assert [t.name for t in fig.data] == ["chosen", "rejected"] and list(fig.data[1].y) == [-61, -62, -63]


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
    from tunelab.chat import BASE, Arena, Request, Sampling

    arena = Arena(bundled_model_dir)

    def answer(prompt, sampling):
        for replies in arena.stream([Request(BASE, [{"role": "user", "content": prompt}], sampling)]):
            pass
        return replies[0]

    reply = answer(SHIFT_PROMPT, Sampling(**SHIFT_SAMPLING, max_new_tokens=SHIFT_MAX_NEW_TOKENS))
    assert not reply.error and not repeats(reply.text) and "water" in reply.text.lower()
    assert reply.tokens < SHIFT_MAX_NEW_TOKENS          # it ended by itself, not at the limit
    greedy = answer("How do I boil an egg?", Sampling(temperature=0.0, max_new_tokens=60))
    assert repeats(greedy.text)
