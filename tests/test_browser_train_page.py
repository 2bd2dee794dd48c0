"""The Train tab as a user watches it, in a real browser (Chromium, playwright), at 1400×1000.

After Start the progress panel, Stop and the live charts are in view without scrolling;
the charts of a run followed while the tab was hidden are drawn whole when it is shown;
each message names the run it is about and leaves when that run ends or another is
followed; a form error says nothing was started; an upload the chosen method cannot
train on does not silently become the Train tab's dataset. One app; each test opens a
page of its own and makes the runs it looks at, so it passes alone and in any order.
"""

from __future__ import annotations

import json
import re

import pytest

from .browser_kit import (TRAIN_MS, expect, open_page, row_cell, running_app,  # noqa: F401
                          set_number, shot, tab, wait_until)
from .rows import DPO_ROWS, write_jsonl

WIDTH, HEIGHT = 1400, 1000
CHARTS = ("chart-loss", "chart-lr", "chart-throughput")


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("train-page-home"), tiny_model_dir) as server:
        yield server


@pytest.fixture
def page(browser, app):  # noqa: F811
    with open_page(browser, app, height=HEIGHT) as pg:
        yield pg


def _in_view(page, elem_id: str) -> bool:
    box = page.locator(f"#{elem_id}").bounding_box()
    return bool(box) and box["height"] > 0 and box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT


def _status(app, run_id: str) -> dict:
    path = app.home / "runs" / run_id / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _wait_status(app, run_id: str, states: tuple) -> dict:
    return wait_until(lambda: _status(app, run_id).get("status") in states and _status(app, run_id),
                      lambda: f"{run_id} reached none of {states}: {_status(app, run_id)}", TRAIN_MS)


def _plot_fit(page, elem_id: str) -> dict:
    """How wide plotly drew the figure versus how wide its box on the page is."""
    return page.evaluate("""(id) => {
        const gd = document.querySelector(`#${id} .js-plotly-plot`);
        if (!gd || !gd._fullLayout) return null;
        const x = gd._fullLayout.xaxis;
        return {drawn: gd._fullLayout.width, box: gd.getBoundingClientRect().width,
                x_max: x && x.range ? x.range[1] : null, traces: gd.data.length};
    }""", elem_id)


def _start(page, steps):
    """Start a small LoRA run of `steps` steps from the Train tab; its short name as the
    progress panel shows it, once the page says "Started"."""
    set_number(page, "f-train-max-steps", steps)
    set_number(page, "f-train-batch-size", 4)
    set_number(page, "f-train-max-length", 64)
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    return page.locator("#train-progress .tl-run").inner_text().strip()


def test_after_start_progress_and_charts_are_in_view_and_drawn_whole_after_a_hidden_tab(page, app):
    assert page.evaluate("window.scrollY") == 0
    short = _start(page, steps=4)
    # The page brings the run into view (a smooth scroll): no scrolling by the user.
    parts = ("train-progress", "train-stop", *CHARTS)
    wait_until(lambda: all(_in_view(page, e) for e in parts),
               lambda: f"not all in the {WIDTH}×{HEIGHT} view after Start: "
                       f"{ {e: page.locator(f'#{e}').bounding_box() for e in parts} }", page=page)
    shot(page, "train-page-started")

    # The charts of the run followed while the Train tab was hidden are drawn whole when shown.
    tab(page, "Data")   # the run trains while the Train tab is hidden
    _wait_status(app, short, ("finished",))
    page.wait_for_timeout(3000)   # a few ticks: the charts get their last events while hidden
    tab(page, "Train")
    expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "finished")
    for elem_id in CHARTS:
        def whole(elem_id=elem_id):
            fit = _plot_fit(page, elem_id)
            return fit if fit and fit["traces"] and abs(fit["drawn"] - fit["box"]) <= 2 else None
        fit = wait_until(whole, lambda: f"{elem_id} drawn cut off at the right: {_plot_fit(page, elem_id)}", page=page)
        assert fit["x_max"] >= 4, f"{elem_id}: the x axis ends at step {fit['x_max']}, before step 4"
    shot(page, "train-page-hidden-then-shown")
    # The run has ended: "Started …" held only while it went.
    expect(page.locator("#train-message")).not_to_contain_text("Started")


def test_messages_belong_to_their_run(page, app):
    # A short run first, trained to the end: the run the panel goes back to below.
    earlier = _start(page, steps=4)
    expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "finished", timeout=TRAIN_MS)
    expect(page.locator("#train-message")).not_to_contain_text("Started")   # it held only while the run went

    long_run = _start(page, steps=2000)
    expect(page.locator("#train-progress")).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TRAIN_MS)
    # Every text the run's message shows, recorded as the page draws it: on a busy machine the
    # run can stop (and the next tick say so) within one poll of "Stopping" being shown.
    page.evaluate("""() => {
        window.__runNotes = [];
        const box = document.getElementById("train-run-message");
        new MutationObserver(() => window.__runNotes.push(box.innerText)).observe(
            box, {childList: true, subtree: true, characterData: true});
    }""")
    page.locator("#train-stop").click()
    note = page.locator("#train-run-message")
    expect(note.locator(f'[data-run="{long_run}"]')).to_contain_text(re.compile("Stopping|Stopped"))
    shown = page.evaluate("window.__runNotes")
    assert any(long_run in text and "Stopping" in text for text in shown), shown   # Stop said so at once
    expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "stopped", timeout=TRAIN_MS)
    expect(note).not_to_contain_text("Stopping")   # it has stopped: the message says how it ended, or nothing

    # Follow the earlier run from the Runs tab: no message about the stopped run stays beside it.
    tab(page, "Runs")
    row_cell(page, earlier).click()
    page.locator("#runs-open").click()
    expect(page.locator("#train-progress .tl-run")).to_have_text(earlier)
    expect(note).not_to_contain_text(long_run)
    expect(page.locator("#train-message")).not_to_contain_text(long_run)

    # A form error is about the form: nothing started, whatever run the panel shows.
    set_number(page, "f-train-lr", -1)
    page.locator("#train-start").click()
    form = page.locator('#train-message [data-about="form"]')
    expect(form).to_contain_text("Not started")
    expect(form).to_contain_text("train.lr: must be > 0")
    expect(page.locator("#train-run #train-message")).to_have_count(0)   # not in the run's section
    expect(page.locator("#train-progress .tl-run")).to_have_text(earlier)
    shot(page, "train-page-form-error")
    set_number(page, "f-train-lr", 0.0002)
    expect(form).to_have_count(0)   # the form has changed since: the error no longer holds


def test_an_upload_the_method_cannot_use_does_not_replace_the_dataset(page, app, tmp_path):
    dataset = page.locator("#f-data-train input")
    before = dataset.input_value()
    tab(page, "Data")
    upload = write_jsonl(tmp_path / "my prefs.jsonl", DPO_ROWS)
    page.locator("#data-upload input[type=file]").set_input_files(str(upload))
    summary = page.locator("#data-summary")
    # Saved where the workspace really is (TUNELAB_HOME is a temporary folder here).
    expect(summary).to_contain_text(f"Saved as {app.home / 'data' / 'my-prefs.jsonl'}")
    expect(summary).to_contain_text("method lora cannot train on")
    shot(page, "train-page-dpo-upload-summary")
    tab(page, "Train")
    expect(dataset).to_have_value(before)
    page.locator("#f-method").get_by_text("dpo", exact=True).click()
    expect(dataset).to_have_value(re.compile("my-prefs.jsonl"))   # the upload, not the lab's DPO set
    shot(page, "train-page-dpo-upload")
