"""The pieces `tunelab.arena.chat` hands to `generate` to serve several panes from one batch.

- RowSampler: each row's own temperature and top-p (temperature 0 = greedy).
- RowStreamer: decodes each row as it grows, ends it at its end-of-sequence token or its
  own max_new_tokens, and reports ("text" | "done", row, ...) events to a queue ("done"
  says "length" when the token limit, not the model, ended the answer).
- Cancelled: a stopping criterion on a threading.Event (Stop pressed, page gone).
- fast_small_batches: the small-batch Linear product that makes a decode step (1-8
  rows) read each weight once, at memory speed, on CPU.
- row_adapters: each row of a batch through its own LoRA adapter (or none), with one
  row mask per adapter instead of PEFT's per-layer sub-batch indexing.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import types

from ..common.lazy import lazy

torch = lazy("torch")  # imported on first use (see common/lazy.py)

SMALL_BATCH_ROWS = 8  # at most this many rows (a decode step of up to 8 answers together)


def _small_batch_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """y = x·Wᵀ + b computed as (W·xᵀ)ᵀ when x has 1-8 rows and no gradient is needed.

    The same product, through a faster BLAS path. On CPU, F.linear sends a 1-row input to
    a matrix-vector kernel and a 2-8 row input to a general one that is slow for so few
    rows; W·xᵀ with at least 2 columns reads W once, at memory speed. Measured on this
    project's 2-core machine (fp32, SmolLM2-135M's up, down and output weights): 1 row
    13.0 ms by F.linear against 4.4 ms here (the row taken twice), 2 rows 28.6 against
    4.6 ms. A single row is doubled because the 1-column product falls back to the
    matrix-vector kernel."""
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if not 1 <= rows <= SMALL_BATCH_ROWS or torch.is_grad_enabled() or x.device.type != "cpu":
        return torch.nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, -1)
    if rows == 1:
        flat = torch.cat([flat, flat])
    y = torch.mm(self.weight, flat.t()).t()[:rows]
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], self.weight.shape[0])


def fast_small_batches(model: torch.nn.Module) -> torch.nn.Module:
    """Give the model's plain Linear layers (not subclasses such as 4-bit ones) the
    small-batch product above, for generation only; training never sees these models."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_small_batch_linear, module)
    return model


def _rows_forward(self, x, *args, **kwargs):
    """A LoRA Linear's forward under `row_adapters`: the base product, plus each loaded
    adapter's (α/r)·B·A·x on the rows that use it (a 0/1 row mask), no indexing."""
    result = self.base_layer(x, *args, **kwargs)
    for a_weight, b_weight, row_scale in self._tunelab_rows:
        # The weights' products directly, not the nn.Linear calls: 420 module calls a
        # decode step cost more than their arithmetic. The mask scales the rank-r middle.
        middle = torch.matmul(x.to(a_weight.dtype), a_weight.t()) * row_scale
        result = result + torch.matmul(middle, b_weight.t()).to(result.dtype)
    return result


@contextlib.contextmanager
def row_adapters(model, names: list[str], base_name: str):
    """While inside, row i of every batch runs through adapter `names[i]` (`base_name`:
    no adapter). Yields False, changing nothing, when a layer is not a plain LoRA Linear
    (DoRA and other variants, LoRA on embeddings): then PEFT's `adapter_names` must do it.

    PEFT's own mixed-adapter batch finds each adapter's rows in Python and gathers and
    scatters them in every adapted layer (210 of them in SmolLM2-135M), a step each
    token; here the rows are a mask made once per generate. The same arithmetic: a 0/1
    mask times the adapter's output (tests/test_chat.py compares both)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    used = sorted(set(names) - {base_name})
    plain = all(type(m) is LoraLinear and not any(a in m.lora_variant for a in used) for m in layers)
    if not plain:
        yield False
        return
    rows = len(names)
    masks = {a: torch.tensor([float(n == a) for n in names]).view(rows, 1, 1) for a in used}
    for m in layers:
        scaled = {a: masks[a].to(m.lora_B[a].weight.device) * m.scaling[a] for a in used if a in m.lora_A}
        m._tunelab_rows = [(m.lora_A[a].weight, m.lora_B[a].weight, scaled[a]) for a in scaled]
        m.forward = types.MethodType(_rows_forward, m)
    try:
        yield True
    finally:
        for m in layers:
            del m.forward          # back to the class's forward
            del m._tunelab_rows


class RowSampler:
    """A logits processor that applies each row's own temperature and top-p, so one
    batched generate can sample the left pane at 0.3 and the right at 1.0. Rows with
    temperature 0 keep only their most likely token (greedy)."""

    def __init__(self, samplings: list):
        self.temps = [s.temperature for s in samplings]
        self.top_ps = [s.top_p for s in samplings]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        out = torch.empty_like(scores)
        for row, (t, p) in enumerate(zip(self.temps, self.top_ps)):
            s = scores[row]
            if t == 0:
                keep = torch.full_like(s, -math.inf)
                keep[s.argmax()] = 0.0
                out[row] = s + keep
                continue
            s = s / t
            if p < 1.0:
                sorted_s, order = torch.sort(s, descending=True)
                probs = torch.softmax(sorted_s, dim=-1)
                drop = probs.cumsum(-1) - probs >= p  # keep the smallest set reaching p
                s = s.clone()
                s[order[drop]] = -math.inf
            out[row] = s
        return out


class RowStreamer:
    """A `generate` streamer for a batch: decodes each row as it grows and reports
    ("text", row, (text, n_tokens)) until the row's end-of-sequence token or its own
    token limit (a batch runs to its largest limit), then ("done", row, reason): "length"
    when the limit cut the answer off, None when the model ended it (or it was stopped)."""

    def __init__(self, tokenizer, rows: list[int], events: queue.Queue, eos_ids: set[int], limits: list[int]):
        self.tokenizer, self.rows, self.events, self.eos_ids, self.limits = tokenizer, rows, events, eos_ids, limits
        self.ids: list[list[int]] = [[] for _ in rows]
        self.finished = [False] * len(rows)
        self.prompt_seen = False

    def _finish(self, i: int, reason: str | None = None) -> None:
        self.finished[i] = True
        self.events.put(("done", self.rows[i], reason))

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt ids
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        news, ends = [], []
        for i, tok in enumerate(tokens):
            if self.finished[i]:
                continue
            if tok in self.eos_ids:
                ends.append((i, None))
                continue
            self.ids[i].append(tok)
            news.append(("text", self.rows[i], (self.tokenizer.decode(self.ids[i], skip_special_tokens=True),
                                                len(self.ids[i]))))
            if len(self.ids[i]) >= self.limits[i]:
                ends.append((i, "length"))
        for event in news:  # the step's events back to back: the reader takes them in one go
            self.events.put(event)
        for i, reason in ends:
            self._finish(i, reason)

    def end(self) -> None:
        for i in range(len(self.rows)):
            if not self.finished[i]:
                self._finish(i)


class Cancelled:
    """Stops generate when the page goes away or the user presses Stop."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kw) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
