"""The teaching views compute what they claim, checked against independent computations."""

import pytest
import torch

from tunelab import run
from tunelab.teach import (compare_figure, compare_methods, dpo_logps_figure, lora_figure, lora_html,
                           lora_layers, lora_update, nf4_error, nf4_figure, token_shift, token_shift_html)

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
    assert token_shift_html(info).count("<span") == len(info["tokens"])
    generated = token_shift(run_id, "Say hi.", max_new_tokens=5)
    assert 0 < len(generated["tokens"]) <= 6


def test_dpo_logps_figure():
    events = [{"type": "start", "method": "dpo"}] + [
        {"type": "step", "step": i, "loss": 0.6, "margin": 0.1 * i, "logps_chosen": -50 + i, "logps_rejected": -60 - i}
        for i in range(1, 4)]
    fig = dpo_logps_figure(events)
    assert [t.name for t in fig.data] == ["chosen", "rejected"] and list(fig.data[1].y) == [-61, -62, -63]
