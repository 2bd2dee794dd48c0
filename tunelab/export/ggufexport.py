"""A finished run as GGUF, ready for llama.cpp, Ollama and LM Studio.

    python -m tunelab export RUN --gguf q8_0 --out DIR            # the merged model
    python -m tunelab export RUN --gguf f16 --gguf-adapter --out DIR   # the adapter + the base

DIR gets the `.gguf` file(s), an Ollama `Modelfile` and a README.md (the model card with
how to run it in llama.cpp and Ollama). Unless told not to (`measure=False`, the CLI's
`--no-check`), the file(s) are then read back as a runtime reads them and measured against
the run and its base (`fidelity`): whether the export still is the run goes into the
summary and the card. Everything is written under a temporary name beside
DIR and renamed into place at the end: a failed export leaves nothing under DIR's name.
Adapter runs (LoRA, QLoRA, DPO, KTO, ORPO) are merged into a float32 copy of the base first
(a QLoRA run's 4-bit rounding is not baked in); full runs are written as they are.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..common.decoding import ANSWER_TOKENS, FAIR_SAMPLING
from ..common.imports import one_at_a_time
from ..modelio import loading, models
from . import fidelity, gguf_out, ollama
from .card import gguf_card
from .folder import merged_model
from .source import ExportSource

EXPORTABLE = ("finished", "stopped")   # a saved model that training is done with


def check(run: ExportSource, kind: str, adapter: bool) -> dict:
    """Everything that can be refused before any work: the run's state, the type, the
    architecture, the base. Returns the model's config (config.json)."""
    status = run.status
    if status not in EXPORTABLE:
        run.fail(f"cannot export a {status or 'unknown'} run; only a finished or stopped run has a final model")
    src = run.model_dir
    if not src.is_dir():
        run.fail(f"has no saved model (status: {status})")
    try:
        gguf_out.check_type(kind)
    except gguf_out.GGUFError as e:
        run.fail(str(e))
    cfg = run.cfg
    if adapter and not run.is_adapter:
        run.fail("--gguf-adapter needs an adapter run; this run trained every weight (export the model)")
    try:
        base_dir = Path(models.resolve_model(cfg.model)) if run.is_adapter else src
    except Exception as e:   # a base folder deleted or moved, a hub id not in the cache
        run.fail(f"its base model {cfg.model!r} cannot be found ({str(e).splitlines()[0]})")
    config_file = base_dir / "config.json"
    if not config_file.is_file():
        run.fail(f"its base model {cfg.model!r} has no config.json at {base_dir}")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    try:
        gguf_out.check_config(config)
    except gguf_out.GGUFError as e:
        run.fail(str(e))
    return config


def export_gguf(run: ExportSource, out: str | Path, kind: str = "q8_0", adapter: bool = False,
                used: dict | None = None, measure: bool = True) -> dict:
    """Write `run` as GGUF into the new folder `out`. `used`: how the run was last used in the
    arena (`tunelab.arena.chat.run_settings`), which its Modelfile then keeps; None: the arena's
    defaults. Returns a summary: the folder, each file's size, the seconds taken and, with
    `measure`, "fidelity": the file(s) against the run and its base (`fidelity.score`, or
    {"error": why} where it could not be measured; the export itself stands)."""
    kind = str(kind).lower()
    config = check(run, kind, adapter)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        run.fail(f"{out} exists and is not empty; choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp-gguf")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    try:
        files, measured = _write(run, config, kind, adapter, tmp, used, measure)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": run.name, "out": str(out), "type": kind, "adapter": adapter,
            "files": [dict(f, path=str(out / Path(f["path"]).name)) for f in files],
            "fidelity": measured, "seconds": time.perf_counter() - started}


