"""The Arena's "Models served elsewhere" panel: add or remove an OpenAI-compatible endpoint
(vLLM, llama-server, Ollama, `transformers serve`, a hosted model), which then appears in both
model pickers and answers in its pane like any other model (endpoints_logic.py)."""

from __future__ import annotations

import gradio as gr

from ..arena.chat import BASE
from ..arena.endpoints import EndpointError
from . import arena_logic as al
from . import endpoints_logic as el
from . import logic


def build(left, right) -> None:
    with gr.Accordion("Models served elsewhere (OpenAI-compatible endpoints)", open=False, elem_id="arena-endpoints"):
        gr.Markdown("A model served by vLLM, llama-server, Ollama, `transformers serve` or a hosted API can answer "
                    "in a pane. Only the pane's conversation and sampling settings are sent to it. The key is read "
                    "from the environment variable you name, or typed here and kept in memory only: never saved, "
                    "never logged. The Runs tab shows how to serve a run on each engine.")
        with gr.Row():
            name = gr.Textbox("", label="Name", placeholder="e.g. vllm-pirate", elem_id="arena-ep-name", scale=1)
            url = gr.Textbox("", label="Base URL", placeholder="http://127.0.0.1:8000/v1", elem_id="arena-ep-url",
                             scale=2, info="http:// or https://; a bare host:port gets /v1.")
            model = gr.Textbox("", label="Model name", placeholder="as the server lists it in /v1/models",
                               elem_id="arena-ep-model", scale=2)
        with gr.Row():
            key_env = gr.Textbox("", label="Key from environment variable (optional)", placeholder="e.g. OPENAI_API_KEY",
                                 elem_id="arena-ep-key-env", scale=2)
            key = gr.Textbox("", label="Or type the key (optional, kept in memory only)", type="password",
                             elem_id="arena-ep-key", scale=2)
            add = gr.Button("Add endpoint", variant="primary", size="sm", elem_id="arena-ep-add", scale=1)
        with gr.Row():
            gone = gr.Dropdown(el.names(), value=None, label="Remove an endpoint", elem_id="arena-ep-pick", scale=2)
            remove = gr.Button("Remove", size="sm", elem_id="arena-ep-remove", scale=1)
        msg = gr.HTML("", elem_id="arena-ep-msg")
        table = gr.HTML(el.table_html(), elem_id="arena-ep-table")

    def pickers(l_val, r_val):
        opts = al.arena().choices()
        keys = {k for _, k in opts}
        return (gr.Dropdown(choices=opts, value=l_val if l_val in keys else BASE),
                gr.Dropdown(choices=opts, value=r_val if r_val in keys else BASE))

    def done(text, kind, l_val, r_val, clear_key=False):
        lp, rp = pickers(l_val, r_val)
        return {msg: logic.message_html(text, kind), table: el.table_html(), left: lp, right: rp,
                gone: gr.Dropdown(choices=el.names(), value=None), key: "" if clear_key else gr.Textbox()}

    def on_add(n, u, m, ke, k, l_val, r_val, request: gr.Request):
        try:
            return done(el.add(n, u, m, ke, k, logic.user_of(request)), "ok", l_val, r_val, clear_key=True)
        except EndpointError as e:
            return done(str(e), "error", l_val, r_val)

    def on_remove(n, l_val, r_val, request: gr.Request):
        try:
            return done(el.remove(n, logic.user_of(request)), "ok", l_val, r_val)
        except EndpointError as e:
            return done(str(e), "error", l_val, r_val)

    outputs = [msg, table, left, right, gone, key]
    add.click(on_add, inputs=[name, url, model, key_env, key, left, right], outputs=outputs, show_progress="hidden")
    remove.click(on_remove, inputs=[gone, left, right], outputs=outputs, show_progress="hidden")
