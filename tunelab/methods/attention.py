"""The attention training runs compute with: matmul attention for short CPU batches, SDPA
for the rest, chosen at each call.

On CPU, PyTorch's fused SDPA kernel is slower than plain matmul-softmax-matmul attention
for short sequences: one layer's forward + backward, batch 8, 9 heads, bf16, 2 cores:
15 vs 8 ms at 90 tokens, 35 vs 18 ms at 176, but 46 vs 61 ms at 256. Matmul attention
keeps its attention weights for the backward pass (rows × heads × len² × layers, ~6 bytes
each: the fp32 softmax and its bf16 copy); SDPA keeps none. So a call takes the matmul
path when it is on a CPU, its queries are its keys (a training forward, not a decode step
against a cache), the sequence is at most EAGER_MAX_LEN long and the weights the whole
model would keep stay under EAGER_MAX_BYTES; every other call is transformers' own SDPA
function, unchanged.

It enters transformers through its front door: `register()` adds NAME to the attention
functions (`AttentionInterface.register`) with SDPA's mask builder
(`AttentionMaskInterface.register`), and the methods load their models with
`attn_implementation=NAME`. The matmul path is the arithmetic of transformers' "eager"
attention (scores, the mask added, fp32 softmax cast back, dropout, values), fed SDPA's
boolean mask as the additive one eager attention would have built from it.
"""

from __future__ import annotations

from ..modelio import loading

NAME = "tunelab_short_batch"
EAGER_MAX_LEN = 192
EAGER_MAX_BYTES = 2**30

_calls = {"eager": 0, "sdpa": 0}   # how often each path ran (tests; cheap enough to keep)


def choice(rows: int, heads: int, q_len: int, kv_len: int, layers: int, device_type: str) -> str:
    """'eager' (matmul attention) or 'sdpa' for one attention call of this shape."""
    kept = rows * heads * q_len * kv_len * layers * 6
    small = q_len == kv_len and q_len <= EAGER_MAX_LEN and kept <= EAGER_MAX_BYTES
    return "eager" if device_type == "cpu" and small else "sdpa"


def calls() -> dict[str, int]:
    """How many attention calls took each path so far in this process."""
    return dict(_calls)


def _layers(module) -> int:
    config = getattr(module, "config", None)
    if config is None:
        return 1
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "num_hidden_layers", 1) or 1)


def _eager(module, query, key, value, attention_mask, scaling, dropout):
    import torch
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:   # SDPA's mask builder leaves a plain causal batch without one
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
    else:
        attention_mask = attention_mask[:, :, :, :kv_len]
    if attention_mask.dtype == torch.bool:
        lowest = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~attention_mask, lowest)
    else:
        scores = scores + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def short_batch_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface: query/key/value are batch × heads × len × dim."""
    from transformers import AttentionInterface
    path = choice(query.shape[0], query.shape[1], query.shape[2], key.shape[2], _layers(module), query.device.type)
    _calls[path] += 1
    plain_causal = kwargs.get("is_causal", getattr(module, "is_causal", True)) is not False
    if (path == "sdpa" or not plain_causal or kwargs.get("softcap") is not None
            or kwargs.get("sliding_window") is not None):
        return AttentionInterface()["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _eager(module, query, key, value, attention_mask, scale, dropout)


def register() -> str:
    """Make NAME an attention implementation transformers accepts at load time, and return it."""
    return loading.register_attention(NAME, short_batch_attention)


def implementation(cfg) -> str:
    """The attention a run loads its models with: ours (`register`) unless the config's
    `speed.short_attention` is off, then transformers' SDPA."""
    return register() if cfg.speed.short_attention else "sdpa"
