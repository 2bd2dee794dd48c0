"""The app's label APIs for annotation scripts (gradio_client), without gradio.

    Client(url).predict(set_name, prompt, answer_a, answer_b, vote, annotator, key, api_name="/add_label")
    Client(url).predict(set_name, prompt, answer, up, annotator, key, api_name="/add_thumb")

Each stores one label in the workspace's label store and answers once it is committed; the
same key again stores nothing, so a retry after a dropped connection is safe.
"""

from __future__ import annotations

import json

from ..arena.prefs import LabelError
from ..common import workspace
from . import arena_logic as al


def api_label(set_name: str, prompt: str, answer_a: str, answer_b: str, vote: str, annotator: str,
              key: str = "") -> dict:
    """One label from an annotation script (the app's `/add_label` API): the prompt as text
    (one user turn) or a JSON list of {role, content} messages. `key` makes a retry safe:
    the same key again stores nothing and answers with the first row's id."""
    set_name = (set_name or "").strip()
    if not set_name:
        raise LabelError("set: name the preference set the label goes into")
    row_id, new = al.store().add(set_name, prompt=api_messages(prompt), answer_a=answer_a, answer_b=answer_b, vote=vote,
                              annotator=annotator, key=(key or "").strip() or None, origin="api")
    return {"id": row_id, "new": new, "set": workspace.safe_name(set_name)}


def api_messages(prompt: str) -> list[dict]:
    """An API prompt as messages: a JSON list of {role, content}, or text as one user turn."""
    text = (prompt or "").strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelError(f"prompt: not valid JSON messages ({e.msg} at character {e.pos})") from e
    return [{"role": "user", "content": text}] if text else []


def api_thumb(set_name: str, prompt: str, answer: str, up, annotator: str, key: str = "") -> dict:
    """One thumb from an annotation script (the app's `/add_thumb` API): the prompt as text
    (one user turn) or a JSON list of {role, content} messages, `up` true (a good answer) or
    false. `key` makes a retry safe: the same key again stores nothing and answers with the
    first row's id."""
    set_name = (set_name or "").strip()
    if not set_name:
        raise LabelError("set: name the set the label goes into")
    if isinstance(up, str) and up.strip().lower() in ("true", "false"):
        up = up.strip().lower() == "true"
    row_id, new = al.store().add_thumb(set_name, prompt=api_messages(prompt), answer=answer, up=up,
                                       annotator=annotator, key=(key or "").strip() or None, origin="api")
    return {"id": row_id, "new": new, "set": workspace.safe_name(set_name)}
