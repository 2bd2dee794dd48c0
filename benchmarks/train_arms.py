"""The worker side of bench_train.py: one training arm, measured, in a fresh process.

bench_train.py (the driver, and the story of what is measured and why) starts this code
in a subprocess for each arm: `bench_train.py --worker <arm>` trains the arm with a
wrapper around `Trainer.train` and `Trainer.training_step` that times the train call and
each step and counts the tokens in each batch, samples the resident memory, and writes
the figures as JSON. `--worker machine` / `--worker peak` describe the machine and
measure its matmul peak.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_DATA = ROOT / "labs/data/pirate_sft.jsonl"
DPO_DATA = ROOT / "labs/data/concise_dpo.jsonl"
KTO_DATA = ROOT / "labs/data/concise_kto.jsonl"   # lab 6's answers: the pairs split, plus thumbs
DATA = {"sft": SFT_DATA, "dpo": DPO_DATA, "orpo": DPO_DATA, "kto": KTO_DATA}
OBJECTIVE = {"sft": "sft", "dpo": "dpo", "orpo": "dpo", "kto": "kto"}
MODEL = "smollm2-135m-instruct"

# What every pair of arms shares (see bench_train.py).
SETTINGS = dict(batch_size=8, max_length=256, lr=2e-4, scheduler="linear", seed=0,
                lora_r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
STEPS = {"sft": 10, "dpo": 8, "kto": 8, "orpo": 8}


def instrument(box: dict) -> None:
    """Wrap Trainer.train, Trainer.training_step and Trainer.__init__ (when a trainer is built),
    the same for every arm (bench_peers' LLaMA-Factory arms too: its trainers are transformers'
    and TRL's subclasses)."""
    from transformers import Trainer
    inner, inner_step, inner_init = Trainer.train, Trainer.training_step, Trainer.__init__
    ends = box.setdefault("step_ends", [])
    tokens = box.setdefault("step_tokens", [])

    def timed_step(self, model, inputs, *args, **kwargs):
        n = sum(int(v.sum()) for k, v in inputs.items() if k.endswith("attention_mask"))
        if not n and "position_ids" in inputs:   # padding-free batches: one row, no mask, no padding
            n = int(inputs["input_ids"].numel())
        out = inner_step(self, model, inputs, *args, **kwargs)
        ends.append(time.perf_counter())
        tokens.append(n)
        return out

    def built(self, *args, **kwargs):
        # When the trainer's own setup reaches transformers' Trainer: the work a TRL trainer does
        # after that, before `train` (DPO's and KTO's precomputed reference pass), is then timed
        # by "built_to_trained_s", not by "train_s".
        if "trainer_built_t" not in box:
            box["trainer_built_t"] = time.perf_counter()
            box["built_sampler"] = RssSampler()   # that pass's memory too
        return inner_init(self, *args, **kwargs)

    def timed(self, *args, **kwargs):
        import torch
        sampler = RssSampler()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()   # what training holds, not what loading did
        box["rss_before_train_mb"] = sampler.peak_mb
        cpu0, busy0 = _cpu_s(), _machine_busy_s()
        t0 = time.perf_counter()
        ends.append(t0)
        out = inner(self, *args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            box["train_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20   # tensors on the GPU
        box["train_s"] = time.perf_counter() - t0
        box["built_to_trained_s"] = time.perf_counter() - box.get("trainer_built_t", t0)
        box["train_peak_rss_mb"] = sampler.stop()
        built = box.pop("built_sampler", None)   # from the trainer's build: a precomputed reference included
        box["built_to_trained_peak_rss_mb"] = built.stop() if built else box["train_peak_rss_mb"]
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
        # Where checkpointing is on: a tool may turn it on on the model itself (LLaMA-Factory does).
        box["model_gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))
        box["threads"] = torch.get_num_threads()
        box["trainer_class"] = type(self).__name__
        return out

    Trainer.train = timed
    Trainer.training_step = timed_step
    Trainer.__init__ = built


class RssSampler:
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


def run_worker(cmd: list[str], out: Path, log: Path, env: dict | None = None) -> dict:
    """Run one arm's worker process (`cmd` writes its figures as JSON to `out`, its output to
    `log`); its figures, with "process_s", the process's whole wall time. A failed worker
    stops the benchmark with its log's tail."""
    import subprocess
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"{cmd[2:]} failed (exit {rc}); log {log}:\n{log.read_text()[-3000:]}")
    res = json.loads(out.read_text())
    res["process_s"] = time.perf_counter() - t0
    return res


def median(runs: list[dict], key: str):
    """The median of `key` over the runs that have it (None: none has)."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def wait_for_quiet(max_wait_s: float, share: float = 0.15, window_s: float = 5.0) -> float:
    """Wait (up to max_wait_s) until the machine has been nearly idle for window_s."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = _machine_busy_s(), time.monotonic()
        time.sleep(window_s)
        busy = (_machine_busy_s() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if busy <= share or time.monotonic() >= deadline:
            return busy


def _tunelab(method: str, steps: int, off: str | None = None) -> None:
    """tunelab.run with the shared settings; `off` names one speed piece turned off
    (a `speed:` field, or `group_by_length`)."""
    from tunelab import RunConfig, run
    s = SETTINGS
    cfg = {"method": method, "model": MODEL, "name": f"bench-{method}",
           "data": {"train": str(DATA.get(method, SFT_DATA)), "eval_fraction": 0.0},
           "train": {"max_steps": steps, "batch_size": s["batch_size"], "lr": s["lr"],
                     "max_length": s["max_length"], "scheduler": s["scheduler"], "seed": s["seed"],
                     "logging_steps": 1},
           "lora": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": s["lora_dropout"],
                    "target_modules": s["target_modules"]}}
    if off == "group_by_length":
        cfg["train"]["group_by_length"] = False
    elif off:
        cfg["speed"] = {off: False}
    run(RunConfig.from_dict(cfg))


def _trl(kind: str, steps: int, matched: bool, precomputed: bool = False, padding_free: bool = False,
         liger: bool = False) -> None:
    """A plain TRL script. Given: data, max_length, batch, LoRA, lr, scheduler, seed, steps;
    bf16=True; the rest TRL's defaults (unless `matched`; `precomputed`: DPO's reference
    log-probs computed once, before training; `padding_free`: TRL's own answer to padding,
    each batch's rows laid end to end in one row, SFT only)."""
    import peft
    from datasets import Dataset

    from tunelab.data import load_examples   # reading the file only: the same rows tunelab trains on
    from tunelab.modelio.models import resolve_model

    s = SETTINGS
    path = str(resolve_model(MODEL))
    _, rows = load_examples(DATA[kind], OBJECTIVE[kind])
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
    if precomputed:
        args["precompute_ref_log_probs"] = True
    if padding_free:   # TRL enforces no max_length without packing: every row of the SFT data is under it
        args.update(padding_free=True, max_length=None)
    if liger:   # Liger's kernels through TRL's own switch (its fused loss stays off: TRL's head is in place)
        args["use_liger_kernel"] = True
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer
        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=dataset, peft_config=lora)
    elif kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=model, args=DPOConfig(**args), train_dataset=dataset, peft_config=lora)
    elif kind == "kto":
        from trl import KTOConfig, KTOTrainer
        trainer = KTOTrainer(model=model, args=KTOConfig(**args), train_dataset=dataset, peft_config=lora)
    else:   # ORPO's trainer takes a model object, not a path
        from transformers import AutoModelForCausalLM
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model)
        trainer = ORPOTrainer(model=model, args=ORPOConfig(**args), train_dataset=dataset, peft_config=lora)
    trainer.train()


