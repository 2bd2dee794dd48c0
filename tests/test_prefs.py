"""The label store: durable, idempotent votes; DPO export and pair import."""

import json
import sqlite3
import threading

import pytest

from tunelab import RunConfig, run
from tunelab.data import load_examples
from tunelab.arena.prefs import LabelError, LabelStore

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "labels.db")


def vote(store, v, key=None, **kw):
    return store.add("s1", prompt=PROMPT, answer_a="Blue.", answer_b="Well, there are many colours...",
                     source_a={"model": "base", "temperature": 0.7}, source_b={"model": "run-1"},
                     vote=v, annotator="ana", key=key, **kw)


def test_wal_mode_and_provenance_are_stored(store):
    rid, new = vote(store, "a", key="k1")
    assert new
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = store.labels("s1")[0]
    assert row["id"] == rid and row["prompt"] == PROMPT and row["source_a"]["temperature"] == 0.7
    assert row["annotator"] == "ana" and row["vote"] == "a" and row["created"] > 0


def test_a_retried_submit_saves_once(store):
    first = vote(store, "a", key="click-1")
    again = vote(store, "a", key="click-1")
    assert again == (first[0], False)
    assert store.count("s1") == 1
    vote(store, "b", key="click-2")
    assert store.count("s1") == 2
    assert store.sets()[0]["labels"] == 2 and store.sets()[0]["pairs"] == 2


@pytest.mark.parametrize("kw, field", [
    ({"vote": "maybe"}, "vote"),
    ({"vote": "a", "annotator": " "}, "annotator"),
    ({"vote": "a", "answer_a": ""}, "answer_a"),
    ({"vote": "a", "prompt": []}, "prompt"),
    ({"vote": "a", "chosen_text": "  "}, "chosen_text"),
])
def test_bad_votes_name_the_field_and_store_nothing(store, kw, field):
    args = {"prompt": PROMPT, "answer_a": "x", "answer_b": "y", "annotator": "ana"} | kw
    with pytest.raises(LabelError, match=f"^{field}:"):
        store.add("s1", **args)
    assert store.count() == 0


def test_export_is_trl_preference_format_and_counts_what_it_leaves_out(store, tmp_path):
    vote(store, "a", key="1")
    vote(store, "b", key="2", chosen_text="There are many colours; blue is one.")
    vote(store, "tie", key="3")
    vote(store, "both_bad", key="4")
    out = tmp_path / "pairs.jsonl"
    assert store.export_dpo("s1", out) == {"written": 2, "tie": 1, "both_bad": 1, "identical": 0}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "Blue."}],
                       "rejected": [{"role": "assistant", "content": "Well, there are many colours..."}]}
    assert rows[1]["chosen"][0]["content"] == "There are many colours; blue is one."  # the edit wins
    assert rows[1]["rejected"][0]["content"] == "Blue."
    fmt, examples = load_examples(out, "dpo")
    assert fmt == "preference" and len(examples) == 2


def test_exported_labels_train_with_dpo(store, tmp_path, tiny_model_dir):
    for i in range(4):
        vote(store, "a", key=f"k{i}")
    out = tmp_path / "pairs.jsonl"
    store.export_dpo("s1", out)
    cfg = RunConfig.from_dict({"method": "dpo", "model": tiny_model_dir, "data": {"train": str(out)},
                               "train": {"max_steps": 2, "batch_size": 2, "max_length": 64, "precision": "fp32"}})
    assert run(cfg).status == "finished"


def test_import_both_formats_once(store, tmp_path):
    pref = tmp_path / "p.jsonl"
    pref.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    ranking = tmp_path / "r.json"
    ranking.write_text(json.dumps([{"conversations": [{"from": "human", "value": "2+2?"}],
                                    "chosen": {"from": "gpt", "value": "4"},
                                    "rejected": {"from": "gpt", "value": "5"}}]))
    assert store.import_pairs("imp", pref)["added"] == 1
    assert store.import_pairs("imp", ranking) == {"format": "sharegpt_preference", "rows": 1, "added": 1,
                                                  "identical": 0}
    assert store.import_pairs("imp", pref)["added"] == 0  # idempotent
    labels = store.labels("imp")
    assert [r["answer_a"] for r in labels] == ["Hello!", "4"] and all(r["vote"] == "a" for r in labels)
    assert labels[1]["prompt"] == [{"role": "user", "content": "2+2?"}]


