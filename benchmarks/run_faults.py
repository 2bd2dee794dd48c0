"""Runs survive faults: a training run is SIGKILLed again and again, then resumed each time.

    .venv/bin/python -m benchmarks.run_faults                 # bundled model, 8 kills (~5 min on 2 cores)
    .venv/bin/python -m benchmarks.run_faults --kills 12 --max-steps 48

In a throwaway workspace, one LoRA run of lab 2's config (the bundled model, pirate
data, train.save_steps small) trains without faults as the reference. The same config
then trains again while a killer sends its process group SIGKILL, many times.

Every kill comes once the run has at least one complete checkpoint: a run killed before
its first one is marked interrupted and not resumable (tests/test_cli.py), and is trained
again. The two kinds of moment:

  * "mid-save": the instant a new checkpoint folder appears and has no
    trainer_state.json yet (the Trainer writes that file last); whether the kill really
    landed mid-save is read back from the folder afterwards;
  * "random": a random moment 0-2 checkpoint intervals after the latest checkpoint,
    which lands in a step, in logging, or in a save.

After each kill the script checks what TuneLab reports (`run_status`: interrupted and
resumable) and resumes with `python -m tunelab resume`, as a user would. At the end it
checks that every resume started from the newest complete checkpoint, that the step
count went on from there to max_steps, and compares the faulted run's losses with the
reference's, step by step. Prints the figures, writes benchmarks/results/run_faults.json,
and exits 1 when a check fails. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunelab.training.events import read_events

ROOT = Path(__file__).resolve().parents[1]


def cli(home: Path, *args) -> subprocess.Popen:
    env = os.environ | {"TUNELAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab", *map(str, args), "-q"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def losses(events: list[dict]) -> dict[int, float]:
    """The loss of each step; a step trained twice (before a kill and after its resume)
    keeps its last value, as the Runs tab's chart does."""
    out = {}
    for e in events:
        if e["type"] == "step" and e.get("loss") is not None:
            out[e["step"]] = e["loss"]
    return out


def checkpoints(run_dir: Path) -> dict[int, bool]:
    """{step: complete} for each checkpoint folder."""
    ck = run_dir / "checkpoints"
    out = {}
    if ck.is_dir():
        for p in ck.glob("checkpoint-*"):
            out[int(p.name.split("-")[1])] = (p / "trainer_state.json").is_file()
    return out


