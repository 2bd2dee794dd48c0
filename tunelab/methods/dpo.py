"""DPO: learn from "answer A is better than B" pairs, with no reward model and no RL.

RLHF trains a reward model, then optimises the policy against it with RL. DPO shows
the optimal policy of that problem gives an implicit reward r(x, y) = β·log π(y|x)/π_ref(y|x),
so the preference data can train the policy directly with a classification loss:
    L = −log σ(β·[log π(y_w|x) − log π_ref(y_w|x)] − β·[log π(y_l|x) − log π_ref(y_l|x)])
where y_w is the chosen answer, y_l the rejected one, and π_ref the frozen starting model.
(Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290.)

What trains is a separate choice (`dpo.adapter`): LoRA (default), QLoRA or every weight.
With adapters the reference is the same base with the adapters switched off, so no
second copy of the model is held; with `full` the reference is a frozen copy.
"""

from __future__ import annotations

from ..modelio import loading
from . import attention
from . import full, lora, qlora

ADAPTERS = {"full": full, "lora": lora, "qlora": qlora}


def load(cfg, hw):
    """The model as its adapter choice loads it (DPO, KTO and ORPO share this)."""
    return ADAPTERS[cfg.weights].load(cfg, hw)


def frozen_reference(cfg, hw, peft_config, precompute: bool):
    """The reference model DPO and KTO measure against: None with adapters (the base with
    them switched off) or when its log-probs are computed once before training; else, for
    every weight trained, a frozen copy of the start point, held in the compute dtype."""
    if peft_config is not None or precompute:
        return None
    ref_model = loading.load_model(cfg.model, dtype=hw.compute_dtype, device=hw.device,
                                   attn_implementation=attention.implementation(cfg))
    ref_model.requires_grad_(False)
    return ref_model


def make_trainer(cfg, hw, model, peft_config, tokenizer, train_ds, eval_ds, common_args, callbacks):
    from trl import DPOConfig  # imported here: trl takes seconds to import

    from .heads import dpo_trainer_class  # TRL's DPOTrainer, scoring only the answer tokens

    ref_model = frozen_reference(cfg, hw, peft_config, cfg.dpo.precompute_ref)
    args = DPOConfig(
        **common_args,
        beta=cfg.dpo.beta,
        loss_type=[cfg.dpo.loss_type],
        precompute_ref_log_probs=cfg.dpo.precompute_ref,
    )
    return dpo_trainer_class()(model=model, ref_model=ref_model, args=args, train_dataset=train_ds,
                                    eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config,
                                    callbacks=callbacks, answer_head=cfg.speed.answer_head)
