"""What the benchmarks that drive the app share: a free port, the app in a process of its
own (started, killed, ended with the runs it started), and a run's first step awaited.
bench_app, ui_latency, label_crash and bench_workshop import it; it imports none of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app.py` in a workspace of its own (TUNELAB_HOME `home`, no standby), in its own
    process group: start() returns the seconds until it answered, kill() SIGKILLs the group."""

    def __init__(self, home: Path, port: int):
        self.home, self.port, self.proc = home, port, None
        self.url = f"http://127.0.0.1:{port}/"
        self.up = threading.Event()

    def start(self) -> float:
        env = os.environ | {"TUNELAB_HOME": str(self.home), "TUNELAB_PORT": str(self.port), "TUNELAB_STANDBY": "0",
                            "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("TUNELAB_HOST", None)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    self.up.set()
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.1)
        raise SystemExit("app.py did not start")

    def kill(self) -> None:
        self.up.clear()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def stop_app(proc: subprocess.Popen, home: Path) -> None:
    """End the app and any training process it started in `home`."""
    for status in (home / "runs").glob("*/status.json"):
        pid = json.loads(status.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def steps_done(home: Path) -> int:
    """The highest step any run in the workspace `home` has reported."""
    steps = 0
    for events in (home / "runs").glob("*/events.jsonl"):
        for line in events.read_text().splitlines():
            e = json.loads(line)
            if e.get("type") == "step":
                steps = max(steps, e.get("step", 0))
    return steps


def wait_for_step(home: Path, timeout: float) -> None:
    """Return once a run in `home` has made its first step; exit the benchmark after `timeout` s."""
    t0 = time.perf_counter()
    while steps_done(home) < 1:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("the training run did not reach its first step")
        time.sleep(0.5)
