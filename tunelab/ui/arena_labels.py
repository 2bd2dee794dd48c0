"""The Arena's Labels & DPO tab: leaderboard, sets, export/import, and "Train DPO / KTO / ORPO
on these labels".

The leaderboard and tables come from `arena_logic` (the label store); each Train button
freezes the set into a data file (`labelruns.dpo_run_config` for DPO and ORPO, which train on
its pairs; `labelruns.kto_run_config` for KTO, which trains on its thumbs and on each vote's
answers), starts the run with `jobs.launch` as the Train tab does, makes the Train tab
follow it, and when it ends refreshes the Arena's model pickers so the new run can be
chosen at once.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..training import runs
from ..training.config import ConfigError
from ..data import DataError
from ..modelio.models import ModelError
from ..arena.labelruns import DPO_BETA, DPO_STEPS, dpo_run_config, kto_run_config
from ..arena.prefs import LabelError
from ..training.runfolder import RunError
from . import arena_logic as al
from . import logic, notes, train_logic
from .train_tab import EVENTS

# Long run names and prompts wrap inside their cells (style.py: `.tl-table`), so a table
# fits its column instead of running past the right edge.
_TABLE = {"wrap": True, "elem_classes": ["tl-table"]}


def build(set_name, annotator, left, right, train, jobs) -> SimpleNamespace:
    """Build the inner tab (inside a gr.Tab); the pickers and set come from the Arena tab,
    `jobs` (service.jobs.Jobs) from the app."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.HTML('<div class="tl-section">Leaderboard (the set above)</div>')
            board = gr.Dataframe(al.leaderboard_tables(None)[0], interactive=False, **_TABLE, elem_id="arena-board",
                                 label="Bradley-Terry rating on the Elo scale (400 points = 10:1 odds)")
            h2h = gr.Dataframe(al.leaderboard_tables(None)[1], interactive=False, **_TABLE, elem_id="arena-h2h",
                               label="Head to head")
            recent = gr.Dataframe(al.recent_labels(None), interactive=False, **_TABLE, elem_id="arena-recent",
                                  label="Latest votes (#: the vote's number; thumbs are numbered on their own)",
                                  max_height=300)
            gr.HTML('<div class="tl-section">Annotators (the set above)</div>')
            people_df, agree_line, between_df = al.annotator_tables(None)
            people = gr.Dataframe(people_df, interactive=False, **_TABLE, elem_id="arena-annotators",
                                  label="Labels per annotator")
            agree = gr.HTML(logic.message_html(agree_line, "info"), elem_id="arena-agreement")
            between = gr.Dataframe(between_df, interactive=False, **_TABLE, elem_id="arena-between",
                                   label="Agreement between each two annotators, on the pairs both labelled")
        with gr.Column(scale=2):
            gr.HTML('<div class="tl-section">Train on these labels</div>')
            dpo_model = gr.Dropdown(logic.model_choices(), value=logic.default_model(), allow_custom_value=True,
                                    label="Base model", elem_id="arena-dpo-model",
                                    info="The model to tune. DPO and KTO measure it against the same model with "
                                         "adapters off; ORPO needs no such reference.")
            with gr.Row():
                dpo_adapter = gr.Dropdown(["lora", "qlora", "full"], value="lora", label="What trains",
                                          elem_id="arena-dpo-adapter")
                dpo_steps = gr.Number(DPO_STEPS, precision=0, label="Steps", elem_id="arena-dpo-steps")
                dpo_beta = gr.Number(DPO_BETA, label="Beta β", elem_id="arena-dpo-beta",
                                     info="DPO, KTO: how far the tuned model may move from the reference. "
                                          "ORPO: the weight λ of its preference term.")
            with gr.Row():
                dpo_start = gr.Button("Train DPO on these labels", variant="primary", elem_id="arena-dpo-start")
                kto_start = gr.Button("Train KTO on these labels", variant="primary", elem_id="arena-kto-start")
                orpo_start = gr.Button("Train ORPO on these labels", elem_id="arena-orpo-start")
            gr.HTML('<div class="tl-hint">DPO and ORPO learn from the pairs (A or B better). KTO learns from '
                    'single answers: every 👍 and 👎, and each vote\'s answers (the better one good, the other '
                    'bad; both bad: two bad answers, which DPO has to leave out).</div>')
            dpo_msg = gr.HTML("", elem_id="arena-dpo-msg")
            dpo_progress = gr.HTML("", elem_id="arena-dpo-progress")
            gr.HTML('<div class="tl-section">Sets</div>')
            sets = gr.Dataframe(al.sets_table(), interactive=False, **_TABLE, elem_id="arena-sets",
                                label=al.SETS_NOTE)
            with gr.Row():
                export_btn = gr.Button("Export pairs for DPO (JSONL)", size="sm", elem_id="arena-export")
                export_kto_btn = gr.Button("Export answers for KTO (JSONL)", size="sm", elem_id="arena-export-kto")
                refresh_btn = gr.Button("↻ Refresh", size="sm", elem_id="arena-labels-refresh")
            export_file = gr.File(label="Exported labels", visible=False, interactive=False, elem_id="arena-export-file")
            import_file = gr.File(label="Import into the set: pairs (prompt / chosen / rejected) or labelled answers "
                                        "(prompt / completion / label)",
                                  file_types=[".jsonl", ".json", ".csv", ".parquet"], elem_id="arena-import")
            io_msg = gr.HTML("", elem_id="arena-io-msg")
    dpo_run = gr.State(None)
    dpo_more = gr.State("")   # the start message after "Queued …" / "Started …": the tick redraws the head
    timer = gr.Timer(1.0, active=False)

    def refresh(s_name):
        labels = al.set_labels(s_name)   # read once for the three views
        b, h = al.leaderboard_tables(s_name, labels)
        who, line, pairs = al.annotator_tables(s_name, labels)
        return {board: b, h2h: h, recent: al.recent_labels(s_name, labels=labels), sets: al.sets_table(),
                people: who, agree: logic.message_html(line, "info"), between: pairs}

    refresh_outputs = [board, h2h, recent, sets, people, agree, between]
    refresh_btn.click(refresh, inputs=set_name, outputs=refresh_outputs, show_progress="hidden")
    set_name.change(refresh, inputs=set_name, outputs=refresh_outputs, show_progress="hidden")

    def on_export(s_name, unpaired=False):
        try:
            path, counts = al.export_set(s_name, unpaired)
        except LabelError as e:
            return {io_msg: logic.message_html(str(e), "error"), export_file: gr.File(visible=False)}
        return {io_msg: logic.message_html(al.export_text(counts), "ok"),
                export_file: gr.File(value=str(path), visible=True)}

    export_btn.click(on_export, inputs=set_name, outputs=[io_msg, export_file])
    export_kto_btn.click(lambda s: on_export(s, unpaired=True), inputs=set_name, outputs=[io_msg, export_file])

    def on_import(path, s_name, who):
        if not path:
            return {io_msg: ""}
        try:
            res = al.store().import_file(s_name, path, annotator=(who or "").strip() or "import")
        except (DataError, LabelError, ValueError) as e:
            return {io_msg: logic.message_html(str(e), "error")}
        what = "pairs" if res["kind"] == "pairs" else "labelled answers (as 👍 / 👎)"
        text = (f"Read {res['rows']} {what} ({res['format']}); {res['added']} new in '{s_name}'."
                f"{al.identical_text(res)}")
        return {io_msg: logic.message_html(text, "ok"), **refresh(s_name)}

    import_file.upload(on_import, inputs=[import_file, set_name, annotator], outputs=[io_msg, *refresh_outputs])

    starts = [dpo_start, kto_start, orpo_start]

    def on_train(method, s_name, model, adapter, steps, beta, request: gr.Request):
        try:
            model = logic.check_model(model)
            jobs.check_allowed()   # before the set is frozen into a data file
            kw = dict(model=model, adapter=adapter, max_steps=int(steps or 0), beta=float(beta or 0))
            if method == "kto":
                cfg, counts = kto_run_config(al.store(), s_name, **kw)
            else:
                cfg, counts = dpo_run_config(al.store(), s_name, method=method, **kw)
            run_id = jobs.launch(cfg, owner=logic.user_of(request))
        except (ConfigError, DataError, LabelError, ModelError, RunError, ValueError, OSError) as e:
            return {dpo_msg: logic.message_html(str(e), "error")}
        what = (f"{counts['written']} answers ({counts['desirable']} good, {counts['undesirable']} bad)"
                if method == "kto" else f"{counts['written']} pairs")
        more = (f"{method.upper()} trains on {what} from '{s_name}'; its charts are in the Train tab, and when "
                f"it finishes it appears in the model pickers.{al.identical_text(counts)}")
        fitted = jobs.memory_note(run_id)   # its batch split into micro-batches to fit the memory free
        more = f"{more} {fitted}" if fitted else more
        # One look at the queue for the message and the panel: they name the same place in line.
        place = jobs.queue_position(run_id)
        status = {"status": "queued", "queue": place} if place else {"status": "starting"}
        ps = train_logic.progress_state([], {**status, "max_steps": cfg.train.max_steps})
        return {dpo_msg: notes.launch_note(run_id, place, more), dpo_more: more, dpo_run: run_id,
                timer: gr.Timer(active=True), dpo_progress: train_logic.progress_html(ps, run_id),
                **{b: gr.Button(interactive=False) for b in starts}, **train.follow(run_id)}

    def trainer(method):   # Gradio hands a Request to a handler that names one in its signature
        def start(s_name, model, adapter, steps, beta, request: gr.Request):
            return on_train(method, s_name, model, adapter, steps, beta, request)
        return start

    for method, button in zip(("dpo", "kto", "orpo"), starts):
        button.click(trainer(method),
                     inputs=[set_name, dpo_model, dpo_adapter, dpo_steps, dpo_beta],
                     outputs=[dpo_msg, dpo_more, dpo_run, timer, dpo_progress, *starts, *train.follow_outputs],
                     concurrency_id="launch", concurrency_limit=1)

    def on_tick(run_id, l_val, r_val, note, more):
        if not run_id:
            return {timer: gr.Timer(active=False)}
        jobs.reap()
        try:
            run_dir = logic.run_dir(run_id)
        except RunError:
            return {timer: gr.Timer(active=False), dpo_run: None, **{b: gr.Button(interactive=True) for b in starts}}
        status = runs.run_status(run_dir)
        place = jobs.queue_position(run_id) if status.get("status") == "queued" else None
        status["queue"] = place   # the panel and the message from this one read
        events = EVENTS.events(run_dir)
        ps = train_logic.progress_state(events, status)
        out = {dpo_progress: train_logic.progress_html(ps, run_id)}
        redrawn = notes.requeue(note, run_id, status.get("status"), place, more)
        if redrawn is not None:
            out[dpo_msg] = redrawn
        if ps["done"]:
            opts = al.arena().choices()
            out.update({timer: gr.Timer(active=False), **{b: gr.Button(interactive=True) for b in starts},
                        left: gr.Dropdown(choices=opts, value=l_val), right: gr.Dropdown(choices=opts, value=r_val)})
            if ps["state"] == "finished":   # and whether it learned the labels: the margin at its last step
                out[dpo_msg] = logic.message_html(*al.dpo_result(run_id, events, status.get("method") or "dpo"))
        return out

    timer.tick(on_tick, inputs=[dpo_run, left, right, dpo_msg, dpo_more],
               outputs=[timer, dpo_run, *starts, dpo_progress, dpo_msg, left, right], show_progress="hidden")
    return SimpleNamespace(refresh=refresh, refresh_outputs=refresh_outputs)
