"""The Runs tab's logic without gradio: the runs table, a run's details, which of its
buttons a user may press, config diffs."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from ..modelio import models
from ..service import access
from ..export import fidelity
from ..training.config import iter_fields
from ..export.ggufexport import EXPORTABLE
from ..training.runfolder import MODEL_DIR
from .logic import LIVE, esc, flatten, fmt_duration, fmt_mb, fmt_num, message_html, queue_line

# --------------------------------------------------------------------------- runs table

# Short headers: the table is wide. trainable = % of the parameters, time = training wall time.
# The run id comes first: a click on a row picks the run named in its first cell.
RUN_COLUMNS = ["run", "title", "status", "owner", "method", "model", "data", "trainable", "steps", "time", "tok/s",
               "peak mem", "loss", "eval loss"]
# status gets room for its longest word ("interrupted", 11 monospace characters, ~106 px with
# the cell's padding): at 8% of the table (97 px at 1400 px) Gradio broke it mid-word.
RUN_COLUMN_WIDTHS = ["12%", "9%", "9%", "6%", "6%", "8%", "9%", "8%", "7%", "5%", "5%", "6%", "5%", "5%"]


def _short(path: str | None) -> str:
    if not path:
        return "—"
    return Path(path).name if ("/" in path or os.sep in path) and not models.is_hub_id(path) else path


def runs_table(rows: list[dict]) -> pd.DataFrame:
    """runs.list_runs() rows as the table people read (formatted text, newest first)."""
    out = []
    for r in rows:
        pct = r.get("trainable_pct")
        out.append({
            "run": r["run_id"], "title": r.get("title") or "", "status": r.get("status") or "—",
            "owner": r.get("owner") or "—", "method": r.get("method") or "—",
            "model": _short(r.get("model")), "data": _short(r.get("data")),
            "trainable": "—" if pct is None else f"{pct:.2f} %",
            "steps": f"{r.get('step') or 0} / {r.get('max_steps') or '?'}",
            "time": fmt_duration(r.get("wall_time_s")),
            "tok/s": "—" if not r.get("tokens_per_s") else f"{r['tokens_per_s']:,.0f}",
            "peak mem": fmt_mb(r.get("peak_memory_mb")),
            "loss": fmt_num(r.get("loss")), "eval loss": fmt_num(r.get("eval_loss")),
        })
    return pd.DataFrame(out, columns=RUN_COLUMNS)

def run_details_html(row: dict | None) -> str:
    """The selected run in a few lines: status, title, whose it is, what it trained, who
    stopped it, its place in the queue (`row["queue"]`: (place, waiting)), its error."""
    if not row:
        return '<div class="tl-hint">Pick a run (or click a row of the table).</div>'
    st = row.get("status") or "unknown"
    bits = [f"{row.get('method')} · {_short(row.get('model'))} · {_short(row.get('data'))}",
            f"step {row.get('step') or 0} / {row.get('max_steps') or '?'}"]
    if row.get("loss") is not None:
        bits.append(f"loss {fmt_num(row['loss'])}")
    who = [f"owner: {row.get('owner') or '— (started without a login, or from the CLI)'}"]
    if st in ("stopped", "cancelled") and row.get("stopped_by"):
        who.append(f"stopped by {row['stopped_by']}")
    title = f'<b>{esc(row["title"])}</b> · ' if row.get("title") else ""
    queue = f'<div class="tl-hint">Queued: {esc(queue_line(row["queue"]))}.</div>' if row.get("queue") else ""
    err = message_html(row.get("error"), "error") if st in ("failed", "interrupted") else ""
    resume = '<div class="tl-hint">Resumable from its last checkpoint.</div>' if row.get("resumable") else ""
    return (f'<div class="tl-run-details"><span class="tl-badge tl-{esc(st)}">{esc(st)}</span> '
            f'{title}<b>{esc(row["run_id"])}</b><div class="tl-hint">{esc(" · ".join(bits))}</div>'
            f'<div class="tl-hint tl-run-owner">{esc(" · ".join(who))}</div>{queue}{err}{resume}</div>')


# --------------------------------------------------------------------------- who may press what

NO_LOGINS = "No logins: anyone who can open this page can stop, resume or delete any run."


def access_line(row: dict | None, user: str | None) -> str:
    """The line beside the selected run's buttons: without logins, that anyone here may
    touch any run; with them, whose run it is when `user` may not (access.whose_line)."""
    if user is None:
        return NO_LOGINS
    return access.whose_line(row, user) if row else ""


def run_actions(row: dict | None, user: str | None) -> dict[str, bool]:
    """Which of the selected run's buttons `user` may press now (the server asks again on
    every press): open, stop (in the Train tab), resume, download, gguf, delete, rename."""
    if not row:
        return dict.fromkeys(("open", "stop", "resume", "download", "gguf", "delete", "rename"), False)
    live = row.get("status") in LIVE
    mine = access.may_change(row, user)
    download = (Path(row["path"]) / MODEL_DIR).is_dir() and access.may_download(row, user)
    return {"open": True, "stop": mine and live, "resume": mine and bool(row.get("resumable")) and not live,
            "download": download, "gguf": download and row.get("status") in EXPORTABLE,
            "delete": mine and not live, "rename": mine}


def is_adapter_run(row: dict | None) -> bool:
    """Whether the run saved an adapter (it can be downloaded as a base + LoRA adapter GGUF)."""
    return bool(row) and (Path(row["path"]) / MODEL_DIR / "adapter_config.json").is_file()


# --------------------------------------------------------------------------- serving it elsewhere

def serve_commands(row: dict) -> list[str]:
    """Shell lines (comments and commands) that serve the run's saved model on each engine
    that speaks the OpenAI chat API, with the base URL and model name to add in the arena's
    "Models served elsewhere". The GGUF lines use the export folders `_commands` names."""
    run_id, model_dir = row["run_id"], (Path(row["path"]) / MODEL_DIR).resolve()
    if not model_dir.is_dir():
        return []
    adapter = model_dir / "adapter_config.json"
    lines = ["# serve it for the arena's 'Models served elsewhere' (each speaks the OpenAI chat API)"]
    if adapter.is_file():
        cfg = json.loads(adapter.read_text(encoding="utf-8"))
        base, rank = cfg.get("base_model_name_or_path") or row.get("model"), cfg.get("r", 16)
        lines += [f"# vLLM, the base with this adapter (a GPU): URL http://127.0.0.1:8000/v1, model {run_id}",
                  f"vllm serve {shlex.quote(str(base))} --enable-lora --lora-modules "
                  f"{run_id}={shlex.quote(str(model_dir))} --max-lora-rank {rank}",
                  "# transformers serve (pip install 'transformers[serving]'), on the merged model above:",
                  f"#   URL http://127.0.0.1:8000/v1, model merged-{run_id}",
                  f"transformers serve merged-{run_id} --host 127.0.0.1 --port 8000"]
    else:
        lines += [f"# vLLM (a GPU): URL http://127.0.0.1:8000/v1, model {model_dir}",
                  f"vllm serve {shlex.quote(str(model_dir))}",
                  "# transformers serve (pip install 'transformers[serving]'):",
                  f"#   URL http://127.0.0.1:8000/v1, model {model_dir}",
                  f"transformers serve {shlex.quote(str(model_dir))} --host 127.0.0.1 --port 8000"]
    lines += ["# llama-server (llama.cpp), on the GGUF export above: URL http://127.0.0.1:8080/v1, any model name",
              f"llama-server -m gguf-{run_id}/*.gguf --port 8080",
              f"# Ollama, on the same export: URL http://127.0.0.1:11434/v1, model {run_id}",
              f"ollama create {run_id} -f gguf-{run_id}/Modelfile"]
    return lines


# --------------------------------------------------------------------------- GGUF: what each type keeps

GGUF_PLAIN = ("f16, bf16: 16 bits a weight, near exact; q8_0: 8 bits, about half the size; q4_0, q4_1: 4 bits, "
              "the smallest, but a small update can round away. Each download is measured against the run.")


def gguf_choices(types, figures: dict | None) -> list[tuple[str, str]]:
    """The GGUF menu's entries, (label, type): with the measured figures (fidelity.load_figures)
    each label says the type's size and whether it kept the benchmark's run."""
    rows = (figures or {}).get("types") or {}
    out = []
    for kind in types:
        r = rows.get(kind)
        verdict = {"keeps": "kept the run", "lost": "lost the run"}.get((r or {}).get("verdict"), "")
        if r and fidelity.roughly(r):
            verdict = "kept the run roughly"
        out.append((f"{kind} · {r['mib']:.0f} MiB · {verdict}" if r and verdict else kind, kind))
    return out


def gguf_hint(figures: dict | None) -> str:
    """The line under the GGUF menu: what was measured, where, and what it showed (the
    adapter arms too); GGUF_PLAIN where the figures file is missing."""
    rows = (figures or {}).get("types") or {}
    if not rows:
        return GGUF_PLAIN
    run = (figures.get("run") or {}).get("what", "a short run")
    parts = []
    for key, r in rows.items():
        name = f"{r['base_type']} base + adapter" if r.get("adapter") else key
        said = "LOST" if r["verdict"] == "lost" else "keeps roughly" if fidelity.roughly(r) else "keeps"
        parts.append(f"{name} {r['mib']:.0f} MiB, {r['agreement']:.0%} agreement, {said}")
    return (f"Measured on the bundled model, {run} ({figures.get('machine', 'one machine')}, "
            f"{figures.get('date', '')}): " + "; ".join(parts) + ". Each download is measured against your run too.")


def fidelity_message(measured: dict | None, kind: str, adapter: bool) -> tuple[str, str]:
    """(text, message kind) for the page after a GGUF build: the check's line, and where the
    file lost the run's change, that in plain words with the type to download instead."""
    if not measured:
        return "", "info"
    if measured.get("error"):
        return fidelity.line(measured), "warn"
    what = f"the {kind} base + adapter" if adapter else f"this {kind} file"
    if measured["verdict"] == "lost":
        return (f"Careful: {what} has lost the run's change ({measured['why']}); in llama.cpp or Ollama it "
                f"would answer {'like the base model' if measured['closer_to_base'] > measured['closer_to_run'] else 'unlike your run'}. "
                f"Download another type instead: {measured['instead']}. Measured: {fidelity.line(measured)}"), "warn"
    if measured.get("roughly"):
        return (f"{fidelity.line(measured)} For the run as it trained, download another type: "
                f"{measured['instead']}."), "warn"
    return fidelity.line(measured), "ok" if measured["verdict"] == "keeps" else "info"


