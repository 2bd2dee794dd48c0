"""Labels survive crashes (and load): annotators label through the app's API while the app is killed.

    .venv/bin/python -m benchmarks.label_crash                   # 4 annotators, 8 kills (~1 min)
    .venv/bin/python -m benchmarks.label_crash --annotators 8 --kills 20
    .venv/bin/python -m benchmarks.label_crash --annotators 8 --kills 0 --seconds 30 --train
    .venv/bin/python -m benchmarks.label_crash --annotators 8 --kills 20 --chatters 30

`python app.py` runs in a throwaway workspace. Annotator threads send labels with
gradio_client, each with its own key, as fast as the app answers: A/B votes (`/add_label`)
and, every third label, a thumbs up or down on one answer (`/add_thumb`); a
killer sends the app's process group SIGKILL at random moments (every 1-4 s of uptime)
and starts it again. An annotator whose call fails (the app is down, or died mid-call)
sends the same label, same key, again once the app is back, as a real client would; a
label counts as acknowledged only when the call returned. At the end, with the app
stopped, the label database is checked: `PRAGMA integrity_check`, every acknowledged
key present exactly once (votes and thumbs alike), every row complete (its prompt parses,
its fields are set).
Prints the figures and writes benchmarks/results/label_crash.json; exits 1 if a label
was lost or duplicated or the database is damaged. Nothing here asserts a time.

With --kills 0 the app stays up for --seconds and every failed call is an error (counted,
with "database is locked" ones apart). --train runs a LoRA training (the CLI, same
workspace) the whole time, so the latencies are those of labelling beside a run.
--chatters N adds N people chatting in the arena the whole time (bench_workshop.py's
simulated users: base against a LoRA run, a few seconds' thought between turns,
reconnecting after each kill), so the labels go in while the app's decode loop is busy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .appkit import App, free_port, steps_done, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
SET = "crash-test"


def annotator(name: str, app: App, stop: threading.Event, acked: dict, attempts: list, latencies: list,
              errors: list) -> None:
    from gradio_client import Client
    client, i = None, 0
    while not stop.is_set():
        key = f"{name}-{i}"
        api = "/add_thumb" if i % 3 == 2 else "/add_label"
        if api == "/add_thumb":
            key = f"{name}-{i}-thumb"
            args = (SET, f"Question {i} from {name}?", f"Answer {i}", random.choice((True, False)), name, key)
        else:
            args = (SET, f"Question {i} from {name}?", f"Answer A {i}", f"Answer B {i}", random.choice("ab"), name, key)
        while not stop.is_set():
            if not app.up.wait(0.5):
                continue
            try:
                client = client or Client(app.url, verbose=False, download_files=False)
                attempts.append(key)
                t0 = time.perf_counter()
                out = client.predict(*args, api_name=api)
                latencies.append(time.perf_counter() - t0)
                acked[key] = out["id"]
                break
            except Exception as e:  # noqa: BLE001 — the app died or is starting: reconnect and send again
                errors.append(f"{type(e).__name__}: {e}"[:200])
                client = None
                time.sleep(0.2)
        i += 1


def check(db_path: Path, acked: dict) -> dict:
    db = sqlite3.connect(db_path)
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = db.execute("SELECT id, key, prompt, answer_a, answer_b, vote, annotator FROM labels WHERE set_name = ?",
                      (SET,)).fetchall()
    thumbs = db.execute("SELECT id, key, prompt, answer, up IN (0, 1), annotator FROM thumbs WHERE set_name = ?",
                        (SET,)).fetchall()
    db.close()
    rows += thumbs   # the keys never collide: a thumb's ends in "-thumb"
    by_key: dict[str, list] = {}
    incomplete = 0
    for r in rows:
        by_key.setdefault(r[1], []).append(r[0])
        try:
            ok = bool(json.loads(r[2])) and all(r[3:])
        except (TypeError, json.JSONDecodeError):
            ok = False
        incomplete += not ok
    lost = [k for k in acked if k not in by_key]
    duplicates = [k for k, ids in by_key.items() if len(ids) > 1]
    wrong_id = [k for k, i in acked.items() if k in by_key and by_key[k][0] != i]
    return {"integrity_check": integrity, "rows": len(rows), "thumbs": len(thumbs),
            "thumbs_acknowledged": sum(k.endswith("-thumb") for k in acked), "lost": len(lost),
            "duplicates": len(duplicates),
            "incomplete": incomplete, "ack_id_mismatch": len(wrong_id),
            "stored_but_not_acknowledged": len(set(by_key) - set(acked))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=4)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to label when --kills is 0")
    ap.add_argument("--train", action="store_true", help="a LoRA training runs beside the annotators")
    ap.add_argument("--chatters", type=int, default=0, help="people chatting in the arena the whole time")
    a = ap.parse_args()
    random.seed(a.seed)
    home = Path(tempfile.mkdtemp(prefix="tunelab-label-crash-"))
    app = App(home, free_port())
    starts = [app.start()]
    stop = threading.Event()
    acked: dict[str, int] = {}
    attempts: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []
    trainer = None
    if a.train:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "tunelab", "train", "configs/lora.yaml", "-q", "--set", "train.max_steps=500"],
            cwd=ROOT, env=os.environ | {"TUNELAB_HOME": str(home), "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_step(home, 180)
    threads = [threading.Thread(target=annotator, args=(f"ann{k}", app, stop, acked, attempts, latencies, errors),
                                daemon=True) for k in range(a.annotators)]
    chats: list[dict] = []
    chat_errors: list[str] = []
    if a.chatters:
        os.environ["TUNELAB_HOME"] = str(home)
        from .bench_chat import make_adapter_run
        from .bench_workshop import chat_user
        right = "run:" + make_adapter_run("20000101-000000-crash-lora", seed=1)
        threads += [threading.Thread(target=chat_user, daemon=True,
                                     args=(app.url, k, "base", right, None, (2.0, 6.0), chats, chat_errors),
                                     kwargs={"stop": stop, "arrive_s": random.uniform(0, 5)})
                    for k in range(a.chatters)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    try:
        for _ in range(a.kills):
            time.sleep(random.uniform(1.0, 4.0))
            app.kill()
            starts.append(app.start())
        time.sleep(2.0 if a.kills else a.seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        app.kill()
        training = None
        if trainer is not None:
            training = {"still_running_at_the_end": trainer.poll() is None, "steps_done": steps_done(home)}
            try:
                os.killpg(trainer.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            trainer.wait()
    result = {"date": time.strftime("%Y-%m-%d"), "annotators": a.annotators, "kills": a.kills,
              "seconds": round(time.perf_counter() - t0, 1), "calls_sent": len(attempts),
              "acknowledged": len(acked), "ack_median_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
              "ack_p95_ms": round(1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
              "restart_s_median": round(statistics.median(starts[1:]), 1) if len(starts) > 1 else None,
              "training": training, "failed_calls": len(errors),
              "chatters": a.chatters, "chat_turns_answered": sum(c["ok"] for c in chats),
              "chat_turns_failed": len(chat_errors),
              "database_locked_errors": sum("locked" in e for e in errors)}
    result |= check(home / "labels.db", acked)
    name = "label_crash" if a.kills else ("label_load_training" if a.train else "label_load")
    name += "_chatting" if a.chatters else ""
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result.items():
        print(f"{k:28s} {v}")
    bad = result["lost"] or result["duplicates"] or result["incomplete"] or result["ack_id_mismatch"] \
        or result["integrity_check"] != "ok" or result["database_locked_errors"] or (not a.kills and errors)
    print("no label lost, duplicated or damaged" if not bad else "LABELS WERE LOST OR DAMAGED, OR CALLS FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
