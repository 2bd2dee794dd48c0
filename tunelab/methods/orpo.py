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
        and KTO trainers do), so its runs report tokens/s like every other run."""
        trained_tokens = 0

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            if train_eval == "train":   # prompt + answer tokens of both sides, padding not counted
                self.trained_tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
            return super().get_batch_loss_metrics(model, batch, train_eval)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                logs["num_tokens"] = float(self.trained_tokens)
            return super().log(logs, *args, **kwargs)

    return CountingORPOTrainer
