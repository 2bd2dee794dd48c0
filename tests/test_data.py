"""Data formats: every format loads from every file type, and every bad file says where and why."""

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab import data
from tunelab.data import DataError, detect_format, load_examples, normalize, read_rows, split_eval

LABS_DATA = Path(__file__).resolve().parent.parent / "labs" / "data"

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731

# One row of each format, and exactly what it must become.
EXAMPLES = {
    "messages": (
        {"messages": [S("Be brief."), U("Capital of France?"), A("Paris.")]},
        {"prompt": [S("Be brief."), U("Capital of France?")], "completion": [A("Paris.")]},
    ),
    "prompt_completion": (
        {"prompt": "What is 2+2?", "completion": "4."},
        {"prompt": [U("What is 2+2?")], "completion": [A("4.")]},
    ),
    "alpaca": (
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"prompt": [U("Translate to French.\n\ncat")], "completion": [A("chat")]},
    ),
    "sharegpt": (
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello!"}]},
        {"prompt": [S("Be kind."), U("Hi")], "completion": [A("Hello!")]},
    ),
    "preference": (
        {"prompt": "Boiling point of water?", "chosen": "100 °C at sea level.", "rejected": "Hard to say."},
        {"prompt": [U("Boiling point of water?")], "chosen": [A("100 °C at sea level.")],
         "rejected": [A("Hard to say.")]},
    ),
    "sharegpt_preference": (
        {"conversations": [{"from": "human", "value": "Hi"}],
         "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "What?"}},
        {"prompt": [U("Hi")], "chosen": [A("Hello!")], "rejected": [A("What?")]},
    ),
}
FLAT = ("prompt_completion", "alpaca", "preference")  # every field is text: fits plain CSV


def write(tmp_path, name, rows):
    """Write `rows` to tmp_path/name in the type its extension names."""
    path = tmp_path / name
    ext = path.suffix
    if ext == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif ext == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif ext == ".csv":
        cells = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
        pd.DataFrame(cells).to_csv(path, index=False)
    elif ext == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def objective(fmt):
    return "dpo" if fmt in data.DPO_FORMATS else "sft"


def error_of(fn, *args):
    with pytest.raises(DataError) as info:
        fn(*args)
    return str(info.value)


# ---------------------------------------------------------------------------
# Every format, every file type


CASES = [(fmt, ext) for fmt in data.FORMATS for ext in (".jsonl", ".json", ".parquet")]
CASES += [(fmt, ".csv") for fmt in data.FORMATS]  # list cells travel as JSON text


@pytest.mark.parametrize("fmt,ext", CASES)
def test_every_format_loads_from_every_file_type(tmp_path, fmt, ext):
    row, expected = EXAMPLES[fmt]
    path = write(tmp_path, f"d{ext}", [row, row, row])
    got_fmt, examples = load_examples(path, objective(fmt))
    assert got_fmt == fmt
    assert examples == [expected] * 3


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
# Bad files: the message names the file, the line or row, and the field


def three_rows(fmt, bad):
    """Two good rows of `fmt`, then `bad` as row/line 3."""
    good = EXAMPLES[fmt][0]
    return [good, good, bad]


def test_file_not_found(tmp_path):
    assert "nope.jsonl: file not found" in error_of(read_rows, tmp_path / "nope.jsonl")


def test_unsupported_extension(tmp_path):
    msg = error_of(read_rows, write_text(tmp_path, "d.txt", "hello"))
    assert "d.txt" in msg and "'.txt'" in msg and ".jsonl" in msg and ".parquet" in msg


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
def test_empty_file(tmp_path, ext):
    assert error_of(read_rows, write_text(tmp_path, f"empty{ext}", "")).endswith(f"empty{ext}: file is empty")


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv"])
def test_blank_only_file(tmp_path, ext):
    msg = error_of(read_rows, write_text(tmp_path, f"blank{ext}", "\n  \n\n"))
    assert f"blank{ext}" in msg and "no rows" in msg


@pytest.mark.parametrize("name,text", [("d.json", "[]"), ("d.csv", "prompt,completion\n")])
def test_header_or_list_without_rows(tmp_path, name, text):
    assert "no rows" in error_of(read_rows, write_text(tmp_path, name, text))


def test_truncated_json_line(tmp_path):
    good = json.dumps(EXAMPLES["messages"][0])
    path = write_text(tmp_path, "cut.jsonl", f"{good}\n{good}\n{good[:40]}\n")
    msg = error_of(read_rows, path)
    assert "cut.jsonl: line 3: not valid JSON" in msg and "truncated" in msg


