"""Every lab card loads, its dataset is in the format its method needs, and its config trains."""

import re

import pytest
import yaml

from tunelab import RunConfig, run
from tunelab.data import load_examples
from tunelab.labs import LabError, get_lab, list_labs, load_lab

LABS = list_labs()


def test_five_labs_one_per_idea():
    assert [(lab.number, lab.key) for lab in LABS] == [(1, "full"), (2, "lora"), (3, "qlora"), (4, "dpo"),
                                                       (5, "loop")]
    for lab in LABS:
        assert lab.minutes <= 5, f"{lab.path.name}: a lab run must fit in five minutes"
        assert lab.instructions.startswith("**Goal.**") and len(lab.concept) > 100


@pytest.mark.parametrize("lab", LABS, ids=[lab.key for lab in LABS])
def test_card_config_and_dataset(lab):
    assert RunConfig.from_yaml(lab.path).to_dict() == lab.config.to_dict()  # a card is a config file
    fmt, rows = load_examples(lab.dataset, lab.config.objective)
    assert len(rows) >= 40, f"{lab.dataset}: {len(rows)} rows"
    if lab.arena:
        assert load_examples(lab.arena["pairs"], "dpo")[0] == "preference"
    for cfg in lab.sweep_configs():
        assert cfg.method == lab.config.method and cfg.name.startswith(f"lab{lab.number}-r")


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _user_prompts(path: str, objective: str) -> set[str]:
    _, rows = load_examples(path, objective)
    return {_norm(r["prompt"]) if isinstance(r["prompt"], str) else
            " / ".join(_norm(m["content"]) for m in r["prompt"] if m["role"] == "user") for r in rows}


@pytest.mark.parametrize("lab", LABS, ids=[lab.key for lab in LABS])
def test_held_out_prompts_are_not_trained_on(lab):
    held = [_norm(item["prompt"]) for item in lab.check.items()]
    assert len(held) >= 8 and len(set(held)) == len(held)
    seen = _user_prompts(lab.dataset, lab.config.objective)
    if lab.arena:  # pairs the lab loads into the arena may be trained on in its DPO step
        seen |= _user_prompts(lab.arena["pairs"], "dpo")
    assert not set(held) & seen, f"{lab.check.prompts}: also in the training data"
    if lab.check.min_facts is not None:
        assert sum(bool(item.get("fact")) for item in lab.check.items()) >= 6, "a fact share needs facts to share"


@pytest.mark.parametrize("lab", LABS, ids=[lab.key for lab in LABS])
def test_card_trains_on_the_tiny_model(lab, tiny_model_dir):
    cfg = RunConfig.from_dict(lab.config.to_dict())
    cfg.model, cfg.train.max_steps, cfg.train.max_length, cfg.train.precision = tiny_model_dir, 2, 64, "fp32"
    cfg.train.eval_steps = 0
    result = run(cfg)
    assert result.status == "finished" and result.summary["steps"] == 2


def test_bad_cards_name_the_file_and_field(tmp_path):
    good = yaml.safe_load(LABS[1].path.read_text())
    cases = [({"title": None}, "missing title"),
             ({"config": good["config"] | {"method": "sft"}}, "config.method"),
             ({"dataset": "labs/data/other.jsonl"}, "is not the config's data.train"),
             ({"expected": {"loss": [2, 1], "minutes": 1, "peak_memory_mb": 1}}, "expected.loss"),
             ({"sweep": {"field": "lora.r"}}, "sweep needs"),
             ({"check": None}, "missing check"),
             ({"check": {"prompts": "labs/heldout/nope.jsonl", "min_style": 0.8}}, "no file labs/heldout/nope.jsonl"),
             ({"check": {"prompts": "labs/heldout/pirate.jsonl"}}, "check needs at least one of"),
             ({"expected": good["expected"] | {"style": 0.9}}, r"expected.style must be \[base, tuned\]")]
    for change, message in cases:
        p = tmp_path / "lab9_bad.yaml"
        p.write_text(yaml.safe_dump(good | change))
        with pytest.raises(LabError, match=message) as e:
            load_lab(p)
        assert "lab9_bad.yaml" in str(e.value)
    with pytest.raises(LabError, match="no lab 'nope'; the labs are: full, lora"):
        get_lab("nope")
    assert get_lab("2").key == "lora" and get_lab("lab4_dpo").key == "dpo"
