"""The Arena tab's logic without gradio: conversations, pairs, votes, batches, tables.

A pane's history is a list of {"role", "content"} messages; an answer that failed is
kept for display as {"role": "assistant", "content": ..., "error": True} and left out
(with the user turn that asked for it) of what the model sees next time. A *pair* is
one judged turn: both answers, the conversation each was given, which source produced
each and where it was shown; its `key` (made when it was generated) is the label's
unique key, so however often a vote on it is clicked, one row is stored.
"""

from __future__ import annotations

import html
import json
import random
import uuid
from pathlib import Path

import pandas as pd

from .. import data as data_mod
from .. import workspace
from ..chat import BASE, Arena, Sampling, default_device, source_label
from ..leaderboard import standings
from ..prefs import LabelError, LabelStore
from . import logic

MAX_BATCH = 50           # prompts in one batch: all of them are generated in one go
DEFAULT_SET = "arena"
_ARENA: Arena | None = None
_STORE: LabelStore | None = None
RNG = random.SystemRandom()  # blind sides: unpredictable to anyone watching the page


def arena() -> Arena:
    global _ARENA
    if _ARENA is None or _ARENA.base_model != logic.default_model():
        _ARENA = Arena(logic.default_model(), device=default_device())
    return _ARENA


def store() -> LabelStore:
    global _STORE
    if _STORE is None or _STORE.path.parent != workspace.home():
        _STORE = LabelStore()
    return _STORE


# --------------------------------------------------------------------------- conversations

def conversation(history: list[dict], system: str = "") -> list[dict]:
    """What the model sees: the system prompt, then every turn that got an answer."""
    out = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for i, m in enumerate(history):
        if m.get("error"):
            continue
        if m["role"] == "user" and i + 1 < len(history) and history[i + 1].get("error"):
            continue
        out.append({"role": m["role"], "content": m["content"]})
    return out


def display(history: list[dict], partial: str | None = None, waiting: bool = False) -> list[dict]:
    """Chatbot messages for a pane, with the answer being generated at the end."""
    out = [{"role": m["role"], "content": ("⚠ " + m["content"]) if m.get("error") else m["content"]}
           for m in history]
    if partial is not None:
        out.append({"role": "assistant", "content": partial or ("…" if waiting else "")})
    return out


def pane_label(side: str, key: str | None, blind: bool, revealed: bool) -> str:
    if blind and not revealed:
        return f"Model {side}"
    return f"{side} · {source_label(key, logic.default_model())}" if key else f"Model {side}"


def side_names(keys: list[str], samplings: list[Sampling]) -> list[str]:
    """Leaderboard names of the two sides; one model at two temperatures is two contestants."""
    names = [source_label(k, logic.default_model()) if k != BASE else BASE for k in keys]
    if keys[0] == keys[1] and samplings[0].temperature != samplings[1].temperature:
        names = [f"{n} @ T={s.temperature:g}" for n, s in zip(names, samplings)]
    return names


def make_pair(contexts: list[list[dict]], answers: list[str], keys: list[str], samplings: list[Sampling],
              swapped: bool, provenance: list[dict] | None = None) -> dict:
    names = side_names(keys, samplings)
    sources = []
    for i, side in enumerate(("A", "B")):
        src = {"model": keys[i], "name": names[i], "side": side, "position": "left" if i == 0 else "right",
               "blind_swapped": swapped, **samplings[i].to_dict()}
        if provenance and provenance[i]:
            src.update({k: v for k, v in provenance[i].items() if k not in src})
        sources.append(src)
    return {"key": "pair-" + uuid.uuid4().hex, "contexts": contexts, "answers": answers, "keys": keys,
            "sources": sources, "saved": None}


def save_vote(pair: dict, vote: str, set_name: str, annotator: str, chosen_text: str | None = None,
              origin: str = "arena") -> tuple[int, bool]:
    """Store the vote on a pair (LabelError names what is wrong). The prompt is the
    conversation the better answer was given (A's for a tie or both bad): in a multi-turn
    chat each side continues its own history, so the two can differ after the first turn."""
    set_name = (set_name or "").strip()
    if not set_name:
        raise LabelError("set: name the preference set the label goes into")
    winner = 1 if vote == "b" else 0
    prompt = pair["contexts"][winner]
    answers = pair["answers"]
    if chosen_text is not None and chosen_text.strip() == answers[winner].strip():
        chosen_text = None  # not edited
    return store().add(set_name, prompt=prompt, answer_a=answers[0], answer_b=answers[1], vote=vote,
                       annotator=annotator, source_a=pair["sources"][0], source_b=pair["sources"][1],
                       key=pair["key"], chosen_text=chosen_text, origin=origin)


