"""The app in a real browser: Debian's Chromium driven by Python playwright.

The module starts `python app.py` on a free port with a throwaway workspace and the
tiny test model, then does what a user does: upload a dataset, start a LoRA run on it,
watch the progress bar and the loss chart move, stop it, run a short one to the end,
find both in the Runs table after a page reload and after an app restart, download an
adapter, delete a run. Screenshots of each tab go to test-artifacts/.

Chromium comes from the distribution (`apt-get install -y chromium`), never from
`playwright install`. Without it these tests skip, except under CI=true, where they fail.
The tests share one app; each opens a page of its own. The two LoRA runs that several
tests look at (one stopped early, one trained to the end) are made once, through the
page, by the `lora_runs` fixture, so each test passes alone and in any order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .browser_kit import (TRAIN_MS, expect, open_page, pick, row_cell, running_app, set_number,  # noqa: F401
                          shot, tab, wait_until, write_run)
from .rows import SFT_ROWS, write_jsonl

PIRATE = "pirate-rows.jsonl"   # the SFT rows the two LoRA runs train on, put in the app's data folder


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app-home"), tiny_model_dir) as server:
        (server.home / "data").mkdir(exist_ok=True)
        write_jsonl(server.home / "data" / PIRATE, SFT_ROWS)
        yield server


@pytest.fixture
def page(browser, app):
    with open_page(browser, app) as pg:
        yield pg


def start_lora(page, max_steps: int) -> None:
    """Start a LoRA run on the pirate rows (batch 4, 64 tokens) from the Train tab."""
    tab(page, "Train")
    pick(page, "f-data-train", PIRATE)
    expect(page.locator("#f-data-train input")).to_have_value(re.compile(re.escape(PIRATE)))
    expect(page.locator("#train-estimate")).to_contain_text("trainable parameters")
    set_number(page, "f-train-max-steps", max_steps)
    set_number(page, "f-train-batch-size", 4)
    set_number(page, "f-train-max-length", 64)
    expect(page.locator("#train-start")).to_be_enabled()
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")


@pytest.fixture(scope="module")
def lora_runs(browser, app) -> dict:
    """Two LoRA runs made through the page, the same but for max_steps: "stopped", started
    for 2000 steps, watched (progress, loss chart, ETA) and stopped; "finished", 4 steps
    trained to the end. {role: run id}."""
    runs = {}
    with open_page(browser, app) as page:
        start_lora(page, 2000)
        progress = page.locator("#train-progress")
        expect(progress).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TRAIN_MS)
        runs["stopped"] = page.locator("#train-progress .tl-run").inner_text().strip()
        line = page.locator("#chart-loss .scatterlayer .trace path.js-line").first
        expect(line).to_be_attached()
        before = line.get_attribute("d")
        wait_until(lambda: line.get_attribute("d") != before, "the loss chart redrawn as steps arrive",
                   TRAIN_MS, page=page)
        expect(progress).to_contain_text("ETA")
        shot(page, "train-tab-running")
        page.locator("#train-stop").click()
        expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "stopped",
                                                                                timeout=TRAIN_MS)
        expect(progress).to_contain_text("Stopped")

        start_lora(page, 4)
        expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "finished",
                                                                                timeout=TRAIN_MS)
        runs["finished"] = page.locator("#train-progress .tl-run").inner_text().strip()
        expect(progress).to_contain_text("step 4 / 4")
        shot(page, "train-tab-finished")
    return runs


def test_upload_a_dataset(page, app, tmp_path):
    tab(page, "Data")
    upload = Path(write_jsonl(tmp_path / "my pirate data.jsonl", SFT_ROWS))
    page.locator("#data-upload input[type=file]").set_input_files(str(upload))
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text(f"Saved as {app.home / 'data' / 'my-pirate-data.jsonl'}")
    expect(summary).to_contain_text("my-pirate-data.jsonl")  # a sanitised name
    expect(summary).to_contain_text(str(len(SFT_ROWS)))
    expect(page.locator("#data-preview")).to_contain_text("What is 1 plus 2?")
    expect(page.locator("#data-preview")).to_contain_text("Arr, 1 plus 2 be 3, matey!")
    expect(page.locator("#data-hist .js-plotly-plot")).to_be_visible()
    saved = app.home / "data" / "my-pirate-data.jsonl"
    assert saved.read_bytes() == upload.read_bytes()
    shot(page, "data-tab")

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"nope": 1}\n')
    page.locator("#data-upload input[type=file]").set_input_files(str(bad))
    expect(summary).to_contain_text("broken.jsonl")
    expect(page.locator("#data-summary .tl-msg-error")).to_be_visible()
    assert not (app.home / "data" / "broken.jsonl").exists()

    tab(page, "Train")   # the good upload became the Train tab's dataset; the broken one did not
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("my-pirate-data.jsonl"))


def test_start_watch_and_stop_a_lora_run(lora_runs, app):
    """The page showed steps, a moving loss chart and an ETA, then Stop (in `lora_runs`):
    the run stopped part way, saved."""
    status = json.loads((app.home / "runs" / lora_runs["stopped"] / "status.json").read_text())
    assert status["status"] == "stopped" and 0 < status["step"] < 2000


def test_a_short_run_finishes(lora_runs, app):
    assert lora_runs["finished"] != lora_runs["stopped"]
    status = json.loads((app.home / "runs" / lora_runs["finished"] / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4


def test_method_switch_and_errors_in_the_page(page, app):
    runs_dir = app.home / "runs"
    runs_before = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []
    estimate = page.locator("#train-estimate")
    expect(estimate).to_contain_text("trainable parameters")   # the LoRA estimate, drawn
    before = estimate.inner_text()
    page.locator("#f-method").get_by_text("dpo", exact=True).click()
    expect(page.locator("#f-dpo-beta")).to_be_visible()
    expect(page.locator("#f-lora-r")).to_be_visible()  # DPO trains LoRA adapters by default
    expect(page.locator("#f-qlora-quant-type")).to_be_hidden()
    # The dataset follows the method: DPO needs preference pairs.
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("concise_dpo.jsonl"))
    expect(estimate).not_to_have_text(before)  # pairs: twice the activations
    expect(estimate).to_contain_text("trainable parameters")
    shot(page, "train-tab-dpo")

    page.locator("#f-method").get_by_text("qlora", exact=True).click()
    expect(page.locator("#f-qlora-quant-type")).to_be_visible()
    expect(page.locator("#f-dpo-beta")).to_be_hidden()

    # A model folder outside the allowed ones is refused in the page, naming the field.
    model = page.locator("#f-model input")
    model.fill("/etc")
    model.press("Enter")
    page.locator("#train-start").click()
    expect(page.locator("#train-message .tl-msg-error")).to_contain_text("model: /etc is outside")
    set_number(page, "f-train-lr", -1)
    model.fill(app.model)
    model.press("Enter")
    page.locator("#train-start").click()
    expect(page.locator("#train-message .tl-msg-error")).to_contain_text("train.lr: must be > 0")
    assert (sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []) == runs_before  # nothing started

    # The same form as a command for a multi-GPU machine (errors shown the same way).
    page.get_by_text("Run this on a multi-GPU machine").click()
    page.locator("#train-multi-gpu-btn").click()
    expect(page.locator("#train-message .tl-msg-error")).to_contain_text("train.lr: must be > 0")
    set_number(page, "f-train-lr", 0.001)
    page.locator("#train-multi-gpu-btn").click()
    # The editor draws only the lines in view: the config's top (the launch line is tested in test_app_logic).
    expect(page.locator("#train-multi-gpu-cmd")).to_contain_text("cat > tunelab-qlora.yaml")
    expect(page.locator("#train-multi-gpu-cmd")).to_contain_text("method: qlora")
    page.get_by_text("Run this on a multi-GPU machine").click()   # closed again


def test_a_run_that_cannot_fit_is_refused_with_the_estimate_and_the_free_memory(page, app, bundled_model_dir):
    """Batch 100000 used to start (and be stopped by force minutes later). A batch is capped
    by the rows, so what cannot fit here is many long rows on the bundled model: 900
    rows of ~1000 tokens in one batch, hundreds of GB, far more than any test machine has."""
    link = app.home / "models" / "smollm2-135m-instruct"     # the session's converted copy: no conversion
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(bundled_model_dir).resolve(), target_is_directory=True)
    words = " ".join(["sea"] * 1000)
    write_jsonl(app.home / "data" / "long-rows.jsonl",
                [{"messages": [{"role": "user", "content": f"Tell tale {i}."},
                               {"role": "assistant", "content": words}]} for i in range(1000)])
    runs_dir = app.home / "runs"
    runs_before = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []
    page.reload()                                             # the Train tab lists the new file
    page.locator("#train-start").wait_for()
    model = page.locator("#f-model input")
    model.fill("smollm2-135m-instruct")
    model.press("Enter")
    page.locator("#f-data-train input").click()
    page.get_by_role("option", name=re.compile("long-rows.jsonl")).first.click()
    set_number(page, "f-train-batch-size", 100000)
    set_number(page, "f-train-max-length", 4096)
    estimate = page.locator("#train-estimate")
    expect(estimate).to_contain_text(re.compile(r"≈ \d+\.\d+ GB"))
    page.locator("#train-start").click()
    refused = page.locator("#train-message .tl-msg-error")
    expect(refused).to_contain_text("Not enough memory to start this run")
    # 1000 rows, 10% held out for eval (the tab's default): 900 in the one batch, padded to the longest row.
    expect(refused).to_contain_text(re.compile(r"needs about [\d,.]+ GB at its peak \(estimate, batch 900 × \d+ "
                                               r"tokens\), and [\d,.]+ [GM]B is RAM available"))
    expect(refused).to_contain_text("lower train.batch_size (100000, of which 900 rows fit in a batch)")
    expect(refused).to_contain_text("train.gradient_checkpointing")
    shot(page, "train-tab-refused-memory")
    assert (sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []) == runs_before   # none created


def _check_runs_table(page, runs: dict):
    tab(page, "Runs")
    table = page.locator("#runs-table")
    for run_id in runs.values():
        expect(table).to_contain_text(run_id)
    expect(table).to_contain_text("stopped")
    expect(table).to_contain_text("finished")


def test_runs_table_compare_and_download(page, app, lora_runs):
    _check_runs_table(page, lora_runs)
    page.reload()
    page.locator("#train-start").wait_for()
    _check_runs_table(page, lora_runs)

    # Click a row: it becomes the selected run and joins the comparison.
    row_cell(page, lora_runs["finished"]).click()
    expect(page.locator("#runs-details")).to_contain_text(lora_runs["finished"])
    expect(page.locator("#runs-cli")).to_contain_text("python -m tunelab train")
    row_cell(page, lora_runs["stopped"]).click()
    expect(page.locator("#runs-details")).to_contain_text(lora_runs["stopped"])
    expect(page.locator("#runs-diff")).to_contain_text("train.max_steps")
    expect(page.locator("#runs-diff tr.tl-diff")).to_have_count(1)  # only max_steps differs
    for run_id in lora_runs.values():  # one loss line each, named in the legend
        expect(page.locator("#runs-overlay .legend")).to_contain_text(run_id)
    expect(page.locator("#runs-resume")).to_be_enabled()  # a stopped run saved a checkpoint

    page.locator("#runs-dl-adapter").click()
    link = page.locator("#runs-download a[href]").first
    expect(link).to_have_attribute("href", re.compile(re.escape(f"{lora_runs['stopped']}-adapter.zip") + "$"))
    shot(page, "runs-tab")


def test_runs_survive_an_app_restart_and_delete_asks_first(page, app, lora_runs):
    doomed = write_run(app.home, "20260101-000000-lora-to-delete", model=True, status="stopped").name
    app.stop()
    app.start()
    page.goto(app.url)
    page.locator("#train-start").wait_for()
    _check_runs_table(page, lora_runs | {"doomed": doomed})

    row_cell(page, doomed).click()
    expect(page.locator("#runs-details")).to_contain_text(doomed)
    page.locator("#runs-delete").click()
    expect(page.locator("#runs-delete-yes")).to_be_visible()
    page.locator("#runs-delete-no").click()
    expect(page.locator("#runs-delete-yes")).to_be_hidden()
    assert (app.home / "runs" / doomed).is_dir()

    page.locator("#runs-delete").click()
    page.locator("#runs-delete-yes").click()
    expect(page.locator("#runs-message")).to_contain_text(f"Deleted {doomed}")
    expect(page.locator("#runs-table")).not_to_contain_text(doomed)
    for run_id in lora_runs.values():
        expect(page.locator("#runs-table")).to_contain_text(run_id)
    assert not (app.home / "runs" / doomed).exists()


def test_stop_right_after_start_ends_with_a_true_message(page, app):
    """Stop pressed while the run still loads (in a standby still importing, or loading the
    model): it ends at once as "cancelled", saying nothing was trained. It used to end
    "interrupted" with "stopped by force ... did not stop within the grace period" after 2 s,
    beside a message box that still said "Stopping…"."""
    tab(page, "Train")
    set_number(page, "f-train-max-steps", 30)
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    page.locator("#train-stop").click()              # enabled by Start: pressed at once
    state = page.locator("#train-progress [data-state]")
    expect(state).to_have_attribute("data-state", re.compile("cancelled|stopped|failed|interrupted"), timeout=TRAIN_MS)
    run_id = page.locator("#train-progress .tl-run").inner_text().strip()
    status = json.loads((app.home / "runs" / run_id / "status.json").read_text())
    log = app.home / "runs" / run_id / "train.log"
    why = (json.dumps(status), log.read_text(errors="replace")[-2000:] if log.exists() else "no train.log")
    progress, message = page.locator("#train-progress"), page.locator("#train-run-message")
    # A warm standby can reach the first step before the click lands: then it stops there,
    # saved. Either way the page says what really happened, and nothing calls it a crash.
    if status["status"] == "cancelled":
        truth = status["note"]
        assert truth.startswith("Stopped before the first training step; nothing was trained"), why
        assert status["step"] == 0 and not status.get("error"), why
    else:
        assert status["status"] == "stopped" and status["step"] >= 1, why
        truth = "Stopped — the model so far is saved"
    expect(state).to_have_attribute("data-state", status["status"])
    expect(progress).to_contain_text(truth)
    expect(message).to_contain_text(f"{run_id}: {truth}")    # "Stopping…" is replaced by the outcome
    expect(message).not_to_contain_text("Stopping")
    for wrong in ("Interrupted", "grace period", "killed or crashed"):
        expect(progress).not_to_contain_text(wrong)
    expect(page.locator("#train-start")).to_be_enabled()
    shot(page, "train-tab-stopped-at-start")
