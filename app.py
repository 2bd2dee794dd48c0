"""TuneLab app (first cut): the runs in the workspace, read through the tunelab core.

    bash scripts/run.sh app          # http://127.0.0.1:7860

The Train, Data, Arena and Labs tabs come next; until then, train with the CLI
(`python -m tunelab train CONFIG.yaml`) and watch the runs here. The app binds to
localhost unless TUNELAB_HOST says otherwise.
"""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd

from tunelab import runs

COLUMNS = ["run_id", "status", "method", "model", "step", "max_steps", "loss", "eval_loss",
           "wall_time_s", "tokens_per_s", "peak_memory_mb", "trainable_pct", "error"]


def runs_table() -> pd.DataFrame:
    rows = runs.list_runs()
    return pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)


with gr.Blocks(title="TuneLab") as demo:
    gr.Markdown("# TuneLab\nFine-tune a language model with full fine-tuning, LoRA, QLoRA or DPO. "
                "Start a run with `python -m tunelab train CONFIG.yaml`; the runs in this workspace "
                "are listed below.")
    table = gr.Dataframe(value=runs_table, label="Runs", interactive=False)
    gr.Button("Refresh").click(runs_table, outputs=table)


if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("TUNELAB_HOST", "127.0.0.1"),
                server_port=int(os.environ.get("TUNELAB_PORT", "7860")))
