"""Data formats: every format loads from every file type, the held-out split, the lab datasets.

Bad files, and the messages they give, are in test_data_errors.py; the rows of both are in rows.py."""

import json
from pathlib import Path

import pytest

from tunelab import data
from tunelab.data import formats
from tunelab.data import load_examples, read_rows, split_eval
from tunelab.data.formats import detect_format, normalize

from .rows import EXAMPLES, A, S, U, error_of, flipped, objective, write, write_text  # noqa: F401

LABS_DATA = Path(__file__).resolve().parent.parent / "labs" / "data"

FLAT = ("prompt_completion", "alpaca", "preference")  # every field is text: fits plain CSV


# ---------------------------------------------------------------------------
# Every format, every file type


CASES = [(fmt, ext) for fmt in formats.FORMATS for ext in (".jsonl", ".json", ".parquet")]
CASES += [(fmt, ".csv") for fmt in formats.FORMATS]  # list cells travel as JSON text


@pytest.mark.parametrize("fmt,ext", CASES)
def test_every_format_loads_from_every_file_type(tmp_path, fmt, ext):
    row, expected = EXAMPLES[fmt]
    rows, want = [row, row, row], [expected] * 3
    if fmt in formats.KTO_FORMATS:   # a CSV cell says true/false as text; the others as a boolean
        rows[1], want[1] = flipped(row), flipped(expected)
    path = write(tmp_path, f"d{ext}", rows)
    got_fmt, examples = load_examples(path, objective(fmt))
    assert got_fmt == fmt
    assert examples == want


def test_kto_takes_pairs_split_into_a_good_and_a_bad_answer(tmp_path):
    row, expected = EXAMPLES["preference"]
    fmt, examples = load_examples(write(tmp_path, "p.jsonl", [row]), "kto")
    assert fmt == "preference"
    assert examples == [{"prompt": expected["prompt"], "completion": expected["chosen"], "label": True},
                        {"prompt": expected["prompt"], "completion": expected["rejected"], "label": False}]


@pytest.mark.parametrize("cell,label", [("TRUE", True), ("false", False), (" True ", True)])
def test_csv_labels_are_read_from_text(tmp_path, cell, label):
    row = {"prompt": "q", "completion": "a", "label": cell}
    other = {"prompt": "q", "completion": "b", "label": str(not label).lower()}
    _, examples = load_examples(write(tmp_path, "d.csv", [row, other]), "kto")
    assert examples[0]["label"] is label


@pytest.mark.parametrize("fmt", FLAT)
def test_flat_csv_cells_stay_strings(tmp_path, fmt):
    row, expected = EXAMPLES[fmt]
    row = {k: "NA" if k in ("completion", "output", "rejected") else v for k, v in row.items()}
    path = write(tmp_path, "d.csv", [row])
    _, (example,) = load_examples(path, objective(fmt))
    # "NA" would become NaN with pandas' defaults.
    assert list(example.values())[-1] == [A("NA")]


def test_json_object_wrapping_a_list(tmp_path):
    row, expected = EXAMPLES["messages"]
    path = write_text(tmp_path, "d.json", json.dumps({"data": [row, row]}))
    assert load_examples(path, "sft") == ("messages", [expected, expected])


def test_jsonl_skips_blank_lines_and_reports_real_line_numbers(tmp_path):
    good = json.dumps(EXAMPLES["prompt_completion"][0])
    path = write_text(tmp_path, "d.jsonl", f"\n{good}\n\n{json.dumps({'prompt': 'x', 'completion': 7})}\n\n")
    assert len(read_rows(path)) == 2
    msg = error_of(load_examples, path, "sft")
    assert "line 4" in msg and "'completion'" in msg and "number" in msg


def test_multi_turn_prompt_is_everything_before_the_last_reply():
    rows = [{"messages": [U("a"), A("b"), U("c"), A("d"), U("never answered")]}]
    (ex,) = normalize(rows, "messages", "m.jsonl")
    assert ex == {"prompt": [U("a"), A("b"), U("c")], "completion": [A("d")]}


def test_prompt_completion_as_message_lists():
    rows = [{"prompt": [S("s"), U("q")], "completion": [A("r")]}]
    assert normalize(rows, "prompt_completion", "p.jsonl") == [{"prompt": [S("s"), U("q")], "completion": [A("r")]}]


def test_alpaca_without_input():
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi!"}, {"instruction": "Say hi.", "output": "Hi!"}]
    expected = {"prompt": [U("Say hi.")], "completion": [A("Hi!")]}
    assert normalize(rows, "alpaca", "a.jsonl") == [expected, expected]


