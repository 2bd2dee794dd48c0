"""A run's model as a folder: the adapter as saved, or one standalone merged model, with its card.

    export_folder(runs.export_source("my-run"), "out/", merge=True)   # loadable with plain transformers

`merged_model` is the run as one float32 model on the CPU, which the GGUF export and the
fidelity check start from too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..common.errors import RunError
from ..common.imports import import_serially, one_at_a_time
from ..modelio import loading, models
from .card import model_card, portable_adapter_config
from .source import ExportSource


def merged_model(cfg, src: Path):
    """A run's model as one float32 model on the CPU: an adapter (`src`) merged into the
    unquantised base named by `cfg.model` (W + (α/r)·B·A; a 4-bit base would bake its rounding
    error in), or a full run's saved model."""
    import torch
    if not (src / "adapter_config.json").is_file():
        return loading.load_model(str(src), dtype=torch.float32, device="cpu")
    models.check_adapter(src)
    base = loading.load_model(cfg.model, dtype=torch.float32, device="cpu")
    import_serially(("peft",))   # a first import of peft, not alongside another thread's
    from peft import PeftModel
    return PeftModel.from_pretrained(base, str(src)).merge_and_unload()


def export_folder(run: ExportSource, out: str | Path, merge: bool = False) -> Path:
    """Write a run's model into the new folder `out`.

    merge=True writes a standalone model folder (safetensors) loadable with plain
    transformers: for adapter runs the adapter is merged into a full-precision copy of
    the base (W + (α/r)·B·A, computed once); a full run is copied. merge=False writes
    the adapter alone (or the full model) as saved by the run. Either way a model card
    (README.md: base, method, data, hyperparameters, measured results) goes with it."""
    src = run.model_dir
    if not src.is_dir():
        raise RunError(f"{run.name} has no saved model yet (status: {run.status})")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} exists and is not empty; choose a new folder")
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = run.cfg
    if merge and run.is_adapter:
        merged_model(cfg, src).save_pretrained(tmp, safe_serialization=True)
        with one_at_a_time():
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
        tokenizer.save_pretrained(tmp)  # the run saved its tokenizer
    else:
        shutil.copytree(src, tmp)
    portable_adapter_config(tmp, cfg.model)   # PEFT wrote the base's path on this host into it
    (tmp / "README.md").write_text(model_card(run.run_dir, cfg, run.summary, merged=merge), encoding="utf-8")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out