def test_truncated_json_file(tmp_path):
    text = json.dumps([EXAMPLES["messages"][0]] * 2, indent=1)
    msg = error_of(read_rows, write_text(tmp_path, "cut.json", text[:-20]))
    assert "cut.json: line " in msg and "truncated" in msg


def test_jsonl_row_that_is_not_an_object(tmp_path):
    good = json.dumps(EXAMPLES["messages"][0])
    msg = error_of(read_rows, write_text(tmp_path, "d.jsonl", f"{good}\n{good}\n[1, 2]\n"))
    assert "d.jsonl: line 3: expected a JSON object" in msg and "a list" in msg


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv"])
def test_non_utf8_bytes(tmp_path, ext):
    path = tmp_path / f"latin1{ext}"
    lines = {".jsonl": ['{"prompt": "a", "completion": "b"}'] * 2 + ['{"prompt": "caf\xe9", "completion": "b"}'],
             ".json": ["[", '{"prompt": "a", "completion": "b"},', '{"prompt": "caf\xe9", "completion": "b"}]'],
             ".csv": ["prompt,completion", "a,b", "caf\xe9,b"]}[ext]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    msg = error_of(read_rows, path)
    assert f"latin1{ext}: line 3: not UTF-8" in msg and "byte offset" in msg


def test_unreadable_parquet(tmp_path):
    msg = error_of(read_rows, write_text(tmp_path, "d.parquet", "this is not parquet"))
    assert "d.parquet: not a readable Parquet file" in msg


def test_unreadable_csv(tmp_path):
    msg = error_of(read_rows, write_text(tmp_path, "d.csv", 'prompt,completion\n"a,b\nc,d'))
    assert "d.csv: not a readable CSV file" in msg


def test_csv_messages_cell_that_is_not_json(tmp_path):
    good = json.dumps(EXAMPLES["messages"][0]["messages"]).replace('"', '""')
    path = write_text(tmp_path, "d.csv", f'messages\n"{good}"\n"{good}"\n"[{{not json"\n')
    msg = error_of(read_rows, path)
    assert "d.csv: row 3: field 'messages'" in msg and "JSON list" in msg


def test_file_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 10)
    path = write(tmp_path, "big.jsonl", [EXAMPLES["messages"][0]])
    msg = error_of(read_rows, path)
    assert "big.jsonl" in msg and "MB" in msg and "TUNELAB_MAX_UPLOAD_MB" in msg


def test_wrong_columns(tmp_path):
    path = write(tmp_path, "qa.jsonl", [{"question": "q", "answer": "a"}])
    msg = error_of(load_examples, path, "sft")
    assert "qa.jsonl" in msg and "answer, question" in msg
    for fmt in data.FORMATS:
        assert fmt in msg  # the accepted column sets are listed
    assert "prompt+chosen+rejected" in msg


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_chosen_or_rejected_in_every_row(tmp_path, missing):
    row = {k: v for k, v in EXAMPLES["preference"][0].items() if k != missing}
    msg = error_of(load_examples, write(tmp_path, "p.jsonl", [row] * 3), "dpo")
    assert f"p.jsonl: line 1: field '{missing}' is missing" in msg


@pytest.mark.parametrize("fmt,field", [("messages", "messages"), ("prompt_completion", "completion"),
                                       ("alpaca", "output"), ("sharegpt", "conversations"),
                                       ("preference", "chosen"), ("sharegpt_preference", "rejected")])
def test_missing_field_in_row_3(tmp_path, fmt, field):
    bad = {k: v for k, v in EXAMPLES[fmt][0].items() if k != field}
    bad["note"] = "x"  # keep the row non-empty however many fields it loses
    path = write(tmp_path, "d.jsonl", three_rows(fmt, bad))
    assert f"d.jsonl: line 3: field '{field}' is missing" in error_of(load_examples, path, objective(fmt))


def test_missing_field_in_row_3_of_json_and_csv(tmp_path):
    rows = three_rows("alpaca", {"instruction": "x", "input": "", "output": ""})
    for name in ("d.json", "d.csv"):
        assert f"{name}: row 3: field 'output' is empty" in error_of(load_examples, write(tmp_path, name, rows), "sft")


def test_row_of_another_format(tmp_path):
    path = write(tmp_path, "mixed.jsonl", three_rows("messages", EXAMPLES["prompt_completion"][0]))
    msg = error_of(load_examples, path, "sft")
    assert "mixed.jsonl: line 3: field 'messages' is missing" in msg and "prompt_completion" in msg


