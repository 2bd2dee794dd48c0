"""TuneLab app: train with one of six methods (full fine-tuning, LoRA, QLoRA, DPO, KTO, ORPO),
watch it learn, compare runs, chat with base and tuned models side by side, and label
answers (A/B votes for DPO and ORPO, thumbs for KTO) to train on.

    bash scripts/run.sh app          # http://127.0.0.1:7860
    TUNELAB_HOST=0.0.0.0 TUNELAB_PORT=8080 python app.py

Gradio UI only: the six tabs live in `tunelab/ui/` (`train_tab`, `data_tab`, `runs_tab`,
`arena_tab` with `arena_labels`, `labs_tab`, `inside_tab`; `room_tab` for the host) and call
the tunelab core; only tunelab/ui/ and this file import gradio. Training runs as a
`python -m tunelab train` subprocess that the Train tab follows through its events file,
so the page never waits on a step.

Environment: every TUNELAB_* setting is listed in tunelab/service/settings.py and the
settings page of the docs, docs/settings.md (workspace, address and login, default model,
model folders, whether and how many runs may train, upload limit).
"""

from __future__ import annotations

import os
import threading
import time

if __name__ == "__main__":
    # First, refuse to open the app to other machines without a login (before seconds of
    # imports).
    import sys

    from tunelab.service import hosting as _hosting
    try:
        _hosting.required_auth()
    except _hosting.HostingError as _e:
        sys.exit(f"error: {_e}")

import gradio as gr

from tunelab import data as data_mod
from tunelab.common.imports import STACK, import_ahead
from tunelab.service import hosting, settings
from tunelab.service.jobs import Jobs
from tunelab.common import workspace
from tunelab.arena.chatdevice import reserve_cores
from tunelab.arena.prefs import LabelError
from tunelab.ui import (arena_common, arena_tab, data_tab, inside_tab, label_api, labs_tab, logic, room_tab,
                        run_api, runs_tab, style, train_tab)

def add_label(set_name: str, prompt: str, answer_a: str, answer_b: str, vote: str, annotator: str,
              key: str = "") -> dict:
    """Store one preference label: vote "a", "b", "tie" or "both_bad"; prompt as text or a
    JSON list of messages; the same key again stores nothing (a retry is safe). Returns
    {"id", "new", "set"} once the label is committed to the workspace's labels.db."""
    try:
        return label_api.api_label(set_name, prompt, answer_a, answer_b, vote, annotator, key)
    except LabelError as e:
        raise gr.Error(str(e)) from None


def add_thumb(set_name: str, prompt: str, answer: str, up: bool, annotator: str, key: str = "") -> dict:
    """Store a thumbs up (up=true: a good answer) or down on one answer; prompt as text or a
    JSON list of messages; the same key again stores nothing (a retry is safe). Returns
    {"id", "new", "set"} once the label is committed to the workspace's labels.db."""
    try:
        return label_api.api_thumb(set_name, prompt, answer, up, annotator, key)
    except LabelError as e:
        raise gr.Error(str(e)) from None


def host_notices() -> str:
    """Warnings for the people using this server: a Space on ephemeral storage or with no
    login, training turned off (tunelab/service/settings.py)."""
    try:
        logins = bool(hosting.configured_auth())
    except hosting.HostingError:
        logins = False
    return "".join(logic.message_html(text, kind) for kind, text in settings.notices(workspace.home(), logins))


# The ML stack (tunelab/common/imports.py: imported one thread at a time). The first page's
# estimate waits for it (chained after it below); the app imports it itself 5 s after it
# listens, so that the first page loads before these imports take a core.
def import_stack() -> None:
    import_ahead(STACK)


def warm_up(delay_s: float = 5.0) -> None:
    """In the background: import the stack, then keep the cores' OpenMP threads for arena
    generation (tunelab.arena.chatdevice.reserve_cores)."""
    def run():
        time.sleep(delay_s)
        import_stack()
        reserve_cores()
    threading.Thread(target=run, daemon=True, name="tunelab-warm-up").start()


def signed_in_annotator(request: gr.Request):
    """With a login, labels carry the signed-in name unless the annotator types another."""
    return logic.user_of(request) or gr.Textbox()


# The job queue and the training processes: one object for the app, handed to the tabs that use it.
jobs = Jobs()
run_api_ = run_api.RunApi(jobs)

