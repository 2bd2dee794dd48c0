"""The running app over real HTTP: a login when one is set, and no file route that
reaches the label database, a run's weights or anything else outside what the page needs.

The workspace is put inside the app's own folder (as the default ./workspace is), the
case where a file route that served the working directory would expose it.
"""

from __future__ import annotations

import http.cookiejar
import shutil
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

import pytest

from .browser_kit import ROOT, AppServer, new_context  # noqa: F401 (fixture)

SECRET = "SECRET-5f1c"


@pytest.fixture(scope="module")
def secured(tiny_model_dir):
    home = ROOT / ".http-security-test"
    shutil.rmtree(home, ignore_errors=True)
    run_model = home / "runs" / "20260101-000000-secret" / "model"
    run_model.mkdir(parents=True)
    (run_model / "adapter_model.safetensors").write_text(SECRET)
    with sqlite3.connect(home / "labels.db") as db:
        db.execute("create table t (x text)")
        db.execute("insert into t values (?)", (SECRET,))
    server = AppServer(home, tiny_model_dir, env={"TUNELAB_AUTH": "ada:lovelace", "TUNELAB_STANDBY": "0",
                                                   "TUNELAB_MAX_UPLOAD_MB": "1"}).start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def fetch(url: str, opener=None, data: dict | None = None) -> tuple[int, bytes]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with (opener or urllib.request.build_opener()).open(url, data=body, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def logged_in(server) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, _ = fetch(server.url + "login", opener, {"username": "ada", "password": "lovelace"})
    assert status == 200 and any("access-token" in c.name for c in jar), status
    return opener


def test_without_the_login_the_api_and_files_are_closed(secured):
    for path in ("config", "gradio_api/info", f"gradio_api/file={secured.home / 'labels.db'}"):
        status, body = fetch(secured.url + path)
        assert status in (401, 403), (path, status)
        assert SECRET.encode() not in body
    status, _ = fetch(secured.url + "login", data={"username": "ada", "password": "wrong"})
    assert status in (400, 401)


def test_file_routes_reach_nothing_outside_the_page(secured):
    opener = logged_in(secured)
    assert fetch(secured.url + "config", opener)[0] == 200   # the login works
    home = secured.home
    targets = [home / "labels.db", home / "runs" / "20260101-000000-secret" / "model" / "adapter_model.safetensors",
               ROOT / "app.py", ROOT / "tunelab" / "service" / "hosting.py", "/etc/passwd"]
    tried = 0
    for target in targets:
        t = str(target)
        rel = "../" * 8 + t.lstrip("/")
        for path in (f"gradio_api/file={t}", f"gradio_api/file/{t}", f"file={t}",
                     f"gradio_api/file={rel}", f"gradio_api/file={urllib.parse.quote(rel, safe='')}",
                     f"static/{rel}", f"assets/{rel}", f"svelte/{rel}",
                     f"static/{urllib.parse.quote(rel, safe='')}"):
            status, body = fetch(secured.url + path, opener)
            tried += 1
            assert status != 200 or (SECRET.encode() not in body and b"root:" not in body
                                     and b"def required_auth" not in body and b"gr.Blocks" not in body), (path, status)
    assert tried == 45


def test_uploads_above_the_limit_are_refused(secured):
    import httpx

    with httpx.Client(base_url=secured.url, timeout=60) as client:
        assert client.post("login", data={"username": "ada", "password": "lovelace"}).status_code == 200
        small = client.post("gradio_api/upload", files={"files": ("ok.jsonl", b"{}\n" * 1000)})
        assert small.status_code == 200, small.text[:200]
        big = client.post("gradio_api/upload", files={"files": ("big.jsonl", b"x" * (2 * 1024 * 1024))})
        assert big.status_code == 413, (big.status_code, big.text[:200])   # TUNELAB_MAX_UPLOAD_MB=1


def test_signing_in_in_the_browser_names_the_annotator(secured, browser):
    from .browser_kit import expect
    ctx = new_context(browser)
    try:
        page = ctx.new_page()
        page.goto(secured.url)
        page.get_by_label("username").fill("ada")
        page.get_by_label("password").fill("lovelace")
        page.get_by_role("button", name="Login").click()
        page.locator("#train-start").wait_for()
        page.get_by_role("tab", name="Arena").click()
        expect(page.locator("#arena-annotator textarea, #arena-annotator input").first).to_have_value("ada")
    finally:
        ctx.close()
