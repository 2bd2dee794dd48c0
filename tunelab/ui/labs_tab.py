"""Labs tab: the workshop's lab cards; one click loads a lab into the Train tab (or its pairs into the arena).

The list shows each lab's idea and expected time; the selected card shows its concept,
instructions and expected outcome. "Load into Train" fills every Train field from the
card's config and pins the instructions beside the Train controls; "Load pairs into the
arena" imports the card's preference pairs into a set of the same name as the lab.
"""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr

from ..teach import labcheck
from ..teach import labs as labs_mod
from ..modelio import models
from ..data import DataError
from ..arena.prefs import LabelError
from . import arena_logic as al
from . import logic


def _choices(all_labs: list[labs_mod.Lab]) -> list[tuple[str, str]]:
    return [(f"{lab.number} · {lab.title} (~{lab.minutes:g} min)", lab.key) for lab in all_labs]


def card_html(lab: labs_mod.Lab) -> str:
    e = lab.expected
    facts = [("Method", lab.config.method), ("Dataset", lab.dataset), ("Steps", lab.config.train.max_steps),
             ("Expected time", f"~{lab.minutes:g} min on 2 CPU cores" + (
                 f", ~{e['minutes_fp32']:g} without native bf16" if e.get("minutes_fp32") else "")),
             ("Expected final loss", f"{e['loss'][0]:g}–{e['loss'][1]:g}"),
             ("Expected peak memory", logic.fmt_mb(e["peak_memory_mb"]))]
    rows = "".join(f'<div class="tl-stat"><div class="tl-stat-v" style="font-size:1rem">{html.escape(str(v))}</div>'
                   f'<div class="tl-stat-l">{html.escape(k)}</div></div>' for k, v in facts)
    measured = ", ".join(f"{m} {labcheck.fmt_score(m, e[m][0])} → {labcheck.fmt_score(m, e[m][1])}"
                         for m in lab.check.thresholds() if m in e)
    machine = labs_mod.measured("machine")
    check = f"<b>Check.</b> {html.escape(labcheck.explain(lab.check))}" + (
        f" Measured, base → tuned: {html.escape(measured)}." if measured else "") + (
        f" Figures measured by labs/measure.py on {html.escape(machine)}." if machine else "")
    return (f'<div class="tl-method"><b>Lab {lab.number}: {html.escape(lab.title)}</b><br>{html.escape(lab.concept)}'
            f'</div><div class="tl-stats" style="margin-top:10px">{rows}</div><p class="tl-hint">{check}</p>')


def _next_label(lab: labs_mod.Lab) -> str:
    return f"Load {lab.next['title']} into Train" if lab.next else "Load the next step into Train"


def cli_line(lab: labs_mod.Lab, step: bool = False) -> str:
    """The same lab (or its next step) from a terminal."""
    line = f"python -m tunelab train {lab.path.relative_to(labs_mod.LABS_DIR.parent)}"
    if step and lab.next:
        line += "".join(f" --set {o}" for o in labs_mod.next_overrides(lab.next))
    return line


def lab_values(lab: labs_mod.Lab, paths, step: bool = False) -> dict:
    """The Train tab's field values for a lab, or with `step` for its next step: its config,
    with a run name saying which lab (and step)."""
    cfg = lab.next_config() if step and lab.next else lab.config
    values = logic.flatten(cfg.to_dict())
    values["name"] = values.get("name") or f"lab{lab.number}-{lab.key}"
    if lab.config.model == models.DEFAULT_MODEL:
        values["model"] = logic.default_model()  # a host may point the default at another folder
    return {p: values[p] for p in paths if p in values}


def build(train, tabs, arena) -> SimpleNamespace:
    all_labs = labs_mod.list_labs()
    first = all_labs[0]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            pick = gr.Radio(_choices(all_labs), value=first.key, label="Labs", elem_id="labs-pick",
                            info="Each teaches one idea from the article, on the bundled model, in minutes.")
            load_btn = gr.Button("Load into Train", variant="primary", elem_id="labs-load")
            next_btn = gr.Button(_next_label(first), elem_id="labs-load-next", visible=bool(first.next))
            pairs_btn = gr.Button("Load pairs into the arena", elem_id="labs-pairs", visible=bool(first.arena))
            msg = gr.HTML("", elem_id="labs-msg")
            cli = gr.Code(cli_line(first),
                          language="shell", label="The same lab from a terminal", lines=1, elem_id="labs-cli",
                          show_line_numbers=False)
        with gr.Column(scale=3):
            card = gr.HTML(card_html(first), elem_id="labs-card")
            instructions = gr.Markdown(first.instructions, elem_id="labs-instructions")

    def on_pick(key):
        lab = labs_mod.get_lab(key)
        return {card: card_html(lab), instructions: lab.instructions, pairs_btn: gr.Button(visible=bool(lab.arena)),
                next_btn: gr.Button(_next_label(lab), visible=bool(lab.next)), msg: "",
                cli: cli_line(lab)}

    pick.change(on_pick, inputs=pick, outputs=[card, instructions, pairs_btn, next_btn, msg, cli],
                show_progress="hidden")

    def on_load(key, step: bool = False):
        lab = labs_mod.get_lab(key)
        values = lab_values(lab, train.fields, step)
        out = {train.fields[p]: v for p, v in values.items()}
        out.update({tabs: gr.Tabs(selected="train"), **train.show_lab(lab.number, lab.title, lab.instructions)})
        return out

    load_outputs = [*train.fields.values(), tabs, *train.lab_outputs]
    load_btn.click(on_load, inputs=pick, outputs=load_outputs)
    next_btn.click(lambda key: on_load(key, True), inputs=pick, outputs=load_outputs)

    def on_pairs(key, who):
        lab = labs_mod.get_lab(key)
        set_name = f"lab{lab.number}-{lab.key}"
        try:
            res = al.store().import_pairs(set_name, lab.arena["pairs"], annotator=(who or "").strip() or "lab")
        except (DataError, LabelError) as e:
            return {msg: logic.message_html(str(e), "error")}
        text = (f"{res['rows']} pairs in set '{set_name}' ({res['added']} new). In the Arena's "
                f"Labels & DPO tab: Train DPO on these labels.")
        return {msg: logic.message_html(text, "ok"), arena.set_name: gr.Dropdown(choices=al.set_choices(),
                                                                                 value=set_name),
                tabs: gr.Tabs(selected="arena")}

    pairs_btn.click(on_pairs, inputs=[pick, arena.annotator], outputs=[msg, arena.set_name, tabs])
    return SimpleNamespace(pick=pick)