with gr.Blocks(title="TuneLab") as demo:
    gr.HTML(style.HEADER)
    _notices = host_notices()
    gr.HTML(_notices, elem_id="host-notices", visible=bool(_notices))
    with gr.Tabs(elem_id="tabs") as tabs:
        with gr.Tab("Train", id="train", elem_id="tab-train"):
            train = train_tab.build(jobs)
        with gr.Tab("Data", id="data", elem_id="tab-data") as data_tab_el:
            data = data_tab.build(train)
        with gr.Tab("Runs", id="runs", elem_id="tab-runs") as runs_tab_el:
            runs_ui = runs_tab.build(train, tabs, jobs)
        with gr.Tab("Arena", id="arena", elem_id="tab-arena") as arena_tab_el:
            arena = arena_tab.build(train, jobs)
        with gr.Tab("Labs", id="labs", elem_id="tab-labs"):
            labs_tab.build(train, tabs, arena)
        with gr.Tab("Inside", id="inside", elem_id="tab-inside") as inside_tab_el:
            inside = inside_tab.build()
        # The host's view of the room: shown on load to admins only (see tunelab/ui/room_tab.py).
        with gr.Tab(room_tab.LABEL, id="room", elem_id="tab-room", visible=False) as room_tab_el:
            room = room_tab.build()

    runs_tab_el.select(runs_ui.refresh, inputs=runs_ui.refresh_inputs, outputs=runs_ui.refresh_outputs,
                       show_progress="hidden").then(runs_ui.redraw, inputs=runs_ui.redraw_inputs,
                                                    outputs=runs_ui.redraw_outputs, show_progress="hidden")
    data_tab_el.select(data.refresh, outputs=data.browse, show_progress="hidden")
    arena_tab_el.select(arena.refresh, inputs=arena.refresh_inputs, outputs=arena.refresh_outputs,
                        show_progress="hidden")
    inside_tab_el.select(inside.refresh, outputs=inside.refresh_outputs, show_progress="hidden")
    room_tab_el.select(room.on_open, outputs=room.open_outputs, show_progress="hidden")
    tabs.select(room.on_tab, outputs=room.timer, show_progress="hidden", queue=False, api_visibility="private")
    demo.load(room.on_load, outputs=room_tab_el, show_progress="hidden", queue=False, api_visibility="private")
    demo.load(train.on_load, outputs=train.load_outputs)
    demo.load(import_stack, show_progress="hidden", api_visibility="private").then(
        train.on_estimate, inputs=set(train.fields.values()), outputs=train.estimate_box,
        concurrency_id="estimate", concurrency_limit=1)
    demo.load(runs_ui.refresh, inputs=runs_ui.refresh_inputs, outputs=runs_ui.refresh_outputs)
    demo.load(arena.refresh, inputs=arena.refresh_inputs, outputs=arena.refresh_outputs)
    demo.load(signed_in_annotator, outputs=arena.annotator, show_progress="hidden")
    # Once a page has loaded, a training process imports torch & co. at low priority and
    # waits for Start (see tunelab/service/standby.py). Started earlier, it slowed the first page.
    demo.load(lambda: jobs.use_standby() and None, show_progress="hidden")
    # For annotation scripts (gradio_client): Client(url).predict(..., api_name="/add_label").
    gr.api(add_label, api_name="add_label", concurrency_limit=8, concurrency_id="labels")
    gr.api(add_thumb, api_name="add_thumb", concurrency_limit=8, concurrency_id="labels")
    # For scripts, as the signed-in user (Client(url, auth=(user, password))): the same checks as the Runs tab.
    gr.api(run_api_.stop_run, api_name="stop_run")
    gr.api(run_api_.resume_run, api_name="resume_run", concurrency_id="launch", concurrency_limit=1)
    gr.api(run_api_.rename_run, api_name="rename_run")
    gr.api(run_api_.delete_run, api_name="delete_run")


def launch_options() -> dict:
    """Localhost unless TUNELAB_HOST (or Gradio's own GRADIO_SERVER_NAME, as on Spaces) says
    otherwise; any wider reach (another address, TUNELAB_SHARE=1) needs a login (see
    tunelab/service/hosting.py: raises HostingError without one)."""
    env = os.environ.get
    host, share = hosting.bind_host(), hosting.share_requested()
    return dict(server_name=host, share=share, auth=hosting.required_auth(host, share),
                auth_message="TuneLab: sign in with the login the host set (TUNELAB_AUTH).",
                server_port=int(env("TUNELAB_PORT") or env("GRADIO_SERVER_PORT") or "7860"),
                max_file_size=data_mod.files.MAX_FILE_BYTES, theme=style.theme(), css=style.CSS,
                head=style.SHORTCUTS + style.FIT_PLOTS, footer_links=["api", "settings"],
                # a streaming chat holds a worker thread for its whole answer: room for every
                # chat the arena serves at once (arena_common.CHAT_USERS) and the rest of the app
                max_threads=arena_common.CHAT_USERS + 40)


if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch(**launch_options(), prevent_thread_lock=True)
    jobs.resume_queue()   # runs queued before a restart start as slots free
    warm_up()   # listening: torch & co. in the background (see import_stack)
    demo.block_thread()
