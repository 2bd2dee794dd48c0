"""Run every lab once on the bundled model, check its lesson, and write the measured table into labs/README.md.

    .venv/bin/python -m labs.measure                 # all labs (about 25 minutes on 2 cores)
    .venv/bin/python -m labs.measure --lab lora --sweep   # lab 2 and its rank sweep
    .venv/bin/python -m labs.measure --lab 2 --dry-run    # measure and print; write nothing
    .venv/bin/python -m labs.measure --table-only    # rewrite the table from labs/results.json

Run it from the repository root (`labs` is a package there; `tunelab` is installed).

Each run is `python -m tunelab train labs/<card>.yaml` in a fresh process (so peak memory
is that run's own), in a throwaway workspace (TUNELAB_HOME, default /tmp/tunelab-labs).
Its summary.json gives wall time, peak memory, trainable share and final loss. Then the
card's check (tunelab/teach/labcheck.py): the base and the tuned model answer the card's held-out
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

RESULTS = ROOT / "labs" / "results.json"
README = ROOT / "labs" / "README.md"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"


# A CPU without native bf16, as this one runs it: fp32, and torch's, oneDNN's and MKL's kernels
# held to AVX2 (the instruction sets such a CPU has), whatever this CPU has.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def train(card: Path, home: Path, overrides: list[str], env_extra: dict | None = None) -> dict:
    env = os.environ | {"TUNELAB_HOME": str(home)} | (env_extra or {})
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


def data_fingerprint(run_dir: Path) -> dict:
    """{data file: sha256} of what the run trained on, so that the card can tell when its
    figures were measured on data that has changed since (tunelab.teach.labs.stale_data)."""
    from tunelab.teach.labs import file_sha
    from tunelab.training.config import RunConfig
    train = RunConfig.from_yaml(run_dir / "config.yaml").data.train
    return {train: file_sha(ROOT / train)}


def dpo_stats(run_dir: str, last: int = 10) -> dict:
    """A DPO, KTO or ORPO run's implicit reward margin, and what else it logs (DPO's and
    ORPO's accuracy, KTO's KL estimate, ORPO's log-odds gap), each the mean of its last
    `last` logged steps (one step sees one small batch, so one step alone is noise)."""
    from tunelab.training.events import read_events
    steps = [e for e in read_events(Path(run_dir)) if e.get("type") == "step" and "margin" in e][-last:]
    out = {}
    for ours, theirs in (("margin", "margin"), ("accuracy", "accuracy"), ("kl", "kl"), ("log_odds", "log_odds_chosen")):
        values = [e[theirs] for e in steps if e.get(theirs) is not None]
        if values:
            out[ours] = sum(values) / len(values)
    return out


def check(lab, run_id: str, arena, base_cache: dict) -> dict:
    """The card's check on a run: scores of base and tuned, what is missed, and the answers.
    The base answers each prompt set once per process (the same decoding every time)."""
    from tunelab.teach import labcheck
    res = labcheck.run_check(run_id, lab.check, arena=arena, base_answers=base_cache.get(lab.check.prompts))
    base_cache[lab.check.prompts] = res["answers"]["base"]
    return {"rule": res["check"], "judged": res["judged"], "base": res["base"], "tuned": res["tuned"],
            "misses": res["misses"],
            "passes": not res["misses"], "sampling": res["sampling"],
            "answers": [{"prompt": p, "base": b["text"], "tuned": t["text"]}
                        for p, b, t in zip(res["prompts"], res["answers"]["base"], res["answers"]["tuned"])]}


def machine() -> str:
    import torch

    from tunelab.modelio.loading import bf16_supported
    return (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16: {'yes' if bf16_supported('cpu') else 'no'})")


def measure(lab, home: Path, sweep: bool, arena, base_cache: dict, extra: list[str] = (),
            fp32: bool = True) -> list[dict]:
    """The card's run, its `compare` arms, its `next` step, and with `sweep` its sweep's runs,
    each trained and checked; the card's run and its arms also timed as a CPU without native
    bf16 runs them (`fp32`)."""
    from tunelab.teach.labs import machine_class, next_overrides
    here = machine_class()   # the machine class its figures belong to (labs/matrix.py's classes)
    variants = [("card", list(extra))]
    variants += [(arm["name"], [*extra, *next_overrides(arm)]) for arm in lab.compare or []]
    arms = {"card"} | {arm["name"] for arm in lab.compare or []}
    if lab.next:
        variants.append((lab.next["name"], [*extra, *next_overrides(lab.next)]))
    if sweep and lab.sweep:
        variants += [(f"r={v}", [*extra, f"{lab.sweep['field']}={v}"]) for v in lab.sweep["values"]]
    rows = []
    for label, overrides in variants:
        print(f"lab {lab.number} ({lab.key}) {label} ...", flush=True)
        s = train(lab.path, home, overrides)
        t0 = time.perf_counter()
        c = check(lab, Path(s["run_dir"]).name, arena, base_cache)
        check_minutes = round((time.perf_counter() - t0) / 60, 2)
        example = c["answers"][0]  # the held-out set's first prompt, shown in the table
        row = {"lab": lab.number, "key": lab.key, "variant": label, "overrides": overrides, "class": here,
               "minutes": round(s["wall_time_s"] / 60, 2), "process_minutes": round(s["process_s"] / 60, 2),
               "peak_memory_mb": round(s["peak_memory_mb"]), "trainable_pct": s["trainable_pct"],
               "trainable_params": s["trainable_params"], "output_size_mb": s.get("output_size_mb"),
               "final_loss": s["final_loss"], "steps": s["steps"], "precision": s.get("precision"),
               "method": s.get("method"), "s_per_step": round(s["wall_time_s"] / max(1, s["steps"]), 2),
               "check_minutes": check_minutes, "data": data_fingerprint(Path(s["run_dir"])),
               **dpo_stats(s["run_dir"]),
               "prompt": example["prompt"], "before": example["base"], "after": example["tuned"], "check": c}
        if lab.key == "qlora":  # what NF4 does to this base's weights, beside what it does to the loss
            from tunelab.teach.nf4 import nf4_model_error
            row["nf4_error"] = nf4_model_error(lab.config.model)["relative_error"]
        if fp32 and label in arms and here == "avx2-fp32":   # this run already was what the fp32 arm times
            row |= {"minutes_fp32": row["minutes"], "process_minutes_fp32": row["process_minutes"]}
        elif fp32 and label in arms:
            print(f"lab {lab.number} ({lab.key}) {label}, fp32 with AVX2 kernels ...", flush=True)
            slow = train(lab.path, home, [*overrides, "train.precision=fp32"], AVX2_ONLY)
            row |= {"minutes_fp32": round(slow["wall_time_s"] / 60, 2),
                    "process_minutes_fp32": round(slow["process_s"] / 60, 2)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "check"} | {"check": {
            k: v for k, v in c.items() if k != "answers"}}, indent=1), flush=True)
    return rows


def missed_scores(c: dict) -> set[str]:
    """The scores a check's tuned model missed ("facts" for "tuned facts 12 % is below 60 %")."""
    return {m.split()[1] for m in c["misses"] if m.startswith("tuned ")}


