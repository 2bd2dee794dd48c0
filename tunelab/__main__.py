"""The tunelab command line.

    python -m tunelab train labs/lab2_lora.yaml --set train.max_steps=20
    python -m tunelab resume RUN_ID
    python -m tunelab runs
    python -m tunelab stop RUN_ID       # as the host: any run, whoever started it
    python -m tunelab rename RUN_ID "pirate, r=16"   # the title the Runs tab shows
    python -m tunelab delete RUN_ID --yes
    python -m tunelab export RUN_ID --merge --out merged/
    python -m tunelab export RUN_ID --gguf q8_0 --out gguf/   # llama.cpp / Ollama, with a Modelfile
    python -m tunelab prepare           # convert the bundled model into the workspace (once)
    python -m tunelab fields            # every config field with its help
    python -m tunelab labels sets       # the arena's preference sets
    python -m tunelab labels export SET pairs.jsonl   # prompt/chosen/rejected for DPO and ORPO
    python -m tunelab labels export SET thumbs.jsonl --unpaired   # prompt/completion/label for KTO
    python -m tunelab labels import SET FILE          # pairs, or answers labelled true/false
    python -m tunelab labels board SET  # wins, losses, ties and Bradley-Terry ratings
    python -m tunelab labels annotators SET   # labels per annotator, agreement on shared pairs

Exit codes: 0 success, 1 the run failed, 2 bad input (config, data, model, arguments),
130 interrupted. A stop (SIGTERM) ends a run cleanly with 0: "stopped" once it trained,
"cancelled" before its first step. Errors are one line on stderr.
"""

from __future__ import annotations

if __name__ == "__main__":   # a run process: a Stop from its first moment sets the flag (see training/stopping.py),
    from .training.stopping import catch, watch_app
    catch()
    watch_app()              # and one the app started stops when the app ends (TUNELAB_APP_PID)

import argparse
import json
import os
import sys

from .export.gguf_out import TYPES as GGUF_TYPES   # light: it imports gguf only when it writes

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fields_text() -> str:
    from .training.config import iter_fields
    lines = []
    for path, value, f in iter_fields():
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {path:<30} {f.metadata['help']}{extra} (default: {value})")
    return "\n".join(lines)


