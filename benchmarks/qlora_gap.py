"""Why lab 3's QLoRA ended at twice LoRA's loss (issue #16), measured on the bundled model.

    nice -n 10 .venv/bin/python -m benchmarks.qlora_gap              # all (~13 min on 2 cores)
    nice -n 10 .venv/bin/python -m benchmarks.qlora_gap --steps 30   # shorter training runs
    nice -n 10 .venv/bin/python -m benchmarks.qlora_gap --no-train   # only what needs no training

It prints the machine and each figure, and writes benchmarks/results/qlora_gap.json. Like
labs/measure.py it works in a throwaway workspace (TUNELAB_HOME, default /tmp/tunelab-labs),
where the bundled model is converted once.

1. The base, no training. The bundled SmolLM2 was stored as GGUF Q4_1 (16 evenly spaced
   levels a block of 32 weights); QLoRA rounds it again, to NF4 (16 normal-quantile levels
   a block of 64). We measure the NF4 round-trip error of every weight QLoRA quantises,
   the same for Gaussian weights of the same shapes (the textbook case), and the
   answer-token loss of the untrained base on all 80 rows of lab 3's data in fp32, bf16
   and 4-bit (NF4 with bf16 or fp32 compute, with and without double quantisation, FP4).
2. Training, lab 3's card as is (lr, r, alpha, steps, eval every 10 steps), each run in a
   fresh process so its peak memory is its own: LoRA; QLoRA as it ran before the fix
   (bitsandbytes allowed to repack the 4-bit weights for CPU inference at the first
   evaluation, after which no gradient flows back through a quantised layer); QLoRA
   fixed. Same seed, data and batches in all three.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "labs" / "lab3_qlora.yaml"
DATA = ROOT / "labs" / "data" / "pirate_sft.jsonl"
OUT = ROOT / "benchmarks" / "results" / "qlora_gap.json"
MODEL = "smollm2-135m-instruct"
os.environ.setdefault("TUNELAB_HOME", "/tmp/tunelab-labs")


def machine() -> dict:
    import bitsandbytes
    import torch
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__,
            "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


# --- 1. the base, no training ---------------------------------------------------------------

def roundtrip_errors() -> dict:
    """Relative error ‖W − dequant(quant(W))‖ / ‖W‖ over every weight QLoRA quantises
    (all Linear layers of the decoder; the tied embedding / output head stay in 16 bits)."""
    import torch
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    from safetensors.torch import load_file

    from tunelab.modelio.models import resolve_model
    sd = load_file(str(Path(resolve_model(MODEL)) / "model.safetensors"))
    weights = {k: v for k, v in sd.items() if k.endswith("proj.weight")}
    g = torch.Generator().manual_seed(0)

    def err(ws, quant_type="nf4", dq=True):
        num = den = 0.0
        for w in ws:
            q, state = quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=dq)
            num += (dequantize_4bit(q, state).float() - w).pow(2).sum().item()
            den += w.pow(2).sum().item()
        return (num / den) ** 0.5

    ws = list(weights.values())
    gauss = [torch.randn(w.shape, generator=g) * w.std() for w in ws]
    by_kind = {}
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        by_kind[kind] = err([w for k, w in weights.items() if f".{kind}." in k])
    # The GGUF grid: a Q4_1 block of 32 weights holds at most 16 distinct values.
    w0 = weights["model.layers.0.mlp.down_proj.weight"].reshape(-1, 32)
    distinct = sum(len(torch.unique(b)) for b in w0[:2000]) / 2000
    return {"quantised_weights": sum(w.numel() for w in ws),
            "not_quantised": {k: v.numel() for k, v in sd.items() if not k.endswith("proj.weight") and v.dim() == 2},
            "nf4_dq": err(ws), "nf4": err(ws, dq=False), "fp4_dq": err(ws, "fp4"),
            "bf16": sum((w.bfloat16().float() - w).pow(2).sum().item() for w in ws) ** 0.5
            / sum(w.pow(2).sum().item() for w in ws) ** 0.5,
            "nf4_dq_gaussian_same_shapes": err(gauss), "nf4_dq_by_kind": by_kind,
            "q41_distinct_values_per_block_of_32": distinct}


def answer_batches(tokenizer, batch=8):
    """All 80 rows of lab 3's data as (ids, labels) batches; labels score the answer only,
    as the lab's completion-only loss does."""
    import torch

    from tunelab import data
    _, rows = data.load_examples(str(DATA), "sft")
    seqs = []
    for r in rows:
        prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:192]
        seqs.append((ids, [-100] * len(p_ids) + ids[len(p_ids):]))
    for s in range(0, len(seqs), batch):
        part = seqs[s:s + batch]
        n = max(len(i) for i, _ in part)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (n - len(i)) for i, _ in part])
        labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in part])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _ in part])
        yield ids, mask, labels