def test_sharegpt_roles_are_mapped():
    rows = [{"conversations": [{"from": "user", "value": "q"}, {"from": "model", "value": "r"}]}]
    assert normalize(rows, "sharegpt", "s.jsonl") == [{"prompt": [U("q")], "completion": [A("r")]}]


def test_preference_with_full_conversations_and_no_prompt():
    rows = [{"chosen": [U("q"), A("good")], "rejected": [U("q"), A("bad")]}]
    assert detect_format(rows, "p.jsonl") == "preference"
    assert normalize(rows, "preference", "p.jsonl") == [{"prompt": [U("q")], "chosen": [A("good")],
                                                         "rejected": [A("bad")]}]


def test_preference_with_prompt_and_reply_lists():
    rows = [{"prompt": [U("q")], "chosen": [A("good")], "rejected": [U("q"), A("bad")]}]
    assert normalize(rows, "preference", "p.jsonl") == [{"prompt": [U("q")], "chosen": [A("good")],
                                                         "rejected": [A("bad")]}]


def test_sharegpt_preference_replies_as_string_and_list():
    rows = [{"conversations": [{"from": "human", "value": "q"}], "chosen": "good",
             "rejected": [{"from": "gpt", "value": "bad"}]}]
    assert normalize(rows, "sharegpt_preference", "s.jsonl") == [{"prompt": [U("q")], "chosen": [A("good")],
                                                                  "rejected": [A("bad")]}]


def test_extra_columns_are_ignored_and_content_kept_as_is():
    rows = [{"id": 1, "prompt": "  spaced  ", "completion": "  reply\n"}]
    assert normalize(rows, "prompt_completion", "p.jsonl") == [{"prompt": [U("  spaced  ")],
                                                                "completion": [A("  reply\n")]}]


def test_summarize(tmp_path):
    row, expected = EXAMPLES["preference"]
    path = write(tmp_path, "p.jsonl", [row] * 5)
    assert data.summarize(path) == {"path": str(path), "format": "preference", "objective": "dpo",
                                    "rows": 5, "preview": [expected] * 3}


def test_to_dataset():
    ds = data.to_dataset([EXAMPLES["messages"][1]] * 4)
    assert len(ds) == 4 and ds.column_names == ["prompt", "completion"]
    assert ds[0]["completion"] == [A("Paris.")]


# ---------------------------------------------------------------------------
# Held-out split


def test_split_eval_is_deterministic_and_sized():
    examples = list(range(100))
    train, held = split_eval(examples, 0.1, seed=0)
    assert (train, held) == split_eval(examples, 0.1, seed=0)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == examples
    assert split_eval(examples, 0.1, seed=1)[1] != held


@pytest.mark.parametrize("n,fraction,n_eval", [(10, 0.0, 0), (10, 0.25, 2), (2, 0.01, 1), (3, 0.9, 2),
                                                (1, 0.5, 0), (0, 0.5, 0), (80, 0.1, 8)])
def test_split_eval_sizes(n, fraction, n_eval):
    train, held = split_eval(list(range(n)), fraction, seed=0)
    assert len(held) == n_eval and len(train) == n - n_eval


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_split_eval_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError):
        split_eval([1, 2, 3], fraction, seed=0)


# ---------------------------------------------------------------------------
# The shipped lab datasets


LAB_FILES = sorted(p for p in LABS_DATA.iterdir() if p.suffix in data.EXTENSIONS)


def test_lab_data_exists():
    assert {p.name for p in LAB_FILES} >= {"pirate_sft.jsonl", "concise_dpo.jsonl"}


@pytest.mark.parametrize("path", LAB_FILES, ids=lambda p: p.name)
def test_every_lab_dataset_loads(path):
    fmt = detect_format(read_rows(path), path)
    got_fmt, examples = load_examples(path, objective(fmt))
    assert got_fmt == fmt and len(examples) >= 10
    # Authored data: no duplicated prompts; labelled answers (KTO's) may answer a prompt twice,
    # a good answer and a bad one (a pair split), but never with the same answer or label.
    if fmt in formats.KTO_FORMATS:
        prompts = [json.dumps([ex["prompt"], ex["completion"]]) for ex in examples]
        per_prompt = {}
        for ex in examples:
            per_prompt.setdefault(json.dumps(ex["prompt"]), []).append(ex["label"])
        assert all(sorted(labels) in ([True], [False], [False, True]) for labels in per_prompt.values())
    else:
        prompts = [json.dumps(ex["prompt"]) for ex in examples]
    assert len(set(prompts)) == len(prompts)