def test_concurrent_annotators_lose_nothing(store):
    errors = []

    def annotator(n):
        try:
            for i in range(25):
                store.add("busy", prompt=PROMPT, answer_a=f"a{i}", answer_b="b", vote="a",
                          annotator=f"user{n}", key=f"{n}-{i}")
        except Exception as e:  # noqa: BLE001 - any error is the failure we look for
            errors.append(e)
    threads = [threading.Thread(target=annotator, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.count("busy") == 200


def test_dpo_config_from_a_set_freezes_its_pairs(store, tiny_model_dir):
    from tunelab.arena.labelruns import dpo_run_config

    vote(store, "a", key="x1")
    vote(store, "tie", key="x2")
    with pytest.raises(LabelError, match="at least 2 decided votes.*has 1 \\(ties: 1"):
        dpo_run_config(store, "s1", model=tiny_model_dir)
    vote(store, "b", key="x3", chosen_text="Blue, simply.")
    cfg, counts = dpo_run_config(store, "s1", model=tiny_model_dir, adapter="qlora", max_steps=5, beta=0.2)
    assert (cfg.method, cfg.dpo.adapter, cfg.dpo.beta, cfg.train.max_steps) == ("dpo", "qlora", 0.2, 5)
    assert cfg.train.lr == 5e-4   # LoRA on a 4-bit base: LoRA's lr; every weight: 100 times less
    assert dpo_run_config(store, "s1", model=tiny_model_dir, adapter="full")[0].train.lr == 5e-6
    assert counts["written"] == 2 and cfg.data.train == counts["file"] and cfg.train.batch_size == 2
    fmt, rows = load_examples(cfg.data.train, "dpo")
    assert len(rows) == 2 and rows[1]["chosen"][-1]["content"] == "Blue, simply."
    vote(store, "a", key="x4")   # a later vote does not change what that run trains on
    assert len(load_examples(cfg.data.train, "dpo")[1]) == 2


CANBERRA = "The capital of Australia is Canberra."


def test_a_win_between_identical_answers_is_refused(store):
    both = {"prompt": PROMPT, "answer_a": CANBERRA, "answer_b": f"  {CANBERRA}\n", "annotator": "ana"}
    for v in ("a", "b"):
        with pytest.raises(LabelError, match="^vote: the two answers are the same text.*tie or both bad"):
            store.add("s1", vote=v, **both)
    assert store.count() == 0
    assert store.add("s1", vote="tie", **both)[1] and store.add("s1", vote="both_bad", **both)[1]
    # An edited better answer is a real pair (the edit against the answer as it was) ...
    assert store.add("s1", vote="a", chosen_text="Canberra.", **both)[1]
    # ... but an "edit" back to the other answer is not; and case is a visible difference.
    with pytest.raises(LabelError, match="^vote:"):
        store.add("s1", vote="b", chosen_text=CANBERRA + " ", **both)
    assert store.add("s1", vote="a", **(both | {"answer_b": CANBERRA.lower()}))[1]


def test_stored_identical_wins_are_left_out_of_exports_and_counted(store, tmp_path, tiny_model_dir):
    """A labels.db from before the refusal may hold such rows: every export skips them and says so."""
    from tunelab.arena.labelruns import dpo_run_config

    vote(store, "a", key="good")
    with sqlite3.connect(store.path) as db:   # written as an older TuneLab did, past add()'s check
        for i, v in enumerate(("a", "b")):
            db.execute("INSERT INTO labels(key, set_name, prompt, answer_a, answer_b, source_a, source_b, vote, "
                       "annotator, created) VALUES (?, 's1', ?, ?, ?, '{}', '{}', ?, 'ana', 0)",
                       (f"old-{i}", json.dumps(PROMPT), CANBERRA, CANBERRA + "\n", v))
    out = tmp_path / "pairs.jsonl"
    assert store.export_dpo("s1", out) == {"written": 1, "tie": 0, "both_bad": 0, "identical": 2}
    assert [json.loads(line)["chosen"][0]["content"] for line in out.read_text().splitlines()] == ["Blue."]
    (info,) = store.sets()
    assert (info["labels"], info["pairs"], info["identical"]) == (3, 1, 2)
    with pytest.raises(LabelError, match="has 1 .*wins between identical answers: 2"):
        dpo_run_config(store, "s1", model=tiny_model_dir)


def test_import_skips_and_counts_identical_pairs(store, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "Capital?", "chosen": CANBERRA, "rejected": CANBERRA + " "}) + "\n"
                 + json.dumps({"prompt": "Capital?", "chosen": CANBERRA, "rejected": "Sydney."}) + "\n")
    assert store.import_pairs("imp", f) == {"format": "preference", "rows": 2, "added": 1, "identical": 1}
    assert [r["answer_b"] for r in store.labels("imp")] == ["Sydney."]