def _fmt_s(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A one-line progress bar on stderr (a line a step when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        t = ev["type"]
        if t == "start" or t == "resume":
            pct = 100.0 * ev["trainable_params"] / max(ev["total_params"], 1)
            self._line(f"{t}: {ev.get('method', '')} on {ev['device']} ({ev['precision']}), "
                       f"trainable {ev['trainable_params']:,} of {ev['total_params']:,} params ({pct:.2f}%)")
        elif t == "step":
            n, total = ev["step"], ev["max_steps"]
            width = 24
            filled = int(width * n / max(total, 1))
            bar = "#" * filled + "." * (width - filled)
            extra = f" margin {ev['margin']:.3f} acc {ev['accuracy']:.2f}" if ev.get("margin") is not None else ""
            loss = ev.get("loss")
            tps = ev.get("tokens_per_s")
            text = (f"[{bar}] step {n}/{total} loss {loss if loss is None else f'{loss:.4f}'}{extra} "
                    f"{'' if tps is None else f'{tps:.0f} tok/s '}elapsed {_fmt_s(ev['elapsed_s'])} "
                    f"eta {_fmt_s(ev['eta_s'])}")
            if self.tty:
                sys.stderr.write("\r" + text.ljust(110))
                sys.stderr.flush()
            else:
                self._line(text)
        elif t == "eval":
            self._line(f"eval at step {ev['step']}: loss {ev.get('eval_loss')}")
        elif t == "finish" and ev.get("summary") is None:   # cancelled, or interrupted before training
            self._line(f"{ev['status']}: {ev.get('note') or ev.get('error')}")
        elif t == "finish":
            s = ev["summary"]
            self._line(f"{ev['status']}: {s['steps']} steps in {_fmt_s(s['wall_time_s'])}, "
                       f"final loss {s['final_loss']}, peak memory {s['peak_memory_mb']:.0f} MB")

    def _line(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def cmd_train(args) -> int:
    from .training.config import load_config
    from .training.run import run
    overrides = list(args.set or [])
    if args.name:
        overrides.append(f"name={args.name}")
    cfg = load_config(args.config, overrides)
    if not args.ignore_memory_check:
        from .training.memory import fit_memory
        fit = fit_memory(cfg, this_process=True, override="--ignore-memory-check starts it anyway")
        if fit.note:
            print(fit.note, file=sys.stderr, flush=True)
            cfg = fit.cfg
    result = run(cfg, on_event=_printer(args), run_id=args.run_id)
    from .training.parallel import is_main_process
    if is_main_process():   # under `accelerate launch`, one line for the run, not one per process
        print(result.run_dir)
    return 0


def _printer(args):
    progress = Progress(args.quiet)
    state = {"printed": False}

    def on_event(ev):
        if not state["printed"] and ev["type"] in ("start", "resume"):
            # The run folder first, so a script (or the app) can follow it at once.
            from .common import workspace
            print(f"run: {workspace.runs_dir() / ev['run_id']}", flush=True)
            state["printed"] = True
        progress(ev)
    return on_event


def cmd_resume(args) -> int:
    from .training.run import resume
    if not args.ignore_memory_check:
        from .training.config import RunConfig
        from .training.memory import check_memory
        from .training.runs import find_run
        cfg = RunConfig.from_yaml(find_run(args.run) / "config.yaml")
        check_memory(cfg, this_process=True, override="--ignore-memory-check resumes it anyway")
    result = resume(args.run, on_event=_printer(args))
    print(result.run_dir)
    return 0


def cmd_runs(args) -> int:
    from .training.runs import list_runs
    rows = list_runs()
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print("no runs yet; start one with: python -m tunelab train CONFIG.yaml")
        return 0
    head = f"{'RUN':<36} {'STATUS':<12} {'METHOD':<6} {'STEPS':>9} {'LOSS':>8} {'EVAL':>8} {'TIME':>7}"
    print(head)
    for r in rows:
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        ev = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        steps = f"{r['step'] or 0}/{r['max_steps'] or '?'}"
        print(f"{r['run_id']:<36} {r['status'] or '?':<12} {r['method'] or '?':<6} {steps:>9} {loss:>8} "
              f"{ev:>8} {_fmt_s(r['wall_time_s']):>7}")
    return 0


# stop, rename and delete act as the host (access.py: by=None from a terminal), whoever
# started the run; the app asks the same service functions on behalf of its signed-in users.

def cmd_stop(args) -> int:
    from .service.jobs import Jobs
    from .service.processes import is_training
    from .training.runs import find_run, run_status
    run_dir = find_run(args.run)
    status = run_status(run_dir).get("status")
    if status == "running" and is_training(run_dir):
        print(f"stopping {run_dir.name} (it finishes its current step and saves) ...", file=sys.stderr, flush=True)
    elif status in ("starting", "running"):
        print(f"stopping {run_dir.name} (it has not trained yet: it is cancelled) ...", file=sys.stderr, flush=True)
    if not Jobs().stop(str(run_dir), wait=True, grace_s=args.grace, cli=True):
        print(f"{run_dir.name} is not running ({run_status(run_dir).get('status')})")
        return 0
    print(f"{run_dir.name}: {run_status(run_dir).get('status')}")
    return 0


def _title(text: str) -> str:
    """argparse type for a run title: a bad one is an argument error (exit 2) naming why."""
    from .training.runfolder import RunError
    from .training.runs import check_title
    try:
        return check_title(text)
    except RunError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("title: ")) from None


def cmd_rename(args) -> int:
    from .service.jobs import Jobs
    from .training.runs import find_run
    run_dir = find_run(args.run)
    title = Jobs().rename(str(run_dir), args.title)
    print(f"{run_dir.name}: {title}")
    return 0


def cmd_delete(args) -> int:
    from .service.jobs import Jobs
    from .training.runfolder import RunError
    from .training.runs import find_run
    run_dir = find_run(args.run)
    if not args.yes:
        if not sys.stdin.isatty():
            raise RunError(f"delete {run_dir.name}: add --yes to delete without a question")
        answer = input(f"Delete {run_dir} and every file in it (model, checkpoints, logs)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept", file=sys.stderr)
            return 0
    Jobs().delete(str(run_dir))
    print(f"deleted {run_dir}")
    return 0


def cmd_export(args) -> int:
    if args.gguf_adapter and not args.gguf:
        args.gguf = "f16"
    if args.gguf:
        from .arena.chat import run_settings
        from .export import fidelity
        from .export.ggufexport import export_gguf
        from .training.runs import export_source
        run = export_source(args.run)
        done = export_gguf(run, args.out, args.gguf, adapter=args.gguf_adapter, used=run_settings(run.name),
                           measure=not args.no_check)
        for f in done["files"]:
            print(f"{f['path']}  {f['type']}  {f['bytes'] / 2**20:.1f} MiB  written in {f['seconds']:.1f} s")
        measured = done["fidelity"]
        if measured:
            print(fidelity.line(measured) + f" [{measured['seconds']:.0f} s]")
            if measured.get("verdict") == "lost":
                print(f"This file has lost the run's change ({measured['why']}). Export another type instead: "
                      f"{measured['instead']}.")
            elif measured.get("roughly"):
                print(f"For the run as it trained, export another type: {measured['instead']}.")
        print(f"{done['out']}  (Modelfile, README.md; {done['seconds']:.1f} s in all)")
        return 0
    from .export.folder import export_folder
    from .training.runs import export_source
    out = export_folder(export_source(args.run), args.out, merge=args.merge)
    print(out)
    return 0


def cmd_prepare(args) -> int:
    """Convert the bundled model into the workspace now, so the app's first page need not
    (scripts/run.sh setup and app call this). Quick when it is done already."""
    import time

    from .modelio.models import BUNDLED_MODELS, bundled_pending, resolve_model
    for name in BUNDLED_MODELS:
        t0, pending = time.perf_counter(), bundled_pending(name)
        if pending:
            print(f"{name}: converting from its GGUF file, once (under a minute) ...", file=sys.stderr, flush=True)
        path = resolve_model(name)
        print(f"{name}: {'converted in %.0f s' % (time.perf_counter() - t0) if pending else 'ready'}: {path}")
    return 0


def cmd_fields(args) -> int:
    print(_fields_text())
    return 0


def cmd_labels(args) -> int:
    from .common.words import counted
    from .data import DataError
    from .arena.prefs import LabelStore
    store = LabelStore()
    if args.action == "sets":
        rows = store.sets()
        if not rows:
            print("no preference sets yet; label answers in the app's Arena tab, or: labels import SET FILE")
        for r in rows:
            print(f"{r['name']:<32} {counted(r['labels'], 'A/B vote'):>16} {r['thumbs_up']:>5} 👍 {r['thumbs_down']:>5} 👎  "
                  f"DPO/ORPO: {counted(r['pairs'], 'pair')}  KTO: {r['desirable']} good + {r['undesirable']} bad answers")
        return 0
    if not args.set:
        raise DataError("labels " + args.action + ": name the preference set (SET)")
    if args.action == "board":
        from .arena.leaderboard import standings
        board = standings(store.labels(args.set))
        print(f"{'MODEL':<40} {'RATING':>7} {'VOTES':>6} {'WINS':>5} {'LOSSES':>6} {'TIES':>5} {'BAD':>4}")
        for m in board["models"]:
            rating = "-" if m["rating"] is None else f"{m['rating']:.0f}"
            print(f"{m['model']:<40} {rating:>7} {m['votes']:>6} {m['wins']:>5} {m['losses']:>6} {m['ties']:>5} "
                  f"{m['both_bad']:>4}")
        return 0
    if args.action == "annotators":
        from .arena.agreement import annotators
        report = annotators(store.labels(args.set))
        print(f"{'ANNOTATOR':<24} {'LABELS':>6} {'A/B':>5} {'TIES':>5} {'BAD':>4} {'SHARED':>6}")
        for r in report["annotators"]:
            print(f"{r['annotator']:<24} {r['labels']:>6} {r['a_or_b']:>5} {r['ties']:>5} {r['both_bad']:>4} "
                  f"{r['shared']:>6}")
        ag = report["agreement"]
        if ag["pairs"]:
            kappa = "-" if ag["kappa"] is None else f"{ag['kappa']:.2f}"
            print(f"agreement: {ag['agreement']:.0%} of {ag['comparisons']} comparisons on {ag['pairs']} shared "
                  f"pairs; Fleiss' kappa {kappa}")
            for r in report["between"]:
                print(f"  {r['annotator']} & {r['other']}: {r['agreed']}/{r['shared']} ({r['agreement']:.0%})")
        else:
            print("agreement: no pair labelled by two annotators yet")
        return 0
    if not args.file:
        raise DataError(f"labels {args.action}: give the file (FILE)")
    if args.action == "export":
        if not any(r["name"] == args.set for r in store.sets()):
            raise DataError(f"labels export: no preference set named {args.set!r}")
        if args.unpaired:
            c = store.export_unpaired(args.set, args.file)
            print(f"{args.file}: {c['written']} answers, {c['desirable']} good and {c['undesirable']} bad "
                  f"({c['thumbs']} thumbs, {c['from_votes']} from A/B votes; left out {c['tie']} ties)")
            return 0
        c = store.export_dpo(args.set, args.file)
        print(f"{args.file}: {counted(c['written'], 'pair')} (left out {c['tie']} ties, {c['both_bad']} both bad, "
              f"{c['identical']} identical answers)")
        return 0
    if args.unpaired:
        raise DataError("labels import: --unpaired is for export; import reads the kind from the file's columns")
    res = store.import_file(args.set, args.file)
    what = "pairs" if res["kind"] == "pairs" else "labelled answers"
    print(f"{args.file}: {res['rows']} {what} ({res['format']}), {res['added']} new in {args.set!r}"
          + (f"; {res['identical']} left out: identical answers" if res.get("identical") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tunelab", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train with full, lora, qlora or dpo. Prints the run folder and a progress bar.",
                       epilog="config fields (set any with --set FIELD=VALUE):\n" + _fields_text())
    t.add_argument("config", nargs="?", help="run config YAML (default: the built-in defaults)")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.max_steps=20 (repeatable)")
    t.add_argument("--name", help="run name (the run folder is <time>-<name>)")
    t.add_argument("--run-id", help="use this exact run folder name (for the app)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.add_argument("--ignore-memory-check", action="store_true",
                   help="start even when the estimated peak memory is above what the machine (or GPU) has free; "
                        "without it such a run is refused with the estimate and what to lower")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    r.add_argument("run", help="run id (or a unique prefix) or run folder")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("--ignore-memory-check", action="store_true",
                   help="resume even when the estimated peak memory is above what the machine (or GPU) has free")
    r.set_defaults(func=cmd_resume)

    ls = sub.add_parser("runs", help="list the runs in the workspace (TUNELAB_HOME)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_runs)

    st = sub.add_parser("stop", help="stop a training run (or cancel a queued one), whoever started it",
                        description="Stop a run as the host would: it finishes its current step, saves a "
                                    "checkpoint and ends as 'stopped' (a queued run leaves the line). Its "
                                    "status.json records that the host stopped it.")
    st.add_argument("run", help="run id (or a unique prefix) or run folder")
    st.add_argument("--grace", type=float, default=20.0, metavar="SECONDS",
                    help="how long the run may take to end before it is killed (default 20)")
    st.set_defaults(func=cmd_stop)

    rn = sub.add_parser("rename", help="give a run a title (its id and folder stay the same)",
                        description="Set the title the Runs tab shows for a run (1-80 characters). Labels, the "
                                    "arena and these commands keep naming the run by its id.")
    rn.add_argument("run", help="run id (or a unique prefix) or run folder")
    rn.add_argument("title", type=_title, help="the new title")
    rn.set_defaults(func=cmd_rename)

    dl = sub.add_parser("delete", help="delete a run's folder (not while it trains or waits in the queue)")
    dl.add_argument("run", help="run id (or a unique prefix) or run folder")
    dl.add_argument("--yes", action="store_true", help="delete without asking")
    dl.set_defaults(func=cmd_delete)

    e = sub.add_parser("export", help="write a run's model to a folder",
                       description="Copy a run's adapter or model, or with --merge write a standalone "
                                   "model (adapter merged into the base) loadable by plain transformers.")
    e.add_argument("run", help="run id (or a unique prefix) or run folder")
    e.add_argument("--out", required=True, help="output folder (must be new or empty)")
    e.add_argument("--merge", action="store_true", help="merge LoRA/QLoRA adapters into the base model")
    e.add_argument("--gguf", metavar="TYPE", choices=GGUF_TYPES, help="write one GGUF file for llama.cpp / Ollama / LM Studio "
                   "(adapters merged), with an Ollama Modelfile: f16, bf16, q8_0, q4_0, q4_1 or f32")
    e.add_argument("--gguf-adapter", action="store_true", help="write the LoRA adapter alone as GGUF "
                   "(llama.cpp's adapter layout) beside the base as --gguf TYPE (default f16)")
    e.add_argument("--no-check", action="store_true", help="GGUF: skip measuring the file(s) against the run and "
                   "its base (next-token agreement, KL, greedy answers; 1-2 min on 2 cores for the bundled model)")
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser("prepare", help="convert the bundled model into the workspace now (once; setup does it)")
    pr.set_defaults(func=cmd_prepare)

    f = sub.add_parser("fields", help="list every config field with its help text")
    f.set_defaults(func=cmd_fields)

    lb = sub.add_parser("labels", help="the arena's label sets: list, export for DPO/ORPO or KTO, import, leaderboard",
                        description="Labels (A/B votes and thumbs) live in the workspace's labels.db (SQLite).")
    lb.add_argument("action", choices=["sets", "export", "import", "board", "annotators"])
    lb.add_argument("set", nargs="?", help="label set name")
    lb.add_argument("file", nargs="?", help="JSONL to write (export), or a file of pairs or of labelled answers "
                                            "to read (import)")
    lb.add_argument("--unpaired", action="store_true",
                    help="export: write TRL's unpaired format (prompt/completion/label) for KTO: the thumbs, and "
                         "each A/B vote as a good and a bad answer")
    lb.set_defaults(func=cmd_labels)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .training.config import ConfigError
    from .data import DataError
    from .modelio.models import ModelError
    from .arena.prefs import LabelError
    from .training.runfolder import RunError
    from .training import stopping
    if args.command in ("train", "resume"):   # the `tunelab` command enters here, not through `__main__` above
        stopping.catch()
        stopping.watch_app()
    try:
        if args.command in ("train", "resume") and stopping.requested():   # a stop while this process started
            note = stopping.cancel_unstarted(_run_folder(args))
            print(f"\n{note or 'stopped'}", file=sys.stderr)
            return 0
        return args.func(args)
    except (ConfigError, DataError, ModelError, LabelError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _run_folder(args):
    """The folder of the run this command was making, where one exists already (the app
    makes it before it starts the process); None otherwise."""
    from .common import workspace
    from .training.runfolder import RunError
    from .training.runs import find_run
    try:
        if args.command == "train":
            return workspace.runs_dir() / workspace.safe_name(args.run_id) if args.run_id else None
        return find_run(args.run)
    except (RunError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
