"""GGUF export of the bundled model: each type's size, time, and agreement with PyTorch.

    .venv/bin/python -m benchmarks.bench_gguf                     # ~3 min on 2 cores
    .venv/bin/python -m benchmarks.bench_gguf --llama-python /path/to/venv/bin/python

The untouched bundled SmolLM2-135M-Instruct (float32, as TuneLab converts it) is written as
each type with `tunelab.export.gguf_out.write_model`, the writer `python -m tunelab export
--gguf` uses. The reference sequences are the 24 held-out lab prompts (labs/heldout), each
in the chat template and continued by PyTorch's greedy decoding for --tokens tokens. Each
file is loaded back with transformers' GGUF loader and run on the same sequences:

  max |Δ|, mean |Δ|   logits against the PyTorch model, over the continuation positions
  top-1               share of continuation positions where both pick the same next token
  greedy equal        prompts whose greedy continuation (generated from the file) equals
                      PyTorch's token for token

With --llama-python (an interpreter that has llama-cpp-python; TuneLab does not depend on
it), every file is also loaded by llama.cpp itself and scored the same way: proof that a
llama.cpp runtime reads the files as meant. Results go to benchmarks/results/gguf.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL = "smollm2-135m-instruct"
LLAMA_SCRIPT = r"""
import json, sys, numpy as np, llama_cpp
from llama_cpp import Llama
path, seqs, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
m = Llama(model_path=path, n_ctx=1024, logits_all=True, verbose=False, n_threads=2)
logits = []
for ids in seqs:
    m.reset(); m.eval(ids)
    logits.append(np.array(m.scores[:len(ids)], dtype=np.float32))
np.savez(out, *logits)
print(llama_cpp.__version__)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="f32,f16,bf16,q8_0,q4_1,q4_0")
    ap.add_argument("--tokens", type=int, default=32, help="greedy continuation per prompt")
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python, to check the files in llama.cpp too")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/gguf.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.export import gguf_out
    from tunelab.modelio.models import resolve_model
    from tunelab.export.ggufexport import source_pre

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = json.loads(Path(path, "config.json").read_text())
    prompts = [json.loads(line)["prompt"] for f in sorted((ROOT / "labs/heldout").glob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    gen = dict(max_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    seqs, starts = [], []
    with torch.no_grad():
        for p in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            seqs.append(model.generate(ids, **gen)[0])
            starts.append(ids.shape[1])
        ref = [model(s[None]).logits[0] for s in seqs]

    def score(logits: list) -> dict:
        diffs, means, agree, total = [], [], 0, 0
        for r, g, s0 in zip(ref, logits, starts):
            r, g = r[s0 - 1:-1].float(), torch.as_tensor(g)[s0 - 1:-1].float()
            d = (r - g).abs()
            diffs.append(float(d.max()))
            means.append(float(d.mean()))
            agree += int((r.argmax(-1) == g.argmax(-1)).sum())
            total += r.shape[0]
        return {"max_abs_diff": max(diffs), "mean_abs_diff": sum(means) / len(means), "top1": agree / total}

    results, work = {}, Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    (work / "seqs.json").write_text(json.dumps([s.tolist() for s in seqs]))
    llama_version = None
    for kind in args.types.split(","):
        name = f"{MODEL}-{kind}.gguf"
        info = gguf_out.write_model(work / name, config, ((k, v.float().numpy()) for k, v in model.state_dict().items()),
                                    tok, kind, pre=source_pre(MODEL))
        t0 = time.perf_counter()
        back = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=name, dtype=torch.float32).eval()
        load_s = time.perf_counter() - t0
        with torch.no_grad():
            got = [back(s[None]).logits[0] for s in seqs]
            same = sum(torch.equal(back.generate(s[None, :s0], **gen)[0], s) for s, s0 in zip(seqs, starts))
        row = {"bytes": info["bytes"], "mib": info["bytes"] / 2**20, "write_s": info["seconds"],
               "transformers_load_s": load_s, "tensors": info["tensors"], "f16_fallback": info["f16_fallback"],
               "transformers": score(got) | {"greedy_equal": same, "prompts": len(seqs)}}
        del back, got
        if args.llama_python:
            out = work / f"{kind}.npz"
            done = subprocess.run([args.llama_python, "-c", LLAMA_SCRIPT, str(work / name), str(work / "seqs.json"),
                                   str(out)], capture_output=True, text=True, timeout=900)
            if done.returncode:
                row["llama_cpp"] = {"error": done.stderr.strip().splitlines()[-1:]}
            else:
                llama_version = done.stdout.strip().splitlines()[-1]
                with np.load(out) as z:
                    row["llama_cpp"] = score([z[f"arr_{i}"] for i in range(len(seqs))])
        (work / name).unlink()
        results[kind] = row
        t, lc = row["transformers"], row.get("llama_cpp") or {}
        print(f"{kind:>5}  {row['mib']:7.1f} MiB  write {row['write_s']:4.1f} s  "
              f"transformers: max|Δ| {t['max_abs_diff']:.4f} top-1 {t['top1']:.1%} greedy {same}/{len(seqs)}"
              + (f"  llama.cpp: max|Δ| {lc['max_abs_diff']:.4f} top-1 {lc['top1']:.1%}" if "top1" in lc else
                 f"  llama.cpp: {lc}" if lc else ""), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
                            "llama-cpp-python": llama_version}}
    report = {"benchmark": "gguf", "date": time.strftime("%Y-%m-%d"), "machine": machine, "model": MODEL,
              "prompts": len(seqs), "continuation_tokens": args.tokens, "types": results}
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
