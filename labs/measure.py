"""Run every lab once on the bundled model and write the measured table into labs/README.md.

    .venv/bin/python labs/measure.py                 # all labs (about 20 minutes on 2 cores)
    .venv/bin/python labs/measure.py --lab lora --sweep   # lab 2 and its rank sweep
    .venv/bin/python labs/measure.py --table-only    # rewrite the table from labs/results.json

Each run is `python -m tunelab train labs/<card>.yaml` in a fresh process (so peak memory
is that run's own), in a throwaway workspace (TUNELAB_HOME, default /tmp/tunelab-labs).
Its summary.json gives wall time, peak memory, trainable share and final loss; then the
base and the tuned model answer the lab's prompt greedily, side by side (tunelab.chat).
Results go to labs/results.json (merged by lab) and the table between the markers in
labs/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "labs" / "results.json"
README = ROOT / "labs" / "README.md"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
PROMPTS = {"dpo": "How many legs does a spider have?"}
DEFAULT_PROMPT = "How do I boil an egg?"


def train(card: Path, home: Path, overrides: list[str]) -> dict:
    env = os.environ | {"TUNELAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tunelab", "train", str(card), "-q"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{card.name} {overrides}: training failed:\n{p.stderr[-2000:]}")
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"run_dir": str(run_dir), "process_s": round(wall, 1), **summary}


def answers(run_id: str, prompt: str, home: Path) -> tuple[str, str]:
    os.environ["TUNELAB_HOME"] = str(home)
    from tunelab.chat import BASE, Arena, Request, Sampling
    msgs = [{"role": "user", "content": prompt}]
    s = Sampling(temperature=0.0, max_new_tokens=60)
    arena = Arena("smollm2-135m-instruct")
    replies = None
    for replies in arena.stream([Request(BASE, msgs, s), Request("run:" + run_id, msgs, s)]):
        pass
    for r in replies:
        if r.error:
            raise SystemExit(f"generation failed: {r.error}")
    return replies[0].text.strip(), replies[1].text.strip()


def machine() -> str:
    import torch
    return (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})")


def measure(lab, home: Path, sweep: bool) -> list[dict]:
    variants = [(lab.config.name or "", [])]
    if sweep and lab.sweep:
        variants += [(f"r={v}", [f"{lab.sweep['field']}={v}"]) for v in lab.sweep["values"]]
    rows = []
    for label, overrides in variants:
        print(f"lab {lab.number} ({lab.key}) {label} ...", flush=True)
        s = train(lab.path, home, overrides)
        before, after = answers(Path(s["run_dir"]).name, PROMPTS.get(lab.key, DEFAULT_PROMPT), home)
        rows.append({"lab": lab.number, "key": lab.key, "variant": label or "card", "overrides": overrides,
                     "minutes": round(s["wall_time_s"] / 60, 2), "process_minutes": round(s["process_s"] / 60, 2),
                     "peak_memory_mb": round(s["peak_memory_mb"]), "trainable_pct": s["trainable_pct"],
                     "trainable_params": s["trainable_params"], "output_size_mb": s.get("output_size_mb"),
                     "final_loss": s["final_loss"], "steps": s["steps"],
                     "prompt": PROMPTS.get(lab.key, DEFAULT_PROMPT), "before": before, "after": after})
        print(json.dumps(rows[-1], indent=1), flush=True)
    return rows


def table(results: dict) -> str:
    head = ["| lab | run | minutes | peak memory | trainable | saved | final loss | prompt → base → tuned |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines = []
    for row in sorted(results["rows"], key=lambda r: (r["lab"], r["variant"] != "card", r["trainable_params"])):
        clip = lambda t: t.replace("|", "/").replace("\n", " ")[:110] + ("…" if len(t) > 110 else "")  # noqa: E731
        lines.append(f"| {row['lab']} {row['key']} | {row['variant']} | {row['minutes']:.1f} | "
                     f"{row['peak_memory_mb']:,} MB | {row['trainable_pct']:.2f} % | {row['output_size_mb'] or 0:.1f} MB | "
                     f"{row['final_loss']:.3f} | *{clip(row['prompt'])}* → {clip(row['before'])} → "
                     f"**{clip(row['after'])}** |")
    note = (f"\nMeasured {results['date']} on {results['machine']}, bundled SmolLM2-135M-Instruct, "
            f"precision auto. Minutes are training wall time (model loading excluded; add ~15 s for the process). "
            f"Final loss is the last step's training loss: cross-entropy for SFT, the DPO loss for lab 4 "
            f"(ln 2 ≈ 0.693 before training). "
            f"Answers are greedy, 60 new tokens at most. Reproduce: `.venv/bin/python labs/measure.py --sweep`.\n")
    return "\n".join(head + lines) + "\n" + note


def write_table(results: dict) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(results) + text[end:], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", action="append", help="lab key or number (repeatable; default: all)")
    ap.add_argument("--sweep", action="store_true", help="also run each lab's sweep (lab 2's ranks)")
    ap.add_argument("--home", default="/tmp/tunelab-labs", help="throwaway workspace for the runs")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README table from results.json")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    if not args.table_only:
        from tunelab.labs import list_labs
        labs = [lab for lab in list_labs() if not args.lab or lab.key in args.lab or str(lab.number) in args.lab]
        home = Path(args.home)
        home.mkdir(parents=True, exist_ok=True)
        for lab in labs:
            rows = measure(lab, home, args.sweep)
            done = {(r["lab"], r["variant"]) for r in rows}
            results["rows"] = [r for r in results["rows"] if (r["lab"], r["variant"]) not in done] + rows
            results.update(date=time.strftime("%Y-%m-%d"), machine=machine())
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_table(results)
    print(table(results))


if __name__ == "__main__":
    main()
