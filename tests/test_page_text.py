"""What the page tells a user is true: JSON errors read as English, the format names agree
between the page and the docs, a message says which run (or the form) it is about, and
an upload says what became of it in the Train tab."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from tunelab import data
from tunelab.data import formats
from tunelab.ui import notes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, text, problem", [
    ("cut.jsonl", '{"messages": [{"role": "user", "content": "Hi}]}\n', "Unterminated string starting at column 43"),
    ("cut.json", '[{"prompt": "Hi", "completion": "Hel', "Unterminated string starting at column 33"),
    ("bad.jsonl", '{"prompt": "Hi",}\n', "Expecting property name enclosed in double quotes at column 17"),
    ("cells.csv", 'messages\n"[{""role"": ""user"", ""content"": ""Hi}]"\n', "Unterminated string starting at column 30"),
])
def test_json_errors_name_the_column_once(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(data.DataError) as e:
        data.read_rows(path)
    assert problem in str(e.value) and "at at" not in str(e.value)


def test_the_docs_and_the_page_name_formats_alike():
    docs = (ROOT / "docs" / "data.md").read_text()
    table = docs[docs.index("| format | columns |"):docs.index("## Errors")]
    named = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert named == list(formats.FORMATS)   # the names the Data tab's summary shows (formats.detect_format)
    from tunelab.ui import data_tab
    for fmt in formats.FORMATS:
        assert f"`{fmt}`" in data_tab.FORMATS_HELP
    for where in ("docs/data.md", "tunelab/ui/arena_labels.py", "tunelab/arena/prefs.py"):
        assert "sharegpt ranking" not in (ROOT / where).read_text()


def test_a_message_belongs_to_its_run_or_to_the_form():
    started = notes.run_note("Started r1: the first steps come after the model loads.", "ok", "r1")
    cancelled = notes.run_note("Cancelled r1: it left the queue without training.", "info", "r1", "follow")
    assert notes.about(started) == ("r1", "end") and notes.about(cancelled) == ("r1", "follow")
    assert notes.keep(started, "r1", settled=False)          # while r1 goes
    assert not notes.keep(started, "r1", settled=True)       # r1 ended: its panel says how
    assert notes.keep(cancelled, "r1", settled=True)         # still true once it ended
    assert not notes.keep(cancelled, "r2", settled=False)    # the tab follows another run now
    assert not notes.keep(started, None, settled=True)       # the run was deleted
    form = notes.form_note("train.lr: must be > 0")
    assert notes.about(form) == (None, None) and notes.keep(form, "r2", settled=True)
    assert 'data-about="form"' in form and "Not started — train.lr: must be &gt; 0" in form
    assert notes.keep("", "r1", settled=True)


def test_an_upload_says_what_the_train_tab_does_with_it():
    assert notes.upload_fits("sft", "lora") and notes.upload_fits("dpo", "dpo")
    assert not notes.upload_fits("dpo", "lora") and not notes.upload_fits("sft", "dpo")
    fits = html.unescape(notes.upload_note("sft", "qlora", "labs/data/x.jsonl"))
    assert "now the Train tab's dataset (method qlora)" in fits
    note = html.unescape(notes.upload_note("dpo", "lora", "labs/data/pirate_sft.jsonl"))
    assert "method lora cannot train on" in note and "keeps pirate_sft.jsonl" in note
    assert "Choose method dpo, kto or orpo there" in note
    assert "full, lora or qlora" in notes.upload_note("sft", "dpo", None)
    # Labelled answers train KTO only; KTO also trains on pairs (split).
    assert notes.upload_fits("kto", "kto") and notes.upload_fits("dpo", "kto") and notes.upload_fits("dpo", "orpo")
    assert not notes.upload_fits("kto", "dpo") and not notes.upload_fits("kto", "orpo") and not notes.upload_fits("sft", "kto")
    thumbs = html.unescape(notes.upload_note("kto", "dpo", None))
    assert "answers labelled good or bad" in thumbs and "Choose method kto there" in thumbs
