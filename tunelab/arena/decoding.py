"""The pieces `tunelab.arena.loop` runs its shared decode steps with.

- fast_small_batches: the small-batch Linear product that makes a decode step (1-8
  rows) read each weight once, at memory speed, on CPU.
- row_adapters: each row (or packed token) of a batch through its own LoRA adapter (or
  none), with one mask per adapter instead of PEFT's per-layer sub-batch indexing.
- eos_ids: the tokens that end an answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import functools
import warnings
import weakref

if TYPE_CHECKING:   # annotations only: torch is imported where it is used
    import torch


PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
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
    import torch
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


@functools.cache
def small_batch_linear_class():
    """SmallBatchLinear: a torch Linear whose forward is the small-batch product above."""
    import torch

    class SmallBatchLinear(torch.nn.Linear):
        __doc__ = _small_batch_linear.__doc__

        def forward(self, x):
            return _small_batch_linear(self, x)

    return SmallBatchLinear


def fast_small_batches(model: torch.nn.Module) -> torch.nn.Module:
    """Put a SmallBatchLinear in the place of each of the model's plain Linear layers (not
    subclasses such as 4-bit ones), holding the very same weight and bias (tied weights stay
    tied), for generation only; training never sees these models."""
    import torch
    cls = small_batch_linear_class()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                fast = cls(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                fast.weight, fast.bias = child.weight, child.bias
                fast.train(child.training)
                parent.register_module(name, fast)
    return model


def _add_rows(state: "_RowMasks", ab: dict, layer, args, output):
    """A forward hook on each LoRA Linear of the arena's model (torch's register_forward_hook).
    Inside `row_adapters` PEFT's own adapters are switched off (PEFT computes the base product
    only) and this adds each adapter's (α/r)·B·A·x on the rows that use it (a 0/1 mask), no
    indexing; outside, it changes nothing."""
    masks = state.masks
    if masks is None:
        return None
    import torch
    x, result = args[0], output
    for name, mask in masks.items():
        weights = ab.get(name)
        if weights is None:
            continue
        a_weight, b_weight, scaling = weights
        # The weights' products directly, not the nn.Linear calls: 420 module calls a
        # decode step cost more than their arithmetic. The mask scales the rank-r middle.
        row_scale = state.scaled(name, mask, scaling, a_weight.device)
        middle = torch.matmul(x.to(a_weight.dtype), a_weight.t()) * row_scale
        result = result + torch.matmul(middle, b_weight.t()).to(result.dtype)
    return result


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> its _RowMasks


class _RowMasks:
    """The masks of the forward under way, shared by the hooks on every LoRA layer of one
    model; set up once per set of loaded adapters (walking 700 modules every decode step
    cost more than the step's LoRA arithmetic), and so is switching PEFT's adapters off or on."""

    def __init__(self, model, adapters: frozenset):
        from peft.tuners.lora import LoraLayer
        self.model = weakref.ref(model)
        self.adapters = adapters
        self.masks: dict | None = None
        self._scaled: dict = {}
        self.peft_on = True      # PEFT's adapters as PEFT left them (on): the arena's hooks add nothing
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        additive = all(_additive(m) for m in layers)
        self.plain = {a for a in adapters if additive and not any(a in m.lora_variant for m in layers)}
        self.handles = [m.register_forward_hook(functools.partial(
            _add_rows, self, {a: (m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a]) for a in m.lora_A}))
            for m in layers]

    def scaled(self, name, mask, scaling, device):
        """The mask times a layer's scaling, made once per forward for each scaling in use."""
        key = (name, scaling, device)
        if key not in self._scaled:
            self._scaled[key] = mask.to(device) * scaling
        return self._scaled[key]

    def use_peft(self, on: bool) -> None:
        """PEFT's adapters on (PEFT computes them: `adapter_names`) or off (the base product
        only, the hooks add the rows' adapters); PEFT's public switch, only on a change."""
        model = self.model()
        if on != self.peft_on and model is not None:
            tuner = model.base_model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # its note on adapters with a bias: none here (self.plain)
                (tuner.enable_adapter_layers if on else tuner.disable_adapter_layers)()
            self.peft_on = on

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.use_peft(True)

    @classmethod
    def of(cls, model) -> "_RowMasks":
        adapters = frozenset(getattr(model, "peft_config", {}) or {})
        current = _STATES.get(model)
        if current is None or current.adapters != adapters:
            if current is not None:
                current.close()
            current = _STATES[model] = cls(model, adapters)
        return current


@contextlib.contextmanager
def row_adapters(model, names: list[str], base_name: str, packed: bool = False):
    """While inside, row i of every batch runs through adapter `names[i]` (`base_name`:
    no adapter); with `packed`, token i of a one-row batch does. Yields False when a layer
    is not a plain LoRA Linear (full precision or 4-bit; DoRA and other variants, LoRA on
    embeddings): then PEFT's `adapter_names` must do it, and PEFT's adapters are on.

    PEFT's own mixed-adapter batch finds each adapter's rows in Python and gathers and
    scatters them in every adapted layer (210 of them in SmolLM2-135M), a step each
    token; here the rows are one mask per adapter, added by a forward hook on each LoRA
    layer while PEFT's adapters are off. The same arithmetic: a 0/1 mask times the
    adapter's output (tests/test_chat.py compares both). PEFT's adapters stay off after
    (switching them costs a walk over the model): call `peft_adapters(model)` before using
    PEFT's own `adapter_names` or active adapter on this model."""
    import torch
    state = _RowMasks.of(model)
    used = sorted(set(names) - {base_name})
    if not set(used) <= state.plain:
        state.use_peft(True)
        yield False
        return
    state.use_peft(False)
    shape = (1, len(names), 1) if packed else (len(names), 1, 1)
    state.masks = {a: torch.tensor([float(n == a) for n in names]).view(shape) for a in used}
    state._scaled = {}
    try:
        yield True
    finally:
        state.masks, state._scaled = None, {}


def peft_adapters(model) -> None:
    """Hand the model back to PEFT: its adapters on, as PEFT computes them (after `row_adapters`)."""
    state = _STATES.get(model)
    if state is not None:
        state.use_peft(True)


def _additive(layer) -> bool:
    """A LoRA layer whose output is its base layer's plus B·A·x·scale: PEFT's Linear, and
    its 4- and 8-bit (bitsandbytes) Linear layers."""
    cls = type(layer)
    return cls.__module__ in ("peft.tuners.lora.layer", "peft.tuners.lora.bnb") and \
        cls.__name__ in ("Linear", "Linear4bit", "Linear8bitLt")


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
