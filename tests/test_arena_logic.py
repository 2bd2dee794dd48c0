"""The Arena tab's gradio-free logic: conversations, pairs, votes, batch prompts, tables."""

import json

import pytest

from tunelab.arena.chat import Sampling
from tunelab.data import DataError
from tunelab.arena.prefs import LabelError
from tunelab.ui import arena_logic as al
from tunelab.ui import label_api

CTX = [{"role": "user", "content": "Hi?"}]


def pair(**kw):
    s = Sampling(temperature=0.7)
    return al.make_pair([CTX, CTX], ["Hello!", "Greetings, traveller, and well met."], ["base", "run:r1"], [s, s],
                        swapped=True, **kw)


def test_conversation_leaves_out_failed_turns_and_adds_the_system_prompt():
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
               {"role": "user", "content": "two"}, {"role": "assistant", "content": "boom", "error": True},
               {"role": "user", "content": "three"}]
    assert al.conversation(history, " Be brief. ") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"}, {"role": "user", "content": "three"}]
    shown = al.display(history, partial="", waiting=True)
    assert shown[3]["content"] == "⚠ boom" and shown[-1] == {"role": "assistant", "content": "…"}


def test_names_are_hidden_until_revealed():
    assert al.pane_label("A", "run:r1", blind=True, revealed=False) == "Model A"
    assert al.pane_label("B", "run:r1", blind=True, revealed=True) == "B · r1 (this turn)"
    assert al.pane_label("B", "run:r1", blind=False, revealed=True) == "B · r1"


def test_one_model_at_two_temperatures_is_two_contestants():
    names = al.side_names(["base", "base"], [Sampling(temperature=0.3), Sampling(temperature=1.2)])
    assert names == ["base @ T=0.3", "base @ T=1.2"]
    assert al.side_names(["base", "run:r1"], [Sampling(), Sampling()]) == ["base", "r1"]


def test_a_vote_stores_provenance_once_and_keeps_edits():
    p = pair()
    row_id, new = al.save_vote(p, "b", "logic", "ana", chosen_text="Greetings, and well met.")
    again = al.save_vote(p, "a", "logic", "ana")  # a second click, even on another button
    assert new and again == (row_id, False)
    (row,) = [r for r in al.store().labels("logic") if r["id"] == row_id]
    assert row["vote"] == "b" and row["chosen_text"] == "Greetings, and well met."
    assert row["source_a"]["model"] == "base" and row["source_a"]["blind_swapped"] is True
    assert row["source_b"]["name"] == "r1" and row["source_b"]["position"] == "right"
    p2 = pair()
    al.save_vote(p2, "a", "logic", "ana", chosen_text="Hello!")  # unchanged text is not an edit
    assert al.store().labels("logic")[-1]["chosen_text"] is None
    with pytest.raises(LabelError, match="annotator"):
        al.save_vote(pair(), "a", "logic", "  ")
    with pytest.raises(LabelError, match="set"):
        al.save_vote(pair(), "a", "", "ana")


def test_batch_prompts_from_text_and_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond\n")
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"prompt": "third"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "4?"}, {"role": "assistant", "content": "four"}]}) + "\n")
    got = al.parse_prompts("typed\n", str(txt))
    assert [p[-1]["content"] for p in got] == ["typed", "first", "second"]
    assert [p[-1]["content"] for p in al.parse_prompts("", str(rows))] == ["third", "4?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "?"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: needs a 'prompt'"):
        al.parse_prompts("", str(bad))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt: not UTF-8"):
        al.parse_prompts("", str(latin))
    with pytest.raises(DataError, match="type one prompt a line"):
        al.parse_prompts("  \n", None)
    with pytest.raises(DataError, match="at most 50"):
        al.parse_prompts("\n".join(f"p{i}" for i in range(51)), None)


def test_batch_card_walks_the_pairs():
    items = [pair(), pair()]
    head, a, b = al.batch_card(items, 1, 1)
    assert "Pair 2 of 2 · 1 labelled" in head and a == "Hello!" and b.startswith("Greetings")
    assert "All 2 pairs seen; 1 labelled" in al.batch_card(items, 2, 1)[0]