def summarise(box: dict, kind: str, passes: int = 4) -> dict:
    """Turn what `instrument` recorded into the arm's figures (in place; also returned).
    `passes`: 2·N-FLOP passes a token makes (4 for adapters, 6 when every weight trains)."""
    import torch
    hist = box.pop("log_history")
    losses = [e["loss"] for e in hist if "loss" in e]
    ends, step_tokens = box.pop("step_ends"), box["step_tokens"]
    step_s = [b - a for a, b in zip(ends, ends[1:])]
    steps_done = box["global_step"]
    tokens = sum(step_tokens)
    flops = passes * box["linear_params"] * tokens
    box.update(
        kind=kind, steps=steps_done, step_s=step_s,
        median_step_s=statistics.median(step_s[1:] or step_s),
        tokens=tokens, tokens_per_s=tokens / box["train_s"],
        samples_per_s=steps_done * box["batch_size"] / box["train_s"],
        end_to_end_samples_per_s=steps_done * box["batch_size"] / box["built_to_trained_s"],
        end_to_end_tokens_per_s=tokens / box["built_to_trained_s"],
        model_flops=flops, model_flops_per_s=flops / box["train_s"],
        final_loss=losses[-1] if losses else None,
        first_loss=losses[0] if losses else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch_threads=torch.get_num_threads(),
    )
    return box


