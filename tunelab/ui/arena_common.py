"""What the arena's Side-by-side and Batch sub-tabs share: their vote buttons, the sampling
read from the sliders, the flag each session's Stop button sets, and how often a streaming
answer redraws.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import gradio as gr

from ..arena.chat import Sampling
from . import arena_logic as al
from .logic import message_html

VOTE_BUTTONS = (("a", "A is better", "1"), ("b", "B is better", "2"), ("tie", "Tie", "3"), ("both_bad", "Both bad", "4"))
# Chats (and batches) the app serves at once; each joins its model's shared decode loop
# (tunelab/arena/loop.py), which itself writes up to TUNELAB_ARENA_MAX_ROWS answers at once.
CHAT_USERS = max(1, int(os.environ.get("TUNELAB_CHAT_USERS") or 64))
UI_INTERVAL_S = 0.1  # redraw streaming answers at most this often, with up to 3 generating
CANCELS: dict[str, threading.Event] = {}   # session -> the generation its Stop button stops


def redraw_interval() -> float:
    """How often a streaming chat redraws: every 0.1 s with up to 3 sessions generating
    (each has a Stop flag in CANCELS), then slower in proportion (30: 1 s). Every redraw is
    the whole conversation through Gradio and the network; at a workshop those redraws,
    not the model, were the limit."""
    return min(1.0, UI_INTERVAL_S * max(1.0, len(CANCELS) / 3))


def vote_row(prefix: str) -> dict:
    out = {}
    with gr.Row():
        for vote, text, key in VOTE_BUTTONS:
            out[vote] = gr.Button(f"{text}  [{key}]", elem_id=f"{prefix}-vote-{vote}", interactive=False,
                                  elem_classes=[f"tl-vote-{vote}"], variant="secondary", size="sm")
    return out


def prompt_row(prefix: str, placeholder: str):
    """The prompt box with Send, Stop and New chat under a chat, and its status line."""
    with gr.Row(equal_height=True):
        prompt = gr.Textbox("", placeholder=placeholder, show_label=False, scale=6, elem_id=f"{prefix}-prompt",
                            lines=1, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id=f"{prefix}-send")
        stop = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id=f"{prefix}-stop")
        clear = gr.Button("New chat", scale=0, min_width=100, elem_id=f"{prefix}-clear")
    status = gr.HTML("", elem_id=f"{prefix}-status")
    return prompt, send, stop, clear, status


def wire_chat(on_send, triggers, inputs: list, outputs: list, stop, status) -> None:
    """A chat's Send (and Enter) into the shared chat queue, and its Stop button."""
    for trigger in triggers:
        trigger(on_send, inputs=inputs, outputs=outputs, concurrency_id="chat", concurrency_limit=CHAT_USERS,
                show_progress="hidden")
    stop.click(stop_session, outputs=status, queue=False)


def stop_session(request: gr.Request):
    """Stop: set this session's flag (the loop drops its rows at the next step)."""
    ev = CANCELS.get(getattr(request, "session_hash", None) or "local")
    if ev:
        ev.set()
    return message_html("Stopping…", "info")


def read_turn(text, temp, top_p, max_new, seed):
    """A Send's prompt and sampling: (prompt, Sampling, None), or (None, None, the message
    saying what is wrong: no prompt, or a sampling value out of range)."""
    text = (text or "").strip()
    if not text:
        return None, None, message_html("Type a prompt first.", "warn")
    try:
        return text, sampling(temp, top_p, max_new, seed).check(), None
    except ValueError as e:
        return None, None, message_html(str(e), "error")


def sampling(temp, top_p, max_new, seed) -> Sampling:
    return Sampling(temperature=float(temp or 0), top_p=float(top_p or 1), max_new_tokens=int(max_new or 1),
                    seed=int(seed or 0))


@contextmanager
def cancel_for(request: gr.Request | None):
    """The Event that this session's Stop button sets, for one generation."""
    key = getattr(request, "session_hash", None) or "local"
    ev = CANCELS[key] = threading.Event()
    try:
        yield ev
    finally:
        ev.set()  # the page went away mid-answer (the handler was closed): stop generating
        if CANCELS.get(key) is ev:
            del CANCELS[key]


def waiting_note(replies) -> str | None:
    """While a model's loop is full: this chat's place in line (None once it is answering)."""
    places = [r.queued for r in replies if r.queued]
    if not places:
        return None
    place = min(places)
    return (f"Waiting for a free slot: {place}{_ordinal(place)} in line. The arena writes up to "
            f"{al.arena().max_rows} answers per model at once; yours starts as soon as one ends.")


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
