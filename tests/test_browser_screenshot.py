"""The README's screenshot, made from the real app so that it cannot go stale.

A fresh app on the bundled model (as a user's first start shows it), opened in Debian's
Chromium; the page must show the six tabs, and the Train tab is written to
docs/images/app.png, the picture the README and the docs' front page show. A picture that
differs from the one there only in a few pixels (a figure in the estimate, a cursor) is
not rewritten, so that running the tests leaves the checkout as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .browser_kit import ROOT, browser, expect, open_page, running_app  # noqa: F401

SCREENSHOT = ROOT / "docs" / "images" / "app.png"
TABS = ["Train", "Data", "Runs", "Arena", "Labs", "Inside"]
CHANGED_SHARE = 0.005   # more pixels than this differ: the page changed, and the picture is rewritten


def changed_share(old: Path, new: bytes) -> float:
    """The share of pixels that differ between the PNG at `old` and the PNG `new` (1.0 when
    their sizes differ or there is no old one)."""
    import io

    from PIL import Image, ImageChops
    if not old.is_file():
        return 1.0
    a, b = Image.open(old).convert("RGB"), Image.open(io.BytesIO(new)).convert("RGB")
    if a.size != b.size:
        return 1.0
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 16 else 0)
    return diff.histogram()[255] / (a.size[0] * a.size[1])


def test_a_picture_is_rewritten_only_when_the_page_changed(tmp_path):
    from PIL import Image
    import io
    base = Image.new("RGB", (200, 100), "white")
    path = tmp_path / "old.png"
    base.save(path)

    def png(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    assert changed_share(path, png(base)) == 0
    speck = base.copy()
    speck.putpixel((5, 5), (0, 0, 0))
    assert changed_share(path, png(speck)) < CHANGED_SHARE
    half = base.copy()
    half.paste((0, 0, 0), (0, 0, 100, 100))
    assert changed_share(path, png(half)) == 0.5
    assert changed_share(path, png(Image.new("RGB", (100, 100)))) == 1.0
    assert changed_share(tmp_path / "none.png", png(base)) == 1.0


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
        shot = page.screenshot()   # the first screen, as a visitor sees it
    assert len(shot) > 10_000 and shot[:8] == b"\x89PNG\r\n\x1a\n"
    if changed_share(SCREENSHOT, shot) > CHANGED_SHARE:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)