def worker(arm: str, out: Path) -> None:
    box: dict = {"arm": arm}
    instrument(box)
    kind = arm.split("_")[0] if arm.split("_")[0] in STEPS else "sft"
    steps = int(os.environ.get("TUNELAB_BENCH_STEPS") or STEPS[kind])   # bench_gpu sets more (or 2 for a dry run)
    if arm.endswith("_tunelab"):
        _tunelab("lora" if kind == "sft" else kind, steps)
    elif "_off_" in arm:   # the product path with one speed piece off
        _tunelab("lora" if kind == "sft" else kind, steps, off=arm.split("_off_", 1)[1])
    elif arm in ("full", "qlora"):
        _tunelab(arm, steps)
    else:
        _trl(kind, steps, matched=arm.endswith(("matched", "padding_free", "liger")),
             precomputed=arm.endswith("precomputed"), padding_free=arm.endswith("padding_free"),
             liger=arm.endswith("liger"))
    summarise(box, kind, passes=6 if arm == "full" else 4)   # forward 2N + input grads 2N (+ weight grads 2N)
    out.write_text(json.dumps(box, indent=1, default=str))


def matmul_peak(dtype_name: str, size: int = 1024, windows: int = 3, seconds: float = 1.0,
                device: str = "cpu") -> float:
    """GFLOP/s of a square matmul: the best of `windows` windows of `seconds`, after a warm-up
    (the best, so a burst of load from another process does not lower the peak). On a GPU
    each window ends with a synchronize, so it counts finished work."""
    import torch
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        sync()
        best = max(best, n * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def peaks() -> dict:
    """The matmul peaks of the device training runs on: a GPU where there is one (8192-square
    products, large enough to fill it), else the CPU."""
    import torch
    if torch.cuda.is_available():
        return {"bfloat16": matmul_peak("bfloat16", 8192, device="cuda"),
                "float32": matmul_peak("float32", 8192, device="cuda")}
    return {"bfloat16": matmul_peak("bfloat16"), "float32": matmul_peak("float32")}


def machine_info() -> dict:
    """The machine, the precision tunelab picks, and the matmul peaks (measured now)."""
    import peft
    import torch
    import transformers
    import trl

    from tunelab import RunConfig
    from tunelab.modelio.models import resolve_model
    from tunelab.training.run import resolve_hardware

    resolve_model(MODEL)   # converts the bundled model once, outside any timed arm
    hw = resolve_hardware(RunConfig(method="lora"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": hw.device, "precision": hw.precision, "python": platform.python_version(),
        "peak_gflops": peaks(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }
