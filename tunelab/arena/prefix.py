"""The keys and values of finished answers, kept so the next turn does not recompute them.

A chat's next turn sends the whole conversation again: the system prompt, every earlier
question and answer, then the new question. The model already computed the keys and values
of all but the new question when it wrote the last answer, so the decode loop keeps them
here when an answer ends, and a new prompt starts from the longest prefix kept for the same
model and adapter: only the tokens after it are computed (see tunelab/arena/loop.py).

    cache = PrefixCache(max_bytes=1 << 30)
    cache.put("a0", tokens, kv, torch.bfloat16)       # an answer ended: prompt + answer so far
    n, kv = cache.match("a0", prompt)                  # the next turn: reuse kv's first n tokens

A prefix is shared by anyone whose prompt starts with it (the system prompt of every chat,
say); keys and values depend only on the tokens before them and the weights, so reusing
them gives what recomputing would (the loop's tests compare the logits). Entries are kept
in the model's own precision (a bf16 model's keys and values are bf16 numbers, whatever
the loop attends them in) within `max_bytes`, least recently used out first; an entry that
a longer one extends is dropped when the longer one arrives.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Kept:
    adapter: str | None
    tokens: list[int]
    kv: dict            # layer -> (keys, values), each [kv heads, tokens, head dim]
    nbytes: int


class PrefixCache:
    """Keys and values by (adapter, token prefix), within `max_bytes`. Used from the decode
    loop's thread only (stats may be read from anywhere)."""

    def __init__(self, max_bytes: int, min_tokens: int = 16):
        self.max_bytes, self.min_tokens = max(0, int(max_bytes)), max(1, int(min_tokens))
        self._kept: OrderedDict[int, _Kept] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self.reused_tokens = 0     # prompt tokens a match saved from recomputing
        self.hits = 0

    def put(self, adapter: str | None, tokens: list[int], kv: dict, dtype) -> None:
        """Keep the keys and values of `tokens` (the first len(tokens) of each buffer in `kv`),
        copied in `dtype`."""
        if len(tokens) < self.min_tokens or not kv:
            return
        n = len(tokens)
        for key, kept in list(self._kept.items()):
            if kept.adapter != adapter:
                continue
            if kept.tokens[:n] == tokens:          # already kept (a longer answer on the same road)
                self._kept.move_to_end(key)
                return
            if tokens[:len(kept.tokens)] == kept.tokens:   # this one goes further: the old one is redundant
                self._drop(key)
        copy = {layer: (k[:, :n].to(dtype, copy=True), v[:, :n].to(dtype, copy=True)) for layer, (k, v) in kv.items()}
        nbytes = sum(k.nbytes + v.nbytes for k, v in copy.values())
        if nbytes > self.max_bytes:
            return
        self._kept[self._next] = _Kept(adapter, list(tokens), copy, nbytes)
        self._next += 1
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._kept)))

    def match(self, adapter: str | None, prompt: list[int]) -> tuple[int, dict | None]:
        """(n, kv): the longest kept prefix of `prompt` for this adapter, at most all but the
        prompt's last token (whose logits the loop needs) and at least `min_tokens`; (0, None)
        when there is none."""
        best, best_key = 0, None
        limit = len(prompt) - 1
        for key, kept in self._kept.items():
            if kept.adapter != adapter or kept.tokens[0] != prompt[0]:
                continue
            n = _common(kept.tokens, prompt, limit)
            if n > best:
                best, best_key = n, key
        if best < self.min_tokens:
            return 0, None
        self._kept.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, self._kept[best_key].kv

    def clear(self) -> None:
        self._kept.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._kept), "mb": round(self.bytes / 2**20, 1), "hits": self.hits,
                "reused_tokens": self.reused_tokens}

    def _drop(self, key: int) -> None:
        self.bytes -= self._kept.pop(key).nbytes


def _common(a: list[int], b: list[int], limit: int) -> int:
    """The length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n     # a[:lo] == b[:lo], a[:hi] != b[:hi]: halve (slice comparisons run in C)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
