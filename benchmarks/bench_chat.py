"""Arena chat speed: two panes (base + a LoRA run on one copy of the base) against one plain stream.

    .venv/bin/python -m benchmarks.bench_chat            # ~2 min on 2 cores
    .venv/bin/python -m benchmarks.bench_chat --tokens 96 --repeats 3

Arms, run back to back on the bundled SmolLM2-135M-Instruct, greedy,
alternating order (the single stream is forced to --tokens tokens; a pane that ends early
still costs its batch row until the other ends, so "together" is counted conservatively):

  single   one plain `model.generate` stream of the base model (transformers, no tunelab),
           in a process of its own (a plain script: main thread, the machine's threads) and
           in the dtype the arena uses (tunelab.arena.chatdevice.chat_dtype)
  panes    tunelab.arena.chat.Arena: base on the left, a LoRA run on the right, the same prompt,
           both streamed from one batched generate (adapter per row)
  one pane tunelab.arena.chat.Arena with the base alone (what one pane gets when the other is
           idle), for reference: it gains from the same small-batch product

For the panes: time to first token and tokens/s of each pane, and both panes' tokens/s
together against the single stream (TARGET: together >= 1.5 × single). Then memory: the
parameter bytes of the base alone and with 1, 4 and 8 adapters loaded into it, and the
process's resident memory at each point. The LoRA runs are made here (random non-zero
adapters, r=8 on every linear layer, the size a lab's run has) in a throwaway workspace.
Results go to benchmarks/results/chat.json. Nothing here asserts a time.

    .venv/bin/python -m benchmarks.bench_chat --engines   # ~6 min on 2 cores

With --engines: the arena's engine against the libraries' own answers, 2, 8 and 30 answers
at once, each arm in a fresh process (benchmarks/chat_engines.py says what each arm is):
the arena with half the rows on a LoRA run against PEFT's mixed-adapter batch
(`generate(..., adapter_names=...)`), and the arena with base rows only against
transformers' batched `generate` and its continuous batching (`generate_batch`). A part of
the engine keeps its place at >= 1.15x the best library arm (issue #36). Results go to
benchmarks/results/chat_engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TUNELAB_HOME", tempfile.mkdtemp(prefix="tunelab-bench-chat-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Tell me about the sea, and about ships that sail on it."}]


def make_adapter_run(run_id: str, seed: int) -> str:
    """A finished LoRA run folder with a random non-zero adapter on the bundled model."""
    from peft import LoraConfig, get_peft_model

    from tunelab import RunConfig
    from tunelab.modelio import loading
    from tunelab.common import workspace
    run_dir = workspace.runs_dir() / run_id
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    RunConfig.from_dict({"method": "lora", "model": MODEL, "data": {"train": "labs/data/pirate_sft.jsonl"}}).save(
        run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"run_id": run_id, "status": "finished", "method": "lora"}))
    torch.manual_seed(seed)
    peft = get_peft_model(loading.load_model(MODEL), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    peft.save_pretrained(run_dir / "model")
    return run_id


def single_stream(model, tok, n_tokens: int) -> dict:
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    n = out.shape[1] - ids["input_ids"].shape[1]
    return {"tokens": n, "seconds": dt, "tokens_per_s": n / dt}


def single_stream_process(n_tokens: int) -> dict:
    """The reference arm as its own plain script: load, one short warm-up, one timed stream."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_chat", "--single", str(n_tokens)], cwd=ROOT,
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def single_main(n_tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.modelio import models
    from tunelab.arena.chatdevice import chat_dtype
    folder = models.resolve_model(MODEL)   # the bundled safetensors folder; the rest is plain transformers
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=chat_dtype("cpu")).eval()
    single_stream(model, tok, 4)
    print(json.dumps(single_stream(model, tok, n_tokens)))


def panes(arena, run_id: str | None, n_tokens: int) -> dict:
    """Both panes (base, run) in one stream; with no run_id, the base pane alone."""
    from tunelab.arena.chat import BASE, Request, Sampling
    s = Sampling(temperature=0.0, max_new_tokens=n_tokens)
    requests = [Request(BASE, PROMPT, s)] + ([Request("run:" + run_id, PROMPT, s)] if run_id else [])
    t0 = time.perf_counter()
    for replies in arena.stream(requests):
        pass
    dt = time.perf_counter() - t0
    for r in replies:
        if r.error:
            raise SystemExit(f"arena failed: {r.error}")
    return {"seconds": dt, "together_tokens_per_s": sum(r.tokens for r in replies) / dt,
            "panes": [{"tokens": r.tokens, "first_token_s": r.first_token_s, "tokens_per_s": r.tokens_per_s}
                      for r in replies]}


