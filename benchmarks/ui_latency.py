"""UI responsiveness with and without a training run: tab switches and label submits, in Chromium.

    .venv/bin/python -m benchmarks.ui_latency                 # ~5 min on 2 cores
    .venv/bin/python -m benchmarks.ui_latency --rounds 6 --labels 12

`python app.py` runs in a throwaway workspace (the bundled model already converted). With
Debian's Chromium driven by playwright, the script measures the same actions twice: with
the app idle, and while a LoRA run started from the Train tab (Start, as a user would)
is training.

  tab switch    a click on a main tab's button until its panel is visible, and, for the
                tabs that refresh themselves when opened (Data, Runs, Arena, Inside), until
                that refresh's reply has arrived (its `process_completed` message)
  label submit  in the Arena, a click on "A is better" until "Saved vote #n" is shown
                (each label is for a fresh two-model turn; generating it is not timed)
  Stop          at the end, a click on the Train tab's Stop until the page shows the run
                "stopped" (it finishes its step, saves a checkpoint and exits)

Times are taken inside the page (performance.now()): the click is made by the page's own
script, and a small wrapper around `fetch` notes when each queued event was sent and when
its completion arrived on Gradio's event stream. Prints the median and 95th percentile of
each action in both phases and their ratio, and writes benchmarks/results/ui_latency.json.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .appkit import free_port, stop_app

ROOT = Path(__file__).resolve().parents[1]
TABS = ["Train", "Data", "Runs", "Arena", "Labs", "Inside"]

# Notes each queue/join (its trigger and event id) and each process_completed message that
# arrives on the queue/data stream, with performance.now() times.
WATCH_EVENTS = r"""
(() => {
  const orig = window.fetch;
  window.__tl = {joins: [], done: {}};
  window.fetch = async function(input, init) {
    const url = typeof input === "string" ? input : input.url;
    const sent = performance.now();
    const resp = await orig.apply(this, arguments);
    if (url.includes("/queue/join")) {
      let body = {};
      try { body = JSON.parse(init && init.body || "{}"); } catch (e) {}
      resp.clone().json().then(j => window.__tl.joins.push(
        {trigger_id: body.trigger_id, fn_index: body.fn_index, event_id: j.event_id, sent}));
      return resp;
    }
    if (url.includes("/queue/data") && resp.body) {
      const [mine, theirs] = resp.body.tee();
      (async () => {
        const reader = mine.getReader(), dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += dec.decode(value, {stream: true});
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
            for (const line of chunk.split("\n")) {
              if (!line.startsWith("data:")) continue;
              try {
                const m = JSON.parse(line.slice(5));
                if (m.msg === "process_completed") window.__tl.done[m.event_id] = performance.now();
              } catch (e) {}
            }
          }
        }
      })();
      return new Response(theirs, {status: resp.status, statusText: resp.statusText, headers: resp.headers});
    }
    return resp;
  };
})();
"""


class App:
    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = os.environ | {"TUNELAB_HOME": str(home), "TUNELAB_PORT": str(self.port), "HF_HUB_OFFLINE": "1",
                            "GRADIO_ANALYTICS_ENABLED": "False"}
        for k in ("TUNELAB_DEFAULT_MODEL", "TUNELAB_HOST"):
            env.pop(k, None)
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() - t0 > 120:
                    raise SystemExit("app.py did not start")
                time.sleep(0.2)
        self.config = json.load(urllib.request.urlopen(self.url + "config"))

    def tab_ids(self) -> dict[str, int]:
        """Component id of each main tab (what a queue/join's trigger_id names)."""
        ids = {c.get("props", {}).get("elem_id"): c["id"] for c in self.config["components"]}
        return {name: ids[f"tab-{name.lower()}"] for name in TABS}

    def stop(self) -> None:
        stop_app(self.proc, self.home)


def switch_tab(page, name: str, trigger_id: int) -> dict:
    t0 = page.evaluate("""(name) => {
        const b = [...document.querySelectorAll('button[role=tab]')].find(x => x.textContent.trim() === name);
        const t = performance.now(); b.click(); return t; }""", name)
    handle = page.wait_for_function("""(id) => {
        const el = document.getElementById(id);
        return el && el.offsetParent !== null ? performance.now() : false; }""",
                                    arg=f"tab-{name.lower()}", polling="raf", timeout=60_000)
    out = {"tab": name, "visible_ms": handle.json_value() - t0}
    if name in ("Data", "Runs", "Arena", "Inside"):   # these refresh when opened
        done = page.wait_for_function("""([id, t0]) => {
            const j = window.__tl.joins.find(j => j.trigger_id === id && j.sent >= t0);
            return j && window.__tl.done[j.event_id] ? window.__tl.done[j.event_id] : false; }""",
                                      arg=[trigger_id, t0], polling=20, timeout=60_000)
        out["refreshed_ms"] = done.json_value() - t0
    return out


def submit_label(page, n: int) -> float:
    page.locator("#arena-clear").click()        # a fresh one-turn chat each time
    page.wait_for_function("() => !document.querySelector('#arena-status').textContent.includes('Vote below')",
                           timeout=60_000)
    page.locator("#arena-prompt textarea").fill(f"Name one colour. ({n})")
    page.locator("#arena-send").click()
    page.locator("#arena-status").filter(has_text="Vote below").wait_for(timeout=300_000)
    t0 = page.evaluate("() => { const t = performance.now(); document.querySelector('#arena-vote-a').click(); return t; }")
    done = page.wait_for_function("""(n) => {
        const m = document.querySelector('#arena-vote-msg');
        return m && m.textContent.includes('Saved vote #' + n) ? performance.now() : false; }""",
                                  arg=n, polling="raf", timeout=60_000)
    return done.json_value() - t0


def phase(page, tab_ids: dict, rounds: int, labels: int, first_label: int) -> dict:
    switches = []
    for _ in range(rounds):
        for name in TABS[1:] + TABS[:1]:
            switches.append(switch_tab(page, name, tab_ids[name]))
    switch_tab(page, "Arena", tab_ids["Arena"])
    votes = [submit_label(page, first_label + i) for i in range(labels)]
    return {"switches": switches, "label_ms": votes}


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": round(statistics.median(xs), 1),
            "p95_ms": round(xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))], 1)}