def run_dir_of(proc: subprocess.Popen, home: Path, known=(), timeout: float = 120) -> Path:
    """The run folder the CLI just made (the one not in `known`)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        runs = [d for d in (home / "runs").glob("*") if d.is_dir() and d not in known] \
            if (home / "runs").is_dir() else []
        if runs:
            return runs[0]
        if proc.poll() is not None:
            raise SystemExit(f"training ended before it made a run folder: {proc.stderr.read()}")
        time.sleep(0.05)
    raise SystemExit("no run folder appeared")


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_and_kill(proc: subprocess.Popen, run_dir: Path, mode: str, interval_s: float) -> dict:
    """Kill the run at a moment of the given kind; return what was on disk then."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not any(checkpoints(run_dir).values()):
        time.sleep(0.02)  # a run killed before its first complete checkpoint has nothing to resume
    latest = max((s for s, ok in checkpoints(run_dir).items() if ok), default=0)
    if mode == "mid-save":
        while time.time() < deadline and proc.poll() is None:
            now = checkpoints(run_dir)
            fresh = [s for s, ok in now.items() if s > latest and not ok]
            if fresh:
                kill(proc)
                return {"mode": mode, "target": f"checkpoint-{fresh[0]}"}
            time.sleep(0.002)
    else:
        # The first complete checkpoint after this (re)start, then a random delay.
        while time.time() < deadline and proc.poll() is None and not any(
                ok and s > latest for s, ok in checkpoints(run_dir).items()):
            time.sleep(0.02)
        time.sleep(random.uniform(0, 2 * interval_s))
        if proc.poll() is None:
            kill(proc)
            return {"mode": mode, "target": None}
    return {"mode": mode, "target": None, "missed": "the run ended first"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=36)
    ap.add_argument("--save-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    random.seed(a.seed)
    import yaml

    from tunelab.training.runs import run_status  # reads TUNELAB_HOME at call time
    home = Path(tempfile.mkdtemp(prefix="tunelab-run-faults-"))
    os.environ["TUNELAB_HOME"] = str(home)
    lab = yaml.safe_load((ROOT / "labs" / "lab2_lora.yaml").read_text())["config"]
    lab["data"]["eval_fraction"] = 0.0
    lab["train"] |= {"max_steps": a.max_steps, "save_steps": a.save_steps, "eval_steps": 0, "logging_steps": 1}
    cfg = home / "faults.yaml"
    cfg.write_text(yaml.safe_dump(lab))

    t0 = time.time()
    ref = cli(home, "train", cfg)
    _, err = ref.communicate()
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed: {err}")
    ref_dir = run_dir_of(ref, home)
    ref_s = time.time() - t0
    ref_events = read_events(ref_dir)
    ref_losses = losses(ref_events)
    step_s = max(e["elapsed_s"] for e in ref_events if e["type"] == "step") / a.max_steps
    interval_s = step_s * a.save_steps

    proc = cli(home, "train", cfg)
    run_dir = run_dir_of(proc, home, known=(ref_dir,))
    kills, problems = [], []
    for k in range(a.kills):
        info = wait_and_kill(proc, run_dir, "mid-save" if k % 2 == 0 else "random", interval_s)
        if "missed" in info:
            print(f"kill {k + 1}: {info['missed']}; stopping with {k} kills")
            break
        st = run_status(run_dir)
        on_disk = checkpoints(run_dir)
        info |= {"status": st["status"], "resumable": st["resumable"], "step_at_kill": st.get("step"),
                 "newest_complete": max((s for s, ok in on_disk.items() if ok), default=None),
                 "half_written": sorted(s for s, ok in on_disk.items() if not ok)}
        if info["target"]:
            info["landed_mid_save"] = int(info["target"].split("-")[1]) in info["half_written"]
        if st["status"] != "interrupted" or not st["resumable"]:
            problems.append(f"kill {k + 1}: status {st['status']}, resumable {st['resumable']}")
        kills.append(info)
        print(f"kill {k + 1:2d} ({info['mode']:8s}) at step {info['step_at_kill']}: {st['status']}, "
              f"newest complete checkpoint {info['newest_complete']}, half-written {info['half_written']}")
        proc = cli(home, "resume", run_dir.name)
    out, err = proc.communicate()
    if proc.returncode != 0:
        problems.append(f"the last resume failed: {err.strip()[-300:]}")

    events = read_events(run_dir)
    resumes = [e for e in events if e["type"] == "resume"]
    for info, e in zip(kills, resumes):
        if e["step"] != info["newest_complete"]:
            problems.append(f"a resume started at step {e['step']}, not at the newest complete checkpoint "
                            f"{info['newest_complete']}")
    after_last = losses(events[events.index(resumes[-1]):]) if resumes else {}
    if resumes and sorted(after_last) != list(range(resumes[-1]["step"] + 1, a.max_steps + 1)):
        problems.append("the steps after the last resume do not run on to max_steps")
    final = run_status(run_dir)
    if final["status"] != "finished" or final.get("step") != a.max_steps:
        problems.append(f"the faulted run ended {final['status']} at step {final.get('step')}")
    got = losses(events)
    diffs = [abs(got[s] - ref_losses[s]) for s in ref_losses if s in got]
    tail = list(range(a.max_steps - 4, a.max_steps + 1))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
        "max_steps": a.max_steps, "save_steps": a.save_steps, "kills": len(kills),
        "kills_mid_save_attempted": sum(k["mode"] == "mid-save" for k in kills),
        "kills_landed_mid_save": sum(bool(k.get("landed_mid_save")) for k in kills),
        "kills_with_a_half_written_checkpoint_on_disk": sum(bool(k["half_written"]) for k in kills),
        "all_interrupted_and_resumable": all(k["status"] == "interrupted" and k["resumable"] for k in kills),
        "resumes": len(resumes), "final_status": final["status"], "final_step": final.get("step"),
        "steps_trained_twice": sum(max(0, k["step_at_kill"] - k["newest_complete"]) for k in kills
                                   if k["step_at_kill"] is not None and k["newest_complete"] is not None),
        "reference_final_loss": ref_losses.get(a.max_steps), "faulted_final_loss": got.get(a.max_steps),
        "reference_last5_mean": statistics.mean(ref_losses[s] for s in tail if s in ref_losses),
        "faulted_last5_mean": statistics.mean(got[s] for s in tail if s in got) if all(s in got for s in tail) else None,
        "max_abs_loss_diff_per_step": max(diffs) if diffs else None,
        "mean_abs_loss_diff_per_step": statistics.mean(diffs) if diffs else None,
        "reference_wall_s": round(ref_s, 1), "kill_log": kills, "problems": problems,
    }
    if result["faulted_last5_mean"] is not None and \
            abs(result["faulted_last5_mean"] - result["reference_last5_mean"]) > 0.1 * result["reference_last5_mean"]:
        problems.append("the faulted run's last losses are more than 10% from the reference's")
    (ROOT / "benchmarks" / "results" / "run_faults.json").write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result.items():
        if k != "kill_log":
            print(f"{k:45s} {v}")
    print("every kill left a resumable run; resumes continued the count and the loss" if not problems
          else "PROBLEMS: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
