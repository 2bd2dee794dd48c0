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
import random
import tempfile
import uuid
from pathlib import Path

import pandas as pd

from .. import data as data_mod
from ..common import workspace
from ..common.words import counted
from ..arena.chat import BASE, Arena, Sampling, blind_order, source_label
from ..arena.chatdevice import default_device
from ..arena.leaderboard import standings
from ..arena.prefs import LabelError, LabelStore, same_answer
from . import exports, logic

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
    """Chatbot messages for a pane, with the answer being generated at the end. An answer
    stopped by Max new tokens (`cut`: the limit) ends with a marker, for the page only: the
    history, what the model sees next and the label keep the text as the model wrote it."""
    out = [{"role": m["role"], "content": ("⚠ " + m["content"]) if m.get("error") else
            m["content"] + (f" *{cut_note(m['cut'])}*" if m.get("cut") else "")} for m in history]
    if partial is not None:
        out.append({"role": "assistant", "content": partial or ("…" if waiting else "")})
    return out


def cut_note(limit: int) -> str:
    return f"… [cut at {limit} tokens — raise Max new tokens]"


IDENTICAL_NOTE = ("Both answers are the same text, so neither is better: save Tie [3] or Both bad [4] "
                  "(A and B are off).")


def vote_allowed(pair: dict | None) -> dict[str, bool]:
    """Which votes a pair can take: none without a pair; no winner between the same answer
    twice (the label store refuses it: DPO could learn nothing from it)."""
    if not pair:
        return dict.fromkeys(("a", "b", "tie", "both_bad"), False)
    differ = not same_answer(*pair["answers"])
    return {"a": differ, "b": differ, "tie": True, "both_bad": True}


def restored_annotator(saved, user: str | None) -> str | None:
    """The annotator's name after a page (re)load: the one last typed in this browser (kept
    by the page's BrowserState) when it was typed under the same login, else the signed-in
    user's; None leaves the box as it is."""
    if isinstance(saved, dict) and (saved.get("name") or "").strip() and saved.get("user") == user:
        return saved["name"].strip()
    return user or None


def remembered_annotator(name: str | None, user: str | None) -> dict:
    """What the browser keeps of the name typed: the name and the login it was typed under
    (on a shared computer the next person signing in gets their own name, not this one)."""
    return {"name": (name or "").strip()[:100], "user": user}


def pane_label(side: str, key: str | None, blind: bool, revealed: bool) -> str:
    if blind and not revealed:
        return f"Model {side}"
    if not key:
        return f"Model {side}"
    # Blind sides are drawn again every turn: a revealed name is this turn's answer's.
    return f"{side} · {source_label(key, logic.default_model())}" + (" (this turn)" if blind else "")


def turn_order(order: dict | None, left: str, right: str, blind: bool) -> dict:
    """Which model answers as A and which as B on the next turn.

    Shown by name, the sides stay as picked for the whole conversation. Blind, every turn
    tosses its own coin: a vote reveals that turn's names, so sides kept from one turn to
    the next would be known before the next vote. Each pane's conversation stays as shown:
    whichever model answers in pane A continues pane A's conversation."""
    if order is not None and not order["blind"]:
        return order
    swapped = blind and blind_order(RNG)
    return {"keys": [right, left] if swapped else [left, right], "blind": blind, "swapped": swapped,
            "revealed": not blind}


def side_names(keys: list[str], samplings: list[Sampling]) -> list[str]:
    """Leaderboard names of the two sides; one model at two temperatures is two contestants."""
    names = [source_label(k, logic.default_model()) if k != BASE else BASE for k in keys]
    if keys[0] == keys[1] and samplings[0].temperature != samplings[1].temperature:
        names = [f"{n} @ T={s.temperature:g}" for n, s in zip(names, samplings)]
    return names


def provenance(reply) -> dict:
    """What a label keeps of where a reply came from, beyond its model key: cut at the token
    limit, and an endpoint's URL and model name."""
    return {**reply.provenance, **({"truncated": True} if reply.cut else {})}


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
    if chosen_text is not None and same_answer(chosen_text, answers[winner]):
        chosen_text = None  # not edited
    return store().add(set_name, prompt=prompt, answer_a=answers[0], answer_b=answers[1], vote=vote,
                       annotator=annotator, source_a=pair["sources"][0], source_b=pair["sources"][1],
                       key=pair["key"], chosen_text=chosen_text, origin=origin)


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
    notes = [f"Answer {src['side']} was cut at {src['max_new_tokens']} tokens: it ends where Max new tokens "
             f"stopped it (raise it for whole answers)." for src in pair["sources"] if src.get("truncated")]
    if not vote_allowed(pair)["a"]:
        notes.append(IDENTICAL_NOTE)
    # The notes go above the answers, not into them: the boxes hold the answers as saved.
    head += "".join(logic.message_html(n, "warn") for n in notes)
    return head + turns, pair["answers"][0], pair["answers"][1]


# --------------------------------------------------------------------------- tables

def set_choices() -> list[str]:
    names = [s["name"] for s in store().sets()]
    return names if DEFAULT_SET in names else [DEFAULT_SET] + names


def count_text(info: dict | None) -> str:
    """Each kind of label in a set (one of `store().sets()`, None: an empty one), by name:
    '6 votes · 5 pairs for DPO/ORPO · 4 👍 · 4 👎'. The pairs are the votes DPO and ORPO
    can train on (not ties, both-bad votes or wins between identical answers)."""
    info = info or {}
    votes, pairs = info.get("labels", 0), info.get("pairs", 0)
    up, down = info.get("thumbs_up", 0), info.get("thumbs_down", 0)
    return f"{counted(votes, 'vote')} · {counted(pairs, 'pair')} for DPO/ORPO · {up} 👍 · {down} 👎"