def test_tables_and_export():
    al.save_vote(pair(), "a", "tables", "ana")
    al.save_vote(pair(), "tie", "tables", "bo")
    board, h2h = al.leaderboard_tables("tables")
    assert set(board["model"]) == {"base", "r1"} and board.iloc[0]["model"] == "base"
    assert list(h2h.columns) == ["model", "against", "wins", "losses", "ties", "win rate"]
    assert "2 votes · 1 pair for DPO/ORPO · 0 👍 · 0 👎 in <b>tables</b>" in al.count_html("tables")
    assert list(al.recent_labels("tables")["annotator"]) == ["bo", "ana"]
    path, counts = al.export_set("tables")
    assert counts == {"written": 1, "tie": 1, "both_bad": 0, "identical": 0}
    assert len(path.read_text().splitlines()) == 1
    with pytest.raises(LabelError, match="no preference set named 'nope'"):
        al.export_set("nope")


def test_the_label_api_stores_once_per_key_and_names_bad_fields():
    first = label_api.api_label("api set", "Is the sea blue?", "Yes.", "Sometimes grey.", "a", "ada", key="k-1")
    assert first["new"] and first["set"] == "api-set"
    again = label_api.api_label("api set", "Is the sea blue?", "Yes.", "Sometimes grey.", "a", "ada", key="k-1")
    assert again == first | {"new": False}                    # a retry stores nothing
    msgs = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    row = label_api.api_label("api set", msgs, "Hi.", "Hello there, how are you?", "a", "bob")
    stored = {r["id"]: r for r in al.store().labels("api-set")}
    assert stored[row["id"]]["prompt"][0]["role"] == "system" and stored[row["id"]]["origin"] == "api"
    for args, problem in [(("", "q", "a", "b", "a", "ada"), "set:"),
                          (("s", "", "a", "b", "a", "ada"), "prompt:"),
                          (("s", "[not json", "a", "b", "a", "ada"), "prompt: not valid JSON"),
                          (("s", "q", "", "b", "a", "ada"), "answer_a:"),
                          (("s", "q", "a", "b", "maybe", "ada"), "vote:"),
                          (("s", "q", "a", "b", "a", " "), "annotator:")]:
        with pytest.raises(LabelError, match=problem):
            label_api.api_label(*args)
    assert al.store().count("api-set") == 2


def test_identical_answers_take_only_tie_or_both_bad():
    s = Sampling(temperature=0.0)
    same = al.make_pair([CTX, CTX], ["Canberra.", "Canberra.\n"], ["base", "base"], [s, s], swapped=False)
    assert al.vote_allowed(same) == {"a": False, "b": False, "tie": True, "both_bad": True}
    assert al.vote_allowed(pair()) == dict.fromkeys(("a", "b", "tie", "both_bad"), True)
    assert not any(al.vote_allowed(None).values())
    with pytest.raises(LabelError, match="^vote: the two answers are the same text"):
        al.save_vote(same, "b", "same", "ana")
    assert al.save_vote(same, "tie", "same", "ana")[1]
    head = al.batch_card([same], 0, 0)[0]
    assert "same text" in head and "Tie [3]" in head
    assert al.identical_text({"identical": 2}) == (" 2 pairs left out: identical answers (the same text on "
                                                   "both sides cannot be better than itself).")
    assert al.identical_text({"identical": 0}) == ""
    assert "1 pair left out: identical answers" in al.export_text(
        {"written": 3, "tie": 0, "both_bad": 0, "identical": 1})


def test_a_cut_answer_is_marked_on_the_page_not_in_the_label():
    history = [{"role": "user", "content": "Tell a story."},
               {"role": "assistant", "content": "Once upon a ti", "cut": 128}]
    shown = al.display(history)[-1]["content"]
    assert shown.startswith("Once upon a ti") and "[cut at 128 tokens — raise Max new tokens]" in shown
    assert al.conversation(history)[-1] == {"role": "assistant", "content": "Once upon a ti"}  # the model's text
    s = Sampling(max_new_tokens=128)
    p = al.make_pair([CTX, CTX], ["Once upon a ti", "The end."], ["base", "run:r1"], [s, s], swapped=False,
                     provenance=[{"truncated": True}, {}])
    row_id, _ = al.save_vote(p, "b", "cut", "ana")
    (row,) = al.store().labels("cut")
    assert row["answer_a"] == "Once upon a ti" and row["source_a"]["truncated"] is True
    assert "truncated" not in row["source_b"]
    assert "Answer A was cut at 128 tokens" in al.batch_card([p], 0, 0)[0]


