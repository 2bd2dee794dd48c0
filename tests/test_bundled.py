"""A few real steps on the bundled SmolLM2-135M-Instruct with each method.

These are the tests that say the lab works on the model users actually get; they take
tens of seconds, not minutes (two steps, short rows)."""

import pytest

from tunelab import RunConfig, run
from tunelab.training.events import read_events

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method, adapter, data", [
    ("full", None, "labs/data/pirate_sft.jsonl"),
    ("lora", None, "labs/data/pirate_sft.jsonl"),
    ("qlora", None, "labs/data/pirate_sft.jsonl"),
    ("dpo", "lora", "labs/data/concise_dpo.jsonl"),
])
def test_bundled_model_trains_with_each_method(bundled_model_dir, method, adapter, data):
    cfg = RunConfig.from_dict({
        "method": method, "model": "smollm2-135m-instruct", "data": {"train": data},
        "train": {"max_steps": 2, "batch_size": 2 if method != "dpo" else 1, "max_length": 160, "lr": 1e-4},
        "dpo": {"adapter": adapter or "lora"},
    })
    result = run(cfg)
    assert result.status == "finished"
    steps = [e for e in read_events(result.run_dir) if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    # A real instruct model starts far below the uniform-guess loss ln(49152) ≈ 10.8.
    if method != "dpo":
        assert 0.1 < steps[0]["loss"] < 6.0
    else:
        assert steps[0]["margin"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at step 1
    s = result.summary
    base_params = 134_515_008  # SmolLM2-135M, tied embeddings counted once
    if method == "full":
        assert s["trainable_params"] == s["total_params"] == base_params
    else:
        assert s["total_params"] == base_params + s["trainable_params"]  # base + adapters
        assert 0 < s["trainable_pct"] < 5


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_bundled_model_trains_with_kto_and_orpo(bundled_model_dir, method, tmp_path):
    """KTO on a few of lab 6's labelled answers (both kinds), ORPO on its pairs."""
    import json
    data = "labs/data/concise_dpo.jsonl"
    if method == "kto":
        rows = [json.loads(line) for line in open("labs/data/concise_kto.jsonl", encoding="utf-8")][:8]
        assert {r["label"] for r in rows} == {True, False}
        data = tmp_path / "kto.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig.from_dict({"method": method, "model": "smollm2-135m-instruct", "data": {"train": str(data)},
                               "train": {"max_steps": 2, "batch_size": 2, "max_length": 160, "lr": 1e-4}})
    result = run(cfg)
    assert result.status == "finished"
    steps = [e for e in read_events(result.run_dir) if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    if method == "kto":   # policy == reference at step 1: no reward yet, on either kind of answer
        assert all(abs(steps[0].get(k, 0.0)) < 1e-3 for k in ("rewards_chosen", "rewards_rejected"))
    else:                 # the SFT part of ORPO's loss is a real instruct model's cross-entropy
        assert 0.1 < steps[0]["nll_loss"] < 6.0 and "log_odds_chosen" in steps[0]
    s = result.summary
    assert s["total_params"] == 134_515_008 + s["trainable_params"] and 0 < s["trainable_pct"] < 5
