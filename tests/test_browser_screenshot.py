"""The README's screenshot, made from the real app so that it cannot go stale.

A fresh app on the bundled model (as a user's first start shows it), opened in Debian's
Chromium; the page must show the six tabs, and the Train tab is written to
docs/images/app.png, the picture the README and the docs' front page show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .browser_kit import ROOT, browser, expect, open_page, running_app  # noqa: F401

SCREENSHOT = ROOT / "docs" / "images" / "app.png"
TABS = ["Train", "Data", "Runs", "Arena", "Labs", "Inside"]


@pytest.fixture(scope="module")
def app(bundled_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("screenshot-home")
    (home / "models").mkdir()
    (home / "models" / "smollm2-135m-instruct").symlink_to(Path(bundled_model_dir).resolve(),
                                                           target_is_directory=True)
    with running_app(home, "smollm2-135m-instruct", {"TUNELAB_STANDBY": "0"}) as server:
        yield server


def test_the_page_shows_the_six_tabs_and_its_picture_is_written(browser, app):  # noqa: F811
    with open_page(browser, app, height=900) as page:
        tabs = page.get_by_role("tab")
        expect(tabs).to_have_count(len(TABS))   # the host's Room tab stays hidden without logins
        assert [t.strip() for t in tabs.all_inner_texts()] == TABS
        expect(page.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#train-start")).to_be_visible()
        # Settled, as a visitor sees it a moment later: the model picked, the estimate drawn,
        # no widget still loading.
        expect(page.locator("#f-model input")).to_have_value("smollm2-135m-instruct")
        expect(page.locator("#train-estimate")).not_to_contain_text("Estimating")
        expect(page.locator(".pending")).to_have_count(0)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))   # the first screen, as a visitor sees it
    assert SCREENSHOT.stat().st_size > 10_000 and SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
