"""The app in a real browser: Debian's Chromium driven by Python playwright.

The module starts `python app.py` on a free port with a throwaway workspace and the
tiny test model, then does what a user does: upload a dataset, start a LoRA run on it,
watch the progress bar and the loss chart move, stop it, run a short one to the end,
find both in the Runs table after a page reload and after an app restart, download an
adapter, delete a run. Screenshots of each tab go to test-artifacts/.

Chromium comes from the distribution (`apt-get install -y chromium`), never from
`playwright install`. Without it these tests skip, except under CI=true, where they fail.
The tests run in file order and share one page and one app.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from .browser_kit import (TIMEOUT_MS, browser, expect, open_page, row_cell, running_app,  # noqa: F401 (fixture)
                          set_number, shot, tab)
from .rows import SFT_ROWS, write_jsonl

RUNS: dict[str, str] = {}  # role -> run id, filled as the tests go


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app-home"), tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def page(browser, app):
    with open_page(browser, app) as pg:
        yield pg




def test_upload_a_dataset(page, app, tmp_path):
    tab(page, "Data")
    upload = Path(write_jsonl(tmp_path / "my pirate data.jsonl", SFT_ROWS))
    page.locator("#data-upload input[type=file]").set_input_files(str(upload))
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text(f"Saved as {app.home / 'data' / 'my-pirate-data.jsonl'}", timeout=60_000)
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
    expect(summary).to_contain_text("broken.jsonl", timeout=30_000)
    expect(page.locator("#data-summary .tl-msg-error")).to_be_visible()
    assert not (app.home / "data" / "broken.jsonl").exists()


def test_start_watch_and_stop_a_lora_run(page, app):
    tab(page, "Train")
    # The upload is already selected in the Train tab's dataset picker.
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("my-pirate-data.jsonl"))
    expect(page.locator("#train-estimate")).to_contain_text("trainable parameters", timeout=30_000)
    set_number(page, "f-train-max-steps", 2000)
    set_number(page, "f-train-batch-size", 4)
    set_number(page, "f-train-max-length", 64)
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    progress = page.locator("#train-progress")
    expect(progress).to_contain_text(re.compile(r"step [1-9]\d* / 2000"), timeout=TIMEOUT_MS)
    RUNS["stopped"] = page.locator("#train-progress .tl-run").inner_text().strip()

    line = page.locator("#chart-loss .scatterlayer .trace path.js-line").first
    expect(line).to_be_attached(timeout=30_000)
    before = line.get_attribute("d")
    t0 = time.time()
    while line.get_attribute("d") == before:  # the chart redraws as steps arrive
        assert time.time() - t0 < 60, "the loss chart never updated"
        page.wait_for_timeout(500)
    expect(progress).to_contain_text("ETA")
    shot(page, "train-tab-running")

    page.locator("#train-stop").click()
    expect(page.locator("#train-progress [data-state]")).to_have_attribute("data-state", "stopped", timeout=60_000)
    expect(progress).to_contain_text("Stopped")
    status = json.loads((app.home / "runs" / RUNS["stopped"] / "status.json").read_text())
    assert status["status"] == "stopped" and 0 < status["step"] < 2000


def test_a_short_run_finishes(page, app):
    set_number(page, "f-train-max-steps", 4)
    expect(page.locator("#train-start")).to_be_enabled()
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started")
    state = page.locator("#train-progress [data-state]")
    expect(state).to_have_attribute("data-state", "finished", timeout=TIMEOUT_MS)
    RUNS["finished"] = page.locator("#train-progress .tl-run").inner_text().strip()
    assert RUNS["finished"] != RUNS["stopped"]
    expect(page.locator("#train-progress")).to_contain_text("step 4 / 4")
    shot(page, "train-tab-finished")


def test_method_switch_and_errors_in_the_page(page, app):
    estimate = page.locator("#train-estimate")
    before = estimate.inner_text()
    page.locator("#f-method").get_by_text("dpo", exact=True).click()
    expect(page.locator("#f-dpo-beta")).to_be_visible()
    expect(page.locator("#f-lora-r")).to_be_visible()  # DPO trains LoRA adapters by default
    expect(page.locator("#f-qlora-quant-type")).to_be_hidden()
    # The dataset follows the method: DPO needs preference pairs.
    expect(page.locator("#f-data-train input")).to_have_value(re.compile("concise_dpo.jsonl"))
    expect(estimate).not_to_have_text(before, timeout=30_000)  # pairs: twice the activations
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
    assert len(list((app.home / "runs").iterdir())) == 2  # nothing was started

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
    runs_before = sorted(p.name for p in (app.home / "runs").iterdir())
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
    expect(estimate).to_contain_text(re.compile(r"≈ \d+\.\d+ GB"), timeout=60_000)
    page.locator("#train-start").click()
    refused = page.locator("#train-message .tl-msg-error")
    expect(refused).to_contain_text("Not enough memory to start this run", timeout=60_000)
    # 1000 rows, 10% held out for eval (the tab's default): 900 in the one batch, padded to the longest row.
    expect(refused).to_contain_text(re.compile(r"needs about [\d,.]+ GB at its peak \(estimate, batch 900 × \d+ "
                                               r"tokens\), and [\d,.]+ [GM]B is RAM available"))
    expect(refused).to_contain_text("lower train.batch_size (100000, of which 900 rows fit in a batch)")
    expect(refused).to_contain_text("train.gradient_checkpointing")
    shot(page, "train-tab-refused-memory")
    assert sorted(p.name for p in (app.home / "runs").iterdir()) == runs_before   # no run was created
    page.reload()                                             # the next tests start from the defaults
    page.locator("#train-start").wait_for()


def _check_runs_table(page):
    tab(page, "Runs")
    table = page.locator("#runs-table")
    for run_id in RUNS.values():
        expect(table).to_contain_text(run_id, timeout=30_000)
    expect(table).to_contain_text("stopped")
    expect(table).to_contain_text("finished")


def test_runs_table_compare_and_download(page, app):
    _check_runs_table(page)
    page.reload()
    page.locator("#train-start").wait_for()
    _check_runs_table(page)

    # Click a row: it becomes the selected run and joins the comparison.
    row_cell(page, RUNS["finished"]).click()
    expect(page.locator("#runs-details")).to_contain_text(RUNS["finished"])
    expect(page.locator("#runs-cli")).to_contain_text("python -m tunelab train")
    row_cell(page, RUNS["stopped"]).click()
    expect(page.locator("#runs-details")).to_contain_text(RUNS["stopped"])
    expect(page.locator("#runs-diff")).to_contain_text("train.max_steps")
    expect(page.locator("#runs-diff tr.tl-diff")).to_have_count(1)  # only max_steps differs
    for run_id in RUNS.values():  # one loss line each, named in the legend
        expect(page.locator("#runs-overlay .legend")).to_contain_text(run_id)
    expect(page.locator("#runs-resume")).to_be_enabled()  # a stopped run saved a checkpoint

    page.locator("#runs-dl-adapter").click()
    link = page.locator("#runs-download a[href]").first
    expect(link).to_have_attribute("href", re.compile(re.escape(f"{RUNS['stopped']}-adapter.zip") + "$"),
                                   timeout=30_000)
    shot(page, "runs-tab")


def test_runs_survive_an_app_restart_and_delete_asks_first(page, app):
    app.stop()
    app.start()
    page.goto(app.url)
    page.locator("#train-start").wait_for()
    _check_runs_table(page)

    row_cell(page, RUNS["stopped"]).click()
    expect(page.locator("#runs-details")).to_contain_text(RUNS["stopped"])
    page.locator("#runs-delete").click()
    expect(page.locator("#runs-delete-yes")).to_be_visible()
    page.locator("#runs-delete-no").click()
    expect(page.locator("#runs-delete-yes")).to_be_hidden()
    assert (app.home / "runs" / RUNS["stopped"]).is_dir()

    page.locator("#runs-delete").click()
    page.locator("#runs-delete-yes").click()
    expect(page.locator("#runs-message")).to_contain_text(f"Deleted {RUNS['stopped']}")
    expect(page.locator("#runs-table")).not_to_contain_text(RUNS["stopped"])
    expect(page.locator("#runs-table")).to_contain_text(RUNS["finished"])
    assert not (app.home / "runs" / RUNS["stopped"]).exists()


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
    expect(state).to_have_attribute("data-state", re.compile("cancelled|stopped|failed|interrupted"),
                                    timeout=60_000)
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
