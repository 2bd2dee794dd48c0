"""The label store: "answer A is better than B" and 👍/👎 on one answer, one SQLite row a label.

    store = LabelStore()                      # workspace/labels.db (WAL mode)
    store.add("concise", prompt=[{"role": "user", "content": "Hi?"}],
              answer_a="Hello!", answer_b="Well, greetings are...",
              source_a={"model": "base"}, source_b={"model": "run-42"},
              vote="a", annotator="ana", key="click-7f3e")
    store.add_thumb("concise", prompt=[...], answer="Hello!", up=True, annotator="ana",
                    source={"model": "run-42"}, key="click-9a1c")
    store.export_dpo("concise", "pairs.jsonl")         # prompt / chosen / rejected for DPO, ORPO
    store.export_unpaired("concise", "thumbs.jsonl")   # prompt / completion / label for KTO

An A/B vote also counts as unpaired labels (`unpaired_rows`): the better answer desirable,
the other undesirable; both bad, two undesirable answers (which DPO has to drop); a tie,
none. A thumb is one answer, desirable (up) or not (down).

A is the answer shown on the left, B the one on the right; `source_*` says which model
(or run) and which sampling settings produced each, so a blind vote keeps its
provenance. Every `add` commits (synchronous=FULL) before it returns, so a vote the UI
acknowledged survives a crash, and its `key` makes a retried or double-clicked submit
a no-op instead of a second row (without a key, the vote's content is its key). Votes
belong to named preference sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from ..common import workspace

VOTES = ("a", "b", "tie", "both_bad")
DB_FILE = "labels.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    set_name    TEXT NOT NULL REFERENCES sets(name),
    prompt      TEXT NOT NULL,               -- JSON list of {role, content}
    answer_a    TEXT NOT NULL,               -- shown on the left
    answer_b    TEXT NOT NULL,               -- shown on the right
    source_a    TEXT NOT NULL,               -- JSON: model / run / sampling settings
    source_b    TEXT NOT NULL,
    vote        TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'both_bad')),
    chosen_text TEXT,                        -- the better answer as edited, if it was
    annotator   TEXT NOT NULL,
    origin      TEXT NOT NULL DEFAULT 'arena',
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_set ON labels(set_name, id);
CREATE TABLE IF NOT EXISTS thumbs (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    set_name    TEXT NOT NULL REFERENCES sets(name),
    prompt      TEXT NOT NULL,               -- JSON list of {role, content}
    answer      TEXT NOT NULL,
    source      TEXT NOT NULL,               -- JSON: model / run / sampling settings
    up          INTEGER NOT NULL CHECK (up IN (0, 1)),   -- 1: desirable, 0: undesirable
    annotator   TEXT NOT NULL,
    origin      TEXT NOT NULL DEFAULT 'arena',
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS thumbs_by_set ON thumbs(set_name, id);
"""


class LabelError(ValueError):
    """A vote or an import that cannot be stored; the message names the field."""


def same_answer(x: str, y: str) -> bool:
    """True when two answers cannot carry a preference: the same text once the whitespace
    at their ends is stripped. For such a pair DPO's chosen and rejected log-ratios cancel,
    so its loss is ln 2 and its gradient 0 whatever the vote said.

    Only the ends are normalised: they are invisible in the panes and in the exported
    chat. Any other difference (case, punctuation, spacing or line breaks inside the
    text) can be seen, in the batch view at least, can be what an annotator preferred
    (formatting is a fair preference), and gives DPO different tokens to learn from."""
    return x.strip() == y.strip()


def preference(vote: str, answer_a: str, answer_b: str, chosen_text: str | None = None) -> tuple[str, str] | None:
    """(chosen, rejected) of an A or B vote (the edited answer, if it was, is the chosen one);
    None for a tie, a both-bad vote, or a win between the same answer twice."""
    if vote not in ("a", "b"):
        return None
    better, worse = (answer_a, answer_b) if vote == "a" else (answer_b, answer_a)
    chosen = chosen_text if chosen_text is not None else better
    return None if same_answer(chosen, worse) else (chosen, worse)


def judged_vote(row: dict) -> str:
    """The vote as rankings count it: a win between identical answers (stored before `add`
    refused them) is a tie, since both models said the same thing."""
    a, b = row.get("answer_a"), row.get("answer_b")
    if row["vote"] in ("a", "b") and isinstance(a, str) and isinstance(b, str) and same_answer(a, b):
        return "tie"
    return row["vote"]