ENGINE_ARMS = ("tunelab_mixed", "peft_mixed", "tunelab_base", "generate_base", "cb_base")
EARNS = 1.15


def engines(tokens: int, repeats: int) -> None:
    """Each engine arm in its own process, `repeats` times (alternating order); medians."""
    from .chat_engines import ANSWERS
    from tunelab.arena.chatdevice import chat_dtype
    from tunelab.modelio import models
    models.ensure_bundled(MODEL)
    run_id = make_adapter_run("20000101-000000-bench-engine", seed=0)
    run_dir = Path(os.environ["TUNELAB_HOME"]) / "runs" / run_id
    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    runs: dict[str, list[dict]] = {a: [] for a in ENGINE_ARMS}
    for rep in range(repeats):
        for arm in (ENGINE_ARMS if rep % 2 == 0 else ENGINE_ARMS[::-1]):
            out = tmp / f"{arm}-{rep}.json"
            done = subprocess.run([sys.executable, "-m", "benchmarks.chat_engines", arm, str(out), str(run_dir),
                                   str(tokens)], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode != 0:
                raise SystemExit(f"{arm} failed:\n{done.stderr[-3000:]}")
            runs[arm].append(json.loads(out.read_text()))
            print(f"  {arm} ({rep + 1}/{repeats}) done", flush=True)

    def med(arm, n, key):
        vals = [r["by_answers"][str(n)][key] for r in runs[arm] if str(n) in r.get("by_answers", {})]
        return statistics.median(vals) if vals else None

    table = {arm: {n: {k: med(arm, n, k) for k in ("tokens_per_s", "first_token_median_s", "first_token_max_s",
                                                   "rss_before_mb", "peak_rss_mb", "tokens")} for n in ANSWERS}
             for arm in ENGINE_ARMS}
    errors = {arm: rs[0].get("error") for arm, rs in runs.items() if rs and rs[0].get("error")}
    verdicts = {}
    for n in ANSWERS:
        ours, theirs = table["tunelab_mixed"][n]["tokens_per_s"], table["peft_mixed"][n]["tokens_per_s"]
        base = table["tunelab_base"][n]["tokens_per_s"]
        lib = [table[a][n]["tokens_per_s"] for a in ("generate_base", "cb_base") if table[a][n]["tokens_per_s"]]
        verdicts[n] = {"mixed_vs_peft": ours / theirs if ours and theirs else None,
                       "base_vs_best_library": base / max(lib) if base and lib else None}
    machine = (f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
               f"({torch.backends.cpu.get_cpu_capability()}), {str(chat_dtype('cpu')).split('.')[-1]}")
    print(f"\nmachine: {machine}; {MODEL}, greedy, up to {tokens} new tokens an answer, median of {repeats}")
    print(f"{'answers':>7} {'arm':<15}{'tokens/s':>9}{'first token (median / max)':>29}{'MB before':>10}"
          f"{'peak MB':>9}")
    for n in ANSWERS:
        for arm in ENGINE_ARMS:
            r = table[arm][n]
            if r["tokens_per_s"] is None:
                print(f"{n:>7} {arm:<15}{'—':>9}   {errors.get(arm, 'no figure')}")
                continue
            print(f"{n:>7} {arm:<15}{r['tokens_per_s']:>9.1f}{r['first_token_median_s']:>15.2f} s / "
                  f"{r['first_token_max_s']:.2f} s{r['rss_before_mb']:>10.0f}{r['peak_rss_mb']:>9.0f}")
        v = verdicts[n]
        for what, ratio in (("arena, base + LoRA rows, against PEFT's mixed batch", v["mixed_vs_peft"]),
                            ("arena, base rows, against the best transformers arm", v["base_vs_best_library"])):
            if ratio is not None:
                print(f"        {what}: {ratio:.2f}x ({'earns its place' if ratio >= EARNS else 'BELOW 1.15x'})")
    out = ROOT / "benchmarks" / "results" / "chat_engines.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine, "new_tokens": tokens,
                               "repeats": repeats, "table": table, "verdicts": verdicts, "errors": errors,
                               "raw": runs}, indent=1) + "\n")
    print(f"written: {out.relative_to(ROOT)}")


