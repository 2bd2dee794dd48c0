"""A model card (README.md) for an exported run: what it was trained from, how, and what was measured.

`folder.export_folder` writes it into every exported folder (`ggufexport` a GGUF card), merged model or adapter alone, so
the folder says what it is wherever it goes (a hub repository shows the YAML block as
its metadata). Everything in it comes from the run folder: config.yaml, summary.json,
status.json and the data file's rows as the run read them.

An export leaves the host, so nothing in it says where things lay there: data files are
named by file name, row count and sha256, a local base model by its folder's name (a hub
id or the bundled model's hub id as they are), and the run's config is shown that way too.
`portable_adapter_config` does the same for the base that PEFT writes into an adapter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from ..modelio import models
from . import fidelity

_WHAT = {
    "full": "full fine-tuning: every weight of the base model trained",
    "lora": "LoRA: the base frozen, low-rank adapters W' = W + (α/r)·B·A trained",
    "qlora": "QLoRA: the base frozen in 4-bit NF4, LoRA adapters trained on top",
    "dpo": "DPO: trained directly on preference pairs (chosen vs rejected), no reward model",
    "kto": "KTO: trained on single answers marked desirable or undesirable, no pairs needed",
    "orpo": "ORPO: SFT on the chosen answers plus an odds-ratio penalty on the rejected ones, no reference model",
}


def base_model_id(model: str) -> str:
    """The base as a reader elsewhere can name it: the bundled model's own hub id, a hub id
    as given, or (a local folder) the folder's name, never its path on this host."""
    key = models.bundled_key(model)
    if key:
        return models.BUNDLED_MODELS[key].hub_id
    path = Path(model).expanduser()
    if path.is_dir() or model.startswith(("/", ".", "~", "\\")) or "\\" in model or model.count("/") > 1:
        return path.resolve().name or "model"
    return model


def portable_adapter_config(folder: Path, model: str) -> None:
    """Name the base in `folder`'s adapter_config.json as `base_model_id` does: PEFT writes
    the path it was loaded from (the host's folder, or the workspace's bundled copy)."""
    config_file = Path(folder) / "adapter_config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = base_model_id(model)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def portable_config(cfg) -> dict:
    """The run's config as the card shows it: data files by name, the base by `base_model_id`."""
    d = cfg.to_dict()
    d["model"] = base_model_id(cfg.model)
    for key in ("train", "eval"):
        if d.get("data", {}).get(key):
            d["data"][key] = Path(d["data"][key]).name
    return d


