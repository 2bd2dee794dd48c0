"""Arena tab: chat with two models side by side, label which answer is better, train DPO on the labels.

Three inner tabs share the model pickers, the preference set and the annotator's name:
- Side by side: one prompt goes to both models; both answers stream at once, sharing the
  decode steps of every other user's answers on the same base (see tunelab.arena.loop).
  In blind mode the sides are shuffled every turn and named "A"/"B" until that turn's
  vote. Votes: keys 1-4 (or a, b, t, x); between two identical answers only tie or both bad.
- One model (`arena_thumbs.py`): chat with the left model alone and give each answer
  👍 or 👎 (keys u / d): single-answer labels, which KTO trains on.
- Batch (`arena_batch.py`): a list of prompts, two candidates each (two models, or one
  model at two temperatures), generated in one go and labelled one after another.
- Labels & DPO (`arena_labels.py`): the sets, the leaderboard, export/import, and "Train
  DPO on these labels", which starts a run like the Train tab does and follows it.
Every vote is written to the label store (SQLite, committed) before the page says "Saved".
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..arena.chat import BASE, Request
from ..common.decoding import FAIR_SAMPLING
from ..arena.prefs import LabelError
from . import arena_batch, arena_endpoints, arena_labels, arena_thumbs, logic
from . import arena_common as ac
from . import arena_logic as al

def build(train, jobs) -> SimpleNamespace:
    choices = [(f"base · {logic.default_model()}", BASE)]
    with gr.Row(equal_height=True):
        left = gr.Dropdown(choices, value=BASE, label="Left model", elem_id="arena-left", scale=3,
                           info="The base model, any finished run (adapters share the base's weights), or an endpoint.")
        right = gr.Dropdown(choices, value=BASE, label="Right model", elem_id="arena-right", scale=3,
                            info="Pick a run here to compare it with the model on the left.")
        blind = gr.Checkbox(False, label="Blind", elem_id="arena-blind", scale=1,
                            info="Shuffle the sides and hide the names until you vote.")
        refresh = gr.Button("↻ Models", size="sm", scale=0, min_width=100, elem_id="arena-refresh")
    with gr.Row(equal_height=True):
        set_name = gr.Dropdown([al.DEFAULT_SET], value=al.DEFAULT_SET, allow_custom_value=True, scale=2,
                               label="Preference set", info="Votes go into this named set; type a new name to start one.",
                               elem_id="arena-set")
        annotator = gr.Textbox("", label="Your name", placeholder="e.g. ana", scale=2, elem_id="arena-annotator",
                               info="Stored with every label you give; this browser remembers it.")
        # The name survives a reload in the browser's localStorage. A name is no secret: the
        # fixed key and secret let it outlive an app restart too (random ones would not).
        saved_name = gr.BrowserState(None, storage_key="tunelab-annotator", secret="tunelab-annotator-name")
        count = gr.HTML("", elem_id="arena-count", scale=2)
    with gr.Accordion("Sampling and system prompt (both sides)", open=False):
        with gr.Row():
            temp = gr.Slider(0.0, 2.0, value=FAIR_SAMPLING["temperature"], step=0.05, label="Temperature",
                             info="0 = always the most likely token (a small base then loops). The default, with "
                                  "top-p 0.9, is SmolLM2's recommended sampling; both sides decode alike.",
                             elem_id="arena-temp")
            top_p = gr.Slider(0.05, 1.0, value=FAIR_SAMPLING["top_p"], step=0.05, label="Top-p",
                              info="Sample from the smallest set of tokens whose probabilities reach p.",
                              elem_id="arena-top-p")
            max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens", elem_id="arena-max-new")
            seed = gr.Number(FAIR_SAMPLING["seed"], precision=0, label="Seed", info="The same seed and settings repeat an answer.",
                             elem_id="arena-seed")
        system = gr.Textbox("", label="System prompt (optional)", lines=2, elem_id="arena-system")
    arena_endpoints.build(left, right)
    sampling_inputs = [temp, top_p, max_new, seed]

    with gr.Tabs():
        with gr.Tab("Side by side", id="arena-chat"):
            chat = _build_chat(left, right, blind, set_name, annotator, count, system, sampling_inputs)
        with gr.Tab("One model, 👍 / 👎", id="arena-thumbs"):
            thumbs = arena_thumbs.build(left, set_name, annotator, count, system, sampling_inputs)
        with gr.Tab("Batch labelling", id="arena-batch"):
            batch = arena_batch.build(left, right, blind, set_name, annotator, count, system, sampling_inputs)
        with gr.Tab("Labels & DPO", id="arena-labels") as labels_tab:
            lab = arena_labels.build(set_name, annotator, left, right, train, jobs)

    def on_refresh(l_val, r_val, set_val):
        opts = al.arena().choices()
        keys = {k for _, k in opts}
        sets = al.set_choices()
        return (gr.Dropdown(choices=opts, value=l_val if l_val in keys else BASE),
                gr.Dropdown(choices=opts, value=r_val if r_val in keys else BASE),
                gr.Dropdown(choices=sets, value=set_val), al.count_html(set_val))

    refresh_outputs = [left, right, set_name, count]
    refresh.click(on_refresh, inputs=[left, right, set_name], outputs=refresh_outputs, show_progress="hidden")
    set_name.change(al.count_html, inputs=set_name, outputs=count, show_progress="hidden")

    def remember_annotator(name, request: gr.Request):
        return al.remembered_annotator(name, logic.user_of(request))

    def restore_annotator(saved, name, done, request: gr.Request):
        """Once a page: the Arena tab's BrowserState reads the kept name when the tab first
        shows (Gradio mounts a tab's components then, after the page's load events), and
        reports it as a change. Later changes are this page's own writes: no round trip
        into the box while someone types in it."""
        user = logic.user_of(request)
        kept = al.restored_annotator(saved, user)
        fill = not done and kept is not None and (name or "").strip() in ("", user or "")
        return (kept if fill else gr.Textbox()), True

    annotator_restored = gr.State(False)
    saved_name.change(restore_annotator, inputs=[saved_name, annotator, annotator_restored],
                      outputs=[annotator, annotator_restored], show_progress="hidden", queue=False)
    annotator.change(remember_annotator, inputs=annotator, outputs=saved_name,
                    show_progress="hidden", queue=False)
    labels_tab.select(lab.refresh, inputs=set_name, outputs=lab.refresh_outputs, show_progress="hidden")
    return SimpleNamespace(refresh=on_refresh, refresh_inputs=[left, right, set_name], refresh_outputs=refresh_outputs,
                           chat=chat, thumbs=thumbs, batch=batch, labels=lab, set_name=set_name,
                           annotator=annotator)


# --------------------------------------------------------------------------- side by side

def _build_chat(left, right, blind, set_name, annotator, count, system, sampling_inputs):
    with gr.Row(equal_height=True):
        chat_a = gr.Chatbot([], label="Model A", height=380, elem_id="arena-chat-a", buttons=["copy"])
        chat_b = gr.Chatbot([], label="Model B", height=380, elem_id="arena-chat-b", buttons=["copy"])
    prompt, send, stop, clear, status = ac.prompt_row("arena", "Ask both models… (Enter sends)")
    gr.HTML('<div class="tl-section">Which answer is better?</div>')
    votes = ac.vote_row("arena")
    edit_mode = gr.Checkbox(False, label="Let me edit the better answer before it is saved", elem_id="arena-edit-mode")
    with gr.Group(visible=False) as edit_group:
        edit_box = gr.Textbox("", label="The better answer (edit it; the edited text is saved as the chosen answer)",
                              lines=5, elem_id="arena-edit-box")
        with gr.Row():
            save_edit = gr.Button("Save this answer", variant="primary", size="sm", elem_id="arena-save-edit")
            cancel_edit = gr.Button("Cancel", size="sm", elem_id="arena-cancel-edit")
    vote_msg = gr.HTML("", elem_id="arena-vote-msg")

    hist = gr.State({"a": [], "b": []})
    order = gr.State(None)      # {"keys": [A's source, B's source], "blind": bool, "swapped": bool, "revealed": bool}
    pair = gr.State(None)       # the last complete turn, ready for a vote
    pending = gr.State(None)    # a vote waiting for its edited answer
    vote_btns = list(votes.values())

    def labels_for(o, values=None):
        """The panes' labels (and, given `values`, their conversations; else these stay)."""
        names = (["Model A", "Model B"] if not o else
                 [al.pane_label(side, key, o["blind"], o["revealed"]) for side, key in zip("AB", o["keys"])])
        if values is None:
            return tuple(gr.Chatbot(label=n) for n in names)
        return tuple(gr.Chatbot(v, label=n) for v, n in zip(values, names))

    def on_send(text, h, o, l_key, r_key, is_blind, sys_prompt, t, p, m, s, request: gr.Request):
        text, sampling, problem = ac.read_turn(text, t, p, m, s)
        if problem:
            yield {status: problem}
            return
        o = al.turn_order(o, l_key, r_key, bool(is_blind))   # blind: a fresh coin every turn
        h = {"a": h["a"] + [{"role": "user", "content": text}], "b": h["b"] + [{"role": "user", "content": text}]}
        contexts = [al.conversation(h["a"], sys_prompt), al.conversation(h["b"], sys_prompt)]
        reqs = [Request(o["keys"][0], contexts[0], sampling), Request(o["keys"][1], contexts[1], sampling)]
        la, lb = labels_for(o)
        yield {prompt: "", order: o, hist: h, pair: None, chat_a: la, chat_b: lb,
               status: logic.message_html("Generating… (the first answer loads the models)", "info"),
               **{b: gr.Button(interactive=False) for b in vote_btns}}
        replies, shown, said = None, 0.0, None
        with ac.cancel_for(request) as cancel:
            for replies in al.arena().stream(reqs, cancel=cancel):
                if time.monotonic() - shown < ac.redraw_interval():
                    continue  # the last tokens are drawn below; a redraw per token only loads the browser
                shown = time.monotonic()
                update = {chat_a: al.display(h["a"], replies[0].text, waiting=True),
                          chat_b: al.display(h["b"], replies[1].text, waiting=True)}
                note = ac.waiting_note(replies)
                if note != said:   # in line, or out of it again
                    said = note
                    update[status] = logic.message_html(note or "Generating…", "info")
                yield update
        for side, r in zip("ab", replies):
            h[side].append({"role": "assistant", "content": r.error or r.text, **({"error": True} if r.error else {}),
                            **({"cut": sampling.max_new_tokens} if r.cut and not r.error else {})})
        ok = all(r.error is None and r.text.strip() for r in replies)
        new_pair = al.make_pair(contexts, [r.text for r in replies], o["keys"], [sampling, sampling], o["swapped"],
                                provenance=[al.provenance(r) for r in replies]) if ok else None
        allowed = al.vote_allowed(new_pair)
        speed = " · ".join(f"{side}: {r.tokens} tokens, {r.tokens_per_s or 0:.1f}/s, first after {r.first_token_s or 0:.1f} s"
                           for side, r in zip("AB", replies) if not r.error)
        note = ("No vote on this turn: a side failed or answered nothing." if not ok else
                "Vote below (keys 1-4)." if allowed["a"] else al.IDENTICAL_NOTE)
        # The labels again: a model picked just before Send clears the panes (and their
        # labels) in an event that may land after this turn's first update.
        la, lb = labels_for(o, (al.display(h["a"]), al.display(h["b"])))
        yield {hist: h, pair: new_pair, chat_a: la, chat_b: lb,
               status: logic.message_html(f"Turn {sum(m['role'] == 'user' for m in h['a'])}: "
                                          + (f"{speed}. {note}" if speed else note), "info" if ok else "warn"),
               vote_msg: "", **{b: gr.Button(interactive=allowed[v]) for v, b in votes.items()}}

    ac.wire_chat(on_send, (send.click, prompt.submit), [prompt, hist, order, left, right, blind, system, *sampling_inputs],
                 [prompt, order, hist, pair, chat_a, chat_b, status, vote_msg, *vote_btns], stop, status)

    def on_clear():
        return {hist: {"a": [], "b": []}, order: None, pair: None, chat_a: gr.Chatbot([], label="Model A"),
                chat_b: gr.Chatbot([], label="Model B"), status: "", vote_msg: "", edit_group: gr.Group(visible=False),
                **{b: gr.Button(interactive=False) for b in vote_btns}}

    clear_outputs = [hist, order, pair, chat_a, chat_b, status, vote_msg, edit_group, *vote_btns]
    clear.click(on_clear, outputs=clear_outputs, show_progress="hidden")
    # Another model means another contest: start a fresh conversation.
    gr.on([left.change, right.change, blind.change], on_clear, outputs=clear_outputs, show_progress="hidden")

    def saved(p, o, vote, s_name, who, chosen_text=None):
        try:
            row_id, new = al.save_vote(p, vote, s_name, who, chosen_text=chosen_text)
        except (LabelError, ValueError) as e:
            return {vote_msg: logic.message_html(str(e), "error")}
        p = dict(p, saved=row_id)
        o = dict(o, revealed=True) if o else o
        la, lb = labels_for(o)
        text = al.vote_saved_text(row_id, new, s_name)
        text += f" {al.reveal_text(p)}" + (" The next turn draws the sides again." if o and o["blind"] else "")
        return {vote_msg: logic.message_html(text, "ok"), pair: p, order: o,
                chat_a: la, chat_b: lb, count: al.count_html(s_name), edit_group: gr.Group(visible=False),
                pending: None, **{b: gr.Button(interactive=False) for b in vote_btns}}

    def on_vote(vote, p, o, s_name, who, editing):
        if not p:
            return {vote_msg: logic.message_html("Nothing to vote on: send a prompt and wait for both answers.", "warn")}
        if p.get("saved"):
            return {vote_msg: logic.message_html(al.vote_saved_text(p["saved"], False, s_name), "info")}
        if editing and vote in ("a", "b"):
            text = p["answers"][0 if vote == "a" else 1]
            return {pending: vote, edit_group: gr.Group(visible=True), edit_box: text,
                    vote_msg: logic.message_html(f"Edit answer {vote.upper()}, then save.", "info")}
        return saved(p, o, vote, s_name, who)

    vote_outputs = [vote_msg, pair, order, chat_a, chat_b, count, edit_group, edit_box, pending, *vote_btns]
    for vote, btn in votes.items():
        btn.click(lambda *a, v=vote: on_vote(v, *a), inputs=[pair, order, set_name, annotator, edit_mode],
                  outputs=vote_outputs, show_progress="hidden", concurrency_id="vote", concurrency_limit=None)

    def on_save_edit(p, o, vote, s_name, who, text):
        if not p or not vote:
            return {vote_msg: logic.message_html("Choose A or B first.", "warn")}
        if p.get("saved"):
            return {vote_msg: logic.message_html(al.vote_saved_text(p["saved"], False, s_name), "info")}
        return saved(p, o, vote, s_name, who, chosen_text=text)

    save_edit.click(on_save_edit, inputs=[pair, order, pending, set_name, annotator, edit_box], outputs=vote_outputs,
                    show_progress="hidden")
    cancel_edit.click(lambda: {edit_group: gr.Group(visible=False), pending: None, vote_msg: ""},
                      outputs=[edit_group, pending, vote_msg], show_progress="hidden")
    return SimpleNamespace(chat_a=chat_a, chat_b=chat_b, prompt=prompt, votes=votes)


# --------------------------------------------------------------------------- batch
