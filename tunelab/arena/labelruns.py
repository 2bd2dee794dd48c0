"""Runs trained on a label set: the set frozen into a data file, and a run config for it.

    cfg, counts = dpo_run_config(store, "concise", model="smollm2-135m-instruct")        # DPO on its pairs
    cfg, counts = dpo_run_config(store, "concise", model=..., method="orpo")             # ORPO on its pairs
    cfg, counts = kto_run_config(store, "concise", model=...)                           # KTO on its answers

What the Labels & DPO tab's "Train ... on these labels" buttons start (the label store
itself is prefs.py).
"""

from __future__ import annotations

import time

from ..common import workspace
from .prefs import LabelError, LabelStore

# "Train DPO on these labels" defaults. LoRA's B starts at 0 and its update is scaled by
# alpha/r: it needs a far larger lr than a full fine-tune (lab 4 trains LoRA DPO at 5e-4).
# The 5e-5 used before, in batches of 4 + 1, moved 5 labels' reward margin by 0.05 in 4
# steps (loss 0.67, from ln 2 = 0.693) and by 0.2 in 30. Measured on 5 arena-style labels
# with the bundled SmolLM2-135M (CPU, bf16, beta 0.1, 10 steps, the 5 pairs in every step):
#   lora 5e-4: loss 0.693 -> 0.013, margin +4.65, the chosen answers' log-probs kept (-6.8 -> -5.4);
#   full 5e-6: loss 0.693 -> 0.21, margin +1.47 (every weight moves: 5e-4 would wreck the model).
DPO_STEPS = 10
DPO_LR = {"lora": 5.0e-4, "qlora": 5.0e-4, "full": 5.0e-6}
DPO_BETA = 0.1
DPO_MAX_BATCH = 8   # a set of up to 8 pairs is one whole batch each step: no 4 + 1 split of 5


def dpo_run_config(store: LabelStore, set_name: str, *, model: str, adapter: str = "lora",
                   max_steps: int = DPO_STEPS, beta: float = DPO_BETA, lr: float | None = None,
                   min_pairs: int = 2, method: str = "dpo"):
    """A DPO (or, with `method="orpo"`, ORPO) run config trained on a preference set's
    pairs: the set is exported (as it is now) to a new file in the workspace's data
    folder, so the run keeps pointing at exactly the pairs it trained on even after more
    votes come in. Returns (config, counts). `lr` defaults to the adapter's (DPO_LR)."""
    def check(counts):
        if counts["written"] < min_pairs:
            raise LabelError(f"set {set_name!r}: {method.upper()} needs at least {min_pairs} decided votes "
                             f"(A or B better); it has {counts['written']} (ties: {counts['tie']}, both bad: "
                             f"{counts['both_bad']}, wins between identical answers: {counts['identical']})")
    return _frozen_run(store, set_name, method, store.export_dpo, check, {}, model=model, adapter=adapter,
                       max_steps=max_steps, beta=beta, lr=lr)


def kto_run_config(store: LabelStore, set_name: str, *, model: str, adapter: str = "lora",
                   max_steps: int = DPO_STEPS, beta: float = DPO_BETA, lr: float | None = None):
    """A KTO run config trained on a set's unpaired answers: its thumbs and its A/B votes
    (see LabelStore.unpaired_rows), frozen into a data file as for DPO. The weights of the
    desirable and undesirable answers balance their counts (λ_D·n_D = λ_U·n_U, within the
    KTO paper's advice of 1 to 4/3). Returns (config, counts)."""
    def check(counts):
        good, bad = counts["desirable"], counts["undesirable"]
        if not good or not bad:
            raise LabelError(f"set {set_name!r}: KTO needs good and bad answers (it learns from the contrast); "
                             f"it has {good} good and {bad} bad (thumbs: {counts['thumbs']}, answers from A/B "
                             f"votes: {counts['from_votes']}, ties left out: {counts['tie']})")

    def weights(counts):
        good, bad = counts["desirable"], counts["undesirable"]
        return {"desirable_weight": round(max(1.0, bad / good), 3), "undesirable_weight": round(max(1.0, good / bad), 3)}
    return _frozen_run(store, set_name, "kto", store.export_unpaired, check, weights, model=model, adapter=adapter,
                       max_steps=max_steps, beta=beta, lr=lr)


def _frozen_run(store, set_name, method, export, check, section, *, model, adapter, max_steps, beta, lr):
    from ..training.config import RunConfig

    store.labels(set_name)  # a missing set reads as empty: `check` says so
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "thumbs" if method == "kto" else "prefs"
    path = workspace.data_dir() / f"{kind}-{workspace.safe_name(set_name)}-{stamp}.jsonl"
    counts = export(set_name, path)
    try:
        check(counts)
    except LabelError:
        path.unlink(missing_ok=True)
        raise
    lr = float(lr or DPO_LR.get(adapter, DPO_LR["lora"]))   # an unknown adapter: validate() names it
    cfg = RunConfig.from_dict({
        "method": method, "model": model, "name": f"{method}-{workspace.safe_name(set_name)}",
        "data": {"train": str(path), "eval_fraction": 0.0},
        "train": {"max_steps": int(max_steps), "batch_size": min(DPO_MAX_BATCH, counts["written"]), "lr": lr,
                  "max_length": 256, "save_steps": 10},
        method: {"beta": float(beta), "adapter": adapter, **(section(counts) if callable(section) else section)},
    })
    cfg.validate()
    return cfg, counts | {"file": str(path)}
