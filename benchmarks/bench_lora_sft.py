"""LoRA SFT throughput: tunelab.run() against a plain TRL script, same settings, same machine.

    .venv/bin/python benchmarks/bench_lora_sft.py                 # 6 steps, 2 repeats: ~9 min on 2 cores
    .venv/bin/python benchmarks/bench_lora_sft.py --steps 20 --repeats 3   # steadier, ~30 min there

Three arms, each in its own fresh subprocess (no warm caches, its own peak RSS):

  tunelab       tunelab.run(RunConfig(method="lora", ...)) — the product path
                (events.jsonl, status.json, callback, saving the adapter afterwards).
  trl           a plain TRL script with the settings tunelab uses: base model loaded in
                the compute dtype, the same PEFT LoraConfig, the same conversational
                prompt/completion rows, SFTConfig with gradient_checkpointing=False and
                bf16 only where the hardware has it natively.
  trl_defaults  the same script, but gradient_checkpointing and bf16 left at SFTConfig's
                defaults (True / True), except that bf16 is switched off on hardware without
                native bf16 (emulated bf16 on such a CPU is many times slower; issue #6
                compares against defaults + bf16 where bf16 exists).

Every arm is measured the same way: the same wrapper times `trainer.train()` (model
loading, tokenising and the final save are outside it) and reads the trainer's log
history; tokens = TRL's `num_tokens` (the sum of attention_mask over the batches trained
on). tokens/s = tokens / train seconds. The repeats alternate the order of the arms and
the table shows medians. Results go to benchmarks/results/lora_sft.json.
TARGET: tunelab tokens/s >= 0.95 × trl tokens/s. Nothing here asserts a time.
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
DATA = ROOT / "labs/data/pirate_sft.jsonl"
MODEL = "smollm2-135m-instruct"
ARMS = ("tunelab", "trl", "trl_defaults")
TARGET = 0.95
NOISY = 0.10   # a run during which other processes used more than this share of the CPU is "noisy"

# One place for the settings all arms share (tunelab's names on the left).
SETTINGS = dict(batch_size=8, max_length=256, lr=2e-4, scheduler="linear", seed=0,
                lora_r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear")


# --- worker side: one arm, in a fresh process -----------------------------------------------

def _time_train(box: dict) -> None:
    """Wrap Trainer.train so every arm is timed by the same code: wall time of train()
    and its log history (the source of num_tokens and the losses)."""
    from transformers import Trainer
    from trl import SFTTrainer
    inner, inner_step = Trainer.train, SFTTrainer.training_step
    ends = box.setdefault("step_ends", [])

    def timed_step(self, *args, **kwargs):
        out = inner_step(self, *args, **kwargs)
        ends.append(time.perf_counter())
        return out

    def timed(self, *args, **kwargs):
        import torch
        box["loadavg_before"] = os.getloadavg()[0]
        cpu0, busy0, ru0 = _cpu_s(), _machine_busy_s(), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        ends.append(t0)
        out = inner(self, *args, **kwargs)
        box["train_s"] = time.perf_counter() - t0
        box["train_cpu_s"] = _cpu_s() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        box["train_sys_s"] = ru1.ru_stime - ru0.ru_stime    # kernel time: page faults, mmap/munmap
        box["train_minor_faults"] = ru1.ru_minflt - ru0.ru_minflt
        # CPU the rest of the machine used meanwhile, as a share of all cores: > ~0.1 means
        # another process competed for the cores and this run's times are inflated.
        others = (_machine_busy_s() - busy0) - box["train_cpu_s"]
        box["others_cpu_share"] = max(others, 0.0) / (box["train_s"] * (os.cpu_count() or 1))
        box["loadavg_after"] = os.getloadavg()[0]
        box["log_history"] = list(self.state.log_history)
        box["global_step"] = self.state.global_step
        box["args"] = {k: getattr(self.args, k) for k in (
            "bf16", "gradient_checkpointing", "learning_rate", "lr_scheduler_type", "max_steps",
            "per_device_train_batch_size", "max_length", "seed", "completion_only_loss", "save_strategy")}
        box["args"]["save_strategy"] = str(box["args"]["save_strategy"])
        box["model_dtype"] = str(next(self.model.parameters()).dtype)
        box["all_args"] = {k: str(v) for k, v in self.args.to_dict().items()}
        box["model_info"] = {
            "class": type(self.model).__name__,
            "attn": getattr(self.model.config, "_attn_implementation", None),
            "use_cache": getattr(self.model.config, "use_cache", None),
            "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "dtypes": sorted({str(p.dtype) for p in self.model.parameters()}),
            "callbacks": [type(c).__name__ for c in self.callback_handler.callbacks],
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "grad_enabled": torch.is_grad_enabled(),
            "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }
        return out

    Trainer.train = timed
    SFTTrainer.training_step = timed_step


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user..steal; guest time is already inside user
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, share: float = 0.15, window_s: float = 10.0) -> float:
    """Wait (up to max_wait_s) until the machine has been nearly idle for window_s, so other
    processes do not share the cores with the next arm; returns the busy share of the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = _machine_busy_s(), time.monotonic()
        time.sleep(window_s)
        busy = (_machine_busy_s() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if busy <= share or time.monotonic() >= deadline:
            return busy


def _run_tunelab(steps: int, box: dict) -> None:
    from tunelab import RunConfig, run
    s = SETTINGS
    cfg = RunConfig.from_dict({
        "method": "lora", "model": MODEL, "name": "bench-lora",
        "data": {"train": str(DATA)},
        "train": {"max_steps": steps, "batch_size": s["batch_size"], "lr": s["lr"],
                  "max_length": s["max_length"], "scheduler": s["scheduler"], "precision": "auto",
                  "seed": s["seed"], "logging_steps": 1},
        "lora": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": s["lora_dropout"],
                 "target_modules": s["target_modules"]},
    })
    result = run(cfg)
    box["tunelab_summary"] = {k: result.summary.get(k) for k in (
        "tokens_per_s", "samples_per_s", "wall_time_s", "load_time_s", "final_loss", "precision")}


