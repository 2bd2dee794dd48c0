"""Runs tab: every run in the workspace, compared, downloaded, resumed or deleted.

The table is `runs.list_runs()` (status.json + summary.json of each run folder), so it
survives app restarts and shows a run whose process died as `interrupted`. Several runs
can be compared (overlaid loss curves, configs side by side with differing fields
highlighted); one run at a time can be exported as a zip (its adapter, the merged model, or a GGUF
file with an Ollama Modelfile), resumed, opened in the Train
tab's charts, or deleted after a confirmation.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..teach import charts
from ..service import jobs
from ..training import runs
from ..common import workspace
from ..training.events import read_events
from ..modelio import gguf_out
from ..training.ggufexport import EXPORTABLE
from ..training.runfolder import RunError
from . import exports, logic, runs_logic

GGUF_CHOICES = ("q8_0",) + tuple(t for t in gguf_out.TYPES if t != "q8_0")   # the default first


def _rows() -> dict[str, dict]:
    return {r["run_id"]: r for r in runs.list_runs()}


def _commands(row: dict) -> str:
    run_dir = row["path"]
    lines = ["# train again with this run's config", jobs.cli_command(run_dir)]
    if row.get("resumable"):
        lines += ["# continue this run from its last checkpoint", f"python -m tunelab resume {row['run_id']}"]
    lines += ["# a standalone model (adapter merged into the base)",
              f"python -m tunelab export {row['run_id']} --merge --out merged-{row['run_id']}/",
              "# one GGUF file for llama.cpp / Ollama / LM Studio, with an Ollama Modelfile",
              f"python -m tunelab export {row['run_id']} --gguf q8_0 --out gguf-{row['run_id']}/"]
    return "\n".join(lines)


def build(train, tabs) -> SimpleNamespace:
    """Build the tab (inside a gr.Tab). `train` is the Train tab's namespace (Resume and
    Open follow a run there); `tabs` is the gr.Tabs to switch to it."""
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
            with gr.Row():
                open_btn = gr.Button("Open charts in Train", size="sm", interactive=False, elem_id="runs-open")
                resume_btn = gr.Button("Resume", size="sm", interactive=False, elem_id="runs-resume")
            with gr.Row():
                adapter_btn = gr.Button("Download adapter / model (.zip)", size="sm", interactive=False,
                                        elem_id="runs-dl-adapter")
                merged_btn = gr.Button("Download merged model (.zip)", size="sm", interactive=False,
                                       elem_id="runs-dl-merged")
            with gr.Row(equal_height=False):
                gguf_type = gr.Dropdown(list(GGUF_CHOICES), value="q8_0", label="GGUF type", scale=1, min_width=110,
                                        info="f16: near exact; q8_0: half the size; q4_1: smallest, the bundled model's own grid",
                                        elem_id="runs-gguf-type")
                gguf_btn = gr.Button("Download GGUF + Ollama Modelfile (.zip)", size="sm", interactive=False,
                                     scale=2, elem_id="runs-dl-gguf")
            download = gr.File(label="Download", visible=False, interactive=False, elem_id="runs-download")
            delete_btn = gr.Button("Delete run…", variant="stop", size="sm", interactive=False, elem_id="runs-delete")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.HTML("")
                with gr.Row():
                    yes_btn = gr.Button("Delete permanently", variant="stop", size="sm", elem_id="runs-delete-yes")
                    no_btn = gr.Button("Cancel", size="sm", elem_id="runs-delete-no")
            message = gr.HTML("", elem_id="runs-message")

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
    refresh_btn.click(refresh, inputs=[compare, pick], outputs=refresh_outputs, show_progress="hidden")

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
    def on_pick(run_id):
        row = _rows().get(run_id) if run_id else None
        has_model = bool(row) and (logic.run_dir(run_id) / "model").is_dir()
        live = bool(row) and row["status"] in logic.LIVE
        return {details: runs_logic.run_details_html(row), cli: _commands(row) if row else "",
                open_btn: gr.Button(interactive=bool(row)),
                resume_btn: gr.Button(interactive=bool(row and row.get("resumable") and not live)),
                adapter_btn: gr.Button(interactive=has_model), merged_btn: gr.Button(interactive=has_model),
                gguf_btn: gr.Button(interactive=has_model and row["status"] in EXPORTABLE),
                delete_btn: gr.Button(interactive=bool(row) and not live), confirm_box: gr.Group(visible=False),
                # A new pick clears the last message; losing the pick (the run was just
                # deleted) keeps "Deleted …" on screen.
                download: gr.File(value=None, visible=False), message: "" if run_id else gr.update()}

    pick_outputs = [details, cli, open_btn, resume_btn, adapter_btn, merged_btn, gguf_btn, delete_btn, confirm_box,
                    download, message]
    pick.change(on_pick, inputs=pick, outputs=pick_outputs, show_progress="hidden")

    def on_export(run_id, merge, gguf=None):
        started = time.perf_counter()
        try:
            # Built in the folder Gradio serves from, so it is not copied there again.
            path = exports.export_zip(run_id, merge, download.GRADIO_CACHE, gguf=gguf)
        except (RunError, OSError, ValueError) as e:
            return {message: logic.message_html(str(e), "error")}
        except Exception as e:  # loading the base for a merge can fail in many ways; say which
            return {message: logic.message_html(f"Export failed: {e}", "error")}
        took = time.perf_counter() - started
        return {download: gr.File(value=str(path), visible=True),
                message: logic.message_html(f"Ready: {path.name} ({path.stat().st_size / 2**20:.1f} MiB, "
                                            f"{took:.1f} s)", "ok")}

    adapter_btn.click(lambda r: on_export(r, False), inputs=pick, outputs=[download, message],
                      concurrency_id="export", concurrency_limit=1)
    merged_btn.click(lambda r: on_export(r, True), inputs=pick, outputs=[download, message],
                     concurrency_id="export", concurrency_limit=1)
    gguf_btn.click(lambda r, t: on_export(r, True, t), inputs=[pick, gguf_type], outputs=[download, message],
                   concurrency_id="export", concurrency_limit=1)

    def on_resume(run_id, request: gr.Request):
        try:
            jobs.launch_resume(str(logic.run_dir(run_id)), owner=logic.user_of(request))
        except (RunError, OSError, ValueError) as e:
            return {message: logic.message_html(str(e), "error")}
        text = logic.launched_text(run_id) + " Follow it in the Train tab."
        return {**on_pick(run_id), message: logic.message_html(text, "ok"),
                **train.follow(run_id), train.start_btn: gr.Button(interactive=False),
                train.stop_btn: gr.Button(interactive=True)}

    resume_btn.click(on_resume, inputs=pick,
                     outputs=[*pick_outputs, *train.follow_outputs, train.start_btn, train.stop_btn],
                     concurrency_id="launch", concurrency_limit=1)

    def on_open(run_id):
        live = (_rows().get(run_id) or {}).get("status") in logic.LIVE
        return {tabs: gr.Tabs(selected="train"), **train.follow(run_id),
                train.start_btn: gr.Button(interactive=not live), train.stop_btn: gr.Button(interactive=live)}

    open_btn.click(on_open, inputs=pick, outputs=[tabs, *train.follow_outputs, train.start_btn, train.stop_btn])

    # --- delete, after a confirmation ------------------------------------------------------------
    delete_btn.click(lambda r: {confirm_box: gr.Group(visible=True),
                                confirm_text: logic.message_html(f"Delete {r} and every file in its folder "
                                                                 f"(model, checkpoints, logs)? This cannot be undone.",
                                                                 "warn")},
                     inputs=pick, outputs=[confirm_box, confirm_text])
    no_btn.click(lambda: gr.Group(visible=False), outputs=confirm_box)

    def on_delete(run_id, selected):
        try:
            runs.delete_run(str(logic.run_dir(run_id)))
        except (RunError, OSError) as e:
            return {message: logic.message_html(str(e), "error"), confirm_box: gr.Group(visible=False)}
        out = refresh(selected, run_id)   # both name a run that is gone now: they are cleared
        out.update({message: logic.message_html(f"Deleted {run_id}.", "ok"), confirm_box: gr.Group(visible=False)})
        return out

    yes_btn.click(on_delete, inputs=[pick, compare], outputs=[message, confirm_box, *refresh_outputs])

    return SimpleNamespace(table=table, refresh=refresh, refresh_inputs=[compare, pick],
                           refresh_outputs=refresh_outputs)
