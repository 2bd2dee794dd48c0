"""An output head that scores only the answer tokens, for TRL's SFT, DPO and KTO trainers.

All three call the model as `model(..., labels=labels, fused_lm_head=True)` and read
per-token fields back: the log-probability of each label (the loss), and for logged
metrics the entropy, the mean logit and whether the label was the top-1 token. TRL's
own head for this (`trl.trainer.utils.add_fused_lm_head`) avoids building the full
logits by working through the vocabulary in tiles, but off CUDA/XPU (no Triton) it scores
*every* position, prompt and padding included, in fp32 tiles with a Python loop in the
backward. Measured on the bundled model on a 2-core CPU that head took 8.7 s of a 16 s
DPO step; the same for SFT cost ~1.3 s of ~3.5 s.

TuneLab's trainers (`sft_trainer_class`, `dpo_trainer_class`, `kto_trainer_class`) are
TRL's, subclassed at two of their hooks: `compute_loss` and `compute_ref_log_probs` hand
TRL's own code an `AnswerHead` in the model's place. For a `fused_lm_head=True` call on a
plain causal LM head (no temperature, soft-capping or logit scale) it:

  1. runs the model's own forward, as wrapped (PEFT, distributed training), asking for
     the final hidden states and the logits of one position only (`final_hidden`);
  2. gathers the positions whose next-token label is not -100 — the answer tokens;
  3. projects only those through the output head and computes the label log-probs
     (with gradient) and the metric fields (without), from the same logits.

Every other call goes to the model unchanged (so TRL's head does it). The fields it
returns are the ones TRL's head returns, zero where the label is -100, so the trainers'
losses and metrics are the same (tests/test_heads.py checks values and gradients against
TRL's head). Nothing is patched: the model keeps its forward (TRL's trainers add their own
head to it, which the calls this object does not take still use). The one call it does not
reach: DPO's and KTO's reference pass every step with `precompute_ref` off, which TRL
makes through the trainer's own model attribute; it goes through TRL's head.

Step 3 has its own backward (`_LabelLogProbs`): the fp32 log-softmax is worked out a few
rows at a time, in cache, and only each row's log-normaliser is kept; the backward rebuilds
the softmax from it. Autograd through `cross_entropy` instead kept an fp32 log-softmax of
every scored row and made four passes over it in memory: on the bundled model the head's
forward and backward took 0.62 s for 900 rows, 0.37 s this way (0.82 against 0.37 s with
the entropy and mean-logit metrics). Batches with more than `CHUNK_ROWS` answer tokens go
through the head in chunks whose logits are rebuilt in the backward pass, so at most
CHUNK_ROWS × vocabulary logits are held at once.

For KTO the backbone also runs without most of the padding (`packed_hidden`): short rows
share a row, each behind a block-diagonal causal mask with its own positions. KTO's trainer
reads its data in order (its KL estimate pairs each answer with a neighbour's prompt), so a
batch of a brief good answer next to a long bad one cannot be regrouped by length; on lab
6's answers in batches of 4 (8) rows, 38 % (41 %) of the padded batch was padding, 19 %
(14 %) packed.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

CHUNK_ROWS = 2048     # logits held at once for the backward: 2048 × 49,152 in bf16 = 200 MB
SOFTMAX_ROWS = 16     # rows of fp32 logits worked on at once: 16 × 49,152 × 4 B = 3 MB, cache-sized


def _metrics(log_probs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, wanted) -> dict:
    """Entropy, mean logit, top-1 hit and log Σp² per row, from fp32 log-probabilities
    and logits (no gradient)."""
    out = {}
    if "entropy" in wanted:
        out["entropy"] = -(log_probs.exp() * log_probs).sum(-1)
    if "mean_logits" in wanted:
        out["mean_logits"] = logits.mean(-1)
    if "is_top1" in wanted:
        out["is_top1"] = logits.argmax(-1) == targets
    if "log_sum_sq_probs" in wanted:
        out["log_sum_sq_probs"] = torch.logsumexp(2 * log_probs, -1)
    return out


class _LabelLogProbs(torch.autograd.Function):
    """The log-probability of each row's label under the output head, and the `wanted`
    metric fields, without holding the fp32 logits or their log-softmax.

    The forward builds the logits as `F.linear` does under the ambient autocast (bf16 when
    training in bf16), then works through them SOFTMAX_ROWS rows at a time in fp32, keeping
    only each row's log-normaliser. The backward rebuilds the softmax from those, one small
    block at a time, into the gradient of the logits: g·(onehot(label) − softmax). The
    numbers are those of log_softmax + gather on fp32 logits and its autograd backward.
    `keep` holds the logits (in their compute dtype) for the backward; otherwise they are
    rebuilt there, one chunk at a time, as activation checkpointing would."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, keep, wanted):
        logits = F.linear(hidden, weight, bias)
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        label = torch.empty(n, dtype=torch.float32, device=logits.device)
        parts = []
        for s in range(0, max(n, 1), SOFTMAX_ROWS):   # one empty block where there are no rows
            f = logits[s:s + SOFTMAX_ROWS].float()
            lp = torch.log_softmax(f, -1)
            t = targets[s:s + SOFTMAX_ROWS]
            label[s:s + SOFTMAX_ROWS] = lp.gather(1, t[:, None]).squeeze(1)
            lse[s:s + SOFTMAX_ROWS] = f[:, 0] - lp[:, 0]
            if wanted:
                parts.append(_metrics(lp, f, t, wanted))
        ctx.dtype = logits.dtype
        ctx.save_for_backward(hidden, weight, bias, targets, lse, logits if keep else None)
        metrics = [torch.cat([p[k] for p in parts]) for k in wanted] if parts else []
        ctx.mark_non_differentiable(*metrics)
        return (label, *metrics)

    @staticmethod
    def backward(ctx, grad, *_):
        hidden, weight, bias, targets, lse, logits = ctx.saved_tensors
        dtype = ctx.dtype
        w = weight.to(dtype)
        if logits is None:
            logits = F.linear(hidden.to(dtype), w, None if bias is None else bias.to(dtype))
        g_logits = torch.empty_like(logits)
        for s in range(0, logits.shape[0], SOFTMAX_ROWS):
            g = grad[s:s + SOFTMAX_ROWS, None].float()
            block = (logits[s:s + SOFTMAX_ROWS].float() - lse[s:s + SOFTMAX_ROWS, None]).exp_().mul_(-g)
            block.scatter_add_(1, targets[s:s + SOFTMAX_ROWS, None], g)
            g_logits[s:s + SOFTMAX_ROWS] = block
        g_hidden = (g_logits @ w).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        g_weight = (g_logits.t() @ hidden.to(dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        g_bias = g_logits.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return g_hidden, g_weight, g_bias, None, None, None


def answer_scores(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                  wanted=("log_probs",), chunk_rows: int = CHUNK_ROWS) -> dict:
    """Per-row label log-prob (with gradient) and the `wanted` metric fields (without),
    for rows of final hidden states `hidden` (n × dim) and their next-token `targets` (n)."""
    fields = tuple(f for f in wanted if f != "log_probs")
    n = hidden.shape[0]
    keep = n <= chunk_rows
    parts = [_LabelLogProbs.apply(hidden[s:s + chunk_rows], weight, bias, targets[s:s + chunk_rows], keep, fields)
             for s in range(0, max(n, 1), chunk_rows)]
    return {k: torch.cat([p[i] for p in parts]) for i, k in enumerate(("log_probs", *fields))}


def sliding_window(config) -> bool:
    """Whether any attention layer of this model sees only a window of the sequence
    (then a row's tokens cannot simply be laid out after another row's)."""
    text = config.get_text_config()
    return bool(getattr(text, "sliding_window", None)
                or any(t != "full_attention" for t in (getattr(text, "layer_types", None) or ())))


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices in bins whose lengths add up to at most `capacity` (first fit, longest
    rows first); a row longer than `capacity` gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((b for b, r in enumerate(room) if lengths[i] <= r), None)
        if fit is None:
            bins.append([i])
            room.append(capacity - lengths[i])
        else:
            bins[fit].append(i)
            room[fit] -= lengths[i]
    return bins


def packed_hidden(model, causal, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The last hidden states of `model` (`final_hidden`; `causal` is the language model
    inside it, `causal_lm`) for a right-padded batch (batch × seq × dim, as the plain
    forward gives them at every real token), computed with short rows sharing a row.

    A batch is padded to its longest row, so a batch of short and long answers (a KTO batch
    of a brief thumbs-up answer and a rambling thumbs-down one) spends much of its work on
    padding. Here the rows are put into bins no longer than
    the longest row (`pack_rows`), one after another, with positions restarting at each row
    and a block-diagonal causal mask so no token sees another row's: every token's state is
    the one it has in its own row, and no bin is longer, so no attention block larger, than
    the padded batch's. None (run the batch as it is) when packing would not save a row,
    the padding is not all at the right, a row is empty, or the model has sliding-window
    layers."""
    if attention_mask.dim() != 2 or sliding_window(causal.config):
        return None
    lengths = attention_mask.sum(1)
    cols = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    inside = cols < lengths[:, None]
    if not bool((attention_mask.bool() == inside).all()):
        return None
    lens = lengths.tolist()
    bins = pack_rows(lens, max(lens))
    if len(bins) == len(lens) or min(lens) == 0:
        return None
    packed = max(sum(lens[i] for i in b) for b in bins)
    row_of = torch.full((len(bins), packed), -1, dtype=torch.long)   # which batch row each slot holds
    pos = torch.zeros((len(bins), packed), dtype=torch.long)
    where = torch.zeros(len(lens), dtype=torch.long)                 # flat slot of each row's first token
    for b, rows in enumerate(bins):
        start = 0
        for i in rows:
            row_of[b, start:start + lens[i]] = i
            pos[b, start:start + lens[i]] = torch.arange(lens[i])
            where[i] = b * packed + start
            start += lens[i]
    row_of, pos, where = (t.to(input_ids.device) for t in (row_of, pos, where))
    real = row_of >= 0
    flat = torch.where(inside, where[:, None] + cols, where[:, None])   # each token's slot (padding: any)
    ids = torch.zeros(len(bins) * packed, dtype=input_ids.dtype, device=input_ids.device)
    ids[flat[inside]] = input_ids[inside]
    allowed = (row_of[:, :, None] == row_of[:, None, :]) & (pos[:, :, None] >= pos[:, None, :]) & real[:, None, :]
    hidden = final_hidden(model, input_ids=ids.view(len(bins), packed), attention_mask=additive_mask(allowed, causal),
                          position_ids=pos)
    return hidden.reshape(len(bins) * packed, -1)[flat]


def additive_mask(allowed: torch.Tensor, model) -> torch.Tensor:
    """A 4D attention mask (batch × 1 × query × key) for `model` from a boolean one: 0 where
    a query may attend to a key, the dtype's lowest value elsewhere. Every query sees at
    least itself, so padding rows get no all-masked softmax."""
    allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    dtype = model.get_input_embeddings().weight.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _ids_and_mask_only(args, kwargs) -> bool:
    """Whether a forward call gives input ids and an attention mask and nothing else that
    changes the result (PEFT passes `inputs_embeds=None`, `output_attentions=None`, ...)."""
    return (not args and kwargs.get("input_ids") is not None and kwargs.get("attention_mask") is not None
            and all(v is None or v is False for k, v in kwargs.items()
                    if k not in ("input_ids", "attention_mask", "use_cache", "return_dict")))


def causal_lm(model):
    """The causal language model inside `model`: out of a distributed-training wrapper
    (accelerate's `extract_model_from_parallel`) and out of a PEFT model."""
    from accelerate.utils import extract_model_from_parallel
    inner = extract_model_from_parallel(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def plain_head(causal) -> bool:
    """Whether `causal`'s output head is a plain projection (no soft-capping, logit scale
    or mixture-of-experts router loss) and its forward can keep the logits of one position
    only (`logits_to_keep`), so that the answer head may stand in for it. Asked at every
    loss call: the signature is read once per model class."""
    text = causal.config.get_text_config()
    return (causal.get_output_embeddings() is not None
            and _keeps_logits(type(causal))
            and not getattr(text, "final_logit_softcapping", None)
            and all(getattr(text, k, None) in (None, 1.0)
                    for k in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
            and not getattr(text, "output_router_logits", False))


@functools.cache
def _keeps_logits(cls) -> bool:
    import inspect
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def final_hidden(model, **kwargs) -> torch.Tensor:
    """The last hidden states (after the final norm) of `model` called through its own
    forward, however it is wrapped (PEFT, distributed training). `output_hidden_states=-1`
    returns them and none of the other layers' (accelerate's mixed precision hands each
    returned tensor back in fp32). `logits_to_keep` leaves the output head one position
    a row, given as an index tensor: the integer 1 slices a strided view whose product
    with the head fell back to a batched matmul over a copy of the head for every row
    (measured: 0.4 s of a 2.5 s step on the bundled model at batch 8)."""
    device = next(iter(v for v in kwargs.values() if isinstance(v, torch.Tensor))).device
    keep = torch.zeros(1, dtype=torch.long, device=device)
    out = model(**kwargs, output_hidden_states=-1, logits_to_keep=keep, use_cache=False)
    return out.hidden_states[-1]


class AnswerHead:
    """The model as TRL's loss code calls it, scoring only the answer tokens.

    TRL's SFT, DPO and KTO trainers call `model(..., labels=labels, fused_lm_head=True)`
    and read per-token fields back (the label log-probs, and for metrics the entropy, the
    mean logit, whether the label was top-1). The trainers below hand TRL's own
    `compute_loss` (and `compute_ref_log_probs`) this object in the model's place: for
    such a call it runs the model's own forward for the final hidden states, projects only
    the answer positions through the output head (`answer_scores`) and returns the fields
    TRL's head returns, zero where the label is -100. Any other call, and any model whose
    head is not plain, goes to the model unchanged; so does every attribute."""

    def __init__(self, model, outputs: tuple[str, ...] = ("log_probs",), skip: tuple[str, ...] = (),
                 pack: bool = False, autocast=contextlib.nullcontext):
        self.model, self.pack, self.autocast = model, pack, autocast
        self.wanted = tuple(f for f in outputs if f not in skip)
        self.stand_ins = tuple(f for f in outputs if f in skip)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        causal = causal_lm(self.model)
        if (not fused_lm_head or labels is None or shift_labels is not None or args
                or kwargs.get("output_router_logits") or not plain_head(causal)):
            if fused_lm_head:
                kwargs.update(fused_lm_head=True, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
            if labels is not None:
                kwargs["labels"] = labels
            return self.model(*args, **kwargs)
        from trl.trainer.utils import FusedCausalLMOutput
        kwargs.pop("use_cache", None)
        hidden = None
        if self.pack and _ids_and_mask_only((), kwargs):
            hidden = packed_hidden(self.model, causal, kwargs["input_ids"], kwargs["attention_mask"])
        if hidden is None:
            hidden = final_hidden(self.model, **kwargs)
        hidden = hidden[:, :-1]
        head = causal.get_output_embeddings()
        targets = labels[:, 1:].to(head.weight.device)
        mask = targets != -100
        with self.autocast():   # the precision the model's forward ran in (accelerate's autocast)
            scores = answer_scores(hidden.to(head.weight.device)[mask], head.weight, head.bias, targets[mask],
                                   self.wanted)

        def spread(x):   # back to (batch, seq - 1), zero where there is no label
            if x is None:
                return None
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        for f in self.stand_ins:
            scores[f] = torch.zeros_like(scores["log_probs"], requires_grad=False)
        log_probs = spread(scores["log_probs"])
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denom, log_probs=log_probs, label_mask=mask,
            entropy=spread(scores.get("entropy")), mean_logits=spread(scores.get("mean_logits")),
            is_top1=spread(scores.get("is_top1")), log_sum_sq_probs=spread(scores.get("log_sum_sq_probs")))


def _with_answer_heads(base, outputs: tuple[str, ...], skip: tuple[str, ...] = (), pack: bool = False):
    """`base` (a TRL trainer) whose loss and reference passes score only the answer tokens:
    its own `compute_loss` and `compute_ref_log_probs` run, handed an `AnswerHead`."""

    class Trainer(base):
        __doc__ = (f"TRL's {base.__name__} with an output head that scores only the answer tokens "
                   "(tunelab.methods.heads). `answer_head=False` leaves TRL's head in place (the "
                   "config's speed.answer_head); `pack_rows=False` turns packing off (speed.pack_rows).")

        def __init__(self, *args, answer_head: bool = True, pack_rows: bool = True, **kwargs):
            # Set before TRL's own set-up runs: DPO and KTO precompute the reference there.
            self.answer_head, self.pack_rows = answer_head, pack and pack_rows
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.answer_head:
                fields = outputs + (("log_sum_sq_probs",) if getattr(self, "use_weighting", False) else ())
                model = AnswerHead(model, fields, skip, self.pack_rows, self.accelerator.autocast)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        if hasattr(base, "compute_ref_log_probs"):   # DPO and KTO: the reference, precomputed or each step
            def compute_ref_log_probs(self, model, inputs):
                if self.answer_head:
                    model = AnswerHead(model, ("log_probs",), pack=self.pack_rows, autocast=self.accelerator.autocast)
                return super().compute_ref_log_probs(model, inputs)

        def _get_train_sampler(self, train_dataset=None):
            return epoch_seeded(super()._get_train_sampler(train_dataset), self.args.seed)

        def log(self, logs, *args, **kwargs):
            for metrics in self._metrics.values() if self.answer_head else ():   # not computed: no made-up zero
                for name in skip:
                    metrics.pop(name, None)
            return super().log(logs, *args, **kwargs)

    Trainer.__name__ = Trainer.__qualname__ = "Answer" + base.__name__
    return Trainer


def epoch_seeded(sampler, seed: int):
    """The trainer's length-grouped sampler, drawing epoch e's order from `seed + e`.

    The Trainer's LengthGroupedSampler shuffles with the global RNG. A checkpoint saves
    that RNG after the current epoch's order was drawn, so a run resumed in its second
    epoch or later drew a different order from an uninterrupted run's (seen in
    benchmarks/run_faults.py: identical losses up to the resume, different after it).
    So a sampler of our own (a LengthGroupedSampler subclass, given the same lengths and
    batch size) takes its place, returned from `_get_train_sampler`. The plain random
    sampler is already seeded per epoch by accelerate."""
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
    if type(sampler) is not LengthGroupedSampler:
        return sampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:   # called by the Trainer at each epoch's start
            self.epoch = epoch

        def __iter__(self):
            g = torch.Generator()
            g.manual_seed(seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))

    return EpochSeededLengthGroupedSampler(batch_size=sampler.batch_size, lengths=sampler.lengths)


@functools.cache
def sft_trainer_class():
    from trl import SFTTrainer
    # The mean entropy over the vocabulary at every answer token is one more pass over
    # (tokens × vocabulary) each step, for a metric TuneLab does not show: skipped.
    return _with_answer_heads(SFTTrainer, ("log_probs", "entropy", "is_top1"), skip=("entropy",))


@functools.cache
def dpo_trainer_class():
    from trl import DPOTrainer
    return _with_answer_heads(DPOTrainer, ("log_probs", "entropy", "mean_logits", "is_top1"))


@functools.cache
def kto_trainer_class():
    from trl import KTOTrainer
    # A KTO batch mixes brief and long answers in the data's order (TRL reads it in order:
    # its KL estimate pairs each answer with a neighbour's prompt, so grouping rows by length
    # would leave batches of only good or only bad answers): packing removes the padding.
    return _with_answer_heads(KTOTrainer, ("log_probs", "entropy", "mean_logits"), pack=True)
