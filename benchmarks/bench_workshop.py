"""A workshop on one machine: N people chat in the arena at once, through the app's real HTTP interface.

    .venv/bin/python -m benchmarks.bench_workshop                    # N = 1, 8, 30, then 30 beside a training run
    .venv/bin/python -m benchmarks.bench_workshop --users 8 --turns 2
    .venv/bin/python -m benchmarks.bench_workshop --users 1 8 30 --train-users 30
    .venv/bin/python -m benchmarks.bench_workshop --share --users 6        # training beside chat, per arm
    .venv/bin/python -m benchmarks.bench_workshop --share split-nice0 --users 30 --turns 2

--share measures how a training run and the chat share the cores (issue #32): for each
arm of SHARE_ARMS (TUNELAB_TRAIN_CORES x TUNELAB_TRAIN_NICE), its own app: N people chat
without training; then the LoRA run trains alone for --solo-s seconds; then N people chat
beside it. Reported: the run's steps/s beside the chat against alone (from its step
events' times), and chat's p95 time to first token against without the run. Targets for
6 people: the run keeps >= 0.5 of its speed alone, the p95 stays within 1.5x.

`python app.py` runs in a throwaway workspace holding a LoRA run (a random non-zero
adapter on the bundled model, as in bench_chat.py). Each simulated person is a thread
with a gradio_client session of its own: they arrive over the first few seconds, then
each sends --turns prompts to the arena's Send (`/on_send`, the handler the page's
button calls), base on the left and the LoRA run on the right, at the page's default
decoding (temperature 0.2, top-p 0.9, 128 new tokens), reading each streamed update,
and thinks for a few seconds between turns. Per pane and turn, measured by the client:
time to first token (Send to the first text in the pane), tokens/s (the tokens the app
reports for the pane after those of its first text, over the time from its first text
to its last change: a pane that ends early is not charged for the other pane's longer
answer), and
whether the page ever said the chat was waiting in line. Per run: total tokens/s (every
pane's tokens over the run's wall time), errors, and the app's peak memory (its
process tree, sampled). With --train-users, the same for that many people while a LoRA
training run (the CLI, same workspace, at the lower CPU priority the app gives the runs
it starts) trains beside the app.

The ceiling (issue #36): before the app starts, the same benchmark run has the arena's
shared decode loop alone (no web server, no clients; `--bare-loop`, a fresh process) write
the 60 answers of 30 people's first turn at once (base and the LoRA run, the same prompts
and decoding), and reports its tokens/s. The 30-people room's delivered tokens/s is set
against that ceiling scaled by the cores the simulated people left the app
(1 - their CPU share): at a real workshop their browsers are elsewhere.

Targets for N = 30 without training (issues #18 and #36): delivered tokens/s >= 85 % of
the ceiling, p95 time to first token <= 3 s, the slowest pane >= 0.8x the median pane, no
errors, nothing in line longer than one answer, and total tokens/s >= 8x the N = 1 run of
this same session. Prints a table with the machine it
ran on and writes benchmarks/results/workshop.json (workshop_bf16.json when the arena's
models are bf16: TUNELAB_CHAT_DTYPE=auto on a CPU with native bf16, or bfloat16).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .appkit import App, free_port, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Tell me about the sea, and about ships that sail on it.",
    "How do I make a good cup of tea?",
    "Why is the sky blue?",
    "Give me three tips for learning a new language.",
    "What should I pack for a weekend hike?",
    "Explain what a neural network is to a ten-year-old.",
    "Write a short poem about autumn leaves.",
    "What are the benefits of regular exercise?",
    "How does a bicycle stay upright?",
    "Suggest a name for a friendly robot and say why.",
]
WAITING = "Waiting for a free slot"


def pane_text(value) -> str:
    """The last assistant message's text in a Chatbot value as gradio_client returns it."""
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, list) or not value:
        return ""
    last = value[-1]
    if last.get("role") != "assistant":
        return ""
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = str(content or "")
    return "" if text.strip() in ("", "…") else text


