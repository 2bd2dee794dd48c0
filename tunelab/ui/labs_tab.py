"""Labs tab: the workshop's lab cards; one click loads a lab into the Train tab (or its pairs into the arena).

The list shows each lab's idea and expected time; the selected card shows its concept,
instructions and expected outcome. "Load into Train" fills every Train field from the
card's config and pins the instructions beside the Train controls; "Load pairs into the
arena" imports the card's preference pairs into a set of the same name as the lab; a card
with a next step (lab 4's push) gets a second Load button for it, and a card with arms to
compare (lab 6's KTO and ORPO beside its DPO) a picker of arms and a button that loads the
one picked. labs_logic.py holds what these show and fill in.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..arena.prefs import LabelError
from ..data import DataError
from ..teach import labs as labs_mod
from . import arena_logic as al
from . import logic
from .labs_logic import arm_choices, card_html, cli_line, lab_choices, lab_values, next_label


def build(train, tabs, arena) -> SimpleNamespace:
    all_labs = labs_mod.list_labs()
    first = all_labs[0]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            pick = gr.Radio(lab_choices(all_labs), value=first.key, label="Labs", elem_id="labs-pick",
                            info="Each teaches one idea from the article, on the bundled model, in minutes.")
            load_btn = gr.Button("Load into Train", variant="primary", elem_id="labs-load")
            next_btn = gr.Button(next_label(first), elem_id="labs-load-next", visible=bool(first.next))
            arm_pick = gr.Radio(arm_choices(first), value=None, label="Arms", elem_id="labs-arm",
                                info="The same feedback trained another way: load one, train it, compare.",
                                visible=bool(first.compare))
            arm_btn = gr.Button("Load this arm into Train", elem_id="labs-load-arm", visible=bool(first.compare))
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
                next_btn: gr.Button(next_label(lab), visible=bool(lab.next)), msg: "",
                arm_pick: gr.Radio(arm_choices(lab), value=None, visible=bool(lab.compare)),
                arm_btn: gr.Button(visible=bool(lab.compare)), cli: cli_line(lab)}

    pick.change(on_pick, inputs=pick, outputs=[card, instructions, pairs_btn, next_btn, arm_pick, arm_btn, msg, cli],
                show_progress="hidden")
    arm_pick.change(lambda key, arm: cli_line(labs_mod.get_lab(key), arm=arm), inputs=[pick, arm_pick], outputs=cli,
                    show_progress="hidden")

    def on_load(key, step: bool = False, arm: str | None = None):
        lab = labs_mod.get_lab(key)
        values = lab_values(lab, train.fields, step, arm)
        out = {train.fields[p]: v for p, v in values.items()}
        out.update({tabs: gr.Tabs(selected="train"), **train.show_lab(lab.number, lab.title, lab.instructions)})
        return out

    load_outputs = [*train.fields.values(), tabs, *train.lab_outputs]
    load_btn.click(on_load, inputs=pick, outputs=load_outputs)
    next_btn.click(lambda key: on_load(key, True), inputs=pick, outputs=load_outputs)

    def on_arm(key, arm):
        if not arm:
            return {msg: logic.message_html("Pick an arm first.", "warn")}
        return {msg: "", **on_load(key, arm=arm)}

    arm_btn.click(on_arm, inputs=[pick, arm_pick], outputs=[msg, *load_outputs])

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
