"""Leaderboard: records count every vote once; Bradley-Terry orders models by strength."""

import pytest

from tunelab.arena.leaderboard import bradley_terry, standings, win_probability


def label(a, b, vote, answers=("A.", "B.")):
    return {"source_a": {"name": a}, "source_b": {"name": b}, "vote": vote, "answer_a": answers[0],
            "answer_b": answers[1]}


def test_a_win_between_identical_answers_counts_as_a_tie():
    """Such rows may be in a labels.db from before the store refused them."""
    board = standings([label("tuned", "base", "a", answers=("Canberra.", "Canberra.\n"))])
    assert {m["model"]: (m["wins"], m["losses"], m["ties"]) for m in board["models"]} == {
        "tuned": (0, 0, 1), "base": (0, 0, 1)}
    assert board["models"][0]["rating"] == pytest.approx(1000)


def test_records_and_head_to_head():
    votes = [label("base", "sft", "b"), label("sft", "base", "a"), label("base", "sft", "tie"),
             label("dpo", "sft", "a"), label("base", "dpo", "both_bad"), label("base", "base", "a")]
    board = standings(votes)
    rec = {m["model"]: m for m in board["models"]}
    assert (rec["sft"]["wins"], rec["sft"]["losses"], rec["sft"]["ties"]) == (2, 1, 1)
    assert (rec["base"]["votes"], rec["base"]["losses"], rec["base"]["both_bad"]) == (4, 2, 1)  # self-pair skipped
    assert rec["sft"]["win_rate"] == pytest.approx(2.5 / 4)
    h2h = {(r["model"], r["opponent"]): r for r in board["head_to_head"]}
    assert (h2h[("sft", "base")]["wins"], h2h[("sft", "base")]["ties"]) == (2, 1)
    assert h2h[("base", "sft")]["losses"] == 2 and ("base", "dpo") not in h2h  # both-bad is not a result
    assert [m["model"] for m in board["models"]] == ["dpo", "sft", "base"]


def test_bradley_terry_recovers_the_order_and_odds():
    # A beats B 3 times in 4; B beats C 3 times in 4 — with many votes the fit approaches 3:1 odds.
    h2h = {("A", "B"): {"wins": 300, "losses": 100, "ties": 0}, ("B", "A"): {"wins": 100, "losses": 300, "ties": 0},
           ("B", "C"): {"wins": 300, "losses": 100, "ties": 0}, ("C", "B"): {"wins": 100, "losses": 300, "ties": 0}}
    r = bradley_terry(h2h, ["A", "B", "C"])
    assert r["A"] > r["B"] > r["C"]
    assert win_probability(r["A"], r["B"]) == pytest.approx(0.75, abs=0.01)
    assert sum(r.values()) / 3 == pytest.approx(1000.0)


def test_an_unbeaten_model_gets_a_finite_rating():
    board = standings([label("tuned", "base", "a")] * 5)
    r = {m["model"]: m["rating"] for m in board["models"]}
    assert 1000 < r["tuned"] < 2000 and r["base"] < 1000
    assert standings([])["models"] == []