def summary(ph: dict) -> dict:
    sw = ph["switches"]
    return {"tab visible": stats([s["visible_ms"] for s in sw]),
            "tab refreshed (Data, Runs, Arena, Inside)": stats([s["refreshed_ms"] for s in sw if "refreshed_ms" in s]),
            "label submit": stats(ph["label_ms"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="passes over the six tabs in each phase")
    ap.add_argument("--labels", type=int, default=8, help="labels submitted in each phase")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from tunelab.modelio import models
    cache = Path(tempfile.gettempdir()) / "tunelab-bench-app-models"
    models.ensure_bundled(models.DEFAULT_MODEL, root=cache)
    home = Path(tempfile.mkdtemp(prefix="tunelab-ui-latency-"))
    (home / "models").mkdir()
    for d in cache.iterdir():
        (home / "models" / d.name).symlink_to(d)
    app = App(home)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores"}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.add_init_script(WATCH_EVENTS)
            page.goto(app.url)
            page.wait_for_function("() => { const b = document.querySelector('#train-start'); return b && !b.disabled; }",
                                   timeout=120_000)
            tab_ids = app.tab_ids()
            switch_tab(page, "Arena", tab_ids["Arena"])
            page.get_by_text("Sampling and system prompt").click()     # an accordion, closed at first
            page.locator("#arena-max-new input[type=number]").fill("16")
            page.locator("#arena-max-new input[type=number]").press("Enter")
            page.get_by_text("Sampling and system prompt").click()
            page.locator("#arena-annotator textarea, #arena-annotator input").first.fill("bench")
            submit_label(page, 1)   # loads the model into the arena; not counted
            idle = phase(page, tab_ids, a.rounds, a.labels, first_label=2)
            print("idle:", json.dumps(summary(idle)), flush=True)

            switch_tab(page, "Train", tab_ids["Train"])
            page.locator("#f-train-max-steps input").first.fill("2000")
            page.locator("#train-start").click()
            page.locator("#train-progress").filter(has_text=re.compile(r"step [1-9]\d* / ")).wait_for(timeout=300_000)
            training = phase(page, tab_ids, a.rounds, a.labels, first_label=2 + a.labels)
            switch_tab(page, "Train", tab_ids["Train"])
            steps = page.locator("#train-progress").inner_text()
            t0 = page.evaluate("() => { const t = performance.now(); document.querySelector('#train-stop').click(); return t; }")
            stopped = page.wait_for_function("""() => /stopped/i.test(document.querySelector('#train-progress').textContent)
                                                ? performance.now() : false""", polling=50, timeout=120_000)
            stop_s = (stopped.json_value() - t0) / 1000
            print("training:", json.dumps(summary(training)), f"Stop -> 'stopped' shown: {stop_s:.1f} s", flush=True)
            browser.close()
    finally:
        app.stop()
    result |= {"idle": summary(idle), "training": summary(training), "training_progress_at_end": steps,
               "stop_click_to_stopped_shown_s": round(stop_s, 2),
               "raw": {"idle": idle, "training": training}}
    out = ROOT / "benchmarks" / "results" / "ui_latency.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'action':44s} {'idle median / p95':>20s} {'training median / p95':>24s} {'ratio (median)':>15s}")
    for action in result["idle"]:
        i, t = result["idle"][action], result["training"][action]
        print(f"{action:44s} {i['median_ms']:>9.0f} / {i['p95_ms']:<6.0f} ms {t['median_ms']:>11.0f} / {t['p95_ms']:<6.0f} ms "
              f"{t['median_ms'] / i['median_ms']:>12.2f}x")
    print(f"Stop clicked -> the page shows 'stopped' (the run saved a checkpoint and exited): {stop_s:.1f} s")
    print(f"written: {out.relative_to(ROOT)}")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