def _is_pair(vote, answer_a, answer_b, chosen_text) -> int:
    """`preference` for SQL (registered on every connection): 1 when the row is a DPO pair."""
    return int(preference(vote, answer_a, answer_b, chosen_text) is not None)


class LabelStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else workspace.home() / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per call: safe from any thread, and a writer
        # waits (busy timeout) instead of failing with "database is locked".
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.row_factory = sqlite3.Row
        db.create_function("tl_is_pair", 4, _is_pair, deterministic=True)
        return db

    # --- sets -----------------------------------------------------------------------------
    def create_set(self, name: str, description: str = "") -> str:
        name = workspace.safe_name(name)
        with closing(self._connect()) as db:
            db.execute("INSERT OR IGNORE INTO sets(name, description, created) VALUES (?, ?, ?)",
                       (name, description, time.time()))
        return name

    def sets(self) -> list[dict]:
        """Every set: `labels` (A/B votes), `pairs` (those DPO and ORPO train on),
        `identical`, `thumbs_up`/`thumbs_down`, and `desirable`/`undesirable`: the
        unpaired answers KTO trains on, thumbs and A/B votes together (see unpaired_rows)."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT s.name, s.description, s.created, COUNT(l.id) AS labels, "
                "SUM(l.vote IN ('a', 'b')) AS wins, SUM(l.vote = 'both_bad') AS both_bad, "
                "SUM(tl_is_pair(l.vote, l.answer_a, l.answer_b, l.chosen_text)) AS pairs "
                "FROM sets s LEFT JOIN labels l ON l.set_name = s.name GROUP BY s.name ORDER BY s.created").fetchall()
            thumbs = {r["set_name"]: (r["up"] or 0, r["down"] or 0) for r in db.execute(
                "SELECT set_name, SUM(up = 1) AS up, SUM(up = 0) AS down FROM thumbs GROUP BY set_name")}
        out = []
        for r in rows:
            pairs, both_bad = r["pairs"] or 0, r["both_bad"] or 0
            up, down = thumbs.get(r["name"], (0, 0))
            # `identical`: A or B wins between the same answer twice, stored before add() refused
            # them; they are no DPO pairs and exports leave them out.
            out.append({k: r[k] for k in ("name", "description", "created", "labels")}
                       | {"pairs": pairs, "identical": (r["wins"] or 0) - pairs, "both_bad": both_bad,
                          "thumbs_up": up, "thumbs_down": down,
                          "desirable": up + pairs, "undesirable": down + pairs + 2 * both_bad})
        return out

    # --- votes ----------------------------------------------------------------------------
    def add(self, set_name: str, *, prompt: list[dict], answer_a: str, answer_b: str, vote: str,
            annotator: str, source_a: dict | None = None, source_b: dict | None = None,
            key: str | None = None, chosen_text: str | None = None, origin: str = "arena") -> tuple[int, bool]:
        """Store one vote; return (row id, True if new). The same `key` again returns the
        first row's id and False: a retry never saves twice."""
        if vote not in VOTES:
            raise LabelError(f"vote: must be one of {', '.join(VOTES)} (got {vote!r})")
        _check_prompt(prompt)
        for field, text in (("answer_a", answer_a), ("answer_b", answer_b)):
            if not isinstance(text, str) or not text.strip():
                raise LabelError(f"{field}: must be a non-empty string")
        if chosen_text is not None and not chosen_text.strip():
            raise LabelError("chosen_text: the edited answer is empty")
        if vote in ("a", "b") and preference(vote, answer_a, answer_b, chosen_text) is None:
            raise LabelError("vote: the two answers are the same text, so neither is better; "
                             "save it as a tie or both bad (or edit the better answer first)")
        annotator = _annotator(annotator)
        set_name = self.create_set(set_name)
        key = key or _content_key(set_name, prompt, answer_a, answer_b, vote, annotator)
        with closing(self._connect()) as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO labels(key, set_name, prompt, answer_a, answer_b, source_a, source_b, "
                "vote, chosen_text, annotator, origin, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, set_name, json.dumps(prompt), answer_a, answer_b, json.dumps(source_a or {}),
                 json.dumps(source_b or {}), vote, chosen_text, annotator[:100], origin, time.time()))
            if cur.rowcount == 1:
                return cur.lastrowid, True
            return db.execute("SELECT id FROM labels WHERE key = ?", (key,)).fetchone()[0], False

    def add_thumb(self, set_name: str, *, prompt: list[dict], answer: str, up: bool, annotator: str,
                  source: dict | None = None, key: str | None = None, origin: str = "arena") -> tuple[int, bool]:
        """Store a thumbs up (`up=True`: a desirable answer) or down on one answer; return
        (row id, True if new). As for `add`, the same `key` again stores nothing."""
        if not isinstance(up, bool):
            raise LabelError(f"up: must be true (thumbs up) or false (thumbs down) (got {up!r})")
        _check_prompt(prompt)
        if not isinstance(answer, str) or not answer.strip():
            raise LabelError("answer: must be a non-empty string")
        annotator = _annotator(annotator)
        set_name = self.create_set(set_name)
        key = key or _content_key(set_name, prompt, answer, up, annotator)
        with closing(self._connect()) as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO thumbs(key, set_name, prompt, answer, source, up, annotator, origin, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, set_name, json.dumps(prompt), answer, json.dumps(source or {}), int(up), annotator[:100],
                 origin, time.time()))
            if cur.rowcount == 1:
                return cur.lastrowid, True
            return db.execute("SELECT id FROM thumbs WHERE key = ?", (key,)).fetchone()[0], False

    def thumbs(self, set_name: str) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM thumbs WHERE set_name = ? ORDER BY id", (set_name,)).fetchall()
        return [dict(r) | {"prompt": json.loads(r["prompt"]), "source": json.loads(r["source"]), "up": bool(r["up"])}
                for r in rows]

    def unpaired_rows(self, set_name: str) -> tuple[list[dict], dict]:
        """The set as KTO's rows {"prompt", "completion": [assistant], "label"}: every
        thumb, then every A/B vote as unpaired answers (the better, as edited if it was,
        desirable and the other undesirable; both bad: two undesirable; a tie or a win
        between identical answers: none). Returns (rows, counts)."""
        rows, counts = [], {"thumbs": 0, "from_votes": 0, "tie": 0, "identical": 0}

        def answer(prompt, text, label):
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": text}], "label": label})
        for t in self.thumbs(set_name):
            answer(t["prompt"], t["answer"], t["up"])
            counts["thumbs"] += 1
        for row in self.labels(set_name):
            if row["vote"] == "tie":
                counts["tie"] += 1
            elif row["vote"] == "both_bad":
                answer(row["prompt"], row["answer_a"], False)
                answer(row["prompt"], row["answer_b"], False)
                counts["from_votes"] += 2
            else:
                pair = preference(row["vote"], row["answer_a"], row["answer_b"], row["chosen_text"])
                if pair is None:
                    counts["identical"] += 1
                    continue
                answer(row["prompt"], pair[0], True)
                answer(row["prompt"], pair[1], False)
                counts["from_votes"] += 2
        counts["desirable"] = sum(r["label"] for r in rows)
        counts["undesirable"] = len(rows) - counts["desirable"]
        return rows, counts

    def labels(self, set_name: str) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM labels WHERE set_name = ? ORDER BY id", (set_name,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("prompt", "source_a", "source_b"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def count(self, set_name: str | None = None) -> int:
        with closing(self._connect()) as db:
            if set_name is None:
                return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM labels WHERE set_name = ?", (set_name,)).fetchone()[0]

    def last_settings(self, model_key: str) -> dict | None:
        """The sampling settings and system prompt of the newest label (vote or thumb) on an
        answer from `model_key` ("run:<id>"): how that model was last used in the arena.
        None when no label comes from it."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT prompt, source, created FROM ("
                " SELECT prompt, source_a AS source, created FROM labels WHERE json_extract(source_a, '$.model') = ?1"
                " UNION ALL SELECT prompt, source_b, created FROM labels WHERE json_extract(source_b, '$.model') = ?1"
                " UNION ALL SELECT prompt, source, created FROM thumbs WHERE json_extract(source, '$.model') = ?1)"
                " ORDER BY created DESC LIMIT 1", (model_key,)).fetchall()
        if not rows:
            return None
        source, prompt = json.loads(rows[0]["source"]), json.loads(rows[0]["prompt"])
        out = {k: source[k] for k in ("temperature", "top_p", "max_new_tokens") if k in source}
        system = [m["content"] for m in prompt if m.get("role") == "system"]
        return out | {"system": system[0] if system else None, "labelled": rows[0]["created"]}

    # --- export / import --------------------------------------------------------------------
    def export_dpo(self, set_name: str, path: str | Path) -> dict:
        """Write the set's decided votes as TRL conversational preference rows:
        {"prompt": [...messages], "chosen": [assistant], "rejected": [assistant]}.
        Ties, both-bad votes and wins between identical answers (stored before `add`
        refused them) carry no preference: they are left out and counted."""
        counts = {"written": 0, "tie": 0, "both_bad": 0, "identical": 0}
        lines = []
        for row in self.labels(set_name):
            if row["vote"] in ("tie", "both_bad"):
                counts[row["vote"]] += 1
                continue
            pair = preference(row["vote"], row["answer_a"], row["answer_b"], row["chosen_text"])
            if pair is None:
                counts["identical"] += 1
                continue
            lines.append(json.dumps({"prompt": row["prompt"],
                                     "chosen": [{"role": "assistant", "content": pair[0]}],
                                     "rejected": [{"role": "assistant", "content": pair[1]}]}))
            counts["written"] += 1
        _write_lines(path, lines)
        return counts

    def export_unpaired(self, set_name: str, path: str | Path) -> dict:
        """Write the set as TRL's unpaired preference rows, {"prompt": [...messages],
        "completion": [assistant], "label": true/false}: its thumbs and its A/B votes
        (see unpaired_rows). Returns the counts, with `written`."""
        rows, counts = self.unpaired_rows(set_name)
        _write_lines(path, [json.dumps(r) for r in rows])
        return counts | {"written": len(rows)}

    def import_file(self, set_name: str, path: str | Path, annotator: str = "import") -> dict:
        """Import pairs (`import_pairs`) or labelled answers (`import_unpaired`), as the
        file's columns say; `kind` in the result is "pairs" or "thumbs"."""
        from ..data import KTO_FORMATS, detect_format, read_rows
        if detect_format(read_rows(path), path) in KTO_FORMATS:
            return self.import_unpaired(set_name, path, annotator) | {"kind": "thumbs"}
        return self.import_pairs(set_name, path, annotator) | {"kind": "pairs"}

    def import_unpaired(self, set_name: str, path: str | Path, annotator: str = "import") -> dict:
        """Add every labelled answer of an unpaired file (prompt/completion/label, or
        messages/label; any file type `tunelab.data` reads) to a set as a thumb. Importing
        the same file twice adds nothing the second time. A file of one kind only is
        fine here (KTO's need for both kinds is checked when a run is made)."""
        from ..data import KTO_FORMATS, load_examples
        fmt, rows = load_examples(path, "kto", need_both=False)   # DataError names the file/row/field
        if fmt not in KTO_FORMATS:
            raise LabelError(f"{Path(path).name}: holds preference pairs ({fmt}), not labelled answers; "
                             f"import it as pairs")
        added = 0
        source = {"model": "import", "file": Path(path).name}
        for ex in rows:
            text = ex["completion"][-1]["content"]
            key = "import:" + _digest(set_name, ex["prompt"], text, ex["label"])
            _, new = self.add_thumb(set_name, prompt=ex["prompt"], answer=text, up=ex["label"], annotator=annotator,
                                    source=source, key=key, origin="import")
            added += new
        return {"format": fmt, "rows": len(rows), "added": added}

    def import_pairs(self, set_name: str, path: str | Path, annotator: str = "import") -> dict:
        """Add every pair of a preference file (preference or sharegpt_preference format;
        any format `tunelab.data` reads) to a set as an 'A is better' vote. Importing the
        same file twice adds nothing the second time. Pairs whose chosen and rejected
        answers are the same text carry no preference: they are skipped and counted."""
        from ..data import load_examples
        fmt, rows = load_examples(path, "dpo")  # raises DataError naming the file/row/field
        added = identical = 0
        source = {"model": "import", "file": Path(path).name}
        for ex in rows:
            chosen, rejected = ex["chosen"][-1]["content"], ex["rejected"][-1]["content"]
            if same_answer(chosen, rejected):
                identical += 1
                continue
            key = "import:" + _digest(set_name, ex["prompt"], chosen, rejected)
            _, new = self.add(set_name, prompt=ex["prompt"], answer_a=chosen, answer_b=rejected, vote="a",
                              annotator=annotator, source_a=source, source_b=source, key=key, origin="import")
            added += new
        return {"format": fmt, "rows": len(rows), "added": added, "identical": identical}


def _check_prompt(prompt) -> None:
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in prompt):
        raise LabelError("prompt: must be a non-empty list of {role, content} messages")


def _annotator(name) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise LabelError("annotator: say who is labelling (a name)")
    return name


def _write_lines(path, lines: list[str]) -> None:
    """Write JSON lines whole or not at all (a temporary file renamed over the name)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _content_key(*parts) -> str:
    return "content:" + _digest(*parts)
