"""Two people on one hosted lab: the second Start queues behind the first run, the page
shows its place in line, and Stop cancels it; the first run goes on. A queued run's
message follows its place as others join and leave the line, agrees with its progress
panel, and turns into "Started" when its turn comes. Real app, Chromium."""

import re

import pytest

from .browser_kit import TIMEOUT_MS, TRAIN_MS, AppServer, expect, new_context, set_number  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    server = AppServer(tmp_path_factory.mktemp("queue-home"), tiny_model_dir,
                       env={"TUNELAB_MAX_TRAININGS": "1"}).start()
    yield server
    server.stop_training()
    server.stop()


def _page(browser, app):
    ctx = new_context(browser)
    page = ctx.new_page()
    page.goto(app.url)
    page.locator("#train-start").wait_for()
    return ctx, page


def test_a_second_start_queues_and_can_be_cancelled(browser, app):
    ctx_a, ana = _page(browser, app)
    ctx_b, ben = _page(browser, app)
    try:
        set_number(ana, "f-train-max-steps", 2000)
        set_number(ana, "f-train-max-length", 64)
        ana.locator("#train-start").click()
        expect(ana.locator("#train-message")).to_contain_text("Started", timeout=TIMEOUT_MS)
        expect(ana.locator("#train-progress")).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TRAIN_MS)
        first = ana.locator("#train-progress .tl-run").inner_text().strip()

        ben.reload()                                  # opens the page while ana's run trains
        expect(ben.locator("#train-progress")).to_contain_text(first)
        expect(ben.locator("#train-start")).to_be_enabled()   # not his run: Start is free
        set_number(ben, "f-train-max-steps", 3)
        ben.locator("#train-start").click()
        expect(ben.locator("#train-message")).to_contain_text(re.compile(r"Queued \S+: 1 of 1 in line"))
        state = ben.locator("#train-progress [data-state]")
        expect(state).to_have_attribute("data-state", "queued")
        expect(ben.locator("#train-progress")).to_contain_text("1 of 1 in line")
        second = ben.locator("#train-progress .tl-run").inner_text().strip()
        assert second != first

        ben.locator("#train-stop").click()            # cancels his queued run
        expect(ben.locator("#train-run-message")).to_contain_text(f"Cancelled {second}")   # beside Stop
        expect(state).to_have_attribute("data-state", "cancelled")
        expect(ana.locator("#train-progress [data-state]")).to_have_attribute("data-state", "running")
        assert not (app.home / "runs" / second / "events.jsonl").exists()   # it never trained

        ana.locator("#train-stop").click()
        expect(ana.locator("#train-progress [data-state]")).to_have_attribute("data-state", "stopped", timeout=TRAIN_MS)
    finally:
        ctx_a.close()
        ctx_b.close()


def test_a_queued_message_follows_the_line_and_goes_when_the_run_starts(browser, app):
    pages = [_page(browser, app) for _ in range(3)]
    (_, ana), (_, ben), (_, cara) = pages
    try:
        set_number(ana, "f-train-max-steps", 2000)
        set_number(ana, "f-train-max-length", 64)
        ana.locator("#train-start").click()
        expect(ana.locator("#train-progress [data-state]")).to_have_attribute("data-state", "running",
                                                                             timeout=TRAIN_MS)
        first = ana.locator("#train-progress .tl-run").inner_text().strip()

        message, panel = ben.locator("#train-message"), ben.locator("#train-progress")
        set_number(ben, "f-train-max-steps", 2000)   # long: "Started" holds while it trains
        set_number(ben, "f-train-max-length", 64)
        ben.locator("#train-start").click()
        expect(message).to_contain_text(re.compile(r"Queued \S+: 1 of 1 in line"))
        expect(panel).to_contain_text("1 of 1 in line")
        second = panel.locator(".tl-run").inner_text().strip()
        assert second != first

        cara.locator("#train-start").click()            # joins the line behind ben
        expect(cara.locator("#train-message")).to_contain_text("2 of 2 in line")
        expect(message).to_contain_text(f"Queued {second}: 1 of 2 in line")   # ben's, redrawn
        expect(panel).to_contain_text("1 of 2 in line")                                      # and his panel
        cara.locator("#train-stop").click()             # cara leaves the line
        expect(message).to_contain_text(f"Queued {second}: 1 of 1 in line")
        expect(panel).to_contain_text("1 of 1 in line")

        ana.locator("#train-stop").click()              # a slot frees: ben's turn
        expect(ana.locator("#train-progress [data-state]")).to_have_attribute(   # before its first step: cancelled
            "data-state", re.compile("stopped|cancelled"), timeout=TRAIN_MS)
        expect(ana.locator("#train-progress")).to_contain_text("stopped by someone using the app")
        expect(message).to_contain_text(f"Started {second}", timeout=TIMEOUT_MS)
        expect(message).not_to_contain_text("Queued")
        expect(message).not_to_contain_text("in line")
        expect(panel.locator("[data-state]")).not_to_have_attribute("data-state", "queued")
        ben.locator("#train-stop").click()
        expect(panel.locator("[data-state]")).to_have_attribute("data-state", re.compile("stopped|cancelled"),
                                                                timeout=TRAIN_MS)
    finally:
        for ctx, _ in pages:
            ctx.close()
        app.stop_training()   # whatever a failure left training: the next test starts on a free slot