def count_html(set_name: str | None) -> str:
    set_name = (set_name or "").strip()
    if not set_name:
        return ""
    info = next((s for s in store().sets() if s["name"] == set_name), None)
    return (f'<div class="tl-hint" id="arena-count-text">{html.escape(count_text(info))} in '
            f'<b>{html.escape(set_name)}</b></div>')


def vote_saved_text(row_id: int, new: bool, set_name: str) -> str:
    """What a vote's click says: votes are numbered on their own (thumbs have their numbers)."""
    if not new:
        return f"Already saved as vote #{row_id}."
    return f"Saved vote #{row_id} in '{set_name.strip()}'."


SETS_COLUMNS = ["set", "votes", "pairs", "👍", "👎", "good / bad"]
SETS_NOTE = ("votes: A/B votes; pairs: what DPO and ORPO train on; good / bad: the answers KTO trains on "
             "(the thumbs, and each vote's two answers)")


def sets_table() -> pd.DataFrame:
    """One row a set: its A/B votes and thumbs, and what each method trains on. DPO and
    ORPO take the decided pairs (not ties, both-bad votes or wins between identical
    answers); KTO takes every thumb plus each vote's answers (store.unpaired_rows)."""
    rows = [{"set": s["name"], "votes": s["labels"], "pairs": s["pairs"], "👍": s["thumbs_up"],
             "👎": s["thumbs_down"], "good / bad": f"{s['desirable']} / {s['undesirable']}"}
            for s in store().sets()]
    return pd.DataFrame(rows, columns=SETS_COLUMNS)


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
    from ..arena.agreement import annotators
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
        out.append({"#": r["id"], "prompt": logic.clip(prompt, 80), "A": r["source_a"].get("name"),
                    "B": r["source_b"].get("name"), "vote": r["vote"], "edited": r["chosen_text"] is not None,
                    "annotator": r["annotator"]})
    return pd.DataFrame(out, columns=["#", "prompt", "A", "B", "vote", "edited", "annotator"])


def export_dir() -> Path:
    """A temporary folder for small downloads (the label files). A run's model is
    served from Gradio's own folder instead, without copies: see exports.py."""
    d = Path(tempfile.gettempdir()) / "tunelab-exports"
    d.mkdir(parents=True, exist_ok=True)
    exports.prune(d)   # downloads are copied by the app at once; an hour is plenty
    return d


def export_set(set_name: str, unpaired: bool = False) -> tuple[Path, dict]:
    """The set as a download: pairs for DPO/ORPO, or (`unpaired`) labelled answers for KTO."""
    set_name = (set_name or "").strip()
    if not set_name or not any(s["name"] == set_name for s in store().sets()):
        raise LabelError(f"set: no preference set named {set_name!r}")
    out = export_dir() / f"{uuid.uuid4().hex[:8]}" / f"{set_name}-{'kto' if unpaired else 'dpo'}.jsonl"
    out.parent.mkdir(parents=True)
    return out, (store().export_unpaired if unpaired else store().export_dpo)(set_name, out)


def export_text(counts: dict) -> str:
    if "desirable" in counts:   # an unpaired export
        return (f"Exported {counts['written']} answers for KTO: {counts['desirable']} good and "
                f"{counts['undesirable']} bad ({counts['thumbs']} thumbs, {counts['from_votes']} from A/B votes); "
                f"left out {counts['tie']} ties.")
    return (f"Exported {counts['written']} pairs; left out {counts['tie']} ties and {counts['both_bad']} "
            f"both-bad votes (they say nothing about which answer is better).{identical_text(counts)}")


def identical_text(counts: dict) -> str:
    """The pairs an export or import left out because both answers were the same text."""
    n = counts.get("identical") or 0
    return (f" {n} pair{'s' * (n != 1)} left out: identical answers (the same text on both sides "
            f"cannot be better than itself)." if n else "")


def dpo_result(run_id: str, events: list[dict], method: str = "dpo") -> tuple[str, str]:
    """(message, kind) when a DPO, KTO or ORPO run started here has finished: did it learn
    the labels? The margin (DPO: β·(chosen − rejected log-ratio), starting at 0 with loss
    ln 2 = 0.693; KTO: the good answers' reward minus the bad ones'; ORPO: β·(chosen −
    rejected mean log-prob)) above 0 means the tuned model prefers the better answers."""
    last = next((e for e in reversed(events) if e.get("type") == "step" and e.get("margin") is not None), None)
    if last is None:
        return f"{run_id} finished: pick it as a model above to compare it.", "ok"
    acc = last.get("accuracy") if method != "kto" else None
    acc = "" if acc is None else f", the chosen answer ahead in {acc:.0%} of its batch's pairs"
    loss = ""
    if last.get("loss") is not None:
        loss = f", loss {last['loss']:.3f}" + (" (0.693 before learning)" if method == "dpo" else "")
    what = "the good answers' reward minus the bad ones'" if method == "kto" else "reward margin"
    head = f"{run_id} finished. At its last step: {what} {last['margin']:+.3f}{acc}{loss}."
    if last["margin"] > 0:
        return f"{head} Pick it as a model above to compare it with the base.", "ok"
    return f"{head} It has not learned these labels yet: train it for more steps.", "warn"
