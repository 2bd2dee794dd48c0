"""A new user's whole loop, in a real browser, on data in a format no shipped lab uses.

One fresh app on the tiny test model and an empty workspace. The user uploads an
alpaca-format CSV, trains a LoRA run on it to the end, starts a second run and stops it
early, chats with the base and the run side by side, votes by key and by click, votes
blind over two turns, trains DPO on those labels, chats with the new DPO run, and
downloads the first run as an adapter zip and as a merged model. Each step leaves a
screenshot in test-artifacts/walk-*.png.

It is one story, so it is one test: each step below is a function that takes what the
steps before it made (the LoRA run, the DPO run), and the test runs them in order on
one page of one app. Run alone or in any order among other tests, it passes the same.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import pytest

from .browser_kit import (ARTIFACTS, TRAIN_MS, expect, fetch, labels, open_page, pick,  # noqa: F401
                          running_app, send, set_number, tab)

# Alpaca rows (instruction, optional input, output): the labs ship chat messages and
# prompt/chosen/rejected pairs, so this is a format they never exercise.
ROWS = [
    ("Translate to French", "cat", "chat"),
    ("Translate to French", "dog", "chien"),
    ("Translate to French", "bread", "pain"),
    ("Translate to French", "water", "eau"),
    ("Give the opposite", "hot", "cold"),
    ("Give the opposite", "up", "down"),
    ("Give the opposite", "early", "late"),
    ("Name a primary colour", "", "Red."),
    ("Name a planet", "", "Mars."),
    ("Say hello politely", "", "Hello, it is a pleasure to meet you."),
    ("Count to three", "", "One, two, three."),
    ("What is 2 plus 2?", "", "Four."),
]

pytestmark = pytest.mark.slow   # a minute or more: started first under -n (conftest.py)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("walk-home"), tiny_model_dir) as server:
        yield server


@pytest.fixture
def page(browser, app):  # noqa: F811
    with open_page(browser, app) as pg:
        yield pg


def test_a_new_users_whole_loop(page, app, tmp_path):
    upload_an_alpaca_csv(page, app, tmp_path)
    lora = train_a_lora_run_to_the_end(page, app)
    stop_a_second_run_early(page, app, lora)
    chat_and_vote_by_key_and_by_click(page, app, lora)
    blind_votes_hide_the_names_on_every_turn(page, app, lora)
    dpo = train_dpo_on_the_labels(page, app)
    the_dpo_run_answers_in_the_arena(page, app, dpo)
    download_the_adapter_the_merged_model_and_a_gguf(page, app, lora)


def shot(page, step: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"walk-{step}.png"), full_page=True)


def upload_an_alpaca_csv(page, app, tmp_path):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["instruction", "input", "output"])
    writer.writerows(ROWS)
    upload = tmp_path / "french and opposites.csv"
    upload.write_text(buf.getvalue(), encoding="utf-8")
    tab(page, "Data")
    page.locator("#data-upload input[type=file]").set_input_files(str(upload))
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text("alpaca")
    expect(summary).to_contain_text(str(len(ROWS)))
    expect(page.locator("#data-preview")).to_contain_text("chien")
    assert (app.home / "data" / "french-and-opposites.csv").is_file()
    shot(page, "01-upload")


def train_a_lora_run_to_the_end(page, app) -> str:
    tab(page, "Train")
    pick(page, "f-data-train", "french-and-opposites.csv")
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("french-and-opposites.csv"))
    expect(page.locator("#train-estimate")).to_contain_text("trainable parameters")
    set_number(page, "f-train-max-steps", 6)
    set_number(page, "f-train-batch-size", 4)
    set_number(page, "f-train-max-length", 64)
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    state = page.locator("#train-progress [data-state]")
    expect(state).to_have_attribute("data-state", "finished", timeout=TRAIN_MS)
    expect(page.locator("#train-progress")).to_contain_text("step 6 / 6")
    lora = page.locator("#train-progress .tl-run").inner_text().strip()
    status = json.loads((app.home / "runs" / lora / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 6
    shot(page, "02-trained")
    return lora


def stop_a_second_run_early(page, app, lora: str):
    set_number(page, "f-train-max-steps", 2000)
    expect(page.locator("#train-start")).to_be_enabled()
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    progress = page.locator("#train-progress")
    expect(progress).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TRAIN_MS)
    run_id = progress.locator(".tl-run").inner_text().strip()
    assert run_id != lora
    page.locator("#train-stop").click()
    expect(progress.locator("[data-state]")).to_have_attribute("data-state", "stopped", timeout=TRAIN_MS)
    expect(progress).to_contain_text("Stopped")
    status = json.loads((app.home / "runs" / run_id / "status.json").read_text())
    assert status["status"] == "stopped" and 0 < status["step"] < 2000
    shot(page, "03-stopped")


def chat_and_vote_by_key_and_by_click(page, app, lora: str):
    tab(page, "Arena")
    page.locator("#arena-prompt").wait_for()
    page.locator("#arena-refresh").click()
    page.locator("#arena-annotator textarea, #arena-annotator input").first.fill("walker")
    pick(page, "arena-right", lora)
    send(page, "Translate to French: cat", turn=1)
    expect(page.locator("#arena-chat-b")).to_contain_text(lora)   # not blind: names shown
    page.locator("#arena-status").click()   # out of the prompt box, as a user clicking the page
    page.keyboard.press("1")
    expect(page.locator("#arena-vote-msg")).to_contain_text("Saved vote #1")
    send(page, "Give the opposite: up", turn=2)
    page.locator("#arena-vote-b").click()
    expect(page.locator("#arena-vote-msg")).to_contain_text("Saved vote #2")
    rows = labels(app)
    assert [r["vote"] for r in rows] == ["a", "b"] and {r["annotator"] for r in rows} == {"walker"}
    shot(page, "04-votes")


def blind_votes_hide_the_names_on_every_turn(page, app, lora: str):
    page.locator("#arena-blind input").check()
    for turn, prompt in ((1, "Name a planet."), (2, "Count to three.")):
        send(page, prompt, turn=turn)
        shown = page.locator("#arena-chat-a").inner_text() + page.locator("#arena-chat-b").inner_text()
        assert lora not in shown and "· base" not in shown, f"names shown before the vote on turn {turn}"
        page.locator("#arena-status").click()
        page.keyboard.press("2")
        expect(page.locator("#arena-vote-msg")).to_contain_text(f"Saved vote #{2 + turn}")
        expect(page.locator("#arena-vote-msg")).to_contain_text(re.compile(r"A was .+, B was .+"))
    assert len(labels(app)) == 4
    shot(page, "05-blind")


def train_dpo_on_the_labels(page, app) -> str:
    page.get_by_role("tab", name="Labels & DPO").click()
    page.locator("#arena-dpo-steps input").fill("4")
    page.locator("#arena-dpo-start").click()
    expect(page.locator("#arena-dpo-msg")).to_contain_text("Started")
    progress = page.locator("#arena-dpo-progress")
    expect(progress).to_contain_text(re.compile("finished", re.I), timeout=TRAIN_MS)
    dpo = progress.locator(".tl-run").inner_text().strip()
    status = json.loads((app.home / "runs" / dpo / "status.json").read_text())
    assert status["status"] == "finished" and status["method"] == "dpo"
    shot(page, "06-dpo")
    return dpo


def the_dpo_run_answers_in_the_arena(page, app, dpo: str):
    page.get_by_role("tab", name="Side by side").click()
    page.locator("#arena-blind input").uncheck()
    pick(page, "arena-left", dpo)
    send(page, "Translate to French: dog", turn=1)
    expect(page.locator("#arena-chat-a")).to_contain_text(dpo)
    answer = page.locator("#arena-chat-a .message.bot, #arena-chat-a [data-testid=bot]").last.inner_text()
    assert answer.strip()
    shot(page, "07-dpo-in-arena")


def download_the_adapter_the_merged_model_and_a_gguf(page, app, lora: str):
    tab(page, "Runs")
    table = page.locator("#runs-table")
    expect(table).to_contain_text(lora)
    table.get_by_text(lora, exact=True).filter(visible=True).first.click()
    expect(page.locator("#runs-details")).to_contain_text(lora)
    link = page.locator("#runs-download a[href]").first
    for button, name, must_hold in (("#runs-dl-adapter", "adapter", "adapter_model.safetensors"),
                                    ("#runs-dl-merged", "merged", "model.safetensors"),
                                    ("#runs-dl-gguf", "gguf-q8_0", f"{lora}-q8_0.gguf")):
        page.locator(button).click()
        expect(link).to_have_attribute("href", re.compile(re.escape(f"{lora}-{name}.zip") + "$"))
        with zipfile.ZipFile(io.BytesIO(fetch(app, link.get_attribute("href")))) as z:
            names = [n.rsplit("/", 1)[-1] for n in z.namelist()]
        assert must_hold in names and "README.md" in names, names
    assert "Modelfile" in names   # the GGUF download: ready for `ollama create`
    expect(page.locator("#runs-message")).to_contain_text("MiB")
    shot(page, "08-downloads")
