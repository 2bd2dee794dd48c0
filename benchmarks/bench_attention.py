"""The short-batch attention (tunelab/methods/attention.py) against transformers' own SDPA
and eager attention: the bundled model's decoder, forward and backward under the precision
`auto` picks, for batches shaped like the labs' (SFT 8 × 90, DPO 16 × 190) and a long one.

    python -m benchmarks.bench_attention [--repeats 5]

Each arm loads the same model with `attn_implementation` set to its attention, and the
arms take turns, so a machine that slows down mid-run slows them all; the best of the
repeats is kept. It prints the machine, each arm's time and the ratio of SDPA's time to
the registered attention's (the library's best answer on a CPU against ours).
"""

from __future__ import annotations

import argparse
import time

MODEL = "smollm2-135m-instruct"
SHAPES = [(8, 90), (16, 190), (2, 512)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from tunelab import RunConfig
    from tunelab.methods import attention
    from tunelab.modelio.models import resolve_model
    from tunelab.training.run import resolve_hardware

    path = str(resolve_model(MODEL))
    hw = resolve_hardware(RunConfig(method="lora"))
    amp = torch.bfloat16 if hw.precision == "bf16" else None
    print(f"machine: {torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads, "
          f"precision {hw.precision}, torch {torch.__version__}")
    arms = {"sdpa": "sdpa", "eager": "eager", "tunelab": attention.register()}
    models = {}
    for arm, impl in arms.items():
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=impl)
        m.requires_grad_(False)
        m.get_input_embeddings().weight.requires_grad_(True)   # a backward through every layer
        models[arm] = m
    print(f"{'batch':>10} " + " ".join(f"{a:>10}" for a in arms) + "   sdpa / tunelab")
    for rows, length in SHAPES:
        torch.manual_seed(0)
        ids = torch.randint(0, models["sdpa"].config.vocab_size, (rows, length))
        mask = torch.ones_like(ids)
        mask[0, length * 2 // 3:] = 0   # one padded row, as a real batch has
        best = {arm: float("inf") for arm in arms}
        for _ in range(args.repeats):
            for arm, m in models.items():
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    hidden = m.model(input_ids=ids, attention_mask=mask).last_hidden_state
                hidden.float().square().mean().backward()
                best[arm] = min(best[arm], time.perf_counter() - t)
                m.zero_grad(set_to_none=True)
        print(f"{rows:>4} × {length:<4} " + " ".join(f"{best[a] * 1000:>8.0f}ms" for a in arms)
              + f"   {best['sdpa'] / best['tunelab']:.2f}×")


if __name__ == "__main__":
    main()
