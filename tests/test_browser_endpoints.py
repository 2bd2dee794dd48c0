"""A model served elsewhere in the Arena, in a real browser: add an OpenAI-compatible endpoint
(a stand-in server on 127.0.0.1), see a bad URL refused with the reason, pick the endpoint
beside the base, chat, vote, and find its URL and model in the label."""

from __future__ import annotations

import json

import pytest

from .browser_kit import TRAIN_MS, browser, expect, labels, open_page, pick, running_app, send, shot, tab  # noqa: F401
from .openai_fake import FakeServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake():
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("endpoints-home"), tiny_model_dir) as server:
        yield server


def test_add_an_endpoint_pick_it_chat_and_vote(browser, app, fake):  # noqa: F811
    with open_page(browser, app, height=1300) as page:
        tab(page, "Arena")
        page.locator("#arena-endpoints").get_by_text("Models served elsewhere").click()
        page.locator("#arena-ep-name textarea").fill("fake")
        page.locator("#arena-ep-url textarea").fill("ftp://127.0.0.1/v1")
        page.locator("#arena-ep-model textarea").fill("pirate")
        page.locator("#arena-ep-add").click()
        expect(page.locator("#arena-ep-msg")).to_contain_text("base URL: 'ftp://127.0.0.1/v1' must start with http")
        page.locator("#arena-ep-url textarea").fill(fake.url.removesuffix("/v1"))   # a bare host gets /v1
        page.locator("#arena-ep-key input").fill("sk-typed-in-the-page")
        page.locator("#arena-ep-add").click()
        expect(page.locator("#arena-ep-msg")).to_contain_text("Added fake")
        expect(page.locator("#arena-ep-table")).to_contain_text(fake.url)
        expect(page.locator("#arena-ep-table")).to_contain_text("typed here")

        pick(page, "arena-right", "fake · endpoint (pirate)")
        send(page, "Say hello like a pirate.")
        expect(page.locator("#arena-chat-b")).to_contain_text("Ahoy matey!")
        expect(page.locator("#arena-chat-b")).to_contain_text("fake (endpoint)")   # the pane names it
        shot(page, "arena-endpoint")
        page.locator("#arena-annotator textarea").fill("ana")
        page.locator("#arena-vote-b").click()
        expect(page.locator("#arena-vote-msg")).to_contain_text("Saved")

    (label,) = labels(app)
    source_b = json.loads(label["source_b"])
    assert source_b["model"] == "endpoint:fake" and source_b["endpoint_url"] == fake.url
    assert source_b["endpoint_model"] == "pirate" and label["vote"] == "b" and label["annotator"] == "ana"
    assert fake.requests[-1]["auth"] == "Bearer sk-typed-in-the-page"
    for saved in ("labels.db", "endpoints.json"):
        assert b"sk-typed-in-the-page" not in (app.home / saved).read_bytes()
    assert "sk-typed-in-the-page" not in app.log_text()