def _run_trl(steps: int, box: dict, defaults: bool) -> None:
    import peft
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.data import load_examples   # data loading only: the same rows tunelab trains on
    from tunelab.models import bf16_supported, resolve_model

    s = SETTINGS
    path = resolve_model(MODEL)
    native_bf16 = bf16_supported("cpu") if not torch.cuda.is_available() else bf16_supported("cuda")
    dtype = torch.bfloat16 if native_bf16 and not defaults else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, rows = load_examples(DATA, "sft")
    dataset = Dataset.from_list(rows)
    lora = peft.LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                           target_modules=s["target_modules"], bias="none", task_type="CAUSAL_LM")
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=s["batch_size"],
                learning_rate=s["lr"], lr_scheduler_type=s["scheduler"], max_length=s["max_length"],
                seed=s["seed"], data_seed=s["seed"], logging_steps=1, report_to="none",
                save_strategy="no", disable_tqdm=True, completion_only_loss=True)
    if defaults:
        # SFTConfig defaults: gradient_checkpointing=True, bf16=True; bf16 only kept where native.
        if not native_bf16:
            args["bf16"] = False
    else:
        args.update(gradient_checkpointing=False, bf16=native_bf16)
    trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora)
    trainer.train()


def worker(arm: str, steps: int, out: Path) -> None:
    import torch
    box: dict = {"arm": arm}
    t0 = time.perf_counter()
    _time_train(box)
    if arm == "tunelab":
        _run_tunelab(steps, box)
    else:
        _run_trl(steps, box, defaults=arm == "trl_defaults")
    box["process_s"] = time.perf_counter() - t0
    hist = box.pop("log_history")
    tokens = max((e["num_tokens"] for e in hist if "num_tokens" in e), default=None)
    losses = [e["loss"] for e in hist if "loss" in e]
    steps_done = box["global_step"]
    ends = box.pop("step_ends")
    step_s = [b - a for a, b in zip(ends, ends[1:])]
    box.update(
        steps=steps_done,
        step_s=step_s,
        # The median step (from the second on) shrugs off warm-up and bursts of load from other processes.
        median_step_s=statistics.median(step_s[1:] or step_s),
        cpu_s_per_step=box["train_cpu_s"] / steps_done,
        tokens=tokens,
        tokens_per_s=tokens / box["train_s"] if tokens else None,
        samples_per_s=steps_done * SETTINGS["batch_size"] / box["train_s"],
        s_per_step=box["train_s"] / steps_done,
        final_loss=losses[-1] if losses else None,
        mean_train_loss=next((e["train_loss"] for e in hist if "train_loss" in e), None),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        torch_threads=torch.get_num_threads(),
    )
    out.write_text(json.dumps(box, indent=1, default=str))


