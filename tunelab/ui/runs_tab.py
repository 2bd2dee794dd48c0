"""Runs tab: every run in the workspace, compared, downloaded, resumed or deleted.

The table is `runs.list_runs()` (status.json + summary.json of each run folder), so it
survives app restarts and shows a run whose process died as `interrupted`. Several runs
can be compared (overlaid loss curves, configs side by side with differing fields
highlighted); one run at a time can be exported as a zip (its adapter, the merged model, or a GGUF
file with an Ollama Modelfile, or a GGUF base with the LoRA adapter as GGUF beside it;
a GGUF download says whether it still is the run, measured when it is built), resumed, opened in the Train
tab's charts, renamed (a title; the id stays), or deleted after a confirmation.

Runs belong to the people who started them (service/access.py): with logins on, only a
run's owner or an admin may resume, rename, delete (or, in the Train tab, stop) it; the
buttons others may not press are disabled with a line saying whose run it is, and the
server asks again on every press (jobs.*, exports.export_zip, with the request's user).
Whatever the selected run shows is read from its folder when it is drawn: on a pick, on
Refresh, and every 2 s while the run is queued, starting or running (a timer), so a run
that ends shows it within a tick.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..teach import charts
from ..service.jobs import cli_command
from ..training import runs
from ..common import workspace
from ..training.events import read_events
from ..export import fidelity, gguf_out
from ..training.runfolder import RunError
from . import exports, logic, runs_logic

GGUF_CHOICES = ("q8_0",) + tuple(t for t in gguf_out.TYPES if t != "q8_0")   # the default first


def _rows() -> dict[str, dict]:
    return {r["run_id"]: r for r in runs.list_runs()}


def _commands(row: dict) -> str:
    run_dir = row["path"]
    lines = ["# train again with this run's config", cli_command(run_dir)]
    if row.get("resumable"):
        lines += ["# continue this run from its last checkpoint", f"python -m tunelab resume {row['run_id']}"]
    lines += ["# a standalone model (adapter merged into the base)",
              f"python -m tunelab export {row['run_id']} --merge --out merged-{row['run_id']}/",
              "# one GGUF file for llama.cpp / Ollama / LM Studio, with an Ollama Modelfile",
              f"python -m tunelab export {row['run_id']} --gguf q8_0 --out gguf-{row['run_id']}/"]
    if runs_logic.is_adapter_run(row):
        lines += ["# the LoRA adapter as GGUF beside a 4-bit base: the run's change at 4-bit size",
                  f"python -m tunelab export {row['run_id']} --gguf q4_1 --gguf-adapter --out gguf-lora-{row['run_id']}/"]
    return "\n".join(lines + runs_logic.serve_commands(row))


def build(train, tabs, jobs) -> SimpleNamespace:
    """Build the tab (inside a gr.Tab). `train` is the Train tab's namespace (Resume and
    Open follow a run there); `tabs` is the gr.Tabs to switch to it; `jobs` is the app's
    job queue and child processes (service.jobs.Jobs)."""
    with gr.Row():
        refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0, min_width=110, elem_id="runs-refresh")
        count = gr.HTML("", elem_id="runs-count")
    table = gr.Dataframe(runs_logic.runs_table([]), interactive=False, elem_id="runs-table", max_height=420, wrap=True,
                         column_widths=runs_logic.RUN_COLUMN_WIDTHS,
                         label="Runs in the workspace (click a row to select it)")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.HTML('<div class="tl-section">Compare runs</div>')
            compare = gr.Dropdown([], value=[], multiselect=True, label="Runs to compare",
                                  info="Loss curves overlaid; configs side by side.", elem_id="runs-compare")
            overlay = gr.Plot(charts.overlay_loss({}), show_label=False, elem_id="runs-overlay")
            every_field = gr.Checkbox(False, label="Show every field, not only the ones that differ")
            diff = gr.HTML(runs_logic.config_diff_html(runs_logic.config_diff({})), elem_id="runs-diff")
        with gr.Column(scale=2):
            gr.HTML('<div class="tl-section">Selected run</div>')
            pick = gr.Dropdown([], value=None, label="Run", elem_id="runs-pick")
            details = gr.HTML(runs_logic.run_details_html(None), elem_id="runs-details")
            cli = gr.Code("", language="shell", label="The same run from a terminal", buttons=["copy"],
                          lines=4, show_line_numbers=False, wrap_lines=True, elem_id="runs-cli")
            access_note = gr.HTML("", elem_id="runs-access")
            with gr.Row():
                open_btn = gr.Button("Open charts in Train", size="sm", interactive=False, elem_id="runs-open")
                resume_btn = gr.Button("Resume", size="sm", interactive=False, elem_id="runs-resume")
            with gr.Row(equal_height=True):
                title_box = gr.Textbox("", label="Title", placeholder="a name people will know (the id stays)",
                                       max_lines=1, max_length=runs.MAX_TITLE, interactive=False, scale=3,
                                       elem_id="runs-title")
                rename_btn = gr.Button("Rename", size="sm", interactive=False, scale=1, min_width=90,
                                       elem_id="runs-rename")
            with gr.Row():
                adapter_btn = gr.Button("Download adapter / model (.zip)", size="sm", interactive=False,
                                        elem_id="runs-dl-adapter")
                merged_btn = gr.Button("Download merged model (.zip)", size="sm", interactive=False,
                                       elem_id="runs-dl-merged")
            figures = fidelity.load_figures()   # measured by benchmarks/bench_export_fidelity.py
            with gr.Row(equal_height=False):
                gguf_type = gr.Dropdown(runs_logic.gguf_choices(GGUF_CHOICES, figures), value="q8_0",
                                        label="GGUF type", scale=1, min_width=110,
                                        info=runs_logic.gguf_hint(figures), elem_id="runs-gguf-type")
                with gr.Column(scale=2, min_width=160):
                    gguf_adapter = gr.Checkbox(False, label="Base + LoRA adapter (adapter runs): the base as this "
                                               "type, the adapter applied at load time", interactive=False,
                                               elem_id="runs-gguf-adapter")
                    gguf_btn = gr.Button("Download GGUF + Ollama Modelfile (.zip)", size="sm", interactive=False,
                                         elem_id="runs-dl-gguf")
            download = gr.File(label="Download", visible=False, interactive=False, elem_id="runs-download")
            delete_btn = gr.Button("Delete run…", variant="stop", size="sm", interactive=False, elem_id="runs-delete")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.HTML("")
                with gr.Row():
                    yes_btn = gr.Button("Delete permanently", variant="stop", size="sm", elem_id="runs-delete-yes")
                    no_btn = gr.Button("Cancel", size="sm", elem_id="runs-delete-no")
            message = gr.HTML("", elem_id="runs-message")
    timer = gr.Timer(2.0, active=False)   # on while the selected run is live: its end shows within a tick

    # --- the table --------------------------------------------------------------------------
    def refresh(selected, current):
        rows = _rows()
        ids = list(rows)
        n = len(ids)
        live = sum(r["status"] in logic.LIVE for r in rows.values())
        text = f"{n} run{'s' if n != 1 else ''}" + (f" · {live} running" if live else "")
        keep = [r for r in (selected or []) if r in rows]
        # Values are only sent when a run they name is gone: a refresh that was queued
        # behind other work (a tab opened, the page loaded) must not undo a pick the
        # user made meanwhile.
        compare_gone = keep != list(selected or [])
        pick_gone = current is not None and current not in rows
        return {table: runs_logic.runs_table(list(rows.values())),
                count: f'<div class="tl-hint">{text} in {logic.esc(workspace.runs_dir())}</div>',
                compare: gr.Dropdown(choices=ids, value=keep) if compare_gone else gr.Dropdown(choices=ids),
                pick: gr.Dropdown(choices=ids, value=None) if pick_gone else gr.Dropdown(choices=ids)}

    refresh_outputs = [table, count, compare, pick]

    def on_row(selected, evt: gr.SelectData):
        run_id = (evt.row_value or [None])[0]
        if not run_id:
            return {}
        keep = list(selected or [])
        return {pick: run_id, compare: keep if run_id in keep else keep + [run_id]}

    table.select(on_row, inputs=compare, outputs=[pick, compare])

    # --- compare ------------------------------------------------------------------------------
    def on_compare(selected, every):
        selected = selected or []
        found, configs = {}, {}
        for run_id in selected:
            try:
                run_dir = logic.run_dir(run_id)
                found[run_id] = read_events(run_dir)
                configs[run_id] = runs.run_config(run_dir).to_dict()
            except (RunError, OSError, ValueError):
                continue
        only = not every and len(configs) > 1
        return charts.overlay_loss(found), runs_logic.config_diff_html(runs_logic.config_diff(configs), only)

    gr.on([compare.change, every_field.change], on_compare, inputs=[compare, every_field], outputs=[overlay, diff],
          show_progress="hidden")

    # --- one run --------------------------------------------------------------------------------
    def selected_row(run_id):
        """The run as its folder (and the queue) says now; None when none is picked or it is gone."""
        row = _rows().get(run_id) if run_id else None
        if row and row["status"] == "queued":
            row["queue"] = jobs.queue_position(run_id)
        return row

    def draw(row, user):
        """The selected run's details and buttons, for `user` (the server checks again on a press)."""
        can = runs_logic.run_actions(row, user)
        line = runs_logic.access_line(row, user)
        return {details: runs_logic.run_details_html(row), cli: _commands(row) if row else "",
                access_note: f'<div class="tl-hint">{logic.esc(line)}</div>' if line else "",
                open_btn: gr.Button(interactive=can["open"]), resume_btn: gr.Button(interactive=can["resume"]),
                adapter_btn: gr.Button(interactive=can["download"]),
                merged_btn: gr.Button(interactive=can["download"]), gguf_btn: gr.Button(interactive=can["gguf"]),
                gguf_adapter: gr.Checkbox(interactive=True) if can["gguf"] and runs_logic.is_adapter_run(row)
                else gr.Checkbox(interactive=False, value=False),
                delete_btn: gr.Button(interactive=can["delete"]), rename_btn: gr.Button(interactive=can["rename"]),
                title_box: gr.Textbox(interactive=can["rename"]),
                timer: gr.Timer(active=bool(row) and row["status"] in logic.LIVE)}

    draw_outputs = [details, cli, access_note, open_btn, resume_btn, adapter_btn, merged_btn, gguf_btn, gguf_adapter,
                    delete_btn, rename_btn, title_box, timer]

    def redraw(run_id, request: gr.Request):
        return draw(selected_row(run_id), logic.user_of(request))

    # Chained after the table's refresh, so it draws the run picked when it runs (not when
    # the refresh was asked for).
    refresh_btn.click(refresh, inputs=[compare, pick], outputs=refresh_outputs, show_progress="hidden") \
        .then(redraw, inputs=pick, outputs=draw_outputs, show_progress="hidden")

    def on_tick(selected, run_id, request: gr.Request):
        row = selected_row(run_id)
        out = draw(row, logic.user_of(request))
        if not row or row["status"] not in logic.LIVE:   # it ended (or went): the table says so too
            out.update(refresh(selected, run_id))
        return out

    timer.tick(on_tick, inputs=[compare, pick], outputs=[*draw_outputs, *refresh_outputs], show_progress="hidden")

    def picked(run_id, user):
        row = selected_row(run_id)
        can_rename = runs_logic.run_actions(row, user)["rename"]
        return {**draw(row, user), title_box: gr.Textbox(value=(row or {}).get("title") or "", interactive=can_rename),
                confirm_box: gr.Group(visible=False), download: gr.File(value=None, visible=False),
                # A new pick clears the last message; losing the pick (the run was just
                # deleted) keeps "Deleted …" on screen.
                message: "" if run_id else gr.update()}

    def on_pick(run_id, request: gr.Request):
        return picked(run_id, logic.user_of(request))

    pick_outputs = [*draw_outputs, confirm_box, download, message]
    pick.change(on_pick, inputs=pick, outputs=pick_outputs, show_progress="hidden")

    def on_export(run_id, merge, gguf, user, gguf_adapter=False):
        """Hides the last download while a new one builds (naming the file), then links it;
        a GGUF one with what its check measured (and, where the file lost the run's change,
        that in words with the type to download instead)."""
        try:
            name = exports.zip_name(run_id, merge, gguf, user=user, gguf_adapter=gguf_adapter)
        except (RunError, OSError, ValueError) as e:
            yield {message: logic.message_html(str(e), "error")}
            return
        then = " then measuring it against the run (a minute or two on 2 cores)" if gguf else ""
        yield {download: gr.File(value=None, visible=False), message: logic.message_html(f"Building {name} …{then}")}
        started = time.perf_counter()
        try:
            # Built in the folder Gradio serves from, so it is not copied there again.
            path = exports.export_zip(run_id, merge, download.GRADIO_CACHE, gguf=gguf, user=user,
                                      gguf_adapter=gguf_adapter)
        except (RunError, OSError, ValueError) as e:
            yield {message: logic.message_html(str(e), "error")}
            return
        except Exception as e:  # loading the base for a merge can fail in many ways; say which
            yield {message: logic.message_html(f"Export failed: {e}", "error")}
            return
        took = time.perf_counter() - started
        ready = f"Ready: {path.name} ({path.stat().st_size / 2**20:.1f} MiB, {took:.1f} s)."
        said, kind = runs_logic.fidelity_message(exports.measured(path) if gguf else None, gguf, gguf_adapter)
        yield {download: gr.File(value=str(path), visible=True),
               message: logic.message_html(f"{ready} {said}" if said else ready, kind if said else "ok")}

    def export_adapter(run_id, request: gr.Request):
        yield from on_export(run_id, False, None, logic.user_of(request))

    def export_merged(run_id, request: gr.Request):
        yield from on_export(run_id, True, None, logic.user_of(request))

    def export_gguf(run_id, gguf, with_adapter, request: gr.Request):
        yield from on_export(run_id, True, gguf, logic.user_of(request), bool(with_adapter))

    adapter_btn.click(export_adapter, inputs=pick, outputs=[download, message],
                      concurrency_id="export", concurrency_limit=1)
    merged_btn.click(export_merged, inputs=pick, outputs=[download, message],
                     concurrency_id="export", concurrency_limit=1)
    gguf_btn.click(export_gguf, inputs=[pick, gguf_type, gguf_adapter], outputs=[download, message],
                   concurrency_id="export", concurrency_limit=1)

    def on_resume(run_id, request: gr.Request):
        user = logic.user_of(request)
        try:
            jobs.launch_resume(str(logic.run_dir(run_id)), by=user)
        except (RunError, OSError, ValueError) as e:
            return {message: logic.message_html(str(e), "error")}
        text = logic.launched_text(run_id, jobs.queue_position(run_id)) + " Follow it in the Train tab."
        return {**picked(run_id, user), message: logic.message_html(text, "ok"),
                **train.follow(run_id), train.start_btn: gr.Button(interactive=False),
                train.stop_btn: gr.Button(interactive=True)}

    resume_btn.click(on_resume, inputs=pick,
                     outputs=[*pick_outputs, *train.follow_outputs, train.start_btn, train.stop_btn],
                     concurrency_id="launch", concurrency_limit=1)

    def on_open(run_id, request: gr.Request):
        row = selected_row(run_id)
        live = bool(row) and row["status"] in logic.LIVE
        may_stop = runs_logic.run_actions(row, logic.user_of(request))["stop"]   # another's run: not theirs to stop
        return {tabs: gr.Tabs(selected="train"), **train.follow(run_id),
                train.start_btn: gr.Button(interactive=not live), train.stop_btn: gr.Button(interactive=may_stop)}

    open_btn.click(on_open, inputs=pick, outputs=[tabs, *train.follow_outputs, train.start_btn, train.stop_btn])

    # --- delete, after a confirmation ------------------------------------------------------------
    delete_btn.click(lambda r: {confirm_box: gr.Group(visible=True),
                                confirm_text: logic.message_html(f"Delete {r} and every file in its folder "
                                                                 f"(model, checkpoints, logs)? This cannot be undone.",
                                                                 "warn")},
                     inputs=pick, outputs=[confirm_box, confirm_text])
    no_btn.click(lambda: gr.Group(visible=False), outputs=confirm_box)

    def on_delete(run_id, selected, request: gr.Request):
        try:
            jobs.delete(str(logic.run_dir(run_id)), by=logic.user_of(request))
        except (RunError, OSError) as e:
            return {message: logic.message_html(str(e), "error"), confirm_box: gr.Group(visible=False)}
        out = refresh(selected, run_id)   # both name a run that is gone now: they are cleared
        out.update({message: logic.message_html(f"Deleted {run_id}.", "ok"), confirm_box: gr.Group(visible=False)})
        return out

    yes_btn.click(on_delete, inputs=[pick, compare], outputs=[message, confirm_box, *refresh_outputs])

    # --- rename: a title; the run id (and folder) never change --------------------------------
    def on_rename(run_id, title, selected, request: gr.Request):
        try:
            stored = jobs.rename(str(logic.run_dir(run_id)), title, by=logic.user_of(request))
        except RunError as e:
            return {message: logic.message_html(str(e), "error")}
        return {**refresh(selected, run_id), **redraw(run_id, request), title_box: stored,
                message: logic.message_html(f"{run_id} is now titled “{stored}”.", "ok")}

    gr.on([rename_btn.click, title_box.submit], on_rename, inputs=[pick, title_box, compare],
          outputs=[message, *refresh_outputs, *draw_outputs], show_progress="hidden")

    return SimpleNamespace(table=table, refresh=refresh, refresh_inputs=[compare, pick],
                           refresh_outputs=refresh_outputs, redraw=redraw, redraw_inputs=[pick],
                           redraw_outputs=draw_outputs)