def param_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--single", type=int, metavar="N", help=argparse.SUPPRESS)  # the reference arm's process
    ap.add_argument("--engines", action="store_true",
                    help="the arena's engine against PEFT's mixed-adapter batch and transformers' batching")
    args = ap.parse_args()
    if args.single:
        return single_main(args.single)
    if args.engines:
        return engines(args.tokens, args.repeats)

    from tunelab.arena.chatdevice import reserve_cores
    reserve_cores()   # as the app does: this thread runs torch on one thread, generation on all

    from tunelab.modelio import models
    from tunelab.arena.chat import Arena

    models.ensure_bundled(MODEL)
    runs_made = [make_adapter_run(f"20000101-00000{i}-bench-lora{i}", seed=i) for i in range(8)]
    from tunelab.arena.chatdevice import chat_dtype, generation_threads
    dtype = chat_dtype("cpu")   # the single stream runs in the dtype the arena uses
    arena = Arena(MODEL)
    panes(arena, runs_made[0], 4)   # warm-up: load the base and the first adapter
    singles, pairs, alone = [], [], []
    for i in range(args.repeats):
        order = ["single", "panes", "alone"] if i % 2 == 0 else ["alone", "panes", "single"]
        for arm in order:
            if arm == "single":
                singles.append(single_stream_process(args.tokens))
            elif arm == "panes":
                pairs.append(panes(arena, runs_made[0], args.tokens))
            else:
                alone.append(panes(arena, None, args.tokens))
    single_tps = statistics.median(r["tokens_per_s"] for r in singles)
    alone_tps = statistics.median(r["together_tokens_per_s"] for r in alone)
    together = statistics.median(r["together_tokens_per_s"] for r in pairs)
    left = statistics.median(r["panes"][0]["tokens_per_s"] for r in pairs)
    right = statistics.median(r["panes"][1]["tokens_per_s"] for r in pairs)
    ttft = [statistics.median(r["panes"][k]["first_token_s"] for r in pairs) for k in (0, 1)]

    # memory: base alone, then with 1, 4 and 8 adapters loaded into it
    entry = arena.loaded_entry(arena.loaded()[0])
    memory = []
    base_only = Arena(MODEL)
    from tunelab.arena.chat import BASE, Request, Sampling
    for _ in base_only.stream([Request(BASE, PROMPT, Sampling(max_new_tokens=1))]):
        pass
    memory.append({"adapters": 0, "param_mb": param_mb(base_only.loaded_entry(base_only.loaded()[0]).model)})
    del base_only
    for n in (1, 4, 8):
        for run_id in runs_made[:n]:
            with entry.lock:
                entry.adapter_name(run_id, Path(os.environ["TUNELAB_HOME"]) / "runs" / run_id / "model")
        memory.append({"adapters": n, "param_mb": param_mb(entry.model), "rss_mb": rss_mb()})

    machine = (f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
               f"({generation_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), {str(dtype).split('.')[-1]}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "model": MODEL, "new_tokens": args.tokens,
              "repeats": args.repeats, "single_tokens_per_s": single_tps, "one_pane_tokens_per_s": alone_tps,
              "panes_together_tokens_per_s": together,
              "left_tokens_per_s": left, "right_tokens_per_s": right, "first_token_s": ttft,
              "ratio_together_vs_single": together / single_tps, "memory": memory, "raw": {"single": singles,
                                                                                          "panes": pairs, "one_pane": alone}}
    out = ROOT / "benchmarks" / "results" / "chat.json"
    out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"machine: {machine}; {MODEL}, greedy, {args.tokens} new tokens, median of {args.repeats}")
    print(f"{'arm':<34}{'tokens/s':>10}{'first token':>13}")
    print(f"{'single plain generate stream':<34}{single_tps:>10.1f}{'':>13}")
    print(f"{'one arena pane alone (base)':<34}{alone_tps:>10.1f}{'':>13}")
    print(f"{'pane A (base)':<34}{left:>10.1f}{ttft[0]:>12.2f}s")
    print(f"{'pane B (LoRA run, same base)':<34}{right:>10.1f}{ttft[1]:>12.2f}s")
    print(f"{'both panes together':<34}{together:>10.1f}")
    ratio = together / single_tps
    print(f"together / single = {ratio:.2f}  (target >= 1.5: {'met' if ratio >= 1.5 else 'MISSED'})")
    base_mb = memory[0]["param_mb"]
    for m in memory[1:]:
        print(f"base + {m['adapters']} adapter(s): parameters {m['param_mb']:.0f} MB "
              f"(+{m['param_mb'] - base_mb:.1f} MB over the base's {base_mb:.0f} MB), process {m['rss_mb']:.0f} MB")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
