"""The worker side of `bench_chat.py --engines`: the arena's engine against the libraries' own
answers to the same problem, each arm in a fresh process, for 2, 8 and 30 answers at once.

    .venv/bin/python -m benchmarks.chat_engines ARM OUT.json RUN_DIR TOKENS

Arms (the same prompts, greedy, the dtype the arena uses, at most TOKENS new tokens each; a
row ends at its end-of-turn token or at TOKENS):

  tunelab_mixed  the arena (tunelab.arena.chat.Arena.stream): half the answers from the base,
                 half from a LoRA run, all in its shared decode loop, one forward a step
  peft_mixed     PEFT's mixed-adapter batch: PeftModel.generate(..., adapter_names=[...]), the
                 same rows (base rows named "__base__"), left-padded, one static batch
  tunelab_base   the arena with every answer from the base
  generate_base  transformers' batched `generate` on the base (left-padded, one static batch)
  cb_base        transformers' continuous batching on the base (`generate_batch`), where it
                 runs on a CPU; if it fails, the arm records what failed

Each records, for each number of answers: the tokens written (up to each row's end), the
wall seconds from the call to the last token, tokens/s, the time to each answer's first
token (its median and worst), and the resident memory before the call and at its peak
during it (sampled every 20 ms). Nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks.train_arms import RssSampler

ANSWERS = (2, 8, 30)
MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[list[dict]]:
    """n different user turns: the labs' held-out questions, then lab 1's training questions."""
    texts = []
    for path in (ROOT / "labs/heldout/pirate.jsonl", ROOT / "labs/heldout/concise.jsonl"):
        texts += [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    for line in (ROOT / "labs/data/pirate_sft.jsonl").read_text().splitlines():
        if line.strip():
            texts.append(json.loads(line)["messages"][0]["content"])
    return [[{"role": "user", "content": t}] for t in texts[:n]]


def _summary(tokens: list[int], first: list[float], seconds: float) -> dict:
    return {"answers": len(tokens), "tokens": sum(tokens), "seconds": seconds,
            "tokens_per_s": sum(tokens) / seconds,
            "first_token_median_s": statistics.median(first), "first_token_max_s": max(first),
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measured(call, *args) -> dict:
    """`call(*args)`'s figures, with the resident memory before it and its peak during it
    (the model and the engine's buffers, not the load's passing peak)."""
    sampler = RssSampler()
    before = sampler.peak_mb
    row = call(*args)
    row.update(rss_before_mb=before, peak_rss_mb=sampler.stop())
    return row


def _arena(n: int, tokens: int, run_id: str | None, arena) -> dict:
    from tunelab.arena.chat import BASE, Request, Sampling
    s = Sampling(temperature=0.0, max_new_tokens=tokens)
    requests = [Request(BASE if (run_id is None or i % 2 == 0) else "run:" + run_id, p, s)
                for i, p in enumerate(prompts(n))]
    t0 = time.perf_counter()
    for replies in arena.stream(requests):
        pass
    seconds = time.perf_counter() - t0
    errors = [r.error for r in replies if r.error]
    if errors:
        raise SystemExit(f"arena failed: {errors[0]}")
    return _summary([r.tokens for r in replies], [r.first_token_s for r in replies], seconds)


class _FirstCall:
    """A logits processor that only notes when it was first called: the first token's time."""

    def __init__(self):
        self.at = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def _generate(model, tok, n: int, tokens: int, adapter_names: list[str] | None = None) -> dict:
    import torch
    from transformers import LogitsProcessorList
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts(n)]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    first = _FirstCall()
    extra = {"adapter_names": adapter_names} if adapter_names else {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             logits_processor=LogitsProcessorList([first]), **extra)
    seconds = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1]:]
    return _summary([_written(row.tolist(), tok) for row in new], [first.at - t0] * n, seconds)


def _written(ids: list[int], tok) -> int:
    """Tokens a row wrote before its end (its end-of-turn token or padding not counted)."""
    ends = {tok.eos_token_id, tok.pad_token_id} | set(tok.convert_tokens_to_ids(["<|im_end|>"]))
    for i, t in enumerate(ids):
        if t in ends:
            return i
    return len(ids)


def _continuous(model, tok, n: int, tokens: int) -> dict:
    """transformers' continuous batching, as a server runs it: the manager is made, sized for
    this workload and warmed up first, untimed; then the answers are added and timed."""
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints   # what generate_batch sizes by
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts(n)]
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    hints = WorkloadHints(max_prompt_length=max(map(len, ids)), max_generated_length=tokens, num_requests=n)
    outs = []
    with model.continuous_batching_context_manager(generation_config=config, workload_hints=hints, block=True,
                                                   timeout=5) as manager:
        t0 = time.perf_counter()
        wanted = set(manager.add_requests(inputs=ids, max_new_tokens=tokens, record_timestamps=True))
        while wanted:
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished() and result.request_id in wanted:
                wanted.discard(result.request_id)
                outs.append(result)
            elif result is None and not manager.is_running():
                raise RuntimeError("the continuous batching thread ended")
        seconds = time.perf_counter() - t0
    errors = [o.error for o in outs if o.error]
    if errors:
        raise RuntimeError(errors[0])
    return _summary([_written(o.generated_tokens, tok) for o in outs],
                    [(o.timestamps[0] - t0) if o.timestamps else seconds for o in outs], seconds)


def main(arm: str, out: Path, run_dir: Path, tokens: int) -> None:
    from tunelab.arena.chatdevice import chat_dtype
    from tunelab.modelio import models
    folder = models.resolve_model(MODEL)
    dtype = chat_dtype("cpu")
    result = {"arm": arm, "dtype": str(dtype).split(".")[-1], "new_tokens": tokens, "by_answers": {}}
    if arm.startswith("tunelab"):
        from tunelab.arena.chat import Arena
        from tunelab.arena.chatdevice import reserve_cores
        reserve_cores()   # as the app does: the decode loop's thread computes on every core
        arena = Arena(MODEL)
        run_id = run_dir.name if arm == "tunelab_mixed" else None
        _arena(2, 4, run_id, arena)   # warm-up: load the model (and the adapter)
        for n in ANSWERS:
            result["by_answers"][n] = _measured(_arena, n, tokens, run_id, arena)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        names = None
        if arm == "peft_mixed":
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, run_dir / "model", adapter_name="run").eval()
        for n in (1,) + ANSWERS:   # the first: a warm-up
            if arm == "peft_mixed":
                names = ["__base__" if i % 2 == 0 else "run" for i in range(n)]
            try:
                if arm == "cb_base":
                    row = _measured(_continuous, model, tok, n, tokens if n > 1 else 4)
                else:
                    row = _measured(_generate, model, tok, n, tokens if n > 1 else 4, names)
            except Exception as e:  # noqa: BLE001 — a library path that does not run here is a finding
                result["error"] = f"{type(e).__name__}: {e}"
                break
            if n > 1:
                result["by_answers"][n] = row
    import torch

    from tunelab.arena.chatdevice import generation_threads
    result["threads"] = generation_threads() if arm.startswith("tunelab") else torch.get_num_threads()
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
