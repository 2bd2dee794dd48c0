"""Full fine-tuning: every weight of the pre-trained model trains.

The model keeps learning exactly as in pre-training, only on our task's examples:
all parameters θ follow the gradient of the loss, θ ← θ − η·∇θ L(θ), with L the
next-token cross-entropy on the answer tokens. It can adapt the most, and costs the
most: AdamW keeps two fp32 moments per weight, so weights + gradients + optimiser
state take ~16 bytes a parameter, and every run stores a whole model.
(Howard & Ruder 2018, "Universal Language Model Fine-tuning", arXiv:1801.06146.)
"""

from __future__ import annotations

import torch

from ..modelio import loading
from . import attention


def load(cfg, hw):
    """The model in fp32 (the master copy AdamW updates; bf16 is autocast on top)."""
    model = loading.load_model(cfg.model, dtype=torch.float32, device=hw.device,
                               attn_implementation=attention.implementation(cfg))
    return model, None
