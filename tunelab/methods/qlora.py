"""QLoRA: LoRA adapters on a frozen base stored in 4 bits.

The base weights are quantised once to 4-bit NormalFloat (NF4: 16 levels placed at
the quantiles of a normal distribution, one absmax scale per 64 weights, and with
double quantisation the scales themselves in 8 bits). In the forward pass each weight
block is dequantised to the compute dtype, so W' = dequant(W_nf4) + (α/r)·B·A, and
only A and B train. The base takes ~0.5 byte a weight instead of 2 (bf16) or 4 (fp32).
(Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314.)
"""

from __future__ import annotations

import peft
import torch

from .. import models
from . import lora


def load(cfg, hw):
    quant = {"quant_type": cfg.qlora.quant_type, "double_quant": cfg.qlora.double_quant,
             "compute_dtype": hw.compute_dtype}
    model = models.load_model(cfg.model, dtype=hw.compute_dtype, quant=quant, device=hw.device)
    # The QLoRA recipe: norms in fp32 for stability, input grads on for checkpointing.
    model = peft.prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    # That recipe also upcasts every other weight to fp32, the (frozen) embedding and
    # output head included. Under bf16/fp16 autocast their matmuls run in the compute
    # dtype anyway, so fp32 storage only adds memory (+57 MB for SmolLM2-135M's 28M-weight
    # embedding, enough to put QLoRA above LoRA here): they go back to the compute dtype.
    if hw.compute_dtype != torch.float32:
        for module in {model.get_input_embeddings(), model.get_output_embeddings()}:
            if module is not None:
                module.to(hw.compute_dtype)
    return model, lora.peft_config(cfg)
