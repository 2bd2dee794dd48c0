"""The Arena tab in a real browser (Debian's Chromium, Python playwright).

A fresh app on the tiny test model, with one finished LoRA run in its workspace. The
tests chat with the base and the run side by side, vote blind with the keyboard, edit a
better answer before saving it, label a batch, export the set and find the pairs in the
file, then train DPO on the labels and pick the new run in the arena. Each step counts
on the votes and the run the steps before it made, so that story is one test, its steps
run in order on one page; the Labs tab's test stands alone. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import json
import re

import pytest

from tunelab.common.decoding import FAIR_SAMPLING
from tunelab.teach.labs import get_lab

from .browser_kit import (RUN_ID, TRAIN_MS, app_with_a_run, expect, fetch, labels, open_page,  # noqa: F401
                           pick, send, shot, tab)

pytestmark = pytest.mark.slow   # a minute or more: started first under -n (conftest.py)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with app_with_a_run(tiny_model_dir, tmp_path_factory.mktemp("arena-home")) as server:
        yield server


@pytest.fixture
def page(browser, app):  # noqa: F811
    with open_page(browser, app, height=1100, accept_downloads=True) as pg:
        tab(pg, "Arena")
        pg.locator("#arena-prompt").wait_for()
        yield pg


def test_chat_vote_label_export_and_train_dpo_on_the_labels(page, app):
    chat_with_base_and_run_side_by_side(page, app)
    blind_vote_with_the_keyboard(page, app)
    edit_the_better_answer_before_saving(page, app)
    batch_labelling(page, app)
    export_the_set_and_find_the_pairs(page, app)
    train_dpo_on_the_labels_and_pick_the_new_run(page, app)
    identical_answers_take_only_tie_or_both_bad(page, app)
    the_annotator_name_survives_a_reload(page, app)
    inside_views_on_the_runs(page, app)


def pane_text(page) -> str:
    return page.locator("#arena-chat-a").inner_text() + page.locator("#arena-chat-b").inner_text()


def assistant_text(page, pane: str) -> str:
    bubbles = page.locator(f"#arena-chat-{pane} .message.bot, #arena-chat-{pane} [data-testid=bot]")
    return bubbles.last.inner_text().strip()


def chat_with_base_and_run_side_by_side(page, app):
    page.locator("#arena-annotator textarea, #arena-annotator input").first.fill("ana")
    pick(page, "arena-right", RUN_ID)
    send(page, "Tell me about the sea.")
    expect(page.locator("#arena-chat-a")).to_contain_text("Tell me about the sea.")
    expect(page.locator("#arena-chat-b")).to_contain_text("Tell me about the sea.")
    a, b = assistant_text(page, "a"), assistant_text(page, "b")
    assert a and b and a != b  # the adapter answers differently from the base
    expect(page.locator("#arena-chat-a")).to_contain_text("base")       # not blind: names shown
    expect(page.locator("#arena-chat-b")).to_contain_text(RUN_ID)
    # The random tiny model never ends by itself: both answers stop at Max new tokens, and say so.
    for pane in ("a", "b"):
        expect(page.locator(f"#arena-chat-{pane}")).to_contain_text("[cut at 128 tokens — raise Max new tokens]")
    send(page, "And about ships?", turn=2)  # a second turn: both continue their own conversation
    expect(page.locator("#arena-chat-a")).to_contain_text("And about ships?")
    shot(page, "arena-side-by-side")


def blind_vote_with_the_keyboard(page, app):
    page.locator("#arena-blind input").check()  # a new contest: the conversation starts afresh
    expect(page.locator("#arena-status")).to_be_empty()
    send(page, "Name a colour.")
    expect(page.locator("#arena-chat-a")).to_contain_text("Model A")
    expect(page.locator("#arena-chat-b")).to_contain_text("Model B")
    assert RUN_ID not in page.locator("#arena-chat-a").inner_text() + page.locator("#arena-chat-b").inner_text()
    page.locator("#arena-status").click()  # focus out of the prompt box, as a user clicking the page
    page.keyboard.press("1")
    msg = page.locator("#arena-vote-msg")
    expect(msg).to_contain_text("Saved vote #1")
    expect(msg).to_contain_text(re.compile(r"A was .+, B was .+"))
    expect(msg).to_contain_text("The next turn draws the sides again")
    expect(page.locator("#arena-count")).to_contain_text("1 vote · 1 pair for DPO/ORPO")
    expect(page.locator("#arena-vote-a")).to_be_disabled()
    page.keyboard.press("2")  # a second key press on a saved pair saves nothing
    rows = labels(app)
    assert len(rows) == 1 and rows[0]["vote"] == "a" and rows[0]["annotator"] == "ana"
    src_a, src_b = json.loads(rows[0]["source_a"]), json.loads(rows[0]["source_b"])
    assert {src_a["model"], src_b["model"]} == {"base", f"run:{RUN_ID}"}
    assert src_a["position"] == "left" and src_a["temperature"] == pytest.approx(FAIR_SAMPLING["temperature"])  # the fair default
    assert json.loads(rows[0]["prompt"])[-1] == {"role": "user", "content": "Name a colour."}
    # The label holds the answers as the model wrote them; that they were cut is provenance.
    assert "cut at" not in rows[0]["answer_a"] + rows[0]["answer_b"] and src_a["truncated"] is True
    shot(page, "arena-blind-vote")


def edit_the_better_answer_before_saving(page, app):
    page.locator("#arena-edit-mode input").check()
    send(page, "Say hello.", turn=2)   # Blind is still ticked: turn 2 hides the names until its vote too
    expect(page.locator("#arena-chat-a")).to_contain_text("Model A")
    expect(page.locator("#arena-chat-b")).to_contain_text("Model B")
    assert RUN_ID not in pane_text(page) and "· base" not in pane_text(page)
    page.locator("#arena-vote-b").click()
    box = page.locator("#arena-edit-box textarea")
    expect(box).to_be_visible()
    box.fill("Hello! Nice to meet you.")
    page.locator("#arena-save-edit").click()
    expect(page.locator("#arena-vote-msg")).to_contain_text("Saved vote #2")
    row = labels(app)[-1]
    assert row["vote"] == "b" and row["chosen_text"] == "Hello! Nice to meet you."
    expect(page.locator("#arena-chat-b")).to_contain_text("(this turn)")   # revealed by the vote
    assert RUN_ID in pane_text(page)
    page.locator("#arena-edit-mode input").uncheck()


def batch_labelling(page, app):
    page.get_by_role("tab", name="Batch labelling").click()
    page.locator("#batch-prompts textarea").fill("What is rain?\nWrite one word.\nCount to three.")
    page.locator("#batch-generate").click()
    card = page.locator("#batch-card")
    expect(card).to_contain_text("Pair 1 of 3", timeout=TRAIN_MS)
    expect(page.locator("#batch-progress")).to_contain_text("3 pairs ready")
    card.click()
    for key, n in (("2", 2), ("3", 3)):
        page.keyboard.press(key)
        expect(card).to_contain_text(f"Pair {n} of 3")
    page.locator("#batch-a textarea").fill("Edited best answer.")
    page.locator("#batch-vote-a").click()
    expect(card).to_contain_text("All 3 pairs seen; 3 labelled")
    rows = labels(app)
    assert [r["vote"] for r in rows[-3:]] == ["b", "tie", "a"] and rows[-1]["chosen_text"] == "Edited best answer."
    assert all(r["origin"] == "batch" for r in rows[-3:])
    expect(page.locator("#arena-count")).to_contain_text("5 votes · ")
    shot(page, "arena-batch")


def export_the_set_and_find_the_pairs(page, app):
    page.get_by_role("tab", name="Labels & DPO").click()
    expect(page.locator("#arena-sets")).to_contain_text("arena")
    expect(page.locator("#arena-board")).to_contain_text("base")
    page.locator("#arena-export").click()
    expect(page.locator("#arena-io-msg")).to_contain_text("Exported 4 pairs; left out 1 ties")
    link = page.locator("#arena-export-file a").first
    expect(link).to_be_visible()
    rows = [json.loads(line) for line in fetch(app, link.get_attribute("href")).decode().splitlines()]
    assert len(rows) == 4
    assert any(r["prompt"][-1]["content"] == "Name a colour." for r in rows)
    assert any(r["chosen"] == [{"role": "assistant", "content": "Hello! Nice to meet you."}] for r in rows)
    for table in ("arena-board", "arena-h2h", "arena-recent", "arena-annotators", "arena-between", "arena-sets"):
        spill = page.evaluate("""id => { const el = document.getElementById(id);
            return Math.max(...[...el.querySelectorAll("table")].map(t => t.getBoundingClientRect().right))
                   - el.getBoundingClientRect().right; }""", table)
        assert spill <= 1, f"#{table} runs {spill:.0f} px past its right edge"
    shot(page, "arena-labels")


def train_dpo_on_the_labels_and_pick_the_new_run(page, app):
    page.locator("#arena-dpo-steps input").fill("2")
    page.locator("#arena-dpo-start").click()
    expect(page.locator("#arena-dpo-msg")).to_contain_text("Started")
    progress = page.locator("#arena-dpo-progress")
    expect(progress).to_contain_text(re.compile("finished", re.I), timeout=TRAIN_MS)
    run_id = page.locator("#arena-dpo-progress .tl-run").inner_text().strip()
    assert "dpo-arena" in run_id
    expect(page.locator("#arena-dpo-msg")).to_contain_text(f"{run_id} finished")
    page.get_by_role("tab", name="Side by side").click()
    pick(page, "arena-left", run_id)
    send(page, "Name a colour.")
    expect(page.locator("#arena-chat-a")).to_contain_text("Name a colour.")
    shot(page, "arena-dpo-run-in-arena")


def identical_answers_take_only_tie_or_both_bad(page, app):
    page.locator("#arena-blind input").uncheck()
    pick(page, "arena-left", "base")
    pick(page, "arena-right", "base")
    page.get_by_text("Sampling and system prompt (both sides)").click()
    temp = page.locator("#arena-temp input[type=number]")
    temp.fill("0")   # greedy: the same model gives the same answer twice
    temp.press("Enter")
    expect(page.locator("#arena-temp input[type=range]")).to_have_value("0")  # the page took it
    send(page, "Name a colour.", note="Both answers are the same text")
    assert assistant_text(page, "a") == assistant_text(page, "b")
    for vote in ("a", "b"):
        expect(page.locator(f"#arena-vote-{vote}")).to_be_disabled()
    expect(page.locator("#arena-vote-tie")).to_be_enabled()
    saved = len(labels(app))
    page.locator("#arena-status").click()
    page.keyboard.press("1")    # the key of a disabled button saves nothing
    page.keyboard.press("3")
    expect(page.locator("#arena-vote-msg")).to_contain_text("Saved vote #")
    rows = labels(app)
    assert len(rows) == saved + 1 and rows[-1]["vote"] == "tie"
    temp.fill(str(FAIR_SAMPLING["temperature"]))
    temp.press("Enter")
    shot(page, "arena-identical")


def the_annotator_name_survives_a_reload(page, app):
    page.reload()
    page.locator("#train-start").wait_for()
    tab(page, "Arena")
    expect(page.locator("#arena-annotator textarea, #arena-annotator input").first).to_have_value("ana")
    page.get_by_role("tab", name="Batch labelling").click()   # batch votes use it, with no typing
    page.locator("#batch-prompts textarea").fill("One more question?")
    page.locator("#batch-generate").click()
    expect(page.locator("#batch-card")).to_contain_text("Pair 1 of 1", timeout=TRAIN_MS)
    page.locator("#batch-vote-tie").click()
    expect(page.locator("#batch-msg")).to_contain_text("Saved")
    assert labels(app)[-1]["annotator"] == "ana"


@pytest.fixture
def own_page(browser, tiny_model_dir, tmp_path):  # noqa: F811
    """A page on an app of its own: loading a lab's 60 pairs must not change the label
    store that the arena story above counts its votes in (the tests run in any order)."""
    home = tmp_path / "home"
    home.mkdir()
    with app_with_a_run(tiny_model_dir, home) as server:
        with open_page(browser, server, height=1100) as pg:
            tab(pg, "Arena")
            pg.locator("#arena-prompt").wait_for()
            yield pg


def test_labs_tab_loads_a_lab_and_its_pairs(own_page):
    page = own_page
    tab(page, "Labs")
    page.locator("#labs-pick").get_by_text("LoRA: the same task").click()
    expect(page.locator("#labs-card")).to_contain_text("W' = W + (α/r)·B·A")
    expect(page.locator("#labs-instructions")).to_contain_text("Rank sweep")
    page.locator("#labs-load").click()
    expect(page.locator("#train-lab")).to_contain_text("Lab 2: LoRA")
    expect(page.locator("#f-lora-r input")).to_have_value("8")
    expect(page.locator("#f-train-max-steps input")).to_have_value(str(get_lab("lora").config.train.max_steps))
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("pirate_sft.jsonl"))
    shot(page, "labs-loaded-into-train")
    tab(page, "Labs")
    page.locator("#labs-pick").get_by_text("DPO: learn a preference").click()
    expect(page.locator("#labs-card")).to_contain_text("Lab 4")  # the pick has landed before the click
    page.locator("#labs-pairs").click()
    expect(page.locator("#labs-msg")).to_contain_text("pairs in set 'lab4-dpo'")
    count = re.compile(r"60 votes · \d+ pairs? for DPO/ORPO · 0 👍 · 0 👎 in lab4-dpo")
    expect(page.locator("#arena-count")).to_contain_text(count)
    # Lab 4's second step loads the same card with its `next` changes: DPO pushed too far.
    tab(page, "Labs")
    expect(page.locator("#labs-instructions")).to_contain_text("Push it")
    page.locator("#labs-load-next").click()
    step = get_lab("dpo").next_config()
    expect(page.locator("#f-train-lr input")).to_have_value(re.compile(rf"^{step.train.lr:g}$|^{step.train.lr}$"))
    expect(page.locator("#f-name").locator("input, textarea")).to_have_value(step.name)


def inside_views_on_the_runs(page, app):
    tab(page, "Inside")
    page.get_by_role("tab", name="Inside LoRA").click()
    pick(page, "inside-lora-run", RUN_ID)
    expect(page.locator("#inside-lora-info")).to_contain_text("A and B hold")
    expect(page.locator("#inside-lora-plot .js-plotly-plot")).to_be_visible()
    page.get_by_role("tab", name="Inside QLoRA").click()
    page.locator("#inside-q-go").click()
    expect(page.locator("#inside-q-info")).to_contain_text("relative error")
    page.get_by_role("tab", name="What tuning changed").click()
    pick(page, "inside-shift-run", RUN_ID)
    page.locator("#inside-shift-go").click()
    expect(page.locator("#inside-shift-out")).to_contain_text("Mean shift")
    page.get_by_role("tab", name="DPO", exact=True).click()
    pick(page, "inside-dpo-run", "dpo-arena")   # the run trained on the labels above
    expect(page.locator("#inside-dpo-logps .js-plotly-plot")).to_be_visible()
    expect(page.locator("#inside-dpo-table")).to_contain_text("dpo-arena")   # one run picked: one row
    expect(page.locator("#inside-dpo-note")).to_contain_text("ends with margin")
    page.get_by_role("tab", name="Compare methods").click()
    pick(page, "inside-cmp-runs", "dpo-arena")
    expect(page.locator("#inside-cmp-table")).to_contain_text("dpo (lora)")
    shot(page, "inside-views")
