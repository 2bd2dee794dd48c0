"""Is an exported file still the run? Measured against the run and against its base.

A GGUF export rounds the run's weights to the type's grid. Where the run's change is
small next to the grid step, the rounding can take it back out: the bundled
SmolLM2-135M-Instruct was itself a Q4_1 file rounded back to floats, so a small update
on top of it, written as q4_1 again, lands on the very codes of the base (README, "Why a
4-bit file can lose a small update"). This module says, for each exported file, whether
that happened:

    ref = reference(run_model, base_model, tokenizer, conversations(cfg))
    load_export(model, [file.gguf, adapter.gguf], config)   # the file(s), read back to floats
    result = score(ref, model)                               # agreement, KL, answers, verdict

On a few chat prompts (`conversations`: the run's own held-out prompts where it has them,
then its training prompts, then general ones) the run answers greedily; its answer,
teacher-forced, is the sequence every model is scored on:

  agreement   the share of the answer's positions where the file's most likely next token
              is the run's (top-1 agreement)
  KL          mean KL(run ‖ file) per position, in nats: how far the file's next-token
              distribution is from the run's
  answers     the file's own greedy answer to each prompt, closer to the run's answer or to
              the base's (`closer`, by token edit distance)

The base is scored the same way, which gives the scale: the run's change is what separates
the run from the base (the base's agreement and KL), and a file keeps it when it sits
nearer the run than the base does. `verdict` turns this into one of three words.

What a runtime does is copied in float: a model file is dequantised tensor by tensor
(`gguf_out.read_weights`), an adapter file is added as llama.cpp adds it, W + (α/r)·B·A
(`gguf_out.read_adapter`). Greedy decoding, not the arena's fair sampling: the answers must
not depend on a seed for the comparison to be exact.

Measured figures for every type on the bundled model (benchmarks/bench_export_fidelity.py)
are in export_figures.json beside this file; `load_figures` reads them for the export
menu's hints and for `suggestion`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import gguf_out

N_PROMPTS = 8
MAX_NEW_TOKENS = 32      # tokens each greedy answer runs to (at most): up to 8 × 32 positions scored
MAX_PROMPT_TOKENS = 160  # longer prompts are skipped: they cost time and say no more
# A file is flagged when its top-1 agreement with the run falls under this. Measured on the
# bundled model with a 10-step DPO run (export_figures.json, bench_export_fidelity.py): the
# types that only add rounding noise agree with the run on 96.5-100 % of positions (f16,
# bf16 100 %; q8_0 96.5 %, 97.5 % as the base beside the adapter; the untouched model's
# q8_0 97.8 % in benchmarks/results/gguf.json), the one that degrades the model on 71.5 %
# (q4_0; 73.0 % as the base beside the adapter; untouched 70.6 %). 90 % lies 6.5 points
# under the lowest of the first and 17 over the highest of the second. Agreement cannot
# catch q4_1 here (98.0 %, the base's own): that run changed 2 % of next tokens; the
# answers and the KL to the base do.
MIN_AGREEMENT = 0.90
# General prompts that fill up to N_PROMPTS after the run's own: short, with short answers.
GENERAL_PROMPTS = ("What is the capital of France?", "Give me one tip for sleeping better.",
                   "Write a haiku about rain.", "How many legs does a spider have?",
                   "Explain what a noun is in one sentence.", "Name three colours.")
FIGURES = Path(__file__).with_name("export_figures.json")
VERDICTS = {"keeps": "keeps the run", "lost": "lost the run's change",
            "unchanged": "the run barely changed the base"}


# --------------------------------------------------------------------------- prompts

def conversations(cfg, n: int = N_PROMPTS) -> list[list[dict]]:
    """Up to `n` chat prompts (lists of turns ending with the user's) to measure a run on:
    the run's held-out prompts (its eval file, or its eval split), then its training
    prompts, then GENERAL_PROMPTS. The question is whether a file behaves like the run,
    not whether the run generalises, so the run's own prompts, where it differs most from
    its base, are the telling ones; a data file gone since is skipped. `cfg` None: the
    general prompts alone."""
    from ..data.files import load_examples, split_eval

    found: list[list[dict]] = []
    sources = []
    try:
        if cfg is None:
            raise LookupError("no run config")
        _, train = load_examples(cfg.data.train, cfg.objective, need_both=False)
        if cfg.data.eval:
            sources.append(load_examples(cfg.data.eval, cfg.objective, need_both=False)[1])
        else:
            train, held = split_eval(train, cfg.data.eval_fraction, cfg.train.seed)
            sources.append(held)
        sources.append(train)
    except (OSError, ValueError, LookupError):   # moved or deleted since, or no data at all
        pass
    for rows in sources:
        prompts = [p for p in map(_prompt_of, rows) if p]
        # spread over the file, in its order: not only its first few rows
        step = max(1, len(prompts) // max(1, n))
        for p in prompts[::step]:
            if len(found) < n and p not in found:
                found.append(p)
    for text in GENERAL_PROMPTS:
        conv = [{"role": "user", "content": text}]
        if len(found) < n and conv not in found:
            found.append(conv)
    return found


def _prompt_of(example: dict) -> list[dict] | None:
    turns = example.get("prompt")
    if turns is None and example.get("messages"):
        msgs = example["messages"]
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
        turns = msgs[:last + 1] if last is not None else None
    if isinstance(turns, str):
        turns = [{"role": "user", "content": turns}]
    if not turns or turns[-1].get("role") != "user":
        return None
    return [{"role": t["role"], "content": t["content"]} for t in turns]


# --------------------------------------------------------------------------- the measure

def _answers(model, prompts: list, max_new_tokens: int, tokenizer) -> list[list[int]]:
    """Each prompt's greedy answer (token ids, up to and with the end-of-turn token), all
    prompts in one left-padded batch: a decode step for six costs little more than for one."""
    import torch
    eos = _eos_ids(model, tokenizer)
    width = max(p.shape[1] for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sorted(eos)[0]
    ids = torch.full((len(prompts), width), pad, dtype=prompts[0].dtype)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - p.shape[1]:] = p[0]
        mask[i, width - p.shape[1]:] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad)[:, width:].tolist()
    answers = []
    for row in out:
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:end])
    return answers


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return {int(e) for e in eos if e is not None}


def reference(run_model, base_model, tokenizer, convs: list[list[dict]],
              max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """What every file is scored against: per prompt its token ids, the run's greedy answer
    and the run's log-probabilities over that answer (teacher-forced), and the base's greedy
    answer; plus the base's own score against the run (how far the run moved). After this
    neither model is needed again: the caller may load an export into either."""
    import torch

    started = time.perf_counter()
    prompts = []
    for conv in convs:
        ids = tokenizer.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        if ids.shape[1] <= MAX_PROMPT_TOKENS:
            prompts.append(ids)
    if not prompts:
        raise ValueError(f"no prompt to measure the export on: every one was longer than {MAX_PROMPT_TOKENS} tokens")
    run_model.eval()
    with torch.no_grad():
        answers = _answers(run_model, prompts, max_new_tokens, tokenizer)
        keep = [i for i, a in enumerate(answers) if a]   # an answer that ends at once has no position to score
        prompts, answers = [prompts[i] for i in keep], [answers[i] for i in keep]
        logps = _logprobs(run_model, prompts, answers)
    ref = {"prompts": prompts, "run_answers": answers, "run_logprobs": logps, "tokenizer": tokenizer,
           "max_new_tokens": max_new_tokens}
    base = _compare(ref, base_model)
    ref["base_answers"] = base.pop("answers")
    ref["base_logprobs"] = base.pop("logprobs")
    ref["base"] = base
    ref["seconds"] = time.perf_counter() - started
    return ref


def _logprobs(model, prompts: list, answers: list[list[int]]) -> list:
    """log p(next token) at each answer position, the run's answer so far given (teacher
    forcing); all prompts in one right-padded batch (padding after a sequence cannot reach
    its positions through the causal mask)."""
    import torch
    seqs = [torch.cat([p[0], torch.tensor(a, dtype=p.dtype)]) for p, a in zip(prompts, answers)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=seqs[0].dtype)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    logits = model(ids, attention_mask=mask).logits.float()
    return [torch.log_softmax(logits[i, p.shape[1] - 1:p.shape[1] - 1 + len(a)], dim=-1)
            for i, (p, a) in enumerate(zip(prompts, answers))]


def _kl(p: list, q: list) -> float:
    """Mean KL(p ‖ q) per position, in nats, of two lists of log-probability rows."""
    total = sum(float((a.exp() * (a - b)).sum()) for a, b in zip(p, q))
    return max(0.0, total / sum(a.shape[0] for a in p))


def _compare(ref: dict, model) -> dict:
    """`model` against the run on the reference: agreement, KL(run ‖ model), KL(base ‖ model)
    once the base's are known, its log-probabilities and its own greedy answers."""
    import torch
    model.eval()
    with torch.no_grad():
        logps = _logprobs(model, ref["prompts"], ref["run_answers"])
        answers = _answers(model, ref["prompts"], ref["max_new_tokens"], ref["tokenizer"])
    agree = sum(int((lp.argmax(-1) == run.argmax(-1)).sum()) for lp, run in zip(logps, ref["run_logprobs"]))
    positions = sum(lp.shape[0] for lp in logps)
    out = {"agreement": agree / positions, "kl": _kl(ref["run_logprobs"], logps), "positions": positions,
           "answers": answers, "logprobs": logps}
    if ref.get("base_logprobs"):
        out["kl_to_base"] = _kl(ref["base_logprobs"], logps)
    return out


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two token lists (insert, delete or replace one token)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def closer(answer: list, run: list, base: list) -> str:
    """Whose greedy answer `answer` is: "run", "base", "tie" (as near to both), "neither" (as
    far from each as they are from each other: a third answer), or "same" where the run's
    and the base's answers are equal (that prompt cannot tell them apart).

    By token edit distance rather than by shared prefix: rounding noise often swaps one
    early token of an answer that then goes on as the run's did (a prefix of one token, yet
    the run's answer), while an answer that lost the change is the base's wording through
    and through; edit distance counts both as they read."""
    if run == base:
        return "same"
    d_run, d_base, apart = edit_distance(answer, run), edit_distance(answer, base), edit_distance(run, base)
    if min(d_run, d_base) >= apart:
        return "neither"
    return "run" if d_run < d_base else "base" if d_base < d_run else "tie"


