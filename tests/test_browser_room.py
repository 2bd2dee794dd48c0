"""The Room tab in the real app with logins: root (an admin) sees the room, ana does not,
in the page and over HTTP."""

from __future__ import annotations

import json

import pytest

from tunelab.arena.prefs import LabelStore
from tunelab.training.config import RunConfig

from .browser_kit import expect, new_context, pick, running_app  # noqa: F401 (fixture)

ANA_RUN = "20260101-000000-ana-lora"
PROMPT = [{"role": "user", "content": "Hi?"}]


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("room-home")
    run_dir = home / "runs" / ANA_RUN
    run_dir.mkdir(parents=True)
    RunConfig.from_dict({"method": "lora", "model": tiny_model_dir,
                         "data": {"train": "labs/data/pirate_sft.jsonl"}}).save(run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"run_id": ANA_RUN, "status": "finished", "method": "lora",
                                                     "owner": "ana", "step": 4, "max_steps": 4}))
    LabelStore(home / "labels.db").add("arena", prompt=PROMPT, answer_a="A", answer_b="B", vote="a",
                                       annotator="ana")
    env = {"TUNELAB_AUTH": "ana:pw-a,root:pw-r", "TUNELAB_ADMINS": "root", "TUNELAB_STANDBY": "0"}
    with running_app(home, tiny_model_dir, env) as server:
        yield server


def sign_in(browser, app, user: str, password: str):
    ctx = new_context(browser)
    page = ctx.new_page()
    page.goto(app.url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.locator("#train-start").wait_for()
    return ctx, page


def test_an_admin_sees_the_room_and_another_user_does_not(app, browser):
    ctx, page = sign_in(browser, app, "root", "pw-r")
    try:
        page.get_by_role("tab", name="Room").click()
        people = page.locator("#room-people")
        expect(people.get_by_text("ana", exact=True).filter(visible=True).first).to_be_visible()
        expect(people).to_contain_text("1 finished")
        expect(page.locator("#room-head")).to_contain_text("0 training, 0 waiting")
        expect(page.locator("#room-machine")).to_contain_text("CPU a core:")
        first = page.locator("#room-head").inner_text()
        # the timer redraws it while the tab is open (its clock moves on)
        expect(page.locator("#room-head")).not_to_have_text(first, use_inner_text=True)
    finally:
        ctx.close()

    ctx, page = sign_in(browser, app, "ana", "pw-a")
    try:
        expect(page.get_by_role("tab", name="Arena")).to_be_visible()
        expect(page.get_by_role("tab", name="Room")).to_have_count(0)
        # The Inside tab's line: her shading goes through it (this run has no weights: it says so)
        page.get_by_role("tab", name="Inside").click()
        page.get_by_role("tab", name="What tuning changed").click()
        pick(page, "inside-shift-run", ANA_RUN)
        page.locator("#inside-shift-go").click()
        expect(page.locator("#inside-shift-out .tl-msg-error")).to_be_visible()
    finally:
        ctx.close()


def test_the_room_over_http_answers_only_an_admin(app):
    from gradio_client import Client

    head, *_, machine, _ = Client(app.url, auth=("root", "pw-r"), verbose=False).predict(api_name="/room")
    assert "1 run;" in head and "CPU a core:" in machine
    head, training, waiting, people, machine, inside = Client(app.url, auth=("ana", "pw-a"),
                                                              verbose=False).predict(api_name="/room")
    assert "TUNELAB_ADMINS" in head and ANA_RUN not in json.dumps([training, waiting, people])
    assert machine == inside == "" and not people["data"]
