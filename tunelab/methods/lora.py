"""LoRA: freeze the pre-trained weights, learn a low-rank update beside them.

For a frozen weight W (out × in), LoRA adds two small matrices A (r × in) and
B (out × r) with r ≪ min(in, out), and uses W' = W + (α/r)·B·A. Only A and B train;
B starts at zero, so training starts exactly at the base model. With r = 8 on a
576-wide layer that is ~2.8% of the layer's weights, and the adapter file is a few MB.
(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.)
"""

from __future__ import annotations

import peft

from ..modelio import loading
from . import attention


def peft_config(cfg) -> peft.LoraConfig:
    """PEFT's LoraConfig from our `lora:` block (names follow the paper: r, alpha)."""
    return peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,  # "all-linear" skips the output head
        bias="none",
        task_type="CAUSAL_LM",
    )


def load(cfg, hw):
    """The frozen base in the compute dtype: it never gets an update, so an fp32
    master copy would only cost memory; PEFT keeps A and B in fp32."""
    model = loading.load_model(cfg.model, dtype=hw.compute_dtype, device=hw.device,
                               attn_implementation=attention.implementation(cfg))
    return model, peft_config(cfg)


def skip_input_casts(model) -> int:
    """Under mixed precision (autocast), stop PEFT from casting each LoRA layer's input to
    the adapter's dtype. That cast turns the bf16 activations into fp32, and autocast
    turns them straight back into bf16 for the product: two copies of the activations
    in every adapted layer, forward and backward, for the same result (the bf16 values
    survive the round trip exactly; tests/test_methods.py checks the outputs match).
    It was ~8% of a LoRA SFT step on the benchmark CPU. Returns the layers changed."""
    n = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", None) is True:
            module.cast_input_dtype_enabled = False
            n += 1
    return n
