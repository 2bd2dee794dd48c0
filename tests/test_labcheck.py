"""The labs' checks on known strings, and the measuring script's verdict on made-up scores."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.teach.labcheck import LabCheck, describe, has_fact, is_pirate, misses, score, words

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path):
    return [json.loads(line) for line in (ROOT / path).read_text().splitlines() if line.strip()]


def test_the_pirate_scorer_separates_the_two_datasets_we_wrote():
    pirate = [r["messages"][1]["content"] for r in _jsonl("labs/data/pirate_sft.jsonl")]
    plain = [r[k] for r in _jsonl("labs/data/concise_dpo.jsonl") for k in ("chosen", "rejected")]
    assert all(map(is_pirate, pirate))
    assert not any(map(is_pirate, plain))


@pytest.mark.parametrize("text, pirate", [
    ("Arr, the capital be Paris.", True),                     # a strong marker
    ("Fair winds!", True),                                    # the data's sign-off
    ("Lower yer egg into the pot.", True),
    ("The ship be sailin' home.", True),                      # two weak ones: "be" for "is", a dropped g
    ("Ye olde shoppe sells bread.", False),                   # one weak marker alone is ordinary English
    ("It will be sunny, and it can be cold.", False),         # "be" after a modal
    ("Be careful with the knife. To be sure, it can be sharp.", False),  # an order, an infinitive, a modal
    ("Boil the egg for ten minutes.", False),
    ("The harbour is full of pirates and parrots.", False),   # pirate topics are not the pirate voice
])
def test_pirate_style_on_known_strings(text, pirate):
    assert is_pirate(text) is pirate


@pytest.mark.parametrize("text, fact, found", [
    ("A leap year has 366 days.", ["366"], True),
    ("It has 366.", ["366"], True),                           # a full stop is not a decimal point
    ("It has 3660 days.", ["366"], False),                    # a number inside another number
    ("It has 1366 days.", ["366"], False),
    ("About 366.5 days.", ["366"], False),
    ("That is 1,366 days.", ["366"], False),
    ("There are 1,440 minutes in a day.", ["1440"], True),    # thousands separators dropped
    ("A spider has eight legs.", ["8", "eight"], True),
    ("A spider has 80 legs.", ["8", "eight"], False),
    ("Eighteen legs.", ["8", "eight"], False),
    ("the capital is PARIS", ["Paris"], True),                # case-insensitive
    ("A Parisian café.", ["Paris"], False),                   # word-bounded
    ("Water is H2O.", "H2O", True),
])
def test_fact_check_on_known_strings(text, fact, found):
    assert has_fact(text, fact) is found


def test_length_and_the_set_scores():
    assert words("one two  three\nfour") == 4 and words("") == 0
    items = [{"prompt": "a", "fact": ["Paris"]}, {"prompt": "b", "fact": ["7"]}, {"prompt": "c"}]
    answers = ["Arr, Paris, matey.", "There are 17 days in a week, and that is all there is to say.", "Ok."]
    s = score(answers, items)
    assert s == {"style": pytest.approx(1 / 3), "words": 3.0, "facts": 0.5}  # facts: over the 2 with a fact
    assert "facts" not in score(["x"], [{"prompt": "p"}])


def test_a_check_passes_only_when_the_tuned_model_meets_it_and_the_base_does_not():
    style = LabCheck.from_dict({"prompts": "labs/heldout/pirate.jsonl", "min_style": 0.8})
    assert misses(style, {"style": 0.0}, {"style": 0.9}) == []
    assert misses(style, {"style": 0.0}, {"style": 0.5}) == ["tuned style 50 % is below 80 %"]
    assert misses(style, {"style": 0.9}, {"style": 1.0}) == [
        "the base model already passes it, so it shows nothing the tuning did"]
    concise = LabCheck.from_dict({"prompts": "labs/heldout/concise.jsonl", "max_words": 30, "min_facts": 0.6})
    assert describe(concise) == "words ≤ 30, facts ≥ 60 %"
    assert misses(concise, {"words": 60, "facts": 0.75}, {"words": 14, "facts": 0.75}) == []
    # concise but wrong: the over-optimised DPO run ("a spider has 80 legs")
    assert misses(concise, {"words": 60, "facts": 0.75}, {"words": 9, "facts": 0.25}) == [
        "tuned facts 25 % is below 60 %"]
    assert misses(concise, {"words": 60, "facts": 0.75}, {"words": 41, "facts": 0.75}) == [
        "tuned words 41 is above 30"]


@pytest.mark.parametrize("block, message", [
    ({"min_style": 0.8}, "check needs prompts"),
    ({"prompts": "labs/heldout/pirate.jsonl"}, "at least one of"),
    ({"prompts": "labs/heldout/pirate.jsonl", "min_stlye": 0.8}, "unknown fields"),
    ({"prompts": "labs/heldout/pirate.jsonl", "min_style": "high"}, "check.min_style must be a number"),
])
def test_bad_check_blocks_say_what_is_wrong(block, message):
    with pytest.raises(ValueError, match=message):
        LabCheck.from_dict(block)


# --------------------------------------------------------------------------- labs/measure.py's verdict

@pytest.fixture
def measure(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lab_measure", ROOT / "labs" / "measure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Labs\n{mod.BEGIN}\nold\n{mod.END}\nafter\n")
    monkeypatch.setattr(mod, "README", readme)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results.json")
    return mod


def _row(lab, key, variant="card", misses=()):
    return {"lab": lab, "key": key, "variant": variant, "minutes": 1.0, "peak_memory_mb": 2000,
            "trainable_pct": 1.0, "trainable_params": 10, "output_size_mb": 1.0, "final_loss": 1.0,
            "prompt": "q?", "before": "b", "after": "t",
            "check": {"rule": "style ≥ 80 %", "judged": ["style"], "base": {"style": 0.0},
                      "tuned": {"style": 0.5 if misses else 0.9}, "misses": list(misses), "passes": not misses,
                      "sampling": {"temperature": 0.2, "top_p": 0.9, "seed": 0, "max_new_tokens": 96}}}


def test_measure_names_the_lab_and_the_check_it_missed(measure):
    rows = [_row(2, "lora"), _row(2, "lora", "r=1", ["tuned style 50 % is below 80 %"]),
            _row(3, "qlora", misses=["tuned style 50 % is below 80 %"])]
    # a sweep variant compares ranks; only the card's own run is a verdict
    assert measure.failures(rows) == ["lab 3 (qlora): style ≥ 80 %: tuned style 50 % is below 80 %"]
    old = dict(_row(1, "full"), check=None)
    assert "lab 1 (full): no check measured" in measure.failures([old])[0]
    assert "| style 0 % → 50 % | ✗ tuned style 50 % is below 80 % |" in measure.table(
        {"rows": rows, "date": "d", "machine": "m"})


def test_measure_fails_a_next_step_that_breaks_nothing_and_a_lab_over_its_time(measure):
    """Lab 4's second step is meant to break the facts; a push that keeps them teaches nothing.
    And a lab over five minutes, here or as a CPU without native bf16 runs it, fails too."""
    broke = _row(4, "dpo", "push", ["tuned facts 25 % is below 60 %"])
    kept = _row(4, "dpo", "push", ["tuned words 40 is above 30"])
    breaks = {4: ("push", ["facts"])}
    assert measure.failures([_row(4, "dpo"), broke], breaks) == []
    assert measure.failures([_row(4, "dpo"), kept], breaks) == [
        "lab 4 (dpo), step push: meant to break facts, but the tuned model still meets style ≥ 80 % (tuned facts —)"]
    slow = _row(1, "full") | {"process_minutes": 2.0, "process_minutes_fp32": 6.5}
    assert measure.failures([slow]) == ["lab 1 (full): takes 6.5 min in fp32 with AVX2 kernels, over the "
                                        "5-minute budget"]
    text = measure.table({"rows": [slow, _row(4, "dpo") | {"margin": 1.234, "accuracy": 0.9}], "date": "d",
                          "machine": "m"})
    assert "| 1 full | card | 2.0 | 6.5 |" in text and "margin 1.23, accuracy 90 %" in text


def test_measure_exits_non_zero_when_a_lab_misses_its_check(measure, monkeypatch):
    failing = _row(4, "dpo", misses=["tuned facts 25 % is below 60 %"])
    measure.RESULTS.write_text(json.dumps({"rows": [_row(2, "lora"), failing], "date": "d", "machine": "m"}))
    monkeypatch.setattr(sys, "argv", ["measure.py", "--table-only"])
    with pytest.raises(SystemExit) as e:
        measure.main()
    assert e.value.code != 0 and "lab 4 (dpo)" in str(e.value.code) and "facts 25 % is below 60 %" in str(e.value.code)
    assert "lab 2" not in str(e.value.code)
    assert "| 2 lora | card |" in measure.README.read_text()  # what was measured is still written

    measure.RESULTS.write_text(json.dumps({"rows": [_row(2, "lora")], "date": "d", "machine": "m"}))
    measure.main()  # every lab passes: no exit


def test_measure_writes_the_scores_into_the_card_and_keeps_the_rest(measure, tmp_path):
    card = tmp_path / "lab2_lora.yaml"
    text = (ROOT / "labs" / "lab2_lora.yaml").read_text()
    card.write_text(text)
    measure.write_expected(card, _row(2, "lora"))
    new = card.read_text()
    assert yaml.safe_load(new)["expected"] == {"loss": [0.75, 1.26], "minutes": 1.0, "peak_memory_mb": 2000,
                                               "style": [0.0, 0.9]}  # each from the row
    others = lambda t: [line for line in t.splitlines() if not line.startswith("expected:")]  # noqa: E731
    assert others(new) == others(text)  # comments and every other line as they were
    from tunelab.teach.labs import load_lab
    assert load_lab(card).expected["style"] == [0.0, 0.9]


def test_run_check_on_the_tiny_model(tiny_model_dir, tmp_path, measure):
    """The whole path once: a run, base and tuned answers decoded alike, scores, verdict."""
    from tunelab import RunConfig, run
    from tunelab.arena.chat import BASE, Arena
    from tunelab.teach.labcheck import answer, run_check
    from tunelab.teach.labs import get_lab
    cfg = RunConfig.from_dict(get_lab("lora").config.to_dict())
    cfg.model, cfg.train.max_steps, cfg.train.max_length, cfg.train.precision, cfg.train.eval_steps = \
        tiny_model_dir, 1, 64, "fp32", 0
    result = run(cfg)
    prompts = tmp_path / "held.jsonl"
    prompts.write_text('{"prompt": "Why is grass green?"}\n{"prompt": "What is 2 + 2?", "fact": ["4", "four"]}\n')
    check = LabCheck.from_dict({"prompts": str(prompts), "min_style": 0.8})
    arena = Arena(tiny_model_dir)
    first = answer(arena, BASE, ["Why is grass green?"])
    assert answer(arena, BASE, ["Why is grass green?"]) == first  # one seed: the same draw every time
    res = run_check(result.run_id, check, arena=arena)
    assert set(res["base"]) == {"style", "words", "facts"} and res["judged"] == ["style"]
    assert res["sampling"] == {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 96, "seed": 0}
    assert res["misses"] == ["tuned style 0 % is below 80 %"]  # a random tiny model speaks no pirate
    lab = get_lab("lora")
    lab.check = check
    row = measure.check(lab, result.run_id, arena, {})
    assert row["passes"] is False and row["answers"][0]["prompt"] == "Why is grass green?"


def test_the_card_view_states_the_check_and_its_decoding():
    import dataclasses

    from tunelab.teach.labs import get_lab
    from tunelab.ui.labs_logic import card_html
    lab = get_lab("dpo")
    html = card_html(lab)
    assert "12 held-out prompts (labs/heldout/concise.jsonl)" in html
    assert "temperature 0.2, top-p 0.9, seed 0, at most 96 new tokens" in html
    assert "words ≤ 30, facts ≥ 60 %" in html
    measured = dataclasses.replace(lab, expected=lab.expected | {"words": [61.0, 14.5], "facts": [0.75, 0.62]})
    assert "Measured, base → tuned: words 61 → 14.5, facts 75 % → 62 %." in card_html(measured)
