"""Training throughput: tunelab against plain TRL scripts, and the four methods side by side.

    .venv/bin/python -m benchmarks.bench_train                  # every arm once, ~10 min on 2 cores
    .venv/bin/python -m benchmarks.bench_train --arms sft_tunelab,sft_trl_defaults --repeats 3
    .venv/bin/python -m benchmarks.bench_train --arms pieces --json benchmarks/results/train_pieces.json

Each arm runs in its own fresh subprocess (no warm caches, its own peak memory), on the
bundled SmolLM2-135M-Instruct and the data shipped in labs/data:

  sft_tunelab        tunelab.run(method="lora"): the product path with tunelab's defaults
  sft_trl_defaults   a plain TRL script: SFTTrainer(model=<path>, peft_config=LoraConfig(...)),
                     SFTConfig's defaults plus bf16=True (the issue's baseline)
  sft_trl_matched    the same TRL script given tunelab's trainer settings (no gradient
                     checkpointing, base loaded in the compute dtype): what is left is the loss
  sft_trl_padding_free  sft_trl_matched with TRL's `padding_free=True`: the library's own answer
                     to padding (each batch's rows end to end in one row, kept apart by their
                     position ids), against which length grouping and the answer head compete
  dpo_tunelab        tunelab.run(method="dpo"), LoRA, tunelab's defaults
  dpo_trl_defaults   a plain TRL DPOTrainer script, DPOConfig's defaults plus bf16=True
  dpo_trl_precomputed  the same script with precompute_ref_log_probs=True: its reference runs
                     once, before training, as tunelab's does (for reference: DPO's lead
                     without the per-step reference pass that TRL's ORPO never had)
  kto_tunelab        tunelab.run(method="kto"), LoRA, on lab 6's labelled answers
  kto_trl_defaults   a plain TRL KTOTrainer script, KTOConfig's defaults plus bf16=True
  orpo_tunelab       tunelab.run(method="orpo"), LoRA, on the DPO pairs
  orpo_trl_defaults  a plain TRL ORPOTrainer script (trl.experimental), its defaults plus bf16=True
  full, qlora        tunelab.run with method full / qlora (side by side with sft_tunelab as
                     "lora" and dpo_tunelab as "dpo")
  <kind>_off_<piece> the <kind>_tunelab arm with one speed piece off (the config's `speed:`
                     answer_head, pack_rows, short_attention; or train.group_by_length): a
                     piece keeps its place only at >= 1.15x its off arm in samples/s or in
                     peak memory (PIECES lists the pairs measured)

What every pair of arms shares: the dataset, max_length, batch size, LoRA settings
(r 8, alpha 16, every linear layer, dropout 0), learning rate, scheduler, seed and step
count. Everything else is each side's default.

All arms are measured by the same code: a wrapper around `Trainer.train` times the train
call only (imports, model loading and the final save are outside), one around
`Trainer.training_step` times each step and counts the tokens in each batch (the sum of
its attention masks, so the count does not depend on what a library logs).

  samples/s    steps × batch / train seconds (pairs/s for DPO)
  tokens/s     tokens in the batches trained on / train seconds
  model TFLOP  useful work: 2·N·tokens for each forward, 2·N·tokens more for the input
               gradients and, for full fine-tuning, 2·N·tokens for the weight gradients
               (N = parameters in the linear layers and the output head; attention scores
               are left out). DPO with the reference computed every step adds one forward
               per step in the baseline but it is not counted: the same useful work per pair.
  % of peak    model FLOP/s / this machine's bf16 (or fp32, whichever tunelab trains in) matmul
               peak: a 1024² matmul, the best 1-s window, measured before and after the arms
  peak MB      the peak resident memory while training (sampled every 20 ms) and, in
               brackets, the process's peak (imports and the model load included)

Results go to benchmarks/results/train.json. Nothing here asserts a time; the summary says
plainly whether each target was met: tunelab LoRA SFT >= 2x the samples/s of the TRL
defaults script (aim 3x) with final loss in the same range; tunelab DPO >= 1.5x; tunelab KTO
and ORPO at least as far ahead of their TRL scripts as DPO is of its own; memory
QLoRA < LoRA < full.

This file is the driver; the code that trains and measures one arm is in train_arms.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The worker side (one arm in a fresh process).
from .train_arms import MODEL, SETTINGS, STEPS, machine_info, median, peaks, run_worker, wait_for_quiet, worker

ROOT = Path(__file__).resolve().parent.parent

ARMS = ("sft_tunelab", "sft_trl_defaults", "sft_trl_matched", "sft_trl_padding_free", "dpo_tunelab", "dpo_trl_defaults", "dpo_trl_precomputed",
        "full", "qlora",
        "kto_tunelab", "kto_trl_defaults", "orpo_tunelab", "orpo_trl_defaults",
        "sft_trl_liger")   # the last: GPU with liger-kernel installed (bench_gpu.py)
# Each speed piece, on the methods it acts on: (kind, piece) -> the arm `<kind>_off_<piece>`.
PIECES = (("sft", "answer_head"), ("dpo", "answer_head"), ("kto", "answer_head"), ("orpo", "answer_head"),
          ("kto", "pack_rows"), ("orpo", "pack_rows"), ("sft", "short_attention"), ("dpo", "short_attention"),
          ("sft", "group_by_length"), ("orpo", "group_by_length"))
PIECE_ARMS = tuple(f"{kind}_off_{piece}" for kind, piece in PIECES)
EARNS = 1.15   # a piece stays if it beats its off arm by this much in time or in memory
NOISY = 0.10   # a run during which other processes used more than this share of the CPU is "noisy"
TARGETS = {"sft": 2.0, "sft_aim": 3.0, "dpo": 1.5}


# --- driver side ----------------------------------------------------------------------------

def _subprocess(args: list[str], out: Path, log: Path) -> dict:
    return run_worker([sys.executable, "-m", "benchmarks.bench_train", *args, "--out-file", str(out)], out, log)


def run_arms(arms: list[str], repeats: int, quiet_wait: float, tmp: Path, log=print) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for rep in range(repeats):
        for arm in (arms if rep % 2 == 0 else arms[::-1]):   # alternate the order
            if quiet_wait > 0:
                wait_for_quiet(quiet_wait)
            name = f"{arm}-{rep}"
            r = _subprocess(["--worker", arm], tmp / f"{name}.json", tmp / f"{name}.log")
            r.update(repeat=rep, noisy=r["others_cpu_share"] > NOISY)
            runs[arm].append(r)
            log(f"  {arm:17s} {r['samples_per_s']:6.2f} samples/s {r['tokens_per_s']:7.1f} tok/s  "
                f"median step {r['median_step_s']:5.2f} s  loss {r['first_loss']:.3f} -> {r['final_loss']:.3f}  "
                f"peak {r['train_peak_rss_mb']:5.0f} MB training / {r['peak_rss_mb']:5.0f} process  others {100 * r['others_cpu_share']:3.0f}% CPU", flush=True)
    return runs


def summarize(runs: dict[str, list[dict]], machine: dict) -> dict:
    """Medians per arm (clean runs where there are any), ratios and verdicts."""
    peak = machine["peak_gflops"]["bfloat16" if machine["precision"] == "bf16" else "float32"] * 1e9
    med = {}
    for arm, rs in runs.items():
        used = [r for r in rs if not r["noisy"]] or rs
        m = {k: median(used, k) for k in ("samples_per_s", "tokens_per_s", "median_step_s", "train_s",
                                          "final_loss", "first_loss", "peak_rss_mb", "train_peak_rss_mb",
                                          "model_flops_per_s", "train_peak_gpu_mb",
                                          "others_cpu_share")}
        m.update(trainable_params=used[0]["trainable_params"], total_params=used[0]["total_params"],
                 steps=used[0]["steps"], runs=len(rs), clean_runs=sum(not r["noisy"] for r in rs),
                 pct_of_peak=100 * m["model_flops_per_s"] / peak)
        med[arm] = m
    verdicts = {}

    def ratio(a, b, target, what):
        if a in med and b in med:
            x = med[a]["samples_per_s"] / med[b]["samples_per_s"]
            ok = x >= target
            unreliable = not (med[a]["clean_runs"] and med[b]["clean_runs"])
            verdicts[what] = {"ratio": x, "target": target, "met": ok, "unreliable": unreliable,
                              "loss": [med[a]["final_loss"], med[b]["final_loss"]]}

    ratio("sft_tunelab", "sft_trl_defaults", TARGETS["sft"], "sft_vs_trl_defaults")
    ratio("sft_tunelab", "sft_trl_matched", 1.0, "sft_vs_trl_matched")
    ratio("sft_tunelab", "sft_trl_padding_free", EARNS, "sft_vs_trl_padding_free")
    ratio("dpo_tunelab", "dpo_trl_defaults", TARGETS["dpo"], "dpo_vs_trl_defaults")
    ratio("dpo_tunelab", "dpo_trl_precomputed", 1.0, "dpo_vs_trl_precomputed")
    dpo_lead = verdicts.get("dpo_vs_trl_defaults", {}).get("ratio")
    for kind in ("kto", "orpo"):   # target: as far ahead of its TRL script as DPO is of its own
        ratio(f"{kind}_tunelab", f"{kind}_trl_defaults", round(dpo_lead, 2) if dpo_lead else TARGETS["dpo"],
              f"{kind}_vs_trl_defaults")
    for kind, piece in PIECES:
        on, off = f"{kind}_tunelab", f"{kind}_off_{piece}"
        if on in med and off in med:
            speed = med[on]["samples_per_s"] / med[off]["samples_per_s"]
            memory = med[off]["train_peak_rss_mb"] / med[on]["train_peak_rss_mb"]
            verdicts[f"piece {piece} on {kind}"] = {
                "speed": speed, "memory": memory, "met": max(speed, memory) >= EARNS,
                "unreliable": not (med[on]["clean_runs"] and med[off]["clean_runs"])}
    if all(a in med for a in ("qlora", "sft_tunelab", "full")):
        q, lo, f = (med[a]["train_peak_rss_mb"] for a in ("qlora", "sft_tunelab", "full"))
        verdicts["memory_qlora_lt_lora_lt_full"] = {"mb": [q, lo, f], "met": q < lo < f}
    return {"medians": med, "verdicts": verdicts}


LABELS = {"sft_tunelab": "LoRA SFT, tunelab", "sft_trl_defaults": "LoRA SFT, TRL defaults + bf16",
          "sft_trl_matched": "LoRA SFT, TRL with tunelab's trainer settings",
          "sft_trl_padding_free": "LoRA SFT, TRL with tunelab's trainer settings + padding_free",
          "sft_trl_liger": "LoRA SFT, TRL with tunelab's trainer settings + use_liger_kernel",
          "dpo_tunelab": "DPO (LoRA), tunelab", "dpo_trl_defaults": "DPO (LoRA), TRL defaults + bf16",
          "dpo_trl_precomputed": "DPO (LoRA), TRL defaults + bf16, reference precomputed",
          "full": "full SFT, tunelab", "qlora": "QLoRA SFT, tunelab",
          "kto_tunelab": "KTO (LoRA), tunelab", "kto_trl_defaults": "KTO (LoRA), TRL defaults + bf16",
          "orpo_tunelab": "ORPO (LoRA), tunelab", "orpo_trl_defaults": "ORPO (LoRA), TRL defaults + bf16"}
LABELS.update({f"{kind}_off_{piece}": f"{LABELS[kind + '_tunelab']}, {piece} off" for kind, piece in PIECES})


def table(summary: dict) -> str:
    gpu = any(m.get("train_peak_gpu_mb") is not None for m in summary["medians"].values())
    rows = ["| arm | samples/s | tokens/s | median step s | first → final loss | peak MB training (process) | "
            + ("peak GPU MB | " if gpu else "") + "trainable | model GFLOP/s | % of peak |",
            "| --- | ---: | ---: | ---: | --- | ---: | " + ("---: | " if gpu else "") + "---: | ---: | ---: |"]
    for arm, m in summary["medians"].items():
        rows.append(f"| {LABELS[arm]} | {m['samples_per_s']:.2f} | {m['tokens_per_s']:.0f} | "
                    f"{m['median_step_s']:.2f} | {m['first_loss']:.2f} → {m['final_loss']:.2f} | "
                    f"{m['train_peak_rss_mb']:.0f} ({m['peak_rss_mb']:.0f}) | "
                    + (f"{m['train_peak_gpu_mb'] or 0:.0f} | " if gpu else "")
                    + f"{m['trainable_params'] / 1e6:.2f} M | "
                    f"{m['model_flops_per_s'] / 1e9:.1f} | {m['pct_of_peak']:.0f}% |")
    return "\n".join(rows)


def verdict_lines(summary: dict) -> list[str]:
    out = []
    for what, v in summary["verdicts"].items():
        if what.startswith("piece "):
            word = "EARNS ITS PLACE" if v["met"] else f"BELOW {EARNS}x: NOT EARNED"
            extra = " (unreliable: measured under other load)" if v["unreliable"] else ""
            out.append(f"{what}: {v['speed']:.2f}x samples/s, {v['memory']:.2f}x less peak memory than with it off "
                       f"-> {word}{extra}")
        elif "ratio" in v:
            word = "TARGET MET" if v["met"] else "TARGET MISSED"
            if what in ("sft_vs_trl_matched", "dpo_vs_trl_precomputed"):
                word = "reference only"
            extra = " (unreliable: measured under other load)" if v["unreliable"] else ""
            out.append(f"{what}: {v['ratio']:.2f}x samples/s (target >= {v['target']}x) -> {word}{extra}; "
                       f"final loss {v['loss'][0]:.2f} vs {v['loss'][1]:.2f}")
        else:
            mb = v["mb"]
            out.append(f"peak memory while training: QLoRA {mb[0]:.0f} < LoRA {mb[1]:.0f} < full {mb[2]:.0f} MB -> "
                       f"{'TARGET MET' if v['met'] else 'TARGET MISSED'}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="seconds to wait at most, before each arm, for the CPU to go idle (0 = no wait)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/train.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("TUNELAB_HOME", "/tmp/tl-bench")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.worker == "machine":
        Path(a.out_file).write_text(json.dumps(machine_info(), indent=1))
        return {}
    if a.worker == "peak":
        Path(a.out_file).write_text(json.dumps(peaks()))
        return {}
    if a.worker:
        worker(a.worker, Path(a.out_file))
        return {}

    arms = [x for x in a.arms.split(",") if x]
    if arms == ["pieces"]:   # every piece's off arm beside the tunelab arms they compare with
        arms = sorted({f"{kind}_tunelab" for kind, _ in PIECES}) + list(PIECE_ARMS)
    if set(arms) - set(ARMS) - set(PIECE_ARMS):
        raise SystemExit(f"--arms: unknown {sorted(set(arms) - set(ARMS) - set(PIECE_ARMS))}; choose from "
                         f"{', '.join(ARMS + PIECE_ARMS)}, or 'pieces'")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    print(f"logs in {tmp}; TUNELAB_HOME={os.environ['TUNELAB_HOME']}", flush=True)
    machine = _subprocess(["--worker", "machine"], tmp / "machine.json", tmp / "machine.log")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
          f"capability {machine['cpu_capability']}, precision auto -> {machine['precision']}, matmul peak "
          f"bf16 {machine['peak_gflops']['bfloat16']:.0f} / fp32 {machine['peak_gflops']['float32']:.0f} GFLOP/s",
          flush=True)
    runs = run_arms(arms, a.repeats, a.quiet_wait, tmp)
    # The peak again after the arms; the higher of the two counts (see matmul_peak).
    again = _subprocess(["--worker", "peak"], tmp / "peak.json", tmp / "peak.log")
    machine["peak_gflops"] = {k: max(v, again[k]) for k, v in machine["peak_gflops"].items()}
    print(f"matmul peak (best of start and end): bf16 {machine['peak_gflops']['bfloat16']:.0f} / "
          f"fp32 {machine['peak_gflops']['float32']:.0f} GFLOP/s", flush=True)
    summary = summarize(runs, machine)
    steps = {k: int(os.environ.get("TUNELAB_BENCH_STEPS") or v) for k, v in STEPS.items()}
    print(f"\nSFT {steps['sft']} steps, DPO {steps['dpo']} steps, batch {SETTINGS['batch_size']}, "
          f"max_length {SETTINGS['max_length']}; medians of {a.repeats}\n")
    print(table(summary))
    print()
    for line in verdict_lines(summary):
        print(line)
    result = {"benchmark": "train", "date": time.strftime("%Y-%m-%d"), "machine": machine,
              "settings": {**SETTINGS, "steps": steps, "repeats": a.repeats, "model": MODEL},
              **summary, "total_s": time.perf_counter() - t0, "runs": runs}
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"total {result['total_s']:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
