"""Every lab's check across the CPUs people bring: kernels × threads × seeds.

    .venv/bin/python -m labs.matrix --lab 4                      # AVX2 kernels, 1 and 2 threads, seeds 0 1 2
    .venv/bin/python -m labs.matrix --lab 4 --cap avx512 --cap avx2 --threads 2 --seeds 0 1
    .venv/bin/python -m labs.matrix --table                      # print labs/matrix.json as a table

Run it from the repository root (`labs` is a package there; `tunelab` is installed).

A cell is one lab (its card run, its `compare` arms and its `next` step) trained and checked
under one CPU setting:

- kernels: ATEN_CPU_CAPABILITY (and oneDNN's and MKL's own caps) held to `avx2` or `avx512`:
  what a CPU with only AVX2, or one with AVX-512, computes. A CPU cannot be raised above
  what it has: a cell asking for more than this CPU offers is skipped, and says so.
- threads: the run and the check are pinned to that many cores (the run's OpenMP pool and
  the check's decode loop alike).
- seed: the run's `train.seed` (the check's decoding keeps its fixed seed, as on the page).
- precision: `auto`, as a user runs the card; each cell records what auto chose.

Each cell runs in a fresh process, in a throwaway workspace. Its row records the check's
scores, each threshold, the margin to it (how far the score is inside, negative when it
misses), the time and memory. Rows go to labs/matrix.json (merged by cell), whose
summary by machine class the cards and the Labs tab read (`tunelab.teach.labs.figures`).
The script exits with status 1 when a cell fails its lab.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MATRIX = ROOT / "labs" / "matrix.json"
CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX512"}}


def cell_env(cap: str, threads: int, home: Path) -> dict:
    return (os.environ | CAPS[cap] | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                      "TUNELAB_HOME": str(home),
                                      "TUNELAB_TRAIN_CORES": "all"})


def margins(check: dict, scores: dict) -> dict:
    """How far each judged score is inside its threshold, in the score's own unit (a share
    for style and facts, words for words): negative when it misses."""
    out = {}
    for metric, (op, limit) in check.items():
        v = scores.get(metric)
        out[metric] = None if v is None else round((v - limit) if op == ">=" else (limit - v), 4)
    return out


# --------------------------------------------------------------------------- one cell (its own process)

def run_cell(lab_key: str, cap: str, threads: int, seed: int, base_file: Path | None,
             only: list[str] = (), extra: list[str] = ()) -> list[dict]:
    """Train and check every verdict of one lab under the current process's CPU setting."""
    import torch

    from tunelab.arena.chat import Arena
    from tunelab.teach import labcheck
    from tunelab.teach.labs import get_lab, next_overrides
    torch.set_num_threads(threads)
    capability = torch.backends.cpu.get_cpu_capability()
    lab = get_lab(lab_key)
    variants = [("card", [])] + [(a["name"], next_overrides(a)) for a in lab.compare or []]
    if lab.next:
        variants.append((lab.next["name"], next_overrides(lab.next)))
    variants = [(n, [*extra, *o]) for n, o in variants if not only or n in only]
    arena = Arena(lab.config.model)
    base = json.loads(base_file.read_text()) if base_file and base_file.is_file() else None
    rows = []
    for name, overrides in variants:
        cmd = [sys.executable, "-m", "tunelab", "train", str(lab.path), "-q", "--set", f"train.seed={seed}"]
        for o in overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"lab {lab.number} {name} (seed {seed}): training failed:\n{p.stderr[-2000:]}")
        run_dir = Path(p.stdout.strip().splitlines()[-1])
        s = json.loads((run_dir / "summary.json").read_text())
        t1 = time.perf_counter()
        res = labcheck.run_check(run_dir.name, lab.check, arena=arena, base_answers=base)
        check_s = time.perf_counter() - t1
        if base is None:
            base = res["answers"]["base"]
            if base_file:
                base_file.write_text(json.dumps(base))
        rows.append(cell_row(lab, name, cap, capability, threads, seed, s.get("precision"), res,
                             s_per_step=round(s["wall_time_s"] / max(1, s["steps"]), 2),
                             process_minutes=round(wall / 60, 2), check_minutes=round(check_s / 60, 2),
                             peak_memory_mb=round(s["peak_memory_mb"]), final_loss=s["final_loss"]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------- the matrix

def available(cap: str) -> bool:
    """Whether this CPU can run kernels `cap`. torch takes ATEN_CPU_CAPABILITY at its word
    (asked for avx512 on a CPU without it, it reports AVX512), so the CPU's own flags decide."""
    from tunelab.modelio.loading import cpu_flags
    need = {"avx2": "avx2", "avx512": "avx512f"}[cap]
    return need in cpu_flags()


def shared_model(model: str) -> Path:
    """The converted model, once, in the calling workspace (TUNELAB_HOME, else ./workspace):
    every cell's throwaway workspace links to it instead of converting it again."""
    from tunelab.modelio.models import ensure_bundled
    return ensure_bundled(model)


def launch(lab: str, cap: str, threads: int, seed: int, cores: list[int], base_dir: Path,
           only: list[str] = (), extra: list[str] = ()) -> subprocess.Popen:
    home = Path(tempfile.mkdtemp(prefix=f"tunelab-matrix-{lab}-{cap}-{threads}t-s{seed}-"))
    from tunelab.teach.labs import get_lab
    model = shared_model(get_lab(lab).config.model)
    (home / "models").mkdir()
    (home / "models" / model.name).symlink_to(model, target_is_directory=True)
    base_file = base_dir / f"base-{lab}-{cap}-{threads}t.json"
    cmd = [sys.executable, "-m", "labs.matrix", "--cell", lab, cap, str(threads), str(seed), str(base_file),
           *(a for v in only for a in ("--variant", v)), *(a for o in extra for a in ("--set", o))]
    return subprocess.Popen(cmd, cwd=ROOT, env=cell_env(cap, threads, home), stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))


def run_matrix(labs: list[str], caps: list[str], threads: list[int], seeds: list[int],
               only: list[str] = (), extra: list[str] = (), sink=None) -> list[dict]:
    """Every cell; cells of one thread run side by side on separate cores, wider ones alone.
    `sink(rows)` is called with each finished cell's rows, so that a long matrix stopped
    half-way keeps the cells it finished."""
    n = len(os.sched_getaffinity(0))
    base_dir = Path(tempfile.mkdtemp(prefix="tunelab-matrix-base-"))
    cells = [(lab, cap, t, s) for lab in labs for cap in caps for t in threads for s in seeds]
    rows, skipped = [], []
    caps_ok = {cap: available(cap) for cap in caps}
    queue = [c for c in cells if caps_ok[c[1]] and c[2] <= n]
    skipped = [c for c in cells if c not in queue]
    for c in skipped:
        print(f"skipped lab {c[0]} {c[1]} {c[2]} threads seed {c[3]}: this CPU "
              + ("has fewer cores" if caps_ok[c[1]] else f"cannot run {c[1]} kernels"), flush=True)
    free = list(sorted(os.sched_getaffinity(0)))
    running: list[tuple[subprocess.Popen, list[int]]] = []
    while queue or running:
        while queue:
            cell = queue[0]
            if cell[2] > len(free) or (running and cell[2] > 1):   # wide cells run alone
                break
            queue.pop(0)
            cores, free = free[:cell[2]], free[cell[2]:]
            print(f"cell lab {cell[0]} {cell[1]} {cell[2]} thread(s) seed {cell[3]} on cores {cores}", flush=True)
            running.append((launch(*cell, cores=cores, base_dir=base_dir, only=only, extra=extra), cores))
        proc, cores = running.pop(0)
        out, _ = proc.communicate()
        free = sorted(free + cores)
        if proc.returncode != 0:
            raise SystemExit(f"a cell failed (exit {proc.returncode}):\n{out[-2000:]}")
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if sink and done:
            sink(done)
        for r in done:
            rows.append(r)
            print(f"  lab {r['lab']} {r['variant']} {r['cap']} {r['threads']}t seed {r['seed']}: "
                  f"{'passes' if r['passes'] else 'FAILS'}, tuned {r['tuned']}, margin {r['margin']}, "
                  f"{r['s_per_step']} s/step, {r['process_minutes']} min", flush=True)
    return rows


def add_measured(lab, rows: list[dict], path: Path = MATRIX) -> None:
    """labs/measure.py's runs of `lab` (its card run, arms and next step, trained with the
    card's seed on every core of this machine, kernels as they are) as cells of the matrix."""
    import torch

    from tunelab.teach.labs import machine_class
    cls = machine_class()
    cap, _, precision = cls.rpartition("-")
    if cap not in CAPS:
        return   # a class the matrix has no kernels setting for (an Arm CPU): nothing to file it under
    threads = torch.get_num_threads()
    cells = []
    for r in rows:
        c = r.get("check")
        if not c or r["variant"] not in {"card", *(a["name"] for a in lab.compare or []),
                                         *([lab.next["name"]] if lab.next else [])}:
            continue
        cells.append(cell_row(lab, r["variant"], cap, torch.backends.cpu.get_cpu_capability(), threads,
                              lab.config.train.seed, r.get("precision") or precision, c,
                              s_per_step=r["s_per_step"], process_minutes=r["process_minutes"],
                              check_minutes=r.get("check_minutes", 0), peak_memory_mb=r["peak_memory_mb"],
                              final_loss=r["final_loss"], source="labs/measure.py"))
    if not cells:
        return
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    keys = {cell_key(r) for r in cells}
    data["rows"] = [r for r in data["rows"] if cell_key(r) not in keys] + cells
    data["summary"] = summarise(data["rows"])
    from labs.measure import machine
    data.setdefault("machines", {})[cap] = machine()
    data["date"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(data, indent=1) + "\n")
    if path == MATRIX:
        write_readme(data)


def cell_row(lab, variant: str, cap: str, capability: str, threads: int, seed: int, precision: str | None,
             check: dict, **figures) -> dict:
    """One cell's row: the check's scores (`check`: base, tuned, misses), each judged score's
    margin, and whether the cell passes: its check, or for a `next` step, breaking what the
    step is meant to break (a score that misses, on purpose)."""
    thresholds = lab.check.thresholds()
    breaks = lab.next.get("breaks", []) if lab.next and variant == lab.next["name"] else []
    m = margins(thresholds, check["tuned"])
    return {"lab": lab.number, "key": lab.key, "variant": variant, "cap": cap, "capability": capability,
            "threads": threads, "seed": seed, "precision": precision, **figures,
            "base": check["base"], "tuned": check["tuned"], "misses": check["misses"],
            "thresholds": {k: [op, v] for k, (op, v) in thresholds.items()}, "margin": m, "breaks": breaks,
            "passes": all((m.get(b) or 0) < 0 for b in breaks) if breaks else not check["misses"],
            "load": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}


def cell_key(row: dict) -> tuple:
    return row["lab"], row["variant"], row["cap"], row["threads"], row["seed"]


def machine_class(row: dict) -> str:
    """"avx2-fp32", "avx512-bf16": the kernels a cell ran and the precision auto chose."""
    return f"{row['cap']}-{row['precision']}"


SPANS = ("s_per_step", "process_minutes", "check_minutes", "peak_memory_mb")   # each as [min, max] over cells
TIMED_SPANS = ("s_per_step", "process_minutes", "check_minutes")                 # of these, the times


def summarise(rows: list[dict]) -> dict:
    """Per lab, variant and machine class: each score as [min, max] over its cells, the
    smallest margin, seconds a step and memory as [min, max], and how many cells passed."""
    out: dict = {}
    for r in rows:
        key = f"{r['lab']}:{r['variant']}:{machine_class(r)}"
        g = out.setdefault(key, {"lab": r["lab"], "variant": r["variant"], "class": machine_class(r),
                                 "cells": 0, "passed": 0, "tuned": {}, "margin": {}, "s_per_step": [],
                                 "process_minutes": [], "check_minutes": [], "peak_memory_mb": [],
                                 "threads": [], "seeds": []})
        g["cells"] += 1
        g["passed"] += bool(r["passes"])
        for k in SPANS:   # times from the cells that had their cores to themselves, where there are such
            g.setdefault("every", {}).setdefault(k, []).append(r.get(k, 0))
            if k not in TIMED_SPANS or quiet(r):
                g[k].append(r.get(k, 0))
        g["threads"] = sorted(set(g["threads"]) | {r["threads"]})
        g["seeds"] = sorted(set(g["seeds"]) | {r["seed"]})
        for m, v in r["tuned"].items():
            if m in r["thresholds"]:
                g["tuned"].setdefault(m, []).append(v)
        for m, v in r["margin"].items():
            if v is not None:
                g["margin"][m] = min(g["margin"].get(m, v), v)
        if quiet(r):   # times by thread count, from cells that had their cores to themselves
            t = g.setdefault("timed", {}).setdefault(str(r["threads"]), {k: [] for k in TIMES})
            for k in TIMES:
                if r.get(k):   # a row that did not time it (measure.py's older rows: no check time)
                    t[k].append(r[k])
    for g in out.values():
        every = g.pop("every")   # every cell's figures: the times when no cell had its cores alone
        for k in SPANS:
            values = g[k] or every[k]
            g[k] = [min(values), max(values)]
        g["tuned"] = {m: [min(v), max(v)] for m, v in g["tuned"].items()}
        for t in g.get("timed", {}).values():
            for k in TIMES:
                t[k] = [min(t[k]), max(t[k])] if t[k] else None
    return dict(sorted(out.items()))


TIMES = ("process_minutes", "check_minutes")


def quiet(row: dict) -> bool:
    """Whether a cell's times say what its setting takes: the machine's load when it ended
    (its own threads included) was within the machine's cores. A cell that shared them with
    other work still counts for its scores, but its times measure the crowd."""
    load = row.get("load")
    return load is None or load <= row.get("cores", 2) + 0.5


def fmt(v: float, metric: str) -> str:
    return f"{v:.0%}".replace("%", " %") if metric in ("style", "facts") else f"{v:g}"


def table(data: dict) -> str:
    lines = ["| lab | run | class | threads | seeds | cells passed | tuned (over seeds and threads) | smallest margin "
             "| s/step | minutes | peak MB |",
             "| --- | --- | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for g in data["summary"].values():
        tuned = ", ".join(f"{m} {fmt(a, m)}–{fmt(b, m)}" for m, (a, b) in g["tuned"].items())
        margin = ", ".join(f"{m} {fmt(v, m) if m == 'words' else f'{v * 100:+.0f} pts'}" for m, v in g["margin"].items())
        lines.append(f"| {g['lab']} | {g['variant']} | {g['class']} | {', '.join(map(str, g.get('threads', [])))} | "
                     f"{', '.join(map(str, g.get('seeds', [])))} | {g['passed']}/{g['cells']} | {tuned} | {margin} "
                     f"| {g['s_per_step'][0]:.1f}–{g['s_per_step'][1]:.1f} | {g['process_minutes'][0]:.1f}–"
                     f"{g['process_minutes'][1]:.1f} | {g['peak_memory_mb'][0]}–{g['peak_memory_mb'][1]} |")
    return "\n".join(lines)


def write_readme(data: dict) -> None:
    """The summary table between labs/README.md's matrix markers, with the machines it ran on."""
    readme = ROOT / "labs" / "README.md"
    begin, end = "<!-- matrix:begin -->", "<!-- matrix:end -->"
    text = readme.read_text(encoding="utf-8")
    machines = "; ".join(f"{cap}: {m}" for cap, m in sorted(data.get("machines", {}).items()))
    body = (f"{table(data)}\n\nMeasured {data.get('date')} by `labs/matrix.py` on {machines}. Scores are ranges "
            f"over the cells of a class; the margin is the smallest of them (words below the limit; points above "
            f"it); a `next` step's margin is negative on purpose, since it is meant to break that score. Seconds a step and "
            f"minutes span every cell, those that ran beside other work too (their load is in each row of "
            f"`matrix.json`); the Labs tab promises times only from cells that had their cores to themselves.\n")
    start, stop = text.index(begin) + len(begin), text.index(end)
    readme.write_text(text[:start] + "\n" + body + text[stop:], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", nargs=5, metavar=("LAB", "CAP", "THREADS", "SEED", "BASE"), help=argparse.SUPPRESS)
    ap.add_argument("--lab", action="append", help="lab key or number (repeatable; default: all)")
    ap.add_argument("--cap", action="append", choices=sorted(CAPS), help="kernels (repeatable; default avx2)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=[], help="only these of a lab's runs (card, an arm, "
                    "its next step); default all")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="try a change in every run (e.g. train.lr=2e-4); implies --dry-run")
    ap.add_argument("--out", default=str(MATRIX), help="the JSON file rows are merged into")
    ap.add_argument("--dry-run", action="store_true", help="print the rows; write nothing")
    ap.add_argument("--table", action="store_true", help="print the file's summary as a table")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="merge the rows of other matrix files "
                    "(cells run apart, e.g. on another machine) into --out, and rewrite its summary")
    args = ap.parse_args()
    if args.cell:
        lab, cap, threads, seed, base = args.cell
        run_cell(lab, cap, int(threads), int(seed), Path(base), args.variant, args.set)
        return
    args.dry_run = args.dry_run or bool(args.set)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    if args.merge:
        for f in args.merge:
            other = json.loads(Path(f).read_text())
            cells = {cell_key(r) for r in other["rows"]}
            data["rows"] = [r for r in data["rows"] if cell_key(r) not in cells] + other["rows"]
            data.setdefault("machines", {}).update(other.get("machines", {}))
            data["date"] = max(data.get("date", ""), other.get("date", ""))
        data["summary"] = summarise(data["rows"])
        out.write_text(json.dumps(data, indent=1) + "\n")
        if out.resolve() == MATRIX.resolve():
            write_readme(data)
        failing = []
    elif not args.table:
        from tunelab.teach.labs import list_labs
        labs = [str(lab.number) for lab in list_labs()
                if not args.lab or lab.key in args.lab or str(lab.number) in args.lab]
        from labs.measure import machine

        def file_rows(rows: list[dict]) -> None:
            cells = {cell_key(r) for r in rows}
            data["rows"] = [r for r in data["rows"] if cell_key(r) not in cells] + rows
            data["summary"] = summarise(data["rows"])
            data.setdefault("machines", {})[rows[0]["cap"]] = machine()
            data["date"] = time.strftime("%Y-%m-%d")
            if not args.dry_run:
                out.write_text(json.dumps(data, indent=1) + "\n")
                if out.resolve() == MATRIX.resolve():
                    write_readme(data)

        rows = run_matrix(labs, args.cap or ["avx2"], args.threads, args.seeds, args.variant, args.set, sink=file_rows)
        failing = [r for r in rows if not r["passes"]]
    else:
        failing = []
    print(table(data))
    if failing:
        raise SystemExit("FAILING CELLS:\n  " + "\n  ".join(
            f"lab {r['lab']} {r['variant']} {r['cap']} {r['threads']}t seed {r['seed']}: "
            + ("; ".join(r["misses"]) or f"meant to break {r['breaks']}") for r in failing))


if __name__ == "__main__":
    main()
