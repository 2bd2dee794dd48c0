"""QLoRA's 4-bit base on a CPU: an evaluation must not change how it trains.

bitsandbytes repacks a Linear4bit's weight for a fused CPU inference kernel the first time
the layer runs in eval mode without gradients, on CPUs with AVX512-BF16. That kernel has no
backward, so after the Trainer's first evaluation no gradient flowed back through the
quantised layers: lab 3's QLoRA ended at a loss of 2.6 against LoRA's 1.3
(benchmarks/qlora_gap.py). The test pretends every CPU has AVX512-BF16 so that it fails
wherever the repacking comes back (for instance under a renamed bitsandbytes attribute).
"""

import json

import peft
import pytest
import torch

from tunelab import RunConfig
from tunelab.methods import qlora
from tunelab.training.run import Hardware

ROWS = [{"prompt": f"Say {w}.", "completion": f"{w} {w}, matey."} for w in ("ahoy", "arr", "avast", "yo-ho")]


@pytest.fixture
def qlora_model(tiny_model_dir, tmp_path, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)   # as on the lab's CPU
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = RunConfig.from_dict({"method": "qlora", "model": tiny_model_dir, "data": {"train": str(data)},
                               "train": {"precision": "fp32"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    model, peft_config = qlora.load(cfg, Hardware("cpu", "fp32"))
    model = peft.get_peft_model(model, peft_config)
    torch.manual_seed(0)
    for name, p in model.named_parameters():   # B starts at 0, so A's gradient would be 0 too
        if "lora_B" in name:
            p.data.normal_(std=0.1)
    return model


def _grads(model) -> dict:
    model.train()
    model.zero_grad()
    ids = torch.arange(3, 19).reshape(2, 8)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_an_evaluation_leaves_the_adapter_gradients_unchanged(qlora_model):
    import bitsandbytes as bnb
    before = _grads(qlora_model)
    qlora_model.eval()
    with torch.no_grad():   # what the Trainer's evaluate() and a sample do
        qlora_model(input_ids=torch.arange(3, 11)[None])
    after = _grads(qlora_model)

    assert before.keys() == after.keys() and any("layers.0." in n for n in before)
    for name in before:
        assert before[name].abs().sum() > 0, name
        torch.testing.assert_close(after[name], before[name], msg=f"{name}: gradient changed by an eval pass")
    layers = [m for m in qlora_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
