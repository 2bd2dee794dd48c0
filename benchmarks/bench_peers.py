"""TuneLab against LLaMA-Factory 0.9.5, back to back in one run, on the same data and model.

    bash benchmarks/peers/llamafactory_venv.sh            # once: LLaMA-Factory's own venv
    .venv/bin/python -m benchmarks.bench_peers --llamafactory-python .peers/llamafactory/bin/python

Both tools train the bundled SmolLM2-135M-Instruct (the same safetensors folder: in bf16,
as its authors publish it, where training is in bf16; see peer_model),
LoRA r 8, alpha 16, dropout 0 on every linear layer, max length 256, lr 2e-4 linear, seed 0,
in bf16 where the CPU has it (fp32 elsewhere), for one epoch, on lab 1's SFT rows (80 rows,
batch 8: 10 steps) and lab 3's DPO pairs (60 pairs, batch 4: 15 steps; beta 0.1, sigmoid loss). LLaMA-Factory reads the same
rows, written out in its own sharegpt format with a dataset_info.json, through its `smollm2`
template (the same system prompt and turn markers as the model's own chat template).

Arms, each in a fresh process (see peers/worker.py):

  lf_sft_defaults       LLaMA-Factory's defaults (it turns gradient checkpointing on)
  lf_sft_nogc           disable_gradient_checkpointing: true
  lf_sft_packed         its fastest: gradient checkpointing off and packing: true (rows laid end
                        to end into 256-token blocks, batch 8 blocks)
  tunelab_sft_defaults  tunelab's defaults (no checkpointing; answer head, short attention)
  tunelab_sft_gc        tunelab with train.gradient_checkpointing: true
  lf_dpo_defaults, lf_dpo_nogc, tunelab_dpo_defaults, tunelab_dpo_gc: the same for DPO
                        (LLaMA-Factory does not pack preference pairs)

Both tools' trainers subclass transformers' Trainer, so one wrapper (train_arms.instrument)
times each arm the same way: `Trainer.train` and each step, the tokens in each batch (its
attention masks), the resident memory while training, and the time from the moment the
trainer's setup reaches transformers' Trainer to the end of training ("end to end"). The
difference matters for DPO: LLaMA-Factory computes the reference log-probs in every step,
inside `train`; tunelab (TRL's precompute_ref_log_probs) computes them once, for every pair,
while the trainer is built, before `train`. End to end counts both, so the targets are
judged on it. samples/s is steps x batch / seconds; a packed arm's batch holds blocks, not
rows, so its samples/s is its tokens/s over the mean tokens of a row (the rows' chat-template
length, measured here). "process s" is the subprocess's whole wall time: imports, model
load, data preparation, training, saving and exit.

Targets (issue #35), on 2 cores: tunelab SFT >= 2.5x LLaMA-Factory, DPO >= 2x, each at a
peak memory (while training) no higher than LLaMA-Factory's default run. The summary prints
each ratio against LLaMA-Factory's defaults and against its fastest arm. Results go to
benchmarks/results/peers.json. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from .train_arms import DPO_DATA, MODEL, SETTINGS, SFT_DATA, machine_info, median, run_worker, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("lf_sft_defaults", "lf_sft_nogc", "lf_sft_packed", "tunelab_sft_defaults", "tunelab_sft_gc",
        "lf_dpo_defaults", "lf_dpo_nogc", "tunelab_dpo_defaults", "tunelab_dpo_gc")
BATCH = {"sft": 8, "dpo": 4}
TARGET = {"sft": 2.5, "dpo": 2.0}
LF_DATASETS = {"sft": "tunelab_pirate_sft", "dpo": "tunelab_concise_dpo"}
_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
         "assistant_tag": "assistant", "system_tag": "system"}


def write_llamafactory_data(folder: Path) -> dict:
    """The lab rows in LLaMA-Factory's sharegpt format, and the dataset_info.json naming them.
    Rows are read by tunelab's own loader, so both tools train on exactly the same rows."""
    from tunelab.data import load_examples

    _, sft = load_examples(SFT_DATA, "sft")
    _, pairs = load_examples(DPO_DATA, "dpo")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sft.jsonl", "w") as f:
        for row in sft:
            f.write(json.dumps({"messages": _messages(row["prompt"]) + _messages(row["completion"], "assistant")})
                    + "\n")
    with open(folder / "dpo.jsonl", "w") as f:
        for row in pairs:
            f.write(json.dumps({"messages": _messages(row["prompt"]),
                                "chosen": {"role": "assistant", "content": _text(row["chosen"])},
                                "rejected": {"role": "assistant", "content": _text(row["rejected"])}}) + "\n")
    info = {
        LF_DATASETS["sft"]: {"file_name": "sft.jsonl", "formatting": "sharegpt",
                             "columns": {"messages": "messages"}, "tags": _TAGS},
        LF_DATASETS["dpo"]: {"file_name": "dpo.jsonl", "formatting": "sharegpt", "ranking": True,
                             "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
                             "tags": _TAGS},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return {"sft": len(sft), "dpo": len(pairs)}


def _messages(part, role: str = "user") -> list[dict]:
    """A row's prompt or completion as a list of messages (tunelab's loader keeps either form)."""
    return part if isinstance(part, list) else [{"role": role, "content": part}]


def _text(answer) -> str:
    """A pair's answer as text (tunelab's loader keeps a conversational answer as messages)."""
    if isinstance(answer, list):
        return "".join(m["content"] for m in answer if m.get("role") == "assistant")
    return answer


def mean_row_tokens(model: str) -> float:
    """Mean tokens of an SFT row through the model's chat template, cut at max length."""
    from transformers import AutoTokenizer

    from tunelab.data import load_examples
    tok = AutoTokenizer.from_pretrained(model)
    _, rows = load_examples(SFT_DATA, "sft")
    lengths = [min(len(tok.apply_chat_template(_messages(r["prompt"]) + _messages(r["completion"], "assistant"),
                                               tokenize=True, return_dict=True)["input_ids"]),
                   SETTINGS["max_length"]) for r in rows]
    return statistics.mean(lengths)


def peer_model(folder: str, precision: str, out: Path) -> str:
    """The model folder both tools load. The conversion of the bundled GGUF file is stored in
    fp32; SmolLM2 as its authors publish it is bf16, and LLaMA-Factory loads a model in the
    dtype its config names. So where training is in bf16, both get a bf16 copy (as published):
    otherwise LLaMA-Factory would train an fp32 model under autocast, slower and bigger than it
    would on the model people download. Elsewhere the fp32 folder is used as it is."""
    if precision != "bf16":
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return str(out)


def run_arm(arm: str, python: str, setup_file: Path, tmp: Path, rep: int) -> dict:
    out, log = tmp / f"{arm}-{rep}.json", tmp / f"{arm}-{rep}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               DISABLE_VERSION_CHECK="1")   # LLaMA-Factory's own check of its pins (they hold: see the venv)
    return run_worker([python, "-m", "benchmarks.peers.worker", arm, str(out), str(setup_file)], out, log, env)


def summarise(runs: dict[str, list[dict]], row_tokens: float, peak_gflops: float) -> dict:
    """Each arm's medians, and the verdicts. `peak_gflops`: this machine's matmul peak in the
    precision trained in, for each arm's share of it (model FLOP/s, see bench_train)."""
    table = {}
    for arm, rs in runs.items():
        if not rs:
            continue
        sps, e2e = median(rs, "samples_per_s"), median(rs, "end_to_end_samples_per_s")
        if arm.endswith("_packed"):   # blocks of rows: rows by their tokens
            sps = median(rs, "tokens_per_s") / row_tokens
            e2e = median(rs, "end_to_end_tokens_per_s") / row_tokens
        table[arm] = {"samples_per_s": sps, "end_to_end_samples_per_s": e2e,
                      "tokens_per_s": median(rs, "tokens_per_s"), "train_s": median(rs, "train_s"),
                      "end_to_end_s": median(rs, "built_to_trained_s"), "process_s": median(rs, "process_s"),
                      "train_peak_rss_mb": median(rs, "train_peak_rss_mb"),
                      "end_to_end_peak_rss_mb": median(rs, "built_to_trained_peak_rss_mb"),
                      "peak_rss_mb": median(rs, "peak_rss_mb"),
                      "share_of_peak": median(rs, "model_flops_per_s") / 1e9 / peak_gflops,
                      "final_loss": median(rs, "final_loss"), "runs": len(rs),
                      "gradient_checkpointing": rs[0].get("model_gradient_checkpointing"),
                      "versions": rs[0].get("versions")}
    verdicts = {}
    for kind in ("sft", "dpo"):
        ours = table.get(f"tunelab_{kind}_defaults")
        lf = {a: r for a, r in table.items() if a.startswith(f"lf_{kind}_")}
        if not ours or not lf:
            continue
        key = "end_to_end_samples_per_s"
        best = max(lf, key=lambda a: lf[a][key])
        default = lf.get(f"lf_{kind}_defaults")
        v = {"target": TARGET[kind], "lf_fastest_arm": best, "vs_fastest": ours[key] / lf[best][key]}
        if default:
            v["vs_defaults"] = ours[key] / default[key]
            v["memory_vs_lf_defaults"] = ours["end_to_end_peak_rss_mb"] / default["end_to_end_peak_rss_mb"]
        v["met"] = v["vs_fastest"] >= TARGET[kind] and v.get("memory_vs_lf_defaults", 2) <= 1.0
        verdicts[kind] = v
    return {"arms": table, "verdicts": verdicts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamafactory-python", default=str(ROOT / ".peers/llamafactory/bin/python"),
                    help="LLaMA-Factory's interpreter (benchmarks/peers/llamafactory_venv.sh makes it)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for an idle machine")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/peers.json"))
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms: {sorted(unknown)} (known: {', '.join(ARMS)})")
    if any(a.startswith("lf_") for a in arms) and not Path(args.llamafactory_python).exists():
        raise SystemExit(f"no LLaMA-Factory interpreter at {args.llamafactory_python}: "
                         "run `bash benchmarks/peers/llamafactory_venv.sh` first")

    from tunelab.modelio.models import resolve_model
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['cpu_capability']}, "
          f"tunelab trains in {machine['precision']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    model = peer_model(str(resolve_model(MODEL)), machine["precision"], tmp / "model")
    rows = write_llamafactory_data(tmp / "lf_data")
    # One epoch: every row (pair) once, so a reference pass computed once for every pair
    # (tunelab's) and one computed in each step (LLaMA-Factory's) cover the same pairs.
    steps = {kind: -(-rows[kind] // BATCH[kind]) for kind in BATCH}
    setup = {"model": model, "settings": SETTINGS, "batch": BATCH, "steps": steps,
             "data": {"sft": str(SFT_DATA), "dpo": str(DPO_DATA)},
             "lf_dataset": LF_DATASETS, "lf_dataset_dir": str(tmp / "lf_data"),
             "bf16": machine["precision"] == "bf16", "use_cpu": machine["device"] == "cpu"}
    setup_file = tmp / "setup.json"
    setup_file.write_text(json.dumps(setup))
    row_tokens = mean_row_tokens(model)

    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for rep in range(args.repeats):
        for arm in (arms if rep % 2 == 0 else arms[::-1]):
            if args.quiet_wait > 0:
                wait_for_quiet(args.quiet_wait)
            python = args.llamafactory_python if arm.startswith("lf_") else sys.executable
            res = run_arm(arm, python, setup_file, tmp, rep)
            runs[arm].append(res)
            print(f"  {arm:22s} {res['samples_per_s']:6.2f} samples/s  {res['tokens_per_s']:7.0f} tok/s  "
                  f"train {res['train_s']:5.1f} s  end to end {res['built_to_trained_s']:5.1f} s  "
                  f"process {res['process_s']:5.1f} s  "
                  f"peak {res['built_to_trained_peak_rss_mb']:5.0f} MB  loss {res['first_loss']} -> {res['final_loss']}",
                  flush=True)

    peak = machine["peak_gflops"]["bfloat16" if setup["bf16"] else "float32"]
    summary = summarise(runs, row_tokens, peak)
    print(f"\nthis machine's {'bf16' if setup['bf16'] else 'fp32'} matmul peak: {peak:.0f} GFLOP/s (% peak: "
          "model FLOP/s of the train call against it)")
    print(f"rows: {rows['sft']} SFT, {rows['dpo']} DPO pairs; an SFT row is {row_tokens:.1f} tokens on average")
    print(f"{'arm':22s} {'samples/s':>9s} {'end to end':>10s} {'tok/s':>7s} {'train s':>7s} {'e2e s':>6s} "
          f"{'process s':>9s} {'peak MB':>7s} {'% peak':>6s}  GC")
    for arm, r in summary["arms"].items():
        print(f"{arm:22s} {r['samples_per_s']:9.2f} {r['end_to_end_samples_per_s']:10.2f} {r['tokens_per_s']:7.0f} "
              f"{r['train_s']:7.1f} {r['end_to_end_s']:6.1f} {r['process_s']:9.1f} {r['end_to_end_peak_rss_mb']:7.0f} {r['share_of_peak']:6.1%}  "
              f"{r['gradient_checkpointing']}")
    for kind, v in summary["verdicts"].items():
        print(f"{kind.upper()} end to end: tunelab {v['vs_fastest']:.2f}x LLaMA-Factory's fastest ({v['lf_fastest_arm']}), "
              f"{v.get('vs_defaults', float('nan')):.2f}x its defaults; peak memory "
              f"{v.get('memory_vs_lf_defaults', float('nan')):.2f}x its default run's. "
              f"Target {v['target']}x at no more memory: {'met' if v['met'] else 'NOT met'}")
    result = {"machine": machine, "arms_run": arms,
              "setup": {k: setup[k] for k in ("settings", "batch", "steps", "bf16")},
              "mean_sft_row_tokens": row_tokens, "rows": rows, "repeats": args.repeats,
              "runs": runs, **summary}
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
