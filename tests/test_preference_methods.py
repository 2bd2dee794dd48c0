"""DPO, KTO and ORPO on the tiny random model: each raises what it should, keeps its
reference (where it has one) equal to the base, makes the passes a step its lab says, and
ORPO's pairs are grouped by length when asked."""

import pytest
import torch

from tunelab import run
from tunelab.training.events import read_events

from .rows import DPO_ROWS, base_weights, check_run_folder, tiny_cfg, write_jsonl


def overfit(model_dir, data, method, charted):
    """12 steps at a high learning rate on a few rows; the run and its step events, the
    last of which holds every `charted` field."""
    result = run(tiny_cfg(model_dir, data, method, max_steps=12, lr=5e-3))
    check_run_folder(result, method, steps=12)
    steps = [e for e in read_events(result.run_dir) if e["type"] == "step"]
    for key in charted:
        assert key in steps[-1], key
    return result, steps


def test_dpo_lora_raises_the_margin_and_keeps_the_reference(tiny_model_dir, dpo_file):
    charted = ("rewards_chosen", "rewards_rejected", "margin", "accuracy")
    result, steps = overfit(tiny_model_dir, dpo_file, "dpo", charted)
    assert steps[-1]["margin"] > steps[0]["margin"] + 0.05
    assert steps[-1]["accuracy"] == 1.0
    assert_reference_is_the_base(result.model, tiny_model_dir)
    # No second model copy: only one set of base weights in the trained object.
    n_params = sum(p.numel() for p in result.model.parameters())
    assert n_params < 1.2 * sum(p.numel() for p in base_weights(tiny_model_dir).values())


def test_dpo_full_uses_a_frozen_copy(tiny_model_dir, dpo_file):
    cfg = tiny_cfg(tiny_model_dir, dpo_file, "dpo")
    cfg.dpo.adapter = "full"
    result = run(cfg)
    check_run_folder(result, "dpo")
    assert result.summary["trainable_params"] == result.summary["total_params"]


KTO_ROWS = [   # the DPO rows' two answers, each alone with a thumbs up or down
    {"prompt": f"Name a colour number {i}.", "label": i % 2 == 0,
     "completion": "Blue." if i % 2 == 0 else "Well, there are many colours one might name, and it depends on many things."}
    for i in range(8)
]


def assert_reference_is_the_base(model, model_dir):
    """The reference is the base with adapters off: identical to a fresh copy of it."""
    from transformers import AutoModelForCausalLM
    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    model = model.eval()
    with torch.no_grad(), model.disable_adapter():
        ref_logits = model(input_ids=ids).logits
    with torch.no_grad():
        tuned_logits = model(input_ids=ids).logits
        fresh_logits = fresh(input_ids=ids).logits
    assert torch.allclose(ref_logits, fresh_logits, atol=1e-5)
    assert not torch.allclose(tuned_logits, fresh_logits, atol=1e-4)


def count_model_loads(monkeypatch) -> list:
    from tunelab.modelio import loading
    loads, real = [], loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    return loads


def test_kto_lora_raises_desirable_over_undesirable_and_keeps_the_reference(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)
    result, steps = overfit(tiny_model_dir, data, "kto", ("rewards_chosen", "rewards_rejected", "margin", "kl"))
    # Desirable answers rose above the reference, undesirable ones fell below it.
    assert steps[-1]["margin"] > steps[0]["margin"] + 0.2
    assert steps[-1]["rewards_chosen"] > 0 > steps[-1]["rewards_rejected"]
    assert result.summary["adapter"] == "lora"
    assert_reference_is_the_base(result.model, tiny_model_dir)


def test_kto_full_without_precompute_loads_a_frozen_copy(tiny_model_dir, tmp_path, monkeypatch):
    loads = count_model_loads(monkeypatch)
    cfg = tiny_cfg(tiny_model_dir, write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS), "kto")
    cfg.kto.adapter, cfg.kto.precompute_ref = "full", False
    result = run(cfg)
    check_run_folder(result, "kto")
    assert len(loads) == 2   # the policy and its frozen reference
    assert result.summary["trainable_params"] == result.summary["total_params"]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_orpo_raises_chosen_over_rejected_log_odds_with_no_reference(tiny_model_dir, dpo_file, monkeypatch, adapter):
    loads = count_model_loads(monkeypatch)
    cfg = tiny_cfg(tiny_model_dir, dpo_file, "orpo", max_steps=12 if adapter == "lora" else 3, lr=5e-3)
    cfg.orpo.adapter = adapter
    result = run(cfg)
    check_run_folder(result, "orpo", steps=cfg.train.max_steps)
    assert len(loads) == 1   # no reference model, even when every weight trains
    steps = [e for e in read_events(result.run_dir) if e["type"] == "step"]
    for key in ("nll_loss", "log_odds_ratio", "log_odds_chosen", "logps_chosen", "logps_rejected"):
        assert key in steps[-1], key
    assert steps[0]["tokens_per_s"] > 0
    if adapter == "lora":
        # log odds(chosen) − log odds(rejected) grows: the chosen answer pulls ahead.
        assert steps[-1]["log_odds_chosen"] > steps[0]["log_odds_chosen"] + 0.1
        assert steps[-1]["log_odds_ratio"] > steps[0]["log_odds_ratio"]


