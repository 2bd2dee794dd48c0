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

from ..modelio import loading
from . import attention
from . import lora


def load(cfg, hw):
    quant = {"quant_type": cfg.qlora.quant_type, "double_quant": cfg.qlora.double_quant,
             "compute_dtype": hw.compute_dtype}
    model = loading.load_model(cfg.model, dtype=hw.compute_dtype, quant=quant, device=hw.device,
                               attn_implementation=attention.implementation(cfg))
    # The QLoRA recipe: input grads on for gradient checkpointing, norms in fp32.
    model = peft.prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    # That recipe also upcasts every other weight to fp32: the (frozen) embedding, output
    # head and norms. It guards fp16 training; under bf16 autocast the matmuls run in
    # bf16 anyway, so fp32 storage only adds memory, and fp32 norms make every normed
    # activation saved for the backward pass fp32 too. On a 135M model that was enough to
    # put QLoRA's peak above LoRA's (whose base is all bf16). With bf16 they go back.
    if hw.compute_dtype == torch.bfloat16:
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    keep_trainable_layout(model)
    return model, lora.peft_config(cfg)


def keep_trainable_layout(model) -> int:
    """Stop bitsandbytes from switching the 4-bit weights to its CPU inference layout.

    On a CPU with AVX512-BF16, a `Linear4bit` that runs once in eval mode without
    gradients (the Trainer's evaluation, a sample) repacks its weight for a fused
    kernel and keeps it that way. That kernel has no backward: from then on no gradient
    flows back through any quantised layer (torch only warns), so every adapter below
    the last layer learns from a wrong gradient. Lab 3 evaluates every 10 steps: its
    QLoRA's loss rose after step 10 and ended at 2.6 against LoRA's 1.3; with this, 1.4
    (benchmarks/qlora_gap.py). The packed layout also rounds the block scales to bf16.
    Training and evaluation now both use the layout the weights were quantised in (eval
    is a little slower for it). Returns the layers changed."""
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n
