"""The eight dataset formats: their columns, recognising them, and turning rows into TRL's form.

`files.py` reads a file into rows and says which formats there are (its docstring shows
one row of each); this module names a file's format from its first row's columns
(`detect_format`) and checks every row while converting it to TRL's conversational
form (`normalize`), so that a bad row fails with a `DataError` naming the file, the
line or row, and the field.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("messages", "prompt_completion", "alpaca", "sharegpt", "preference", "sharegpt_preference",
           "unpaired", "messages_unpaired")
SFT_FORMATS = FORMATS[:4]
DPO_FORMATS = FORMATS[4:6]
KTO_FORMATS = FORMATS[6:]
OBJECTIVES = ("sft", "dpo", "kto")

# The columns that identify each format. A row may carry more; these must be there.
# `preference` also takes rows without `prompt` when chosen/rejected are whole
# conversations (TRL's "implicit prompt" form); the prompt is then their shared start.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "sharegpt_preference": ("conversations", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "messages_unpaired": ("messages", "label"),
}
REQUIRED = {**FORMAT_COLUMNS, "preference": ("chosen", "rejected")}

ROLES = ("system", "user", "assistant")
# ShareGPT exports name speakers by product or by side; all of them map onto the
# three chat roles that chat templates understand.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "model": "assistant",
}


class DataError(ValueError):
    """A data file that cannot be used; the message says where and why."""


def _where(rows: list, i: int) -> str:
    where = getattr(rows, "where", None)
    return where[i] if where is not None and i < len(where) else f"row {i + 1}"


class _At:
    """One row's location; builds errors that name file, row and field."""

    def __init__(self, path, where: str):
        self.path, self.where = path, where

    def error(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {self.where}: field '{field}' {problem}")


def type_name(value: Any) -> str:
    """A value's type in JSON's words (string, number, array, object, ...), as the user wrote it."""
    # JSON's names, since that is what the user wrote.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# Recognising the format


def _format_of(keys: set) -> str | None:
    if "chosen" in keys and "rejected" in keys:
        return "sharegpt_preference" if "conversations" in keys else "preference"
    if "chosen" in keys or "rejected" in keys:
        return None  # half a pair: reject rather than quietly train SFT on it
    if "label" in keys:   # one answer judged good (true) or bad (false): KTO's data
        for fmt in KTO_FORMATS:
            if all(c in keys for c in FORMAT_COLUMNS[fmt]):
                return fmt
        return None
    for fmt in SFT_FORMATS:
        if all(c in keys for c in FORMAT_COLUMNS[fmt]):
            return fmt
    return None


def _accepted() -> str:
    return "; ".join(f"{fmt}: {'+'.join(cols)}" for fmt, cols in FORMAT_COLUMNS.items())


def detect_format(rows: list[dict], path) -> str:
    """Name the format of `rows` from the columns of the first row."""
    if not rows:
        raise DataError(f"{path}: file holds no rows")
    keys = set(rows[0])
    fmt = _format_of(keys)
    if fmt is not None:
        return fmt
    found = ", ".join(sorted(map(str, keys))) or "(none)"
    # Name the missing field of the nearest format: "field 'rejected' is missing"
    # helps more than a list of every format.
    candidates = DPO_FORMATS if keys & {"chosen", "rejected"} else KTO_FORMATS if "label" in keys else FORMATS
    best = max(candidates, key=lambda f: len(keys & set(FORMAT_COLUMNS[f])))  # ties: first listed
    if keys & set(FORMAT_COLUMNS[best]):
        missing = [c for c in FORMAT_COLUMNS[best] if c not in keys][0]
        raise DataError(f"{path}: {_where(rows, 0)}: field '{missing}' is missing; columns found: {found} "
                        f"(looks like {best}, which needs {', '.join(FORMAT_COLUMNS[best])}). "
                        f"Accepted columns: {_accepted()}")
    raise DataError(f"{path}: no known data format; columns found: {found}. Accepted columns: {_accepted()}")


# ---------------------------------------------------------------------------
# Checking rows and turning them into TRL's conversational form


def normalize(rows: list[dict], fmt: str, path) -> list[dict]:
    """Check every row against `fmt` and convert it to TRL's conversational form."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    convert = _CONVERTERS[fmt]
    out = []
    for i, row in enumerate(rows):
        at = _At(path, _where(rows, i))
        if not isinstance(row, dict):
            raise DataError(f"{path}: {at.where}: expected an object, got {type_name(row)}")
        _require(row, fmt, at)
        out.append(convert(row, at))
    return out


def _require(row: dict, fmt: str, at: _At) -> None:
    for field in REQUIRED[fmt]:
        if row.get(field) is None:
            other = _format_of(set(k for k, v in row.items() if v is not None))
            hint = f" (this row looks like {other}; every row must use the same format)" if other else ""
            raise at.error(field, f"is missing{hint}")


def _text(value: Any, at: _At, field: str) -> str:
    if value is None:
        raise at.error(field, "is missing")
    if not isinstance(value, str):
        raise at.error(field, f"must be a string, got {type_name(value)}")
    if not value.strip():
        raise at.error(field, "is empty")
    return value


def _turns(value: Any, at: _At, field: str, sharegpt: bool = False) -> list[dict]:
    """Validate a list of chat turns and return them as [{"role", "content"}]."""
    if not isinstance(value, list):
        raise at.error(field, f"must be a list of turns, got {type_name(value)}")
    if not value:
        raise at.error(field, "is an empty list")
    turns = []
    for j, turn in enumerate(value):
        turns.append(_turn(turn, at, f"{field}[{j}]", sharegpt))
        if turns[-1]["role"] == "system" and j > 0 and turns[-2]["role"] != "system":
            raise at.error(f"{field}[{j}]", "is a system message after the conversation began; "
                                            "system messages may only come first")
    return turns


def _turn(turn: Any, at: _At, field: str, sharegpt: bool) -> dict:
    # ShareGPT writes {"from", "value"}; accept {"role", "content"} there too, as
    # many "ShareGPT" exports mix the two.
    if not isinstance(turn, dict):
        keys = "'from' and 'value'" if sharegpt else "'role' and 'content'"
        raise at.error(field, f"must be an object with {keys}, got {type_name(turn)}")
    role_key, text_key = ("from", "value") if sharegpt and "from" in turn else ("role", "content")
    role = turn.get(role_key)
    if role is None:
        raise at.error(f"{field}.{role_key}", "is missing")
    allowed = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
    if not isinstance(role, str) or role.lower() not in allowed:
        raise at.error(f"{field}.{role_key}", f"has unknown role {role!r}; use one of {', '.join(allowed)}")
    return {"role": allowed[role.lower()], "content": _text(turn.get(text_key), at, f"{field}.{text_key}")}


def _split_last_reply(turns: list[dict], at: _At, field: str) -> tuple[list[dict], dict]:
    """(turns before the last assistant turn, that turn). Later turns carry no reply to learn."""
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise at.error(field, "has no assistant message to learn from")
    return turns[:last], turns[last]


def _prompt_turns(value: Any, at: _At, field: str, sharegpt: bool = False) -> list[dict]:
    """A prompt given as text becomes one user turn; as a list, it is checked turn by turn."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, at, field)}]
    return _turns(value, at, field, sharegpt)


def _reply(value: Any, at: _At, field: str, sharegpt: bool = False) -> tuple[list[dict], dict]:
    """A reply as text, as one turn object, or as a conversation ending in it."""
    if isinstance(value, str):
        return [], {"role": "assistant", "content": _text(value, at, field)}
    if isinstance(value, dict):
        turn = _turn(value, at, field, sharegpt)
        if turn["role"] != "assistant":
            raise at.error(field, f"must be an assistant reply, got role {turn['role']!r}")
        return [], turn
    if isinstance(value, list):
        return _split_last_reply(_turns(value, at, field, sharegpt), at, field)
    raise at.error(field, f"must be a string or a list of turns, got {type_name(value)}")


def _join_prompt(given: list[dict], befores: list[tuple[str, list[dict]]], at: _At) -> list[dict]:
    """The prompt, from the `prompt` field or from the turns a reply carries before it.

    A reply given as a whole conversation repeats the prompt; those turns must agree
    with the prompt (and with each other), or the pair compares different questions.
    """
    prompt = given
    for field, before in befores:
        if not before:
            continue
        if not prompt:
            prompt = before
        elif before != prompt:
            raise at.error(field, "has turns before its reply that differ from the prompt")
    if not prompt:
        raise at.error("prompt", "is missing or empty (and the replies carry no prompt turns)")
    if not any(t["role"] == "user" for t in prompt):
        raise at.error("prompt", "has no user message")
    return prompt


def _from_messages(row: dict, at: _At) -> dict:
    before, reply = _split_last_reply(_turns(row["messages"], at, "messages"), at, "messages")
    return {"prompt": _join_prompt([], [("messages", before)], at), "completion": [reply]}


def _from_sharegpt(row: dict, at: _At) -> dict:
    turns = _turns(row["conversations"], at, "conversations", sharegpt=True)
    before, reply = _split_last_reply(turns, at, "conversations")
    return {"prompt": _join_prompt([], [("conversations", before)], at), "completion": [reply]}


def _from_prompt_completion(row: dict, at: _At) -> dict:
    given = _prompt_turns(row["prompt"], at, "prompt")
    before, reply = _reply(row["completion"], at, "completion")
    return {"prompt": _join_prompt(given, [("completion", before)], at), "completion": [reply]}


def _from_alpaca(row: dict, at: _At) -> dict:
    user = _text(row["instruction"], at, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise at.error("input", f"must be a string, got {type_name(extra)}")
    if extra and extra.strip():
        user = f"{user}\n\n{extra}"
    reply = _text(row["output"], at, "output")
    return {"prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": reply}]}


