"""KTO: learn from single answers marked desirable or undesirable (a thumbs up or down).

Most feedback is not a pair: someone saw one answer and liked it or not. KTO (Ethayarajh
et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv:2402.01306)
trains on exactly that. With the implicit reward r(x, y) = log π(y|x)/π_ref(y|x) (as in
DPO) and z₀ an estimate of the policy's KL divergence from the reference (from answers
to *other* prompts in the batch, so it carries no gradient), each answer's loss is
    desirable:    λ_D · (1 − σ(β·(r(x, y) − z₀)))
    undesirable:  λ_U · (1 − σ(β·(z₀ − r(x, y))))
so good answers are pushed above the reference's level and bad ones below it, each
alone. λ_D and λ_U (`kto.desirable_weight`, `kto.undesirable_weight`) balance unequal
counts. Pairs can train KTO too: the chosen answer desirable, the rejected undesirable
(tunelab/data/formats.py split_pairs).

What trains is `kto.adapter`: LoRA (default), QLoRA or every weight. As for DPO, with
adapters the reference is the base with the adapters switched off, and with
`kto.precompute_ref` its log-probs are computed once before training.
"""

from __future__ import annotations

from . import dpo

load = dpo.load   # the model as `kto.adapter` says


def make_trainer(cfg, hw, model, peft_config, tokenizer, train_ds, eval_ds, common_args, callbacks):
    from trl import KTOConfig  # imported here: trl takes seconds to import

    from .heads import kto_trainer_class  # TRL's KTOTrainer, scoring only the answer tokens

    ref_model = dpo.frozen_reference(cfg, hw, peft_config, cfg.kto.precompute_ref)
    args = KTOConfig(
        **common_args,
        beta=cfg.kto.beta,
        desirable_weight=cfg.kto.desirable_weight,
        undesirable_weight=cfg.kto.undesirable_weight,
        precompute_ref_log_probs=cfg.kto.precompute_ref,
    )
    return kto_trainer_class()(model=model, ref_model=ref_model, args=args, train_dataset=train_ds,
                               eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config,
                               callbacks=callbacks, answer_head=cfg.speed.answer_head,
                               pack_rows=cfg.speed.pack_rows)
