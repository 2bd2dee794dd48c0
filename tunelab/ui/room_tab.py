"""Room tab: what an instructor sees of the room, for the host's admins only.

Who is training (person, run, method, step), who waits for a training slot and their
place, each person's runs (counted by status) and labels (votes, 👍, 👎), the machine's
load (CPU a core, load average, memory, training processes, the app's own CPU) and the
Inside tab's line. Read from the workspace each time it is drawn: on opening the tab, on
↻ Refresh, and every 3 s while the tab is open.

The tab is built for everyone and shown (on page load) only to a signed-in user named in
TUNELAB_ADMINS; every handler that fills it asks the server who is asking
(room_logic.room_view), so a page or a script that calls it without being an admin gets
a refusal line and empty tables. Without logins it stays hidden (room_logic says why).
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from . import logic, room_logic

TICK_S = 3.0
LABEL = "Room"


def build() -> SimpleNamespace:
    """The tab's content; app.py puts it in gr.Tab(LABEL, visible=False) and wires `on_load`
    (shows the tab to admins) and `on_tab` (the timer runs only while the tab is open)."""
    with gr.Row():
        head = gr.HTML("", elem_id="room-head")
        refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id="room-refresh")
    gr.Markdown("**Training now**")
    training = gr.Dataframe(None, interactive=False, elem_id="room-training")
    gr.Markdown("**Waiting for a training slot**, first in line first")
    waiting = gr.Dataframe(None, interactive=False, elem_id="room-waiting")
    gr.Markdown("**People**: runs by status, labels by annotator")
    people = gr.Dataframe(None, interactive=False, elem_id="room-people", wrap=True)
    machine = gr.HTML("", elem_id="room-machine")
    inside = gr.HTML("", elem_id="room-inside")
    timer = gr.Timer(TICK_S, active=False)
    outputs = [head, training, waiting, people, machine, inside]

    def fill(request: gr.Request):
        view = room_logic.room_view(logic.user_of(request))
        return tuple(view[k] for k in ("head", "training", "waiting", "people", "machine", "inside"))

    def on_open(request: gr.Request):
        """Opening the tab: draw it, and tick while it stays open (admins only)."""
        return (*fill(request), gr.Timer(active=room_logic.may_see(logic.user_of(request))))

    def on_tab(evt: gr.SelectData):
        """Any other tab: stop ticking (each page's timer is its own)."""
        return gr.Timer(active=False) if evt.value != LABEL else gr.skip()

    def on_load(request: gr.Request):
        return gr.Tab(visible=room_logic.may_see(logic.user_of(request)))

    # For a script: Client(url, auth=(user, password)).predict(api_name="/room") (admins only).
    refresh.click(fill, outputs=outputs, api_name="room", show_progress="hidden")
    timer.tick(fill, outputs=outputs, show_progress="hidden", api_visibility="private")
    return SimpleNamespace(fill=fill, outputs=outputs, timer=timer, on_open=on_open, open_outputs=[*outputs, timer],
                           on_tab=on_tab, on_load=on_load)
