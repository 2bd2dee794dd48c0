"""Two people on one hosted lab: the second Start queues behind the first run, the page
shows its place in line, and Stop cancels it; the first run goes on. Real app, Chromium."""

import re

import pytest

from .browser_kit import TIMEOUT_MS, AppServer, browser, expect, set_number  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    server = AppServer(tmp_path_factory.mktemp("queue-home"), tiny_model_dir,
                       env={"TUNELAB_MAX_TRAININGS": "1"}).start()
    yield server
    server.stop_training()
    server.stop()


def _page(browser, app):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(30_000)
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
        expect(ana.locator("#train-progress")).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TIMEOUT_MS)
        first = ana.locator("#train-progress .tl-run").inner_text().strip()

        ben.reload()                                  # opens the page while ana's run trains
        expect(ben.locator("#train-progress")).to_contain_text(first, timeout=30_000)
        expect(ben.locator("#train-start")).to_be_enabled()   # not his run: Start is free
        set_number(ben, "f-train-max-steps", 3)
        ben.locator("#train-start").click()
        expect(ben.locator("#train-message")).to_contain_text(re.compile(r"Queued \S+: 1 of 1 in line"), timeout=60_000)
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
        expect(ana.locator("#train-progress [data-state]")).to_have_attribute("data-state", "stopped",
                                                                             timeout=60_000)
    finally:
        ctx_a.close()
        ctx_b.close()