def prepare(out: Path) -> None:
    """Convert the bundled model once (outside any timed arm) and describe the machine."""
    import torch

    import peft
    import transformers
    import trl
    from tunelab import RunConfig
    from tunelab.models import resolve_model
    from tunelab.run import resolve_hardware

    resolve_model(MODEL)
    hw = resolve_hardware(RunConfig(method="lora"))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    out.write_text(json.dumps({
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": hw.device, "precision": hw.precision, "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }, indent=1))


# --- driver side ----------------------------------------------------------------------------

def _subprocess(args: list[str], out: Path, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, __file__, *args, "--out-file", str(out)],
                            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{args} failed (exit {rc}); log {log}:\n{tail}")
    res = json.loads(out.read_text())
    res["subprocess_s"] = time.perf_counter() - t0
    return res


def _run_arm(arm: str, rep: int, attempt: int, a, tmp: Path) -> dict:
    name = f"{arm}-{rep}-{attempt}"
    idle_busy = wait_for_quiet(a.quiet_wait) if a.quiet_wait > 0 else None
    r = _subprocess(["--worker", arm, "--steps", str(a.steps)], tmp / f"{name}.json", tmp / f"{name}.log")
    r.update(busy_share_before=idle_busy, noisy=r["others_cpu_share"] > NOISY, repeat=rep, attempt=attempt)
    print(f"  repeat {rep}{f' retry {attempt}' if attempt else ''} {arm:13s} "
          f"{r['tokens_per_s']:8.1f} tok/s  {r['samples_per_s']:5.2f} samples/s  train {r['train_s']:6.1f} s  "
          f"median step {r['median_step_s']:5.2f} s  cpu/step {r['cpu_s_per_step']:5.2f} s  "
          f"loss {r['final_loss']:.4f}  rss {r['peak_rss_mb']:6.0f} MB  "
          f"others {100 * r['others_cpu_share']:3.0f}% CPU  (process {r['subprocess_s']:.0f} s)", flush=True)
    return r


