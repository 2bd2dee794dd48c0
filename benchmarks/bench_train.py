"""Training throughput: tunelab against plain TRL scripts, and the four methods side by side.

    .venv/bin/python benchmarks/bench_train.py                  # every arm once, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --arms sft_tunelab,sft_trl_defaults --repeats 3

Each arm runs in its own fresh subprocess (no warm caches, its own peak memory), on the
bundled SmolLM2-135M-Instruct and the data shipped in labs/data:

  sft_tunelab        tunelab.run(method="lora"): the product path with tunelab's defaults
  sft_trl_defaults   a plain TRL script: SFTTrainer(model=<path>, peft_config=LoraConfig(...)),
                     SFTConfig's defaults plus bf16=True (the issue's baseline)
  sft_trl_matched    the same TRL script given tunelab's trainer settings (no gradient
                     checkpointing, base loaded in the compute dtype): what is left is the loss
  dpo_tunelab        tunelab.run(method="dpo"), LoRA, tunelab's defaults
  dpo_trl_defaults   a plain TRL DPOTrainer script, DPOConfig's defaults plus bf16=True
  full, qlora        tunelab.run with method full / qlora (side by side with sft_tunelab as
                     "lora" and dpo_tunelab as "dpo")

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
defaults script (aim 3x) with final loss in the same range; tunelab DPO >= 1.5x; memory
QLoRA < LoRA < full.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `tunelab` is the repo's package
SFT_DATA = ROOT / "labs/data/pirate_sft.jsonl"
DPO_DATA = ROOT / "labs/data/concise_dpo.jsonl"
MODEL = "smollm2-135m-instruct"
ARMS = ("sft_tunelab", "sft_trl_defaults", "sft_trl_matched", "dpo_tunelab", "dpo_trl_defaults", "full", "qlora")
NOISY = 0.10   # a run during which other processes used more than this share of the CPU is "noisy"
TARGETS = {"sft": 2.0, "sft_aim": 3.0, "dpo": 1.5}

SETTINGS = dict(batch_size=8, max_length=256, lr=2e-4, scheduler="linear", seed=0,
                lora_r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
STEPS = {"sft": 10, "dpo": 8}


# --- worker side: one arm, in a fresh process -----------------------------------------------

def _instrument(box: dict) -> None:
    """Wrap Trainer.train and Trainer.training_step, the same for every arm."""
    from transformers import Trainer
    inner, inner_step = Trainer.train, Trainer.training_step
    ends = box.setdefault("step_ends", [])
    tokens = box.setdefault("step_tokens", [])

    def timed_step(self, model, inputs, *args, **kwargs):
        n = sum(int(v.sum()) for k, v in inputs.items() if k.endswith("attention_mask"))
        out = inner_step(self, model, inputs, *args, **kwargs)
        ends.append(time.perf_counter())
        tokens.append(n)
        return out

    def timed(self, *args, **kwargs):
        import torch
        sampler = _RssSampler()
        box["rss_before_train_mb"] = sampler.peak_mb
        cpu0, busy0 = _cpu_s(), _machine_busy_s()
        t0 = time.perf_counter()
        ends.append(t0)
        out = inner(self, *args, **kwargs)
        box["train_s"] = time.perf_counter() - t0
        box["train_peak_rss_mb"] = sampler.stop()
        box["train_cpu_s"] = _cpu_s() - cpu0
        others = (_machine_busy_s() - busy0) - box["train_cpu_s"]
        box["others_cpu_share"] = max(others, 0.0) / (box["train_s"] * (os.cpu_count() or 1))
        box["log_history"] = list(self.state.log_history)
        box["global_step"] = self.state.global_step
        box["batch_size"] = self.args.per_device_train_batch_size
        box["args"] = {k: str(getattr(self.args, k, None)) for k in (
            "bf16", "gradient_checkpointing", "learning_rate", "lr_scheduler_type", "max_steps",
            "per_device_train_batch_size", "max_length", "seed", "precompute_ref_log_probs")}
        model = self.model
        box["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        box["total_params"] = sum(p.numel() for p in model.parameters())
        box["linear_params"] = _linear_params(model)
        box["model_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        box["threads"] = torch.get_num_threads()
        box["trainer_class"] = type(self).__name__
        return out

    Trainer.train = timed
    Trainer.training_step = timed_step


class _RssSampler:
    """The process's peak resident memory while training (sampled every 20 ms), so the
    load-time peak (reading and converting a checkpoint) does not hide what training holds."""

    def __init__(self):
        import threading

        import psutil
        self._proc = psutil.Process()
        self.peak_mb = self._proc.memory_info().rss / 2**20
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mb


def _linear_params(model) -> int:
    """Weights that a token multiplies through: the base's linear layers and the output head
    (LoRA's own A and B are < 2% and left out; the input embedding is a lookup)."""
    import torch
    # bitsandbytes' 4/8-bit layers subclass nn.Linear (their packed weight's numel would
    # undercount); PEFT's LoRA wrappers do not, and their base_layer is counted instead.
    return sum(mod.in_features * mod.out_features for name, mod in model.named_modules()
               if "lora_" not in name and isinstance(mod, torch.nn.Linear))


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, share: float = 0.15, window_s: float = 5.0) -> float:
    """Wait (up to max_wait_s) until the machine has been nearly idle for window_s."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = _machine_busy_s(), time.monotonic()
        time.sleep(window_s)
        busy = (_machine_busy_s() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if busy <= share or time.monotonic() >= deadline:
            return busy


def _tunelab(method: str, steps: int) -> None:
    from tunelab import RunConfig, run
    s = SETTINGS
    cfg = {"method": method, "model": MODEL, "name": f"bench-{method}",
           "data": {"train": str(DPO_DATA if method == "dpo" else SFT_DATA), "eval_fraction": 0.0},
           "train": {"max_steps": steps, "batch_size": s["batch_size"], "lr": s["lr"],
                     "max_length": s["max_length"], "scheduler": s["scheduler"], "seed": s["seed"],
                     "logging_steps": 1},
           "lora": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": s["lora_dropout"],
                    "target_modules": s["target_modules"]}}
    run(RunConfig.from_dict(cfg))


def _trl(kind: str, steps: int, matched: bool) -> None:
    """A plain TRL script. Given: data, max_length, batch, LoRA, lr, scheduler, seed, steps;
    bf16=True; the rest TRL's defaults (unless `matched`)."""
    import peft
    from datasets import Dataset

    from tunelab.data import load_examples   # reading the file only: the same rows tunelab trains on
    from tunelab.models import resolve_model

    s = SETTINGS
    path = str(resolve_model(MODEL))
    _, rows = load_examples(DPO_DATA if kind == "dpo" else SFT_DATA, kind)
    dataset = Dataset.from_list(rows)
    lora = peft.LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                           target_modules=s["target_modules"], task_type="CAUSAL_LM")
    args = dict(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=steps, bf16=True,
                per_device_train_batch_size=s["batch_size"], max_length=s["max_length"],
                learning_rate=s["lr"], lr_scheduler_type=s["scheduler"], seed=s["seed"],
                logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True)
    import torch
    if not torch.cuda.is_available():
        args["use_cpu"] = True   # transformers refuses bf16=True on a CPU without it
    model = path
    if matched:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        args.update(gradient_checkpointing=False)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer
        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=dataset, peft_config=lora)
    else:
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=model, args=DPOConfig(**args), train_dataset=dataset, peft_config=lora)
    trainer.train()