# --------------------------------------------------------------------------- config diff
def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """Fields down, runs across, plus `differs`; every field of the config schema, in its order."""
    flat = {run: flatten(c) for run, c in configs.items()}
    fields = [p for p, _, _ in iter_fields()]
    extra = sorted({k for f in flat.values() for k in f} - set(fields))
    rows = []
    for field in fields + extra:
        cells = [_cell(flat[run].get(field)) for run in flat]
        rows.append([field, *cells, len(set(cells)) > 1])
    return pd.DataFrame(rows, columns=["field", *flat, "differs"])


def config_diff_html(df: pd.DataFrame, only_differences: bool = False) -> str:
    if df.empty or len(df.columns) <= 2:
        return '<div class="tl-hint">Select runs to compare their configs.</div>'
    runs = list(df.columns[1:-1])
    if only_differences:
        df = df[df["differs"]]
    head = "".join(f"<th>{esc(r)}</th>" for r in runs)
    body = "".join(
        f'<tr class="{"tl-diff" if row["differs"] else ""}"><td class="tl-field">{esc(row["field"])}</td>'
        + "".join(f"<td>{esc(row[r])}</td>" for r in runs) + "</tr>"
        for _, row in df.iterrows())
    n = int(df["differs"].sum())
    note = (f"{n} field{'s' if n != 1 else ''} differ{'s' if n == 1 else ''} (highlighted)" if len(runs) > 1
            else "One run selected: its whole config. Select more to compare.")
    return (f'<div class="tl-diffwrap"><div class="tl-hint">{note}</div>'
            f'<table class="tl-difftable"><thead><tr><th>field</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")