def _median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # ~10 s a step on a 2-core AVX2 CPU: 6 steps x 3 arms x 2 repeats keeps the run under ~10 minutes.
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    ap.add_argument("--quiet-wait", type=float, default=300,
                    help="seconds to wait at most, before each arm, for other processes to leave the CPU (0 = no wait)")
    ap.add_argument("--retries", type=int, default=1,
                    help="rerun an arm up to N times when other processes used > 10%% of the CPU during it")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/lora_sft.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out-file", help=argparse.SUPPRESS)
    a = ap.parse_args()

    os.environ.setdefault("TUNELAB_HOME", "/tmp/tl-bench")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.worker == "prepare":
        return prepare(Path(a.out_file))
    if a.worker:
        return worker(a.worker, a.steps, Path(a.out_file))

    arms = [x for x in a.arms.split(",") if x]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; choose from {', '.join(ARMS)}")
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lora-sft-"))
    print(f"logs in {tmp}; TUNELAB_HOME={os.environ['TUNELAB_HOME']}", flush=True)
    machine = _subprocess(["--worker", "prepare"], tmp / "machine.json", tmp / "prepare.log")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
          f"capability {machine['cpu_capability']}, cuda {machine['cuda']}, "
          f"precision auto -> {machine['precision']}", flush=True)

    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for rep in range(a.repeats):
        order = arms if rep % 2 == 0 else arms[::-1]  # alternate, so no arm always goes first
        for arm in order:
            for attempt in range(1 + a.retries):
                r = _run_arm(arm, rep, attempt, a, tmp)
                runs[arm].append(r)
                if not r["noisy"]:
                    break

    # Medians over the clean runs (other processes used <= NOISY of the CPU); all runs if none was clean.
    used = {arm: [r for r in rs if not r["noisy"]] or rs for arm, rs in runs.items()}
    medians = {arm: {k: _median(rs, k) for k in ("tokens_per_s", "samples_per_s", "train_s", "s_per_step",
                                                  "median_step_s", "cpu_s_per_step", "final_loss", "peak_rss_mb",
                                                  "tokens", "subprocess_s", "others_cpu_share")}
               for arm, rs in used.items()}
    for arm in medians:
        medians[arm]["runs_used"] = len(used[arm])
    ratio = ratio_defaults = step_ratio = None
    if "tunelab" in medians and "trl" in medians:
        ratio = medians["tunelab"]["tokens_per_s"] / medians["trl"]["tokens_per_s"]
        step_ratio = medians["trl"]["median_step_s"] / medians["tunelab"]["median_step_s"]
    if "tunelab" in medians and "trl_defaults" in medians:
        ratio_defaults = medians["tunelab"]["tokens_per_s"] / medians["trl_defaults"]["tokens_per_s"]
    total_s = time.perf_counter() - t_start

    label = {"tunelab": "tunelab.run", "trl": "TRL, same settings", "trl_defaults": "TRL defaults"}
    print(f"\nLoRA SFT, {MODEL}, {a.steps} steps x batch {SETTINGS['batch_size']}, max_length "
          f"{SETTINGS['max_length']}, precision {machine['precision']}; medians of {a.repeats} repeats\n")
    print("| arm | tokens/s | samples/s | train s | s/step | median step s | CPU s/step | final loss | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm in arms:
        m = medians[arm]
        print(f"| {label[arm]} | {m['tokens_per_s']:.1f} | {m['samples_per_s']:.2f} | {m['train_s']:.1f} | "
              f"{m['s_per_step']:.2f} | {m['median_step_s']:.2f} | {m['cpu_s_per_step']:.2f} | "
              f"{m['final_loss']:.4f} | {m['peak_rss_mb']:.0f} |")
    verdict = None
    reliable = not any(all(r["noisy"] for r in rs) for rs in runs.values())
    if ratio is not None:
        verdict = "TARGET MET" if ratio >= TARGET else "TARGET MISSED"
        if not reliable:
            verdict += " (unreliable: measured under other load)"
        print(f"\ntokens/s ratio tunelab / TRL (same settings) = {ratio:.3f}  -> {verdict} (target >= {TARGET})")
        print(f"median-step speed ratio tunelab / TRL (same settings) = {step_ratio:.3f}  (less sensitive to load)")
    if ratio_defaults is not None:
        print(f"tokens/s ratio tunelab / TRL defaults = {ratio_defaults:.3f}")
    noisy = [f"{arm}-{r['repeat']}-{r['attempt']}" for arm, rs in runs.items() for r in rs if r["noisy"]]
    if noisy:
        print(f"note: other processes used > {NOISY:.0%} of the CPU during {', '.join(noisy)}: those times are "
              f"inflated and left out of the medians where a clean run of the arm exists")
    if not reliable:
        print("WARNING: an arm has no clean run: its numbers measure the other load too; rerun on a quiet machine")
    print(f"total benchmark time {total_s:.0f} s")

    result = {
        "benchmark": "lora_sft", "date": time.strftime("%Y-%m-%d"), "machine": machine,
        "settings": {**SETTINGS, "steps": a.steps, "repeats": a.repeats, "model": MODEL,
                     "data": str(DATA.relative_to(ROOT))},
        "medians": medians, "ratio_tokens_per_s": ratio, "ratio_vs_trl_defaults": ratio_defaults,
        "median_step_speed_ratio": step_ratio,
        "target": TARGET, "verdict": verdict, "reliable": reliable, "noisy_runs": noisy, "total_s": total_s, "runs": runs,
    }
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
