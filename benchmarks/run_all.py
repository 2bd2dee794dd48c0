"""Every TuneLab benchmark, back to back on this machine, and one summary table.

    .venv/bin/python -m benchmarks.run_all          # ~20 min on 2 cores
    .venv/bin/python -m benchmarks.run_all --skip app

Runs, each in its own process, in this order:
  bench_train.py   training throughput against plain TRL scripts; full/LoRA/QLoRA/DPO side by side
  bench_chat.py    two arena panes on one base against a single plain generate stream
  bench_app.py     app start to a usable page, and Start to the first training step (Chromium)

then prints the targets of issue #6 with the measured figures and whether each was met,
and writes benchmarks/results/suite.json (each script also writes its own JSON beside it).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCRIPTS = {"train": "bench_train", "chat": "bench_chat", "app": "bench_app"}


def targets(train: dict | None, chat: dict | None, app: dict | None) -> list[dict]:
    rows = []

    def add(what, measured, target, met):
        rows.append({"what": what, "measured": measured, "target": target, "met": met})

    if train:
        v = train["verdicts"]
        if "sft_vs_trl_defaults" in v:
            x = v["sft_vs_trl_defaults"]
            add("LoRA SFT samples/s, tunelab / TRL defaults + bf16",
                f"{x['ratio']:.2f}x (final loss {x['loss'][0]:.2f} vs {x['loss'][1]:.2f})", ">= 2x (aim 3x)", x["met"])
        if "dpo_vs_trl_defaults" in v:
            x = v["dpo_vs_trl_defaults"]
            add("DPO pairs/s, tunelab / TRL defaults + bf16",
                f"{x['ratio']:.2f}x (final loss {x['loss'][0]:.2f} vs {x['loss'][1]:.2f})", ">= 1.5x", x["met"])
        if "memory_qlora_lt_lora_lt_full" in v:
            x = v["memory_qlora_lt_lora_lt_full"]
            add("peak memory QLoRA < LoRA < full", " < ".join(f"{mb:.0f}" for mb in x["mb"]) + " MB",
                "ordered", x["met"])
        m = train["medians"].get("sft_tunelab")
        if m:
            add("LoRA SFT model FLOP/s, share of the matmul peak", f"{m['pct_of_peak']:.0f}%", "reported", None)
    if chat:
        r = chat["ratio_together_vs_single"]
        alone = chat.get("one_pane_tokens_per_s")
        extra = f"; one pane alone {alone / chat['single_tokens_per_s']:.2f}x" if alone else ""
        add("arena: two panes together / one plain stream, tokens/s",
            f"{r:.2f}x (first token {max(chat['first_token_s']):.2f} s{extra})", ">= 1.5x", r >= 1.5)
    if app:
        add("app start to a usable page", f"{app['start_to_usable_s']:.1f} s", "< 10 s", app["start_to_usable_s"] < 10)
        add("Start to the first training step", f"{app['start_click_to_first_step_s']:.1f} s", "< 20 s",
            app["start_click_to_first_step_s"] < 20)
    return rows


def write_readme(ran: dict, rows: list[dict], reused: list[str] = ()) -> None:
    """The latest summary, between the suite markers of benchmarks/README.md."""
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
    if begin not in text or end not in text:
        return
    lines = [begin, "", f"### Latest run of `run_all.py`, {time.strftime('%Y-%m-%d')}", ""]
    if reused:
        lines += [f"({', '.join(SCRIPTS[n] for n in reused)}: figures of the run before, dated in their "
                  f"JSON; the rest measured in this run.)", ""]
    if "train" in ran:
        m = ran["train"]["machine"]
        lines += [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']} ({m['torch_threads']} "
                  f"threads, {m['cpu_capability']}), transformers {m['versions']['transformers']}, trl "
                  f"{m['versions']['trl']}, peft {m['versions']['peft']}; tunelab trains in {m['precision']}; "
                  f"matmul peak bf16 {m['peak_gflops']['bfloat16']:.0f} / fp32 "
                  f"{m['peak_gflops']['float32']:.0f} GFLOP/s.", ""]
    lines += ["| target | measured | goal | verdict |", "| --- | --- | --- | --- |"]
    for r in rows:
        verdict = "reported" if r["met"] is None else ("met" if r["met"] else "**missed**")
        lines.append(f"| {r['what']} | {r['measured']} | {r['target']} | {verdict} |")
    if "train" in ran:
        from . import bench_train
        lines += ["", bench_train.table(ran["train"])]
    lines += ["", end]
    head, rest = text.split(begin, 1)
    readme.write_text(head + "\n".join(lines) + rest.split(end, 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", default="", help="comma-separated: train, chat, app")
    ap.add_argument("--reuse", action="store_true",
                    help="for a skipped script, use its last results/<name>.json (the table says so)")
    a = ap.parse_args()
    skip = {s for s in a.skip.split(",") if s}
    t0 = time.perf_counter()
    ran, reused = {}, []
    for name, script in SCRIPTS.items():
        if name in skip:
            if a.reuse and (RESULTS / f"{name}.json").exists():
                ran[name] = json.loads((RESULTS / f"{name}.json").read_text())
                reused.append(name)
            continue
        print(f"\n=== {script} ===", flush=True)
        rc = subprocess.run([sys.executable, "-m", f"benchmarks.{script}"], cwd=ROOT).returncode
        if rc != 0:
            print(f"{script} failed (exit {rc}); its figures are left out", flush=True)
            continue
        ran[name] = json.loads((RESULTS / f"{name}.json").read_text())
    rows = targets(ran.get("train"), ran.get("chat"), ran.get("app"))
    print("\n=== summary ===")
    if "train" in ran:
        m = ran["train"]["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']} with {m['torch_threads']} "
              f"threads, CPU capability {m['cpu_capability']}, precision {m['precision']}, matmul peak "
              f"bf16 {m['peak_gflops']['bfloat16']:.0f} / fp32 {m['peak_gflops']['float32']:.0f} GFLOP/s")
    print("| target | measured | goal | verdict |\n| --- | --- | --- | --- |")
    for r in rows:
        verdict = "reported" if r["met"] is None else ("met" if r["met"] else "MISSED")
        print(f"| {r['what']} | {r['measured']} | {r['target']} | {verdict} |")
    if reused:
        print(f"(reused from an earlier run: {', '.join(reused)})")
    if rows:
        write_readme(ran, rows, reused)
    out = RESULTS / "suite.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "targets": rows, "total_s": time.perf_counter() - t0,
                               "ran": sorted(set(ran) - set(reused)), "reused": reused}, indent=1) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
