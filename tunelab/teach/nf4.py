"""What NF4 does to a base's weights, the way QLoRA stores its frozen base: projection
matrices quantised to 4-bit NormalFloat (bitsandbytes, blocks of 64 weights with one absmax
scale each, the scales double-quantised), dequantised back, and compared with the original.

    info = nf4_error("smollm2-135m-instruct")   # one matrix's error; the base's memory fp32/bf16/4-bit
    nf4_figure(info)                            # the Inside tab's QLoRA view
    nf4_model_error("smollm2-135m-instruct")["relative_error"]   # ‖W − deq(q(W))‖ / ‖W‖ over all of them

Lab 3 puts nf4_model_error beside QLoRA's loss and style score: it is how far the frozen
base the adapters learn on is from the base LoRA learns on.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go

from . import charts
from ..modelio import models


def _weights(model: str) -> dict[str, tuple[Path, list[int]]]:
    """{weight key: (safetensors file, shape)} of every tensor of the model's files."""
    from safetensors import safe_open
    folder = Path(models.resolve_model(model))
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                out[key] = (f, st.get_slice(key).get_shape())
    return out


def _projections(model: str, weights: dict[str, tuple[Path, list[int]]]) -> dict[str, tuple[Path, list[int]]]:
    out = {k: (f, shape) for k, (f, shape) in weights.items() if len(shape) == 2 and k.endswith("proj.weight")}
    if not out:
        raise ValueError(f"{model}: no projection matrices found to quantise")
    return out


def projection_weights(model: str) -> dict[str, tuple[Path, list[int]]]:
    """{weight key: (safetensors file, shape)} of the model's 2-D projection matrices
    (q/k/v/o and the MLP's gate/up/down: the Linear layers QLoRA quantises)."""
    return _projections(model, _weights(model))


def _tensor(file: Path, key: str):
    from safetensors import safe_open
    with safe_open(str(file), framework="pt") as st:
        return st.get_tensor(key).float()


def round_trip(w, blocksize: int = 64):
    """dequant(quant(w)) in NF4 with double-quantised scales, as float32."""
    import bitsandbytes.functional as bnbf
    packed, state = bnbf.quantize_4bit(w.float(), blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    return bnbf.dequantize_4bit(packed, state).float()


def nf4_model_error(model: str, blocksize: int = 64) -> dict:
    """The NF4 round-trip error over all of a model's projection matrices: the relative
    error ‖W − deq(q(W))‖ / ‖W‖ taken over them together, the mean |error| against the mean
    |w|, and the worst matrix's relative error."""
    weights = projection_weights(model)
    err_sq = w_sq = abs_err = abs_w = 0.0
    count, worst = 0, ("", 0.0)
    for key, (f, _) in weights.items():
        w = _tensor(f, key)
        e = w - round_trip(w, blocksize)
        err_sq += float(e.pow(2).sum())
        w_sq += float(w.pow(2).sum())
        abs_err += float(e.abs().sum())
        abs_w += float(w.abs().sum())
        count += w.numel()
        rel = float(e.norm() / w.norm())
        if rel > worst[1]:
            worst = (key.removesuffix(".weight"), rel)
    return {"model": model, "matrices": len(weights), "weights": count, "blocksize": blocksize,
            "relative_error": math.sqrt(err_sq / w_sq), "mean_abs_error": abs_err / count,
            "mean_abs_weight": abs_w / count, "worst": {"layer": worst[0], "relative_error": worst[1]}}


def nf4_error(model: str, layer: str | None = None, blocksize: int = 64) -> dict:
    """Quantise one weight matrix to NF4 (bitsandbytes, blocks of `blocksize` with one
    absmax scale each, as QLoRA stores its base), dequantise it back, and measure the
    error; also the whole base's memory in fp32, bf16 and 4-bit (every Linear but the
    LM head in NF4 with double-quantised scales, the rest in bf16)."""
    weights = _weights(model)
    linear = list(_projections(model, weights))
    key = f"{layer}.weight" if layer else next((k for k in linear if "q_proj" in k), linear[0])
    if key not in weights:
        raise ValueError(f"{model}: no weight {key!r}")
    w = _tensor(weights[key][0], key)
    err = (w - round_trip(w, blocksize)).flatten()
    total = sum(math.prod(s) for _, s in weights.values())
    in_linear = sum(math.prod(weights[k][1]) for k in linear)
    # 4 bits a weight, one 8-bit scale per block, plus the fp32 second-level scales (double quantisation).
    nf4_bytes = in_linear * (0.5 + 1 / blocksize + 4 / (blocksize * 256))
    return {"model": model, "layer": key.removesuffix(".weight"), "shape": list(w.shape), "blocksize": blocksize,
            "errors": err, "mean_abs_error": float(err.abs().mean()), "max_abs_error": float(err.abs().max()),
            "mean_abs_weight": float(w.abs().mean()),
            "relative_error": float(err.norm() / w.flatten().norm()),
            "memory_mb": {"fp32": total * 4 / 2**20, "bf16": total * 2 / 2**20,
                          "nf4": (nf4_bytes + (total - in_linear) * 2) / 2**20},
            "quantised_share": in_linear / total}


def nf4_figure(info: dict) -> go.Figure:
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=[f"NF4 error, {info['layer']}", "base model memory"])
    fig.add_trace(go.Histogram(x=info["errors"].numpy(), nbinsx=80, marker_color=charts.COLORS[1],
                               showlegend=False, hovertemplate="error %{x}<br>%{y} weights<extra></extra>"),
                  row=1, col=1)
    mem = info["memory_mb"]
    # The labels sit above the bars: the axis leaves room over the tallest, and they may
    # draw outside the plot area, else its "513 MB" was clipped at the top.
    fig.add_trace(go.Bar(x=list(mem), y=list(mem.values()), marker_color=charts.COLORS[:3], showlegend=False,
                         text=[charts.fmt_mb(v) for v in mem.values()], textposition="outside", cliponaxis=False),
                  row=1, col=2)
    fig.update_xaxes(title_text="w − dequant(quant(w))", row=1, col=1)
    fig.update_yaxes(title_text="weights", row=1, col=1)
    fig.update_yaxes(title_text="MB", range=[0, max(mem.values()) * 1.2], row=1, col=2)
    fig.update_layout(template="plotly_white", height=330, margin=dict(l=55, r=20, t=50, b=45))
    return fig
