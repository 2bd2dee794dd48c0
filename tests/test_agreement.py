"""Per-annotator counts and agreement on shared pairs, computed by hand for a small set."""

import pytest

from tunelab.arena.agreement import annotators, outcome, pair_key

Q1 = [{"role": "user", "content": "q1"}]
Q2 = [{"role": "user", "content": "q2"}]
Q3 = [{"role": "user", "content": "q3"}]


def label(i, who, prompt, a, b, vote):
    return {"id": i, "annotator": who, "prompt": prompt, "answer_a": a, "answer_b": b, "vote": vote}


LABELS = [
    label(1, "ana", Q1, "X", "Y", "b"),     # ana first prefers Y ...
    label(2, "ben", Q1, "Y", "X", "b"),     # ben, shown the other way round, prefers X
    label(3, "cat", Q1, "X", "Y", "b"),     # cat prefers Y
    label(4, "ana", Q2, "P", "Q", "tie"),
    label(5, "ben", Q2, "Q", "P", "tie"),
    label(6, "ana", Q3, "M", "N", "both_bad"),   # only ana: not shared
    label(7, "ana", Q1, "Y", "X", "b"),     # ... then changes her mind to X: her latest counts
]


def test_same_pair_whichever_side_and_outcome_by_text():
    assert pair_key(LABELS[0]) == pair_key(LABELS[1]) != pair_key(LABELS[3])
    assert [outcome(r) for r in LABELS[:3]] == ["second", "first", "second"]
    assert outcome(LABELS[3]) == "tie" and outcome(LABELS[6]) == "first"
    # A win between identical answers (stored before the label store refused it) is a tie.
    assert outcome(label(8, "ana", Q1, "Same.", " Same.", "a")) == "tie"


def test_counts_agreement_and_fleiss_kappa():
    report = annotators(LABELS)
    people = {r["annotator"]: r for r in report["annotators"]}
    assert people["ana"] == {"annotator": "ana", "labels": 4, "a_or_b": 2, "ties": 1, "both_bad": 1, "shared": 2}
    assert people["cat"]["shared"] == 1 and [r["annotator"] for r in report["annotators"]][0] == "ana"
    ag = report["agreement"]
    # Q1: ana X, ben X, cat Y -> 1 of 3 rater pairs agree; Q2: ana tie, ben tie -> 1 of 1.
    assert ag["pairs"] == 2 and ag["comparisons"] == 4 and ag["agreement"] == 0.5
    # Fleiss: P_i = 1/3 and 1, mean 2/3; outcome shares first 2/5, second 1/5, tie 2/5 -> chance 9/25.
    assert ag["kappa"] == pytest.approx((2 / 3 - 9 / 25) / (1 - 9 / 25))
    between = {(r["annotator"], r["other"]): (r["shared"], r["agreed"]) for r in report["between"]}
    assert between == {("ana", "ben"): (2, 2), ("ana", "cat"): (1, 0), ("ben", "cat"): (1, 0)}


def test_nothing_shared_yet():
    report = annotators(LABELS[5:6])
    assert report["agreement"] == {"pairs": 0, "comparisons": 0, "agreement": None, "kappa": None}
    assert report["between"] == []


def test_the_instructor_view_and_the_cli(tmp_path, monkeypatch, capsys):
    from tunelab.__main__ import main
    from tunelab.arena.prefs import LabelStore
    from tunelab.ui import arena_logic
    store = LabelStore(tmp_path / "labels.db")
    for r in LABELS:
        store.add("workshop", prompt=r["prompt"], answer_a=r["answer_a"], answer_b=r["answer_b"], vote=r["vote"],
                  annotator=r["annotator"])
    monkeypatch.setattr(arena_logic, "store", lambda: store)
    people, line, between = arena_logic.annotator_tables("workshop")
    assert list(people["annotator"]) == ["ana", "ben", "cat"] and list(people["labels"]) == [4, 2, 1]
    assert "2 pairs labelled by two or more annotators: they agree in 50% of 4 comparisons" in line
    assert list(between["agreement"]) == ["100%", "0%", "0%"]
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    assert main(["labels", "annotators", "workshop"]) == 0
    out = capsys.readouterr().out
    assert "agreement: 50% of 4 comparisons on 2 shared pairs; Fleiss' kappa 0.48" in out
    assert "ana & ben: 2/2 (100%)" in out
