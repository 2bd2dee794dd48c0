"""Training data: read a file, recognise its format, check it, and hand TRL one shape.

Fine-tuning data comes in a handful of well-known shapes. TuneLab accepts eight, chosen
by the columns of the rows (any other columns, such as `id`, are ignored):

SFT (supervised fine-tuning: learn to write the reply)

    messages           {"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello!"}]}
    prompt_completion  {"prompt": "Hi", "completion": "Hello!"}
    alpaca             {"instruction": "Translate to French", "input": "cat", "output": "chat"}
    sharegpt           {"conversations": [{"from": "human", "value": "Hi"},
                                          {"from": "gpt", "value": "Hello!"}]}

DPO (preference tuning: learn that one reply is better than another)

    preference           {"prompt": "Hi", "chosen": "Hello!", "rejected": "What?"}
    sharegpt_preference  {"conversations": [{"from": "human", "value": "Hi"}],
                          "chosen": {"from": "gpt", "value": "Hello!"},
                          "rejected": {"from": "gpt", "value": "What?"}}

KTO (learn from single answers, each marked desirable or not: a thumbs up or down)

    unpaired           {"prompt": "Hi", "completion": "Hello!", "label": true}
    messages_unpaired  {"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "What?"}], "label": false}

    (the answer judged is the last assistant message; KTO also takes preference pairs,
    split into the chosen answer, desirable, and the rejected one, undesirable)

Files may be JSON Lines (.jsonl, one object a line), JSON (.json, a list of objects),
CSV (.csv, one column a field; list-valued cells hold JSON text) or Parquet (.parquet).

Every format is turned into TRL's *conversational* form, so one chat template (the
model's own) renders all of them and the loss falls only on the reply:

    SFT  {"prompt": [{"role": "user", "content": "Hi"}],
          "completion": [{"role": "assistant", "content": "Hello!"}]}
    DPO  {"prompt": [...], "chosen": [{"role": "assistant", ...}],
          "rejected": [{"role": "assistant", ...}]}
    KTO  {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": true}

A bad file fails early with a `DataError` that names the file, the line or row, and the
field, e.g. ``labs/x.jsonl: line 3: field 'chosen' is missing``.

This module reads files into rows and holds the entry points; recognising the format
and checking and converting each row is in `formats.py`.

    fmt, examples = load_examples("labs/data/pirate_sft.jsonl", "sft")
    train, held_out = split_eval(examples, 0.1, seed=0)
    dataset = to_dataset(train)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from .formats import (DPO_FORMATS, FORMAT_COLUMNS, KTO_FORMATS, OBJECTIVES, SFT_FORMATS, DataError, type_name,
                      detect_format, normalize, objective_of, split_pairs)

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# A lab dataset is kilobytes; a file this large is almost surely the wrong file, and
# reading it would hold the whole thing in memory. The app also refuses uploads above it.
# TUNELAB_MAX_UPLOAD_MB sets it (a host may want less); read at call time so tests can lower it.


def max_file_bytes(default_mb: float = 200.0) -> int:
    """The largest data file read (and upload taken), from TUNELAB_MAX_UPLOAD_MB."""
    try:
        mb = float(os.environ.get("TUNELAB_MAX_UPLOAD_MB", "") or default_mb)
    except ValueError:
        mb = default_mb
    return int(max(mb, 0.001) * 1024 * 1024)


MAX_FILE_BYTES = max_file_bytes()

# In CSV every cell is text, so list-valued fields arrive as JSON strings.
_LIST_COLUMNS = ("messages", "conversations")
_MAYBE_LIST_COLUMNS = ("prompt", "completion", "chosen", "rejected")


class _Rows(list):
    """Rows plus where each came from ("line 7", "row 3"), for error messages.

    JSONL skips blank lines, so a row's index is not its line number; keeping the
    label next to the row lets `normalize` point at the line the user can open.
    """

    def __init__(self, rows: list[dict], where: list[str]):
        super().__init__(rows)
        self.where = where


# ---------------------------------------------------------------------------
# Reading files


def read_rows(path) -> list[dict]:
    """Read a .jsonl, .json, .csv or .parquet file into a list of row dicts."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found" if not p.exists() else f"{path}: not a file")
    suffix = p.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type '{p.suffix or '(none)'}'; "
                        f"use one of {', '.join(EXTENSIONS)}")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: file is {size / 1e6:.1f} MB; TuneLab reads data files up to "
                        f"{MAX_FILE_BYTES / 1e6:.0f} MB (TUNELAB_MAX_UPLOAD_MB raises the limit)")
    if size == 0:
        raise DataError(f"{path}: file is empty")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    rows = reader(p, path)
    if not rows:
        raise DataError(f"{path}: file holds no rows")
    return rows


def _decode(raw: bytes, path) -> str:
    # Decode the whole file once so a bad byte is reported with its line, not as a
    # crash deep inside a parser. utf-8-sig drops the BOM some editors write.
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (byte {raw[e.start]:#04x} at byte "
                        f"offset {e.start}); save the file as UTF-8") from None


def _read_jsonl(p: Path, path) -> list[dict]:
    text = _decode(p.read_bytes(), path)
    rows, where = [], []
    # split("\n") rather than splitlines(): JSON strings may hold U+2028, which
    # splitlines() would treat as a line break and so miscount lines.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = "; the line ends before the JSON does (truncated?)" if _cut_short(e, line) else ""
            raise DataError(f"{path}: line {n}: not valid JSON ({_json_problem(e)}){hint}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object {{...}}, got {type_name(row)}")
        rows.append(row)
        where.append(f"line {n}")
    if not rows:
        raise DataError(f"{path}: file holds no rows (only blank lines)")
    return _Rows(rows, where)


def _json_problem(e: json.JSONDecodeError) -> str:
    """The parser's complaint with its column: "Expecting value at column 3". Some of its
    messages already end in "at" ("Unterminated string starting at"), so "column" is
    joined to those without a second "at"."""
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


def _cut_short(e: json.JSONDecodeError, text: str) -> bool:
    # The parser stops at the end of the text, or at a string that never closes.
    return e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")


def _read_json(p: Path, path) -> list[dict]:
    text = _decode(p.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path}: file holds no rows (only blank lines)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; the file ends before the JSON does (truncated?)" if _cut_short(e, text) else ""
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({_json_problem(e)}){hint}") from None
    rows = _unwrap_json(data, path)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i + 1}: expected a JSON object {{...}}, got {type_name(row)}")
    return rows


