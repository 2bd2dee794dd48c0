"""The Arena's "One model" sub-tab: chat with one model and give each answer 👍 or 👎.

Most feedback is not a pair: someone reads one answer and likes it or not. Each answer
here gets a thumb (the buttons, or the keys u / + and d / -, never while typing), stored
in the same label store, set and crash-safe way as the A/B votes (thumbs_logic.py), and
KTO trains on them ("Train KTO on these labels" in Labels & DPO). The model is the Left
model picked above; sampling and system prompt are the Arena's.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..arena.chat import Request
from ..arena.prefs import LabelError
from . import arena_common as ac
from . import arena_logic as al
from . import logic
from . import thumbs_logic as tl

THUMBS = (("up", True, "👍 Good answer", "u"), ("down", False, "👎 Bad answer", "d"))


def build(left, set_name, annotator, count, system, sampling_inputs) -> SimpleNamespace:
    gr.HTML('<div class="tl-hint">One model (the <b>Left model</b> above) answers; mark each answer good or bad. '
            'KTO learns from such thumbs: no second answer to compare is needed. Thumbs are numbered on their '
            'own (thumb #1, #2, …), apart from the side-by-side votes.</div>')
    chat = gr.Chatbot([], label="Left model", height=380, elem_id="thumbs-chat", buttons=["copy"])
    prompt, send, stop, clear, status = ac.prompt_row("thumbs", "Ask the model… (Enter sends)")
    gr.HTML('<div class="tl-section">Was this answer good?</div>')
    buttons = {}
    with gr.Row():
        for name, _, text, key in THUMBS:
            buttons[name] = gr.Button(f"{text}  [{key}]", elem_id=f"thumbs-{name}", interactive=False,
                                      elem_classes=[f"tl-vote-{name}"], variant="secondary", size="sm")
    msg = gr.HTML("", elem_id="thumbs-msg")
    hist = gr.State([])
    turn = gr.State(None)   # the last complete answer, ready for a thumb
    thumb_btns = list(buttons.values())

    def on_send(text, h, model, sys_prompt, t, p, m, s, request: gr.Request):
        text, sampling, problem = ac.read_turn(text, t, p, m, s)
        if problem:
            yield {status: problem}
            return
        h = h + [{"role": "user", "content": text}]
        context = al.conversation(h, sys_prompt)
        label = al.source_label(model, logic.default_model())
        yield {prompt: "", hist: h, turn: None, chat: gr.Chatbot(al.display(h, "", waiting=True), label=label),
               msg: "", status: logic.message_html("Generating… (the first answer loads the model)", "info"),
               **{b: gr.Button(interactive=False) for b in thumb_btns}}
        replies, shown, said = None, 0.0, None
        with ac.cancel_for(request) as cancel:
            for replies in al.arena().stream([Request(model, context, sampling)], cancel=cancel):
                if time.monotonic() - shown < ac.redraw_interval():
                    continue
                shown = time.monotonic()
                update = {chat: al.display(h, replies[0].text, waiting=True)}
                note = ac.waiting_note(replies)
                if note != said:
                    said = note
                    update[status] = logic.message_html(note or "Generating…", "info")
                yield update
        r = replies[0]
        h = h + [{"role": "assistant", "content": r.error or r.text, **({"error": True} if r.error else {}),
                  **({"cut": sampling.max_new_tokens} if r.cut and not r.error else {})}]
        ok = r.error is None and r.text.strip()
        new_turn = tl.make_turn(context, r.text, model, sampling, cut=r.cut, provenance=r.provenance) if ok else None
        note = (f"{r.tokens} tokens, {r.tokens_per_s or 0:.1f}/s. Good or bad? (keys u / d)" if ok else
                "No label on this turn: the model failed or answered nothing.")
        # The label again: a model picked just before Send clears the pane (and its label)
        # in an event that may land after this turn's first update.
        yield {hist: h, turn: new_turn, chat: gr.Chatbot(al.display(h), label=label),
               status: logic.message_html(note, "info" if ok else "warn"),
               **{b: gr.Button(interactive=bool(ok)) for b in thumb_btns}}

    ac.wire_chat(on_send, (send.click, prompt.submit), [prompt, hist, left, system, *sampling_inputs],
                 [prompt, hist, turn, chat, status, msg, *thumb_btns], stop, status)

    def on_clear():
        return {hist: [], turn: None, chat: gr.Chatbot([], label="Left model"), status: "", msg: "",
                **{b: gr.Button(interactive=False) for b in thumb_btns}}

    clear_outputs = [hist, turn, chat, status, msg, *thumb_btns]
    clear.click(on_clear, outputs=clear_outputs, show_progress="hidden")
    left.change(on_clear, outputs=clear_outputs, show_progress="hidden")   # another model, another chat

    def on_thumb(up, t, s_name, who):
        if t and t.get("saved"):
            return {msg: logic.message_html(tl.saved_text(t["saved"], False, up, s_name), "info")}
        try:
            row_id, new = tl.save_thumb(t, up, s_name, who)
        except (LabelError, ValueError) as e:
            return {msg: logic.message_html(str(e), "error")}
        return {msg: logic.message_html(tl.saved_text(row_id, new, up, s_name), "ok"), turn: dict(t, saved=row_id),
                count: al.count_html(s_name), **{b: gr.Button(interactive=False) for b in thumb_btns}}

    for name, up, _, _ in THUMBS:
        buttons[name].click(lambda *a, u=up: on_thumb(u, *a), inputs=[turn, set_name, annotator],
                            outputs=[msg, turn, count, *thumb_btns], show_progress="hidden",
                            concurrency_id="vote", concurrency_limit=None)
    return SimpleNamespace(chat=chat, prompt=prompt, buttons=buttons)