def _from_preference(row: dict, at: _At, sharegpt: bool = False) -> dict:
    prompt_field = "conversations" if sharegpt else "prompt"
    given = _prompt_turns(row.get(prompt_field), at, prompt_field, sharegpt)
    chosen_before, chosen = _reply(row["chosen"], at, "chosen", sharegpt)
    rejected_before, rejected = _reply(row["rejected"], at, "rejected", sharegpt)
    prompt = _join_prompt(given, [("chosen", chosen_before), ("rejected", rejected_before)], at)
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def _from_sharegpt_preference(row: dict, at: _At) -> dict:
    return _from_preference(row, at, sharegpt=True)


def _label(value: Any, at: _At) -> bool:
    """A desirable (true) or undesirable (false) answer. CSV has no booleans, so the
    text true/false is taken too (any case); numbers and other words are refused."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise at.error("label", f"must be true (a desirable answer) or false (an undesirable one), "
                                f"got {type_name(value)} {value!r}")
    return value


def _from_unpaired(row: dict, at: _At) -> dict:
    return {**_from_prompt_completion(row, at), "label": _label(row["label"], at)}


def _from_messages_unpaired(row: dict, at: _At) -> dict:
    return {**_from_messages(row, at), "label": _label(row["label"], at)}


_CONVERTERS = {
    "messages": _from_messages,
    "prompt_completion": _from_prompt_completion,
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
    "preference": _from_preference,
    "sharegpt_preference": _from_sharegpt_preference,
    "unpaired": _from_unpaired,
    "messages_unpaired": _from_messages_unpaired,
}


def objective_of(fmt: str) -> str:
    return "dpo" if fmt in DPO_FORMATS else "kto" if fmt in KTO_FORMATS else "sft"


def split_pairs(pairs: list[dict]) -> list[dict]:
    """Normalized preference pairs as unpaired rows: the chosen answer desirable, the
    rejected one undesirable (how the KTO paper trains on pair data)."""
    out = []
    for pair in pairs:
        out.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        out.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return out
