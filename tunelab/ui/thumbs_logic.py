"""The one-pane chat's labels without gradio: an answer ready for a thumb, and saving it.

Every complete answer in the Arena's "One model" sub-tab becomes a `turn` (the context
the model saw, its answer, which model and sampling wrote it, and a fresh key). A 👍 or
👎 stores it in the label store (`LabelStore.add_thumb`) under that key, so a retried or
double click saves once, with the same provenance an A/B vote keeps.
"""

from __future__ import annotations

import uuid

from ..arena.chat import Sampling
from ..arena.prefs import LabelError
from . import arena_logic as al
from . import logic


def make_turn(context: list[dict], answer: str, key: str, sampling: Sampling, cut: bool = False,
              provenance: dict | None = None) -> dict:
    """One answer ready for a thumb. `key` is the model ("__base__" or a run id); `provenance`
    what the reply says of where it came from (an endpoint's URL and model)."""
    name = al.source_label(key, logic.default_model()) if key != al.BASE else al.BASE
    source = {"model": key, "name": name, "mode": "one pane", **sampling.to_dict(),
              **({"truncated": True} if cut else {}), **(provenance or {})}
    return {"key": "thumb-" + uuid.uuid4().hex, "context": context, "answer": answer, "source": source,
            "saved": None}


def save_thumb(turn: dict | None, up: bool, set_name: str, annotator: str, origin: str = "arena") -> tuple[int, bool]:
    """Store 👍 (`up`) or 👎 on the turn's answer; (row id, True if new). LabelError
    names what is missing (no answer yet, no set, no name)."""
    if not turn:
        raise LabelError("answer: nothing to label yet: send a prompt and wait for the answer")
    set_name = (set_name or "").strip()
    if not set_name:
        raise LabelError("set: name the set the label goes into")
    return al.store().add_thumb(set_name, prompt=turn["context"], answer=turn["answer"], up=up,
                                annotator=annotator, source=turn["source"], key=turn["key"], origin=origin)


def saved_text(row_id: int, new: bool, up: bool, set_name: str) -> str:
    mark = "👍" if up else "👎"
    if not new:
        return f"Already saved as thumb #{row_id}."
    # Thumbs are numbered on their own, apart from the A/B votes (another table in the store).
    return (f"Saved {mark} as thumb #{row_id} in '{set_name.strip()}'. "
            + ("A good answer: KTO raises answers like it." if up else "A bad answer: KTO lowers answers like it."))