def test_blind_names_stay_hidden_every_turn(monkeypatch):
    """A blind vote reveals that turn's names; the next turn hides them again and tosses a
    new coin, so what the last vote revealed says nothing about who is A now."""
    coins = iter([0.9, 0.1, 0.9])   # blind_order: below 0.5 swaps the sides
    monkeypatch.setattr(al.RNG, "random", lambda: next(coins))
    first = al.turn_order(None, "base", "run:r1", blind=True)
    assert first == {"keys": ["base", "run:r1"], "blind": True, "swapped": False, "revealed": False}
    voted = dict(first, revealed=True)
    assert al.pane_label("A", "run:r1", True, True) == "A · r1 (this turn)"
    second = al.turn_order(voted, "base", "run:r1", blind=True)
    assert second == {"keys": ["run:r1", "base"], "blind": True, "swapped": True, "revealed": False}
    assert al.pane_label("A", second["keys"][0], second["blind"], second["revealed"]) == "Model A"
    assert al.turn_order(second, "base", "run:r1", blind=True)["keys"] == ["base", "run:r1"]
    shown = al.turn_order(None, "base", "run:r1", blind=False)
    assert shown["revealed"] and al.turn_order(shown, "base", "run:r1", blind=False) is shown  # one order


def test_the_annotator_name_is_restored_for_the_same_login():
    saved = al.remembered_annotator("  ana ", None)
    assert saved == {"name": "ana", "user": None} and al.restored_annotator(saved, None) == "ana"
    assert al.restored_annotator(None, None) is None                # nothing kept: leave the box alone
    assert al.restored_annotator(None, "ada") == "ada"              # signed in: the login's name
    assert al.restored_annotator(al.remembered_annotator("Ada L.", "ada"), "ada") == "Ada L."
    assert al.restored_annotator(al.remembered_annotator("Ada L.", "ada"), "bob") == "bob"
    assert al.restored_annotator(al.remembered_annotator("", None), None) is None


def test_the_dpo_result_says_whether_the_labels_were_learned():
    step = {"type": "step", "step": 10, "loss": 0.03, "margin": 3.49, "accuracy": 1.0}
    text, kind = al.dpo_result("r9", [{"type": "start"}, dict(step, margin=0.0), step, {"type": "finish"}])
    assert kind == "ok" and text.startswith("r9 finished. At its last step: reward margin +3.490, the chosen "
                                             "answer ahead in 100% of its batch's pairs, loss 0.030")
    text, kind = al.dpo_result("r9", [dict(step, margin=0.0, loss=0.6931, accuracy=0.0)])
    assert kind == "warn" and "not learned these labels yet" in text
    assert al.dpo_result("r9", [])[1] == "ok"


def test_the_thumb_api_stores_once_per_key_and_names_bad_fields():
    first = label_api.api_thumb("api thumbs", "Is the sea blue?", "Yes.", True, "ada", key="t-1")
    assert first["new"] and first["set"] == "api-thumbs"
    again = label_api.api_thumb("api thumbs", "Is the sea blue?", "Yes.", True, "ada", key="t-1")
    assert again == {**first, "new": False}
    down = label_api.api_thumb("api thumbs", '[{"role": "user", "content": "Hi"}]', "Go away.", "false", "ada")
    rows = al.store().thumbs("api-thumbs")
    assert [(r["up"], r["origin"]) for r in rows] == [(True, "api"), (False, "api")] and down["new"]
    for args, field in ((("", "q", "a", True, "ada"), "set"), (("s", "q", "a", "maybe", "ada"), "up"),
                        (("s", "[oops", "a", True, "ada"), "prompt"), (("s", "q", " ", True, "ada"), "answer"),
                        (("s", "q", "a", True, ""), "annotator")):
        with pytest.raises(LabelError, match=f"^{field}:"):
            label_api.api_thumb(*args)


def test_a_thumb_from_the_one_model_tab_keeps_its_provenance():
    from tunelab.ui import thumbs_logic
    from tunelab.arena.chat import Sampling
    turn = thumbs_logic.make_turn([{"role": "user", "content": "Hi"}], "Hello!", "run:r1",
                                  Sampling(temperature=0.2, top_p=0.9, max_new_tokens=64, seed=0), cut=True)
    with pytest.raises(LabelError, match="^answer: nothing to label yet"):
        thumbs_logic.save_thumb(None, True, "one", "ana")
    with pytest.raises(LabelError, match="^set:"):
        thumbs_logic.save_thumb(turn, True, " ", "ana")
    row_id, new = thumbs_logic.save_thumb(turn, False, "one", "ana")
    assert new and thumbs_logic.save_thumb(turn, False, "one", "ana") == (row_id, False)   # a double click
    row = al.store().thumbs("one")[0]
    assert row["source"]["model"] == "run:r1" and row["source"]["truncated"] and row["source"]["temperature"] == 0.2
    assert row["up"] is False and row["key"] == turn["key"]
    assert "Saved 👎 as thumb #" in thumbs_logic.saved_text(row_id, True, False, "one")
