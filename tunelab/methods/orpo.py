"""ORPO: preference learning folded into SFT, with no reference model.

ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
Model", arXiv:2403.07691) trains on the same pairs as DPO but needs no frozen copy and
no reference pass: with odds(y|x) = P(y|x) / (1 − P(y|x)) (P the length-normalised
likelihood of the answer), the loss is
    L = L_SFT(chosen) − λ · log σ(log odds(y_w|x) − log odds(y_l|x))
the usual next-token loss on the chosen answer plus a penalty that grows when the
rejected answer's odds come near the chosen one's. λ is `orpo.beta`. No reference model is
loaded or run, neither each step nor before training (DPO runs its reference once over the
data, with `dpo.precompute_ref`, or every step without it).

What trains is `orpo.adapter`: LoRA (default), QLoRA or every weight.
"""

from __future__ import annotations

import functools

from . import dpo

load = dpo.load   # the model as `orpo.adapter` says


def make_trainer(cfg, hw, model, peft_config, tokenizer, train_ds, eval_ds, common_args, callbacks):
    from trl.experimental.orpo import ORPOConfig  # imported here: trl takes seconds to import

    args = ORPOConfig(**common_args, beta=cfg.orpo.beta,
                      train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random")
    return trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                           processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
                           answer_head=cfg.speed.answer_head, pack_rows=cfg.speed.pack_rows)


@functools.cache
def trainer_class():
    from trl.experimental.orpo import ORPOTrainer

    class CountingORPOTrainer(ORPOTrainer):
        """TRL's ORPOTrainer, logging the tokens trained on (`num_tokens`, as the SFT, DPO
        and KTO trainers do), so its runs report tokens/s like every other run, and on a
        CPU scoring only the positions its loss reads (`concatenated_forward`; off with
        `answer_head=False`, the config's speed.answer_head), a pair as one decoder row
        (off with `pack_rows=False`, speed.pack_rows)."""
        trained_tokens = 0

        def __init__(self, *args, answer_head: bool = True, pack_rows: bool = True, **kwargs):
            self.answer_head, self.pack_rows, self.head_mean = answer_head, pack_rows, HeadMean()
            super().__init__(*args, **kwargs)

        def concatenated_forward(self, model, batch):
            fast = scored_forward(self, model, batch, self.head_mean, self.pack_rows) if self.answer_head else None
            return fast if fast is not None else super().concatenated_forward(model, batch)

        def _get_train_sampler(self, train_dataset=None):
            """With `train.group_by_length`, pairs of similar length share a batch: a pair is
            one decoder row (`_decode_sides`), prompt + chosen + rejected long, so its row's
            padding is what the grouping saves (`PairLengthSampler`)."""
            data = train_dataset if train_dataset is not None else self.train_dataset
            columns = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
            if (self.args.train_sampling_strategy != "group_by_length"
                    or not all(c in getattr(data, "column_names", ()) for c in columns)):
                return super()._get_train_sampler(train_dataset)
            lengths = [len(c) + len(r) - len(p) for p, c, r in zip(*(data[k] for k in columns))]
            return PairLengthSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                     self.args.seed)

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            if train_eval == "train":   # prompt + answer tokens of both sides, padding not counted
                self.trained_tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
            return super().get_batch_loss_metrics(model, batch, train_eval)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                logs["num_tokens"] = float(self.trained_tokens)
            return super().log(logs, *args, **kwargs)

    return CountingORPOTrainer


