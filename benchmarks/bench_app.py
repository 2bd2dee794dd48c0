"""App start and time to the first training step, as a user sees them in Chromium.

    .venv/bin/python -m benchmarks.bench_app            # ~2 min on 2 cores
    .venv/bin/python -m benchmarks.bench_app --repeats 5
    .venv/bin/python -m benchmarks.bench_app --before /tmp/old   # and an older checkout, alternately

Each repeat starts `python app.py` (the bundled model already converted in the workspace)
in a fresh throwaway workspace and measures, with Debian's Chromium driven by playwright:

  start → usable page   from starting the process to the Train tab's Start button being
                        visible and enabled in the browser
  Start → first step    from clicking Start (the tab's defaults: LoRA on the bundled
                        model and the pirate data) to the progress bar showing step 1

then stops the run and the app. TARGETS: the first under 10 s, the second under 20 s.
With `--before DIR` (a checkout of an earlier commit, e.g. `git worktree add /tmp/old REV`)
each repeat also starts that tree's app.py, alternating with this one, and the medians are
compared as a ratio: a change's effect on start-up, measured in one session.
Results go to benchmarks/results/app.json. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .appkit import free_port, stop_app

ROOT = Path(__file__).resolve().parents[1]


def one(browser, cache: Path, tree: Path = ROOT) -> dict:
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-app-"))
    (home / "models").mkdir()
    for d in cache.iterdir():  # the converted bundled model, as a returning user has it
        (home / "models" / d.name).symlink_to(d)
    port = free_port()
    env = os.environ | {"TUNELAB_HOME": str(home), "TUNELAB_PORT": str(port), "HF_HUB_OFFLINE": "1",
                        "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("TUNELAB_DEFAULT_MODEL", None)
    page = browser.new_page()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                served = time.perf_counter() - t0   # the server answered and the HTML loaded
                break
            except Exception:  # noqa: BLE001 — not listening yet
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise SystemExit("app.py did not start")
                time.sleep(0.1)
        start = page.locator("#train-start")
        start.wait_for(state="visible", timeout=60_000)
        page.wait_for_function("() => !document.querySelector('#train-start').disabled", timeout=60_000)
        usable = time.perf_counter() - t0
        t1 = time.perf_counter()
        start.click()
        page.locator("#train-progress").filter(has_text=re.compile(r"step [1-9]\d* / ")).wait_for(timeout=300_000)
        first_step = time.perf_counter() - t1
        page.locator("#train-stop").click()
        return {"start_to_usable_s": usable, "start_to_page_served_s": served,
                "start_click_to_first_step_s": first_step}
    finally:
        page.close()
        stop_app(proc, home)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", type=Path, help="an older checkout whose app is measured alternately, for a ratio")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from tunelab.modelio import models
    cache = Path(tempfile.gettempdir()) / "tunelab-bench-app-models"
    models.ensure_bundled(models.DEFAULT_MODEL, root=cache)  # converted once, outside the timings
    rows, before = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        for i in range(args.repeats):
            if args.before:
                before.append(one(browser, cache, args.before.resolve()))
                print(f"run {i + 1}, before: " + ", ".join(f"{k} {v:.1f}" for k, v in before[-1].items()), flush=True)
            rows.append(one(browser, cache))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1].items()), flush=True)
        browser.close()
    usable = statistics.median(r["start_to_usable_s"] for r in rows)
    first = statistics.median(r["start_click_to_first_step_s"] for r in rows)
    import torch
    machine = f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}"
    out = ROOT / "benchmarks" / "results" / "app.json"
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "runs": rows,
              "start_to_usable_s": usable, "start_click_to_first_step_s": first}
    print(f"machine: {machine}; median of {len(rows)}")
    if before:
        b_usable = statistics.median(r["start_to_usable_s"] for r in before)
        b_first = statistics.median(r["start_click_to_first_step_s"] for r in before)
        result["before"] = {"tree": str(args.before), "runs": before, "start_to_usable_s": b_usable,
                            "start_click_to_first_step_s": b_first}
        print(f"before ({args.before}): start -> usable page {b_usable:.1f} s, Start -> first step {b_first:.1f} s; "
              f"this tree takes {usable / b_usable:.2f}x and {first / b_first:.2f}x of that")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"start -> usable page:  {usable:5.1f} s  (target < 10 s: {'met' if usable < 10 else 'MISSED'})")
    print(f"Start -> first step:   {first:5.1f} s  (target < 20 s: {'met' if first < 20 else 'MISSED'})")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
