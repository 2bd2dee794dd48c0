"""Thumbs in the Arena's one-model tab, in a real browser (Debian's Chromium, playwright).

A fresh app on the tiny test model with one finished LoRA run. One answer at a time gets
👍 (the key u) and 👎 (the button); both are stored as thumbs with their provenance, the
Labels & DPO tab counts them, and "Train KTO on these labels" trains on them to a
finished run that the model pickers then offer: one story, one test (KTO trains on the
thumbs given before it). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from .browser_kit import (RUN_ID, TRAIN_MS, app_with_a_run, expect, open_page, pick,  # noqa: F401
                          shot, tab)



@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with app_with_a_run(tiny_model_dir, tmp_path_factory.mktemp("thumbs-home")) as server:
        yield server


@pytest.fixture
def page(browser, app):  # noqa: F811
    with open_page(browser, app, height=1100) as pg:
        tab(pg, "Arena")
        pg.locator("#arena-annotator textarea, #arena-annotator input").first.fill("ana")
        pg.get_by_role("tab", name=re.compile("One model")).click()
        pg.locator("#thumbs-prompt").wait_for()
        yield pg


def test_thumbs_then_kto_on_them(page, app):
    thumbs_up_by_key_and_down_by_button(page, app)
    train_kto_on_the_thumbs_and_pick_the_new_run(page, app)


def thumbs(app) -> list[dict]:
    with sqlite3.connect(app.home / "labels.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM thumbs ORDER BY id")]


def ask(page, text: str) -> None:
    page.locator("#thumbs-prompt textarea").fill(text)
    page.locator("#thumbs-send").click()
    expect(page.locator("#thumbs-status")).to_contain_text("Good or bad?", timeout=TRAIN_MS)


def thumbs_up_by_key_and_down_by_button(page, app):
    pick(page, "arena-left", RUN_ID)
    ask(page, "Tell me about the sea.")
    expect(page.locator("#thumbs-chat")).to_contain_text(RUN_ID)
    page.locator("#thumbs-prompt textarea").fill("u")   # typing u in the prompt box is text, not a thumb
    assert thumbs(app) == []
    page.locator("#thumbs-prompt textarea").fill("")
    page.locator("#thumbs-status").click()   # out of the prompt box, as a user clicking the page
    page.keyboard.press("u")
    msg = page.locator("#thumbs-msg")
    expect(msg).to_contain_text("Saved 👍 as thumb #1 in 'arena'")
    expect(page.locator("#thumbs-up")).to_be_disabled()
    page.keyboard.press("d")   # the answer is labelled: a second key saves nothing
    ask(page, "And about ships?")
    page.locator("#thumbs-down").click()
    expect(msg).to_contain_text("Saved 👎 as thumb #2")
    rows = thumbs(app)
    assert [r["up"] for r in rows] == [1, 0] and all(r["annotator"] == "ana" for r in rows)
    source = json.loads(rows[0]["source"])
    assert source["model"] == f"run:{RUN_ID}" and source["mode"] == "one pane" and "temperature" in source
    second = json.loads(rows[1]["prompt"])   # the second turn carries the first as its context
    assert second[0]["content"] == "Tell me about the sea." and second[-1]["content"] == "And about ships?"
    expect(page.locator("#arena-count")).to_contain_text("0 votes · 0 pairs for DPO/ORPO · 1 👍 · 1 👎 in arena")
    shot(page, "arena-thumbs")


def train_kto_on_the_thumbs_and_pick_the_new_run(page, app):
    page.get_by_role("tab", name="Labels & DPO").click()
    expect(page.locator("#arena-sets")).to_contain_text("1 / 1")   # KTO: one good and one bad answer
    page.locator("#arena-dpo-start").click()   # no pairs: DPO says so, and nothing starts
    expect(page.locator("#arena-dpo-msg")).to_contain_text("DPO needs at least 2 decided votes")
    page.locator("#arena-dpo-steps input").fill("2")
    page.locator("#arena-kto-start").click()
    expect(page.locator("#arena-dpo-msg")).to_contain_text("KTO trains on 2 answers (1 good, 1 bad)")
    progress = page.locator("#arena-dpo-progress")
    expect(progress).to_contain_text(re.compile("finished", re.I), timeout=TRAIN_MS)
    run_id = page.locator("#arena-dpo-progress .tl-run").inner_text().strip()
    assert "kto-arena" in run_id
    expect(page.locator("#arena-dpo-msg")).to_contain_text(f"{run_id} finished")
    page.get_by_role("tab", name=re.compile("One model")).click()
    pick(page, "arena-left", run_id)
    ask(page, "Name a colour.")
    expect(page.locator("#thumbs-chat")).to_contain_text(run_id)
    shot(page, "arena-kto-run")