BUDGET_MINUTES = 5  # a lab, its process included, on a 2-core CPU, with or without native bf16


def failures(rows: list[dict], breaks: dict[int, tuple[str, list[str]]] | None = None,
             arms: dict[int, set[str]] | None = None) -> list[str]:
    """One line per lab that fails: its card run (or one of its `compare` arms, arms: {lab:
    {names}}) misses its check, or takes longer than BUDGET_MINUTES (also as fp32, as a CPU
    without native bf16 runs it), or its `next` step (breaks: {lab: (step, [scores])}) does
    not break the scores it is meant to break. Sweep rows are comparisons, not verdicts.
    E.g. "lab 4 (dpo): words ≤ 30, facts ≥ 60 %: tuned facts 25 % is below 60 %"."""
    from tunelab.teach.labcheck import fmt_score
    out = []
    for r in sorted(rows, key=lambda r: r["lab"]):
        c, name = r.get("check"), f"lab {r['lab']} ({r['key']})"
        step, broken = (breaks or {}).get(r["lab"], (None, []))
        if r["variant"] == step and c:
            kept = [m for m in broken if m not in missed_scores(c)]
            if kept:
                tuned = ", ".join(f"{m} {fmt_score(m, c['tuned'].get(m))}" for m in kept)
                out.append(f"{name}, step {step}: meant to break {', '.join(kept)}, but the tuned model still "
                           f"meets {c['rule']} (tuned {tuned})")
        if r["variant"] != "card" and r["variant"] not in (arms or {}).get(r["lab"], set()):
            continue
        if r["variant"] != "card":
            name += f", arm {r['variant']}"
        if not c:
            out.append(f"{name}: no check measured; run python -m labs.measure --lab {r['key']}")
        elif c["misses"]:
            out.append(f"{name}: {c['rule']}: {'; '.join(c['misses'])}")
        for key, how in (("process_minutes", "here"), ("process_minutes_fp32", "in fp32 with AVX2 kernels")):
            if r.get(key, 0) > BUDGET_MINUTES:
                out.append(f"{name}: takes {r[key]:.1f} min {how}, over the {BUDGET_MINUTES}-minute budget")
    return out


