"""The Arena tab's gradio-free logic: conversations, pairs, votes, batch prompts, tables."""

import json

import pytest

from tunelab.chat import Sampling
from tunelab.data import DataError
from tunelab.prefs import LabelError
from tunelab.ui import arena_logic as al

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
    assert al.pane_label("B", "run:r1", blind=True, revealed=True) == "B · r1"


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
    assert "2</b> labels" in al.count_html("tables")
    assert list(al.recent_labels("tables")["annotator"]) == ["bo", "ana"]
    path, counts = al.export_set("tables")
    assert counts == {"written": 1, "tie": 1, "both_bad": 0} and len(path.read_text().splitlines()) == 1
    with pytest.raises(LabelError, match="no preference set named 'nope'"):
        al.export_set("nope")


def test_the_label_api_stores_once_per_key_and_names_bad_fields():
    first = al.api_label("api set", "Is the sea blue?", "Yes.", "Sometimes grey.", "a", "ada", key="k-1")
    assert first["new"] and first["set"] == "api-set"
    again = al.api_label("api set", "Is the sea blue?", "Yes.", "Sometimes grey.", "a", "ada", key="k-1")
    assert again == first | {"new": False}                    # a retry stores nothing
    msgs = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    row = al.api_label("api set", msgs, "Hi.", "Hello there, how are you?", "a", "bob")
    stored = {r["id"]: r for r in al.store().labels("api-set")}
    assert stored[row["id"]]["prompt"][0]["role"] == "system" and stored[row["id"]]["origin"] == "api"
    for args, problem in [(("", "q", "a", "b", "a", "ada"), "set:"),
                          (("s", "", "a", "b", "a", "ada"), "prompt:"),
                          (("s", "[not json", "a", "b", "a", "ada"), "prompt: not valid JSON"),
                          (("s", "q", "", "b", "a", "ada"), "answer_a:"),
                          (("s", "q", "a", "b", "maybe", "ada"), "vote:"),
                          (("s", "q", "a", "b", "a", " "), "annotator:")]:
        with pytest.raises(LabelError, match=problem):
            al.api_label(*args)
    assert al.store().count("api-set") == 2
