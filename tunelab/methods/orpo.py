"""ORPO: preference learning folded into SFT, with no reference model.

ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
Model", arXiv:2403.07691) trains on the same pairs as DPO but needs no frozen copy and
no reference pass: with odds(y|x) = P(y|x) / (1 − P(y|x)) (P the length-normalised
likelihood of the answer), the loss is
    L = L_SFT(chosen) − λ · log σ(log odds(y_w|x) − log odds(y_l|x))
the usual next-token loss on the chosen answer plus a penalty that grows when the
rejected answer's odds come near the chosen one's. λ is `orpo.beta`. One forward pass
a pair instead of DPO's two (policy and reference): on a CPU that is half the work.

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
    """TRL's ORPO `concatenated_forward`, computing the output head only where its loss
    looks: every real (non-padding) token of the chosen rows, for the SFT part (TRL's ORPO
    takes it over the prompt too), and the answer tokens of the rejected rows, for the
    odds ratio. TRL builds the logits of every position, padding and the rejected prompts
    included, over the whole vocabulary; here the positions go through
    `training.heads.answer_scores` (the same head, chunked). The SFT loss, the average
    log-probabilities and the logged mean logits are TRL's (tests/test_methods.py compares
    losses and gradients). The mean logit over the vocabulary is h·mean(W) + mean(b), so it
    needs no logits at all. None where TRL's own path must run: a GPU, an encoder-decoder,
    a mixture-of-experts auxiliary loss, or a model TRL wrapped for distributed training."""
    import torch
    from ..training.heads import _pick_attention, answer_scores
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    text = getattr(causal, "config", None)
    if (trainer.is_encoder_decoder or trainer.aux_loss_enabled or head is None or not hasattr(causal, "base_model")
            or next(causal.parameters()).device.type in ("cuda", "xpu")
            or getattr(text.get_text_config(), "final_logit_softcapping", None)):
        return None
    cat = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value,
                                      device=trainer.accelerator.device)
    ids, mask, labels = cat["concatenated_input_ids"], cat["concatenated_attention_mask"], cat["concatenated_labels"]
    n_chosen = batch["chosen_labels"].shape[0]
    attention = getattr(trainer, "_orpo_attention", None) or causal.config._attn_implementation
    trainer._orpo_attention = attention
    _pick_attention(causal.config, attention, *ids.shape)
    # accelerate runs mixed precision by wrapping the model's forward in autocast: calling the
    # decoder below that wrapper needs the same context.
    with trainer.accelerator.autocast():
        hidden = causal.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
    sft = torch.zeros_like(mask[:, 1:], dtype=torch.bool)
    sft[:n_chosen] = mask[:n_chosen, 1:] == 1          # the chosen rows' SFT targets: every real next token
    answer = labels[:, 1:] != -100                     # both sides' answer tokens: the odds ratio's
    scored = sft | answer
    targets = ids[:, 1:]
    w = head.weight
    logps = hidden.new_zeros(scored.shape, dtype=torch.float32).masked_scatter(
        scored, answer_scores(hidden[scored].to(w.dtype), w, head.bias, targets[scored], ("log_probs",))["log_probs"])
    nll = -(logps * sft).sum() / sft.sum().clamp(min=1)
    avg = (logps * answer).sum(-1) / answer.sum(-1).clamp(min=1)
    with torch.no_grad():   # TRL logs logits[..., :-1, :].mean() of each side: the mean over the vocabulary first
        w_mean = w.float().mean(0)
        b_mean = head.bias.float().mean() if head.bias is not None else 0.0
        row_mean = hidden.float() @ w_mean + b_mean
    return avg[:n_chosen], avg[n_chosen:], row_mean[:n_chosen].mean(), row_mean[n_chosen:].mean(), nll