def _data_line(path: str | None) -> str:
    if not path:
        return "—"
    p = Path(path)
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        rows = sum(1 for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()) \
            if p.suffix == ".jsonl" else None
    except OSError:
        return f"`{p.name}` (no longer on disk)"
    return f"`{p.name}`" + (f", {rows} rows" if rows is not None else "") + f", sha256 {digest}…"


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def model_card(run_dir: Path, cfg, summary: dict, merged: bool, gguf: str | None = None) -> str:
    """The README.md of an export of `run_dir`; `gguf`: the "Load it" text of a GGUF export."""
    adapter = cfg.weights != "full"
    base = base_model_id(cfg.model)
    kind = "GGUF" if gguf else "merged model" if merged or not adapter else "adapter"
    library = "gguf" if gguf else "transformers" if kind == "merged model" else "peft"
    tags = ["tunelab", cfg.method] + (["lora"] if adapter else []) + (["gguf"] if gguf else [])
    meta = {"base_model": base, "library_name": library, "tags": sorted(set(tags)), "pipeline_tag": "text-generation"}
    method = _WHAT[cfg.method] + (f" ({cfg.method.upper()} trains: {cfg.adapter})" if cfg.adapter else "")
    if gguf:
        load = gguf
    elif kind == "merged model":
        load = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```")
    else:
        load = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n"
                "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```")
    t = cfg.train
    hyper = {"steps": t.max_steps, "batch size": t.batch_size, "gradient accumulation": t.grad_accum,
             "learning rate": t.lr, "scheduler": t.scheduler, "warmup": t.warmup_ratio, "max length": t.max_length,
             "precision": summary.get("precision") or t.precision, "seed": t.seed}
    if adapter:
        hyper |= {"LoRA rank r": cfg.lora.r, "LoRA alpha": cfg.lora.alpha, "LoRA dropout": cfg.lora.dropout,
                  "target modules": cfg.lora.target_modules if isinstance(cfg.lora.target_modules, str)
                  else ", ".join(cfg.lora.target_modules)}
    if cfg.weights == "qlora":
        hyper |= {"quantisation": cfg.qlora.quant_type, "double quantisation": cfg.qlora.double_quant}
    if cfg.adapter:
        hyper |= {f"{cfg.method.upper()} beta": getattr(cfg, cfg.method).beta}
    if cfg.method == "kto":
        hyper |= {"desirable weight": cfg.kto.desirable_weight, "undesirable weight": cfg.kto.undesirable_weight}
    results = {
        "steps trained": summary.get("steps"), "final training loss": summary.get("final_loss"),
        "final eval loss": summary.get("final_eval_loss"),
        "trainable parameters": summary.get("trainable_params"),
        "trainable share (%)": summary.get("trainable_pct"), "wall time (s)": summary.get("wall_time_s"),
        "tokens/s": summary.get("tokens_per_s"), "peak memory (MB)": summary.get("peak_memory_mb"),
        "device": summary.get("device"),
    }
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {run_dir.name} ({kind})", "",
             f"Made with TuneLab from the run `{run_dir.name}`.", "",
             _base_line(cfg.model, base, kind),
             f"- **Method:** {method}",
             f"- **Training data:** {_data_line(cfg.data.train)}",
             f"- **Evaluation data:** {_data_line(cfg.data.eval) if cfg.data.eval else _eval_split(cfg)}",
             "", "## Load it", "", load, "", "## Hyperparameters", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in hyper.items()]
    lines += ["", "## Measured in the run", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in results.items()]
    lines += ["", "The run's full config, to train it again with `python -m tunelab train config.yaml` "
              "from the folder that holds the data files named above (and with the base model named so):", "",
              "```yaml", yaml.safe_dump(portable_config(cfg), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _base_line(model: str, base: str, kind: str) -> str:
    key = models.bundled_key(model)
    if not key:
        local = "" if base == model else " (a local model folder of that name)"
        return f"- **Base model:** `{base}`{local}"
    fits = "the adapter fits that copy best" if kind == "adapter" else "this model starts from that copy"
    return (f"- **Base model:** `{base}`, as TuneLab's bundled `{model}`: converted from the model's "
            f"{models.BUNDLED_MODELS[key].gguf_file} file, so its weights are the hub's rounded to 4 bits "
            f"and back; {fits}")


def _eval_split(cfg) -> str:
    f = cfg.data.eval_fraction
    return f"{f:.0%} of the training rows, held out" if f else "none"


def fidelity_text(measured: dict | None, adapter: bool) -> str:
    """What the card says about whether the export still is the run (Markdown, one paragraph)."""
    if measured is None:
        return "**Still the run?** Not measured (exported with `--no-check`)."
    if measured.get("error"):
        return f"**Still the run?** Not measured: {measured['error']}."
    how = (f"measured when it was written: {measured['prompts']} prompts, greedy answers of up to "
           f"{measured['max_new_tokens']} tokens, the file{'s' if adapter else ''} read back to floats as llama.cpp "
           f"reads {'them (the adapter added to the base)' if adapter else 'it'}, against the run and against its base")
    text = f"**Still the run?** {fidelity.line(measured)} ({how}.)"
    if measured["verdict"] == "lost":
        text += (f"\n\n**This file has lost the run's change**: {measured['why']}. "
                 f"Export another type instead: {measured['instead']}.")
    elif measured.get("roughly"):
        text += f"\n\nFor the run as it trained, export another type: {measured['instead']}."
    return text


def gguf_card(run_dir: Path, cfg, summary: dict, files: list[dict], adapter: bool,
              measured: dict | None = None) -> str:
    """The README.md of a GGUF export: the files, whether they still are the run (`measured`,
    fidelity.score's result; None: not measured), and how to run them in llama.cpp and Ollama."""
    names = [Path(f["path"]).name for f in files]
    rows = ["| file | GGUF type | size | tensors by type |", "| --- | --- | ---: | --- |"]
    rows += [f"| `{n}` | {f['type']} | {f['bytes'] / 2**20:.1f} MiB | "
             f"{', '.join(f'{k} {v}' for k, v in sorted(f['tensors'].items()))} |" for n, f in zip(names, files)]
    fallback = sorted({t for f in files for t in f.get("f16_fallback", [])})
    if fallback:
        rows += ["", f"Written as F16 because their rows are not whole blocks of the type: {', '.join(fallback)}."]
    rows += ["", fidelity_text(measured, adapter)]
    lora = f" --lora {names[1]}" if adapter else ""
    load = "\n".join(rows + [
        "", "With llama.cpp (`llama-cli` / `llama-server` from a llama.cpp build or release):", "", "```sh",
        f"llama-cli -m {names[0]}{lora} -cnv", f"llama-server -m {names[0]}{lora} --port 8080", "```", "",
        "With Ollama (the `Modelfile` here holds the chat template, system prompt and sampling settings):", "",
        "```sh", "ollama create my-model -f Modelfile", "ollama run my-model", "```", "",
        "LM Studio and other llama.cpp-based apps open the `.gguf` file directly."
        + (" The adapter file is llama.cpp's GGUF LoRA layout: llama.cpp (`--lora`, `--lora-scaled`), "
           "llama-server and Ollama (`ADAPTER`) apply it to the base file at load time." if adapter else "")])
    return model_card(run_dir, cfg, summary, merged=not adapter, gguf=load)