def test_one_click_dpo_defaults_learn_five_labels(store, tiny_model_dir):
    """"Train DPO on these labels" with its defaults on 5 labels: the loss leaves ln 2 and the
    reward margin grows. On this tiny random model the margin reaches ~0.06 (loss 0.665);
    the old defaults (lr 5e-5, batches of 4 + 1) left it at 0.002 after 4 steps and 0.011
    after 30. The bundled model moves much further: see labelruns.DPO_LR."""
    from tunelab.arena.labelruns import dpo_run_config

    answers = [("Blue.", "Well, there are many colours and it is hard to pick one."),
               ("Eight.", "Spiders have six legs, like insects."), ("Bonjour!", "Hola is hello in French."),
               ("4.", "Two plus two makes five."), ("Canberra.", "Sydney, the largest city.")]
    for i, (good, bad) in enumerate(answers):
        store.add("five", prompt=[{"role": "user", "content": f"Question {i}?"}], answer_a=good, answer_b=bad,
                  vote="a", annotator="ana")
    cfg, counts = dpo_run_config(store, "five", model=tiny_model_dir)
    assert counts["written"] == 5 and cfg.train.batch_size == 5   # every pair in every step
    cfg.train.precision = "fp32"   # the tiny model's test runs alike on every CPU
    steps = []
    result = run(cfg, on_event=lambda ev: ev["type"] == "step" and steps.append(ev))
    assert result.status == "finished" and len(steps) == cfg.train.max_steps
    last = steps[-1]
    assert last["loss"] < 0.68 and last["margin"] > 0.03 and last["accuracy"] == 1.0, last


# --------------------------------------------------------------------------- thumbs and unpaired labels

def thumb(store, up, key=None, answer="Blue.", set_name="s1", **kw):
    return store.add_thumb(set_name, prompt=PROMPT, answer=answer, up=up, annotator="ana",
                           source={"model": "run-1", "temperature": 0.2}, key=key, **kw)


