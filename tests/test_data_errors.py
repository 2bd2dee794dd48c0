"""Bad data files: every one fails early, and the message names the file, the line or row,
and the field (the good files, every format and file type, are in test_data.py)."""

import json

import pytest

from tunelab import data
from tunelab.data import formats
from tunelab.data import load_examples, read_rows

from .rows import EXAMPLES, A, S, U, error_of, objective, write, write_text




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
    monkeypatch.setattr(data.files, "MAX_FILE_BYTES", 10)
    path = write(tmp_path, "big.jsonl", [EXAMPLES["messages"][0]])
    msg = error_of(read_rows, path)
    assert "big.jsonl" in msg and "MB" in msg and "TUNELAB_MAX_UPLOAD_MB" in msg


def test_wrong_columns(tmp_path):
    path = write(tmp_path, "qa.jsonl", [{"question": "q", "answer": "a"}])
    msg = error_of(load_examples, path, "sft")
    assert "qa.jsonl" in msg and "answer, question" in msg
    for fmt in formats.FORMATS:
        assert fmt in msg  # the accepted column sets are listed
    assert "prompt+chosen+rejected" in msg


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_chosen_or_rejected_in_every_row(tmp_path, missing):
    row = {k: v for k, v in EXAMPLES["preference"][0].items() if k != missing}
    msg = error_of(load_examples, write(tmp_path, "p.jsonl", [row] * 3), "dpo")
    assert f"p.jsonl: line 1: field '{missing}' is missing" in msg


@pytest.mark.parametrize("fmt,field", [("messages", "messages"), ("prompt_completion", "completion"),
                                       ("alpaca", "output"), ("sharegpt", "conversations"),
                                       ("preference", "chosen"), ("sharegpt_preference", "rejected"),
                                       ("unpaired", "label"), ("messages_unpaired", "label")])
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
    ("unpaired", {"prompt": "q", "completion": "r", "label": "yes"}, "label", "must be true (a desirable answer) or false"),
    ("unpaired", {"prompt": "q", "completion": "r", "label": 1}, "label", "got a number 1"),
    ("unpaired", {"prompt": "q", "completion": "", "label": True}, "completion", "is empty"),
    ("messages_unpaired", {"messages": [U("q")], "label": False}, "messages", "no assistant message"),
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
    assert "pairs.jsonl" in msg and "preference pairs" in msg and "use method dpo, orpo or kto" in msg


def test_sft_file_used_for_dpo(tmp_path):
    path = write(tmp_path, "chat.jsonl", [EXAMPLES["messages"][0]])
    msg = error_of(load_examples, path, "dpo")
    assert "chat.jsonl" in msg and "SFT examples" in msg and "prompt/chosen/rejected" in msg


@pytest.mark.parametrize("label,kind,other", [(True, "desirable", "false"), (False, "undesirable", "true")])
def test_kto_set_with_one_kind_of_answer_only(tmp_path, label, kind, other):
    row = {**EXAMPLES["unpaired"][0], "label": label}
    msg = error_of(load_examples, write(tmp_path, "thumbs.jsonl", [row] * 3), "kto")
    assert "thumbs.jsonl" in msg and f"every row is {kind}" in msg and f"label {other}" in msg


def test_unpaired_file_used_for_dpo_or_sft(tmp_path):
    path = write(tmp_path, "thumbs.jsonl", [EXAMPLES["unpaired"][0]])
    msg = error_of(load_examples, path, "dpo")
    assert "thumbs.jsonl" in msg and "labelled good or bad" in msg and "use method kto" in msg
    assert "use method kto" in error_of(load_examples, path, "sft")


def test_sft_file_used_for_kto(tmp_path):
    msg = error_of(load_examples, write(tmp_path, "chat.jsonl", [EXAMPLES["messages"][0]]), "kto")
    assert "chat.jsonl" in msg and "SFT examples" in msg and "label" in msg


def test_unknown_objective(tmp_path):
    with pytest.raises(ValueError):
        load_examples(write(tmp_path, "d.jsonl", [EXAMPLES["messages"][0]]), "ppo")


def test_the_upload_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_MB", "1.5")
    assert data.files.max_file_bytes() == int(1.5 * 1024 * 1024)
    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_MB", "lots")
    assert data.files.max_file_bytes() == 200 * 1024 * 1024     # not a number: the default
    monkeypatch.delenv("TUNELAB_MAX_UPLOAD_MB")
    assert data.files.max_file_bytes() == 200 * 1024 * 1024
