"""One forward pass over many answers at once, and the next token of each.

- forward: every answer's new tokens (a whole prompt, or the last token chosen) packed
  into one sequence, so each weight is read once; attention is computed per answer,
  against its own key/value buffers, through an attention function registered with
  transformers (`register`, under the name ATTENTION), which the arena's models are
  loaded with (`attn_implementation=ATTENTION`).
- sample: each answer's next token with its own temperature, top-p and seeded generator.

tunelab/arena/loop.py runs these for every user's answers on one model.
"""

from __future__ import annotations

import threading

from ..modelio import loading


ATTENTION = "tunelab_rows"   # the attention implementation name the packed forwards run under
TOP_CANDIDATES = 256         # top-p looks at this many best tokens first (see sample)


# --------------------------------------------------------------------------- attention per row

_STEP = threading.local()   # the current forward's plan: [(row, first packed token, tokens)]


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function the arena's models are loaded with. Inside `forward`,
    query/key/value hold the packed tokens of every row ([1, heads, tokens, dim]); each
    row's new keys and values are written into its own buffers and it attends over them
    alone. Any other call (the model run as a plain model) is transformers' SDPA, with the
    mask SDPA's mask builder made for it."""
    import torch
    plan = getattr(_STEP, "plan", None)
    if plan is None:
        from transformers import AttentionInterface
        return AttentionInterface()["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
    layer = module.layer_idx
    _STEP.calls += 1
    dtype = query.dtype
    if dtype == torch.bfloat16 and query.device.type == "cpu":
        # bf16 weights make the big products faster on CPUs that compute bf16, but CPU
        # attention in bf16 was slower than in fp32 (measured: 138 against 45 ms a step
        # for 60 rows), so the keys and values are kept, and attended, in fp32.
        query, key, value = query.float(), key.float(), value.float()
    out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
    for row, start, n in plan:
        if layer not in row.kv:
            shape = (key.shape[1], row.capacity, key.shape[3])
            row.kv[layer] = (key.new_empty(shape), value.new_empty(shape))
            row.kv_dtype = dtype
            if row.prefix is not None:   # an earlier turn's keys and values (tunelab/arena/prefix.py)
                kept_k, kept_v = row.prefix[layer]
                row.kv[layer][0][:, :row.length] = kept_k[:, :row.length]
                row.kv[layer][1][:, :row.length] = kept_v[:, :row.length]
        keys, values = row.kv[layer]
        end = row.length + n
        keys[:, row.length:end] = key[0, :, start:start + n]
        values[:, row.length:end] = value[0, :, start:start + n]
        # A row's tokens in one step are its whole prompt (plain causal attention), the rest
        # of its prompt after a kept prefix (causal, shifted by the prefix), or one new token
        # (it sees everything: no mask).
        mask, causal = None, False
        if n > 1 and row.length:
            mask = torch.ones(n, end, dtype=torch.bool, device=query.device).tril(diagonal=row.length)
        elif n > 1:
            causal = True
        o = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:start + n], keys[None, :, :end], values[None, :, :end], attn_mask=mask,
            is_causal=causal, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
        out[0, start:start + n] = o[0].transpose(0, 1)
    return out.to(dtype), None


def register() -> str:
    """Make ATTENTION an attention implementation transformers accepts at load time (SDPA's
    mask builder serves calls outside `forward`), and return it."""
    return loading.register_attention(ATTENTION, _attention)


def forward(model, rows: list, **kwargs):
    """The next-token logits of each row ([rows, vocab]) from ONE forward of `model` over
    every row's new tokens packed into one sequence (`row.new_tokens` at positions from
    `row.length` on); each row's keys and values go into its own buffers (`row.kv`).
    `kwargs` go to the model (PEFT's `adapter_names`, say)."""
    import torch
    plan, ids, positions, last = [], [], [], []
    for row in rows:
        new = row.new_tokens
        plan.append((row, len(ids), len(new)))
        positions.extend(range(row.length, row.length + len(new)))
        ids.extend(new)
        last.append(len(ids) - 1)
    device = next(model.parameters()).device
    _STEP.plan, _STEP.calls = plan, 0
    try:
        out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([positions], device=device),
                    logits_to_keep=torch.tensor(last, device=device), use_cache=False, **kwargs)
        calls = _STEP.calls
    finally:
        _STEP.plan = None
    layers = model.config.num_hidden_layers
    if calls != layers:
        raise RuntimeError(f"{type(model).__name__} does not run its attention through transformers' "
                           f"attention interface ({calls} of {layers} layers did; it must be loaded with "
                           f"attn_implementation={ATTENTION!r}), so the arena cannot share decode steps for it")
    return out.logits[0]


# --------------------------------------------------------------------------- sampling

def sample(logits, samplings: list, generators: list) -> list[int]:
    """The next token of each row: greedy for temperature 0, else temperature and top-p
    (the smallest set of best tokens whose probability reaches p) drawn with the row's own
    generator. Top-p first looks among the TOP_CANDIDATES best tokens, which decide it
    exactly when they hold at least p of the probability (they nearly always do); a row
    whose candidates fall short is sorted in full."""
    import torch
    logits = logits.float()
    chosen = logits.argmax(-1).tolist()
    hot = [i for i, s in enumerate(samplings) if s.temperature > 0]
    if not hot:
        return chosen
    temps = torch.tensor([samplings[i].temperature for i in hot]).unsqueeze(1)
    tops = torch.tensor([samplings[i].top_p for i in hot]).unsqueeze(1)
    scaled = logits[hot] / temps
    k = min(TOP_CANDIDATES, scaled.shape[-1])
    best, order = scaled.topk(k, dim=-1)
    probs = torch.softmax(scaled, dim=-1).gather(-1, order)
    short = (probs.sum(-1, keepdim=True) < tops).squeeze(1).tolist()
    for j, i in enumerate(hot):
        b, o, p = best[j], order[j], probs[j]
        if short[j]:
            b, o = scaled[j].sort(descending=True)
            p = torch.softmax(b, dim=-1)
        keep = (p.cumsum(-1) - p) < tops[j]    # drop a token once the better ones already reach p
        weights = torch.softmax(b.masked_fill(~keep, float("-inf")), dim=-1)
        chosen[i] = int(o[torch.multinomial(weights, 1, generator=generators[i])])
    return chosen