def test_a_thumb_is_stored_once_with_its_provenance(store):
    rid, new = thumb(store, True, key="t-1")
    assert new and thumb(store, True, key="t-1") == (rid, False)   # a retried click
    thumb(store, False, key="t-2", answer="Well, there are many colours...")
    rows = store.thumbs("s1")
    assert [(r["up"], r["answer"]) for r in rows] == [(True, "Blue."), (False, "Well, there are many colours...")]
    assert rows[0]["source"] == {"model": "run-1", "temperature": 0.2} and rows[0]["prompt"] == PROMPT
    s = store.sets()[0]
    assert (s["thumbs_up"], s["thumbs_down"], s["labels"], s["pairs"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("kw, field", [
    ({"up": "yes"}, "up"), ({"up": 1}, "up"), ({"answer": "  "}, "answer"), ({"prompt": []}, "prompt"),
    ({"annotator": ""}, "annotator"),
])
def test_bad_thumbs_name_the_field_and_store_nothing(store, kw, field):
    args = {"prompt": PROMPT, "answer": "x", "up": True, "annotator": "ana"} | kw
    with pytest.raises(LabelError, match=f"^{field}:"):
        store.add_thumb("s1", **args)
    assert store.thumbs("s1") == [] and store.sets() == []


def test_ab_votes_count_as_unpaired_labels(store, tmp_path):
    """The better answer desirable, the other undesirable; both bad: two undesirable
    (which DPO drops); a tie: none; an edited winner: the edit."""
    vote(store, "a", key="1")
    vote(store, "b", key="2", chosen_text="Blue is one.")
    vote(store, "tie", key="3")
    vote(store, "both_bad", key="4")
    thumb(store, True, key="5", answer="Red.")
    rows, counts = store.unpaired_rows("s1")
    got = [(r["completion"][0]["content"], r["label"]) for r in rows]
    assert got == [("Red.", True), ("Blue.", True), ("Well, there are many colours...", False),
                   ("Blue is one.", True), ("Blue.", False),
                   ("Blue.", False), ("Well, there are many colours...", False)]
    assert counts == {"thumbs": 1, "from_votes": 6, "tie": 1, "identical": 0, "desirable": 3, "undesirable": 4}
    s = store.sets()[0]
    assert (s["desirable"], s["undesirable"], s["pairs"], s["both_bad"]) == (3, 4, 2, 1)
    out = tmp_path / "thumbs.jsonl"
    assert store.export_unpaired("s1", out)["written"] == 7
    fmt, examples = load_examples(out, "kto")   # TRL's unpaired format, read back as KTO data
    assert fmt == "unpaired" and examples == rows


def test_unpaired_import_adds_thumbs_once_and_refuses_pairs(store, tmp_path):
    path = tmp_path / "fb.csv"
    path.write_text("prompt,completion,label\nHi?,Hello!,true\nHi?,Go away.,false\n2+2?,4,TRUE\n")
    assert store.import_unpaired("imp", path) == {"format": "unpaired", "rows": 3, "added": 3}
    assert store.import_unpaired("imp", path)["added"] == 0   # idempotent
    assert [t["up"] for t in store.thumbs("imp")] == [True, False, True]
    only_good = tmp_path / "good.jsonl"
    only_good.write_text(json.dumps({"prompt": "Hi?", "completion": "Hey!", "label": True}) + "\n")
    assert store.import_unpaired("imp", only_good)["added"] == 1   # one kind is fine in a set
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    with pytest.raises(LabelError, match="p.jsonl: holds preference pairs"):
        store.import_unpaired("imp", pairs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi?", "completion": "x", "label": True}) + "\n"
                   + json.dumps({"prompt": "Hi?", "completion": "y", "label": "meh"}) + "\n")
    from tunelab.data import DataError
    with pytest.raises(DataError, match="bad.jsonl: line 2: field 'label'"):
        store.import_unpaired("imp", bad)
    assert len(store.thumbs("imp")) == 4   # nothing of the bad file was stored


def test_kto_config_from_a_set_balances_and_freezes_its_answers(store, tiny_model_dir):
    from tunelab.arena.labelruns import kto_run_config

    thumb(store, True, key="t1")
    with pytest.raises(LabelError, match="KTO needs good and bad answers.*1 good and 0 bad"):
        kto_run_config(store, "s1", model=tiny_model_dir)
    vote(store, "both_bad", key="v1")   # two bad answers
    vote(store, "tie", key="v2")
    cfg, counts = kto_run_config(store, "s1", model=tiny_model_dir, adapter="qlora", max_steps=4)
    assert (cfg.method, cfg.kto.adapter, cfg.train.max_steps, cfg.train.lr) == ("kto", "qlora", 4, 5e-4)
    assert (counts["desirable"], counts["undesirable"], counts["tie"]) == (1, 2, 1)
    assert (cfg.kto.desirable_weight, cfg.kto.undesirable_weight) == (2.0, 1.0)   # 2 x 1 good = 1 x 2 bad
    assert cfg.data.train == counts["file"] and "thumbs-s1-" in cfg.data.train and cfg.train.batch_size == 3
    thumb(store, True, key="t2", answer="Blue!")   # later labels do not change that run's data
    assert len(load_examples(cfg.data.train, "kto")[1]) == 3


def test_kto_on_a_sets_labels_trains(store, tiny_model_dir):
    from tunelab.arena.labelruns import kto_run_config

    for i in range(3):
        thumb(store, True, key=f"u{i}", answer=f"Blue {i}.")
        thumb(store, False, key=f"d{i}", answer=f"Well, there are many colours, {i}...")
    cfg, _ = kto_run_config(store, "s1", model=tiny_model_dir, max_steps=2)
    cfg.train.precision, cfg.train.max_length = "fp32", 64
    result = run(cfg)
    assert result.status == "finished" and result.summary["steps"] == 2


def test_orpo_config_from_a_set_uses_its_pairs(store, tiny_model_dir):
    from tunelab.arena.labelruns import dpo_run_config

    vote(store, "a", key="o1")
    vote(store, "b", key="o2")
    cfg, counts = dpo_run_config(store, "s1", model=tiny_model_dir, method="orpo", beta=0.2)
    assert (cfg.method, cfg.orpo.beta, cfg.orpo.adapter, counts["written"]) == ("orpo", 0.2, "lora", 2)
    assert cfg.name == "orpo-s1" and load_examples(cfg.data.train, "dpo")[0] == "preference"