def score(ref: dict, model) -> dict:
    """The exported file (loaded into `model`) against the run and the base: agreement, KL,
    answers closer to the run's or the base's, the base's own figures, and the verdict."""
    started = time.perf_counter()
    got = _compare(ref, model)
    del got["logprobs"]
    votes = [closer(a, r, b) for a, r, b in zip(got.pop("answers"), ref["run_answers"], ref["base_answers"])]
    base = ref["base"]
    result = got | {"prompts": len(votes), "max_new_tokens": ref["max_new_tokens"], "votes": votes,
                    "closer_to_run": votes.count("run"), "closer_to_base": votes.count("base"),
                    "ties": votes.count("tie"), "neither": votes.count("neither"), "same_as_base": votes.count("same"),
                    "base_agreement": base["agreement"], "base_kl": base["kl"],
                    "kept": 1 - got["kl"] / base["kl"] if base["kl"] > 0 else None}
    result["verdict"], result["why"] = verdict(result)
    result["roughly"] = roughly(result)
    result["seconds"] = ref["seconds"] + time.perf_counter() - started
    return result


def roughly(r: dict) -> bool:
    """A file that keeps the run only roughly: nearer the run than the base, but not twice
    as near (KL(run ‖ file) over half KL(base ‖ file)): its rounding noise is about as large
    as the run's change. q8_0 of a 10-step DPO run is such a file (export_figures.json)."""
    return r.get("verdict") == "keeps" and r.get("kl_to_base") is not None and 2 * r["kl"] > r["kl_to_base"]