def api_label(set_name: str, prompt: str, answer_a: str, answer_b: str, vote: str, annotator: str,
              key: str = "") -> dict:
    """One label from an annotation script (the app's `/add_label` API): the prompt as text
    (one user turn) or a JSON list of {role, content} messages. `key` makes a retry safe:
    the same key again stores nothing and answers with the first row's id."""
    set_name = (set_name or "").strip()
    if not set_name:
        raise LabelError("set: name the preference set the label goes into")
    text = (prompt or "").strip()
    if text.startswith("["):
        try:
            messages = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelError(f"prompt: not valid JSON messages ({e.msg} at character {e.pos})") from e
    else:
        messages = [{"role": "user", "content": text}] if text else []
    row_id, new = store().add(set_name, prompt=messages, answer_a=answer_a, answer_b=answer_b, vote=vote,
                              annotator=annotator, key=(key or "").strip() or None, origin="api")
    return {"id": row_id, "new": new, "set": workspace.safe_name(set_name)}


def reveal_text(pair: dict) -> str:
    a, b = (s["name"] for s in pair["sources"])
    return f"A was {a}, B was {b}."


# --------------------------------------------------------------------------- batches

def parse_prompts(text: str | None, file: str | None) -> list[list[dict]]:
    """Prompts for a batch: one per line typed, and/or a file — .txt (one per line) or
    .jsonl/.json/.csv/.parquet rows with a `prompt` (text or messages) or `messages` field.
    Each becomes the conversation sent to both models."""
    prompts: list[list[dict]] = [[{"role": "user", "content": line.strip()}]
                                 for line in (text or "").splitlines() if line.strip()]
    if file:
        path = Path(file)
        name = path.name
        if path.suffix.lower() in (".txt", ".md"):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise data_mod.DataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            prompts += [[{"role": "user", "content": ln.strip()}] for ln in lines if ln.strip()]
        else:
            for i, row in enumerate(data_mod.read_rows(path), start=1):
                prompts.append(_row_prompt(row, name, i))
    if not prompts:
        raise data_mod.DataError("prompts: type one prompt a line or choose a file")
    if len(prompts) > MAX_BATCH:
        raise data_mod.DataError(f"prompts: {len(prompts)} prompts; a batch takes at most {MAX_BATCH}")
    return prompts


def _row_prompt(row: dict, name: str, i: int) -> list[dict]:
    value = row.get("prompt", row.get("messages"))
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 and m.get("role") in ("system", "user", "assistant")
                                                 for m in value):
        msgs = [{"role": m["role"], "content": m["content"]} for m in value]
        while msgs and msgs[-1]["role"] == "assistant":  # a chat row: ask for its last answer again
            msgs.pop()
        if msgs and msgs[-1]["role"] == "user":
            return msgs
    raise data_mod.DataError(f"{name}, row {i}: needs a 'prompt' (text or messages ending with a user turn) "
                             f"or 'messages' field")


def batch_card(items: list[dict], idx: int, labelled: int) -> tuple[str, str, str]:
    """(prompt html, answer A, answer B) for the pair at idx, or a done notice."""
    if not items:
        return '<div class="tl-empty">Generate a batch to start labelling.</div>', "", ""
    if idx >= len(items):
        return (f'<div class="tl-msg tl-msg-ok">All {len(items)} pairs seen; {labelled} labelled. '
                f'Generate another batch, or train DPO on the set.</div>', "", "")
    pair = items[idx]
    turns = "".join(f'<div class="tl-turn tl-{m["role"]}"><span class="tl-role">{m["role"]}</span>'
                    f'{html.escape(m["content"])}</div>' for m in pair["contexts"][0])
    head = f'<div class="tl-hint">Pair {idx + 1} of {len(items)} · {labelled} labelled</div>'
    return head + turns, pair["answers"][0], pair["answers"][1]


# --------------------------------------------------------------------------- tables

def set_choices() -> list[str]:
    names = [s["name"] for s in store().sets()]
    return names if DEFAULT_SET in names else [DEFAULT_SET] + names


def count_html(set_name: str | None) -> str:
    set_name = (set_name or "").strip()
    if not set_name:
        return ""
    info = next((s for s in store().sets() if s["name"] == set_name), None)
    n, pairs = (info["labels"], info["pairs"]) if info else (0, 0)
    return (f'<div class="tl-hint" id="arena-count-text"><b>{n}</b> label{"s" * (n != 1)} in '
            f'<b>{html.escape(set_name)}</b> ({pairs} with a winner)</div>')