def count_tokens(text: str) -> int:
    """How many tokens the bundled model's tokenizer makes of a pane's text."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tunelab.modelio import loading
        _TOKENIZER = loading.load_tokenizer("smollm2-135m-instruct")
    return len(_TOKENIZER(text, add_special_tokens=False)["input_ids"])


_TOKENIZER = None


def chat_turn(client, prompt: str, left: str, right: str, seed: int) -> dict:
    """One Send through the app; what the client saw of it."""
    t0 = time.perf_counter()
    first: list[float | None] = [None, None]
    last: list[float | None] = [None, None]     # when the pane's text last changed
    seen, first_text = ["", ""], ["", ""]
    waited_from, waited = None, 0.0
    status = ""
    job = client.submit(prompt, left, right, False, "", 0.2, 0.9, 128, seed, api_name="/on_send")
    for out in job:
        now = time.perf_counter() - t0
        if isinstance(out[3], str) and out[3]:
            status = out[3]
            if WAITING in status and waited_from is None:
                waited_from = now
        for k in (0, 1):
            text = pane_text(out[1 + k])
            if text != seen[k]:
                seen[k], last[k] = text, now
            if first[k] is None and text:
                first[k], first_text[k] = now, text
                if waited_from is not None:
                    waited = max(waited, now - waited_from)
    end = time.perf_counter() - t0
    final = job.outputs()[-1] if job.outputs() else None
    if final and isinstance(final[3], str):
        status = final[3]
    counts = re.findall(r"([AB]): (\d+) tokens", status)
    tokens = {side: int(n) for side, n in counts}
    ok = len(tokens) == 2 and "tl-msg-info" in status and None not in first
    panes = []
    for k, side in enumerate("AB"):
        n = tokens.get(side, 0)
        span = last[k] - first[k] if first[k] is not None else None
        later = n - count_tokens(first_text[k])   # the tokens that came after the first text
        panes.append({"first_token_s": first[k], "tokens": n,
                      "tokens_per_s": later / span if span and later > 0 else None})
    return {"ok": ok, "seconds": end, "panes": panes, "waited_s": waited if waited_from is not None else None,
            "status": None if ok else re.sub(r"<[^>]+>", "", status)[:200]}


def chat_user(url: str, index: int, left: str, right: str, turns: int | None, think: tuple[float, float],
              out: list, errors: list, stop: threading.Event | None = None, arrive_s: float = 0.0) -> None:
    """One person in the arena: `turns` Sends (or until `stop`), thinking between them.
    A failed call (the app is down, say) is an error; the next turn reconnects."""
    from gradio_client import Client
    rng = random.Random(index)
    time.sleep(arrive_s)
    client, turn = None, 0
    while (turns is None or turn < turns) and not (stop and stop.is_set()):
        try:
            if client is None:
                client = Client(url, verbose=False, download_files=False)
                client.predict("base", "base", "arena", api_name="/on_refresh")   # as the page does on load
            result = chat_turn(client, PROMPTS[(index + turn) % len(PROMPTS)], left, right, seed=index)
            result["user"], result["turn"] = index, turn
            out.append(result)
            if not result["ok"]:
                errors.append(f"user {index} turn {turn}: {result['status']}")
        except Exception as e:  # noqa: BLE001 — counted, and the next turn starts a new session
            errors.append(f"user {index} turn {turn}: {type(e).__name__}: {e}"[:200])
            client = None
        turn += 1
        time.sleep(rng.uniform(*think))


def peak_memory(pid: int, stop: threading.Event, peak: list) -> None:
    import psutil
    while not stop.is_set():
        try:
            root = psutil.Process(pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak[0] = max(peak[0], rss)
        except psutil.Error:
            pass
        stop.wait(0.5)


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def run_users(app: App, users: int, turns: int, left: str, right: str, think: tuple[float, float]) -> dict:
    results, errors, peak, stop = [], [], [0], threading.Event()
    cpu0 = cpu_seconds(app.proc.pid), cpu_seconds(os.getpid())
    watcher = threading.Thread(target=peak_memory, args=(app.proc.pid, stop, peak), daemon=True)
    watcher.start()
    arrive = random.Random(users)
    threads = [threading.Thread(target=chat_user, daemon=True,
                                args=(app.url, i, left, right, turns, think, results, errors),
                                kwargs={"arrive_s": arrive.uniform(0, min(5.0, users * 0.2))}) for i in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    # This machine's cores also run the simulated people (their gradio clients): the share
    # of the cores each side used, since at a real workshop the clients are elsewhere.
    cores = (os.cpu_count() or 1) * wall
    app_cpu, client_cpu = cpu_seconds(app.proc.pid) - cpu0[0], cpu_seconds(os.getpid()) - cpu0[1]
    panes = [p for r in results for p in r["panes"]]
    firsts = [p["first_token_s"] for p in panes]
    speeds = [p["tokens_per_s"] for p in panes if p["tokens_per_s"]]
    waits = [r["waited_s"] for r in results if r["waited_s"] is not None]
    answers = [r["seconds"] for r in results if r["ok"]]
    return {"users": users, "turns": len(results), "errors": len(errors), "error_examples": errors[:3],
            "first_token_p50_s": pct(firsts, 0.5), "first_token_p95_s": pct(firsts, 0.95),
            "pane_tokens_per_s_min": min(speeds) if speeds else None,
            "pane_tokens_per_s_p50": pct(speeds, 0.5),
            "total_tokens_per_s": sum(p["tokens"] for p in panes) / wall, "wall_s": wall,
            "turns_in_line": len(waits), "longest_in_line_s": max(waits) if waits else 0.0,
            "shortest_answer_s": min(answers) if answers else None, "app_peak_mb": peak[0] / 2**20,
            "app_cpu_share": app_cpu / cores, "clients_cpu_share": client_cpu / cores}


TRAIN_SET = ["train.max_steps=2000", "train.eval_steps=0", "train.save_steps=0", "data.eval_fraction=0",
             "train.logging_steps=1"]


def start_trainer(env: dict | None = None) -> subprocess.Popen:
    """A LoRA run on the bundled model (configs/lora.yaml, 2000 steps, a step event each step,
    no evaluation or checkpoint to disturb the pace) in the workspace, at the priority the
    app gives the runs it starts (TUNELAB_TRAIN_NICE, in its own session and scheduling
    group), as when the instructor trains from the Train tab."""
    from tunelab.service import standby
    env = os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {})
    cmd = [sys.executable, "-m", "tunelab", "train", "configs/lora.yaml", "-q"]
    for s in TRAIN_SET:
        cmd += ["--set", s]

    def lower():
        os.environ.update(env)   # the child's copy: lower_priority reads TUNELAB_TRAIN_NICE
        standby.lower_priority()
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lower)


def step_times(home: Path) -> list[float]:
    """The wall time of every step event of the workspace's newest run."""
    runs = sorted((home / "runs").glob("*/events.jsonl"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    out = []
    for line in runs[-1].read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") == "step":
            out.append(ev["time"])
    return out


def steps_per_s(times: list[float], t0: float, t1: float) -> float | None:
    """Steps a second between wall times t0 and t1, from the step events inside the window."""
    inside = [t for t in times if t0 <= t <= t1]
    if len(inside) < 2:
        return None
    return (len(inside) - 1) / (inside[-1] - inside[0])


def wait_steps(home: Path, n: int, timeout: float) -> None:
    t0 = time.time()
    while len(step_times(home)) < n:
        if time.time() - t0 > timeout:
            raise SystemExit(f"the training run did not reach step {n} in {timeout:.0f} s")
        time.sleep(0.5)


SHARE_ARMS = {   # name: (TUNELAB_TRAIN_CORES, TUNELAB_TRAIN_NICE)
    "nice10-no-split": ("all", "10"),   # before: every core, at a lower priority
    "split-nice10": ("half", "10"),
    "split-nice0": ("half", "0"),
}


def share_run(arms: list[str], users: list[int], turns: int, think: tuple, solo_s: float) -> dict:
    """Training beside chat, one arm at a time (each its own app, its own trainer): the
    run's steps/s beside N people against the same run alone (every core, nothing else),
    and chat's time to first token and tokens/s against N people without training."""
    from .bench_chat import make_adapter_run
    out = {"solo_window_s": solo_s, "arms": {}}
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-share-"))
    os.environ["TUNELAB_HOME"] = str(home)
    run_id = make_adapter_run("20000101-000000-workshop-lora", seed=1)
    for arm in arms:
        cores_, nice = SHARE_ARMS[arm]
        env = {"TUNELAB_TRAIN_CORES": cores_, "TUNELAB_TRAIN_NICE": nice}
        os.environ.update(env)
        app = App(home, free_port())
        app.start()
        rows = {"arm": arm, "TUNELAB_TRAIN_CORES": cores_, "TUNELAB_TRAIN_NICE": nice, "chat": {}, "train": {}}
        try:
            run_users(app, 1, 1, "base", f"run:{run_id}", (0.0, 0.0))   # warm-up: loads the models
            for n in users:   # chat alone
                rows["chat"][n] = run_users(app, n, turns, "base", f"run:{run_id}", think)
                print(json.dumps({"arm": arm, "training": False, **rows["chat"][n]}), flush=True)
            trainer = start_trainer(env)
            try:
                wait_steps(home, 3, 600)
                t0 = time.time()
                time.sleep(solo_s)   # the run alone: nobody chats
                solo = steps_per_s(step_times(home), t0, time.time())
                rows["solo_steps_per_s"] = solo
                for n in users:
                    time.sleep(cpushare_hold() + 1)   # the run is back on every core
                    t0 = time.time()
                    r = run_users(app, n, turns, "base", f"run:{run_id}", think)
                    beside = steps_per_s(step_times(home), t0, time.time())
                    r.update(train_steps_per_s=beside, train_vs_solo=beside / solo if beside and solo else None,
                             ttft_p95_vs_alone=(r["first_token_p95_s"] / rows["chat"][n]["first_token_p95_s"]
                                                if r["first_token_p95_s"] and rows["chat"][n]["first_token_p95_s"]
                                                else None),
                             training_still_running=trainer.poll() is None)
                    rows["train"][n] = r
                    print(json.dumps({"arm": arm, "training": True, **r}), flush=True)
            finally:
                os.killpg(trainer.pid, 9)
                trainer.wait()
        finally:
            app.kill()
        out["arms"][arm] = rows
    return out


def cpushare_hold() -> float:
    from tunelab.common import cpushare
    return cpushare.CHAT_HOLD_S


def print_share(result: dict) -> None:
    print(f"\nmachine: {result['machine']}; training = configs/lora.yaml on the bundled model")
    print("arm | people | train steps/s alone | beside chat | x alone | TTFT p95 alone | beside training | x alone "
          "| pane tok/s p50 alone | beside training")
    for arm, rows in result["share"]["arms"].items():
        for n, r in rows["train"].items():
            c = rows["chat"][n]
            print(" | ".join([arm, str(n), f"{rows['solo_steps_per_s'] or 0:.3f}", f"{r['train_steps_per_s'] or 0:.3f}",
                              f"{r['train_vs_solo'] or 0:.2f}", f"{c['first_token_p95_s'] or 0:.2f} s",
                              f"{r['first_token_p95_s'] or 0:.2f} s", f"{r['ttft_p95_vs_alone'] or 0:.2f}",
                              f"{c['pane_tokens_per_s_p50'] or 0:.1f}", f"{r['pane_tokens_per_s_p50'] or 0:.1f}"]))
    for arm, rows in result["share"]["arms"].items():
        r6 = rows["train"].get("6")
        if r6:
            print(f"{arm}, 6 people: training keeps >= 0.5 of its solo speed: "
                  f"{'met' if (r6['train_vs_solo'] or 0) >= 0.5 else 'MISSED'} ({r6['train_vs_solo'] or 0:.2f}); "
                  f"chat p95 TTFT <= 1.5x without training: "
                  f"{'met' if (r6['ttft_p95_vs_alone'] or 9) <= 1.5 else 'MISSED'} ({r6['ttft_p95_vs_alone'] or 0:.2f}x)")


def bare_loop(people: int, run_id: str) -> dict:
    """The ceiling: the arena's shared decode loop alone (this process: no web server, no
    clients) writes `people`' first turns at once, base and the LoRA run, at the page's default
    decoding; total tokens over the wall time from submit to the last token."""
    from tunelab.arena.chat import BASE, Arena, Request, Sampling
    arena = Arena("smollm2-135m-instruct")
    requests = []
    for i in range(people):
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        sampling = Sampling(temperature=0.2, top_p=0.9, max_new_tokens=128, seed=i)
        requests += [Request(BASE, msgs, sampling), Request(f"run:{run_id}", msgs, sampling)]
    for _ in arena.stream(requests[:2]):   # warm-up: loads the base and the adapter
        pass
    t0 = time.perf_counter()
    for replies in arena.stream(requests):
        pass
    wall = time.perf_counter() - t0
    errors = [r.error for r in replies if r.error]
    firsts = sorted(r.first_token_s for r in replies if r.first_token_s is not None)
    return {"answers": len(requests), "tokens": sum(r.tokens for r in replies), "wall_s": wall,
            "tokens_per_s": sum(r.tokens for r in replies) / wall, "errors": len(errors),
            "first_token_p95_s": pct(firsts, 0.95)}


def ceiling(home: Path, people: int, run_id: str) -> dict:
    """`bare_loop` in a fresh process, as the app would be (no other thread's pools)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_workshop", "--bare-loop", str(people), run_id],
                         cwd=ROOT, env=os.environ | {"TUNELAB_HOME": str(home)}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch
    from tunelab.arena.chatdevice import chat_dtype
    return (f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}), arena dtype {str(chat_dtype('cpu')).split('.')[-1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, nargs="*", default=[1, 8, 30])
    ap.add_argument("--train-users", type=int, nargs="*", default=[30], help="the same beside a training run")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--think", type=float, nargs=2, default=[2.0, 6.0], metavar=("MIN", "MAX"))
    ap.add_argument("--share", nargs="*", choices=list(SHARE_ARMS), default=None,
                    help="measure how training and chat share the cores, arm by arm (all arms when none named): "
                         "--users sets the rooms (e.g. 6 30); writes benchmarks/results/workshop_share.json")
    ap.add_argument("--solo-s", type=float, default=60.0, help="--share: seconds the run trains alone")
    ap.add_argument("--bare-loop", nargs=2, metavar=("PEOPLE", "RUN_ID"), help=argparse.SUPPRESS)  # ceiling's process
    ap.add_argument("--no-ceiling", action="store_true", help="skip the bare loop's ceiling")
    a = ap.parse_args()
    if a.bare_loop:
        print(json.dumps(bare_loop(int(a.bare_loop[0]), a.bare_loop[1])), flush=True)
        return 0
    if a.share is not None:
        arms = a.share or list(SHARE_ARMS)
        count_tokens("")
        result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "turns_per_user": a.turns,
                  "think_s": a.think, "share": share_run(arms, a.users, a.turns, tuple(a.think), a.solo_s)}
        result = json.loads(json.dumps(result))   # room sizes as the JSON's keys (strings)
        path = ROOT / "benchmarks" / "results" / "workshop_share.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("machine") == result["machine"] and old.get("date") == result["date"]:
            # Another invocation of this session (other rooms, other arms): kept beside these.
            for arm, rows in old["share"]["arms"].items():
                new = result["share"]["arms"].setdefault(arm, rows)
                if new is not rows:
                    new["chat"] = rows["chat"] | new["chat"]
                    new["train"] = rows["train"] | new["train"]
        path.write_text(json.dumps(result, indent=1) + "\n")
        print_share(result)
        return 0
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-workshop-"))
    os.environ["TUNELAB_HOME"] = str(home)
    from .bench_chat import make_adapter_run

    run_id = make_adapter_run("20000101-000000-workshop-lora", seed=1)
    count_tokens("")   # the tokenizer, loaded before anyone is timed
    top_room = max(a.users, default=0)
    bare = None if a.no_ceiling or not top_room else ceiling(home, top_room, run_id)
    if bare:
        print(json.dumps({"bare_loop": bare}), flush=True)
    app = App(home, free_port())
    app.start()
    rows = []
    try:
        run_users(app, 1, 1, "base", f"run:{run_id}", (0.0, 0.0))   # warm-up: loads the models
        for n in a.users:
            rows.append({"training": False, **run_users(app, n, a.turns, "base", f"run:{run_id}", tuple(a.think))})
            print(json.dumps(rows[-1]), flush=True)
        for n in a.train_users or []:
            trainer = start_trainer()
            try:
                wait_for_step(home, 300)
                rows.append({"training": True, **run_users(app, n, a.turns, "base", f"run:{run_id}", tuple(a.think))})
                rows[-1]["training_still_running"] = trainer.poll() is None
                print(json.dumps(rows[-1]), flush=True)
            finally:
                os.killpg(trainer.pid, 9)
                trainer.wait()
    finally:
        app.kill()
    single = next((r["total_tokens_per_s"] for r in rows if r["users"] == 1 and not r["training"]), None)
    for r in rows:
        r["total_vs_single"] = r["total_tokens_per_s"] / single if single else None
    for r in rows:
        if bare and r["users"] == top_room and not r["training"]:
            # The cores the simulated people used are not the app's: compare with what was left.
            r["ceiling_tokens_per_s"] = bare["tokens_per_s"] * (1 - r["clients_cpu_share"])
            r["vs_ceiling"] = r["total_tokens_per_s"] / r["ceiling_tokens_per_s"]
        speeds = r["pane_tokens_per_s_min"], r["pane_tokens_per_s_p50"]
        r["slowest_vs_median_pane"] = speeds[0] / speeds[1] if all(speeds) else None
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "turns_per_user": a.turns,
              "think_s": a.think, "bare_loop": bare, "runs": rows}
    from tunelab.arena.chatdevice import chat_dtype
    name = "workshop_bf16.json" if str(chat_dtype("cpu")).endswith("bfloat16") else "workshop.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=1) + "\n")

    print(f"\nmachine: {result['machine']}; {a.turns} turns a person, base vs a LoRA run, 128 new tokens")
    if bare:
        print(f"ceiling: the bare loop wrote {bare['answers']} answers at {bare['tokens_per_s']:.1f} tokens/s "
              f"({bare['errors']} errors)")
    head = ("people", "training", "TTFT p50", "TTFT p95", "pane tok/s min", "p50", "total tok/s", "x single",
            "errors", "in line", "app MB", "CPU app / clients")
    print(" | ".join(head))
    for r in rows:
        if r["first_token_p50_s"] is None:
            print(f"{r['users']} | {'yes' if r['training'] else 'no'} | no answer: {r['error_examples']}")
            continue
        print(" | ".join([str(r["users"]), "yes" if r["training"] else "no", f"{r['first_token_p50_s']:.2f} s",
                          f"{r['first_token_p95_s']:.2f} s", f"{r['pane_tokens_per_s_min'] or 0:.1f}",
                          f"{r['pane_tokens_per_s_p50'] or 0:.1f}", f"{r['total_tokens_per_s']:.1f}",
                          f"{r['total_vs_single'] or 0:.1f}", str(r["errors"]),
                          f"{r['turns_in_line']} ({r['longest_in_line_s']:.1f} s)", f"{r['app_peak_mb']:.0f}",
                          f"{r['app_cpu_share']:.0%} / {r['clients_cpu_share']:.0%}"]))
    top = next((r for r in rows if r["users"] == 30 and not r["training"]), None)
    if top and top["first_token_p95_s"] is not None:
        if "vs_ceiling" in top:
            print(f"N=30 delivered {top['total_tokens_per_s']:.1f} tokens/s = {top['vs_ceiling']:.0%} of the ceiling "
                  f"scaled to the cores the clients left ({top['ceiling_tokens_per_s']:.1f}); slowest pane "
                  f"{top['slowest_vs_median_pane'] or 0:.2f}x the median")
        checks = {"delivered >= 85% of the ceiling": top.get("vs_ceiling", 0) >= 0.85,
                  "p95 time to first token <= 3 s": top["first_token_p95_s"] <= 3,
                  "slowest pane >= 0.8x the median": (top["slowest_vs_median_pane"] or 0) >= 0.8,
                  "every pane >= 3 tokens/s": (top["pane_tokens_per_s_min"] or 0) >= 3,
                  "no errors": top["errors"] == 0,
                  "nothing in line longer than one answer": top["longest_in_line_s"] <= (top["shortest_answer_s"] or 0),
                  "total >= 8x single": (top["total_vs_single"] or 0) >= 8}
        for name, ok in checks.items():
            print(f"N=30 target {name}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
