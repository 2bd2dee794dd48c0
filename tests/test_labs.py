"""Every lab card loads, its dataset is in the format its method needs, and its config trains."""

import re

import pytest
import yaml

from tunelab import RunConfig, run
from tunelab.data import load_examples
from tunelab.teach.labs import (EMPTY_ANSWER, NOT_MEASURED, PLACEHOLDER, LabError, fill, get_lab, list_labs, load_lab, next_overrides,
                          plain)

LABS = list_labs()


def test_six_labs_one_per_idea():
    assert [(lab.number, lab.key) for lab in LABS] == [(1, "full"), (2, "lora"), (3, "qlora"), (4, "dpo"),
                                                       (5, "loop"), (6, "feedback")]
    for lab in LABS:
        # measured by labs/measure.py, here and as a CPU without native bf16 runs it (fp32, AVX2)
        assert lab.minutes <= 5 and lab.expected["minutes_fp32"] <= 5, f"{lab.path.name}: a lab must fit in five minutes"
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
    for arm in lab.compare or []:   # each arm's data is in the format its method needs
        cfg = lab.arm_config(arm["name"])
        assert cfg.name == f"lab{lab.number}-{arm['name']}"
        assert len(load_examples(cfg.data.train, cfg.objective)[1]) >= 40


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
    for arm in lab.compare or []:
        cfg = lab.arm_config(arm["name"])
        seen |= _user_prompts(cfg.data.train, cfg.objective)
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


def test_the_feedback_lab_trains_the_same_feedback_three_ways(tiny_model_dir):
    lab = get_lab("feedback")
    assert lab.config.method == "dpo" and [a["name"] for a in lab.compare] == ["kto", "orpo"]
    kto, orpo = lab.arm_config("kto"), lab.arm_config("orpo")
    assert (kto.method, orpo.method) == ("kto", "orpo") and orpo.data.train == lab.config.data.train
    # KTO's answers are the card's pairs split (the chosen good, the rejected bad) plus thumbs.
    _, pairs = load_examples(lab.config.data.train, "dpo")
    _, answers = load_examples(kto.data.train, "kto")
    split = [(a["prompt"], a["completion"], a["label"]) for a in answers[:2 * len(pairs)]]
    assert split == [x for p in pairs for x in ((p["prompt"], p["chosen"], True), (p["prompt"], p["rejected"], False))]
    assert len(answers) > 2 * len(pairs) and {a["label"] for a in answers[2 * len(pairs):]} == {True, False}
    assert kto.train.batch_size == 2 * lab.config.train.batch_size   # as many answers a step as DPO's pairs hold
    for cfg in (kto, orpo):
        cfg.model, cfg.train.max_steps, cfg.train.max_length, cfg.train.precision = tiny_model_dir, 2, 64, "fp32"
        assert run(cfg).status == "finished"
    from tunelab.ui.labs_logic import arm_choices, cli_line, lab_values
    assert arm_choices(lab) == [(a["title"], a["name"]) for a in lab.compare]
    assert cli_line(lab, arm="kto").endswith("--set method=kto --set data.train=labs/data/concise_kto.jsonl "
                                             "--set train.batch_size=4")
    assert lab_values(lab, ["name", "method"], arm="orpo") == {"name": "lab6-orpo", "method": "orpo"}


def test_bad_compare_arms_name_the_problem(tmp_path):
    good = yaml.safe_load(get_lab("feedback").path.read_text())
    for arms, message in (([], "compare is a list of arms"),
                          ([{"name": "kto", "title": "t"}], "compare needs a name, a title and set"),
                          ([{"name": "kto", "title": "t", "set": {"kto.gamma": 1}}], "compare.set: kto.gamma"),
                          ([{"name": "kto", "title": "t", "set": {"method": "kto"}, "breaks": ["facts"]}],
                           "unknown fields"),
                          ([{"name": "card", "title": "t", "set": {"method": "orpo"}}], "its own name")):
        p = tmp_path / "lab9_bad.yaml"
        p.write_text(yaml.safe_dump(good | {"compare": arms}))
        with pytest.raises(LabError, match=message) as e:
            load_lab(p)
        assert "lab9_bad.yaml" in str(e.value)


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


# --------------------------------------------------------------------------- figures come from measurement

UNIT = re.compile(r"\d[\d.,]*\s*(?:%|[KMG]B\b|min\b|minutes?\b|seconds?\b|s\b)")


@pytest.mark.parametrize("lab", LABS, ids=[lab.key for lab in LABS])
def test_a_card_types_no_measured_figure_and_fills_every_one(lab):
    """A figure with a unit in a card's text is a {{placeholder}} filled from labs/results.json
    (labs/measure.py writes it), never typed; and every placeholder has a measured value."""
    raw = yaml.safe_load(lab.path.read_text())
    for part in ("concept", "instructions"):
        typed = UNIT.findall(PLACEHOLDER.sub("", raw[part]))
        assert not typed, f"{lab.path.name} {part}: typed figures {typed}; use {{{{lab<N>.<field>}}}}"
        assert NOT_MEASURED not in getattr(lab, part), f"{lab.path.name} {part}: a figure was never measured"
        assert "{{" not in getattr(lab, part)