def sets_table() -> pd.DataFrame:
    rows = [{"set": s["name"], "labels": s["labels"], "pairs for DPO": s["pairs"],
             "ties / both bad": s["labels"] - s["pairs"], "description": s["description"]} for s in store().sets()]
    return pd.DataFrame(rows, columns=["set", "labels", "pairs for DPO", "ties / both bad", "description"])


def set_labels(set_name: str | None) -> list[dict]:
    return store().labels(set_name) if set_name else []


def leaderboard_tables(set_name: str | None, labels: list[dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The leaderboard and head-to-head tables (`labels`: the set's, when already read)."""
    board = standings(set_labels(set_name) if labels is None else labels)
    models = pd.DataFrame(
        [{"model": m["model"], "rating (BT)": None if m["rating"] is None else round(m["rating"]),
          "votes": m["votes"], "wins": m["wins"], "losses": m["losses"], "ties": m["ties"],
          "both bad": m["both_bad"], "win rate": None if m["win_rate"] is None else f"{m['win_rate']:.0%}"}
         for m in board["models"]],
        columns=["model", "rating (BT)", "votes", "wins", "losses", "ties", "both bad", "win rate"])
    h2h = pd.DataFrame(
        [{"model": r["model"], "against": r["opponent"], "wins": r["wins"], "losses": r["losses"], "ties": r["ties"],
          "win rate": f"{(r['wins'] + 0.5 * r['ties']) / max(1, r['wins'] + r['losses'] + r['ties']):.0%}"}
         for r in board["head_to_head"]],
        columns=["model", "against", "wins", "losses", "ties", "win rate"])
    return models, h2h


def annotator_tables(set_name: str | None, labels: list[dict] | None = None) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """For an instructor: labels per annotator, the agreement line, and agreement between each two."""
    from ..agreement import annotators
    report = annotators(set_labels(set_name) if labels is None else labels)
    people = pd.DataFrame(
        [{"annotator": r["annotator"], "labels": r["labels"], "A or B": r["a_or_b"], "ties": r["ties"],
          "both bad": r["both_bad"], "pairs shared with others": r["shared"]} for r in report["annotators"]],
        columns=["annotator", "labels", "A or B", "ties", "both bad", "pairs shared with others"])
    ag = report["agreement"]
    if not ag["pairs"]:
        line = ("No pair has been labelled by two annotators yet. For agreement, have everyone label the same "
                "pairs: the same prompts, models and seed give the same answers (Batch labelling).")
    else:
        kappa = "—" if ag["kappa"] is None else f"{ag['kappa']:.2f}"
        line = (f"{ag['pairs']} pairs labelled by two or more annotators: they agree in {ag['agreement']:.0%} of "
                f"{ag['comparisons']} comparisons; Fleiss' kappa {kappa} (1 = perfect, 0 = chance).")
    between = pd.DataFrame(
        [{"annotator": r["annotator"], "with": r["other"], "shared pairs": r["shared"], "agreed": r["agreed"],
          "agreement": f"{r['agreement']:.0%}"} for r in report["between"]],
        columns=["annotator", "with", "shared pairs", "agreed", "agreement"])
    return people, line, between


def recent_labels(set_name: str | None, n: int = 20, labels: list[dict] | None = None) -> pd.DataFrame:
    rows = (set_labels(set_name) if labels is None else labels)[-n:]
    out = []
    for r in reversed(rows):
        prompt = next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")
        out.append({"#": r["id"], "prompt": logic._clip(prompt, 80), "A": r["source_a"].get("name"),
                    "B": r["source_b"].get("name"), "vote": r["vote"], "edited": r["chosen_text"] is not None,
                    "annotator": r["annotator"]})
    return pd.DataFrame(out, columns=["#", "prompt", "A", "B", "vote", "edited", "annotator"])


def export_set(set_name: str) -> tuple[Path, dict]:
    set_name = (set_name or "").strip()
    if not set_name or not any(s["name"] == set_name for s in store().sets()):
        raise LabelError(f"set: no preference set named {set_name!r}")
    out = logic.export_dir() / f"{uuid.uuid4().hex[:8]}" / f"{set_name}-dpo.jsonl"
    out.parent.mkdir(parents=True)
    return out, store().export_dpo(set_name, out)
