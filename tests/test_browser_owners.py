"""The Runs tab with two people signed in (ana and bob; root is an admin), in a real
browser: bob picks ana's run and finds Resume, Delete and Rename disabled with a line
saying whose run it is; ana finds them enabled and renames it. And the tab never shows a
stale run: one that ends while it is shown says so within a tick, and Refresh redraws the
picked run from its folder (here after root renamed it over HTTP). The runs are folders
written by hand; a 'training' run is a sleeping process of its own."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

import pytest

from .browser_kit import ARTIFACTS, app_with_logins, expect, new_context, pick, tab  # noqa: F401 (fixture)

LOGINS = {"ana": "pw-a", "bob": "pw-b", "root": "pw-r"}
STOPPED = "20260101-000001-ana-stopped"
FINISHED = "20260101-000002-ana-finished"
LIVE = "20260101-000003-ana-live"
TRAINING = "20260101-000004-ana-training"   # stays live: no test ends it


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    runs = [(STOPPED, dict(owner="ana", model=True, checkpoint=True, status="stopped", stopped_by="root")),
            (FINISHED, dict(owner="ana", model=True, status="finished", step=4)),
            (LIVE, dict(owner="ana", status="running")),
            (TRAINING, dict(owner="ana", status="running", max_steps=1000))]
    with app_with_logins(tmp_path_factory.mktemp("browser-owners"), tiny_model_dir, LOGINS, "root", runs) as server:
        yield server


@contextmanager
def signed_in(browser, app, user):
    """A page of its own, signed in through Gradio's login form, on the Runs tab."""
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = new_context(browser, viewport={"width": 1400, "height": 1100})
    try:
        page = ctx.new_page()
        page.goto(app.url)
        page.get_by_label("username").fill(user)
        page.get_by_label("password").fill(LOGINS[user])
        page.get_by_role("button", name="Login").click()
        page.locator("#train-start").wait_for()
        tab(page, "Runs")
        yield page
    finally:
        ctx.close()


def status(app, run_id) -> dict:
    return json.loads((app.home / "runs" / run_id / "status.json").read_text())


def test_bob_finds_anas_run_closed_to_him_and_ana_renames_it(browser, app):
    with signed_in(browser, app, "bob") as page:
        pick(page, "runs-pick", STOPPED)
        expect(page.locator("#runs-details")).to_contain_text("owner: ana")
        expect(page.locator("#runs-details")).to_contain_text("stopped by root")
        expect(page.locator("#runs-access")).to_contain_text(f"{STOPPED} is ana's run: only ana or an admin can "
                                                             f"stop, resume, delete or rename it.")
        for button in ("#runs-resume", "#runs-delete", "#runs-rename"):
            expect(page.locator(button)).to_be_disabled()
        expect(page.locator("#runs-title input, #runs-title textarea").first).to_be_disabled()
        expect(page.locator("#runs-dl-adapter")).to_be_enabled()   # downloads are for everyone (TUNELAB_DOWNLOADS)
        expect(page.locator("#runs-open")).to_be_enabled()
        page.locator("#runs-dl-adapter").click()
        link = page.locator("#runs-download a[href]").first
        expect(link).to_have_attribute("href", re.compile(re.escape(f"{STOPPED}-adapter.zip") + "$"))
        expect(page.locator("#runs-message")).to_contain_text(f"Ready: {STOPPED}-adapter.zip")
        page.screenshot(path=str(ARTIFACTS / "runs-owner-bob.png"), full_page=True)
    with signed_in(browser, app, "ana") as page:
        pick(page, "runs-pick", STOPPED)
        expect(page.locator("#runs-details")).to_contain_text("owner: ana")
        for button in ("#runs-resume", "#runs-delete", "#runs-rename"):
            expect(page.locator(button)).to_be_enabled()
        expect(page.locator("#runs-access")).to_have_text("")
        page.locator("#runs-title input, #runs-title textarea").first.fill("pirate, r=16")
        page.locator("#runs-rename").click()
        expect(page.locator("#runs-message")).to_contain_text(f"{STOPPED} is now titled “pirate, r=16”")
        expect(page.locator("#runs-details")).to_contain_text("pirate, r=16")
        expect(page.locator("#runs-table")).to_contain_text("pirate, r=16")
    st = status(app, STOPPED)
    assert (st["title"], st["owner"], st["run_id"]) == ("pirate, r=16", "ana", STOPPED)


def test_a_run_that_ends_while_shown_shows_it_within_a_tick(browser, app):
    with signed_in(browser, app, "ana") as page:
        pick(page, "runs-pick", LIVE)
        expect(page.locator("#runs-details")).to_contain_text("running")
        expect(page.locator("#runs-delete")).to_be_disabled()
        expect(page.locator("#runs-dl-adapter")).to_be_disabled()
        run = app.home / "runs" / LIVE
        (run / "model").mkdir()
        (run / "model" / "adapter_config.json").write_text("{}")
        (run / "status.json").write_text(json.dumps({**status(app, LIVE), "status": "finished", "step": 4}))
        # Nothing clicked: the Runs tab's timer redraws the live run it shows.
        expect(page.locator("#runs-details")).to_contain_text("finished")
        expect(page.locator("#runs-details")).to_contain_text("step 4 / 4")
        expect(page.locator("#runs-delete")).to_be_enabled()
        expect(page.locator("#runs-dl-adapter")).to_be_enabled()
        # The table is redrawn with it (TRAINING, another run, still trains).
        expect(page.locator("#runs-table")).to_contain_text(re.compile(re.escape(LIVE) + r"\s+finished"))


def test_refresh_redraws_the_picked_run_from_its_folder(browser, app):
    from gradio_client import Client
    with signed_in(browser, app, "ana") as page:
        pick(page, "runs-pick", FINISHED)
        expect(page.locator("#runs-details")).to_contain_text("finished")
        root = Client(app.url, auth=("root", LOGINS["root"]), verbose=False)
        assert root.predict(FINISHED, "checked by root", api_name="/rename_run")["title"] == "checked by root"
        page.locator("#runs-refresh").click()
        expect(page.locator("#runs-details")).to_contain_text("checked by root")
        expect(page.locator("#runs-details")).to_contain_text("owner: ana")
        expect(page.locator("#runs-delete")).to_be_enabled()


def test_the_train_tab_gives_stop_only_to_who_may_stop_the_run(browser, app):
    for user, allowed in (("bob", False), ("ana", True), ("root", True)):
        with signed_in(browser, app, user) as page:
            pick(page, "runs-pick", TRAINING)
            page.locator("#runs-open").click()
            expect(page.locator("#train-progress")).to_contain_text(TRAINING)
            stop = expect(page.locator("#train-stop"))
            if allowed:
                stop.to_be_enabled()
                expect(page.locator("#train-whose")).to_have_text("")
            else:
                stop.to_be_disabled()
                expect(page.locator("#train-whose")).to_contain_text(f"{TRAINING} is ana's run: only ana or an "
                                                                     f"admin can stop")
    assert status(app, TRAINING)["status"] == "running"   # nobody pressed anything
