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

    args = ORPOConfig(**common_args, beta=cfg.orpo.beta)
    return _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)


@functools.cache
def _trainer_class():
    from trl.experimental.orpo import ORPOTrainer

    class CountingORPOTrainer(ORPOTrainer):
        """TRL's ORPOTrainer, logging the tokens trained on (`num_tokens`, as the SFT, DPO
        and KTO trainers do), so its runs report tokens/s like every other run, and on a
        CPU scoring only the positions its loss reads (`concatenated_forward`)."""
        trained_tokens = 0

        def concatenated_forward(self, model, batch):
            fast = _scored_forward(self, model, batch)
            return fast if fast is not None else super().concatenated_forward(model, batch)

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            if train_eval == "train":   # prompt + answer tokens of both sides, padding not counted
                self.trained_tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
            return super().get_batch_loss_metrics(model, batch, train_eval)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                logs["num_tokens"] = float(self.trained_tokens)
            return super().log(logs, *args, **kwargs)

    return CountingORPOTrainer


def _scored_forward(trainer, model, batch):
    """TRL's ORPO `concatenated_forward`, with less work on a CPU:

    - the chosen and the rejected answers run through the decoder each at their own length
      (TRL pads both to the longer side, so the short chosen rows carried the long rejected
      ones' padding);
    - the output head scores only the positions the loss reads, through
      `training.heads.answer_scores` (the same head, chunked): every real token of the
      chosen rows for the SFT part (TRL's ORPO takes it over the prompt too) and the answer
      tokens of both sides for the odds ratio. TRL builds the logits of every position,
      padding and rejected prompts included, over the whole vocabulary.

    The SFT loss, the answers' average log-probabilities, hence the loss, the gradients and
    every logged metric but one are TRL's (tests/test_heads.py compares them). The one:
    `logits/chosen` and `logits/rejected` average the logits over each side's real tokens,
    where TRL's average also takes in the padding positions; h·mean(W) + mean(b) gives that
    average without building the logits. None where TRL's own path must run: a GPU, an
    encoder-decoder, a mixture-of-experts auxiliary loss, or a model TRL wrapped for
    distributed training."""
    import torch
    from ..training.heads import _pick_attention, answer_scores
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    if (trainer.is_encoder_decoder or trainer.aux_loss_enabled or head is None or not hasattr(causal, "base_model")
            or next(causal.parameters()).device.type in ("cuda", "xpu")
            or getattr(causal.config.get_text_config(), "final_logit_softcapping", None)):
        return None
    attention = getattr(trainer, "_orpo_attention", None) or causal.config._attn_implementation
    trainer._orpo_attention = attention   # as loaded: what the model was asked to use
    w, b = head.weight, head.bias
    out = []
    for side in ("chosen", "rejected"):
        mask = batch[f"{side}_attention_mask"]
        length = int(mask.sum(1).max())
        ids, mask, labels = batch[f"{side}_input_ids"][:, :length], mask[:, :length], batch[f"{side}_labels"][:, :length]
        _pick_attention(causal.config, attention, *ids.shape)
        # accelerate runs mixed precision by wrapping the model's forward in autocast: calling
        # the decoder below that wrapper needs the same context.
        with trainer.accelerator.autocast():
            hidden = causal.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
        real = mask[:, 1:] == 1
        answer = labels[:, 1:] != -100
        scored = real if side == "chosen" else answer
        logps = hidden.new_zeros(scored.shape, dtype=torch.float32).masked_scatter(
            scored, answer_scores(hidden[scored].to(w.dtype), w, b, ids[:, 1:][scored], ("log_probs",))["log_probs"])
        with torch.no_grad():
            mean_logit = (hidden[real].float() @ w.float().mean(0)).mean() + (b.float().mean() if b is not None else 0.0)
        out.append(((logps * answer).sum(-1) / answer.sum(-1).clamp(min=1), mean_logit,
                    -(logps * real).sum() / real.sum().clamp(min=1)))
    (chosen, chosen_logit, nll), (rejected, rejected_logit, _) = out
    return chosen, rejected, chosen_logit, rejected_logit, nll