def verdict(r: dict) -> tuple[str, str]:
    """("keeps" | "lost" | "unchanged", the reason in words) for a `score` result.

    lost, in this order: its top-1 agreement with the run is under MIN_AGREEMENT; its
    greedy answers are the base's (closer to it than to the run's) on more prompts than
    the run's; or its next-token distributions are nearer the base's than the run's
    (KL(base ‖ file) < KL(run ‖ file)). The last is what rounding onto the base's grid does,
    and what rounding noise alone does not: noise moves the file away from run and base
    alike, so KL to the base stays the larger by the run's own change. It is needed where
    answers alone cannot decide (as many prompts each way).
    unchanged: the run's greedy answers are the base's on every prompt, so "closer to the
    base" cannot be told from "closer to the run"; not flagged unless the agreement is
    under MIN_AGREEMENT (then the file is far from both)."""
    agree = f"{r['agreement']:.0%} next-token agreement"
    if r["agreement"] < MIN_AGREEMENT:
        return "lost", (f"{agree} with the run, under the {MIN_AGREEMENT:.0%} a file that keeps a run "
                        "reaches on this measure")
    told = r["prompts"] - r["same_as_base"]
    if not told:
        return "unchanged", (f"the run answers as its base does on all {r['prompts']} prompts (the base agrees "
                             f"with it on {r['base_agreement']:.0%} of next tokens): nothing here tells them "
                             f"apart, so this measure cannot say whether a larger change would survive")
    if r["closer_to_base"] > r["closer_to_run"]:
        return "lost", (f"its answers are closer to the base's than to the run's on {r['closer_to_base']} of the "
                        f"{told} prompts where the two differ (the run's on {r['closer_to_run']})")
    if r.get("kl_to_base") is not None and r["kl_to_base"] < r["kl"]:
        return "lost", (f"its next-token distributions are nearer the base's (KL {r['kl_to_base']:.4f}) than the "
                        f"run's (KL {r['kl']:.4f})")
    return "keeps", (f"{agree}; answers closer to the run's on {r['closer_to_run']} and to the base's on "
                     f"{r['closer_to_base']} of the {told} prompts where run and base differ; nearer the run's "
                     f"next-token distributions than the base's")


