"""The LoRA update of one layer: W' = W + (α/r)·B·A, read from a run's saved adapter.

    info = lora_update("<lora run>")   # shapes, counts, singular values of ΔW, ‖ΔW‖/‖W‖
    lora_html(info); lora_figure(info)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import html
import json
import math
from pathlib import Path

import plotly.graph_objects as go


from . import charts
from ..modelio import models
from ..training import runs
from ..training.config import RunConfig
from ..training.runfolder import MODEL_DIR

if TYPE_CHECKING:   # annotations only: torch is imported where it is used
    import torch


def _adapter(run_ref: str) -> tuple[Path, dict, dict[str, torch.Tensor], RunConfig]:
    from safetensors.torch import load_file
    d = runs.find_run(run_ref)
    folder = d / MODEL_DIR
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{d.name} is not an adapter run (no adapter_config.json in {MODEL_DIR}/)")
    return d, json.loads(cfg_file.read_text()), load_file(str(folder / "adapter_model.safetensors")), \
        RunConfig.from_yaml(d / "config.yaml")


def lora_layers(run_ref: str) -> list[str]:
    """The adapted layers of a run, e.g. 'model.layers.0.self_attn.q_proj'."""
    _, _, tensors, _ = _adapter(run_ref)
    return sorted({_layer_name(k) for k in tensors if ".lora_A." in k}, key=_natural)


def _layer_name(key: str) -> str:
    name = key.split(".lora_A.")[0].split(".lora_B.")[0]
    return name.removeprefix("base_model.model.")


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in name.replace(".", " ").split()]


def lora_update(run_ref: str, layer: str | None = None) -> dict:
    """What the adapter of one layer is: A (r×k) and B (d×r), the update ΔW = (α/r)·B·A
    (d×k, rank ≤ r), how many numbers each holds, and ΔW's singular values — how much of
    the change each of its r directions carries. With the base weight W at hand, also
    ‖ΔW‖/‖W‖: how far the tuned layer moved."""
    import torch
    d, acfg, tensors, cfg = _adapter(run_ref)
    layers = sorted({_layer_name(k) for k in tensors if ".lora_A." in k}, key=_natural)
    layer = layer or next((n for n in layers if n.endswith("q_proj")), layers[0])
    if layer not in layers:
        raise ValueError(f"{d.name}: no adapter on {layer!r}; adapted layers look like {layers[0]!r}")
    a = next(v for k, v in tensors.items() if _layer_name(k) == layer and ".lora_A." in k).float()
    b = next(v for k, v in tensors.items() if _layer_name(k) == layer and ".lora_B." in k).float()
    r, alpha = a.shape[0], float(acfg.get("lora_alpha", a.shape[0]))
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    delta = scale * (b @ a)
    sv = torch.linalg.svdvals(delta)[:r]
    energy = (sv ** 2) / (sv ** 2).sum().clamp_min(1e-30)
    out = {"run": d.name, "layer": layer, "layers": layers, "r": r, "alpha": alpha, "scale": scale,
           "A": list(a.shape), "B": list(b.shape), "W": [b.shape[0], a.shape[1]],
           "params_W": b.shape[0] * a.shape[1], "params_AB": a.numel() + b.numel(),
           "singular_values": sv.tolist(), "energy_top1": float(energy[0]) if len(energy) else 0.0,
           "delta_norm": float(delta.norm())}
    w = _base_weight(cfg.model, layer)
    if w is not None:
        out["rel_change"] = float(delta.norm() / w.float().norm())
    return out


def _base_weight(model: str, layer: str) -> torch.Tensor | None:
    from safetensors import safe_open
    try:
        folder = Path(models.resolve_model(model))
    except models.ModelError:
        return None
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            if f"{layer}.weight" in st.keys():
                return st.get_tensor(f"{layer}.weight")
    return None


def lora_figure(info: dict) -> go.Figure:
    sv = info["singular_values"]
    fig = go.Figure(go.Bar(x=[f"σ{i + 1}" for i in range(len(sv))], y=sv, marker_color=charts.COLORS[0],
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=300, margin=dict(l=55, r=20, t=50, b=40),
                      title=dict(text=f"Singular values of ΔW = (α/r)·B·A — {info['layer']} (r={info['r']})",
                                 x=0.01, font=dict(size=14)), yaxis_title="singular value")
    return fig


def lora_html(info: dict) -> str:
    d, k = info["W"]
    rows = [("W (frozen)", f"{d} × {k}", f"{info['params_W']:,}"),
            ("A (trains)", " × ".join(map(str, info["A"])), f"{info['A'][0] * info['A'][1]:,}"),
            ("B (trains)", " × ".join(map(str, info["B"])), f"{info['B'][0] * info['B'][1]:,}"),
            ("ΔW = (α/r)·B·A", f"{d} × {k}, rank ≤ {info['r']}", f"computed, scale α/r = {info['scale']:g}")]
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in rows)
    extra = (f" The update moved this layer by ‖ΔW‖/‖W‖ = {info['rel_change']:.2%}." if "rel_change" in info else "")
    return (f'<table class="tl-difftable"><tr><th>matrix</th><th>shape</th><th>numbers</th></tr>{body}</table>'
            f'<p class="tl-hint">A and B hold {info["params_AB"]:,} numbers instead of {info["params_W"]:,} '
            f'({info["params_AB"] / info["params_W"]:.2%}). The top direction carries '
            f'{info["energy_top1"]:.0%} of the update\'s energy.{extra}</p>')
