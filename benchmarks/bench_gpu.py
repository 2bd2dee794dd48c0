"""Training on a GPU: tunelab's path against plain TRL, TRL with its fastest switches, and
tunelab with its answer head off, on the same data. One command on a machine with a CUDA GPU:

    python -m benchmarks.bench_gpu                 # on the GPU machine (see ../shared/gpu-kit)
    python -m benchmarks.bench_gpu --steps 50      # longer arms (default 30 steps each)
    python -m benchmarks.bench_gpu --dry-run       # here, on a CPU: every arm for 2 steps

It is bench_train.py's machinery (one fresh process an arm, the same data, batch, LoRA
settings and step timing) with these arms:

  sft_tunelab, dpo_tunelab          the product path (`device: auto` picks the GPU)
  sft_off_answer_head, dpo_off_answer_head
                                    the same with `speed.answer_head` off: TRL's own head,
                                    which on a GPU is its Triton kernel over the answer tokens
  sft_trl_defaults, dpo_trl_defaults  a plain TRL script, its defaults plus bf16
  sft_trl_matched, dpo_trl_precomputed  TRL given tunelab's trainer settings
  sft_trl_padding_free              + TRL's `padding_free` (no padding at all)
  sft_trl_liger                     + `use_liger_kernel` (Liger's layer kernels), where
                                    liger-kernel is installed

and prints, for each, samples/s, model FLOP/s as a share of the GPU's measured bf16 matmul
peak (MFU) and the peak GPU memory while training (`torch.cuda.max_memory_allocated`).
The figures go to benchmarks/results/gpu.json (a dry run's to a temporary file). The
verdicts say whether the answer head still earns its place on the GPU; if TRL's head wins
there, that is the figure that would justify handing the GPU back to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import bench_train

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("sft_tunelab", "sft_off_answer_head", "sft_trl_defaults", "sft_trl_matched", "sft_trl_padding_free",
        "sft_trl_liger", "dpo_tunelab", "dpo_off_answer_head", "dpo_trl_defaults", "dpo_trl_precomputed")


def arms_here() -> list[str]:
    """The arms this machine can run: Liger's only with liger-kernel installed."""
    return [a for a in ARMS if a != "sft_trl_liger" or importlib.util.find_spec("liger_kernel") is not None]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps in each arm (default 30)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="no GPU needed: every arm for 2 steps, here")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/gpu.json"))
    a = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available() and not a.dry_run:
        raise SystemExit("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); "
                         "--dry-run runs every arm for 2 steps on this machine to check the script")
    arms = arms_here()
    if "sft_trl_liger" not in arms:
        print("liger-kernel is not installed: the Liger arm is left out", flush=True)
    os.environ["TUNELAB_BENCH_STEPS"] = "2" if a.dry_run else str(a.steps)
    out = str(Path(tempfile.mkdtemp(prefix="bench-gpu-dry-")) / "gpu.json") if a.dry_run else a.json
    return bench_train.main(["--arms", ",".join(arms), "--repeats", str(a.repeats), "--quiet-wait", "0",
                             "--json", out])


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