def check_cell(c: dict | None) -> tuple[str, str]:
    """("style 0 % → 92 %", "✓") for the table; "—" for a row measured before the checks."""
    if not c:
        return "—", "—"
    from tunelab.teach.labcheck import fmt_score
    scores = ", ".join(f"{m} {fmt_score(m, c['base'].get(m))} → {fmt_score(m, c['tuned'].get(m))}"
                       for m in c["judged"])
    return scores, "✓" if c["passes"] else "✗ " + "; ".join(c["misses"])


def extras(row: dict) -> str:
    """What a row measures beyond the common columns: DPO's margin and accuracy, KTO's KL
    estimate, ORPO's log-odds gap, seconds a step for feedback runs, NF4's error."""
    out, signals = [], []
    if row.get("margin") is not None:
        signals.append(f"margin {row['margin']:.2f}")
    if row.get("accuracy") is not None:
        signals.append(f"accuracy {row['accuracy']:.0%}".replace("%", " %"))
    if row.get("kl") is not None:
        signals.append(f"KL {row['kl']:.2f}")
    if row.get("log_odds") is not None:
        signals.append(f"log-odds gap {row['log_odds']:.2f}")
    if signals and row.get("s_per_step") is not None:
        signals.append(f"{row['s_per_step']:.1f} s a step")
    if signals:
        out.append(", ".join(signals))
    if row.get("nf4_error") is not None:
        out.append(f"NF4 round-trip error of the base's weights {row['nf4_error']:.1%}".replace("%", " %"))
    return "; ".join(out) or "—"


def table(results: dict, breaks: dict[int, tuple[str, list[str]]] | None = None) -> str:
    """The measured table in markdown; `breaks` ({lab: (step, [scores])}) judges each `next` step."""
    from tunelab.teach.labs import EMPTY_ANSWER, plain
    head = ["| lab | run | minutes | minutes, fp32 | peak memory | trainable | saved | final loss | also "
            "| check: base → tuned | passes | prompt → base → tuned |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
    lines = []
    order = {"card": 0}
    for row in sorted(results["rows"], key=lambda r: (r["lab"], order.get(r["variant"], 1), r["trainable_params"])):
        clip = lambda t: plain(t, 110)  # noqa: E731
        answer = clip(row["after"])
        tuned = f"**{answer}**" if answer else EMPTY_ANSWER
        scores, verdict = check_cell(row.get("check"))
        step, broken = (breaks or {}).get(row["lab"], (None, []))
        if row["variant"] == step and row.get("check") and broken:
            missed = [m for m in broken if m in missed_scores(row["check"])]
            verdict = (f"✓ breaks {', '.join(missed)}, as the step means to" if missed == broken
                       else f"✗ meant to break {', '.join(broken)}")
        fp32 = f"{row['process_minutes_fp32']:.1f}" if row.get("process_minutes_fp32") else "—"
        minutes = row.get("process_minutes", row["minutes"])
        lines.append(f"| {row['lab']} {row['key']} | {row['variant']} | {minutes:.1f} | {fp32} | "
                     f"{row['peak_memory_mb']:,} MB | {row['trainable_pct']:.2f} % | "
                     f"{row['output_size_mb'] or 0:.1f} MB | {row['final_loss']:.3f} | {extras(row)} | {scores} | "
                     f"{verdict} | *{clip(row['prompt'])}* → {clip(row['before'])} → {tuned} |")
    s = next((r["check"]["sampling"] for r in results["rows"] if r.get("check")), None)
    how = "Answers are greedy, 60 new tokens at most"  # rows measured before the checks
    if s:
        how = (f"Answers are base and tuned decoded alike: temperature {s['temperature']:g}, top-p {s['top_p']:g}, "
               f"seed {s['seed']}, {s['max_new_tokens']} new tokens at most")
    note = (f"\nMeasured {results['date']} on {results['machine']}, bundled SmolLM2-135M-Instruct. "
            f"Minutes are the whole `python -m tunelab train` process, loading the model included, with precision "
            f"auto; *minutes, fp32* is the same card run as a CPU without native bf16 runs it: precision fp32 and "
            f"torch's, oneDNN's and MKL's kernels held to AVX2 ({', '.join(f'{k}={v}' for k, v in AVX2_ONLY.items())}"
            f"). Every lab must take {BUDGET_MINUTES} minutes or less both ways. "
            f"Final loss is the last step's training loss: cross-entropy for SFT, the DPO loss for lab 4 "
            f"(ln 2 ≈ 0.693 before training), each method's own loss in lab 6; margins, accuracy, KL and "
            f"log-odds gap are the means of the last 10 steps. {how}. "
            f"The check scores each card's held-out prompts "
            f"(`labs/heldout/`, `tunelab/teach/labcheck.py`): ✓ when the tuned model meets every threshold of the card "
            f"and the base misses one; the card's own run and its `compare` arms (lab 6) are verdicts (and a `next` "
            f"step must break what its card says it breaks), the sweep rows compare. Reproduce: `.venv/bin/python -m labs.measure --sweep`.\n")
    return "\n".join(head + lines) + "\n" + note


def write_table(results: dict, breaks: dict | None = None) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(results, breaks) + text[end:], encoding="utf-8")