def test_model_passes_a_step_of_dpo_kto_and_orpo(tiny_model_dir, tmp_path, monkeypatch):
    """What lab 6 says each method runs a training step, counted: the decoder's forward
    passes inside each step, with and without gradients. DPO (reference precomputed): one,
    chosen and rejected batched together. KTO: two, the answers and, without gradients,
    the KL estimate's mismatched answers. ORPO: one, each pair as one row (the prompt the two
    sides share, then both answers, the rejected one masked from the chosen one), and no
    reference pass at all, not even before training."""
    from transformers import Trainer
    from transformers.models.llama import modeling_llama

    calls, in_step = [], []
    forward, step = modeling_llama.LlamaModel.forward, Trainer.training_step

    def counting_forward(self, *a, **k):
        calls.append(("step" if in_step else "outside", torch.is_grad_enabled()))
        return forward(self, *a, **k)

    def counting_step(self, *a, **k):
        in_step.append(1)
        try:
            return step(self, *a, **k)
        finally:
            in_step.clear()
    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", counting_forward)
    monkeypatch.setattr(Trainer, "training_step", counting_step)
    data = {"dpo": write_jsonl(tmp_path / "dpo.jsonl", DPO_ROWS), "orpo": write_jsonl(tmp_path / "orpo.jsonl", DPO_ROWS),
            "kto": write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)}
    seen = {}
    for method in ("dpo", "kto", "orpo"):
        calls.clear()
        run(tiny_cfg(tiny_model_dir, data[method], method, max_steps=3, batch_size=2))
        steps = [c for c in calls if c[0] == "step"]
        seen[method] = (sum(g for _, g in steps) / 3, sum(not g for _, g in steps) / 3,
                        sum(c[0] == "outside" for c in calls))
    assert seen["dpo"][:2] == (1, 0) and seen["dpo"][2] > 0      # the reference, once, before training
    assert seen["kto"][:2] == (1, 1) and seen["kto"][2] > 0      # + the KL estimate, without gradients
    assert seen["orpo"] == (1, 0, 0)                             # no reference pass at all


def test_orpo_pairs_grouped_by_length_drawn_from_seed_and_epoch():
    """ORPO's `train.group_by_length` sampler: every pair once an epoch; full batches first,
    any short one last; each batch a run of the length order, so a batch's padding is far
    below a random batch's; the order is the seed's and the epoch's, not the global RNG's."""
    import random

    from tunelab.methods.orpo import PairLengthSampler
    rng = random.Random(0)
    lengths = [rng.randint(60, 200) for _ in range(60)]

    def batches(sampler):
        order = list(sampler)
        return [order[i:i + 8] for i in range(0, len(order), 8)]

    def padding(groups):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in groups)

    sampler = PairLengthSampler(lengths, 8, seed=3)
    first = batches(sampler)
    assert sorted(i for b in first for i in b) == list(range(60))
    assert [len(b) for b in first] == [8] * 7 + [4]
    ranked = sorted(range(60), key=lambda i: -lengths[i])
    spans = [sorted(ranked.index(i) for i in b) for b in first]
    assert all(s[-1] - s[0] == len(s) - 1 for s in spans)           # a run of the length order
    random_batches = [list(range(60))[i:i + 8] for i in range(0, 60, 8)]
    assert padding(first) * 4 < padding(random_batches)
    torch.manual_seed(123)
    assert batches(PairLengthSampler(lengths, 8, seed=3)) == first   # the global RNG plays no part
    sampler.set_epoch(1)
    second = batches(sampler)
    assert second != first and sorted(map(sorted, second)) == sorted(map(sorted, first))
    assert batches(PairLengthSampler(lengths, 8, seed=4)) != first


@pytest.mark.parametrize("grouped", [True, False])
def test_orpo_trainer_groups_pairs_only_when_asked(tiny_model_dir, dpo_file, monkeypatch, grouped):
    from tunelab.methods.orpo import PairLengthSampler
    drawn = []
    original = PairLengthSampler.__iter__

    def spy(self):
        drawn.append(len(self))
        return original(self)
    monkeypatch.setattr(PairLengthSampler, "__iter__", spy)
    cfg = tiny_cfg(tiny_model_dir, dpo_file, "orpo", max_steps=1)
    cfg.train.group_by_length = grouped
    run(cfg)
    assert bool(drawn) is grouped, drawn
