"""The Runs tab's downloads of a run's model: built once, kept where Gradio serves files from.

A merged model is hundreds of MB. Gradio copies a file that a handler returns into its
cache folder (GRADIO_TEMP_DIR, by default <tmp>/gradio) unless it already lies there, and
it did so for every download, beside our own zip in the system temp folder: two full
copies a click. So the zip is built inside Gradio's folder (`root`, which the Runs tab
takes from its Download component) and handed out as it is. One zip is kept per run and
kind (adapter or model, merged): the same download again gets the same file; a model
saved again since (a resumed run) gets a new zip and the old one goes; zips idle for an
hour are removed. Each lies in a folder named by a hash with a per-process secret, so its
address cannot be guessed from the run id. A GGUF build measures the file(s) against the
run and its base (`export.fidelity`); the result is kept beside the zip (FIDELITY) so a
second download of the same zip says it too (`measured`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from ..arena.chat import run_settings
from ..export import gguf_out, ggufexport
from ..export.folder import export_folder
from ..service import access
from ..training import runs
from ..training.runfolder import MODEL_DIR, RunError
from . import logic

FOLDER = "tunelab-exports"
FIDELITY = "fidelity.json"   # beside a GGUF zip: what the export's check measured
IDLE_S = 3600   # a download starts at once; an hour is plenty for something this large
_SECRET = secrets.token_hex(16)
_LOCK = threading.Lock()   # one build at a time, and no reuse of a zip being replaced


def _signature(model_dir: Path) -> str:
    """Changes whenever the run's saved model does: every file's name, size and mtime."""
    h = hashlib.sha256()
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(model_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def prune(base: Path) -> None:
    """Remove builds untouched for IDLE_S (a reuse touches its zip), half-built ones included."""
    if not base.is_dir():
        return
    now = time.time()
    for d in base.iterdir():
        try:
            newest = max((p.stat().st_mtime for p in d.rglob("*")), default=d.stat().st_mtime)
        except OSError:
            continue
        if now - newest > IDLE_S:
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def _kind(run_id: str, merge: bool, gguf: str | None, gguf_adapter: bool = False) -> tuple[Path, str]:
    """The run's saved model folder, and what a download of it is called: adapter, model
    (a full run as saved), merged, gguf-<type>, or gguf-<type>-adapter (the base as <type>
    beside the LoRA adapter as GGUF)."""
    model = logic.run_dir(run_id) / MODEL_DIR   # by id only: never a path a client sent
    if not model.is_dir():
        raise RunError(f"{run_id} has no saved model yet")
    if gguf:
        if gguf_adapter and not (model / "adapter_config.json").is_file():
            raise RunError(f"{run_id} trained every weight: there is no adapter to write beside a base; "
                           "download the GGUF model")
        return model, f"gguf-{gguf_out.check_type(gguf)}" + ("-adapter" if gguf_adapter else "")
    return model, "merged" if merge else "adapter" if (model / "adapter_config.json").is_file() else "model"


def _allowed(run_id: str, merge: bool, gguf: str | None, user: str | None,
             gguf_adapter: bool = False) -> tuple[Path, str]:
    """_kind, once `user` (the signed-in one; None: the host) may download the run
    (access.check: TUNELAB_DOWNLOADS); RunError otherwise."""
    model, kind = _kind(run_id, merge, gguf, gguf_adapter)
    access.check(runs.run_status(model.parent), user, "download")
    return model, kind


def zip_name(run_id: str, merge: bool, gguf: str | None = None, user: str | None = None,
             gguf_adapter: bool = False) -> str:
    """The file name of that download (what the page says it is building), <run>-<kind>.zip;
    RunError when there is nothing to download or `user` may not."""
    return f"{run_id}-{_allowed(run_id, merge, gguf, user, gguf_adapter)[1]}.zip"


def measured(zipped: str | Path) -> dict | None:
    """What the GGUF build of `zipped` measured (`ggufexport.export_gguf`'s "fidelity"), or
    None for other downloads and where nothing was kept."""
    import json
    try:
        return json.loads((Path(zipped).parent / FIDELITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def export_zip(run_id: str, merge: bool, root: str | Path, gguf: str | None = None,
               user: str | None = None, gguf_adapter: bool = False) -> Path:
    """A zip of the run's model with its model card, made by `export_folder`: the adapter or
    full model as saved, or with merge=True a standalone merged model; with `gguf` a GGUF
    type, the merged model as one GGUF file with its Ollama Modelfile
    (`ggufexport.export_gguf`), with `gguf_adapter` the base as that type and the LoRA
    adapter as GGUF beside it. Built under `root`/tunelab-exports once per run, kind and
    saved model; later calls return it. `user` must be allowed to download the run (see _allowed)."""
    model, kind = _allowed(run_id, merge, gguf, user, gguf_adapter)
    src = model.parent
    base = Path(root).resolve() / FOLDER
    name = f"{run_id}-{kind}.zip"
    key = hashlib.sha256(f"{_SECRET}\0{run_id}\0{kind}\0{_signature(model)}".encode()).hexdigest()[:32]
    with _LOCK:
        prune(base)
        zipped = base / key / name
        if zipped.is_file():
            os.utime(zipped)   # in use again: not idle
            return zipped
        for old in base.glob(f"*/{name}"):   # a zip of this run's model as it was before
            shutil.rmtree(old.parent, ignore_errors=True)
        build = base / f"{key}.build"
        shutil.rmtree(build, ignore_errors=True)
        try:
            checked = None
            if gguf:
                done = ggufexport.export_gguf(runs.export_source(str(src)), build / kind, gguf,
                                              adapter=gguf_adapter, used=run_settings(src.name))
                folder, checked = Path(done["out"]), done["fidelity"]
            else:
                folder = export_folder(runs.export_source(str(src)), build / kind, merge=merge)
            made = Path(shutil.make_archive(str(build / "zip"), "zip", root_dir=folder))
            zipped.parent.mkdir(parents=True, exist_ok=True)
            if checked is not None:
                import json
                (zipped.parent / FIDELITY).write_text(json.dumps(checked), encoding="utf-8")
            os.replace(made, zipped)   # whole or absent: a reuse never finds half a zip
        finally:
            shutil.rmtree(build, ignore_errors=True)   # the unzipped copy (a merged model: as large again)
    return zipped