def base_loss(dtype: str, quant: dict | None) -> float:
    """Mean answer-token loss of the untrained model over all rows (train mode, no grad: the
    path training takes), under bf16 autocast when the model computes in bf16."""
    import torch

    from tunelab.modelio import loading
    from tunelab.methods.qlora import keep_trainable_layout
    dt = getattr(torch, dtype)
    model = loading.load_model(MODEL, dtype=dt, quant=quant)
    keep_trainable_layout(model)
    model.train()
    tok = loading.load_tokenizer(MODEL)
    total = count = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
        for ids, mask, labels in answer_batches(tok):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += loss.item()
            count += (target != -100).sum().item()
    return total / count


BASES = {   # name: (dtype of the unquantised parts / compute, 4-bit settings or None)
    "fp32": ("float32", None),
    "bf16": ("bfloat16", None),
    "nf4+dq, bf16 compute": ("bfloat16", {"quant_type": "nf4", "double_quant": True}),
    "nf4+dq, fp32 compute": ("float32", {"quant_type": "nf4", "double_quant": True}),
    "nf4, bf16 compute": ("bfloat16", {"quant_type": "nf4", "double_quant": False}),
    "fp4+dq, bf16 compute": ("bfloat16", {"quant_type": "fp4", "double_quant": True}),
}


# --- 2. training ------------------------------------------------------------------------------

VARIANTS = {   # name: (method, allow bitsandbytes' CPU inference repacking, i.e. the old code)
    "lora": ("lora", False),
    "qlora before the fix": ("qlora", True),
    "qlora": ("qlora", False),
}


