"""An output head that scores only the answer tokens, for TRL's SFT, DPO and KTO trainers.

All three call the model as `model(..., labels=labels, fused_lm_head=True)` and read
per-token fields back: the log-probability of each label (the loss), and for logged
metrics the entropy, the mean logit and whether the label was the top-1 token. TRL's
own head for this (`trl.trainer.utils.add_fused_lm_head`) avoids building the full
logits by working through the vocabulary in tiles, but off CUDA/XPU (no Triton) it scores
*every* position, prompt and padding included, in fp32 tiles with a Python loop in the
backward. Measured on the bundled model on a 2-core CPU that head took 8.7 s of a 16 s
DPO step; the same for SFT cost ~1.3 s of ~3.5 s.

`install_answer_head` wraps that forward. For the common case (a plain causal LM head:
no temperature, soft-capping or logit scale, and a device without Triton) it:

  1. runs the backbone (the decoder stack) and keeps the final hidden states;
  2. gathers the positions whose next-token label is not -100 — the answer tokens;
  3. projects only those through the output head and computes the label log-probs
     (with gradient) and the metric fields (without), from the same logits.

Every other case goes to TRL's head unchanged. The fields it returns are the ones TRL's
head returns, zero where the label is -100, so the trainers' losses and metrics are the
same (tests/test_heads.py checks values and gradients against TRL's head). Batches with
more than `CHUNK_ROWS` answer tokens go through the head in chunks, each recomputed in the
backward pass, so at most CHUNK_ROWS × vocabulary logits are held at once.
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ROWS = 2048     # 2048 × 49,152 fp32 logits = 400 MB
# On CPU, PyTorch's fused SDPA kernel is slower than plain matmul-softmax-matmul attention
# for short sequences: one layer's forward + backward, batch 8, 9 heads, bf16, 2 cores:
# 15 vs 8 ms at 90 tokens, 35 vs 18 ms at 176, but 46 vs 61 ms at 256. Batches padded to at
# most this length use transformers' "eager" attention there (the same function; only the kernel differs),
# as long as the attention weights it keeps for the backward pass (rows × heads × len² × layers,
# ~6 bytes each: fp32 softmax and its bf16 copy) stay under EAGER_MAX_BYTES; SDPA keeps none.
EAGER_MAX_LEN = 192
EAGER_MAX_BYTES = 2**30


def _metrics(logits: torch.Tensor, logz: torch.Tensor, targets: torch.Tensor, wanted) -> dict:
    """Entropy, mean logit and top-1 hit per row, from fp32 logits (no gradient)."""
    out = {}
    if "entropy" in wanted:
        probs = torch.exp(logits - logz[:, None])
        out["entropy"] = logz - (probs * logits).sum(-1)
    if "mean_logits" in wanted:
        out["mean_logits"] = logits.mean(-1)
    if "is_top1" in wanted:
        out["is_top1"] = logits.argmax(-1) == targets
    if "log_sum_sq_probs" in wanted:
        out["log_sum_sq_probs"] = torch.logsumexp(2 * logits, -1) - 2 * logz
    return out


def _label_logprobs(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def answer_scores(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                  wanted=("log_probs",), chunk_rows: int = CHUNK_ROWS) -> dict:
    """Per-row label log-prob (with gradient) and the `wanted` metric fields (without),
    for rows of final hidden states `hidden` (n × dim) and their next-token `targets` (n)."""
    n = hidden.shape[0]
    if n <= chunk_rows:
        logits = F.linear(hidden, weight, bias).float()
        logp = -F.cross_entropy(logits, targets, reduction="none")
        with torch.no_grad():
            detached = logits.detach()
            return {"log_probs": logp, **_metrics(detached, torch.logsumexp(detached, -1), targets, wanted)}
    parts: list[dict] = []
    for s in range(0, n, chunk_rows):
        h, t = hidden[s:s + chunk_rows], targets[s:s + chunk_rows]
        part = {"log_probs": checkpoint(_label_logprobs, h, weight, bias, t, use_reentrant=False)}
        if set(wanted) - {"log_probs"}:
            with torch.no_grad():
                logits = F.linear(h.detach(), weight, bias).float()
                part |= _metrics(logits, torch.logsumexp(logits, -1), t, wanted)
        parts.append(part)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _pick_attention(config, chosen: str, rows: int, seq_len: int) -> None:
    """Short, small CPU batches: eager attention; others: SDPA (only when SDPA was the choice)."""
    if chosen != "sdpa":
        return
    text = config.get_text_config()
    kept = rows * text.num_attention_heads * seq_len**2 * text.num_hidden_layers * 6
    small = seq_len <= EAGER_MAX_LEN and kept <= EAGER_MAX_BYTES
    config._attn_implementation = "eager" if small else "sdpa"


def install_answer_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                        outputs: tuple[str, ...] = ("log_probs",), skip: tuple[str, ...] = ()) -> None:
    """Give `model` TRL's `fused_lm_head=True` interface (same signature as TRL's
    `add_fused_lm_head`), computing it on the answer positions only where that applies.
    Fields in `skip` are not computed (zeros stand in; the trainer drops their metric)."""
    from trl.trainer.utils import FusedCausalLMOutput, add_fused_lm_head

    add_fused_lm_head(model, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32,
                      outputs=outputs)
    trl_forward = model.forward
    text_config = model.config.get_text_config()
    plain_head = (temperature == 1.0 and not cast_lm_head_to_fp32
                  and not getattr(text_config, "final_logit_softcapping", None)
                  and all(getattr(text_config, k, None) in (None, 1.0)
                          for k in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
                  and not getattr(text_config, "output_router_logits", False))
    wanted = tuple(f for f in outputs if f not in skip)
    stand_ins = tuple(f for f in outputs if f in skip)
    attention = model.config._attn_implementation   # as loaded: what the model was asked to use

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        device = next(self.parameters()).device
        if (not fused_lm_head or not plain_head or shift_labels is not None or labels is None
                or device.type in ("cuda", "xpu") or kwargs.get("output_router_logits")):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        _pick_attention(self.config, attention, *labels.shape)
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        targets = labels[:, 1:].to(head.weight.device)
        mask = targets != -100
        scores = answer_scores(hidden.to(head.weight.device)[mask], head.weight, head.bias, targets[mask], wanted)

        def spread(x):   # back to (batch, seq - 1), zero where there is no label
            if x is None:
                return None
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        for f in stand_ins:
            scores[f] = torch.zeros_like(scores["log_probs"], requires_grad=False)
        log_probs = spread(scores["log_probs"])
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denom, log_probs=log_probs, label_mask=mask,
            entropy=spread(scores.get("entropy")), mean_logits=spread(scores.get("mean_logits")),
            is_top1=spread(scores.get("is_top1")), log_sum_sq_probs=spread(scores.get("log_sum_sq_probs")))

    model.forward = types.MethodType(forward, model)


@contextlib.contextmanager
def _answer_heads(trainer_module, skip: tuple[str, ...]):
    """While a TRL trainer is built, its `add_fused_lm_head` installs ours instead."""
    original = trainer_module.add_fused_lm_head
    trainer_module.add_fused_lm_head = functools.partial(install_answer_head, skip=skip)
    try:
        yield
    finally:
        trainer_module.add_fused_lm_head = original


def _with_answer_heads(base, module_name: str, skip: tuple[str, ...] = ()):
    import importlib

    module = importlib.import_module(module_name)

    class Trainer(base):
        __doc__ = f"TRL's {base.__name__} with an output head that scores only the answer tokens (tunelab.training.heads)."

        def __init__(self, *args, **kwargs):
            # Installed before the trainer's own set-up runs, so DPO's precomputed
            # reference log-probs go through the same head.
            with _answer_heads(module, skip):
                super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            return _epoch_seeded(super()._get_train_sampler(train_dataset), self.args.seed)

        def log(self, logs, *args, **kwargs):
            for metrics in self._metrics.values():   # not computed: no made-up zero in the logs
                for name in skip:
                    metrics.pop(name, None)
            return super().log(logs, *args, **kwargs)

    Trainer.__name__ = Trainer.__qualname__ = "Answer" + base.__name__
    return Trainer


def _epoch_seeded(sampler, seed: int):
    """Make a length-grouped sampler draw epoch e's order from `seed + e`.

    The Trainer's LengthGroupedSampler shuffles with the global RNG. A checkpoint saves
    that RNG after the current epoch's order was drawn, so a run resumed in its second
    epoch or later drew a different order from an uninterrupted run's (seen in
    benchmarks/run_faults.py: identical losses up to the resume, different after it).
    The plain random sampler is already seeded per epoch by accelerate."""
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

    sampler.__class__ = EpochSeededLengthGroupedSampler
    return sampler


@functools.cache
def sft_trainer_class():
    from trl import SFTTrainer
    # The mean entropy over the vocabulary at every answer token is one more pass over
    # (tokens × vocabulary) each step, for a metric TuneLab does not show: skipped.
    return _with_answer_heads(SFTTrainer, "trl.trainer.sft_trainer", skip=("entropy",))


@functools.cache
def dpo_trainer_class():
    from trl import DPOTrainer
    return _with_answer_heads(DPOTrainer, "trl.trainer.dpo_trainer")


@functools.cache
def kto_trainer_class():
    from trl import KTOTrainer
    return _with_answer_heads(KTOTrainer, "trl.trainer.kto_trainer")
