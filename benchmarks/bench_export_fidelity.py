"""Does each GGUF type keep a real run? Size and fidelity of every export of a small DPO run.

    .venv/bin/python -m benchmarks.bench_export_fidelity              # trains the run first (~2-8 min)
    .venv/bin/python -m benchmarks.bench_export_fidelity --run PATH   # an existing finished adapter run

The run: lab 4's DPO (labs/lab4_dpo.yaml: LoRA r 8 on every linear, β 0.1, lr 1e-4) for
--steps steps on the bundled SmolLM2-135M-Instruct, trained by the CLI in a throwaway
TUNELAB_HOME. A short run is the point: its update is small, the case where a 4-bit file
can round it away. Every export type is written from it as `python -m tunelab export
--gguf` writes it (f16, bf16, q8_0, q4_0, q4_1 merged; the LoRA adapter GGUF beside a
q4_0, q4_1 or q8_0 base), read back to floats as a runtime reads it, and measured by
tunelab.export.fidelity, the check every export runs: top-1 agreement with the run, mean
KL(run ‖ file), whether its greedy answers are closer to the run's or the base's, verdict.

It also measures why q4_1 loses the run (docs/export.md, "Why a 4-bit file can lose a
small update"): for every Q4_1 block of the layers' weights, whether the run's merged weights
quantise to the very codes of the base, and the update's size against the block's grid
step.

Writes benchmarks/results/export_fidelity.json (everything) and
tunelab/export/export_figures.json (what the export menu's hints and the "use this type
instead" suggestion read).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL = "smollm2-135m-instruct"
MERGED = ("f16", "bf16", "q8_0", "q4_0", "q4_1")
ADAPTER_BASES = ("q4_0", "q4_1", "q8_0")


def train(steps: int) -> Path:
    """Lab 4's DPO run for `steps` steps in a throwaway workspace (the bundled model linked
    from this workspace's, so it is not converted again)."""
    from tunelab.modelio.models import resolve_model
    home = Path(tempfile.mkdtemp(prefix="bench-fidelity-home-"))
    (home / "models").mkdir()
    (home / "models" / MODEL).symlink_to(Path(resolve_model(MODEL)).resolve(), target_is_directory=True)
    cmd = [sys.executable, "-m", "tunelab", "train", "labs/lab4_dpo.yaml", "-q", "--set", f"train.max_steps={steps}",
           "--set", "name=fidelity"]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TUNELAB_HOME=str(home)), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training failed:\n{done.stderr[-2000:]}")
    return next((home / "runs").iterdir())


