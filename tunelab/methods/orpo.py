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

    - the prompt a pair shares runs through the decoder once, and the chosen and the rejected
      answers each continue from its cache at their own length (`_decode_sides`; TRL runs
      the prompt twice and pads both sides to the longer one, so the short chosen rows
      carried the long rejected ones' padding);
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
    from ..training.heads import answer_scores
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
    for side, (hidden, ids, mask, labels) in zip(("chosen", "rejected"), _decode_sides(trainer, causal, attention, batch)):
        hidden, targets = hidden[:, :-1], ids[:, 1:]
        real = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)   # a real token after a real one
        answer = labels[:, 1:] != -100
        scored = real if side == "chosen" else answer
        logps = hidden.new_zeros(scored.shape, dtype=torch.float32).masked_scatter(
            scored, answer_scores(hidden[scored].to(w.dtype), w, b, targets[scored], ("log_probs",))["log_probs"])
        with torch.no_grad():
            mean_logit = (hidden[real].float() @ w.float().mean(0)).mean() + (b.float().mean() if b is not None else 0.0)
        out.append(((logps * answer).sum(-1) / answer.sum(-1).clamp(min=1), mean_logit,
                    -(logps * real).sum() / real.sum().clamp(min=1)))
    (chosen, chosen_logit, nll), (rejected, rejected_logit, _) = out
    return chosen, rejected, chosen_logit, rejected_logit, nll


def _decode_sides(trainer, causal, attention, batch):
    """The decoder's last hidden states of the chosen and the rejected rows, each with its
    ids, attention mask and labels in the same layout: (hidden, ids, mask, labels) twice.

    The prompt the two sides share runs once: left-padded to the longest prompt, its keys
    and values are the cache both answers continue from (each right-padded to its own side's
    longest answer), so every row's real tokens are contiguous. Causal attention makes the
    prompt's states the same in both sequences, so this is the sequences' own forward with
    the prompt's work done once (its gradients reach the weights through the cache). Models
    with sliding-window layers, and batches with no shared prefix, run each side whole."""
    import torch
    from transformers import DynamicCache

    from ..training.heads import _pick_attention

    text = causal.config.get_text_config()
    c_ids, c_mask, c_lab = (batch[f"chosen_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    r_ids, r_mask, r_lab = (batch[f"rejected_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    c_len, r_len = c_mask.sum(1), r_mask.sum(1)
    shared = shared_prompt(batch)
    sliding = getattr(text, "sliding_window", None) or any(t != "full_attention" for t in (getattr(text, "layer_types", None) or ()))
    width = int(shared.max())
    sides = []
    with trainer.accelerator.autocast():   # accelerate's mixed precision wraps the model's forward: the same here
        if width == 0 or sliding:
            for ids, mask, labels, length in ((c_ids, c_mask, c_lab, c_len), (r_ids, r_mask, r_lab, r_len)):
                top = int(length.max())
                ids, mask, labels = ids[:, :top], mask[:, :top], labels[:, :top]
                _pick_attention(causal.config, attention, *ids.shape)
                sides.append((causal.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state,
                              ids, mask, labels))
            return sides
        src = torch.arange(width, device=c_ids.device) - (width - shared)[:, None]   # left padding
        p_mask = (src >= 0).long()
        p_ids = torch.where(src >= 0, c_ids.gather(1, src.clamp(min=0)), 0)
        _pick_attention(causal.config, attention, *p_ids.shape)
        prompt = causal.base_model(input_ids=p_ids, attention_mask=p_mask, position_ids=src.clamp(min=0), use_cache=True)
        states = [(layer.keys, layer.values) for layer in prompt.past_key_values.layers]
        for ids, mask, labels, length in ((c_ids, c_mask, c_lab, c_len), (r_ids, r_mask, r_lab, r_len)):
            rest = length - shared
            col = torch.arange(int(rest.max()), device=ids.device)
            pos = shared[:, None] + col
            own = col < rest[:, None]
            a_ids = torch.where(own, ids.gather(1, pos.clamp(max=ids.shape[1] - 1)), 0)
            a_lab = torch.where(own, labels.gather(1, pos.clamp(max=ids.shape[1] - 1)), -100)
            full_mask = torch.cat([p_mask, own.long()], 1)
            _pick_attention(causal.config, attention, ids.shape[0], full_mask.shape[1])
            hidden = causal.base_model(input_ids=a_ids, attention_mask=full_mask, position_ids=pos, use_cache=True,
                                       past_key_values=DynamicCache(states, config=causal.config)).last_hidden_state
            sides.append((torch.cat([prompt.last_hidden_state, hidden], 1), torch.cat([p_ids, a_ids], 1), full_mask,
                          torch.cat([torch.full_like(p_ids, -100), a_lab], 1)))
    return sides


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
