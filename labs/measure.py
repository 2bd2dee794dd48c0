"""Run every lab once on the bundled model, check its lesson, and write the measured table into labs/README.md.

    .venv/bin/python labs/measure.py                 # all labs (about 25 minutes on 2 cores)
    .venv/bin/python labs/measure.py --lab lora --sweep   # lab 2 and its rank sweep
    .venv/bin/python labs/measure.py --lab 2 --dry-run    # measure and print; write nothing
    .venv/bin/python labs/measure.py --table-only    # rewrite the table from labs/results.json

Each run is `python -m tunelab train labs/<card>.yaml` in a fresh process (so peak memory
is that run's own), in a throwaway workspace (TUNELAB_HOME, default /tmp/tunelab-labs).
Its summary.json gives wall time, peak memory, trainable share and final loss. Then the
card's check (tunelab/labcheck.py): the base and the tuned model answer the card's held-out
prompts with the same decoding, and both sets of answers are scored. Results go to
labs/results.json (merged by lab), the table between the markers in labs/README.md, and
the checked scores, as [base, tuned], into each card's `expected`.

A lab whose tuned model misses its check is a failing lab: the script says which lab and
which check, and exits with status 1 (after writing what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "labs" / "results.json"
README = ROOT / "labs" / "README.md"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"


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


def check(lab, run_id: str, arena, base_cache: dict) -> dict:
    """The card's check on a run: scores of base and tuned, what is missed, and the answers.
    The base answers each prompt set once per process (the same decoding every time)."""
    from tunelab import labcheck
    res = labcheck.run_check(run_id, lab.check, arena=arena, base_answers=base_cache.get(lab.check.prompts))
    base_cache[lab.check.prompts] = res["answers"]["base"]
    return {"rule": res["check"], "judged": res["judged"], "base": res["base"], "tuned": res["tuned"],
            "misses": res["misses"],
            "passes": not res["misses"], "sampling": res["sampling"],
            "answers": [{"prompt": p, "base": b["text"], "tuned": t["text"]}
                        for p, b, t in zip(res["prompts"], res["answers"]["base"], res["answers"]["tuned"])]}


def machine() -> str:
    import torch
    return (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})")


def measure(lab, home: Path, sweep: bool, arena, base_cache: dict) -> list[dict]:
    variants = [(lab.config.name or "", [])]
    if sweep and lab.sweep:
        variants += [(f"r={v}", [f"{lab.sweep['field']}={v}"]) for v in lab.sweep["values"]]
    rows = []
    for label, overrides in variants:
        print(f"lab {lab.number} ({lab.key}) {label} ...", flush=True)
        s = train(lab.path, home, overrides)
        c = check(lab, Path(s["run_dir"]).name, arena, base_cache)
        example = c["answers"][0]  # the held-out set's first prompt, shown in the table
        rows.append({"lab": lab.number, "key": lab.key, "variant": label or "card", "overrides": overrides,
                     "minutes": round(s["wall_time_s"] / 60, 2), "process_minutes": round(s["process_s"] / 60, 2),
                     "peak_memory_mb": round(s["peak_memory_mb"]), "trainable_pct": s["trainable_pct"],
                     "trainable_params": s["trainable_params"], "output_size_mb": s.get("output_size_mb"),
                     "final_loss": s["final_loss"], "steps": s["steps"],
                     "prompt": example["prompt"], "before": example["base"], "after": example["tuned"], "check": c})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "check"} | {"check": {
            k: v for k, v in c.items() if k != "answers"}}, indent=1), flush=True)
    return rows


def failures(rows: list[dict]) -> list[str]:
    """One line per card run that misses its check (sweep variants are comparisons, not
    verdicts), e.g. "lab 4 (dpo): words ≤ 30, facts ≥ 60 %: tuned facts 25 % is below 60 %"."""
    out = []
    for r in sorted(rows, key=lambda r: r["lab"]):
        if r["variant"] != "card":
            continue
        c = r.get("check")
        if not c:
            out.append(f"lab {r['lab']} ({r['key']}): no check measured; run labs/measure.py --lab {r['key']}")
        elif c["misses"]:
            out.append(f"lab {r['lab']} ({r['key']}): {c['rule']}: {'; '.join(c['misses'])}")
    return out


def check_cell(c: dict | None) -> tuple[str, str]:
    """("style 0 % → 92 %", "✓") for the table; "—" for a row measured before the checks."""
    if not c:
        return "—", "—"
    from tunelab.labcheck import fmt_score
    scores = ", ".join(f"{m} {fmt_score(m, c['base'].get(m))} → {fmt_score(m, c['tuned'].get(m))}"
                       for m in c["judged"])
    return scores, "✓" if c["passes"] else "✗ " + "; ".join(c["misses"])


def table(results: dict) -> str:
    head = ["| lab | run | minutes | peak memory | trainable | saved | final loss | check: base → tuned | passes "
            "| prompt → base → tuned |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    lines = []
    for row in sorted(results["rows"], key=lambda r: (r["lab"], r["variant"] != "card", r["trainable_params"])):
        clip = lambda t: t.replace("|", "/").replace("\n", " ")[:110] + ("…" if len(t) > 110 else "")  # noqa: E731
        scores, verdict = check_cell(row.get("check"))
        lines.append(f"| {row['lab']} {row['key']} | {row['variant']} | {row['minutes']:.1f} | "
                     f"{row['peak_memory_mb']:,} MB | {row['trainable_pct']:.2f} % | "
                     f"{row['output_size_mb'] or 0:.1f} MB | {row['final_loss']:.3f} | {scores} | {verdict} | "
                     f"*{clip(row['prompt'])}* → {clip(row['before'])} → **{clip(row['after'])}** |")
    s = next((r["check"]["sampling"] for r in results["rows"] if r.get("check")), None)
    how = "Answers are greedy, 60 new tokens at most"  # rows measured before the checks
    if s:
        how = (f"Answers are base and tuned decoded alike: temperature {s['temperature']:g}, top-p {s['top_p']:g}, "
               f"seed {s['seed']}, {s['max_new_tokens']} new tokens at most")
    note = (f"\nMeasured {results['date']} on {results['machine']}, bundled SmolLM2-135M-Instruct, "
            f"precision auto. Minutes are training wall time (model loading excluded; add ~15 s for the process). "
            f"Final loss is the last step's training loss: cross-entropy for SFT, the DPO loss for lab 4 "
            f"(ln 2 ≈ 0.693 before training). {how}. The check scores each card's held-out prompts "
            f"(`labs/heldout/`, `tunelab/labcheck.py`): ✓ when the tuned model meets every threshold of the card "
            f"and the base misses one; only the card's own run is a verdict, the sweep rows compare. "
            f"Reproduce: `.venv/bin/python labs/measure.py --sweep`.\n")
    return "\n".join(head + lines) + "\n" + note


def write_table(results: dict) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(results) + text[end:], encoding="utf-8")


def write_expected(card: Path, row: dict) -> None:
    """Put the checked scores, as [base, tuned], into the card's one-line `expected:` map,
    keeping its other fields and every other line (and comment) of the card as it is."""
    text = card.read_text(encoding="utf-8")
    found = re.search(r"^expected: (\{.*\})$", text, re.MULTILINE)
    if not found:
        raise SystemExit(f"{card.name}: expected must stay a one-line {{...}} map for measure.py to update it")
    exp = yaml.safe_load(found.group(1))
    c = row["check"]
    for m in c["judged"]:
        exp[m] = [round(c["base"][m], 2), round(c["tuned"][m], 2)]
    line = "expected: " + yaml.safe_dump(exp, default_flow_style=True, sort_keys=False, width=1000).strip()
    card.write_text(text[:found.start()] + line + text[found.end():], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", action="append", help="lab key or number (repeatable; default: all)")
    ap.add_argument("--sweep", action="store_true", help="also run each lab's sweep (lab 2's ranks)")
    ap.add_argument("--home", default="/tmp/tunelab-labs", help="throwaway workspace for the runs")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README table from results.json")
    ap.add_argument("--dry-run", action="store_true", help="measure and print the table; write no file")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    measured = results["rows"]
    if not args.table_only:
        from tunelab.chat import Arena
        from tunelab.labs import list_labs
        os.environ["TUNELAB_HOME"] = str(Path(args.home))  # the arena finds the runs there
        labs = [lab for lab in list_labs() if not args.lab or lab.key in args.lab or str(lab.number) in args.lab]
        home = Path(args.home)
        home.mkdir(parents=True, exist_ok=True)
        arena, base_cache, measured = Arena("smollm2-135m-instruct"), {}, []
        for lab in labs:
            rows = measure(lab, home, args.sweep, arena, base_cache)
            measured += rows
            done = {(r["lab"], r["variant"]) for r in rows}
            results["rows"] = [r for r in results["rows"] if (r["lab"], r["variant"]) not in done] + rows
            results.update(date=time.strftime("%Y-%m-%d"), machine=machine())
            if not args.dry_run:
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
                for row in rows:
                    if row["variant"] == "card":
                        write_expected(lab.path, row)
    if not args.dry_run:
        write_table(results)
    print(table(results) if not args.dry_run else table({**results, "rows": measured}))
    failing = failures(measured)
    if failing:
        raise SystemExit("FAILING LABS (the tuned model misses the lab's own check):\n  " + "\n  ".join(failing))


if __name__ == "__main__":
    main()
