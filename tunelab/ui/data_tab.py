"""Data tab: upload a dataset, see it validated, previewed and summarised, train on it.

An upload is checked with the core's own reader (`data.summarize`: the error names the
file, line and field), saved under a sanitised name in the workspace's data folder
(`data_logic.save_upload`: never outside it, never overwriting a different file), and is
selectable in the Train tab at once; it becomes that tab's dataset when the tab's method
can train on it, and the summary says whether it did. Any dataset already in the lab can
be looked at the same way.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import data as data_mod
from ..modelio import loading, models
from . import data_logic, logic, notes

# The format names are the ones the summary shows and docs/data.md's table lists.
FORMATS_HELP = """
**Formats** (detected from the columns; `.jsonl`, `.json`, `.csv`, `.parquet`):
`messages` (chat turns) · `prompt_completion` · `alpaca` (`instruction` / `input` / `output`) ·
`sharegpt` (`conversations`) — for full, LoRA and QLoRA.
`preference` (`prompt` / `chosen` / `rejected`) · `sharegpt_preference` (`conversations` /
`chosen` / `rejected`) — for DPO, ORPO and KTO.
`unpaired` (`prompt` / `completion` / `label`: true or false) · `messages_unpaired` (`messages` /
`label`: the last assistant message is the answer judged) — for KTO.
"""



def _histogram(info: dict, max_length):
    """Token lengths through the default model's tokenizer, or None when it can't load."""
    try:
        tok = loading.cached_tokenizer(models.resolve_model(logic.default_model()))
        _, examples = data_mod.load_examples(info["path"], info["objective"])
        lengths = data_logic.token_lengths(examples, tok, info["objective"])
    except (models.ModelError, OSError, data_mod.DataError):
        return None
    return data_logic.length_histogram(lengths, int(max_length) if max_length else None)


def show(path: str | None, max_length, saved: bool = False, reused: bool = False, info: dict | None = None):
    """(summary html, preview html, histogram update) for a dataset file."""
    if not path:
        return "", "", gr.Plot(visible=False)
    try:
        info = info or {**data_logic.dataset_info(path), "path": path}
    except (OSError, data_mod.DataError) as e:
        return logic.message_html(str(e), "error"), "", gr.Plot(visible=False)
    fig = _histogram(info, max_length)
    summary = data_logic.summary_html(info, info.get("saved_as", info["path"]) if saved else None, reused)
    return summary, data_logic.preview_html(info["preview"], info["objective"]), gr.Plot(fig, visible=fig is not None)


def build(train) -> SimpleNamespace:
    """Build the tab (inside a gr.Tab); `train` is the Train tab's namespace, whose dataset
    picker lists an upload as soon as it is saved."""
    limit_mb = data_mod.files.MAX_FILE_BYTES / 2**20
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            upload = gr.File(label=f"Upload a dataset (up to {logic.fmt_mb(limit_mb)})",
                             file_types=list(data_mod.EXTENSIONS), elem_id="data-upload", height=190)
            gr.Markdown(FORMATS_HELP, elem_classes="tl-hint")
            browse = gr.Dropdown(data_logic.dataset_choices(), value=None, label="Datasets in this lab",
                                 info="Look at any lab dataset or earlier upload.", elem_id="data-browse")
        with gr.Column(scale=3):
            summary = gr.HTML('<div class="tl-hint">Upload a file or pick a dataset to see its rows, '
                              'format and token lengths.</div>', elem_id="data-summary")
            hist = gr.Plot(visible=False, label="Token lengths", elem_id="data-hist")
            preview = gr.HTML("", elem_id="data-preview")

    def on_upload(file, max_length, method, current):
        if not file:
            return {}
        try:
            info, dest, reused = data_logic.ingest_upload(file)
        except (data_mod.DataError, OSError, ValueError) as e:
            return {summary: logic.message_html(str(e), "error"), preview: "", hist: gr.Plot(visible=False),
                    upload: None}
        s, p, h = show(info["path"], max_length, saved=True, reused=reused, info=info)
        choices = data_logic.dataset_choices()
        # It replaces the Train tab's dataset only where that tab's method can train on it (a
        # DPO file under method lora would only make Start refuse); either way the summary says
        # which, and the Train tab picks it once a method that fits is chosen (train.uploaded).
        fits = notes.upload_fits(info["objective"], method)
        dataset = gr.Dropdown(choices=choices, value=info["path"]) if fits else gr.Dropdown(choices=choices)
        # The drop zone empties again, ready for the next file; the summary says what was saved.
        return {summary: s + notes.upload_note(info["objective"], method, current), preview: p, hist: h,
                browse: gr.Dropdown(choices=choices, value=info["path"]), train.dataset: dataset,
                train.uploaded: info["path"], upload: None}

    upload.upload(on_upload, inputs=[upload, train.max_length, train.method, train.dataset],
                  outputs=[summary, preview, hist, browse, train.dataset, train.uploaded, upload],
                  concurrency_id="tokenize", concurrency_limit=1)
    browse.input(lambda path, n: show(path, n), inputs=[browse, train.max_length], outputs=[summary, preview, hist],
                 concurrency_id="tokenize", concurrency_limit=1)

    def refresh():
        return gr.Dropdown(choices=data_logic.dataset_choices())

    return SimpleNamespace(upload=upload, browse=browse, summary=summary, preview=preview, hist=hist,
                           refresh=refresh)