# --------------------------------------------------------------------------- exported files

def load_export(model, files: list, config: dict):
    """Load the exported file(s) into `model` (a model of the same architecture whose own
    weights are no longer needed), as a runtime sees them: the model file dequantised, an
    adapter file (if given) added as W + (α/r)·B·A in float32. Returns `model`."""
    import torch
    paths = [Path(f["path"] if isinstance(f, dict) else f) for f in files]
    weights = gguf_out.read_weights(paths[0], config)
    for adapter in paths[1:]:
        alpha, pairs = gguf_out.read_adapter(adapter, config)
        for name, (a, b) in pairs.items():
            if name not in weights:
                raise gguf_out.GGUFError(f"{adapter.name} changes {name}, which {paths[0].name} does not have")
            weights[name] = weights[name] + (alpha / a.shape[0]) * (b @ a)
    state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise gguf_out.GGUFError(f"{paths[0].name} does not fit the model: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}")
    return model


# --------------------------------------------------------------------------- words

def line(r: dict) -> str:
    """The result in one line, as the CLI and the Runs tab print it."""
    if r.get("error"):
        return f"Not measured against the run: {r['error']}"
    told = r["prompts"] - r["same_as_base"]
    answers = (f"answers closer to the run {r['closer_to_run']}, to the base {r['closer_to_base']}"
               + (f", ties {r['ties']}" if r["ties"] else "") + (f", unlike both {r['neither']}" if r.get("neither") else "")
               + f" (of {told} prompts where they differ)"
               if told else f"the run answers as the base on all {r['prompts']} prompts")
    head = ("Keeps the run only roughly (its rounding noise is about as large as the run's change)"
            if roughly(r) else VERDICTS[r["verdict"]].capitalize())
    return (f"{head}: {r['agreement']:.1%} next-token agreement with the run "
            f"(the base: {r['base_agreement']:.1%}), KL {r['kl']:.4f} nats (the base: {r['base_kl']:.4f}); "
            f"{answers}.")


def load_figures(path: str | Path | None = None) -> dict | None:
    """The measured figures of every export type on the bundled model
    (benchmarks/bench_export_fidelity.py), or None where the file is missing or unreadable."""
    try:
        figures = json.loads(Path(path or FIGURES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return figures if isinstance(figures, dict) and isinstance(figures.get("types"), dict) else None


def suggestion(kind: str, adapter_run: bool, model: str | None = None, figures: dict | None = None) -> str:
    """What to download instead of a `kind` file (key as in `figures`: a type, or
    "<type>+lora" for a base beside the adapter) that lost the run's change or keeps it only
    roughly. For a run of the model the figures were measured on (`model` None: assumed):
    the smallest type that kept the benchmark's run clearly (not `roughly`; the adapter arms
    only for an adapter run). Otherwise the types that keep a small update whole by
    construction: a 4-bit base file beside the adapter is exact only where the base itself
    sits on that grid, as the bundled model does on q4_1's."""
    figures = load_figures() if figures is None else figures
    rows = ((figures or {}).get("types") or {}) if model is None or str(model).lower() == (figures or {}).get("model") else {}
    keep = []
    for key, row in rows.items():
        if row.get("verdict") != "keeps" or roughly(row) or key == kind or (row.get("adapter") and not adapter_run):
            continue
        keep.append((round(row["mib"], 1), row.get("kl", 0), key, row))
    if keep:
        mib, _, key, row = min(keep)
        what = (f"the {row['base_type']} base + LoRA adapter GGUF (--gguf {row['base_type']} --gguf-adapter; in the "
                f"Runs tab, tick Base + LoRA adapter)" if row.get("adapter") else key)
        return (f"{what} keeps it ({mib:.0f} MiB for the bundled model; it kept the benchmark's "
                f"{figures.get('run', {}).get('what', 'run')})")
    whole = "f16 or bf16 keep a small update whole"
    if adapter_run:
        return whole + (", and so does the LoRA adapter GGUF beside an f16 base (added in float at load time; "
                        "a 4-bit base adds its own rounding)")
    return whole
