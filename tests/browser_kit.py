"""What the browser tests share: Debian's Chromium under Python playwright, the app
started as a user starts it (`python app.py` in its own process group, a throwaway
workspace, a free port), a page on it, and small helpers for the widgets.

Chromium comes from the distribution (`apt-get install -y chromium`), never from
`playwright install`. Without it the browser tests skip, except under CI=true, where
they fail. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The ceiling on every wait in the browser tests. It only guards against a hang: each wait
# ends as soon as what it waits for shows (a status, a message, a file), so a slow machine
# (a busy 2-core box, a training subprocess importing torch + transformers + trl first)
# makes a test slower, never wrong. Nothing here times how fast the page is.
TIMEOUT_MS = 120_000
# The ceiling on waits for the model's own work: training (its first step, its end, its
# stop at a step boundary; the child process imports, loads the model and trains) and the
# arena's answers (the first loads the models), on cores shared with everything else.
TRAIN_MS = 600_000


def _missing(what: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{what} (CI=true: the browser tests must run here)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    if not exe:
        _missing("Chromium is missing: apt-get install -y chromium (the Debian package; not `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is missing: pip install -r requirements-dev.txt")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` as a user starts it, in its own process group."""

    def __init__(self, home: Path, model: str, env: dict | None = None):
        self.home, self.model, self.extra_env = home, model, env or {}
        self.proc = None

    def start(self) -> "AppServer":
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = os.environ | {"TUNELAB_HOME": str(self.home), "TUNELAB_DEFAULT_MODEL": self.model,
                            "TUNELAB_HOST": "127.0.0.1", "TUNELAB_PORT": str(self.port),
                            "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"} | self.extra_env
        self.log = open(self.home / "app.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise AssertionError(f"app.py exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"app.py did not answer on {self.url}:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def log_text(self) -> str:
        return (self.home / "app.log").read_text(errors="replace")[-4000:]

    def stop_training(self) -> None:
        """Leave no training process behind, whatever a failed test left running."""
        for status in (self.home / "runs").glob("*/status.json"):
            st = json.loads(status.read_text())
            if st.get("status") in ("running", "starting") and st.get("pid"):
                try:
                    os.killpg(st["pid"], signal.SIGKILL)
                except OSError:
                    pass


@contextmanager
def running_app(home: Path, model: str, env: dict | None = None):
    """An app for a test module; no training process is left behind, whatever failed."""
    server = AppServer(home, model, env).start()
    try:
        yield server
    finally:
        server.stop_training()
        server.stop()


def write_run(home: Path, name: str, model: bool = False, checkpoint: bool = False, **status) -> Path:
    """A run folder written by hand (nothing trains): its config, a status.json of `status`
    (step 2 of 4 unless given), and, if asked, a stand-in adapter and a checkpoint."""
    d = home / "runs" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("method: lora\nmodel: ./no/such/model\ndata: {train: d.jsonl}\n")
    if model:
        (d / "model").mkdir()
        (d / "model" / "adapter_config.json").write_text("{}")
    if checkpoint:
        (d / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (d / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (d / "status.json").write_text(json.dumps({"run_id": name, "method": "lora", "step": 2, "max_steps": 4,
                                               **status}))
    return d


@contextmanager
def app_with_logins(home: Path, model: str, logins: dict, admins: str = "", runs=()):
    """An app with `logins` ({user: password}) and TUNELAB_ADMINS=`admins`, no standby. Each
    of `runs` (name, status dict) is written first; a status of "running" gets a sleeping
    process of its own that stands in for its training (pid and pid_start)."""
    import psutil
    sleepers = []
    for name, status in runs:
        if status.get("status") == "running":
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            sleepers.append(p)
            status = status | {"pid": p.pid, "pid_start": psutil.Process(p.pid).create_time()}
        write_run(home, name, **status)
    env = {"TUNELAB_AUTH": ",".join(f"{u}:{p}" for u, p in logins.items()), "TUNELAB_ADMINS": admins,
           "TUNELAB_STANDBY": "0"}
    try:
        with running_app(home, model, env) as server:   # stop_training kills the stand-ins' groups
            yield server
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


RUN_ID = "20260101-000000-lora-pirate"   # the finished LoRA run `app_with_a_run` puts in the workspace


@contextmanager
def app_with_a_run(tiny_model_dir: str, home: Path):
    """An app on the tiny model whose workspace holds one finished LoRA run (RUN_ID)."""
    from .rows import make_run
    (home / "runs").mkdir()
    make_run(tiny_model_dir, RUN_ID, runs_root=home / "runs")
    with running_app(home, tiny_model_dir) as server:
        yield server


@contextmanager
def open_page(browser, app: AppServer, height: int = 1000, **context_args):
    """A page on `app` at 1400 px wide, once the Train tab has drawn."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": height}, **context_args)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        pg = context.new_page()
        pg.goto(app.url)
        pg.locator("#train-start").wait_for()
        yield pg
    finally:
        context.close()


def expect(locator):
    """playwright's expect with the TIMEOUT_MS ceiling rather than its default 5 s: on a busy
    2-core machine (CI beside other work) a page that is right took longer than 5 s to say
    a run "Started". A passing check returns as soon as it holds."""
    from playwright.sync_api import expect as _expect
    _expect.set_options(timeout=TIMEOUT_MS)
    return _expect(locator)


def wait_until(check, what, ceiling_ms: int = TIMEOUT_MS, page=None):
    """Call `check()` until it returns something truthy, and return that. `what` (a string,
    or a function giving one, called on failure) says what never happened. The ceiling
    only guards against a hang: the wait ends as soon as `check()` holds. With `page`, the
    pause between checks is the page's own (playwright keeps serving its events)."""
    deadline = time.monotonic() + ceiling_ms / 1000
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {ceiling_ms / 1000:.0f} s: {what() if callable(what) else what}")
        if page is not None:
            page.wait_for_timeout(200)
        else:
            time.sleep(0.2)
    return got


def new_context(browser, **context_args):
    """A browser context at 1400 px wide whose actions wait up to TIMEOUT_MS."""
    context = browser.new_context(**({"viewport": {"width": 1400, "height": 1000}} | context_args))
    context.set_default_timeout(TIMEOUT_MS)
    return context


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def row_cell(page, text: str):
    """The visible table cell holding `text` (the Dataframe also renders hidden copies)."""
    return page.locator("#runs-table").get_by_text(text, exact=True).filter(visible=True).first


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, text: str) -> None:
    """Choose the option holding `text` in the dropdown `elem_id`."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=re.compile(re.escape(text))).first.click()


def send(page, text: str, turn: int = 1, note: str = "Vote below") -> None:
    """Send an arena prompt and wait until both answers to this turn are complete."""
    page.locator("#arena-prompt textarea").fill(text)
    page.locator("#arena-send").click()
    expect(page.locator("#arena-status")).to_contain_text(f"Turn {turn}: ", timeout=TRAIN_MS)
    expect(page.locator("#arena-status")).to_contain_text(note)


def labels(app: AppServer) -> list[dict]:
    """Every row of the app's label store, oldest first."""
    with sqlite3.connect(app.home / "labels.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM labels ORDER BY id")]


def fetch(app: AppServer, href: str) -> bytes:
    """The body behind a link in the page (Gradio's file links may be relative)."""
    url = href if href.startswith("http") else app.url.rstrip("/") + href
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()