class PairLengthSampler:
    """Batches of pairs of similar length, in a random order drawn from the seed and the epoch.

    Up to `GROUP_BATCHES` batches' worth of pairs, drawn at random, are sorted by length and
    cut into batches; the full batches then come in a shuffled order, any short ones last
    (so every batch the loader cuts is one of them). transformers' LengthGroupedSampler
    sorts groups of at most a quarter of the data, so on a lab's few dozen pairs each group
    is one random batch and nothing is saved; this one sorts them all (on lab 6's 60 pairs
    padding falls from 13 % to 2 % of the rows' tokens). Which pairs share a batch is fixed
    while the data fit one group; their order changes every epoch. Seeded per epoch, so a
    resumed run sees the order an uninterrupted one does."""

    GROUP_BATCHES = 50

    def __init__(self, lengths, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:   # called by the Trainer at each epoch's start
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        drawn = torch.randperm(len(self.lengths), generator=g).tolist()
        size, full, short = self.batch_size, [], []
        for s in range(0, len(drawn), size * self.GROUP_BATCHES):
            group = sorted(drawn[s:s + size * self.GROUP_BATCHES], key=lambda i: -self.lengths[i])
            for b in range(0, len(group), size):
                (full if len(group[b:b + size]) == size else short).append(group[b:b + size])
        order = torch.randperm(len(full), generator=g).tolist()
        return iter([i for b in order for i in full[b]] + [i for batch in short for i in batch])


def scored_forward(trainer, model, batch, head_mean=None, pack: bool = True):
    """TRL's ORPO `concatenated_forward`, with less work:

    - each pair is one row through the decoder, the prompt the two sides share once and
      then both answers, the rejected one masked from the chosen one (`_decode_sides`; TRL
      runs the prompt twice and pads both sides to the longer one, so the short chosen rows
      carried the long rejected ones' padding);
    - the output head scores only the positions the loss reads, through
      `heads.answer_scores` (the same head, chunked): every real token of the
      chosen rows for the SFT part (TRL's ORPO takes it over the prompt too) and the answer
      tokens of both sides for the odds ratio. TRL builds the logits of every position,
      padding and rejected prompts included, over the whole vocabulary.

    The SFT loss, the answers' average log-probabilities, hence the loss, the gradients and
    every logged metric but one are TRL's (tests/test_heads.py compares them). The one:
    `logits/chosen` and `logits/rejected` average the logits over each side's real tokens,
    where TRL's average also takes in the padding positions; h·mean(W) + mean(b) gives that
    average without building the logits (`head_mean`, a `HeadMean`, holds mean(W)). The
    decoder runs through the model's own forward, as wrapped (PEFT, distributed training:
    `heads.final_hidden`). None where TRL's own path must run: an encoder-decoder, a
    mixture-of-experts auxiliary loss, or an output head that is not a plain projection."""
    import torch
    from .heads import answer_scores, causal_lm, plain_head
    if trainer.is_encoder_decoder or trainer.aux_loss_enabled:
        return None
    causal = causal_lm(model)
    if not plain_head(causal):
        return None
    head_mean = head_mean or HeadMean()
    head = causal.get_output_embeddings()
    w, b = head.weight, head.bias
    out = []
    sides = _decode_sides(trainer, model, causal, batch, pack)
    for side, (hidden, ids, mask, labels) in zip(("chosen", "rejected"), sides):
        hidden, targets = hidden[:, :-1], ids[:, 1:]
        real = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)   # a real token after a real one
        answer = labels[:, 1:] != -100
        scored = real if side == "chosen" else answer
        logps = hidden.new_zeros(scored.shape, dtype=torch.float32).masked_scatter(
            scored, answer_scores(hidden[scored].to(w.dtype), w, b, targets[scored], ("log_probs",))["log_probs"])
        with torch.no_grad():
            mean_logit = (hidden[real].float() @ head_mean(w)).mean() + (b.float().mean() if b is not None else 0.0)
        out.append(((logps * answer).sum(-1) / answer.sum(-1).clamp(min=1), mean_logit,
                    -(logps * real).sum() / real.sum().clamp(min=1)))
    (chosen, chosen_logit, nll), (rejected, rejected_logit, _) = out
    return chosen, rejected, chosen_logit, rejected_logit, nll


class HeadMean:
    """The output head's mean row in fp32, for the logged mean logit: computed once while
    the weight is unchanged (a frozen head never changes; a trained one is recomputed after
    each update), not twice a step (an fp32 copy of the head is 113 MB on the bundled model)."""

    def __init__(self):
        self.key, self.mean = None, None

    def __call__(self, weight):
        import torch
        key = (weight.data_ptr(), weight._version, weight.shape, weight.dtype)
        if self.key != key:
            with torch.no_grad():
                self.key, self.mean = key, weight.detach().float().mean(0)
        return self.mean


