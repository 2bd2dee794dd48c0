"""The app's tabs (Gradio) and the plain logic behind them.

`logic` is pure Python (no gradio): formatting, tables, config diffs, event -> progress,
dataset previews, the model-path allow list. It is unit-tested on its own. The tab
modules (`train_tab`, `data_tab`, `runs_tab`) build widgets and wire them to `logic`
and the tunelab core; only they and `app.py` import gradio.
"""
