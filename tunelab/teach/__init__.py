"""The teaching views of the Inside tab, measured on real runs: the numbers behind the
article's claims. Each function computes what one view shows from the runs (and model
files) in the workspace; nothing here trains, and nothing imports gradio (tunelab/ui/
inside_tab.py builds the widgets). The figures are plotly, the numbers plain dicts and
DataFrames, for the app, the notebooks and the tests alike.

    compare.py   methods side by side       compare_methods(["<full run>", "<lora run>", "<qlora run>"])
    lora.py      the LoRA update            lora_update("<lora run>")   # ΔW = (α/r)·B·A: shapes, singular values
    nf4.py       QLoRA's 4-bit base         nf4_error("smollm2-135m-instruct"); nf4_model_error(...) for lab 3
    dpo.py       DPO runs compared          dpo_summary(["<dpo run>", "<pushed run>"]); dpo_note(table)
    feedback.py  DPO, KTO, ORPO compared    feedback_summary([...]); feedback_checks([...], check)  (lab 6)
    shift.py     what tuning changed        token_shift("<run>", prompt)   # log p_tuned − log p_base a token

Every public name of those six is re-exported here: `from tunelab import teach; teach.token_shift(...)`.
Beside them, imported as modules (`from tunelab.teach import charts, labs`):

    charts.py    plotly figures of a run's events: loss, lr, throughput, DPO margins (the Train and Runs tabs too)
    labs.py      the workshop's lab cards (labs/*.yaml): list_labs, get_lab, their sweeps and next steps
    labcheck.py  each lab's lesson as a check a program runs: base and tuned answers, scored, thresholds
"""

from .compare import COMPARE_COLUMNS, COMPARE_HINT, compare_display, compare_figure, compare_methods
from .dpo import DPO_HINT, DPO_SUMMARY_COLUMNS, dpo_display, dpo_logps_figure, dpo_note, dpo_summary
from .feedback import FEEDBACK_HINT, feedback_checks, feedback_display, feedback_summary
from .lora import lora_figure, lora_html, lora_layers, lora_update
from .nf4 import nf4_error, nf4_figure, nf4_model_error, projection_weights, round_trip
from .shift import (GREY, SHIFT_MAX_NEW_TOKENS, SHIFT_PROMPT, SHIFT_SAMPLING, UNCHANGED_NATS, repeats, token_shift,
                    token_shift_html)

__all__ = ["COMPARE_COLUMNS", "COMPARE_HINT", "compare_display", "compare_figure", "compare_methods",
           "DPO_HINT", "DPO_SUMMARY_COLUMNS", "dpo_display", "dpo_logps_figure", "dpo_note", "dpo_summary",
           "FEEDBACK_HINT", "feedback_checks", "feedback_display", "feedback_summary",
           "lora_figure", "lora_html", "lora_layers", "lora_update",
           "nf4_error", "nf4_figure", "nf4_model_error", "projection_weights", "round_trip",
           "GREY", "SHIFT_MAX_NEW_TOKENS", "SHIFT_PROMPT", "SHIFT_SAMPLING", "UNCHANGED_NATS", "repeats",
           "token_shift", "token_shift_html"]