def _write(run: ExportSource, config, kind, adapter, tmp: Path, used, measure: bool) -> tuple[list[dict], dict | None]:
    import torch

    cfg, src = run.cfg, run.model_dir
    with one_at_a_time():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)   # the run saved it, template too
    try:
        gguf_out.read_tokenizer(tokenizer)   # a tokenizer GGUF cannot describe: refused before the merge
    except gguf_out.GGUFError as e:
        run.fail(str(e))
    name = run.name
    files = []
    if adapter:
        from safetensors.torch import load_file
        peft_cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
        state = {k: v.float().numpy() for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
        files.append(gguf_out.write_adapter(tmp / f"{name}-lora.gguf", config, state, float(peft_cfg["lora_alpha"])))
        model = loading.load_model(cfg.model, dtype=torch.float32)
        model_file = f"{name}-base-{kind}.gguf"
    else:
        model = merged_model(cfg, src)
        model_file = f"{name}-{kind}.gguf"
    weights = ((k, v.detach().float().numpy()) for k, v in model.state_dict().items())
    files.insert(0, gguf_out.write_model(tmp / model_file, config, weights, tokenizer, kind,
                                         name=f"{name} ({cfg.method})", pre=source_pre(cfg.model)))
    measured = _measure(cfg, src, model, kind, adapter, files, config, tokenizer) if measure else None
    del model
    settings, origin = modelfile_settings(used)
    adapter_file = Path(files[1]["path"]).name if adapter else None
    (tmp / "Modelfile").write_text(ollama.modelfile(model_file, tokenizer, settings, origin, adapter_file),
                                   encoding="utf-8")
    (tmp / "README.md").write_text(gguf_card(run.run_dir, cfg, run.summary, files, adapter, measured),
                                   encoding="utf-8")
    return files, measured


def _measure(cfg, src: Path, model, kind: str, adapter: bool, files: list[dict], config: dict, tokenizer) -> dict:
    """The written file(s) against the run and its base (`fidelity`). `model` is what was
    written: the run (merged) or, for an adapter export, the base; the other is loaded here,
    and once the reference is taken the file is loaded into one of them. Anything that goes
    wrong becomes {"error": ...}: a measure that cannot be taken does not undo the export.
    A file that lost the run's change, or keeps it only roughly, gets "instead": the type to
    export instead, in words."""
    import torch
    started = time.perf_counter()
    try:
        if adapter:
            run, base = merged_model(cfg, src), model
        else:
            run, base = model, loading.load_model(cfg.model, dtype=torch.float32)
        ref = fidelity.reference(run, base, tokenizer, fidelity.conversations(cfg))
        other = base if base is not model else run   # never the caller's model: it is not ours to overwrite
        del run, base
        result = fidelity.score(ref, fidelity.load_export(other, files, config))
    except Exception as e:   # a base not on this machine any more, a file that cannot be read back
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                "seconds": time.perf_counter() - started}
    if result["verdict"] == "lost" or result["roughly"]:
        result["instead"] = fidelity.suggestion(f"{kind}+lora" if adapter else kind,
                                                (src / "adapter_config.json").is_file(), cfg.model)
    return result | {"seconds": time.perf_counter() - started}


def source_pre(model: str) -> str | None:
    """llama.cpp's pre-tokenizer name in the GGUF file a bundled base came from (None for
    other bases, or when that file cannot be read)."""
    key = models.bundled_key(model)
    if not key:
        return None
    try:
        import gguf
        spec = models.BUNDLED_MODELS[key]
        field = gguf.GGUFReader(str(models.package_dir(spec) / spec.gguf_file)).fields["tokenizer.ggml.pre"]
        return str(field.contents())
    except Exception:   # the package is gone (a Space without it): the tokenizer's own description
        return None


def modelfile_settings(used: dict | None) -> tuple[dict, str]:
    """The Modelfile's sampling, answer length and system prompt, and where they come from:
    `used` (the arena settings last used with this run, `arena.chat.run_settings`), or the
    shared defaults: SmolLM2's recommended sampling and the arena's answer length."""
    defaults = {"temperature": FAIR_SAMPLING["temperature"], "top_p": FAIR_SAMPLING["top_p"],
                "max_new_tokens": ANSWER_TOKENS, "system": None}
    if not used:
        return defaults, "the arena's defaults (no label in the arena comes from this run)"
    used = dict(used)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(used.pop("labelled")))
    return defaults | {k: v for k, v in used.items() if v is not None}, f"as last used in the arena ({when})"
