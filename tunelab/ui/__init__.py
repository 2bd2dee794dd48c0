"""The app's tabs (Gradio) and the plain logic behind them.

Each tab is a `<tab>_tab.py` that builds widgets, beside a `<tab>_logic.py` of pure
Python (no gradio) that it calls: `train_logic` (widget values -> config, estimate,
event -> progress), `data_logic` (dataset choices, previews, uploads), `runs_logic`
(the runs table, config diffs), `arena_logic` (conversations, pairs, votes), `thumbs_logic`
(single answers and their 👍 / 👎), `label_api` (the `/add_label` and `/add_thumb` APIs). `logic`
holds what several tabs share: formatting, HTML escaping, the model-path allow list.
The logic modules are unit-tested on their own; only the tab modules and `app.py`
import gradio.
"""
