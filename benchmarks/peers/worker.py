"""The worker side of bench_peers.py: one arm, LLaMA-Factory's or TuneLab's, in a fresh process.

    <python> -m benchmarks.peers.worker ARM OUT.json SETUP.json

LLaMA-Factory's arms run under LLaMA-Factory's own interpreter (its virtual environment,
made by llamafactory_venv.sh), TuneLab's under TuneLab's. Both are measured by the same code,
benchmarks/train_arms.py's `instrument` (a wrapper around transformers' `Trainer.train` and
`Trainer.training_step`, which both tools' trainers inherit) and `summarise`. So this module
imports nothing of either tool at the top: only the arm it runs.

ARM is `<tool>_<kind>_<variant>`: tool `lf` or `tunelab`, kind `sft` or `dpo`, variant
`defaults` (the tool's own defaults), `nogc` (gradient checkpointing off), `gc` (on),
`packed` (LLaMA-Factory's `packing`, gradient checkpointing off). SETUP.json (written by the
driver) holds the model folder, the data files and the shared settings.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.train_arms import instrument, summarise


def _llamafactory(kind: str, variant: str, setup: dict) -> None:
    """`llamafactory-cli train` with the shared settings, through its Python entry point."""
    from llamafactory.train.tuner import run_exp

    s = setup["settings"]
    args = {
        "model_name_or_path": setup["model"], "trust_remote_code": False,
        "stage": kind, "do_train": True, "finetuning_type": "lora",
        "lora_rank": s["lora_r"], "lora_alpha": s["lora_alpha"], "lora_dropout": s["lora_dropout"],
        "lora_target": "all",
        "dataset": setup["lf_dataset"][kind], "dataset_dir": setup["lf_dataset_dir"],
        "template": "smollm2", "cutoff_len": s["max_length"], "overwrite_cache": True,
        "output_dir": tempfile.mkdtemp(prefix="bench-lf-"), "overwrite_output_dir": True,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "plot_loss": False,
        "disable_tqdm": True,
        "per_device_train_batch_size": setup["batch"][kind], "gradient_accumulation_steps": 1,
        "max_steps": setup["steps"][kind], "learning_rate": s["lr"], "lr_scheduler_type": s["scheduler"],
        "seed": s["seed"], "bf16": setup["bf16"], "use_cpu": setup["use_cpu"],
    }
    if kind == "dpo":
        args.update(pref_beta=0.1, pref_loss="sigmoid")
    if variant in ("nogc", "packed"):
        args["disable_gradient_checkpointing"] = True
    if variant == "packed":
        args["packing"] = True
    run_exp(args)


def _tunelab(kind: str, variant: str, setup: dict) -> None:
    from tunelab import RunConfig, run

    s = setup["settings"]
    cfg = {"method": "lora" if kind == "sft" else "dpo", "model": setup["model"], "name": f"peers-{kind}",
           "data": {"train": setup["data"][kind], "eval_fraction": 0.0},
           "train": {"max_steps": setup["steps"][kind], "batch_size": setup["batch"][kind], "lr": s["lr"],
                     "max_length": s["max_length"], "scheduler": s["scheduler"], "seed": s["seed"],
                     "logging_steps": 1, "gradient_checkpointing": variant == "gc"},
           "lora": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": s["lora_dropout"],
                    "target_modules": s["target_modules"]}}
    if kind == "dpo":
        cfg["dpo"] = {"beta": 0.1}
    run(RunConfig.from_dict(cfg))


def main(arm: str, out: Path, setup: dict) -> None:
    tool, kind, variant = arm.split("_")
    box: dict = {"arm": arm, "tool": tool, "variant": variant}
    instrument(box)
    (_llamafactory if tool == "lf" else _tunelab)(kind, variant, setup)
    summarise(box, kind)
    box["python"] = sys.executable
    box["versions"] = _versions(tool)
    out.write_text(json.dumps(box, indent=1, default=str))


def _versions(tool: str) -> dict:
    import importlib.metadata as md
    names = ("torch", "transformers", "trl", "peft", "accelerate", "llamafactory" if tool == "lf" else "tunelab")
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))