def write_expected(card: Path, row: dict) -> None:
    """Put what was measured into the card's one-line `expected:` map: the final loss (as a
    range of ±25 % around it), minutes (here and as fp32), peak memory and the checked scores
    as [base, tuned]; every other line (and comment) of the card stays as it is."""
    text = card.read_text(encoding="utf-8")
    found = re.search(r"^expected: (\{.*\})$", text, re.MULTILINE)
    if not found:
        raise SystemExit(f"{card.name}: expected must stay a one-line {{...}} map for measure.py to update it")
    exp = yaml.safe_load(found.group(1))
    c = row["check"]
    exp["loss"] = [round(row["final_loss"] * 0.75, 2), round(row["final_loss"] * 1.25 + 0.01, 2)]
    exp["minutes"] = round(row.get("process_minutes", row["minutes"]), 1)
    exp.pop("minutes_fp32", None)  # from this measurement or not at all (--no-fp32 leaves it out)
    if row.get("process_minutes_fp32"):
        exp["minutes_fp32"] = round(row["process_minutes_fp32"], 1)
    exp["peak_memory_mb"] = row["peak_memory_mb"]
    for m in c["judged"]:
        exp[m] = [round(c["base"][m], 2), round(c["tuned"][m], 2)]
    line = "expected: " + yaml.safe_dump(exp, default_flow_style=True, sort_keys=False, width=1000).strip()
    card.write_text(text[:found.start()] + line + text[found.end():], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", action="append", help="lab key or number (repeatable; default: all)")
    ap.add_argument("--sweep", action="store_true", help="also run each lab's sweep (lab 2's ranks)")
    ap.add_argument("--no-fp32", action="store_true", help="skip timing the cards as fp32 with AVX2 kernels")
    ap.add_argument("--home", default="/tmp/tunelab-labs", help="throwaway workspace for the runs")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README table from results.json")
    ap.add_argument("--dry-run", action="store_true", help="measure and print the table; write no file")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="try a change to every measured config (e.g. dpo.beta=0.5); implies --dry-run")
    args = ap.parse_args()
    args.dry_run = args.dry_run or bool(args.set)  # a what-if is not the card's measurement
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    measured = results["rows"]
    from tunelab.teach.labs import list_labs
    breaks = {lab.number: (lab.next["name"], lab.next.get("breaks", [])) for lab in list_labs() if lab.next}
    arms = {lab.number: {a["name"] for a in lab.compare or []} for lab in list_labs()}
    if not args.table_only:
        from tunelab.arena.chat import Arena
        os.environ["TUNELAB_HOME"] = str(Path(args.home))  # the arena finds the runs there
        labs = [lab for lab in list_labs() if not args.lab or lab.key in args.lab or str(lab.number) in args.lab]
        home = Path(args.home)
        home.mkdir(parents=True, exist_ok=True)
        arena, base_cache, measured = Arena("smollm2-135m-instruct"), {}, []
        for lab in labs:
            rows = measure(lab, home, args.sweep, arena, base_cache, args.set, fp32=not args.no_fp32)
            measured += rows
            done = {(r["lab"], r["variant"]) for r in rows}
            results["rows"] = [r for r in results["rows"] if (r["lab"], r["variant"]) not in done] + rows
            results.update(date=time.strftime("%Y-%m-%d"), machine=machine())
            if not args.dry_run:
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
                from labs.matrix import add_measured
                add_measured(lab, rows)   # each of these runs is also a cell of the CPU matrix
                for row in rows:
                    if row["variant"] == "card":
                        write_expected(lab.path, row)
    if not args.dry_run:
        write_table(results, breaks)
    print(table(results if not args.dry_run else {**results, "rows": measured}, breaks))
    failing = failures(measured, breaks, arms)
    if failing:
        raise SystemExit("FAILING LABS (the tuned model misses the lab's own check):\n  " + "\n  ".join(failing))


if __name__ == "__main__":
    main()
