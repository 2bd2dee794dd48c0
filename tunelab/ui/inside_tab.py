"""Inside tab: the views that teach each method, computed from the runs in the workspace.

- Compare methods: trainable parameters, stored size, peak memory, time and final loss.
- LoRA: W' = W + (α/r)·B·A for one layer — shapes, counts, singular values of the update.
- QLoRA: the NF4 quantisation error of a weight matrix; the base's memory in fp32, bf16, 4-bit.
- DPO: two runs side by side (lab 4: sane defaults, then one that pushes it with a lower β or a
  higher learning rate): a table of β, learning rate, steps, final loss, margin and accuracy and
  how far the chosen/rejected log-probabilities moved, a sentence saying what those numbers
  show, and under it one column a run: rewards, margin and accuracy, and the chosen/rejected
  log-probabilities over training.
- DPO · KTO · ORPO: up to three feedback runs side by side (lab 6: the same feedback three
  ways): what each learns from, seconds a step, peak memory, final loss and margin, its own
  signal, one chart a run, and on request lab 6's check on each.
- What tuning changed: the base's answer beside the tuned one (the same decoding), each tuned
  token shaded by log p_tuned − log p_base.
Lab 6's check and "Answer and shade" run one at a time for the whole server; a second
asker's page says its place in line and what computes ahead, then "Computing…" with the
seconds so far (inside_logic.LINE, in_line).
Each view is a `tunelab.teach` function; this module only builds widgets around them
(inside_logic.py: which runs each view offers, and `dpo_view` and `feedback_view`, the DPO
and feedback tabs' outputs).
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import teach
from . import arena_logic, logic, style
from .inside_logic import (ERRORS, FEEDBACK_RUNS, INSIDE_WAITERS, SHIFT_PICK, dpo_view, feedback_check,
                           feedback_check_label, feedback_view, finished, in_line)

def _no_runs_hint(available: list[str]):
    """With no finished run to pick, where to get one; else nothing (hidden: an empty HTML
    block still leaves a gap)."""
    text = "" if available else logic.message_html(
        "No finished runs yet. Train one in the Train tab (the Labs tab loads labs 1, 2 and 3: full, LoRA, "
        "QLoRA on the same data), then press ↻ Runs.", "info")
    return gr.HTML(text, visible=bool(text))


def build() -> SimpleNamespace:
    refresh = gr.Button("↻ Runs", size="sm", elem_id="inside-refresh")
    with gr.Tabs():
        with gr.Tab("Compare methods"):
            cmp_runs = gr.Dropdown([], multiselect=True, label="Runs (e.g. labs 1, 2 and 3)", elem_id="inside-cmp-runs",
                                   info="Pick two or more finished runs to compare; ↻ Runs lists new ones.")
            cmp_hint = gr.HTML("", visible=False, elem_id="inside-cmp-hint")
            cmp_table = gr.Dataframe(teach.compare_display(teach.compare_methods([])), interactive=False,
                                     elem_id="inside-cmp-table")
            cmp_plot = gr.Plot(teach.compare_figure(teach.compare_methods([])), show_label=False,
                               elem_id="inside-cmp-plot")
        with gr.Tab("Inside LoRA"):
            with gr.Row():
                lora_run = gr.Dropdown([], label="Adapter run", elem_id="inside-lora-run")
                lora_layer = gr.Dropdown([], label="Layer", elem_id="inside-lora-layer")
            lora_box = gr.HTML("", elem_id="inside-lora-info")
            lora_plot = gr.Plot(None, show_label=False, elem_id="inside-lora-plot")
        with gr.Tab("Inside QLoRA"):
            with gr.Row():
                q_model = gr.Dropdown(logic.model_choices(), value=logic.default_model(), label="Model",
                                      elem_id="inside-q-model")
                q_go = gr.Button("Quantise a layer to NF4", elem_id="inside-q-go")
            q_box = gr.HTML("", elem_id="inside-q-info")
            q_plot = gr.Plot(None, show_label=False, elem_id="inside-q-plot")
        with gr.Tab("DPO"):
            with gr.Row():
                dpo_run = gr.Dropdown([], label="DPO run", elem_id="inside-dpo-run",
                                      info="Lab 4's first run: β 0.1, a moderate learning rate.")
                dpo_run2 = gr.Dropdown([], label="Compare with", elem_id="inside-dpo-run2",
                                       info="The run that pushes it: a lower β or a higher learning rate.")
            dpo_table = gr.Dataframe(teach.dpo_display(teach.dpo_summary([])), interactive=False,
                                     elem_id="inside-dpo-table")
            dpo_note = gr.HTML(logic.message_html(teach.DPO_HINT, "info"), elem_id="inside-dpo-note")
            with gr.Row():
                with gr.Column():
                    dpo_rewards = gr.Plot(None, show_label=False, elem_id="inside-dpo-rewards")
                    dpo_logps = gr.Plot(None, show_label=False, elem_id="inside-dpo-logps")
                with gr.Column(visible=False) as dpo_col2:
                    dpo_rewards2 = gr.Plot(None, show_label=False, elem_id="inside-dpo-rewards2")
                    dpo_logps2 = gr.Plot(None, show_label=False, elem_id="inside-dpo-logps2")
        with gr.Tab("DPO · KTO · ORPO"):
            with gr.Row():
                fb_runs = [gr.Dropdown([], label=f"Run {i + 1}", elem_id=f"inside-fb-run{i + 1}",
                                       info=info) for i, info in enumerate(
                    ("Lab 6's DPO run", "Its KTO arm", "Its ORPO arm"))]
            fb_table = gr.Dataframe(teach.feedback_display(teach.feedback_summary([])), interactive=False,
                                    elem_id="inside-fb-table", wrap=True)
            fb_note = gr.HTML(logic.message_html(teach.FEEDBACK_HINT, "info"), elem_id="inside-fb-note")
            with gr.Row():
                fb_plots = [gr.Plot(None, show_label=False, elem_id=f"inside-fb-plot{i + 1}")
                            for i in range(FEEDBACK_RUNS)]
            fb_check_btn = gr.Button(feedback_check_label(),
                                     elem_id="inside-fb-check")
            fb_check_table = gr.Dataframe(None, interactive=False, elem_id="inside-fb-check-table", wrap=True)
            fb_check_note = gr.HTML("", elem_id="inside-fb-check-note")
        with gr.Tab("What tuning changed"):
            with gr.Row():
                shift_run = gr.Dropdown([], label="Tuned run", elem_id="inside-shift-run", scale=2)
                shift_prompt = gr.Textbox(teach.SHIFT_PROMPT, label="Prompt", elem_id="inside-shift-prompt",
                                          scale=3)
                shift_go = gr.Button("Answer and shade", elem_id="inside-shift-go", scale=1)
            shift_box = gr.HTML(logic.message_html(SHIFT_PICK, "info"), elem_id="inside-shift-out")

    def on_refresh():
        all_runs, adapters, dpo, fb = finished(), finished("adapter"), finished("dpo"), finished("feedback")
        return (gr.Dropdown(choices=all_runs), gr.Dropdown(choices=adapters), gr.Dropdown(choices=dpo),
                gr.Dropdown(choices=dpo), gr.Dropdown(choices=all_runs), _no_runs_hint(all_runs),
                *[gr.Dropdown(choices=fb) for _ in fb_runs])

    refresh_outputs = [cmp_runs, lora_run, dpo_run, dpo_run2, shift_run, cmp_hint, *fb_runs]
    refresh.click(on_refresh, outputs=refresh_outputs, show_progress="hidden")

    def on_compare(ids):
        table = teach.compare_methods(ids or [])   # none picked: the figure says what to pick
        return teach.compare_display(table), teach.compare_figure(table)

    cmp_runs.change(on_compare, inputs=cmp_runs, outputs=[cmp_table, cmp_plot])

    def on_lora(run_id, layer, new_run: bool):
        if not run_id:
            return {lora_box: ""}
        try:
            info = teach.lora_update(run_id, None if new_run else layer)
        except ERRORS as e:
            return {lora_box: logic.message_html(str(e), "error")}
        return {lora_box: teach.lora_html(info), lora_plot: teach.lora_figure(info),
                lora_layer: gr.Dropdown(choices=info["layers"], value=info["layer"])}

    lora_run.change(lambda r, layer: on_lora(r, layer, True), inputs=[lora_run, lora_layer],
                    outputs=[lora_box, lora_plot, lora_layer])
    lora_layer.input(lambda r, layer: on_lora(r, layer, False), inputs=[lora_run, lora_layer],
                     outputs=[lora_box, lora_plot, lora_layer])

    def on_nf4(model):
        try:
            info = teach.nf4_error(logic.check_model(model))
        except Exception as e:  # noqa: BLE001 — a config error, a missing model: say it
            return logic.message_html(str(e), "error"), None
        mem = info["memory_mb"]
        text = (f"{info['layer']} {info['shape'][0]}×{info['shape'][1]} in NF4 (blocks of {info['blocksize']}): "
                f"mean |error| {info['mean_abs_error']:.2e} against mean |w| {info['mean_abs_weight']:.2e} "
                f"(relative error {info['relative_error']:.1%}). The whole base: {mem['fp32']:.0f} MB in fp32, "
                f"{mem['bf16']:.0f} MB in bf16, {mem['nf4']:.0f} MB with its linear layers in NF4 "
                f"({info['quantised_share']:.0%} of the weights).")
        return logic.message_html(text, "info"), teach.nf4_figure(info)

    q_go.click(on_nf4, inputs=q_model, outputs=[q_box, q_plot])

    def on_dpo(run1, run2):
        *shown, two = dpo_view(run1, run2)
        return (*shown, gr.Column(visible=two))

    dpo_outputs = [dpo_table, dpo_note, dpo_rewards, dpo_logps, dpo_rewards2, dpo_logps2, dpo_col2]
    for dropdown in (dpo_run, dpo_run2):
        dropdown.change(on_dpo, inputs=[dpo_run, dpo_run2], outputs=dpo_outputs).then(
            None, js=style.REFIT_PLOTS_JS)  # the first column narrows when the second shows

    for dropdown in fb_runs:
        dropdown.change(lambda *ids: feedback_view(list(ids)), inputs=fb_runs,
                        outputs=[fb_table, fb_note, *fb_plots]).then(None, js=style.REFIT_PLOTS_JS)
    # The check and the shading wait in one line (inside_logic.LINE: one computes at a time,
    # each waiter sees its place); gradio's own limit only caps how many may wait in it.
    line = dict(concurrency_id="inside-line", concurrency_limit=INSIDE_WAITERS)

    def on_check(run1, run2, run3, request: gr.Request):   # one a column (FEEDBACK_RUNS)
        ids = [run1, run2, run3]
        if not any(ids):
            yield feedback_check(ids)   # "Pick a run first.": nothing to wait for
            return
        for kind, out in in_line("lab check", logic.user_of(request), lambda: feedback_check(ids)):
            yield out if kind == "done" else (None, logic.message_html(out, "info"))

    fb_check_btn.click(on_check, inputs=fb_runs, outputs=[fb_check_table, fb_check_note], **line)

    def shade(run_id, prompt):
        try:
            return teach.token_shift_html(teach.token_shift(run_id, prompt, arena=arena_logic.arena()))
        except ERRORS as e:
            return logic.message_html(str(e), "error")

    def on_shift(run_id, prompt, request: gr.Request):
        if not run_id:  # without a tuned run there is no shift to show (it would read +0.00)
            yield logic.message_html(SHIFT_PICK, "warn")
        elif not (prompt or "").strip():
            yield logic.message_html("Type a prompt.", "warn")
        else:
            for kind, out in in_line("shading", logic.user_of(request), lambda: shade(run_id, prompt.strip())):
                yield out if kind == "done" else logic.message_html(out, "info")

    shift_go.click(on_shift, inputs=[shift_run, shift_prompt], outputs=shift_box, **line)
    return SimpleNamespace(refresh=on_refresh, refresh_outputs=refresh_outputs)