BAD_ROWS = [
    # (format, bad row 3, field named in the error, words in the error)
    ("messages", {"messages": "hi"}, "messages", "must be a list"),
    ("messages", {"messages": [U("q"), {"role": "assistant", "content": 42}]}, "messages[1].content",
     "must be a string, got a number"),
    ("messages", {"messages": [U("q"), {"role": "assistant", "content": ["a"]}]}, "messages[1].content",
     "must be a string, got a list"),
    ("messages", {"messages": [U("q"), A("  ")]}, "messages[1].content", "is empty"),
    ("messages", {"messages": [U("q"), {"role": "robot", "content": "r"}]}, "messages[1].role",
     "unknown role 'robot'"),
    ("messages", {"messages": [U("q"), {"content": "r"}]}, "messages[1].role", "is missing"),
    ("messages", {"messages": [U("q"), "r"]}, "messages[1]", "must be an object"),
    ("messages", {"messages": [U("q"), U("again")]}, "messages", "no assistant message"),
    ("messages", {"messages": []}, "messages", "empty list"),
    ("messages", {"messages": [A("r")]}, "prompt", "missing or empty"),
    ("messages", {"messages": [U("q"), S("late"), A("r")]}, "messages[1]", "system messages may only come first"),
    ("prompt_completion", {"prompt": "", "completion": "r"}, "prompt", "missing or empty"),
    ("prompt_completion", {"prompt": "q", "completion": {"x": 1}}, "completion.role", "is missing"),
    ("prompt_completion", {"prompt": 5, "completion": "r"}, "prompt", "must be a list of turns, got a number"),
    ("alpaca", {"instruction": "i", "input": 3, "output": "o"}, "input", "must be a string"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "r"}]},
     "conversations[1].from", "unknown role 'alien'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
     "conversations[1].value", "is missing"),
    ("preference", {"prompt": "q", "chosen": "", "rejected": "r"}, "chosen", "is empty"),
    ("preference", {"prompt": "q", "chosen": "c", "rejected": 1.5}, "rejected", "must be a string or a list"),
    ("preference", {"prompt": "q", "chosen": [U("other"), A("c")], "rejected": "r"}, "chosen", "differ from the prompt"),
    ("preference", {"prompt": "q", "chosen": [U("q")], "rejected": "r"}, "chosen", "no assistant message"),
    ("sharegpt_preference", {"conversations": [{"from": "human", "value": "q"}],
                             "chosen": {"from": "human", "value": "c"}, "rejected": "r"}, "chosen",
     "must be an assistant reply"),
]


@pytest.mark.parametrize("fmt,bad,field,words", BAD_ROWS, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in BAD_ROWS])
def test_bad_row_3_names_line_and_field(tmp_path, fmt, bad, field, words):
    path = write(tmp_path, "bad.jsonl", three_rows(fmt, bad))
    msg = error_of(load_examples, path, objective(fmt))
    assert f"bad.jsonl: line 3: field '{field}'" in msg
    assert words in msg


def test_preference_file_used_for_sft(tmp_path):
    path = write(tmp_path, "pairs.jsonl", [EXAMPLES["preference"][0]])
    msg = error_of(load_examples, path, "sft")
    assert "pairs.jsonl" in msg and "preference pairs" in msg and "use method dpo" in msg


def test_sft_file_used_for_dpo(tmp_path):
    path = write(tmp_path, "chat.jsonl", [EXAMPLES["messages"][0]])
    msg = error_of(load_examples, path, "dpo")
    assert "chat.jsonl" in msg and "SFT examples" in msg and "prompt/chosen/rejected" in msg


def test_unknown_objective(tmp_path):
    with pytest.raises(ValueError):
        load_examples(write(tmp_path, "d.jsonl", [EXAMPLES["messages"][0]]), "ppo")


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
    # Authored data: no duplicated prompts.
    prompts = [json.dumps(ex["prompt"]) for ex in examples]
    assert len(set(prompts)) == len(prompts)


def test_the_upload_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_MB", "1.5")
    assert data._max_file_bytes() == int(1.5 * 1024 * 1024)
    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_MB", "lots")
    assert data._max_file_bytes() == 200 * 1024 * 1024     # not a number: the default
    monkeypatch.delenv("TUNELAB_MAX_UPLOAD_MB")
    assert data._max_file_bytes() == 200 * 1024 * 1024
