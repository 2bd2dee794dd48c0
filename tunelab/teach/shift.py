"""What tuning changed: the base's and a tuned run's answers to one prompt under the same
decoding, and each tuned token shaded by log p_tuned − log p_base.

    info = token_shift("<run>", "Why do we need to drink water?")
    token_shift_html(info)   # base beside tuned, green = more likely after tuning, red = less
"""

from __future__ import annotations

import html


from ..training import runs
from ..arena.chat import BASE, PEFT_BASE, Arena, Request, Sampling
from ..arena.decoding import peft_adapters
from ..common.decoding import FAIR_SAMPLING
from ..training.config import RunConfig


# A question the pirate lab does not train on, which the bundled base answers in whole
# sentences and ends by itself (59 tokens). The old default, "How do I boil an egg?" with
# greedy decoding, had the 135M base print "Boil an egg:" until the token limit.
SHIFT_PROMPT = "Why do we need to drink water?"
# Base and tuned answers are drawn alike, with FAIR_SAMPLING (common/decoding.py), each in a
# generate call of its own so both draw the same random numbers.
SHIFT_SAMPLING = FAIR_SAMPLING
SHIFT_MAX_NEW_TOKENS = 96
UNCHANGED_NATS = 1e-3  # no token's log-probability moved more than this: the run changed nothing
GREY = "background:#f4f4f5;color:#27272a"


def repeats(text: str, n: int = 4, k: int = 3) -> bool:
    """Whether some run of n words occurs more than k times: an answer stuck in a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return any(grams.count(g) > k for g in set(grams))


def token_shift(run_ref: str, prompt: str = SHIFT_PROMPT, max_new_tokens: int = SHIFT_MAX_NEW_TOKENS,
                answer: str | None = None, arena=None) -> dict:
    """For a prompt, the base's and the tuned model's answers under the same decoding
    (SHIFT_SAMPLING), and for each token of the tuned answer (or of `answer`)
    log p_tuned(token) − log p_base(token): positive = the tuned model finds it more likely.
    Adapter runs score both in one forward pass (the base = adapters off); full runs
    load the base beside the tuned model. `arena`: an Arena whose loaded models to reuse.
    `unchanged`: no token moved by UNCHANGED_NATS, i.e. the run left the model as it was."""
    import torch
    run_dir = runs.find_run(run_ref)
    src_key = "run:" + run_dir.name
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    if arena is None or arena.base_model != cfg.model:  # reuse the app's models when the base matches
        arena = Arena(cfg.model)
    msgs = [{"role": "user", "content": prompt}]
    sampling = Sampling(**SHIFT_SAMPLING, max_new_tokens=max_new_tokens)

    def generate(source: str):
        for replies in arena.stream([Request(source, msgs, sampling)]):
            pass
        if replies[0].error:
            raise RuntimeError(replies[0].error)
        return replies[0]

    base = generate(BASE)
    tuned = generate(src_key) if answer is None else None
    answer = tuned.text if tuned else answer
    tuned_entry, spec, _ = arena.resolve(src_key)
    tok = tuned_entry.tokenizer
    prefix = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    p_ids = tok(prefix, add_special_tokens=False, return_tensors="pt").input_ids
    a_ids = tok(answer, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([p_ids, a_ids], dim=1)
    n = p_ids.shape[1]

    def logps(model, **kw):
        with torch.inference_mode():
            logits = model(input_ids=ids.repeat(len(kw.get("adapter_names", [0])), 1), **kw).logits.float()
        lp = torch.log_softmax(logits[:, n - 1:-1], dim=-1)
        return lp.gather(-1, ids[:, n:].expand(lp.shape[0], -1).unsqueeze(-1)).squeeze(-1)

    with tuned_entry.lock:
        if isinstance(spec, tuple):  # adapter: tuned and base rows in one batch
            name = tuned_entry.adapter_name(*spec)
            peft_adapters(tuned_entry.model)   # PEFT computes the rows here (the arena's loop leaves them off)
            both = logps(tuned_entry.model, adapter_names=[name, PEFT_BASE])
            tuned_lp, base_lp = both[0], both[1]
        else:
            tuned_lp = logps(tuned_entry.model)[0]
    if not isinstance(spec, tuple):
        base_entry, _, _ = arena.resolve(BASE)
        with base_entry.lock:
            peft_adapters(base_entry.model)
            base_lp = logps(base_entry.model, **({"adapter_names": [PEFT_BASE]} if base_entry.adapters else {}))[0]
    tokens = [tok.decode([t]) for t in a_ids[0].tolist()]
    delta = (tuned_lp - base_lp).tolist()
    biggest = max((abs(d) for d in delta), default=0.0)
    return {"run": run_dir.name, "prompt": prompt, "answer": answer, "tokens": tokens, "delta": delta,
            "tuned_logp": tuned_lp.tolist(), "base_logp": base_lp.tolist(), "base_answer": base.text,
            "sampling": sampling.to_dict(), "max_abs_delta": biggest,
            "unchanged": bool(delta) and biggest < UNCHANGED_NATS,
            "cut": {"base": base.cut, "tuned": bool(tuned) and tuned.cut}}


def token_shift_html(info: dict, clip: float = 4.0) -> str:
    """The base's answer beside the tuned one, each tuned token on a red (less likely than
    base) to green (more likely) background, and how both were decoded."""
    spans = []
    for t, d in zip(info["tokens"], info["delta"]):
        x = max(-1.0, min(1.0, d / clip))
        color = f"rgba(34,197,94,{x:.2f})" if x >= 0 else f"rgba(239,68,68,{-x:.2f})"
        spans.append(f'<span title="{d:+.2f} nats" style="background:{color};border-radius:3px;white-space:pre-wrap">'
                     f'{html.escape(t)}</span>')
    s, cut = info["sampling"], info["cut"]
    more = " …(cut at the token limit)"

    def pane(role: str, body: str, is_cut: bool, look: str) -> str:
        return (f'<div><span class="tl-role">{html.escape(role)}</span><div class="tl-turn" style="max-width:100%;'
                f'margin-left:0;{look}">{body}{more if is_cut else ""}</div></div>')

    # The base in grey: a green bubble would read as shading.
    both = (f'<div class="tl-pair">{pane("base", html.escape(info["base_answer"]), cut["base"], GREY)}'
            f'{pane("tuned · " + info["run"], "".join(spans), cut["tuned"], "border:1px solid #d4d4d8")}</div>')
    how = (f'Both answers: temperature {s["temperature"]:g}, top-p {s["top_p"]:g}, seed {s["seed"]}, '
           f'at most {s["max_new_tokens"]} new tokens.')
    if repeats(info["base_answer"]):
        how += " The base repeats itself on this prompt (small models do on some): try another one."
    if info["unchanged"]:  # a mean of +0.00 would look like a result; say what it means
        return (f'{both}<div class="tl-msg tl-msg-warn">{html.escape(info["run"])} gives every token the '
                f'probability the base gives it (largest shift {info["max_abs_delta"]:.1e} nats): this run has '
                f'not changed the model, so there is nothing to shade. An adapter stays at its zero start when '
                f'a run stops before its first update, or when its updates are zero (a DPO run on pairs whose '
                f'two answers are the same). Pick a run that trained.</div><p class="tl-hint">{how}</p>')
    mean = sum(info["delta"]) / max(1, len(info["delta"]))
    return (f'{both}<p class="tl-hint">Green: the tuned model finds the token more likely than the base does; '
            f'red: less. Mean shift {mean:+.2f} nats a token over {len(info["delta"])} tokens (hover a token for '
            f'its value). {how}</p>')