def grid_codes(base: dict, run: dict) -> dict:
    """How the run's update sits against the Q4_1 grid of the base's layers: the share of
    blocks and of weights whose Q4_1 codes (and block scale and minimum) are the base's,
    and |update| / grid step (d = (max - min) / 15 of the base's block)."""
    import gguf
    import numpy as np
    T = gguf.GGMLQuantizationType.Q4_1
    blocks = same_blocks = weights = same_weights = 0
    ratios = []
    for name, w in base.items():
        if not name.endswith("_proj.weight"):
            continue
        qa = gguf.quants.quantize(w, T).reshape(-1, 20)   # per block: d, m (f16), 16 bytes of 32 nibbles
        qb = gguf.quants.quantize(run[name], T).reshape(-1, 20)
        codes = lambda q: np.concatenate([q[:, 4:] & 0x0F, q[:, 4:] >> 4], axis=1)   # noqa: E731
        same = codes(qa) == codes(qb)
        blocks += qa.shape[0]
        same_blocks += int((qa == qb).all(1).sum())
        weights += same.size
        same_weights += int(same.sum())
        wb = w.reshape(-1, 32)
        step = (wb.max(1) - wb.min(1)) / 15
        delta = np.abs(run[name].reshape(-1, 32) - wb)
        ratios.append((delta / np.where(step > 0, step, np.inf)[:, None]).ravel())
    r = np.concatenate(ratios)
    return {"blocks": blocks, "blocks_unchanged": same_blocks / blocks, "weights": weights,
            "codes_unchanged": same_weights / weights, "update_over_step_median": float(np.median(r)),
            "update_over_step_p99": float(np.quantile(r, 0.99)), "update_over_step_max": float(r.max()),
            "update_under_half_step": float((r < 0.5).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a finished adapter run (id or folder) instead of training one")
    ap.add_argument("--steps", type=int, default=10, help="DPO steps of the run it trains")
    ap.add_argument("--only", help="comma-separated arms (e.g. q4_1,q8_0+lora) for a quick look; writes no figures")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/export_fidelity.json"))
    ap.add_argument("--figures", default=str(ROOT / "tunelab/export/export_figures.json"))
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoTokenizer

    from tunelab.export import fidelity, gguf_out
    from tunelab.modelio import loading, models
    from tunelab.training.config import RunConfig
    from tunelab.export.folder import merged_model
    from tunelab.export.ggufexport import source_pre
    from tunelab.training.runs import find_run

    t0 = time.perf_counter()
    run_dir = find_run(args.run) if args.run else train(args.steps)
    train_s = None if args.run else time.perf_counter() - t0
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    src = run_dir / "model"
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"run {run_dir.name}: {cfg.method} ({cfg.weights}), {summary.get('steps')} steps, lr {cfg.train.lr}, "
          f"final loss {summary.get('final_loss'):.4f}" + (f", trained in {train_s:.0f} s" if train_s else ""), flush=True)
    tok = AutoTokenizer.from_pretrained(str(src))
    config = json.loads(Path(models.resolve_model(cfg.model), "config.json").read_text())
    run = merged_model(cfg, src).eval()
    base = loading.load_model(cfg.model, dtype=torch.float32).eval()
    run_w = {k: v.detach().float().numpy() for k, v in run.state_dict().items()}
    # a copy: `base` is loaded with each file in turn, in place
    base_w = {k: v.detach().float().numpy().copy() for k, v in base.state_dict().items()}
    grid = grid_codes(base_w, run_w)
    print(f"Q4_1 grid: {grid['codes_unchanged']:.2%} of the layers' weights and {grid['blocks_unchanged']:.2%} of "
          f"their blocks quantise to the base's codes; |update| / grid step: median {grid['update_over_step_median']:.3f}, "
          f"99th percentile {grid['update_over_step_p99']:.3f}, max {grid['update_over_step_max']:.2f}", flush=True)

    t = time.perf_counter()
    ref = fidelity.reference(run, base, tok, fidelity.conversations(cfg))
    ref_s = time.perf_counter() - t
    b = ref["base"]
    print(f"reference: {len(ref['prompts'])} prompts, {b['positions']} positions in {ref_s:.1f} s; the base against "
          f"the run: top-1 {b['agreement']:.1%}, KL {b['kl']:.4f}", flush=True)
    del run   # `base` is from here on the model each file is loaded into

    work = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    peft_cfg = json.loads((src / "adapter_config.json").read_text())
    from safetensors.torch import load_file
    lora = gguf_out.write_adapter(work / "lora.gguf", config,
                                  {k: v.float().numpy() for k, v in load_file(str(src / "adapter_model.safetensors")).items()},
                                  float(peft_cfg["lora_alpha"]))
    arms = [(k, k, [(run_w, k)]) for k in MERGED] + [(f"{k}+lora", k, [(base_w, k), lora]) for k in ADAPTER_BASES]
    if args.only:
        arms = [a for a in arms if a[0] in args.only.split(",")]
    results = {}
    for key, kind, parts in arms:
        weights, _ = parts[0]
        t = time.perf_counter()
        info = gguf_out.write_model(work / f"{kind}-{'base' if len(parts) > 1 else 'run'}.gguf", config,
                                    iter(weights.items()), tok, kind, pre=source_pre(cfg.model))
        files = [info] + parts[1:]
        t = time.perf_counter()
        fidelity.load_export(base, files, config)
        load_s = time.perf_counter() - t
        r = fidelity.score(ref, base)
        size = sum(f["bytes"] for f in files)
        results[key] = {"type": kind, "adapter": len(parts) > 1, "base_type": kind if len(parts) > 1 else None,
                        "bytes": size, "mib": size / 2**20, "files": [Path(f["path"]).name for f in files],
                        "write_s": info["seconds"], "read_back_s": load_s,
                        "measure_s": r["seconds"] - ref["seconds"]} | {
            k: r[k] for k in ("agreement", "kl", "kl_to_base", "kept", "closer_to_run", "closer_to_base", "ties",
                              "neither", "same_as_base", "votes", "prompts", "positions", "verdict", "why")}
        print(f"{key:>9}  {size / 2**20:6.1f} MiB  top-1 {r['agreement']:6.1%}  KL {r['kl']:.4f}  "
              f"KL to base {r['kl_to_base']:.4f}  answers run/base {r['closer_to_run']}/{r['closer_to_base']} "
              f"(ties {r['ties']}, unlike both {r['neither']}, same {r['same_as_base']})  "
              f"-> {r['verdict']}  (read back {load_s:.1f} s, measured {r['seconds'] - ref['seconds']:.1f} s)", flush=True)
        Path(info["path"]).unlink()
    shutil.rmtree(work)   # the adapter file
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "python": platform.python_version(),
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "gguf": __import__("importlib.metadata").metadata.version("gguf")}}
    what = f"{summary.get('steps')}-step {cfg.method.upper()} run (lab 4's, LoRA r {cfg.lora.r}, lr {cfg.train.lr:g})"
    run_info = {"what": what, "method": cfg.method, "steps": summary.get("steps"), "lr": cfg.train.lr,
                "final_loss": summary.get("final_loss"), "train_s": train_s, "config": "labs/lab4_dpo.yaml"}
    told = [{"prompt": tok.decode(p[0]), "run": tok.decode(a), "base": tok.decode(b)}
            for p, a, b in zip(ref["prompts"], ref["run_answers"], ref["base_answers"]) if a != b]
    report = {"benchmark": "export_fidelity", "date": time.strftime("%Y-%m-%d"), "machine": machine, "model": MODEL,
              "run": run_info, "prompts": len(ref["prompts"]), "max_new_tokens": ref["max_new_tokens"],
              "answers_where_run_and_base_differ": told,
              "reference_s": ref_s, "base_vs_run": ref["base"], "q4_1_grid": grid,
              "min_agreement": fidelity.MIN_AGREEMENT, "types": results, "seconds": time.perf_counter() - t0}
    if args.only:
        print(f"--only: nothing written ({report['seconds']:.0f} s in all)")
        return
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    keep = ("type", "adapter", "base_type", "mib", "agreement", "kl", "kl_to_base", "closer_to_run", "closer_to_base",
            "same_as_base", "prompts", "verdict")
    figures = {"source": "benchmarks/bench_export_fidelity.py (full figures: benchmarks/results/export_fidelity.json)",
               "date": report["date"], "model": MODEL,
               "machine": f"{machine['cores']}-core {machine['cpu']} ({machine['cpu_capability']}), torch "
                          f"{torch.__version__}",
               "run": {k: run_info[k] for k in ("what", "method", "steps", "lr")},
               "base_vs_run": {k: ref["base"][k] for k in ("agreement", "kl")},
               "types": {k: {f: v[f] for f in keep} for k, v in results.items()}}
    Path(args.figures).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.json} and {args.figures} ({report['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