def worker(arm: str, out: Path) -> None:
    import torch
    box: dict = {"arm": arm}
    _instrument(box)
    kind = "dpo" if arm.startswith("dpo") else "sft"
    steps = STEPS[kind]
    if arm in ("sft_tunelab", "dpo_tunelab"):
        _tunelab("lora" if kind == "sft" else "dpo", steps)
    elif arm in ("full", "qlora"):
        _tunelab(arm, steps)
    else:
        _trl(kind, steps, matched=arm.endswith("matched"))
    hist = box.pop("log_history")
    losses = [e["loss"] for e in hist if "loss" in e]
    ends, step_tokens = box.pop("step_ends"), box["step_tokens"]
    step_s = [b - a for a, b in zip(ends, ends[1:])]
    steps_done = box["global_step"]
    tokens = sum(step_tokens)
    method = {"full": "full"}.get(arm, "adapters")
    passes = 6 if method == "full" else 4     # forward 2N + input grads 2N (+ weight grads 2N)
    flops = passes * box["linear_params"] * tokens
    box.update(
        kind=kind, steps=steps_done, step_s=step_s,
        median_step_s=statistics.median(step_s[1:] or step_s),
        tokens=tokens, tokens_per_s=tokens / box["train_s"],
        samples_per_s=steps_done * box["batch_size"] / box["train_s"],
        model_flops=flops, model_flops_per_s=flops / box["train_s"],
        final_loss=losses[-1] if losses else None,
        first_loss=losses[0] if losses else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch_threads=torch.get_num_threads(),
    )
    out.write_text(json.dumps(box, indent=1, default=str))