def train_one(variant: str, steps: int, home: str) -> None:
    """In a fresh process: one lab-3 run; prints its summary and losses as one JSON line."""
    os.environ["TUNELAB_HOME"] = home
    from tunelab import run
    from tunelab.training.events import read_events
    method, old = VARIANTS[variant]
    if old:
        from tunelab.methods import qlora
        qlora.keep_trainable_layout = lambda model: 0
    cfg = _card_config(method, steps)
    t0 = time.time()
    result = run(cfg)
    wall = time.time() - t0
    losses = {e["step"]: e["loss"] for e in read_events(result.run_dir) if e["type"] == "step" and "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in read_events(result.run_dir) if e["type"] == "eval"}
    s = result.summary
    last = [losses[k] for k in sorted(losses)[-10:]]
    print(json.dumps({"variant": variant, "steps": s["steps"], "first_step_loss": losses.get(1),
                      "final_loss": s["final_loss"], "mean_last_10_steps": sum(last) / len(last),
                      "eval_loss": evals, "final_eval_loss": s["final_eval_loss"],
                      "train_s": round(s["wall_time_s"], 1), "process_s": round(wall, 1),
                      "peak_memory_mb": round(s["peak_memory_mb"]), "precision": s["precision"],
                      "trainable_params": s["trainable_params"]}))


def _card_config(method: str, steps: int):
    import yaml

    from tunelab import RunConfig
    card = yaml.safe_load(CARD.read_text())["config"]
    card["method"] = method
    card["train"]["max_steps"] = steps
    card.pop("qlora") if method == "lora" else None
    card["data"]["train"] = str(ROOT / card["data"]["train"])
    return RunConfig.from_dict(card)


def train_all(steps: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="qlora-gap-") as home:
        models_dir = Path(home) / "models"
        models_dir.mkdir()
        from tunelab.modelio.models import resolve_model
        (models_dir / MODEL).symlink_to(resolve_model(MODEL), target_is_directory=True)
        for variant in VARIANTS:
            p = subprocess.run([sys.executable, "-m", "benchmarks.qlora_gap", "--train-one", variant, "--steps",
                                str(steps), "--home", home], cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{variant}: training failed:\n{p.stderr[-3000:]}")
            out[variant] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"  {variant:22s} {_fmt(out[variant])}", flush=True)
    return out


def _fmt(r: dict) -> str:
    ev = r["eval_loss"]
    return (f"step-1 loss {r['first_step_loss']:.3f}  last step {r['final_loss']:.3f}  "
            f"last-10 mean {r['mean_last_10_steps']:.3f}  eval {' '.join(f'{ev[k]:.2f}' for k in sorted(ev, key=int))}"
            f"  train {r['train_s']:.0f} s  peak {r['peak_memory_mb']} MB  ({r['precision']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps a run (lab 3: 60)")
    ap.add_argument("--no-train", action="store_true", help="skip the training runs")
    ap.add_argument("--train-one", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.train_one:
        return train_one(a.train_one, a.steps, a.home)

    from tunelab.training.run import _quiet_libraries
    _quiet_libraries()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    print("machine:", json.dumps(result["machine"]), flush=True)

    rt = result["roundtrip"] = roundtrip_errors()
    print(f"weight round trip, relative error over {rt['quantised_weights']:,} quantised weights:")
    for k in ("bf16", "nf4_dq", "nf4", "fp4_dq", "nf4_dq_gaussian_same_shapes"):
        print(f"  {k:28s} {100 * rt[k]:.2f} %")
    print("  nf4_dq by layer kind:", ", ".join(f"{k} {100 * v:.1f} %" for k, v in rt["nf4_dq_by_kind"].items()))
    print(f"  not quantised: {rt['not_quantised']}")
    print(f"  distinct values a Q4_1 block of 32 holds (layer 0 down_proj): "
          f"{rt['q41_distinct_values_per_block_of_32']:.1f}", flush=True)

    result["base_loss"] = {}
    print("untrained base, answer-token loss on all 80 rows of lab 3's data:")
    for name, (dtype, quant) in BASES.items():
        t0 = time.time()
        loss = result["base_loss"][name] = base_loss(dtype, quant)
        print(f"  {name:24s} {loss:.4f}   ({time.time() - t0:.0f} s)", flush=True)

    if not a.no_train:
        print(f"training, lab 3's card ({a.steps} steps; eval every 10 on 8 held-out rows):", flush=True)
        result["steps"] = a.steps
        t = result["train"] = train_all(a.steps)
        b = result["base_loss"]
        gaps = result["gaps"] = {
            "untrained, nf4+dq minus bf16": b["nf4+dq, bf16 compute"] - b["bf16"],
            "final eval, qlora minus lora": t["qlora"]["final_eval_loss"] - t["lora"]["final_eval_loss"],
            "last-10 mean, qlora minus lora": t["qlora"]["mean_last_10_steps"] - t["lora"]["mean_last_10_steps"],
            "last-10 mean, qlora before the fix minus lora":
                t["qlora before the fix"]["mean_last_10_steps"] - t["lora"]["mean_last_10_steps"]}
        print("loss gaps:", ", ".join(f"{k} {v:+.3f}" for k, v in gaps.items()))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print("wrote", OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