def test_placeholders_read_the_measured_rows():
    results = {"machine": "2 cores", "rows": [
        {"lab": 2, "variant": "card", "trainable_pct": 1.7832, "final_loss": 1.3181, "peak_memory_mb": 1982.4,
         "check": {"base": {"style": 0.0}, "tuned": {"style": 0.917}}},
        {"lab": 2, "variant": "r=64", "output_size_mb": 78.04},
        {"lab": 4, "variant": "push", "margin": 12.345, "accuracy": 1.0, "nf4_error": None}]}
    text = ("{{lab2.trainable_pct}} | {{ lab2.final_loss }} | {{lab2.peak_memory_mb}} | {{lab2.tuned.style}} | "
            "{{lab2.base.style}} | {{lab2.r=64.output_size_mb}} | {{lab4.push.margin}} | {{lab4.push.accuracy}} | "
            "{{machine}} | {{lab3.final_loss}} | {{lab4.push.nf4_error}}")
    assert fill(text, results=results) == (f"1.78 % | 1.32 | 1,982 MB | 92 % | 0 % | 78.0 MB | 12.3 | 100 % | 2 cores | "
                                           f"{NOT_MEASURED} | {NOT_MEASURED}")
    for bad, why in (("{{lab2.fastness}}", "no measured field 'fastness'"), ("{{two.final_loss}}", "lab<N>"),
                     ("{{lab2.tuned.speed}}", "no measured field 'tuned.speed'")):
        with pytest.raises(LabError, match=why) as e:
            fill(bad, "lab9_x.yaml", results)
        assert "lab9_x.yaml" in str(e.value)


def test_an_answer_reads_quoted_and_an_empty_one_says_so():
    """A measured answer is quoted; an empty one (lab 4's push can end its answer at once) is
    said in words, not shown as unmeasured; a run without the answer is unmeasured."""
    results = {"rows": [{"lab": 4, "variant": "card", "after": "A spider has  8 legs."},
                        {"lab": 4, "variant": "push", "after": ""}, {"lab": 6, "variant": "card"}]}
    assert fill("{{lab4.after}} | {{lab4.push.after}} | {{lab6.after}}", results=results) == (
        f'"A spider has 8 legs." | {EMPTY_ANSWER} | {NOT_MEASURED}')


def test_the_dpo_lab_has_a_second_step_that_pushes_it():
    lab = get_lab("dpo")
    step = lab.next_config()
    assert lab.next["breaks"] == ["facts"] and step.name == f"lab4-{lab.next['name']}"
    assert step.dpo.beta < lab.config.dpo.beta or step.train.lr > lab.config.train.lr  # pushed: less tether, bigger steps
    assert step.data.train == lab.config.data.train and step.train.max_steps == lab.config.train.max_steps
    from tunelab.ui.labs_logic import cli_line, lab_values
    assert cli_line(lab, True).endswith(" ".join(f"--set {o}" for o in next_overrides(lab.next)))
    values = lab_values(lab, ["name", "train.lr", "dpo.beta"], step=True)
    assert values == {"name": step.name, "train.lr": step.train.lr, "dpo.beta": step.dpo.beta}


def test_bad_next_steps_name_the_problem(tmp_path):
    good = yaml.safe_load(get_lab("dpo").path.read_text())
    for step, message in (({"name": "push", "title": "t"}, "next needs a name, a title and set"),
                          ({"name": "push", "title": "t", "set": {"dpo.gamma": 1}}, "next.set: dpo.gamma"),
                          ({"name": "push", "title": "t", "set": {"train.lr": 1e-3}, "breaks": ["style"]},
                           "next.breaks"),
                          ({"name": "push", "title": "t", "set": {"train.lr": 1e-3}, "why": 1}, "unknown fields")):
        p = tmp_path / "lab9_bad.yaml"
        p.write_text(yaml.safe_dump(good | {"next": step}))
        with pytest.raises(LabError, match=message) as e:
            load_lab(p)
        assert "lab9_bad.yaml" in str(e.value)


def test_a_quoted_answer_stays_plain_text():
    """A model's answer quoted in a card may hold markdown (the pushed DPO run answers with code
    fences); it is shown as text, on one line, cut at a word."""
    results = {"rows": [{"lab": 4, "variant": "push", "after": "InPython\n\n```\n* Definition [a](b) <b> x|y"}]}
    assert fill("{{lab4.push.after}}", results=results) == r'"InPython \`\`\` \* Definition \[a\](b) \<b\> x\|y"'
    assert plain("one two three four", 12) == "one two …"