def _decode_sides(trainer, model, causal, batch, pack: bool = True):
    """The decoder's last hidden states of the chosen and the rejected rows, each with its
    ids, attention mask and labels as the batch has them: (hidden, ids, mask, labels) twice.

    One decoder pass does both sides. Each pair becomes one row, the prompt the two sides
    share followed by the chosen answer and then the rejected one, with an attention mask
    that keeps the rejected answer from seeing the chosen one and positions that restart
    after the prompt for the rejected answer. Causal attention makes every token's state
    the one it has in its own sequence, so this is the two sequences' own forward with the
    prompt's work done once and a single, larger batch through each layer (TRL runs the
    prompt twice and pads both sides to the longer one). The rejected side's states are
    gathered back into its sequence's layout. Models with sliding-window layers, batches
    with no shared prefix, and `pack=False` run each side whole."""
    import torch

    from .heads import additive_mask, final_hidden, sliding_window

    c_ids, c_mask, c_lab = (batch[f"chosen_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    r_ids, r_mask, r_lab = (batch[f"rejected_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    c_len, r_len = c_mask.sum(1), r_mask.sum(1)
    shared = shared_prompt(batch)
    sliding = sliding_window(causal.config)
    with trainer.accelerator.autocast():   # accelerate's mixed precision wraps the model's forward: the same here
        if not pack or int(shared.max()) == 0 or sliding:
            sides = []
            for ids, mask, labels, length in ((c_ids, c_mask, c_lab, c_len), (r_ids, r_mask, r_lab, r_len)):
                top = int(length.max())
                ids, mask, labels = ids[:, :top], mask[:, :top], labels[:, :top]
                sides.append((final_hidden(model, input_ids=ids, attention_mask=mask), ids, mask, labels))
            return sides
        end = c_len + r_len - shared                    # a row's real tokens: prompt, chosen, rejected answer
        col = torch.arange(int(end.max()), device=c_ids.device)[None]
        in_chosen = col < c_len[:, None]
        from_rejected = (col - c_len[:, None] + shared[:, None]).clamp(0, r_ids.shape[1] - 1)   # index in its own row
        ids = torch.where(in_chosen, c_ids.gather(1, col.clamp(max=c_ids.shape[1] - 1).expand_as(from_rejected)),
                          r_ids.gather(1, from_rejected))
        real = col < end[:, None]
        ids = torch.where(real, ids, 0)
        pos = torch.where(in_chosen, col, torch.where(real, from_rejected, 0))
        chosen_answer = (col >= shared[:, None]) & in_chosen
        allowed = ((col[:, :, None] >= col[:, None, :]) & real[:, None, :]                  # causal, real keys
                   & ~((~in_chosen & real)[:, :, None] & chosen_answer[:, None, :]))      # rejected never sees chosen
        hidden = final_hidden(model, input_ids=ids, attention_mask=additive_mask(allowed, causal), position_ids=pos)
    top_c, top_r = int(c_len.max()), int(r_len.max())
    j = torch.arange(top_r, device=col.device)[None]
    back = torch.where(j < shared[:, None], j, j + (c_len - shared)[:, None]).clamp(max=hidden.shape[1] - 1)
    hidden_r = hidden.gather(1, back[..., None].expand(-1, -1, hidden.shape[-1]))
    return [(hidden[:, :top_c], c_ids[:, :top_c], c_mask[:, :top_c], c_lab[:, :top_c]),
            (hidden_r, r_ids[:, :top_r], r_mask[:, :top_r], r_lab[:, :top_r])]


def shared_prompt(batch):
    """How many leading tokens of each row the chosen and the rejected sequences share
    (prompt tokens, equal on both sides), leaving each side at least one token of its own."""
    import torch
    c_ids, c_mask, c_lab = (batch[f"chosen_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    r_ids, r_mask, r_lab = (batch[f"rejected_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    n = min(c_ids.shape[1], r_ids.shape[1])
    same = ((c_ids[:, :n] == r_ids[:, :n]) & (c_lab[:, :n] == -100) & (r_lab[:, :n] == -100)
            & (c_mask[:, :n] == 1) & (r_mask[:, :n] == 1))
    return torch.minimum(same.long().cumprod(1).sum(1), torch.minimum(c_mask.sum(1), r_mask.sum(1)) - 1).clamp(min=0)
