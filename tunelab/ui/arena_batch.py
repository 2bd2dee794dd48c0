"""Arena, Batch labelling sub-tab: a list of prompts, two candidates each (two models, or one
model at two temperatures), generated in one go and labelled one after another.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..arena.chat import Request, blind_order
from ..arena.prefs import LabelError
from ..data import DataError
from . import arena_common as ac
from . import arena_logic as al
from . import logic


def build(left, right, blind, set_name, annotator, count, system, sampling_inputs):
    gr.HTML('<div class="tl-hint">Two candidates for every prompt, generated together; then label them one by one. '
            'The models are the ones picked above; "Blind" shuffles the sides of each pair.</div>')
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            prompts = gr.Textbox("", lines=5, label="Prompts, one a line", elem_id="batch-prompts",
                                 placeholder="How do I boil an egg?\nWrite a haiku about rain.")
        with gr.Column(scale=2):
            upload = gr.File(label="…or a file (.txt one a line; .jsonl/.json/.csv/.parquet with 'prompt')",
                             file_types=[".txt", ".jsonl", ".json", ".csv", ".parquet"], elem_id="batch-file")
            mode = gr.Radio(["two models", "one model, two temperatures"], value="two models", label="Candidates",
                            info="Two temperatures: the left model at the temperature above and at this one:",
                            elem_id="batch-mode")
            temp2 = gr.Slider(0.0, 2.0, value=1.2, step=0.05, label="Second temperature", elem_id="batch-temp2")
    generate = gr.Button("Generate pairs", variant="primary", elem_id="batch-generate")
    progress = gr.HTML("", elem_id="batch-progress")
    card = gr.HTML(al.batch_card([], 0, 0)[0], elem_id="batch-card")
    with gr.Row(equal_height=True):
        ans_a = gr.Textbox("", label="Answer A (you may edit the better one before voting)", lines=6,
                           elem_id="batch-a", interactive=True)
        ans_b = gr.Textbox("", label="Answer B", lines=6, elem_id="batch-b", interactive=True)
    votes = ac.vote_row("batch")
    with gr.Row():
        skip = gr.Button("Skip", size="sm", elem_id="batch-skip", interactive=False)
        msg = gr.HTML("", elem_id="batch-msg")
    items = gr.State([])
    idx = gr.State(0)
    done = gr.State(0)
    vote_btns = list(votes.values())

    def show(its, i, n, message=None):
        head, a, b = al.batch_card(its, i, n)
        active = i < len(its)
        allowed = al.vote_allowed(its[i] if active else None)
        out = {card: head, ans_a: a, ans_b: b, idx: i, done: n, skip: gr.Button(interactive=active),
               **{btn: gr.Button(interactive=allowed[v]) for v, btn in votes.items()}}
        if message is not None:
            out[msg] = message
        return out

    def on_generate(text, file, how, l_key, r_key, is_blind, sys_prompt, t2, t, p, m, s, request: gr.Request):
        try:
            plist = al.parse_prompts(text, file)
            base_s = ac.sampling(t, p, m, s).check()
            second = ac.sampling(t2, p, m, s).check()
        except (DataError, ValueError) as e:
            yield {progress: logic.message_html(str(e), "error")}
            return
        plan = []  # per prompt: the keys and samplings of A and B
        for _ in plist:
            keys, samp = ([l_key, l_key], [base_s, second]) if how.startswith("one") else ([l_key, r_key], [base_s, base_s])
            swapped = bool(is_blind) and blind_order(al.RNG)
            if swapped:
                keys, samp = keys[::-1], samp[::-1]
            plan.append((keys, samp, swapped))
        contexts = [([{"role": "system", "content": sys_prompt.strip()}] if sys_prompt and sys_prompt.strip() else [])
                    + msgs for msgs in plist]
        reqs = [Request(k, ctx, sm) for ctx, (keys, samp, _) in zip(contexts, plan) for k, sm in zip(keys, samp)]
        yield {progress: logic.message_html(f"Generating {len(plist)} pairs ({len(reqs)} answers in one batch)…", "info"),
               **show([], 0, 0, "")}
        replies, shown = None, 0.0
        with ac.cancel_for(request) as cancel:
            for replies in al.arena().stream(reqs, cancel=cancel):
                if time.monotonic() - shown < ac.UI_INTERVAL_S:
                    continue
                shown = time.monotonic()
                finished, tokens = sum(r.done for r in replies), sum(r.tokens for r in replies)
                waiting = ac.waiting_note(replies)
                yield {progress: logic.message_html(f"Generating: {finished}/{len(reqs)} answers done, "
                                                    f"{tokens} tokens." + (f" {waiting}" if waiting else ""), "info")}
        out, failed = [], 0
        for i, (keys, samp, swapped) in enumerate(plan):
            ra, rb = replies[2 * i], replies[2 * i + 1]
            if ra.error or rb.error or not ra.text.strip() or not rb.text.strip():
                failed += 1
                continue
            out.append(al.make_pair([contexts[i], contexts[i]], [ra.text, rb.text], keys, samp, swapped,
                                    provenance=[al.provenance(r) for r in (ra, rb)]))
        errors = {r.error for r in replies if r.error}
        text = f"{len(out)} pairs ready." + (f" {failed} left out: {'; '.join(sorted(errors)) or 'an empty answer'}."
                                              if failed else "")
        yield {items: out, progress: logic.message_html(text, "warn" if failed else "ok"), **show(out, 0, 0, "")}

    generate.click(on_generate, inputs=[prompts, upload, mode, left, right, blind, system, temp2, *sampling_inputs],
                   outputs=[items, progress, card, ans_a, ans_b, idx, done, skip, msg, *vote_btns],
                   concurrency_id="chat", concurrency_limit=ac.CHAT_USERS, show_progress="hidden")

    def on_vote(vote, its, i, n, a_text, b_text, s_name, who):
        if not its or i >= len(its):
            return {msg: logic.message_html("No pair to label: generate a batch first.", "warn")}
        p = its[i]
        edited = a_text if vote == "a" else b_text if vote == "b" else None
        try:
            row_id, new = al.save_vote(p, vote, s_name, who, chosen_text=edited, origin="batch")
        except (LabelError, ValueError) as e:
            return {msg: logic.message_html(str(e), "error")}
        n += 1 if new else 0
        text = f"Saved vote #{row_id}. {al.reveal_text(p)}" if new else al.vote_saved_text(row_id, False, s_name)
        return show(its, i + 1, n, logic.message_html(text, "ok")) | {count: al.count_html(s_name)}

    for vote, btn in votes.items():
        btn.click(lambda *a, v=vote: on_vote(v, *a), inputs=[items, idx, done, ans_a, ans_b, set_name, annotator],
                  outputs=[card, ans_a, ans_b, idx, done, skip, msg, count, *vote_btns], show_progress="hidden")
    skip.click(lambda its, i, n: show(its, i + 1, n, ""), inputs=[items, idx, done],
               outputs=[card, ans_a, ans_b, idx, done, skip, msg, *vote_btns], show_progress="hidden")
    return SimpleNamespace(prompts=prompts, generate=generate, votes=votes)