def matmul_peak(dtype_name: str, size: int = 1024, windows: int = 3, seconds: float = 1.0) -> float:
    """GFLOP/s of a square matmul: the best of `windows` windows of `seconds`, after a warm-up
    (the best, so a burst of load from another process does not lower the peak)."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        best = max(best, n * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def peaks() -> dict:
    return {"bfloat16": matmul_peak("bfloat16"), "float32": matmul_peak("float32")}


def machine_info() -> dict:
    """The machine, the precision tunelab picks, and the matmul peaks (measured now)."""
    import peft
    import torch
    import transformers
    import trl

    from tunelab import RunConfig
    from tunelab.models import resolve_model
    from tunelab.run import resolve_hardware

    resolve_model(MODEL)   # converts the bundled model once, outside any timed arm
    hw = resolve_hardware(RunConfig(method="lora"))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": hw.device, "precision": hw.precision, "python": platform.python_version(),
        "peak_gflops": peaks(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }


# --- driver side ----------------------------------------------------------------------------

def _subprocess(args: list[str], out: Path, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, __file__, *args, "--out-file", str(out)],
                            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{args} failed (exit {rc}); log {log}:\n{log.read_text()[-3000:]}")
    res = json.loads(out.read_text())
    res["subprocess_s"] = time.perf_counter() - t0
    return res


def _median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


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
        m = {k: _median(used, k) for k in ("samples_per_s", "tokens_per_s", "median_step_s", "train_s",
                                          "final_loss", "first_loss", "peak_rss_mb", "train_peak_rss_mb",
                                          "model_flops_per_s",
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
    ratio("dpo_tunelab", "dpo_trl_defaults", TARGETS["dpo"], "dpo_vs_trl_defaults")
    if all(a in med for a in ("qlora", "sft_tunelab", "full")):
        q, l, f = (med[a]["train_peak_rss_mb"] for a in ("qlora", "sft_tunelab", "full"))
        verdicts["memory_qlora_lt_lora_lt_full"] = {"mb": [q, l, f], "met": q < l < f}
    return {"medians": med, "verdicts": verdicts}


LABELS = {"sft_tunelab": "LoRA SFT, tunelab", "sft_trl_defaults": "LoRA SFT, TRL defaults + bf16",
          "sft_trl_matched": "LoRA SFT, TRL with tunelab's trainer settings",
          "dpo_tunelab": "DPO (LoRA), tunelab", "dpo_trl_defaults": "DPO (LoRA), TRL defaults + bf16",
          "full": "full SFT, tunelab", "qlora": "QLoRA SFT, tunelab"}


def table(summary: dict) -> str:
    rows = ["| arm | samples/s | tokens/s | median step s | first → final loss | peak MB training (process) | "
            "trainable | model GFLOP/s | % of peak |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for arm, m in summary["medians"].items():
        rows.append(f"| {LABELS[arm]} | {m['samples_per_s']:.2f} | {m['tokens_per_s']:.0f} | "
                    f"{m['median_step_s']:.2f} | {m['first_loss']:.2f} → {m['final_loss']:.2f} | "
                    f"{m['train_peak_rss_mb']:.0f} ({m['peak_rss_mb']:.0f}) | {m['trainable_params'] / 1e6:.2f} M | "
                    f"{m['model_flops_per_s'] / 1e9:.1f} | {m['pct_of_peak']:.0f}% |")
    return "\n".join(rows)


def verdict_lines(summary: dict) -> list[str]:
    out = []
    for what, v in summary["verdicts"].items():
        if "ratio" in v:
            word = "TARGET MET" if v["met"] else "TARGET MISSED"
            if what == "sft_vs_trl_matched":
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
    if set(arms) - set(ARMS):
        raise SystemExit(f"--arms: unknown {sorted(set(arms) - set(ARMS))}; choose from {', '.join(ARMS)}")
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
    print(f"\nSFT {STEPS['sft']} steps, DPO {STEPS['dpo']} steps, batch {SETTINGS['batch_size']}, "
          f"max_length {SETTINGS['max_length']}; medians of {a.repeats}\n")
    print(table(summary))
    print()
    for line in verdict_lines(summary):
        print(line)
    result = {"benchmark": "train", "date": time.strftime("%Y-%m-%d"), "machine": machine,
              "settings": {**SETTINGS, "steps": STEPS, "repeats": a.repeats, "model": MODEL},
              **summary, "total_s": time.perf_counter() - t0, "runs": runs}
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"total {result['total_s']:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