def _unwrap_json(data: Any, path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        # {"messages": [...]} is one example, not a dataset wrapped under a key.
        if any(k in data for k in _LIST_COLUMNS + _MAYBE_LIST_COLUMNS + ("instruction",)):
            return [data]
        if len(lists) == 1:  # {"data": [...]}, {"train": [...]}
            return data[lists[0]]
    raise DataError(f"{path}: expected a JSON list of objects, or an object holding one list "
                    f"such as {{\"data\": [...]}}; got {type_name(data)}")


def _read_csv(p: Path, path) -> list[dict]:
    import io

    import pandas as pd

    text = _decode(p.read_bytes(), path)
    try:
        # Every cell stays a string: no "NA" -> NaN, no "1" -> 1.
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file holds no rows (no header line)") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: not a readable CSV file ({str(e).strip()})") from None
    rows = frame.to_dict("records")
    for i, row in enumerate(rows):
        _parse_json_cells(row, path, f"row {i + 1}")
    return rows


def _parse_json_cells(row: dict, path, where: str) -> None:
    """Turn CSV cells that hold JSON lists (a `messages` column) into real lists."""
    for key in _LIST_COLUMNS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            try:
                row[key] = json.loads(value)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: {where}: field '{key}' must hold a JSON list of turns "
                                f"({_json_problem(e)})") from None
    # These may be plain text or a list of turns; only text that parses as turns is turned.
    for key in _MAYBE_LIST_COLUMNS:
        value = row.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict) or (isinstance(parsed, list) and parsed
                                            and all(isinstance(t, dict) for t in parsed)):
                row[key] = parsed


def _read_parquet(p: Path, path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        # pyarrow rather than pandas: to_pylist() gives plain lists and dicts, where
        # pandas would hand back numpy arrays for list columns.
        return pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


# ---------------------------------------------------------------------------
# The entry points the rest of TuneLab uses


def load_examples(path, objective: str, need_both: bool = True) -> tuple[str, list[dict]]:
    """Read, detect and normalize `path` for `objective`: "sft" (examples), "dpo" (pairs,
    for DPO and ORPO) or "kto" (answers labelled desirable or not; pairs are split; a file
    of one kind only is refused unless `need_both` is False)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    rows = read_rows(path)
    fmt = detect_format(rows, path)
    # Check the pairing before the rows, so a whole-file mistake is one clear message.
    columns = "/".join(FORMAT_COLUMNS[fmt])
    if objective == "sft" and fmt not in SFT_FORMATS:
        kind = "preference pairs" if fmt in DPO_FORMATS else "answers labelled good or bad"
        raise DataError(f"`{path}` holds {kind} ({columns}); use method "
                        f"{'dpo, orpo or kto' if fmt in DPO_FORMATS else 'kto'}")
    if objective == "dpo" and fmt not in DPO_FORMATS:
        what = "SFT examples" if fmt in SFT_FORMATS else "single answers labelled good or bad"
        raise DataError(f"`{path}` holds {what} ({fmt} format: {columns}); DPO and ORPO need "
                        f"prompt/chosen/rejected pairs" + ("; use method kto" if fmt in KTO_FORMATS else ""))
    if objective == "kto" and fmt in SFT_FORMATS:
        raise DataError(f"`{path}` holds SFT examples ({fmt} format); KTO needs answers with a "
                        f"true/false `label` (prompt/completion/label), or preference pairs")
    examples = normalize(rows, fmt, path)
    if objective == "kto":
        if fmt in DPO_FORMATS:
            examples = split_pairs(examples)
        labels = {ex["label"] for ex in examples}
        if len(labels) == 1 and need_both:
            have, need = ("desirable (label true)", "false") if True in labels else ("undesirable (label false)", "true")
            raise DataError(f"`{path}`: every row is {have}; KTO learns from the contrast, so it needs "
                            f"answers of both kinds (add rows with label {need})")
    return fmt, examples


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(fraction * n) examples, chosen by a seeded shuffle.

    At least one is held out when fraction > 0 and there are two or more examples,
    and never all of them: an eval set needs a training set beside it.
    Both parts keep the file's order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
    n = len(examples)
    if fraction == 0 or n < 2:
        return list(examples), []
    n_eval = min(max(1, round(fraction * n)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evals = [ex for i, ex in enumerate(examples) if i in held]
    return train, evals


def to_dataset(examples: list[dict]):
    """A `datasets.Dataset` of normalized examples, ready for TRL's trainers."""
    import datasets  # imported here: reading and checking files should not pay for it

    return datasets.Dataset.from_list(examples)


def summarize(path) -> dict:
    """What the app's Data tab shows: format, objective, size and a preview."""
    rows = read_rows(path)
    fmt = detect_format(rows, path)
    examples = normalize(rows, fmt, path)
    return {"path": str(path), "format": fmt, "objective": objective_of(fmt),
            "rows": len(examples), "preview": examples[:3]}
